import json

import pytest

from whyrec.core.schema import FactKind
from whyrec.explainer import check_grounding
from whyrec.explainer.tuning import (
    ADAPTER_META,
    TuneConfig,
    is_held_out,
    train_lora,
    tuning_examples,
)


def test_tuning_examples_come_from_training_shoppers_and_every_target_passes_the_check(slice_catalog):
    examples = tuning_examples(slice_catalog, 30)
    assert len(examples) >= 20
    for example in examples:
        assert not is_held_out(example.table.user_id)
        answer = json.loads(example.target)
        assert check_grounding(answer["text"], example.table).passed
        assert set(answer["facts"]) <= set(example.table.by_id())


def test_a_target_uses_only_the_facts_its_prompt_shows(slice_catalog):
    from whyrec.explainer import load_template
    from whyrec.explainer.explainer import prompt_facts, prompt_slots
    from whyrec.explainer.slots import fill_slots

    focused = load_template("shopper", 4)
    examples = tuning_examples(slice_catalog, 30, template=focused)
    assert len(examples) >= 20
    for example in examples:
        shown = {f.fact_id for f in prompt_facts(focused, example.table)}
        answer = json.loads(example.target)
        assert set(answer["facts"]) <= shown
        # Written in the prompt's name slots, it reads back as a sentence that passes the check.
        assert "<history item>" in answer["text"] and '"' not in answer["text"]
        assert check_grounding(fill_slots(answer["text"], prompt_slots(focused, example.table)), example.table).passed


def test_most_targets_name_the_recommended_item_so_a_slates_cards_read_differently(slice_catalog):
    from whyrec.explainer import load_template

    examples = tuning_examples(slice_catalog, 60, template=load_template("shopper", 4))
    named = sum("<recommended item>" in json.loads(e.target)["text"] for e in examples)
    assert named >= 0.5 * len(examples)


def test_held_out_examples_come_only_from_held_out_shoppers(slice_catalog):
    examples = tuning_examples(slice_catalog, 10, held_out=True)
    assert examples and all(is_held_out(e.table.user_id) for e in examples)


def test_tuning_targets_are_varied(slice_catalog):
    openings = {json.loads(e.target)["text"].split(" the ")[0] for e in tuning_examples(slice_catalog, 40)}
    assert len(openings) >= 3


@pytest.mark.integration
def test_a_tuned_adapter_is_saved_and_loads_into_the_in_process_backend(slice_catalog, slice_settings, tmp_path):
    from whyrec.explainer import TransformersChatModel, load_template
    from whyrec.explainer.explainer import prompt_variables
    from whyrec.pipeline.models import generator_path

    template = load_template("shopper")
    model_path = generator_path(slice_settings)
    examples = tuning_examples(slice_catalog, 4)
    report = train_lora(model_path, template, examples, lambda t: prompt_variables(template, t), tmp_path / "lora", TuneConfig(examples=4, batch_size=4), progress=False)
    assert report["steps"] == 1 and (tmp_path / "lora" / "adapter_config.json").exists()
    assert json.loads((tmp_path / "lora" / ADAPTER_META).read_text())["template"] == template.label == "shopper.v4"
    model = TransformersChatModel(model_path=model_path, adapter_path=str(tmp_path / "lora"), max_new_tokens=8)
    messages = template.chat_prompt().format_messages(**prompt_variables(template, examples[0].table))
    assert model.generate_texts([messages])[0]


def test_every_relation_is_phrased_many_ways_and_each_phrasing_passes_the_shown_reason_check(slice_catalog):
    from whyrec.explainer import check_reason
    from whyrec.explainer.tuning import grounded_phrasings

    phrasings: dict = {}
    for example in tuning_examples(slice_catalog, 60):
        for option in grounded_phrasings(example.table):
            assert check_reason(option.text, example.table).passed
            phrasings.setdefault(option.kind, set()).add(option.text.split('"')[0])
    assert FactKind.BOUGHT_TOGETHER in phrasings
    for kind in (FactKind.BOUGHT_TOGETHER, FactKind.SHARED_CATEGORY, FactKind.COUNTERFACTUAL):
        assert len(phrasings.get(kind, ())) >= 3, (kind, phrasings.get(kind))


def test_a_relation_is_picked_before_a_phrasing_so_the_many_framed_counterfactual_does_not_crowd_out_counts():
    import random

    from whyrec.explainer.tuning import Phrasing, pick_phrasing

    options = [Phrasing(FactKind.COUNTERFACTUAL, f"c{i}", ()) for i in range(6)] + [Phrasing(FactKind.BOUGHT_TOGETHER, "b", ())]
    rng = random.Random(0)
    picked = [pick_phrasing(options, rng).kind for _ in range(400)]
    assert picked.count(FactKind.BOUGHT_TOGETHER) > 0.7 * len(picked)
    assert picked.count(FactKind.COUNTERFACTUAL) > 0


def test_the_shipped_adapter_is_small_half_precision_and_tuned_on_more_than_one_shop():
    from pathlib import Path

    from safetensors import safe_open

    folder = Path(__file__).resolve().parents[1] / "whyrec" / "explainer" / "adapters" / "smollm2-135m-instruct" / "lora-shopper.v4"
    weights = folder / "adapter_model.safetensors"
    assert weights.stat().st_size <= 8 * 1024 * 1024
    with safe_open(str(weights), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float16"}
    meta = json.loads((folder / ADAPTER_META).read_text())
    assert len({s["data_fingerprint"] for s in meta["shops"]}) >= 2 and meta["config"]["seed"] == 0
    assert meta["template"] == "shopper.v4"


def test_the_explainer_loads_the_shops_own_adapter_else_the_shipped_one_and_none_turns_it_off(tmp_path):
    from whyrec.core.config import Settings
    from whyrec.explainer import load_template
    from whyrec.pipeline import (
        default_adapter_folder,
        resolve_adapter,
        shipped_adapter_folder,
    )

    template = load_template("shopper")
    settings = Settings(cache_dir=tmp_path)
    assert resolve_adapter(settings, template) == shipped_adapter_folder(settings, template)
    assert resolve_adapter(Settings(cache_dir=tmp_path, adapter="none"), template) is None
    assert resolve_adapter(Settings(cache_dir=tmp_path, llm_url="http://127.0.0.1:9/v1"), template) is None
    own = default_adapter_folder(settings, template)
    own.mkdir(parents=True)
    (own / "adapter_config.json").write_text("{}")
    assert resolve_adapter(settings, template) == own
    assert resolve_adapter(Settings(cache_dir=tmp_path, generator="/models/other"), template) is None
