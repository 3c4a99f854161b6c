import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
OFFICE = SHARED_DATA / "amazon-office"
SCIENTIFIC = SHARED_DATA / "amazon-scientific"
SLICE_USERS = 80


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache for the session (converted generator, embeddings, ranker): models convert once.
    WHYREC_TEST_CACHE reuses a cache across runs on a developer machine."""
    if os.environ.get("WHYREC_TEST_CACHE"):
        return Path(os.environ["WHYREC_TEST_CACHE"])
    return tmp_path_factory.mktemp("whyrec-cache")


@pytest.fixture(scope="session")
def office_slice(tmp_path_factory) -> Path:
    """The first 80 Amazon Office shoppers and the items they touched, in the Amazon format."""
    items = json.loads((OFFICE / "Office.item.json").read_text())
    inter = json.loads((OFFICE / "Office.inter.json").read_text())
    users = dict(list(inter.items())[:SLICE_USERS])
    used = {str(i) for seq in users.values() for i in seq}
    folder = tmp_path_factory.mktemp("office-slice")
    (folder / "Office.item.json").write_text(json.dumps({k: v for k, v in items.items() if k in used}))
    (folder / "Office.inter.json").write_text(json.dumps(users))
    return folder


@pytest.fixture(scope="session")
def slice_settings(office_slice, cache_dir):
    from whyrec.core.config import Settings

    # The tests written for served slates that wait for the model (deadlines, faults, the support
    # console) keep that mode; tests/test_background.py covers pages that do not wait.
    return Settings(data=office_slice, cache_dir=cache_dir, page_waits_for_model=True)


@pytest.fixture(scope="session")
def slice_catalog(slice_settings):
    from whyrec.pipeline import load_data

    return load_data(slice_settings)


@pytest.fixture(scope="session")
def slice_embedding(slice_settings, slice_catalog):
    from whyrec.pipeline import embedding_retriever

    return embedding_retriever(slice_settings, slice_catalog)


@pytest.fixture(scope="session")
def slice_training(slice_settings, slice_catalog, slice_embedding):
    """A short real training run on the slice; its checkpoints are what every later test loads."""
    from whyrec.pipeline import train
    from whyrec.ranker import TrainConfig
    from whyrec.retrieval.sequential import SequenceConfig

    config = TrainConfig(epochs=2, max_groups_per_epoch=48, patience=1)
    return train(slice_settings, slice_catalog, slice_embedding, config, SequenceConfig(max_epochs=20, patience=3))


@pytest.fixture(scope="session")
def slice_retriever(slice_settings, slice_catalog, slice_embedding, slice_training):
    from whyrec.pipeline import build_retriever

    return build_retriever(slice_settings, slice_catalog, slice_embedding)


@pytest.fixture(scope="session")
def slice_ranker(slice_settings, slice_catalog, slice_training):
    from whyrec.pipeline import load_models

    return load_models(slice_settings.model_copy(update={"auto_train": False}), slice_catalog)[1]


@pytest.fixture(scope="session")
def slice_recommender(slice_settings, slice_catalog, slice_retriever, slice_ranker):
    from whyrec.pipeline import Recommender, build_explainer

    return Recommender(slice_settings, slice_catalog, slice_retriever, slice_ranker, build_explainer(slice_settings))


@pytest.fixture(scope="session")
def untrained_adapter(cache_dir, tmp_path_factory):
    """A real LoRA adapter folder in the format `whyrec explainer tune` writes (peft), untrained
    (its B matrices start at zero), so the test costs no training."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from whyrec.core.config import Settings
    from whyrec.pipeline.models import generator_path

    model = AutoModelForCausalLM.from_pretrained(generator_path(Settings(cache_dir=cache_dir)))
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM")
    folder = tmp_path_factory.mktemp("adapters") / "lora-test"
    get_peft_model(model, lora).save_pretrained(folder)
    return folder


class VllmServer:
    """`whyrec llm serve --adapter`, started as a user would, on a fixed port: the fault tests stop
    it and start it again at the same URL."""

    def __init__(self, cache_dir: Path, adapter: Path, log: Path):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = log
        self.env = {**os.environ, "WHYREC_CACHE_DIR": str(cache_dir), "WHYREC_DEVICE": "cpu"}
        self.command = [sys.executable, "-m", "whyrec.cli", "llm", "serve", "--port", str(self.port), "--adapter", str(adapter)]
        self.process = None

    def start(self) -> None:
        import subprocess

        from whyrec.core.errors import ConfigError
        from whyrec.explainer.serve import wait_until_ready

        with open(self.log, "a") as out:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until_ready(self.url, self.process, timeout_s=600)
        except ConfigError:
            self.process.kill()
            pytest.fail("vLLM did not start:\n" + self.log.read_text()[-3000:])

    def ensure_running(self) -> str:
        """The server's URL, started again first if a fault test left it stopped."""
        if self.process is None or self.process.poll() is not None:
            self.start()
        return self.url

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)


@pytest.fixture(scope="session")
def vllm_server(cache_dir, tmp_path_factory, untrained_adapter):
    """One vLLM server for the session (each start costs 30-60 s on a CPU box). Skipped when no
    Python with vLLM is found, unless WHYREC_REQUIRE_VLLM=1 (as in scripts/test.sh and CI)."""
    from whyrec.core.errors import ConfigError
    from whyrec.explainer.serve import find_vllm_python

    try:
        find_vllm_python(os.environ.get("WHYREC_VLLM_PYTHON"))
    except ConfigError as exc:
        if os.environ.get("WHYREC_REQUIRE_VLLM") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    server = VllmServer(cache_dir, untrained_adapter, tmp_path_factory.mktemp("vllm") / "server.log")
    server.start()
    yield server
    server.stop()


def _postgres_bin(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


def _missing(reason: str) -> None:
    """CI (scripts/test.sh) installs PostgreSQL and sets WHYREC_REQUIRE_POSTGRES: there a missing server fails."""
    if os.environ.get("WHYREC_REQUIRE_POSTGRES"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server of its own, on 127.0.0.1 (the database several API replicas share),
    started once for the session; a test that needs a clean database creates one on it."""
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if not (initdb and pg_ctl):
        _missing("PostgreSQL server binaries (initdb, pg_ctl) are not installed (scripts/setup-system.sh)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _missing("the PostgreSQL driver is missing (pip install 'whyrec[postgres]')")
    # PostgreSQL refuses to run as root: as root, run it as the postgres system user, in a folder of
    # its own (pytest's tmp folders are private to the user running the tests).
    folder = Path(tempfile.mkdtemp(prefix="whyrec-postgres-"))
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(folder, "postgres")
    port = _free_port()
    subprocess.run([*as_user, initdb, "-D", str(folder / "data"), "-A", "trust", "-U", "whyrec", "--no-sync"], check=True, capture_output=True, timeout=120)
    options = f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off -c max_connections=100"
    subprocess.run([*as_user, pg_ctl, "-D", str(folder / "data"), "-w", "-t", "60", "-l", str(folder / "log"), "-o", options, "start"], check=True, capture_output=True, timeout=120)
    try:
        yield f"postgresql+psycopg://whyrec@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(folder / "data"), "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
