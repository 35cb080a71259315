"""The one label map: what each other release's labels mean in ChestX-ray14's 15 labels.

Every source label is one of three kinds:

- ``same`` / ``synonym``: it *is* that NIH label (same name, or a documented synonym such as CheXpert "Pleural
  Effusion" = Effusion, PadChest "hiatal hernia" = Hernia). Always used.
- ``approximate``: it overlaps an NIH label without being it (CheXpert "Lung Lesion" covers both Mass and Nodule;
  VinDr "Nodule/Mass" too). Used only with ``approximate_labels=True`` (``--approximate_labels``), and recorded as such.
- not listed with a target (``None``): nothing in NIH's list corresponds; the label is read and ignored.

A canonical label that none of a source's (used) labels maps to is **missing** for that source: NaN in ``labels``,
skipped by the masked loss and by every metric. It is never written as a negative. When several source labels map to
one NIH label (PadChest "pleural effusion" and "loculated pleural effusion"), the NIH label is positive if any of them
is, missing if none is positive and any is missing (uncertain), and negative otherwise.

The tables are the sources' label names exactly as their files spell them (CheXpert/MIMIC column headers, VinDr
column headers, PadChest's lower-case report terms). ``docs/external.md`` shows them as a table; the unit tests check
every column of each release header is listed here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .constants import LABEL2ID, LABELS, NUM_LABELS

SAME, SYNONYM, APPROXIMATE = "same", "synonym", "approximate"
SOURCES: tuple[str, ...] = ("nih", "chexpert", "mimic_cxr", "padchest", "vindr_cxr")


@dataclass(frozen=True)
class Target:
    """The NIH label(s) a source label stands for, and how closely."""

    labels: tuple[str, ...]
    kind: str


def _same(label: str) -> Target:
    return Target((label,), SAME)


def _synonym(*labels: str) -> Target:
    return Target(labels, SYNONYM)


def _approximate(*labels: str) -> Target:
    return Target(labels, APPROXIMATE)


# CheXpert labeler output: CheXpert's train.csv / valid.csv and MIMIC-CXR-JPG's mimic-cxr-2.0.0-chexpert.csv.
_CHEXPERT: dict[str, Target | None] = {
    "No Finding": _same("No Finding"),
    "Enlarged Cardiomediastinum": None,  # mediastinum or heart: not Cardiomegaly
    "Cardiomegaly": _same("Cardiomegaly"),
    "Lung Opacity": _approximate("Infiltration"),  # any opacity: NIH's text-mined "Infiltration" is the closest
    "Lung Lesion": _approximate("Mass", "Nodule"),  # a lesion is a mass or a nodule; which one is not said
    "Edema": _same("Edema"),
    "Consolidation": _same("Consolidation"),
    "Pneumonia": _same("Pneumonia"),
    "Atelectasis": _same("Atelectasis"),
    "Pneumothorax": _same("Pneumothorax"),
    "Pleural Effusion": _synonym("Effusion"),
    "Pleural Other": _approximate("Pleural_Thickening"),  # thickening, plaques, calcification, fibrothorax
    "Fracture": None,
    "Support Devices": None,
}

LABEL_MAP: dict[str, dict[str, Target | None]] = {
    "nih": {label: _same(label) for label in LABELS},
    "chexpert": _CHEXPERT,
    "mimic_cxr": _CHEXPERT,
    # PadChest's report terms (lower case, as in its Labels column). Any other term is counted and listed in
    # prepare.json as unknown: PadChest has some 190, most without an NIH counterpart.
    "padchest": {
        "normal": _synonym("No Finding"),
        "atelectasis": _same("Atelectasis"),
        "laminar atelectasis": _synonym("Atelectasis"),
        "lobar atelectasis": _synonym("Atelectasis"),
        "segmental atelectasis": _synonym("Atelectasis"),
        "round atelectasis": _synonym("Atelectasis"),
        "total atelectasis": _synonym("Atelectasis"),
        "cardiomegaly": _same("Cardiomegaly"),
        "consolidation": _same("Consolidation"),
        "pulmonary edema": _synonym("Edema"),
        "pleural effusion": _synonym("Effusion"),
        "loculated pleural effusion": _synonym("Effusion"),
        "loculated fissural effusion": _synonym("Effusion"),
        "emphysema": _same("Emphysema"),
        "pulmonary fibrosis": _synonym("Fibrosis"),
        "hiatal hernia": _synonym("Hernia"),
        "infiltrates": _synonym("Infiltration"),
        "interstitial pattern": _approximate("Infiltration"),
        "reticular interstitial pattern": _approximate("Infiltration"),
        "reticulonodular interstitial pattern": _approximate("Infiltration"),
        "alveolar pattern": _approximate("Infiltration"),
        "ground glass pattern": _approximate("Infiltration"),
        "mass": _same("Mass"),
        "pulmonary mass": _synonym("Mass"),
        "nodule": _same("Nodule"),
        "multiple nodules": _synonym("Nodule"),
        "pleural thickening": _synonym("Pleural_Thickening"),
        "apical pleural thickening": _synonym("Pleural_Thickening"),
        "pneumonia": _same("Pneumonia"),
        "pneumothorax": _same("Pneumothorax"),
    },
    # VinDr-CXR's image_labels_{train,test}.csv columns (22 local findings + 6 global diagnoses).
    "vindr_cxr": {
        "Aortic enlargement": None,
        "Atelectasis": _same("Atelectasis"),
        "Calcification": None,
        "Cardiomegaly": _same("Cardiomegaly"),
        "Clavicle fracture": None,
        "Consolidation": _same("Consolidation"),
        "Edema": _same("Edema"),
        "Emphysema": _same("Emphysema"),
        "Enlarged PA": None,
        "ILD": None,  # interstitial lung disease: a diagnosis, not NIH's Fibrosis or Infiltration finding
        "Infiltration": _same("Infiltration"),
        "Lung Opacity": None,
        "Lung cavity": None,
        "Lung cyst": None,
        "Mediastinal shift": None,
        "Nodule/Mass": _approximate("Mass", "Nodule"),
        "Pleural effusion": _synonym("Effusion"),
        "Pleural thickening": _synonym("Pleural_Thickening"),
        "Pneumothorax": _same("Pneumothorax"),
        "Pulmonary fibrosis": _synonym("Fibrosis"),
        "Rib fracture": None,
        "Other lesion": None,
        "COPD": None,
        "Lung tumor": None,
        "Pneumonia": _same("Pneumonia"),
        "Tuberculosis": None,
        "Other diseases": None,
        "Other disease": None,  # the spelling some copies of the release use
        "No finding": _synonym("No Finding"),
    },
}


def used_targets(source: str, approximate_labels: bool = False) -> dict[str, tuple[str, ...]]:
    """Source label -> the NIH labels it sets, for the labels used with these options (approximations only if asked)."""
    return {
        name: target.labels
        for name, target in LABEL_MAP[source].items()
        if target is not None and (approximate_labels or target.kind != APPROXIMATE)
    }


def annotated_labels(source: str, approximate_labels: bool = False) -> tuple[str, ...]:
    """The canonical labels (canonical order) that ``source`` annotates with these options; the rest are missing."""
    covered = {label for labels in used_targets(source, approximate_labels).values() for label in labels}
    return tuple(label for label in LABELS if label in covered)


class LabelMapper:
    """Maps a table of source label values (1 / 0 / NaN per source label) to the 15 canonical labels.

    ``values``: (n_rows, n_columns) with columns named by ``columns`` (source label names); returns (n_rows, 15)
    float32 with NaN for every label the source does not annotate (module docstring for the combination rule).
    """

    def __init__(self, source: str, approximate_labels: bool = False):
        self.source, self.targets = source, used_targets(source, approximate_labels)
        self.annotated = annotated_labels(source, approximate_labels)

    def __call__(self, values: np.ndarray, columns: list[str]) -> np.ndarray:
        values = np.asarray(values, dtype=np.float32).reshape(-1, len(columns))
        mapped = np.full((len(values), NUM_LABELS), np.nan, dtype=np.float32)
        sources_of: dict[str, list[int]] = {}
        for index, column in enumerate(columns):
            for label in self.targets.get(column, ()):
                sources_of.setdefault(label, []).append(index)
        for label, indices in sources_of.items():
            block = values[:, indices]
            positive = (block == 1).any(axis=1)
            unknown = np.isnan(block).any(axis=1)
            mapped[:, LABEL2ID[label]] = np.where(positive, 1.0, np.where(unknown, np.nan, 0.0))
        return mapped


def positive_findings(labels: np.ndarray) -> list[str]:
    """The canonical names of the positive labels of one 15-vector (NaN and 0 are not positive)."""
    return [LABELS[index] for index in np.flatnonzero(np.asarray(labels) == 1)]


def map_table(source: str) -> Mapping[str, Target | None]:
    """The full map of one source (for docs and tests)."""
    return LABEL_MAP[source]


def markdown_table(sources: tuple[str, ...] = SOURCES[1:]) -> str:
    """The map as docs/external.md shows it: one row per NIH label, one column per source; ``≈`` marks an
    approximation (used only with ``--approximate_labels``), ``—`` a label the source does not annotate."""
    header = "| NIH label | " + " | ".join(f"`{source}`" for source in sources) + " |"
    rule = "|---|" + "---|" * len(sources)
    rows = []
    for label in LABELS:
        cells = []
        for source in sources:
            names = [
                ("≈ " if target.kind == APPROXIMATE else "") + name
                for name, target in LABEL_MAP[source].items()
                if target is not None and label in target.labels
            ]
            cells.append(", ".join(names) or "—")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join([header, rule, *rows])


def unmapped(source: str) -> list[str]:
    """The source's labels listed as having no NIH counterpart (read and ignored)."""
    return [name for name, target in LABEL_MAP[source].items() if target is None]
