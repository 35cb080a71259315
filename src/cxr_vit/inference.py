"""The one inference path: a model and X-rays (images or a dataset split) in, 15 probabilities out.

Every number this package reports or predicts goes through it: the Trainer's evaluation (its prediction step),
``scripts/evaluate.py``, ``scripts/predict.py`` and the demo. One preprocessing: :mod:`cxr_vit.data.transforms`
per image, then :meth:`BatchImageTransform.eval_batch` per batch. One precision policy:

- ``fp32``: everything in float32 (the default where bf16 is not native);
- ``bf16``: the backbone under bfloat16 autocast (the default, ``auto``, where the device computes bf16 natively: a
  GPU of compute capability 8 or newer, as in training, or a CPU with AVX512-BF16 or AMX-BF16);
- either way the classifier head runs in float32 on float32 features. A bf16 head would round the logits to
  3 significant digits, which turns close scores into ties and moves ROC-AUC; an fp32 head on bf16 features
  keeps the headline within 1e-3 of fp32 (tested).

Test-time augmentation (``tta``) averages the probabilities of fixed views of each image: its centre crop, then
the four corner crops of the square it is cut from (five at most, deterministic). :class:`Ensemble` averages the
probabilities of several models, each with its own preprocessing.

Three backends run the model: PyTorch (a ``TimmWrapperForImageClassification``), ONNX Runtime (an
:class:`cxr_vit.onnx_model.OnnxModel`, an export of the same forward, fp32 or int8, on the CPU) and Inductor (an
:class:`cxr_vit.inductor_model.InductorModel`, a static int8 PT2E program compiled by ``torch.compile`` on the
CPU; under ``bf16`` its float ops run in bf16). Only the forward differs; the preprocessing, the averaging and
everything downstream are the same code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from transformers import TimmWrapperForImageClassification

from .cpu_features import native_cpu_bf16
from .data.gpu_augment import EVAL_VIEWS, BatchImageTransform
from .data.transforms import ModelImages, collate_images, eval_geometry, resize_for_model
from .inductor_model import InductorModel
from .modeling import data_config
from .onnx_model import OnnxModel

BACKENDS = ("torch", "onnx", "inductor")
EXPORTED_MODELS = (OnnxModel, InductorModel)  # export folders: CPU only, no gradients
NO_GRADIENTS = (
    "heatmaps need gradients, which an exported model (--backend onnx or inductor) does not have: use --backend "
    "torch for heatmaps"
)
PRECISIONS = ("auto", "fp32", "bf16")
PRECISION_HELP = (
    "auto: bf16 autocast (fp32 head) where the device computes bf16 natively (a GPU of compute capability 8+, a CPU "
    "with AVX512-BF16 or AMX-BF16), else fp32; an ONNX export runs as exported (auto or fp32); an inductor int8 "
    "export runs its float ops in this precision."
)


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 natively: CUDA Ampere or newer, or a CPU with AVX512-BF16 / AMX-BF16.
    Elsewhere bf16 is emulated, slower than fp32."""
    device = torch.device(device)
    if device.type == "cpu":
        return native_cpu_bf16()
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The backbone's autocast dtype for ``precision`` on ``device``; None = plain fp32. ``auto``: bf16 where native."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return torch.bfloat16 if native_bf16(device) else None
    return torch.bfloat16 if precision == "bf16" else None


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """What ``precision`` (``auto``, ``fp32``, ``bf16``) computes on ``device``: ``"bf16"`` or ``"fp32"``."""
    return "bf16" if autocast_dtype(precision, device) == torch.bfloat16 else "fp32"


def forward_logits(
    model: TimmWrapperForImageClassification, pixel_values: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """float32 logits: the backbone (``forward_features`` + pooling) under ``dtype`` autocast, the head in fp32.

    In fp32 this is exactly ``model(pixel_values=...).logits``: the same timm calls, split before the classifier.
    """
    timm_model = model.timm_model
    device_type = pixel_values.device.type
    autocast = torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with autocast:
        features = timm_model.forward_head(timm_model.forward_features(pixel_values), pre_logits=True)
    with torch.autocast(device_type, enabled=False):
        return timm_model.get_classifier()(features.float())


class Classifier:
    """A model with its preprocessing and precision: X-rays in, probabilities in canonical label order out.

    Args:
        model: a cxr-vit model (``TimmWrapperForImageClassification`` with the 15 labels), or an export of it
            that runs on the CPU (:data:`EXPORTED_MODELS`: ONNX, inductor int8).
        device: where to run; default CUDA when available (the CPU for an export).
        precision: ``auto`` (bf16 autocast where the device has it natively: :func:`native_bf16`; else fp32),
            ``fp32`` or ``bf16`` (an ONNX model computes what its graph holds: ``auto`` or ``fp32``; an inductor
            int8 model runs its float ops, everything but the int8 GEMMs, in this precision). What it
            resolved to is ``precision``; ``runtime`` says it for reports.
        tta: views averaged per image: 1 = the centre crop (timm's eval transform); up to 5 adds the corners.
    """

    def __init__(
        self,
        model: TimmWrapperForImageClassification,
        device: str | torch.device | None = None,
        precision: str = "auto",
        tta: int = 1,
    ):
        if not 1 <= tta <= EVAL_VIEWS:
            raise ValueError(f"tta must be 1 (the centre crop only) to {EVAL_VIEWS} (centre and 4 corners), got {tta}")
        self.tta = tta
        self.exported = isinstance(model, EXPORTED_MODELS)
        onnx = isinstance(model, OnnxModel)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() and not self.exported else "cpu"))
        if self.exported and self.device.type != "cpu":
            raise ValueError(
                f"the {model.backend} backend runs on the CPU: got device {self.device} (use --device cpu, or "
                "--backend torch)"
            )
        if onnx and precision == "bf16":
            raise ValueError(
                "the onnx backend runs its graph as exported: got precision 'bf16' (use --precision auto/fp32, or "
                "--backend torch or inductor)"
            )
        self.model = model if self.exported else model.eval().to(self.device)
        config = data_config(model)
        self.geometry = eval_geometry(config)
        self.batch_transform = BatchImageTransform(config)
        self.dtype = None if onnx else autocast_dtype(precision, self.device)
        self.precision = "bf16" if self.dtype == torch.bfloat16 else "fp32"  # what ``auto`` resolved to

    def squares(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The uint8 ``S x S`` squares of decoded images (the CPU half of the preprocessing)."""
        return torch.stack([torch.from_numpy(resize_for_model(image, self.geometry)) for image in images])

    def inputs(self, squares: torch.Tensor, view: int = 0) -> torch.Tensor:
        """Normalised model inputs on the device from uint8 squares (the device half of the preprocessing)."""
        return self.batch_transform(squares.to(self.device, non_blocking=True), training=False, view=view)

    @torch.no_grad()
    def logits(self, squares: torch.Tensor, view: int = 0) -> torch.Tensor:
        """float32 logits ``(B, 15)`` of one view, on the device."""
        if self.exported:
            return self.model.logits(self.inputs(squares, view), self.dtype)
        return forward_logits(self.model, self.inputs(squares, view), self.dtype)

    @property
    def runtime(self) -> str:
        """What computes the logits, for reports: the precision on torch, the graph on ONNX Runtime, the int8
        program and the precision of its float ops on Inductor."""
        if isinstance(self.model, InductorModel):
            return self.model.description + (", bf16 float ops" if self.precision == "bf16" else ", fp32 float ops")
        if self.exported:
            return self.model.description
        return "bf16 autocast, fp32 head" if self.precision == "bf16" else "fp32"

    def probabilities(self, squares: torch.Tensor) -> np.ndarray:
        """Sigmoid probabilities ``(B, 15)``, averaged over the ``tta`` views, as float64 numpy."""
        views = [torch.sigmoid(self.logits(squares, view)).double() for view in range(self.tta)]
        return torch.stack(views).mean(dim=0).cpu().numpy()

    def predict_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Probabilities of decoded X-rays (any PIL mode)."""
        return self.probabilities(self.squares(images))

    def loader(self, dataset, batch_size: int = 64, num_workers: int = 0) -> DataLoader:
        """Batches of a prepared split: ``pixel_values`` (the uint8 squares of :meth:`squares`) and ``labels``."""
        return DataLoader(
            dataset.with_transform(ModelImages(self.geometry)),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=collate_images,
            pin_memory=self.device.type == "cuda",
        )

    def predict_dataset(
        self, dataset, batch_size: int = 64, num_workers: int = 0, desc: str = "predict", progress: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, multi-hot targets), both ``(n, 15)`` float64, of a prepared split (``image`` + ``labels``);
        a target is NaN where the split's source does not annotate that label."""
        from tqdm.auto import tqdm

        probabilities, targets = [], []
        for batch in tqdm(self.loader(dataset, batch_size, num_workers), desc=desc, unit="batch", disable=not progress):
            probabilities.append(self.probabilities(batch["pixel_values"]))
            targets.append(batch["labels"].numpy())
        return np.concatenate(probabilities), np.concatenate(targets).astype(np.float64)


class Ensemble:
    """Several models, each with its own preprocessing: probabilities averaged over the members.

    The members must predict the same 15 labels in the same order (cxr-vit models do); their input sizes may
    differ. It has :class:`Classifier`'s ``predict_images`` and ``predict_dataset``.
    """

    def __init__(self, members: Sequence[Classifier]):
        if not members:
            raise ValueError("an ensemble needs at least one model")
        labels = {
            tuple(member.model.config.id2label[i] for i in range(member.model.config.num_labels)) for member in members
        }
        if len(labels) != 1:
            raise ValueError(f"ensemble members predict different labels: {sorted(labels)}")
        self.members = list(members)

    def predict_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return np.mean([member.predict_images(images) for member in self.members], axis=0)

    def predict_dataset(
        self, dataset, batch_size: int = 64, num_workers: int = 0, desc: str = "predict", progress: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        outputs = [
            member.predict_dataset(
                dataset, batch_size, num_workers, f"{desc} ({index + 1}/{len(self.members)})", progress
            )
            for index, member in enumerate(self.members)
        ]
        return np.mean([probabilities for probabilities, _ in outputs], axis=0), outputs[0][1]
