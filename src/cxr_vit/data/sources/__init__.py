"""Readers for chest X-ray releases other than NIH, one module per release, into the prepared NIH schema.

- :mod:`.chexpert`: CheXpert ``train.csv`` / ``valid.csv`` (small or full-size release);
- :mod:`.mimic_cxr`: MIMIC-CXR-JPG 2.0.0 (chexpert, metadata and split CSVs);
- :mod:`.padchest`: PadChest's 160K label CSV and 16-bit PNGs;
- :mod:`.vindr_cxr`: VinDr-CXR's per-reader label CSVs and DICOM files;
- NIH ChestX-ray14 itself is read by :class:`cxr_vit.data.builder.NIHChestXray14` (source ``nih``).

Each reader maps its labels through :mod:`cxr_vit.label_map` (NaN where a release does not annotate a label) and
leaves filtering, splitting and decoding to :mod:`.build`. ``scripts/prepare_data.py --source S`` runs them.
"""

from .build import READERS, build_source_dataset, read_source
from .common import (
    READER_POLICIES,
    RELEASE_NAMES,
    UNCERTAIN_POLICIES,
    SourceDataError,
    SourceOptions,
    SourceTable,
)

SOURCE_CHOICES: tuple[str, ...] = ("nih", *READERS)

__all__ = [
    "READERS",
    "READER_POLICIES",
    "RELEASE_NAMES",
    "SOURCE_CHOICES",
    "UNCERTAIN_POLICIES",
    "SourceDataError",
    "SourceOptions",
    "SourceTable",
    "build_source_dataset",
    "read_source",
]
