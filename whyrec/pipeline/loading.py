"""Where the trained state and the data live, and loading them: the data folder, the model folders
and their manifest, the embedded catalog, the fused candidate stage and the configured explainer."""

from __future__ import annotations

import hashlib
import importlib.resources
import sys
from pathlib import Path
from typing import Callable

from whyrec.core.catalog import Catalog, fingerprint
from whyrec.core.config import Settings
from whyrec.core.errors import ConfigError
from whyrec.core.follows import FollowCounts
from whyrec.core.loaders import load_catalog
from whyrec.explainer import Explainer, ExplanationCache, PromptTemplateSpec, available_templates, builtin_prompt_dir, load_template, make_chat_model
from whyrec.pipeline import models
from whyrec.pipeline.manifest import TrainedManifest, check_settings, read_manifest
from whyrec.retrieval import CooccurrenceRetriever, EmbeddingRetriever, FusedRetriever, FusionWeights, ItemIndex, SequenceRetriever, embed_items, load_encoder

Log = Callable[[str], None]


def stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def data_folder(settings: Settings) -> Path:
    """The configured data folder, or the sample store bundled with the package."""
    if settings.data is not None:
        return Path(settings.data)
    return Path(str(importlib.resources.files("whyrec.sample_data")))


def load_data(settings: Settings) -> Catalog:
    return load_catalog(data_folder(settings))


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def cache_folder(settings: Settings, catalog: Catalog) -> Path:
    return settings.cache_dir / "data" / f"{catalog.name}-{fingerprint(catalog)}"


def models_folder(settings: Settings, catalog: Catalog) -> Path:
    """Everything trained on this data with this encoder: the manifest, the sequence model and the
    ranker. v4: the first layout with a manifest, so models an older whyrec trained (v3, without one)
    are not read at all: a shop that had them trains anew on first use, as a new one does."""
    return cache_folder(settings, catalog) / f"models-v4-{_short_hash(models.encoder_path(settings))}"


def ranker_folder(settings: Settings, catalog: Catalog) -> Path:
    return models_folder(settings, catalog) / "ranker"


def sequence_folder(settings: Settings, catalog: Catalog) -> Path:
    return models_folder(settings, catalog) / "sequence"


def retrain_command(settings: Settings) -> str:
    return f"whyrec train --data {data_folder(settings)}"


def trained_manifest(settings: Settings, catalog: Catalog) -> TrainedManifest:
    """The manifest of the models trained on this data, checked against the settings the user set."""
    folder = models_folder(settings, catalog)
    manifest = read_manifest(folder, retrain_command(settings))
    check_settings(manifest, settings, folder, retrain_command(settings))
    return manifest


def embedding_retriever(settings: Settings, catalog: Catalog, encoder=None, log: Log = stderr_log) -> EmbeddingRetriever:
    """Embed the catalog (cached per item texts and encoder) and index it, reading the configured
    history window (what training uses; `build_retriever` serves with the manifest's)."""
    encoder_path = models.encoder_path(settings)
    item_ids = sorted(catalog.items)
    cache_file = (
        settings.cache_dir / "data" / f"{catalog.name}-items-{fingerprint(catalog, with_interactions=False)}"
        / f"embeddings-{_short_hash(encoder_path)}.npy"
    )
    if not cache_file.exists():
        log(f"embedding {len(item_ids)} items with {Path(encoder_path).name} (cached at {cache_file.parent})...")
    if encoder is None and not cache_file.exists():
        encoder = load_encoder(encoder_path, settings.resolved_device())
    try:
        vectors = embed_items(encoder, [catalog.items[i] for i in item_ids], cache_file)
    except (ValueError, OSError, EOFError) as exc:
        # A damaged cache is not silently recomputed: a file that changes under a running shop is worth knowing about.
        raise ConfigError(
            f"cannot read the item embeddings (the FAISS index's vectors) at {cache_file} ({type(exc).__name__}: {exc}); "
            f"delete it to rebuild it from the catalog on the next start: `rm {cache_file}`"
        ) from None
    index = ItemIndex(item_ids, vectors, kind=settings.index_kind, device=settings.resolved_device(settings.index_device))
    return EmbeddingRetriever(index, history_window=settings.history_window)


def build_retriever(
    settings: Settings,
    catalog: Catalog,
    embedding: EmbeddingRetriever,
    sequences: list[list[str]] | None = None,
    manifest: TrainedManifest | None = None,
) -> FusedRetriever:
    """The fused candidate stage as `whyrec train` left it: the sequence model, and the history
    window and fusion weights of the manifest (read here unless given); `embedding` lends its item
    index. Co-occurrence is counted on `sequences` (default: every shopper's whole sequence, and then
    the shopper counts that collaborative reasons state are counted on every event)."""
    manifest = manifest or trained_manifest(settings, catalog)
    if manifest.feature_names != FusedRetriever.feature_names:
        raise ConfigError(
            f"the models at {models_folder(settings, catalog)} were trained on the retrieval features {', '.join(manifest.feature_names)}, "
            f"this whyrec computes {', '.join(FusedRetriever.feature_names)}: run `{retrain_command(settings)}`"
        )
    folder = sequence_folder(settings, catalog)
    if not folder.exists():
        raise ConfigError(f"no sequence model for this data at {folder}; run `{retrain_command(settings)}`")
    sequence = SequenceRetriever.load(folder, embedding.index.vectors)
    follows = None
    if sequences is None:
        sequences = [catalog.sequence(u) for u in catalog.users]
        follows = FollowCounts(catalog.interactions)
    cooccurrence = CooccurrenceRetriever(sequences, history_window=manifest.history_window)
    return FusedRetriever(with_window(embedding, manifest.history_window), cooccurrence, sequence, FusionWeights(**manifest.fusion_weights), follows)


def with_window(embedding: EmbeddingRetriever, history_window: int) -> EmbeddingRetriever:
    """The same item index, queried with the recent `history_window` items."""
    return EmbeddingRetriever(embedding.index, history_window=history_window, matches_per_candidate=embedding.matches_per_candidate)


def template_dirs(settings: Settings) -> list[Path]:
    """Where templates are looked up besides the package's prompts/: the shop's WHYREC_PROMPTS_DIR."""
    return [settings.prompts_dir] if settings.prompts_dir else []


def templates(settings: Settings) -> dict[str, dict[int, object]]:
    """Every template name this shop can use, with its versions."""
    return available_templates(template_dirs(settings))


def save_folder(settings: Settings) -> Path:
    """Where the Prompt lab saves a new version: WHYREC_PROMPTS_DIR, else the package's prompts/."""
    return settings.prompts_dir or Path(str(builtin_prompt_dir()))


def default_adapter_folder(settings: Settings, template: PromptTemplateSpec) -> Path:
    """Where `whyrec explainer tune` saves the adapter for this generator and template by default."""
    return settings.cache_dir / "adapters" / settings.generator.replace("/", "--") / f"lora-{template.label}"


def shipped_adapter_folder(settings: Settings, template: PromptTemplateSpec) -> Path:
    """The adapter that ships inside the package for this generator and template (only the default
    generator has one; `scripts/tune-adapter.sh` makes it)."""
    return Path(str(importlib.resources.files("whyrec.explainer"))) / "adapters" / settings.generator.replace("/", "--") / f"lora-{template.label}"


def resolve_adapter(settings: Settings, template: PromptTemplateSpec) -> Path | None:
    """The LoRA adapter the in-process generator loads: WHYREC_ADAPTER when set ('none' = no
    adapter), else one `whyrec explainer tune` saved for this shop's generator and template, else
    the shipped one. A server (WHYREC_LLM_URL) serves its own; only an explicit setting names it."""
    if "adapter" in settings.model_fields_set or settings.adapter is not None:
        return None if settings.adapter is None or str(settings.adapter).lower() == "none" else settings.adapter
    if settings.llm_url:
        return None
    for folder in (default_adapter_folder(settings, template), shipped_adapter_folder(settings, template)):
        if (folder / "adapter_config.json").exists():
            return folder
    return None


def configured_template(settings: Settings) -> PromptTemplateSpec:
    return load_template(settings.prompt, settings.prompt_version, extra_dirs=template_dirs(settings))


def build_explainer(settings: Settings, log: Log = stderr_log) -> Explainer:
    """The configured explainer, with the adapter `resolve_adapter` picks."""
    template = configured_template(settings)
    settings = settings.model_copy(update={"adapter": resolve_adapter(settings, template)})
    generator = None if settings.llm_url else models.generator_path(settings, progress=log)
    chat_model, model_name = make_chat_model(settings, generator)
    cache = ExplanationCache(settings.explanation_cache_size)
    return Explainer(chat_model, template, model_name, concurrency=settings.llm_concurrency, cache=cache, max_late=settings.llm_max_late,
                     model_key=_model_key(model_name, settings.adapter))


def _model_key(model_name: str, adapter: Path | None) -> str:
    """The model name with a digest of the adapter's weights: what stored explanations are keyed on."""
    weights = Path(adapter) / "adapter_model.safetensors" if adapter else None
    if weights is None or not weights.exists():
        return model_name
    return f"{model_name}@{hashlib.sha256(weights.read_bytes()).hexdigest()[:12]}"


