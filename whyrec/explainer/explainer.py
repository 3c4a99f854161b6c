"""Turns fact tables into shown explanations: a slate goes to the generator as one batch, every
answer is checked against its facts, failures get one corrective retry, and what still fails is
replaced by the deterministic template sentence. Explanations are cached by (shopper state, item,
template version, model)."""

from __future__ import annotations

import re
import threading
from dataclasses import replace
from typing import Iterator

from langchain_core.language_models import BaseChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from whyrec.core.schema import RELATION_KINDS, Attempt, Explanation, ExplanationSource, Fact, FactKind, FactTable, FallbackReason
from whyrec.explainer.backends import GenerationInterrupted
from whyrec.explainer.cache import ExplanationCache, cache_key
from whyrec.explainer.grounding import check_reason, cited_facts
from whyrec.explainer.parsing import ExplanationParser, ParsedAnswer
from whyrec.explainer.reasons import checked_template
from whyrec.explainer.slots import fill_slots, slot_names, with_slots
from whyrec.explainer.templates import PromptTemplateSpec

RETRY_INSTRUCTION = (
    "That note was rejected because it {reason}. Write the note again, using only words and names from the facts."
)


class Explainer:
    def __init__(
        self,
        chat_model: BaseChatModel,
        template: PromptTemplateSpec,
        model_name: str,
        concurrency: int = 8,
        cache: ExplanationCache | None = None,
        max_late: int = 2,
        late: "_LateRuns | None" = None,
        model_key: str | None = None,
    ):
        self.chat_model = chat_model
        self.template = template
        self.model_name = model_name
        # What the stored texts are keyed on: the model name and a digest of its adapter's weights,
        # so a shop's own adapter and the shipped one (both "+lora-shopper.v4") never mix.
        self.model_key = model_key or model_name
        self.concurrency = concurrency
        self.cache = cache if cache is not None else ExplanationCache()
        # Batches still generating after their caller's deadline; shared with this explainer's copies.
        self.late = late if late is not None else _LateRuns(max_late)
        self.parser = ExplanationParser()
        prompt = template.chat_prompt()
        self.chain = prompt | chat_model | StrOutputParser()
        retry_prompt = ChatPromptTemplate.from_messages(
            [*prompt.messages, ("ai", "{previous}"), ("human", RETRY_INSTRUCTION)]
        )
        self.retry_chain = retry_prompt | chat_model | StrOutputParser()

    def variables(self, table: FactTable) -> dict[str, str]:
        return prompt_variables(self.template, table)

    def render(self, table: FactTable) -> list[tuple[str, str]]:
        """The exact messages the generator receives for this table (for the support console)."""
        return render_prompt(self.template, table)

    def explain(self, tables: list[FactTable], deadline_s: float | None = None) -> list[Explanation]:
        """Checked explanations, in order. With `deadline_s`, the call returns by then: an item
        without a checked answer gets the template sentence (fallback: llm_deadline_exceeded) and
        generation goes on in the background, so a late answer still lands in the cache. While
        `max_late` such batches are still running, the generator is not asked at all (a server
        that is already late is not handed more work): every item gets the template at once."""
        keys = [cache_key(t, self.template.label, self.model_key) for t in tables]
        cached = {i: hit for i, key in enumerate(keys) if (hit := self.cache.get(key)) is not None}
        todo = [i for i in range(len(tables)) if i not in cached]
        fresh = dict(zip(todo, self._generate([tables[i] for i in todo], deadline_s, [keys[i] for i in todo])))
        for i, explanation in fresh.items():
            # A template shown because the server was down or late is not the answer for these
            # facts: caching it would keep serving it after the server is back.
            if explanation.fallback is None or not explanation.fallback.transient:
                self.cache.put(keys[i], explanation, tables[i].item_id)
        return [cached[i] if i in cached else fresh[i] for i in range(len(tables))]

    def stored(self, tables: list[FactTable], count: bool = True) -> list[Explanation | None]:
        """What the cache and the explanation store hold for each table (None: nothing yet);
        `count=False` for a poll that should not move the hit rate."""
        return [self.cache.get(cache_key(t, self.template.label, self.model_key), count) for t in tables]

    def wait_for_stored(self, seen: int, timeout_s: float) -> int:
        """Until more than `seen` explanations are stored here (0 at first), or `timeout_s` passes; the count now."""
        return self.cache.wait_for_put(seen, timeout_s)

    def missing(self, tables: list[FactTable]) -> list[FactTable]:
        """The tables with nothing stored: the work left for the background explainer."""
        return [t for t, found in zip(tables, self.stored(tables)) if found is None]

    def pending(self, table: FactTable) -> Explanation:
        """The checked template sentence, shown while the model's text for the table is on its way."""
        text, facts = checked_template(table)
        note = Attempt("", "", False, "llm pending: the model's text is being written in the background")
        return Explanation(text, ExplanationSource.TEMPLATE, False, facts, self.template.label, self.model_name, (note,), FallbackReason.LLM_PENDING)

    def stream(self, table: FactTable) -> Iterator[str]:
        """The generator's raw answer for one table as it is written (for the prompt lab and the
        support console; a shopper is shown only what `explain` returns, after the check)."""
        yield from self.chain.stream(self.variables(table))

    def _generate(self, tables: list[FactTable], deadline_s: float | None = None, keys: list[str] | None = None) -> list[Explanation]:
        if not tables:
            return []
        run = _Run(len(tables))
        if deadline_s is None:
            self._run(tables, run, keys)
            return self._explanations(tables, run)
        if self.late.full():
            return self._explanations(tables, run, late=f"not asked: {self.late.count} earlier generations are still running past their deadline")
        if deadline_s <= 0:
            return self._explanations(tables, run, late="the deadline passed before generation started")
        worker = threading.Thread(target=self._run_in_background, args=(tables, run, keys or []), daemon=True)
        worker.start()
        worker.join(deadline_s)
        with run.lock:
            run.expired = not run.finished
            if run.expired:
                self.late.add(1)
            return self._explanations(tables, run, late=f"no checked answer within {deadline_s:.3g} s" if run.expired else None)

    def _run(self, tables: list[FactTable], run: "_Run", keys: list[str] | None = None) -> None:
        """Generate, check, retry the failures once; every outcome is recorded in `run` as it comes.
        With `keys`, the first round's checked texts are stored before the retry round: a page
        polling the store shows them without waiting for the slate's slowest item."""
        config = {"max_concurrency": self.concurrency}
        inputs = [self.variables(t) for t in tables]
        try:
            first = self.chain.batch(inputs, config=config, return_exceptions=True)
        except Exception as exc:  # noqa: BLE001 - a backend whose batch raises instead of returning the error
            first = [exc] * len(tables)
        _raise_if_interrupted(first)  # the caller asked for it: nothing is recorded, the tables are still to do
        retry: list[int] = []
        with run.lock:
            for i, raw in enumerate(first):
                answer, attempt, fallback = self.judge(raw, tables[i])
                run.record(i, answer, attempt, fallback)
                if not attempt.passed and not isinstance(raw, Exception):
                    retry.append(i)
            run.settled.update(i for i in range(len(tables)) if i not in retry)
            if run.expired:
                return  # nobody waits for the retry; leave the generator to live requests
            early = self._explanations(tables, run) if keys and retry else []
        for i, explanation in enumerate(early):
            if i in run.accepted:
                self.cache.put(keys[i], explanation, tables[i].item_id)
        if not retry:
            return
        retry_inputs = [{**inputs[i], "previous": run.attempts[i][0].text or run.attempts[i][0].raw_output, "reason": _reason_phrase(run.attempts[i][0].reason)} for i in retry]
        try:
            second = self.retry_chain.batch(retry_inputs, config=config, return_exceptions=True)
        except Exception as exc:  # noqa: BLE001 - as above
            second = [exc] * len(retry)
        _raise_if_interrupted(second)  # the first round's checked texts are stored already
        with run.lock:
            for i, raw in zip(retry, second):
                run.record(i, *self.judge(raw, tables[i]))
                run.settled.add(i)

    def _run_in_background(self, tables: list[FactTable], run: "_Run", keys: list[str]) -> None:
        try:
            self._run(tables, run, keys)
        finally:
            with run.lock:
                run.finished = True
                late = self._explanations(tables, run) if run.expired else []
            if run.expired:
                self.late.add(-1)
        for key, table, explanation in zip(keys, tables, late):
            if explanation.source is ExplanationSource.LLM:
                self.cache.put(key, explanation, table.item_id)

    def _explanations(self, tables: list[FactTable], run: "_Run", late: str | None = None) -> list[Explanation]:
        """`late`: why the caller stops waiting (items without a settled answer then fall back for it)."""
        explanations = []
        for i, table in enumerate(tables):
            attempts = list(run.attempts[i])
            if i in run.accepted:
                answer = run.accepted[i]
                by_id = table.by_id()
                ids = [f for f in answer.fact_ids if f in by_id] or cited_facts(answer.text, table)
                explanations.append(
                    Explanation(answer.text, ExplanationSource.LLM, True, tuple(by_id[f] for f in ids), self.template.label, self.model_name, tuple(attempts))
                )
                continue
            fallback = run.fallbacks.get(i, FallbackReason.LLM_UNAVAILABLE)
            if late is not None and i not in run.settled:
                attempts.append(Attempt("", "", False, f"{_PHRASES[FallbackReason.LLM_DEADLINE_EXCEEDED]}: {late}"))
                fallback = FallbackReason.LLM_DEADLINE_EXCEEDED
            elif not attempts:
                attempts.append(Attempt("", "", False, f"{_PHRASES[FallbackReason.LLM_UNAVAILABLE]}: the generator gave no answer"))
            text, facts = checked_template(table)
            explanations.append(
                Explanation(text, ExplanationSource.TEMPLATE, False, facts, self.template.label, self.model_name, tuple(attempts), fallback)
            )
        return explanations

    def judge(self, raw: str | Exception, table: FactTable) -> tuple[ParsedAnswer | None, Attempt, FallbackReason | None]:
        """The parsed answer, its recorded attempt, and why it cannot be shown (None: it can)."""
        if isinstance(raw, Exception):
            # The generator is down, timed out or sent something that is not a chat answer: recorded,
            # and the template sentence is shown.
            fallback = FallbackReason.LLM_OUTPUT_UNPARSEABLE if _is_malformed_response(raw) else FallbackReason.LLM_UNAVAILABLE
            reason = f"{_PHRASES[fallback]}: {type(raw).__name__}: {str(raw)[:200]}"
            return None, Attempt(raw_output="", text="", passed=False, reason=reason), fallback
        answer = self.parser.parse(raw)
        if self.template.name_slots:
            slots = prompt_slots(self.template, table)
            twice = next((slot for slot in slots if answer.text.count(slot) > 1), None)
            if twice is not None:
                # No true reason names one product twice; the model put a title where a fact's value
                # belongs ('"Kovo Mug" is a "Kovo Mug" too'), which the claim check reads as a name.
                text = fill_slots(answer.text, slots)
                return answer, Attempt(raw_output=raw, text=text, passed=False, reason=f"names {slots[twice]!r} twice, in place of a fact"), FallbackReason.UNGROUNDED
            answer = replace(answer, text=fill_slots(answer.text, slots))
        if answer.cut_off:
            attempt = Attempt(raw_output=raw, text=answer.text, passed=False, reason="is cut off: the answer stops inside its text (the token limit)")
            return answer, attempt, FallbackReason.UNGROUNDED
        if not re.search(r"\w", answer.text):
            reason = f"{_PHRASES[FallbackReason.LLM_OUTPUT_UNPARSEABLE]}: no sentence in the answer"
            return answer, Attempt(raw_output=raw, text="", passed=False, reason=reason), FallbackReason.LLM_OUTPUT_UNPARSEABLE
        verdict = check_reason(answer.text, table)
        attempt = Attempt(raw_output=raw, text=answer.text, passed=verdict.passed, reason=verdict.reason)
        return answer, attempt, None if verdict.passed else FallbackReason.UNGROUNDED


_PHRASES = {
    FallbackReason.LLM_UNAVAILABLE: "llm unavailable",
    FallbackReason.LLM_DEADLINE_EXCEEDED: "llm deadline exceeded",
    FallbackReason.LLM_OUTPUT_UNPARSEABLE: "llm output unparseable",
}


def _is_malformed_response(exc: Exception) -> bool:
    """A response arrived but is not a chat completion (not JSON, or JSON of another shape)."""
    import openai
    from pydantic import ValidationError

    # langchain-openai raises ValueError for a body that is not a JSON object, TypeError for one without "choices".
    return isinstance(exc, (ValueError, openai.APIResponseValidationError, ValidationError, KeyError, TypeError, AttributeError))


class _Run:
    """One batch's outcomes so far, shared between the generating thread and the caller waiting on a deadline."""

    def __init__(self, n: int):
        self.lock = threading.Lock()
        self.attempts: list[list[Attempt]] = [[] for _ in range(n)]
        self.accepted: dict[int, ParsedAnswer] = {}
        self.fallbacks: dict[int, FallbackReason] = {}
        self.settled: set[int] = set()  # no attempt pending
        self.expired = False  # the caller stopped waiting
        self.finished = False  # the generating thread is done

    def record(self, i: int, answer: ParsedAnswer | None, attempt: Attempt, fallback: FallbackReason | None) -> None:
        self.attempts[i].append(attempt)
        if fallback is None:
            self.accepted[i] = answer
            self.fallbacks.pop(i, None)
        else:
            self.fallbacks[i] = fallback


class _LateRuns:
    """How many batches are still generating after their caller's deadline."""

    def __init__(self, limit: int):
        self.limit = limit
        self.count = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.count += n

    def full(self) -> bool:
        return self.count >= self.limit


def prompt_facts(template: PromptTemplateSpec, table: FactTable) -> tuple[Fact, ...]:
    """The facts the prompt shows: the template's kinds, and with `history_items` only the facts
    about that many history items, those the table ties to the item by a relation first (the table
    lists the ranker's drivers first, so the first told is what raised the item most)."""
    shown = [f for f in table.facts if f.kind in template.fact_kinds]
    if template.history_items is None:
        return tuple(shown)
    history = list(dict.fromkeys(f.history_item_id for f in shown if f.kind is FactKind.HISTORY_ITEM))
    related = {f.history_item_id for f in shown if f.kind in RELATION_KINDS}
    told = set(sorted(history, key=lambda h: h not in related)[: template.history_items])
    # Where shoppers both bought and looked, the purchases are told: given both counts, the small
    # model wrote "1 other shopper who bought it went on to look at this".
    bought = {f.history_item_id for f in shown if f.kind is FactKind.BOUGHT_TOGETHER}
    return tuple(
        f for f in shown
        if (f.history_item_id is None or f.history_item_id in told) and not (f.kind is FactKind.VIEWED_TOGETHER and f.history_item_id in bought)
    )


def prompt_slots(template: PromptTemplateSpec, table: FactTable) -> dict[str, str]:
    """slot -> title where the template writes names as slots, else nothing."""
    return slot_names(prompt_facts(template, table)) if template.name_slots else {}


def prompt_variables(template: PromptTemplateSpec, table: FactTable) -> dict[str, str]:
    shown = prompt_facts(template, table)
    slots = slot_names(shown) if template.name_slots else {}
    facts = "\n".join(f"[{f.fact_id}] {with_slots(f.text, slots)}" for f in shown)
    title = next((f.value for f in table.facts if f.kind.value == "item_title"), table.item_id)
    values = {"facts": facts, "item_title": title}
    return {k: values[k] for k in template.variables if k in values}


def render_prompt(template: PromptTemplateSpec, table: FactTable) -> list[tuple[str, str]]:
    """The generator's whole input for this table: equal renders mean equal behaviour."""
    return [(m.type, m.content) for m in template.chat_prompt().format_messages(**prompt_variables(template, table))]


def _raise_if_interrupted(answers: list) -> None:
    """LangChain hands back a batch's exceptions as answers; an interruption is not an answer."""
    stopped = next((a for a in answers if isinstance(a, GenerationInterrupted)), None)
    if stopped is not None:
        raise stopped


def _reason_phrase(reason: str) -> str:
    if reason.startswith("not in the facts: "):
        return "used words that are not in the facts (" + reason[len("not in the facts: ") :] + ")"
    return reason
