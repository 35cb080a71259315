"""How files that may be published (cards, reports, ``thresholds.json``, ``config.json``) name the data and the
models they describe: never by a local path, which would publish the user's directory layout.

Data is named by its Hub id when it has one: the dataset given was a Hub id, the prepared folder records the repo
it was pushed to (``prepare.json``, written by :func:`cxr_vit.hub.push_dataset`), or the id is given outright
(``push_to_hub.py --dataset_repo``). Otherwise it is "<release>, prepared locally" (NIH ChestX-ray14, CheXpert, ...,
from ``prepare.json``'s ``source``) with the split seed and the images per split. A local model is named by its
folder's name, a Hub model by its id. Local paths stay in what is not uploaded unless asked: the console, the run's
logs and ``run_args.yaml``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

__all__ = [
    "LOCAL_DATASET",
    "DatasetReference",
    "LocalPathError",
    "check_no_local_paths",
    "dataset_reference",
    "hub_id_of_cached_file",
    "model_reference",
]

LOCAL_SUFFIX = ", prepared locally"
LOCAL_DATASET = "NIH ChestX-ray14" + LOCAL_SUFFIX
HUB_CACHE_PREFIX = "models--"  # huggingface_hub's cache: <cache>/models--<owner>--<name>/snapshots/<rev>/<file>


class LocalPathError(ValueError):
    """A file about to be published names a local path (e.g. a report written by an older cxr-vit)."""


@dataclass(frozen=True)
class DatasetReference:
    """What a published file may say about a dataset: its Hub id, or the split seed and images per split."""

    hub_id: str | None = None
    split_seed: int | None = None
    splits: dict[str, int] | None = None
    release: str = "NIH ChestX-ray14"  # the public release a local folder was prepared from

    @property
    def name(self) -> str:
        if self.hub_id:
            return self.hub_id
        details = [f"split seed {self.split_seed}"] if self.split_seed is not None else []
        if self.splits:
            details.append(", ".join(f"{split} {count:,}" for split, count in self.splits.items()) + " images")
        return self.release + LOCAL_SUFFIX + (f" ({'; '.join(details)})" if details else "")

    def to_dict(self) -> dict:
        fields = {"name": self.name, "hub_id": self.hub_id, "split_seed": self.split_seed, "splits": self.splits}
        return fields | {"release": self.release}


def is_hub_id(name: str) -> bool:
    """Whether ``datasets.load_dataset`` / ``from_pretrained`` would read ``name`` from the Hub (no such local path)."""
    if not name or os.path.isabs(name) or name.startswith(("~", ".")) or Path(name).exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def dataset_reference(
    dataset_name: str | None,
    hub_id: str | None = None,
    split_seed: int | None = None,
    splits: dict[str, int] | None = None,
    prepared_locally: bool = False,
) -> DatasetReference:
    """The reference of the dataset a run used (``dataset_name``: a folder or a Hub id).

    ``hub_id`` (the user's word) wins. A folder with a ``prepare.json`` gives its pushed repo id, or its split seed
    and counts; ``split_seed`` and ``splits`` are what is known otherwise (e.g. a folder that has gone since the
    run). ``prepared_locally``: the run made the folder itself, so a name that no longer exists is still no Hub id.
    """
    from .data.provenance import read_record  # here: cxr_vit.data's package imports the cards, which import us
    from .data.sources import RELEASE_NAMES

    if hub_id:
        return DatasetReference(hub_id=hub_id)
    if dataset_name and Path(dataset_name).is_dir():
        record = read_record(dataset_name)
        if record is None:  # a local dataset folder from elsewhere: no seed of ours
            return DatasetReference(splits=splits)
        if (record.get("hub") or {}).get("repo_id"):
            return DatasetReference(hub_id=record["hub"]["repo_id"])
        seed = record["parameters"].get("split_seed")
        release = RELEASE_NAMES.get(record.get("source", "nih"), record.get("source"))
        return DatasetReference(split_seed=seed, splits=record.get("splits") or splits, release=release)
    if dataset_name and not prepared_locally and is_hub_id(dataset_name):
        return DatasetReference(hub_id=dataset_name)
    return DatasetReference(split_seed=split_seed, splits=splits)


def model_reference(model: str | os.PathLike) -> str:
    """A model folder's name, or the Hub id as given."""
    path = Path(model)
    return path.resolve().name if path.is_dir() else str(model)


def hub_id_of_cached_file(path: str | os.PathLike | None) -> str | None:
    """The model repo a file was downloaded from, when it sits in huggingface_hub's cache (``hf download``)."""
    if not path:
        return None
    parts = Path(path).resolve().parts
    for folder, below in zip(parts, parts[1:], strict=False):
        if folder.startswith(HUB_CACHE_PREFIX) and below == "snapshots":
            return folder[len(HUB_CACHE_PREFIX) :].replace("--", "/")  # repo ids never hold "--"
    return None


def check_no_local_paths(folder: str | os.PathLike, local_paths: Iterable[str | os.PathLike], skip=(".safetensors",)):
    """Raise :class:`LocalPathError` when a file under ``folder`` (the staged upload) holds one of ``local_paths``
    (as given and absolute), in its bytes: text, JSON and the text chunks of PNG figures alike. Weights are skipped.
    """
    needles = set()
    for path in local_paths:
        if path and os.sep in str(path):
            needles.update({str(path), str(Path(path).expanduser().absolute())})
    needles = sorted(needle.encode() for needle in needles if os.path.isabs(needle))
    for file in sorted(Path(folder).rglob("*")):
        if not file.is_file() or file.name.endswith(tuple(skip)):
            continue
        content = file.read_bytes()
        for needle in needles:
            if needle in content:
                raise LocalPathError(
                    f"{file.relative_to(folder)} would publish the local path {needle.decode()}: nothing was uploaded. "
                    "Write it again with this version of cxr-vit (scripts/evaluate.py names data and models without "
                    "paths), or leave it out."
                )
