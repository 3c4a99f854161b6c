"""The explainer: fact table -> versioned prompt -> generator -> grounding check -> text or template sentence."""

from whyrec.explainer.backends import GenerationInterrupted, TransformersChatModel, interruptible, make_chat_model, stop_requested
from whyrec.explainer.cache import ExplanationCache
from whyrec.explainer.explainer import Explainer
from whyrec.explainer.facts import build_fact_table, cold_start_fact_table
from whyrec.explainer.grounding import GroundingVerdict, check_grounding, check_reason
from whyrec.explainer.reasons import checked_template, one_fact_sentence, template_sentence
from whyrec.explainer.store import ExplanationStore
from whyrec.explainer.templates import PromptTemplateSpec, load_template

__all__ = [
    "ExplanationCache",
    "ExplanationStore",
    "Explainer",
    "GenerationInterrupted",
    "GroundingVerdict",
    "PromptTemplateSpec",
    "TransformersChatModel",
    "build_fact_table",
    "checked_template",
    "cold_start_fact_table",
    "check_grounding",
    "check_reason",
    "interruptible",
    "load_template",
    "make_chat_model",
    "one_fact_sentence",
    "stop_requested",
    "template_sentence",
]
