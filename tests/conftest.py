import json
import os
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
    from whyrec.config import Settings

    return Settings(data=office_slice, cache_dir=cache_dir)


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
