"""The BERT cross-encoder ranker: scores (history, candidate) pairs and attributes each score to
history items. Everything outside this stage imports these names."""

from whyrec.ranker.diversity import diversify
from whyrec.ranker.feedback import FeedbackConfig, FeedbackReport, engaged_above_skipped, train_on_feedback
from whyrec.ranker.model import CHECKPOINT_META, FEATURE_SCALE, CrossEncoderRanker
from whyrec.ranker.train import TrainConfig, TrainReport, train_ranker

__all__ = [
    "CHECKPOINT_META",
    "FEATURE_SCALE",
    "CrossEncoderRanker",
    "FeedbackConfig",
    "FeedbackReport",
    "TrainConfig",
    "TrainReport",
    "diversify",
    "engaged_above_skipped",
    "train_on_feedback",
    "train_ranker",
]
