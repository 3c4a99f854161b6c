import json

import pytest

from whyrec.explainer import check_grounding
from whyrec.explainer.tuning import ADAPTER_META, TuneConfig, is_held_out, train_lora, tuning_examples


def test_tuning_examples_come_from_training_shoppers_and_every_target_passes_the_check(slice_catalog):
    examples = tuning_examples(slice_catalog, 30)
    assert len(examples) >= 20
    for example in examples:
        assert not is_held_out(example.table.user_id)
        answer = json.loads(example.target)
        assert check_grounding(answer["text"], example.table).passed
        assert set(answer["facts"]) <= set(example.table.by_id())


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
    from whyrec.models import generator_path

    template = load_template("shopper")
    model_path = generator_path(slice_settings)
    examples = tuning_examples(slice_catalog, 4)
    report = train_lora(model_path, template, examples, lambda t: prompt_variables(template, t), tmp_path / "lora", TuneConfig(examples=4, batch_size=4), progress=False)
    assert report["steps"] == 1 and (tmp_path / "lora" / "adapter_config.json").exists()
    assert json.loads((tmp_path / "lora" / ADAPTER_META).read_text())["template"] == "shopper.v3"
    model = TransformersChatModel(model_path=model_path, adapter_path=str(tmp_path / "lora"), max_new_tokens=8)
    messages = template.chat_prompt().format_messages(**prompt_variables(template, examples[0].table))
    assert model.generate_texts([messages])[0]
