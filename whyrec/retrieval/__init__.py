"""Candidate retrieval: item embeddings from a sentence-transformers encoder in a FAISS index, fused
with item co-occurrence and a sequence model. Everything outside this stage imports these names."""

from whyrec.retrieval.cooccurrence import CooccurrenceRetriever
from whyrec.retrieval.encoder import embed_items, load_encoder
from whyrec.retrieval.fusion import FusedRetriever, FusionWeights, tune_weights
from whyrec.retrieval.index import ItemIndex
from whyrec.retrieval.popularity import PopularItems
from whyrec.retrieval.retriever import EmbeddingRetriever
from whyrec.retrieval.sequential import SequenceConfig, SequenceRetriever, refit_sequence_model, train_sequence_model

__all__ = [
    "CooccurrenceRetriever",
    "EmbeddingRetriever",
    "FusedRetriever",
    "FusionWeights",
    "ItemIndex",
    "PopularItems",
    "SequenceConfig",
    "SequenceRetriever",
    "embed_items",
    "load_encoder",
    "refit_sequence_model",
    "train_sequence_model",
    "tune_weights",
]
