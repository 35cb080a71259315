"""NIH ChestX-ray14 as a ``datasets`` dataset: CSV parsing, patient-wise splits, the builder, preparation."""

from .builder import NIHChestXray14, NIHChestXray14Config, nih_features
from .nih import NIHDataError, read_labels_csv
from .prepare import (
    PrepareArguments,
    PrepareReport,
    build_dataset,
    check_prepared_features,
    ensure_prepared,
    prepare_dataset,
)
from .splits import patient_wise_split

__all__ = [
    "NIHChestXray14",
    "NIHChestXray14Config",
    "NIHDataError",
    "PrepareArguments",
    "PrepareReport",
    "build_dataset",
    "check_prepared_features",
    "ensure_prepared",
    "nih_features",
    "patient_wise_split",
    "prepare_dataset",
    "read_labels_csv",
]
