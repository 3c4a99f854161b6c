"""The settings that move each part of whyrec off the single box (docs/scaling.md): each heavy part on
its own device, vLLM over several GPUs. (Two API replicas on one store: tests/test_replicas.py;
PostgreSQL as the shared store: tests/test_durability.py.)"""

import pytest

from whyrec.core.config import Settings
from whyrec.core.errors import ConfigError
from whyrec.explainer.serve import vllm_command


def test_the_ranker_and_the_index_each_read_their_own_device_setting(monkeypatch):
    monkeypatch.setenv("WHYREC_DEVICE", "cpu")
    monkeypatch.setenv("WHYREC_RANKER_DEVICE", "cuda")
    settings = Settings()
    assert settings.resolved_device(settings.ranker_device) == "cuda"
    assert settings.resolved_device(settings.index_device) == "cpu"  # unset: the general device


def test_tensor_parallel_size_reaches_the_vllm_command_line(monkeypatch):
    monkeypatch.setenv("WHYREC_VLLM_TENSOR_PARALLEL_SIZE", "4")
    size = Settings().vllm_tensor_parallel_size
    command = vllm_command("python", "/models/m", "m", "127.0.0.1", 8000, gpu=True, tensor_parallel=size)
    assert command[command.index("--tensor-parallel-size") + 1] == "4"
    assert "--tensor-parallel-size" not in vllm_command("python", "/models/m", "m", "127.0.0.1", 8000, gpu=True)


def test_tensor_parallel_without_a_gpu_is_refused_naming_the_setting():
    with pytest.raises(ConfigError, match="WHYREC_VLLM_TENSOR_PARALLEL_SIZE=2 .* no"):
        vllm_command("python", "/models/m", "m", "127.0.0.1", 8000, gpu=False, tensor_parallel=2)


@pytest.mark.integration
def test_the_pipeline_loads_the_ranker_on_the_device_its_setting_names(slice_settings, slice_catalog, slice_training):
    """With the general device set to a GPU this box lacks, loading works only when the ranker's own
    setting (cpu here) is what the pipeline uses. (faiss-cpu treats 'cuda' as CPU, so the index's
    setting cannot be told apart here.)"""
    import torch

    from whyrec.pipeline import load_models

    if torch.cuda.is_available():
        pytest.skip("needs a box without CUDA: there, 'cuda' for a part would fail to load")
    settings = slice_settings.model_copy(update={"device": "cuda", "ranker_device": "cpu", "index_device": "cpu", "auto_train": False})
    _retriever, ranker = load_models(settings, slice_catalog)
    assert next(ranker.model.parameters()).device.type == "cpu"
