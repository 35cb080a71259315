"""The ONNX backend: an exported cxr-vit model (``scripts/export_onnx.py``) run by ONNX Runtime on the CPU.

An export folder holds ``model.onnx`` (the model's forward on the *normalised* pixel batch, fp32 or int8) beside the
model's ``config.json`` (labels, thresholds, ``pretrained_cfg``) and ``preprocessor_config.json``. An
:class:`OnnxModel` stands in for the PyTorch model in :class:`cxr_vit.inference.Classifier`: the same preprocessing
makes the batch, only the forward differs, so predict.py, evaluate.py and app.py give the same probabilities,
thresholds and report. Heatmaps need gradients, which an ONNX Runtime session does not have: they stay on torch.

Needs the ``deploy`` extra: ``pip install -e ".[deploy]"``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, PretrainedConfig

from .data.provenance import file_sha256

ONNX_FILE = "model.onnx"
EXPORT_FILE = "export.json"
INPUT_NAME, OUTPUT_NAME = "pixel_values", "logits"
QUANTIZATION_NAMES = {"int8": "int8 (dynamic quantization)", "int8_static": "int8 (static QDQ quantization)"}


class OnnxModelError(ValueError):
    """A folder that is not a cxr-vit ONNX export, or ONNX Runtime missing; the message says what to do."""


def create_session(path: str | os.PathLike, num_threads: int | None = None, profile_prefix: str | None = None):
    """An ONNX Runtime CPU session with all graph optimisations and ``num_threads`` intra-op threads
    (default: torch's, so both backends use the same cores); ``profile_prefix`` turns on ORT's per-op profiler."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise OnnxModelError('the onnx backend needs onnxruntime: pip install -e ".[deploy]"') from err
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads or torch.get_num_threads()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_prefix:
        options.enable_profiling, options.profile_file_prefix = True, profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def read_export_folder(
    folder: Path, graph_file: str, how_to_make: str, error: type[ValueError]
) -> tuple[Path, PretrainedConfig, dict]:
    """(the graph file, its ``config.json``, its ``export.json`` or ``{}``) of an export folder. Raises ``error``
    saying ``how_to_make`` one when the graph is missing, or naming ``config.json`` when it cannot be read."""
    path = folder / graph_file
    if not path.is_file():
        raise error(f"{folder}: no {graph_file}; {how_to_make}")
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise error(f"{folder}: no readable config.json beside {graph_file} ({err})") from err
    record = folder / EXPORT_FILE
    return path, config, json.loads(record.read_text()) if record.is_file() else {}


class OnnxModel:
    """An export folder's ``model.onnx`` in an ONNX Runtime CPU session, with its ``config``.

    Args:
        folder: written by ``scripts/export_onnx.py`` (:func:`cxr_vit.onnx_export.export_onnx`).
        num_threads: ONNX Runtime intra-op threads (default: ``torch.get_num_threads()``).
    """

    backend = "onnx"

    def __init__(self, folder: str | os.PathLike, num_threads: int | None = None):
        self.folder = Path(folder)
        how_to_make = (
            "the onnx backend takes a folder written by scripts/export_onnx.py (python scripts/export_onnx.py "
            f"--model MODEL --output_dir {self.folder})"
        )
        path, self.config, self.export_record = read_export_folder(self.folder, ONNX_FILE, how_to_make, OnnxModelError)
        self.session = create_session(path, num_threads)
        self.fingerprint = "onnx:" + file_sha256(path)  # never equal to a torch weights fingerprint

    @property
    def quantization(self) -> str | None:
        return self.export_record.get("quantize")

    @property
    def description(self) -> str:
        """What runs the model, for reports: ``onnxruntime fp32``, ``onnxruntime int8 (dynamic quantization)`` or
        ``onnxruntime int8 (static QDQ quantization)``."""
        return "onnxruntime " + QUANTIZATION_NAMES.get(self.quantization, "fp32")

    def logits(self, pixel_values: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """float32 logits ``(B, 15)`` of a normalised CPU batch, as :func:`cxr_vit.inference.forward_logits`; the
        graph computes in what it holds (``dtype`` must be None: the Classifier refuses bf16 for it)."""
        inputs = np.ascontiguousarray(pixel_values.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: inputs})[0])
