"""Inference on image files: find and decode X-rays, predict the 15 probabilities, apply stored thresholds.

A ``Predictor`` wraps a saved cxr-vit model (folder or Hub id) in the one inference path
(:class:`cxr_vit.inference.Classifier`: the same preprocessing and precision as the Trainer's evaluation and the
evaluation report) with per-label thresholds: a ``thresholds.json`` written by ``scripts/evaluate.py``, or the ones
``evaluate.py --save_thresholds`` stored in ``config.json``; without either it uses 0.5 and says so. Heatmaps come
from the explainer registry (:mod:`cxr_vit.evaluation.explainers`, the same one the evaluation report scores): the one
asked for, else the default, else Grad-CAM where the model's family needs it. Files that cannot be decoded are
reported by name and skipped, never a crash halfway through a folder. :class:`PredictionsCSV` writes beside the CSV
a ``<name>.csv.json`` record of what computed it (:meth:`Predictor.record`: precision, backend, device, thresholds).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from transformers import AutoModelForImageClassification, TimmWrapperForImageClassification

from .atomic import write_json_atomic
from .constants import FINDING_IDS, LABELS, THRESHOLDS_INFO_KEY, THRESHOLDS_KEY
from .data.images import XrayReadError, is_xray_file, load_xray
from .data.transforms import model_view
from .evaluation.explainers import ExplainerError, get_explainer, resolve_explainer
from .evaluation.heatmaps import heatmap_panel
from .inductor_model import InductorModel
from .inference import BACKENDS, NO_GRADIENTS, Classifier, Ensemble
from .onnx_model import OnnxModel

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5


class UnreadableImageError(ValueError):
    """A file that is not a decodable X-ray (PNG/JPEG/TIFF/BMP/DICOM); the message names the file."""


class ModelLoadError(ValueError):
    """The model cannot be loaded or is not a 15-label cxr-vit model; the message names it."""


def find_images(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files given directly, plus every X-ray file under given folders (recursive, sorted): PNG/JPEG/TIFF/BMP/DICOM
    by extension and DICOM by content, so UID-named and extensionless PACS exports are found.

    Raises ``FileNotFoundError`` naming a path that does not exist: a typo must not look like an empty folder.
    """
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and is_xray_file(p)))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return found


def read_image(path: str | os.PathLike) -> Image.Image:
    """Decode any X-ray file (8/16-bit PNG, JPEG, TIFF, BMP, DICOM) to 8-bit grayscale, or raise naming the file."""
    try:
        return load_xray(path)
    except XrayReadError as err:
        raise UnreadableImageError(str(err)) from err


def load_model(
    name_or_path: str | os.PathLike, backend: str = "torch"
) -> TimmWrapperForImageClassification | OnnxModel | InductorModel:
    """``AutoModelForImageClassification.from_pretrained`` plus a check that it has the 15 labels in our order.

    ``backend="onnx"``: the folder is an export of ``scripts/export_onnx.py``, run by ONNX Runtime
    (:class:`cxr_vit.onnx_model.OnnxModel`); ``backend="inductor"``: an export of ``scripts/export_inductor.py``,
    compiled by Inductor (:class:`cxr_vit.inductor_model.InductorModel`).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    name = str(name_or_path)
    if not Path(name).is_dir() and (
        backend != "torch" or Path(name).is_absolute() or name.startswith(".") or name.count("/") > 1
    ):
        raise ModelLoadError(f"{name}: no such model folder")  # not a Hub id either: say so, not "bad repo id"
    try:
        exports = {"onnx": OnnxModel, "inductor": InductorModel}
        model = exports[backend](name) if backend in exports else AutoModelForImageClassification.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load the model {str(name_or_path)!r}: {err}") from err
    labels = [model.config.id2label.get(i) for i in range(model.config.num_labels)]
    if backend != "torch":
        if labels != list(LABELS):
            raise ModelLoadError(f"{name}: the export's config.json has labels {labels}, not the 15 NIH labels")
        return model
    if labels != list(LABELS) or not hasattr(model, "timm_model"):
        raise ModelLoadError(
            f"{str(name_or_path)!r} is not a cxr-vit model: expected a timm_wrapper model with the 15 NIH labels "
            f"in canonical order, got {type(model).__name__} with labels {labels}"
        )
    return model.eval()


def load_thresholds(config) -> tuple[np.ndarray, str]:
    """(thresholds in canonical order, where they came from). 0.5 for every label when none are stored."""
    stored = getattr(config, THRESHOLDS_KEY, None)
    if stored is None:
        return np.full(len(LABELS), DEFAULT_THRESHOLD), (
            f"no thresholds stored in config.json ({THRESHOLDS_KEY}); using {DEFAULT_THRESHOLD} for every label "
            "(run scripts/evaluate.py to choose them on the validation split)"
        )
    try:
        if not isinstance(stored, dict) or set(stored) != set(LABELS):
            raise TypeError
        values = np.array([float(stored[label]) for label in LABELS])
    except (TypeError, ValueError):
        raise ModelLoadError(
            f"config.json {THRESHOLDS_KEY} must map each of the 15 labels to a number, got {stored!r}"
        ) from None
    info = getattr(config, THRESHOLDS_INFO_KEY, None) or {}
    return values, f"thresholds from config.json: {info.get('rule', 'stored per-label thresholds')}"


def load_thresholds_file(path: str | os.PathLike, tta: int = 1, models: int = 1) -> tuple[np.ndarray, str]:
    """(thresholds in canonical order, where they came from) from a ``thresholds.json`` of scripts/evaluate.py.

    Thresholds fit the probabilities they were chosen on: when the file says they were chosen with another
    number of test-time views or ensemble members than ``tta`` / ``models``, the source says so.
    """
    try:
        content = json.loads(Path(path).read_text())
        stored = content["thresholds"]
        values = np.array([float(stored[label]) for label in LABELS])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelLoadError(
            f"{path}: not a thresholds.json of scripts/evaluate.py with a number for each of the 15 labels ({err})"
        ) from None
    source = f"thresholds from {path}: {content.get('rule', 'per-label thresholds')}"
    chosen = (content.get("tta", 1), len(content.get("models") or [None]))
    if chosen != (tta, models):
        source += (
            f" (warning: chosen on {chosen[0]} view(s) of {chosen[1]} model(s), predicting with {tta} view(s) of "
            f"{models} model(s))"
        )
    return values, source


@dataclass
class Prediction:
    """One image's result: probabilities in canonical order, labels at or above their threshold."""

    path: str
    probabilities: np.ndarray
    positives: list[str]
    heatmap: Image.Image | None = None


class Predictor:
    """A model in the one inference path, with its thresholds: images in, probabilities, positives, heatmaps out.

    Args:
        model: a loaded cxr-vit model (:func:`load_model`), PyTorch or ONNX (no heatmaps: they need gradients).
        device / precision / tta: see :class:`cxr_vit.inference.Classifier`.
        ensemble: more loaded models whose probabilities are averaged with ``model``'s
            (:class:`cxr_vit.inference.Ensemble`); heatmaps stay ``model``'s.
        thresholds_file: a ``thresholds.json`` of scripts/evaluate.py; default: the thresholds stored in the
            model's config.json, else 0.5 for every label.
        explainer: the heatmap method (:func:`cxr_vit.evaluation.explainers.resolve_explainer`): one that cannot
            explain the model raises :class:`cxr_vit.evaluation.explainers.ExplainerError` here; without one, the
            default or the fallback, and where neither fits ``explainer`` is None and asking for heatmaps raises
            (``explainer_source`` says why).
    """

    def __init__(
        self,
        model: TimmWrapperForImageClassification | OnnxModel | InductorModel,
        device: str | torch.device | None = None,
        precision: str = "auto",
        thresholds_file: str | os.PathLike | None = None,
        explainer: str | None = None,
        tta: int = 1,
        ensemble: Sequence[TimmWrapperForImageClassification | OnnxModel | InductorModel] = (),
    ):
        self.classifier = Classifier(model, device=device, precision=precision, tta=tta)
        self.model, self.device = self.classifier.model, self.classifier.device
        members = [Classifier(other, device=device, precision=precision, tta=tta) for other in ensemble]
        self.ensemble = Ensemble([self.classifier, *members]) if members else None
        if thresholds_file is not None:
            self.thresholds, self.thresholds_source = load_thresholds_file(thresholds_file, tta, 1 + len(members))
        else:
            self.thresholds, self.thresholds_source = load_thresholds(model.config)
        try:
            if self.classifier.exported:
                raise ExplainerError(NO_GRADIENTS)
            self.explainer, self.explainer_source = resolve_explainer(self.model, explainer)
        except ExplainerError as err:
            if explainer is not None:
                raise
            self.explainer, self.explainer_source = None, str(err)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        device: str | None = None,
        precision: str = "auto",
        thresholds_file: str | os.PathLike | None = None,
        explainer: str | None = None,
        tta: int = 1,
        ensemble: Sequence[str | os.PathLike] = (),
        backend: str = "torch",
    ) -> Predictor:
        """From a model folder or Hub id (and more of them for an ensemble); ``backend`` onnx or inductor: export
        folders."""
        model = load_model(name_or_path, backend)
        others = [load_model(name, backend) for name in ensemble]
        return cls(model, device, precision, thresholds_file, explainer, tta=tta, ensemble=others)

    @property
    def runtime(self) -> str:
        """What computes the probabilities: ``fp32``, ``bf16 autocast, fp32 head`` or the ONNX graph's precision."""
        return self.classifier.runtime

    def record(self) -> dict:
        """What computed the predictions, for the record beside an output (predict.py's CSV, a DICOM result)."""
        return {
            "precision": self.runtime,
            "backend": self.model.backend if self.classifier.exported else "torch",
            "device": str(self.device),
            "tta": self.classifier.tta,
            "models": len(self.ensemble.members) if self.ensemble else 1,
            "thresholds": self.thresholds_source,
        }

    def positives(self, probabilities: np.ndarray) -> list[str]:
        return [label for label, p, t in zip(LABELS, probabilities, self.thresholds, strict=True) if p >= t]

    def heatmaps(self, squares: torch.Tensor, probabilities: np.ndarray, top_k: int = 3) -> list[Image.Image]:
        """Per image, a panel: the input view and the explainer's overlays of its ``top_k`` most probable findings."""
        if self.explainer is None:
            raise ExplainerError(self.explainer_source)
        finding_ids = np.array(FINDING_IDS)  # "No Finding" has nowhere to look
        order = finding_ids[np.argsort(-probabilities[:, finding_ids], axis=1, kind="stable")[:, :top_k]]
        explain = get_explainer(self.explainer)
        maps = explain(self.model, self.classifier.inputs(squares), torch.as_tensor(order)).float().cpu().numpy()
        panels = []
        for square, ranks, image_maps, probs in zip(squares.numpy(), order, maps, probabilities, strict=True):
            captions = [f"{LABELS[i]} {probs[i]:.2f}" for i in ranks]
            view = model_view(square, self.classifier.geometry)
            panels.append(heatmap_panel(view, list(zip(captions, image_maps, strict=True))))
        return panels

    def predict(self, images: Sequence[Image.Image], heatmap_top_k: int = 0) -> list[Prediction]:
        """Predictions for decoded images (``path`` left empty); heatmap panels when ``heatmap_top_k`` > 0."""
        squares = self.classifier.squares(images) if self.ensemble is None or heatmap_top_k > 0 else None
        if self.ensemble is not None:  # each member makes its own squares
            probabilities = self.ensemble.predict_images(images)
        else:
            probabilities = self.classifier.probabilities(squares)
        panels = self.heatmaps(squares, probabilities, heatmap_top_k) if heatmap_top_k > 0 else None
        return [
            Prediction("", probs, self.positives(probs), panels[i] if panels else None)
            for i, probs in enumerate(probabilities)
        ]


class _ImageFiles(Dataset):
    """Decoded images by path for a DataLoader; a broken file yields its error instead of stopping the run."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Path, Image.Image | None, str | None]:
        try:
            return self.paths[index], read_image(self.paths[index]), None
        except UnreadableImageError as err:
            return self.paths[index], None, str(err)


def predict_files(
    predictor: Predictor,
    paths: Sequence[Path],
    batch_size: int = 32,
    heatmap_top_k: int = 0,
    num_workers: int = 0,
    progress: bool = True,
) -> Iterator[Prediction | UnreadableImageError]:
    """Predictions for image files in order; an unreadable file yields an ``UnreadableImageError`` in its place."""
    from tqdm.auto import tqdm

    loader = DataLoader(_ImageFiles(paths), batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    with tqdm(total=len(paths), desc="predict", unit="img", disable=not progress) as bar:
        for batch in loader:
            readable = [(path, image) for path, image, error in batch if error is None]
            results = iter(predictor.predict([image for _, image in readable], heatmap_top_k) if readable else [])
            for path, _, error in batch:
                if error is not None:
                    logger.warning("skipped %s", error)
                    yield UnreadableImageError(error)
                else:
                    result = next(results)
                    result.path = str(path)
                    yield result
            bar.update(len(batch))


def predictions_frame(predictions: Sequence[Prediction], heatmap_paths: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per image: path, the 15 probabilities (canonical order), ``positives`` joined by ``;``."""
    frame = pd.DataFrame([p.probabilities for p in predictions], columns=list(LABELS)).astype(float)
    frame.insert(0, "path", [p.path for p in predictions])
    frame["positives"] = [";".join(p.positives) for p in predictions]
    if heatmap_paths is not None:
        frame["heatmap"] = list(heatmap_paths)
    return frame


class PredictionsCSV:
    """The predictions CSV, written row by row as images are done (flushed), so a killed run keeps what it wrote.

    ``resume=True`` reads back an existing file: the paths in it are ``done`` (``predict.py --resume`` skips them)
    and its heatmap names stay taken; a last row cut off by the kill is dropped and predicted again. Without
    ``resume`` the file is started anew. ``record`` (:meth:`Predictor.record`) is written beside it as
    ``<name>.csv.json``; resuming with another ``precision`` than the record's is refused: one file, one precision.
    """

    def __init__(
        self, path: str | os.PathLike, heatmaps: bool = False, resume: bool = False, record: dict | None = None
    ):
        self.path = Path(path)
        self.record_path = self.path.with_name(self.path.name + ".json")
        if resume and record is not None and self.record_path.is_file():
            written = json.loads(self.record_path.read_text()).get("precision")
            if written != record["precision"]:
                raise ValueError(
                    f"{self.path}: cannot resume, its rows were computed in {written!r} ({self.record_path}), this "
                    f"run computes {record['precision']!r} (give the same --precision and --backend, or drop --resume)"
                )
        self.columns = ["path", *LABELS, "positives", *(["heatmap"] if heatmaps else [])]
        self.done: set[str] = set()
        self.taken: set[str] = set()  # heatmap file names
        if resume and self.path.is_file() and self.path.stat().st_size > 0:
            self._read_back()
            self.handle = self.path.open("a", newline="")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = self.path.open("w", newline="")
            pd.DataFrame(columns=self.columns).to_csv(self.handle, index=False)
            self.handle.flush()
        if record is not None:
            write_json_atomic(self.record_path, record)

    def _read_back(self) -> None:
        content = self.path.read_bytes()
        if not content.endswith(b"\n"):  # the kill cut the last row: drop it
            with self.path.open("r+b") as handle:
                handle.truncate(content.rfind(b"\n") + 1)
        try:
            frame = pd.read_csv(self.path, dtype={"path": str, "heatmap": str}, keep_default_na=False)
        except (ValueError, pd.errors.ParserError) as err:
            raise ValueError(f"{self.path}: cannot resume from it, not a predictions CSV ({err})") from None
        if list(frame.columns) != self.columns:
            raise ValueError(
                f"{self.path}: cannot resume, its columns are {list(frame.columns)}, this run writes {self.columns} "
                "(the same --heatmaps choice is needed; or drop --resume to start anew)"
            )
        self.done = set(frame["path"])
        if "heatmap" in frame:
            self.taken = {Path(name).name for name in frame["heatmap"]}

    def write(self, prediction: Prediction, heatmap_path: str | None = None) -> None:
        frame = predictions_frame([prediction], None if heatmap_path is None else [heatmap_path])
        frame.to_csv(self.handle, header=False, index=False, float_format="%.6f")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> PredictionsCSV:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def heatmap_file_name(path: str | os.PathLike, taken: set[str]) -> str:
    """``<stem>_heatmap.png``, numbered when two inputs in different folders share a stem."""
    stem = Path(path).stem
    name, counter = f"{stem}_heatmap.png", 1
    while name in taken:
        counter += 1
        name = f"{stem}_{counter}_heatmap.png"
    taken.add(name)
    return name


@dataclass(frozen=True)
class Shard:
    """This process's share of a prediction run started by ``torchrun`` or ``accelerate launch`` (which set
    ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``), on one machine or several; one process without them.

    Each process predicts every ``world``-th file into its own CSV beside the output
    (``<stem>.shard<rank>-of-<world>.csv``, resumable like the output itself); once all are done, rank 0 merges
    them into the one output CSV, in the order a single process would have written it (:func:`merge_shards`).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> Shard:
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))

    @property
    def sharded(self) -> bool:
        return self.world > 1

    def device(self, requested: str | None) -> str | None:
        """``requested``, else this process's own GPU when sharded on a machine with GPUs (else the default)."""
        if requested is None and self.sharded and torch.cuda.is_available():
            return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return requested

    def take(self, paths: Sequence[Path]) -> list[Path]:
        """Every ``world``-th path from ``rank``: shares that differ by at most one file."""
        return list(paths[self.rank :: self.world])

    def csv_path(self, output: str | os.PathLike) -> Path:
        """The CSV this process writes: the output itself, or its shard when sharded."""
        output = Path(output)
        if not self.sharded:
            return output
        return output.with_name(f"{output.stem}.shard{self.rank}-of-{self.world}{output.suffix or '.csv'}")

    def pending(self, paths: Sequence[Path], output: str | os.PathLike, resume: bool) -> list[Path]:
        """The files not yet in the merged ``output`` (all of ``paths`` unless sharded and resuming), in order:
        the same list in every process, which then takes its share of it."""
        output = Path(output)
        if not (self.sharded and resume and output.is_file() and output.stat().st_size > 0):
            return list(paths)
        done = set(pd.read_csv(output, usecols=["path"], dtype={"path": str}, keep_default_na=False)["path"])
        return [path for path in paths if str(path) not in done]

    def others_heatmap_names(self, pending: Sequence[Path], taken: set[str]) -> set[str]:
        """The heatmap file names the other processes give their files, so that names stay those a single process
        would give (:func:`heatmap_file_name` numbers files that share a stem in the order they come)."""
        if not self.sharded:
            return set()
        names, taken = set(), set(taken)
        for index, path in enumerate(pending):
            name = heatmap_file_name(path, taken)
            if index % self.world != self.rank:
                names.add(name)
        return names

    def wait_for_everyone(self) -> None:
        """A barrier over all processes (gloo, which every machine has: only this handshake goes through it)."""
        if not self.sharded:
            return
        import datetime

        import torch.distributed as dist

        if not dist.is_initialized():  # a share of millions of films can take a day: wait that long, not 30 min
            dist.init_process_group("gloo", timeout=datetime.timedelta(days=2))
        dist.barrier()


def merge_shards(output: str | os.PathLike, shard: Shard, order: Sequence[Path], resume: bool = False) -> int:
    """Rank 0's last step: the rows of every shard CSV (and, resuming, those already in ``output``) into ``output``,
    each path once, new rows in ``order`` (the files as a single process would have taken them); replaced whole,
    then the shard CSVs are removed. Returns the number of rows."""
    from .atomic import write_text_atomic

    output = Path(output)
    parts = [Shard(rank, shard.world).csv_path(output) for rank in range(shard.world)]
    read = lambda path: pd.read_csv(path, dtype={"path": str, "heatmap": str}, keep_default_na=False)  # noqa: E731
    earlier = read(output) if resume and output.is_file() and output.stat().st_size > 0 else None
    frames = [] if earlier is None else [earlier]
    written = [read(part) for part in parts if part.is_file()]
    if written:  # none when everything was in the output already
        new = pd.concat(written, ignore_index=True)
        position = {str(path): index for index, path in enumerate(order)}
        new = new.assign(_order=new["path"].map(position).fillna(len(position))).sort_values("_order", kind="stable")
        frames.append(new.drop(columns="_order"))
    merged = pd.concat(frames, ignore_index=True)
    merged = merged.drop_duplicates("path", keep="first")
    float_columns = list(LABELS)
    merged[float_columns] = merged[float_columns].astype(float)
    write_text_atomic(output, merged.to_csv(index=False, float_format="%.6f"))
    records = [part.with_name(part.name + ".json") for part in parts]  # what computed them (PredictionsCSV)
    if records[0].is_file():
        write_text_atomic(output.with_name(output.name + ".json"), records[0].read_text())
    for part in parts + records:
        part.unlink(missing_ok=True)
    return len(merged)
