"""Candidate retrieval: item embeddings from a sentence-transformers encoder in a FAISS index."""

from whyrec.retrieval.encoder import embed_items, load_encoder
from whyrec.retrieval.index import ItemIndex
from whyrec.retrieval.retriever import EmbeddingRetriever

__all__ = ["EmbeddingRetriever", "ItemIndex", "embed_items", "load_encoder"]
