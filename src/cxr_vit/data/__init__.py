"""NIH ChestX-ray14 as a ``datasets`` dataset: CSV parsing, patient-wise splits, the builder, preparation."""

from .builder import DEFAULT_SPLIT_SEED, NIHChestXray14, NIHChestXray14Config, nih_features
from .local import load_dataset_as_is
from .nih import NIHDataError, read_labels_csv
from .prepare import (
    PrepareArguments,
    PrepareReport,
    StalePreparedDataError,
    build_dataset,
    check_prepared_features,
    describe_missing_positives,
    ensure_prepared,
    labels_without_positives,
    positive_counts,
    prepare_dataset,
)
from .schemas import canonical_splits, load_chestxray14, select_splits
from .splits import patient_wise_split

__all__ = [
    "DEFAULT_SPLIT_SEED",
    "NIHChestXray14",
    "NIHChestXray14Config",
    "NIHDataError",
    "PrepareArguments",
    "PrepareReport",
    "StalePreparedDataError",
    "build_dataset",
    "canonical_splits",
    "check_prepared_features",
    "describe_missing_positives",
    "ensure_prepared",
    "labels_without_positives",
    "load_chestxray14",
    "load_dataset_as_is",
    "nih_features",
    "patient_wise_split",
    "positive_counts",
    "select_splits",
    "prepare_dataset",
    "read_labels_csv",
]
