"""Localization of heatmaps against the NIH radiologist boxes: pointing game, IoU and IoBB.

The boxes are NIH's ``BBox_List_2017.csv``: 984 boxes of 8 findings on 880 images, all in the official test list
(checked against the release), drawn on the released 1024x1024 PNGs. A heatmap explains the *model input*, the
prepared image after timm's eval resize and center crop, so every box is first carried through the same steps
(:func:`box_to_input`); a box partly outside the crop is clipped to it.

Scores of one heatmap against one ground-truth (GT) box:

* pointing game (Zhang et al., excitation backprop, ECCV 2016): a hit when the map's maximum lies in the box.
  Pixels are in the box when their centre is. A map with tied maxima hits only if every maximal pixel is in the
  box, so a constant map (no evidence anywhere) is a miss rather than a free hit.
* IoU and IoBB of *detected boxes*, following Wang et al. 2017 (ChestX-ray8, CVPR; "Bounding Box Generation" and
  the localization experiments): the map (already min-max scaled to [0, 1]) is thresholded at 60/255 and at
  180/255 (their thresholds {60, 180} of a [0, 255] map, applied "individually"); each 8-connected region of
  either binary map gives one detected box (its pixel bounding box). IoU = area(GT ∩ detected) /
  area(GT ∪ detected); IoBB = area(GT ∩ detected) / area(detected), the detected box's own area ("similar to
  area of precision"). A GT box scores the best IoU and the best IoBB over the detected boxes of its map. IoBB
  rewards small detected boxes inside a large GT box; that is the published definition, so report it next to
  IoU, not instead of it.
* accuracy at a threshold T: the share of GT boxes with IoU (or IoBB) >= T. Wang et al. count IoU/IoBB > T;
  with continuous areas the two differ only on exact ties.
* chance level of the pointing game: the boxes' mean share of the model input (a map that peaks at a uniformly
  random place hits a box that often).

:func:`localization_section` runs it for a model: every box on an image of the evaluated split, the heatmap of the
box's finding from one explainer (:mod:`cxr_vit.evaluation.explainers`) on the model input of the one inference path
(:class:`cxr_vit.inference.Classifier`), scored as above. Wang et al.'s published figures go beside ours only
from the table checked against two independent copies of the paper (Table 4); the supplement's tables, found in
one copy only, stay in :data:`WANG_2017` flagged as such and out of the report.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from ..constants import LABELS
from ..data.nih import NIHDataError, raise_collected
from ..markdown import number, table

# The file spells one finding differently from the Data_Entry labels; every released name is mapped explicitly.
BBOX_LABELS: dict[str, str] = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Effusion": "Effusion",
    "Infiltrate": "Infiltration",
    "Mass": "Mass",
    "Nodule": "Nodule",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
}
BOXED_FINDINGS: tuple[str, ...] = tuple(label for label in LABELS if label in BBOX_LABELS.values())
SOURCE_SIZE = (1024, 1024)  # (width, height) of the released PNGs the boxes were drawn on
# Wang et al. 2017 thresholds of the [0, 255]-normalised heatmap, here on [0, 1].
WANG_HEATMAP_THRESHOLDS: tuple[float, ...] = (60 / 255, 180 / 255)
IOU_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
# 0.1-0.7 plus the T(IoBB) values Wang et al. tabulate (0.25, 0.75, 0.9), so their figures have a counterpart.
IOBB_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.9)

# Published localization accuracy ("Acc.": share of GT boxes localized) of Wang et al. 2017, transcribed from the
# tables of arXiv:1705.02315v5 (14 Dec 2017), columns in the paper's order (= WANG_2017["findings"]). Their model:
# ResNet-50 with a transition layer and LSE pooling, boxes from 32x32 heatmaps thresholded at {60, 180}/255,
# counted correct when IoU > T or IoBB > T (strict). Table 4 was checked against two independent text
# extractions of the paper; Tables 7 and 19 (supplement) were found in one extraction only (`independent_copies`).
WANG_2017: dict = {
    "source": "Wang et al., ChestX-ray8, CVPR 2017; arXiv:1705.02315v5 (14 Dec 2017)",
    "findings": (
        "Atelectasis",
        "Cardiomegaly",
        "Effusion",
        "Infiltration",
        "Mass",
        "Nodule",
        "Pneumonia",
        "Pneumothorax",
    ),
    "tables": {
        "chestxray8_iobb": {
            "table": "Table 4 (ChestX-ray8 labels, random 70/10/20 split)",
            "independent_copies": 2,
            "measure": "iobb",
            "accuracy": {
                "0.1": (0.7277, 0.9931, 0.7124, 0.7886, 0.4352, 0.1645, 0.7500, 0.4591),
                "0.25": (0.5500, 0.9794, 0.5424, 0.5772, 0.2823, 0.0506, 0.5583, 0.3469),
                "0.5": (0.2833, 0.8767, 0.3333, 0.4227, 0.1411, 0.0126, 0.3833, 0.1836),
                "0.75": (0.1666, 0.7260, 0.2418, 0.3252, 0.1176, 0.0126, 0.2583, 0.1020),
                "0.9": (0.1333, 0.6849, 0.2091, 0.2520, 0.0588, 0.0126, 0.2416, 0.0816),
            },
        },
        "chestxray8_iou": {
            "table": "Table 7 (supplement; ChestX-ray8 labels)",
            "independent_copies": 1,
            "measure": "iou",
            "accuracy": {
                "0.1": (0.6888, 0.9383, 0.6601, 0.7073, 0.4000, 0.1392, 0.6333, 0.3775),
                "0.2": (0.4722, 0.6849, 0.4509, 0.4796, 0.2588, 0.0506, 0.3500, 0.2346),
                "0.3": (0.2444, 0.4589, 0.3006, 0.2764, 0.1529, 0.0379, 0.1666, 0.1326),
                "0.4": (0.0944, 0.2808, 0.2026, 0.1219, 0.0705, 0.0126, 0.0750, 0.0714),
                "0.5": (0.0500, 0.1780, 0.1111, 0.0650, 0.0117, 0.0126, 0.0333, 0.0306),
                "0.6": (0.0222, 0.0753, 0.0457, 0.0243, 0.0000, 0.0126, 0.0166, 0.0306),
                "0.7": (0.0055, 0.0273, 0.0196, 0.0000, 0.0000, 0.0000, 0.0083, 0.0204),
            },
        },
        "chestxray14_iobb": {
            "table": "Table 19 (supplement; ChestX-ray14 labels, published patient-level test split, same boxes)",
            "independent_copies": 1,
            "measure": "iobb",
            "accuracy": {
                "0.1": (0.6222, 1.0, 0.7974, 0.9106, 0.5882, 0.1519, 0.8583, 0.5204),
                "0.25": (0.3944, 0.9863, 0.6339, 0.7967, 0.4588, 0.0506, 0.7083, 0.3367),
                "0.5": (0.1944, 0.9452, 0.4183, 0.6504, 0.3058, 0.0, 0.4833, 0.2653),
                "0.75": (0.0889, 0.8151, 0.2287, 0.4390, 0.1647, 0.0, 0.2917, 0.1735),
                "0.9": (0.0722, 0.6507, 0.1373, 0.3577, 0.0941, 0.0, 0.2333, 0.1224),
            },
        },
    },
}

Box = tuple[float, float, float, float]  # (x, y, w, h), x right and y down, in pixels


# ---- reading the official box list ---------------------------------------------------------------------------


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")


def read_bbox_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read NIH's ``BBox_List_2017.csv`` as distributed (or gzipped, ``.gz``) into one row per box.

    The release's header is ``Image Index,Finding Label,Bbox [x,y,w,h],,,``: the bracket is split by the commas,
    so x, y, w, h sit under the columns ``Bbox [x``, ``y``, ``w``, ``h]``, followed by three empty columns that
    the data rows leave out. Columns are therefore read by position (the first six), and anything after them must
    be empty. Finding names are mapped to the canonical labels (``Infiltrate`` -> ``Infiltration``); an unknown
    name is an error, not a silent drop.

    Returns columns ``image_id``, ``label`` (canonical), ``x``, ``y``, ``w``, ``h`` (float pixels of the
    1024x1024 image) and ``csv_line`` (1-based line in the file).
    """
    path = Path(path)
    if not path.is_file():
        raise NIHDataError(f"box list {str(path)!r} does not exist")
    with _open_text(path) as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise NIHDataError(f"{path}: empty file")
    header = [cell.strip() for cell in rows[0]]
    if header[:2] != ["Image Index", "Finding Label"] or len(header) < 6 or not header[2].startswith("Bbox"):
        raise NIHDataError(
            f"{path}: header {rows[0]} is not NIH's 'Image Index,Finding Label,Bbox [x,y,w,h],,,' (BBox_List_2017.csv)"
        )
    problems, records = [], []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"line {line}"
        if len(row) < 6 or any(cell.strip() for cell in row[6:]):
            problems.append(f"{where}: expected 6 values (image, finding, x, y, w, h), got {row}")
            continue
        image_id, name = row[0].strip(), row[1].strip()
        if name not in BBOX_LABELS:
            problems.append(f"{where} ({image_id}): unknown finding {name!r}; the box list has {sorted(BBOX_LABELS)}")
            continue
        try:
            x, y, w, h = (float(cell) for cell in row[2:6])
        except ValueError:
            problems.append(f"{where} ({image_id}): box {row[2:6]} is not four numbers")
            continue
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            problems.append(f"{where} ({image_id}): box {row[2:6]} needs finite values and positive width and height")
            continue
        label = BBOX_LABELS[name]
        records.append({"image_id": image_id, "label": label, "x": x, "y": y, "w": w, "h": h, "csv_line": line})
    raise_collected(problems, "bad row(s)", path)
    if not records:
        raise NIHDataError(f"{path}: has a header but no boxes")
    return pd.DataFrame.from_records(records)


# ---- from the released image to the model input --------------------------------------------------------------


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """(width, height) after torchvision's ``Resize(shorter)``: the longer side becomes ``int(shorter * long / short)``.

    Matches ``torchvision.transforms.functional.resize`` with an int size on a PIL image (checked in the tests).
    """
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def box_to_input(
    box_xywh: Sequence[float],
    source_size: tuple[int, int] = SOURCE_SIZE,
    image_size: tuple[int, int] = SOURCE_SIZE,
    input_size: int = 224,
    crop_pct: float = 0.875,
) -> Box:
    """A box of the released image in the model input's pixel coordinates, clipped to the input.

    Follows timm's default eval transform (crop_mode ``center``) for a square ``input_size``: the prepared image
    (``image_size`` = its actual (W, H), which may be smaller than the released ``source_size``) is resized so its
    shorter side is ``S = floor(input_size / crop_pct)`` (torchvision ``Resize(S)``), then center-cropped to
    ``input_size`` with torchvision's offsets ``int(round((side - input_size) / 2))``. Each step scales or shifts
    the box edges as it does the image (a pixel edge at u maps to u * new / old). Returns (x, y, w, h); w or h is
    0 when the box falls outside the crop.
    """
    x, y, w, h = (float(v) for v in box_xywh)
    (src_w, src_h), (img_w, img_h) = source_size, image_size
    shorter = math.floor(input_size / crop_pct)
    res_w, res_h = resized_size(img_w, img_h, shorter)
    # released -> prepared (x W / 1024) -> resized (x res_w / W): the prepared size only enters through res_w, res_h
    scale_x, scale_y = res_w / src_w, res_h / src_h
    left, top = int(round((res_w - input_size) / 2.0)), int(round((res_h - input_size) / 2.0))
    x0, x1 = x * scale_x - left, (x + w) * scale_x - left
    y0, y1 = y * scale_y - top, (y + h) * scale_y - top
    x0, x1 = min(max(x0, 0.0), input_size), min(max(x1, 0.0), input_size)
    y0, y1 = min(max(y0, 0.0), input_size), min(max(y1, 0.0), input_size)
    return x0, y0, x1 - x0, y1 - y0


def model_input_geometry(model) -> tuple[int, float]:
    """(input_size, crop_pct) of a cxr-vit model's eval transform, for :func:`box_to_input`."""
    from ..data.transforms import DEFAULT_CROP_PCT, eval_geometry
    from ..modeling import data_config

    config = data_config(model)
    geometry = eval_geometry(config)  # the preprocessing's own checks: a square input, the centre crop
    return geometry.input_size, float(config.get("crop_pct") or DEFAULT_CROP_PCT)


# ---- scores ------------------------------------------------------------------------------------------------


def box_mask(box: Sequence[float], shape: tuple[int, int]) -> np.ndarray:
    """Boolean (H, W) mask of the pixels whose centre lies in ``box`` (x, y, w, h)."""
    x, y, w, h = box
    columns, rows = np.arange(shape[1]) + 0.5, np.arange(shape[0]) + 0.5
    return ((rows >= y) & (rows <= y + h))[:, None] & ((columns >= x) & (columns <= x + w))[None, :]


def pointing_hit(heatmap: np.ndarray, box: Sequence[float]) -> bool:
    """Pointing game: every pixel at the map's maximum lies in the box (a constant map never hits)."""
    heatmap = np.asarray(heatmap, dtype=np.float64)
    peak = heatmap == heatmap.max()
    if peak.all():
        return False
    return bool(box_mask(box, heatmap.shape)[peak].all())


def detected_boxes(heatmap: np.ndarray, thresholds: Sequence[float] = WANG_HEATMAP_THRESHOLDS) -> list[Box]:
    """Boxes around each 8-connected region of ``heatmap >= t``, for every t (pixel-aligned, (x, y, w, h))."""
    heatmap = np.asarray(heatmap, dtype=np.float64)
    boxes = []
    for threshold in thresholds:
        regions, _ = ndimage.label(heatmap >= threshold, structure=np.ones((3, 3), dtype=int))
        for rows, columns in ndimage.find_objects(regions):
            x, y = float(columns.start), float(rows.start)
            boxes.append((x, y, float(columns.stop) - x, float(rows.stop) - y))
    return boxes


def _intersection(a: Sequence[float], b: Sequence[float]) -> float:
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return width * height if width > 0 and height > 0 else 0.0


def iou(truth: Sequence[float], detected: Sequence[float]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    inter = _intersection(truth, detected)
    union = truth[2] * truth[3] + detected[2] * detected[3] - inter
    return inter / union if union > 0 else 0.0


def iobb(truth: Sequence[float], detected: Sequence[float]) -> float:
    """Wang et al.'s IoBB: intersection over the *detected* box's area."""
    area = detected[2] * detected[3]
    return _intersection(truth, detected) / area if area > 0 else 0.0


def score_box(
    heatmap: np.ndarray, box: Sequence[float], heatmap_thresholds: Sequence[float] = WANG_HEATMAP_THRESHOLDS
) -> dict:
    """Pointing hit and the best IoU / IoBB over the detected boxes of one (H, W) map in [0, 1] for one GT box.

    ``box`` is in the map's pixel coordinates (see :func:`box_to_input`). IoU and IoBB are 0 when the map
    yields no detected box or the GT box is empty (outside the crop).
    """
    candidates = detected_boxes(heatmap, heatmap_thresholds)
    empty = box[2] <= 0 or box[3] <= 0
    return {
        "pointing_hit": False if empty else pointing_hit(heatmap, box),
        "iou": 0.0 if empty else max((iou(box, c) for c in candidates), default=0.0),
        "iobb": 0.0 if empty else max((iobb(box, c) for c in candidates), default=0.0),
        "n_detected": len(candidates),
    }


def _key(threshold: float) -> str:
    return f"{threshold:g}"


def _summary(scores: list[dict], iou_thresholds: Sequence[float], iobb_thresholds: Sequence[float]) -> dict:
    if not scores:
        return {
            "n_boxes": 0,
            "pointing_accuracy": None,
            "chance_pointing": None,
            "mean_iou": None,
            "mean_iobb": None,
            "iou_accuracy": {_key(t): None for t in iou_thresholds},
            "iobb_accuracy": {_key(t): None for t in iobb_thresholds},
        }
    ious = np.array([s["iou"] for s in scores])
    iobbs = np.array([s["iobb"] for s in scores])
    shares = [s["box_share"] for s in scores if "box_share" in s]
    return {
        "n_boxes": len(scores),
        "pointing_accuracy": float(np.mean([s["pointing_hit"] for s in scores])),
        "chance_pointing": float(np.mean(shares)) if len(shares) == len(scores) else None,
        "mean_iou": float(ious.mean()),
        "mean_iobb": float(iobbs.mean()),
        "iou_accuracy": {_key(t): float((ious >= t).mean()) for t in iou_thresholds},
        "iobb_accuracy": {_key(t): float((iobbs >= t).mean()) for t in iobb_thresholds},
    }


def localization_summary(
    scores: Iterable[dict],
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
    iobb_thresholds: Sequence[float] = IOBB_THRESHOLDS,
    heatmap_thresholds: Sequence[float] = WANG_HEATMAP_THRESHOLDS,
) -> dict:
    """Per boxed finding (canonical order) and overall: pointing accuracy, mean IoU/IoBB and accuracy at thresholds.

    ``scores`` are :func:`score_box` results each with a ``label`` key and, optionally, ``box_share`` (the box's
    share of the map, for the chance level of the pointing game) (``heatmap_thresholds``: the ones they
    were scored with, recorded in the output). Accuracy at T = share of GT boxes with
    IoU (IoBB) >= T; keys of the accuracy dicts are the thresholds as strings (``"0.1"``). A finding without
    boxes has ``n_boxes`` 0 and None elsewhere.
    """
    scores = list(scores)
    unknown = sorted({s["label"] for s in scores} - set(BOXED_FINDINGS))
    if unknown:
        raise ValueError(f"no boxes exist for {unknown}; boxed findings: {BOXED_FINDINGS}")
    return {
        "heatmap_thresholds": [float(t) for t in heatmap_thresholds],
        "rule": "accuracy at T: share of GT boxes with best IoU (IoBB) >= T over the detected boxes of the map",
        "overall": _summary(scores, iou_thresholds, iobb_thresholds),
        "findings": {
            label: _summary([s for s in scores if s["label"] == label], iou_thresholds, iobb_thresholds)
            for label in BOXED_FINDINGS
        },
    }


VERIFIED_REFERENCE = "chestxray8_iobb"  # Table 4: the one table found in two independent copies of the paper


def localization_markdown(summary: dict, reference: str | None = VERIFIED_REFERENCE, notes: Sequence[str] = ()) -> str:
    """A Markdown section: pointing accuracy (and its chance level) and IoU/IoBB accuracies per finding, with
    Wang et al. beside ours (``reference``: a key of ``WANG_2017["tables"]``; a table found in one copy only is
    flagged as unverified). ``notes`` go under the heading."""
    rows_spec = [("Overall", summary["overall"])] + list(summary["findings"].items())
    iou_keys = list(summary["overall"]["iou_accuracy"])
    iobb_keys = list(summary["overall"]["iobb_accuracy"])

    chance = summary["overall"].get("chance_pointing") is not None
    headers = ["Finding", "Boxes", "Pointing"] + (["Chance"] if chance else [])
    headers += [f"IoU>={k}" for k in iou_keys] + [f"IoBB>={k}" for k in iobb_keys]
    body = [
        [name, str(entry["n_boxes"]), number(entry["pointing_accuracy"])]
        + ([number(entry.get("chance_pointing"))] if chance else [])
        + [number(entry["iou_accuracy"][k]) for k in iou_keys]
        + [number(entry["iobb_accuracy"][k]) for k in iobb_keys]
        for name, entry in rows_spec
    ]
    lines = ["## Localization", ""] + [line for note in notes for line in (note, "")]
    lines += [table(headers, body), ""]
    if reference:
        published = WANG_2017["tables"][reference]
        keys, findings = list(published["accuracy"]), WANG_2017["findings"]
        measure, field = ("IoU", "iou_accuracy") if published["measure"] == "iou" else ("IoBB", "iobb_accuracy")
        ref_headers = ["Finding"] + [f"{measure}>{k} Wang" for k in keys] + [f"{measure}>={k} ours" for k in keys]
        ref_rows = [
            [label]
            + [f"{published['accuracy'][k][column]:.3f}" for k in keys]
            + [
                number(summary["findings"][label][field][k]) if k in summary["findings"][label][field] else "-"
                for k in keys
            ]
            for column, label in enumerate(findings)
        ]
        verified = (
            ""
            if published["independent_copies"] >= 2
            else (" **Unverified transcription**: this table was found in one text extraction of the paper only.")
        )
        lines += [
            f"Published reference: {WANG_2017['source']}, {published['table']}: a ResNet-50 with its own heatmaps, so "
            f"a reference point, not the same model or protocol. `-` in our columns: threshold not computed.{verified}",
            "",
            table(ref_headers, ref_rows),
            "",
        ]
    cuts = ", ".join(f"{t:.3f}" for t in summary["heatmap_thresholds"])
    lines += [
        f"Pointing: the map's maximum lies in the box. IoU / IoBB: the [0, 1] map is thresholded at {cuts} "
        "(Wang et al. 2017 used 60/255 and 180/255); each 8-connected region gives a detected box, and a GT box "
        "scores its best IoU and its best IoBB (intersection / detected-box area) over them.",
        "",
    ]
    return "\n".join(lines)


# ---- a model's heatmaps against the boxes --------------------------------------------------------------------


def localization_section(
    classifier, dataset, boxes: pd.DataFrame, explainer: str | None = None, batch_size: int = 32, bbox_csv: str = "?"
) -> dict:
    """Score ``explainer``'s heatmap of each box's finding on the box's image, for the boxes on ``dataset``'s images.

    ``classifier`` is the :class:`cxr_vit.inference.Classifier` of the evaluation (its preprocessing makes the
    model inputs), ``dataset`` the evaluated split (``image`` and ``image_id`` columns), ``boxes``
    :func:`read_bbox_csv`'s frame of the file ``bbox_csv``. The explainer is chosen by
    :func:`cxr_vit.evaluation.explainers.resolve_explainer`. Returns :func:`localization_summary` plus what was scored.
    """
    import torch

    from ..constants import LABEL2ID
    from .explainers import get_explainer, resolve_explainer

    model = classifier.model
    name, choice = resolve_explainer(model, explainer)
    explain = get_explainer(name)
    if "image_id" not in dataset.column_names:
        raise ValueError("the evaluated split has no 'image_id' column to match the boxes' 'Image Index' with")
    rows = {image_id: row for row, image_id in enumerate(dataset["image_id"])}
    matched = boxes[boxes["image_id"].isin(rows)]
    size, crop_pct = model_input_geometry(model)
    scores = []
    for start in range(0, len(matched), batch_size):
        chunk = matched.iloc[start : start + batch_size]
        # An image with several boxes is decoded and resized once; each box still gets its own heatmap.
        position = {image_id: i for i, image_id in enumerate(dict.fromkeys(chunk["image_id"]))}
        decoded = [dataset[rows[image_id]]["image"] for image_id in position]
        images = [decoded[position[image_id]] for image_id in chunk["image_id"]]
        squares = classifier.squares(decoded)[[position[image_id] for image_id in chunk["image_id"]]]
        labels = torch.tensor([[LABEL2ID[label]] for label in chunk["label"]])
        maps = explain(model, classifier.inputs(squares), labels)[:, 0].float().cpu().numpy()
        for record, image, heatmap in zip(chunk.itertuples(), images, maps, strict=True):
            box = box_to_input(
                (record.x, record.y, record.w, record.h), image_size=image.size, input_size=size, crop_pct=crop_pct
            )
            scores.append({"label": record.label, "box_share": box[2] * box[3] / size**2, **score_box(heatmap, box)})
    return {
        "bbox_csv": str(bbox_csv),
        "explainer": name,
        "explainer_choice": choice,
        "n_boxes_in_file": int(len(boxes)),
        "n_boxes_scored": len(scores),
        "n_images": int(matched["image_id"].nunique()),
        "n_boxes_cropped": int(sum(s["box_share"] == 0 for s in scores)),
        "reference": VERIFIED_REFERENCE,
        **localization_summary(scores),
    }
