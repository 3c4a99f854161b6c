"""The explainer: fact table -> versioned prompt -> generator -> grounding check -> text or checked
template sentence; its evaluations, adapter tuning and vLLM serving helpers. Everything outside this
stage imports these names."""

from whyrec.explainer.backends import GenerationInterrupted, TransformersChatModel, interruptible, make_chat_model, stop_requested, tuned_model_name
from whyrec.explainer.cache import ExplanationCache
from whyrec.explainer.evaluation import explanation_metrics, first_answer_metrics, table_evidence
from whyrec.explainer.explainer import Explainer, prompt_facts
from whyrec.explainer.facts import build_fact_table, cold_start_fact_table, short_title
from whyrec.explainer.grounding import GroundingVerdict, check_grounding, check_reason
from whyrec.explainer.grounding_eval import DEFAULT_LABELS, evaluate_grounding_check, load_labelled_sentences, read_fact_table, read_texts
from whyrec.explainer.reasons import checked_template, one_fact_sentence, template_sentence
from whyrec.explainer.reference_eval import BERTSCORE_LAYER, bertscore_f1, bleu4, load_reference_cases, reference_fact_table, rouge_l
from whyrec.explainer.serve import find_vllm_python, merged_model_folder, vllm_command, vllm_env
from whyrec.explainer.store import ExplanationStore
from whyrec.explainer.templates import PromptTemplateSpec, available_templates, builtin_prompt_dir, load_template, parse_template
from whyrec.explainer.tuning import TuneConfig, is_held_out, train_lora, tuning_examples

__all__ = [
    "BERTSCORE_LAYER",
    "DEFAULT_LABELS",
    "ExplanationCache",
    "ExplanationStore",
    "Explainer",
    "GenerationInterrupted",
    "GroundingVerdict",
    "PromptTemplateSpec",
    "TransformersChatModel",
    "TuneConfig",
    "available_templates",
    "bertscore_f1",
    "bleu4",
    "build_fact_table",
    "builtin_prompt_dir",
    "check_grounding",
    "check_reason",
    "checked_template",
    "cold_start_fact_table",
    "evaluate_grounding_check",
    "explanation_metrics",
    "find_vllm_python",
    "first_answer_metrics",
    "interruptible",
    "is_held_out",
    "load_labelled_sentences",
    "load_reference_cases",
    "load_template",
    "make_chat_model",
    "merged_model_folder",
    "one_fact_sentence",
    "parse_template",
    "prompt_facts",
    "read_fact_table",
    "read_texts",
    "reference_fact_table",
    "rouge_l",
    "short_title",
    "stop_requested",
    "table_evidence",
    "template_sentence",
    "train_lora",
    "tuned_model_name",
    "tuning_examples",
    "vllm_command",
    "vllm_env",
]
