"""LoRA fine-tuning of the generator on grounded (facts -> explanation) examples from the shop's own data.

Examples come from *training* shoppers only (see `is_held_out`): for each, one item of their history
plays the recommended item and the items bought before it are the history. Which history items
"drove" it is taken from content overlap (shared brand, category, title words) instead of the
ranker, so that thousands of tables cost no ranker passes; the tables are built by the same
`build_fact_table` the pipeline uses. Each target is one of several phrasings filled from the
facts and kept only if it passes the grounding check, written in the prompt's structured form
(JSON with the text and the fact ids it used).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from whyrec.core.catalog import Catalog, EventKind, Item, strongest_kind
from whyrec.core.follows import FollowCounts
from whyrec.core.hardware import cpu_has_bf16
from whyrec.core.schema import Attribution, Evidence, Fact, FactKind, FactTable, RankedItem
from whyrec.explainer.explainer import prompt_facts, prompt_slots
from whyrec.explainer.facts import PAST_TENSE, build_fact_table, shared_category_name, shared_use_words
from whyrec.explainer.grounding import check_reason
from whyrec.explainer.slots import fill_slots, with_slots
from whyrec.explainer.templates import PromptTemplateSpec

HELD_OUT_EVERY = 5  # one shopper in five is held out from tuning and used to measure it
ADAPTER_META = "whyrec_adapter.json"


def is_held_out(user_id: str) -> bool:
    """A fixed split by a hash of the shopper id, the same in `tune` and `eval explanations`."""
    return int(hashlib.sha1(user_id.encode()).hexdigest(), 16) % HELD_OUT_EVERY == 0


@dataclass(frozen=True)
class TuneConfig:
    examples: int = 200
    epochs: int = 1
    rank: int = 8
    alpha: int = 16
    learning_rate: float = 1e-3
    batch_size: int = 4
    seed: int = 0


def _overlap(item: Item, other: Item) -> float:
    """How much a history item has in common with the item: the stand-in for the ranker's attribution."""
    score = 0.0
    if item.brand and other.brand and item.brand.lower() == other.brand.lower():
        score += 1.0
    if shared_category_name(item, other):
        score += 0.5
    if shared_use_words(item, other):
        score += 0.5
    return score


def content_fact_table(catalog: Catalog, user_id: str, position: int, rng: random.Random, window: int = 5, follows: FollowCounts | None = None) -> FactTable | None:
    """A fact table for the shopper's item at `position`, with the items before it as history and,
    given `follows`, what other shoppers did between them (this shopper's own part taken out)."""
    sequence = catalog.sequence(user_id)
    target = catalog.items[sequence[position]]
    history_ids = sequence[max(0, position - window) : position]
    if not history_ids:
        return None
    history = [catalog.items[i] for i in history_ids]
    scored = sorted(history, key=lambda h: -_overlap(target, h))
    rank = rng.choice([1, 1, 2, 3, 4, 5, 7, 9])
    attributions = tuple(
        Attribution(h.item_id, round(1.0 - 0.3 * i, 2), rank + rng.randint(3, 60)) for i, h in enumerate(scored[:2])
    )
    ranked = RankedItem(target.item_id, rank, 0.5, 1.0, (scored[0].item_id,), attributions, candidates_scored=rng.choice([20, 30, 50]))
    events = catalog.events(user_id)
    evidence = []
    if follows is not None:
        own = FollowCounts(events, follows.window)
        for h in history_ids:
            bought = follows.bought_after(h, target.item_id) - own.bought_after(h, target.item_id)
            viewed = follows.viewed_after(h, target.item_id) - own.viewed_after(h, target.item_id)
            evidence.append(Evidence(h, target.item_id, bought, viewed))
    return build_fact_table(user_id, target, ranked, [(h, strongest_kind(events, h.item_id)) for h in history], evidence)


# Many phrasings per relation, so the tuned model learns the relation rather than a frame (none says
# "another {v} product": the model put counts and ranks in that slot). Fields:
# {verb} the shopper's event ("bought"), {h} the history item, {item} the recommended item,
# {v} the fact's value, {n} a count, {who}/{looked} the counted shoppers ("shopper who bought it").
FRAMES: dict[FactKind, tuple[str, ...]] = {
    FactKind.SHARED_BRAND: (
        'Like "{h}", which you {verb}, it is made by {v}.',
        'You {verb} "{h}", and this is made by {v} too.',
        'It is from {v}, the maker of "{h}", which you {verb}.',
        'Since you {verb} "{h}", we picked this from {v} as well.',
        'Like the {h} you {verb}, the {item} is made by {v}.',
        'You {verb} "{h}"; "{item}" is a {v} product too.',
        'Because you {verb} the {h}, here is the {item}, one more product made by {v}.',
    ),
    FactKind.SHARED_CATEGORY: (
        'Like "{h}", which you {verb}, it is in {v}.',
        'You {verb} "{h}"; this is in {v} too.',
        'It is in {v}, like "{h}", which you {verb}.',
        'Because you {verb} the {h}, we suggest the {item}, which is in {v} too.',
        'Like the {h} you {verb}, the {item} is in {v}.',
    ),
    FactKind.SHARED_USE: (
        'Like "{h}", which you {verb}, it is one of the {v} products.',
        'Since you {verb} "{h}", here is one more of the {v} products.',
        'You {verb} "{h}", and this is a {v} product too.',
        'Like the {h} you {verb}, the {item} is one of the {v} products.',
        'Because you {verb} the {h}, here is the {item}, one more of the {v} products.',
    ),
    FactKind.BOUGHT_TOGETHER: (
        'Because you {verb} "{h}": {n} {who} went on to buy this.',
        'You {verb} "{h}"; {n} {who} went on to buy this.',
        '{n} {who_full} "{h}", which you {verb}, went on to buy this.',
        'You {verb} the {h}; {n} {who} went on to buy the {item}.',
        '{n} {who_full} the {h}, which you {verb}, went on to buy the {item}.',
    ),
    FactKind.VIEWED_TOGETHER: (
        'Because you {verb} "{h}": {n} {looked} went on to look at this too.',
        'You {verb} "{h}"; {n} {looked} went on to look at this too.',
        '{n} {looked_full} "{h}", which you {verb}, went on to look at this too.',
        'You {verb} the {h}; {n} {looked} went on to look at the {item} too.',
    ),
    FactKind.OFTEN_NEXT: (
        'Because you {verb} "{h}": it is among the items shoppers are most likely to pick next after it.',
        'After "{h}", which you {verb}, shoppers are most likely to pick this next.',
        'After the {h} you {verb}, shoppers are most likely to pick the {item} next.',
        'Because you {verb} the {h}, the {item} is among the items shoppers are most likely to pick next after it.',
    ),
    FactKind.COUNTERFACTUAL: (
        'Without "{h}" in your history, it would rank #{rank_without} instead of #{rank}.',
        'Without the {h} in your history, the {item} would rank #{rank_without} instead of #{rank}.',
        'Because you {verb} "{h}", this ranks #{rank} instead of #{rank_without}.',
    ),
}
# Relations told with the recommended item's own title use its title fact too.
_ITEM_FIELD = "{item}"


@dataclass(frozen=True)
class Phrasing:
    kind: FactKind  # the relation told
    text: str
    fact_ids: tuple[str, ...]
    names_item: bool = False  # the recommended item's own title is in it


def grounded_phrasings(table: FactTable, shown: tuple[Fact, ...] | None = None) -> list[Phrasing]:
    """Phrasings of the table's reasons, each with the fact ids it uses: every relation fact told
    with its own history item, in every frame for its kind; only those that pass the check a shown
    reason must pass (`check_reason`, so no bare reason where the table has a relation). `shown`:
    the facts the prompt shows (a target may only use what the model is given); default all."""
    shown = table.facts if shown is None else shown
    title = next((f for f in shown if f.kind is FactKind.ITEM_TITLE), None)
    history = {f.history_item_id: f for f in shown if f.kind is FactKind.HISTORY_ITEM}
    if title is None or not history:
        return []
    options: list[tuple[FactKind, str, tuple[Fact, ...]]] = []
    for fact in shown:
        subject = history.get(fact.history_item_id)
        if subject is None or fact.kind not in FRAMES:
            continue
        n = fact.count or 0
        fields = {
            "verb": PAST_TENSE[subject.event or EventKind.PURCHASE], "h": subject.value, "item": title.value, "v": fact.value, "n": n,
            "who": "other shopper who bought it" if n == 1 else "other shoppers who bought it",
            "who_full": "other shopper who bought" if n == 1 else "other shoppers who bought",
            "looked": "other shopper who looked at it" if n == 1 else "other shoppers who looked at it",
            "looked_full": "other shopper who looked at" if n == 1 else "other shoppers who looked at",
            "rank": fact.rank, "rank_without": fact.rank_without,
        }
        for frame in FRAMES[fact.kind]:
            used = (subject, fact, title) if _ITEM_FIELD in frame else (subject, fact)
            options.append((fact.kind, frame.format(**fields), used))
    # A table with no relation gets no target: a model taught the bare "because you bought X" gave
    # it where the table held a relation too (the check refuses it there; the template stands in).
    return [
        Phrasing(kind, text, tuple(sorted({f.fact_id for f in facts}, key=lambda i: int(i[1:]))), title in facts)
        for kind, text, facts in options if check_reason(text, table).passed
    ]


COUNTERFACTUAL_SHARE = 0.15  # a rank number says less to a shopper than what the items share
# Most targets name the recommended item too: a slate's cards whose history item and relation are
# the same then still read differently (told without it, a small shop's slate repeated one sentence).
ITEM_NAMED_SHARE = 0.7


def pick_phrasing(options: list[Phrasing], rng: random.Random) -> Phrasing:
    """A relation first, each equally likely (the counterfactual rarely where another is there), then
    one of its phrasings: so counts and shared makers are learnt as often as the commonest frame."""
    kinds = list(dict.fromkeys(o.kind for o in options))
    others = [k for k in kinds if k is not FactKind.COUNTERFACTUAL]
    if others and FactKind.COUNTERFACTUAL in kinds and rng.random() >= COUNTERFACTUAL_SHARE:
        kinds = others
    kind = rng.choice(kinds)
    told = [o for o in options if o.kind is kind]
    named = [o for o in told if o.names_item]
    if named and rng.random() < ITEM_NAMED_SHARE:
        return rng.choice(named)
    return rng.choice(told)


def answer_json(text: str, fact_ids: tuple[str, ...]) -> str:
    return json.dumps({"text": text, "facts": list(fact_ids)}, ensure_ascii=False)


@dataclass(frozen=True)
class TuningExample:
    table: FactTable
    target: str  # the structured answer the model should write


def tuning_examples(catalog: Catalog, n: int, seed: int = 0, held_out: bool = False, passes: int = 6, template: PromptTemplateSpec | None = None) -> list[TuningExample]:
    """Up to n examples from training shoppers (or, with held_out, from the held-out ones), one
    table per shopper per pass (another of their items each pass, so a small shop gives more than
    one per shopper), each with a grounded phrasing of a relation picked at random from the facts
    `template`'s prompt shows."""
    rng = random.Random(seed)
    users = [u for u in catalog.users if is_held_out(u) == held_out and len(catalog.sequence(u)) >= 2]
    rng.shuffle(users)
    follows = FollowCounts(catalog.interactions)
    examples: list[TuningExample] = []
    for _ in range(passes):
        for user in users:
            if len(examples) >= n:
                return examples
            sequence = catalog.sequence(user)
            # Never the shopper's last two items: those are the ranker's validation and test targets.
            last = len(sequence) - 3 if len(sequence) > 3 else len(sequence) - 1
            table = content_fact_table(catalog, user, rng.randint(1, max(1, last)), rng, follows=follows)
            options = grounded_phrasings(table, prompt_facts(template, table) if template else None) if table else []
            if options:
                chosen = pick_phrasing(options, rng)
                # Where the prompt shows slots, the target writes them too, and must read back as the phrasing.
                slots = prompt_slots(template, table) if template else {}
                target = with_slots(chosen.text, slots)
                if fill_slots(target, slots) == chosen.text:
                    examples.append(TuningExample(table, answer_json(target, chosen.fact_ids)))
    return examples


def train_lora(
    model_path: str,
    template: PromptTemplateSpec,
    examples: list[TuningExample],
    variables: Callable[[FactTable], dict[str, str]],
    out_dir: Path,
    config: TuneConfig = TuneConfig(),
    progress: bool = True,
    resume: Path | None = None,
    sources: list[dict] | None = None,
) -> dict:
    """Fine-tune LoRA adapters on the examples (loss on the answer tokens only) and save them
    (peft format, loadable by `TransformersChatModel(adapter_path=...)` and by vLLM's --lora-modules).
    `resume` continues training an adapter saved earlier (more examples, same prompt)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    if resume is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(resume), is_trainable=True)
        earlier = json.loads((Path(resume) / ADAPTER_META).read_text()) if (Path(resume) / ADAPTER_META).exists() else {}
    else:
        lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
        earlier = {}
    prompt = template.chat_prompt()

    def encode(example: TuningExample) -> tuple[list[int], list[int]]:
        messages = [{"role": {"human": "user", "ai": "assistant"}.get(m.type, m.type), "content": m.content} for m in prompt.format_messages(**variables(example.table))]
        context = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(example.target + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids

    encoded = [encode(e) for e in examples]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    steps = config.epochs * ((len(encoded) + config.batch_size - 1) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / max(1, steps)))
    rng = random.Random(config.seed)
    started, losses = time.time(), []
    model.train()
    bar = tqdm(total=steps, desc="LoRA tuning", disable=not progress)
    for _ in range(config.epochs):
        order = list(range(len(encoded)))
        rng.shuffle(order)
        for start in range(0, len(order), config.batch_size):
            batch = [encoded[i] for i in order[start : start + config.batch_size]]
            width = max(len(ids) for ids, _ in batch)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch])
            labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
            mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
            # bf16 autocast about halves CPU time where the CPU has bf16 units; LoRA weights stay fp32.
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_has_bf16()):
                loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()

    # Write beside the target and rename, so an interrupted run never leaves a half adapter.
    out_dir = Path(out_dir)
    staging = out_dir.with_name(out_dir.name + ".partial")
    # Saved in fp16: half the size (the shipped adapter must stay small), and merged into the fp32
    # base at load it gives the same answers.
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.to(torch.float16)
    model.save_pretrained(staging)
    report = {
        "base_model": model_path,
        "template": template.label,
        "shops": sources or [],
        "examples": len(examples),
        "examples_in_all": len(examples) + earlier.get("examples_in_all", earlier.get("examples", 0)),
        "resumed_from": earlier or None,
        "config": asdict(config),
        "steps": steps,
        "first_loss": round(sum(losses[:5]) / max(1, len(losses[:5])), 4),
        "last_loss": round(sum(losses[-5:]) / max(1, len(losses[-5:])), 4),
        "seconds": round(time.time() - started, 1),
    }
    (staging / ADAPTER_META).write_text(json.dumps(report, indent=2))
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    return report
