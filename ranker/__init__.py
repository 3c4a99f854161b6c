"""The BERT cross-encoder ranker: scores (history, candidate) pairs and attributes each score to history items."""

from whyrec.ranker.diversity import diversify
from whyrec.ranker.model import CrossEncoderRanker
from whyrec.ranker.train import TrainConfig, TrainReport, train_ranker

__all__ = ["CrossEncoderRanker", "TrainConfig", "TrainReport", "diversify", "train_ranker"]
