"""Test helper: a prepared set as another source would give it, made from a prepared NIH folder.

The prepared schema of any source is NIH's plus a ``source`` column, with NaN in ``labels`` where the source does not
annotate a label (or gave an uncertain value). :func:`write_other_source` rewrites a prepared folder that way (the
same films, so predict.py on the original files gives the same probabilities), for the tests of scoring and
training with missing labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np

from cxr_vit.constants import LABEL2ID, NUM_LABELS


def with_missing_labels(
    split: datasets.Dataset, source: str, missing: Sequence[str], uncertain: float = 0.0, seed: int = 0
) -> datasets.Dataset:
    """``split`` with the ``missing`` labels NaN in every row, a share ``uncertain`` of the other entries NaN, and
    ``source`` in its ``source`` column."""
    labels = np.asarray(split["labels"], dtype=np.float32).reshape(-1, NUM_LABELS)
    labels[:, [LABEL2ID[label] for label in missing]] = np.nan
    labels[np.random.default_rng(seed).random(labels.shape) < uncertain] = np.nan
    features = split.features
    split = split.remove_columns([name for name in ("labels", "source") if name in split.column_names])
    split = split.add_column("labels", labels.tolist()).add_column("source", [source] * len(split))
    return split.cast(datasets.Features({**features, "source": datasets.Value("string")}))


def write_other_source(
    prepared: Path,
    output: Path,
    source: str,
    missing: Sequence[str],
    uncertain: float = 0.0,
    seed: int = 0,
    rows: int | None = None,
) -> Path:
    """A copy of the prepared folder ``prepared`` (the first ``rows`` images of each split) in ``output`` as if from
    ``source`` (:func:`with_missing_labels`), as Parquet shards that ``datasets.load_dataset`` reads with their
    features."""
    dataset = datasets.load_dataset(str(prepared))
    (output / "data").mkdir(parents=True, exist_ok=True)
    for index, (name, split) in enumerate(dataset.items()):
        split = split.select(range(min(rows, len(split)))) if rows else split
        changed = with_missing_labels(split, source, missing, uncertain, seed + index)
        changed.to_parquet(str(output / "data" / f"{name}-00000-of-00001.parquet"))
    return output
