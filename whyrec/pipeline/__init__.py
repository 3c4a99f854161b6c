"""The pipeline: the only code that imports the stages (retrieval, ranker, explainer) and wires them
together. The service, the UI, the CLI and offline jobs use it through these names: load the data
and the trained models, rank and explain a slate, answer "why not?", train, and the templates and
titles the views show."""

from whyrec.explainer import ExplanationStore, GenerationInterrupted, GroundingVerdict, PromptTemplateSpec, check_reason, interruptible, parse_template, short_title
from whyrec.pipeline.loading import (
    Log,
    build_explainer,
    build_retriever,
    cache_folder,
    data_folder,
    default_adapter_folder,
    embedding_retriever,
    load_data,
    models_folder,
    ranker_folder,
    resolve_adapter,
    save_folder,
    sequence_folder,
    shipped_adapter_folder,
    stderr_log,
    template_dirs,
    templates,
)
from whyrec.pipeline.manifest import TrainedManifest
from whyrec.pipeline.models import encoder_path, generator_path, pull_default_generator
from whyrec.pipeline.prompt_lab import LabComparison, TemplateRun, sample_tables, save_new_version
from whyrec.pipeline.prompt_lab import compare as compare_templates
from whyrec.pipeline.recommender import ItemAlreadyListed, ItemRemoved, NoHistoryLeft, Recommender, topic_words
from whyrec.pipeline.training import FeedbackSummary, TrainedModels, TrainSummary, load_models, load_trained, train, train_from_feedback

__all__ = [
    "LabComparison",
    "TemplateRun",
    "compare_templates",
    "encoder_path",
    "generator_path",
    "pull_default_generator",
    "sample_tables",
    "save_folder",
    "template_dirs",
    "templates",
    "save_new_version",
    "ExplanationStore",
    "FeedbackSummary",
    "GenerationInterrupted",
    "GroundingVerdict",
    "Log",
    "ItemAlreadyListed",
    "ItemRemoved",
    "NoHistoryLeft",
    "PromptTemplateSpec",
    "Recommender",
    "TrainSummary",
    "TrainedManifest",
    "TrainedModels",
    "build_explainer",
    "build_retriever",
    "cache_folder",
    "check_reason",
    "data_folder",
    "default_adapter_folder",
    "embedding_retriever",
    "interruptible",
    "load_data",
    "load_models",
    "load_trained",
    "models_folder",
    "parse_template",
    "ranker_folder",
    "resolve_adapter",
    "sequence_folder",
    "shipped_adapter_folder",
    "short_title",
    "stderr_log",
    "topic_words",
    "train",
    "train_from_feedback",
]
