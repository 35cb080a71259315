"""Fine-tuning: run arguments, the multi-label Trainer and the training-curves plot."""

from .config import CXRTrainingArguments, DataArguments, parse_args, save_run_args
from .plots import plot_training_curves
from .trainer import MultiLabelTrainer, positive_weights

__all__ = [
    "CXRTrainingArguments",
    "DataArguments",
    "MultiLabelTrainer",
    "parse_args",
    "plot_training_curves",
    "positive_weights",
    "save_run_args",
]
