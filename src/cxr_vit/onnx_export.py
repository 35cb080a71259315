"""Export a cxr-vit model to ONNX (optionally int8) and verify it against PyTorch at once.

What is exported is the model's forward on the *normalised* pixel batch (:func:`cxr_vit.inference.forward_logits`
in fp32), with a dynamic batch axis, through ``torch.onnx.export`` (torch's default exporter, ``torch.export`` +
onnxscript). The preprocessing stays in :class:`cxr_vit.inference.Classifier` for both backends, so it exists once.
``int8`` is ONNX Runtime's dynamic quantization (``quantize_dynamic``: int8 weights per tensor, activations
quantized per batch at run time) of that fp32 graph. ``int8_static`` is its static QDQ quantization
(``quantize_static``): the activation ranges are fixed beforehand by running the fp32 graph on calibration images
(:func:`calibration_from_dataset`: validation images of a prepared set through the model's own preprocessing), so no
range is computed at run time. Its settings are the ones ONNX Runtime's x86 kernels run fastest with VNNI: uint8
activations (asymmetric) times int8 weights (symmetric, one scale per output channel), full 8-bit range (no
``reduce_range``, which only avoids the overflow of pre-VNNI AVX2/AVX-512 kernels), and the GEMMs (``MatMul``,
``Gemm``, the patch embedding's ``Conv``) quantized, the rest left in fp32.

The verification runs both on the same seeded batch of normalised inputs of another batch size than the export's,
so it also checks the dynamic axis; fp32 must agree to ``FP32_TOLERANCE`` (else :class:`ExportError`), int8's
difference is recorded as reached. ``export.json`` holds the settings, versions and those differences.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from .data import DEFAULT_SPLIT_SEED
from .evaluation.report import weights_fingerprint
from .inference import Classifier, forward_logits
from .modeling import data_config, timm_state_dict
from .onnx_model import EXPORT_FILE, INPUT_NAME, ONNX_FILE, OUTPUT_NAME, create_session
from .prediction import load_model
from .public_names import dataset_reference

QUANTIZATIONS = ("int8", "int8_static")
STATIC_OP_TYPES = ("MatMul", "Gemm", "Conv")  # the GEMMs: nearly all of a ViT's FLOPs
CALIBRATION_IMAGES = 256
FP32_TOLERANCE = 1e-4  # max abs logit difference of an fp32 export
PREPROCESSOR_FILE = "preprocessor_config.json"
DEPLOY_MODULES = ("onnx", "onnxscript", "onnxruntime")  # the deploy extra


class ExportError(RuntimeError):
    """The exported model does not compute what the PyTorch model computes."""


class LogitsForward(torch.nn.Module):
    """What is exported: fp32 logits of a normalised batch, the PyTorch backend's forward."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return forward_logits(self.model, pixel_values)


def verification_batch(model, batch_size: int = 3, seed: int = 0) -> torch.Tensor:
    """Seeded normal inputs of the model's input shape: what normalised X-rays look like to the model in scale."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((batch_size, *data_config(model)["input_size"]), generator=generator)


def export_fp32(model, path: str | os.PathLike, opset: int | None = None) -> None:
    """``model``'s logits on a normalised batch as an ONNX graph at ``path``, batch axis dynamic."""
    example = verification_batch(model, batch_size=2, seed=1)
    torch.onnx.export(
        LogitsForward(model).eval(),
        (example,),
        str(path),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
        opset_version=opset,
        external_data=False,
        dynamo=True,
        verbose=False,
    )


@dataclass
class Calibration:
    """Normalised input batches that static quantization runs the fp32 graph on to fix each activation's range,
    and where they came from (recorded in ``export.json``)."""

    batches: list[np.ndarray]
    source: dict = field(default_factory=dict)

    @property
    def images(self) -> int:
        return sum(len(batch) for batch in self.batches)


def calibration_from_dataset(
    model,
    dataset_name: str,
    split: str = "validation",
    images: int = CALIBRATION_IMAGES,
    batch_size: int = 32,
    split_seed: int = DEFAULT_SPLIT_SEED,
) -> Calibration:
    """The first ``images`` images of a prepared set's ``split``, preprocessed as :class:`Classifier` does: the
    ranges quantization fixes are those of real X-rays in the model's own input scale."""
    from .data import load_chestxray14, select_splits

    if images < 1:
        raise ValueError(f"--calibration_images must be at least 1, got {images}")
    (dataset,) = select_splits(load_chestxray14(dataset_name, None, split_seed), [split], dataset_name)
    dataset = dataset.select(range(min(images, len(dataset))))
    classifier = Classifier(model, device="cpu", precision="fp32")
    batches = [classifier.inputs(batch["pixel_values"]).numpy() for batch in classifier.loader(dataset, batch_size)]
    name = dataset_reference(dataset_name, split_seed=split_seed).name  # export.json may be published: no local path
    source = {"dataset": name, "split": split, "split_seed": split_seed}
    return Calibration(batches, {**source, "images": len(dataset)})


def calibration_from_noise(model, batches: int = 2, batch_size: int = 8) -> Calibration:
    """Seeded normal batches (:func:`verification_batch`): ranges of noise, not of X-rays. For timing a static
    graph (its speed does not depend on the ranges), never for a model that is used."""
    noise = [verification_batch(model, batch_size, seed=100 + index).numpy() for index in range(batches)]
    return Calibration(noise, {"dataset": "seeded normal noise (for timing only)", "images": batches * batch_size})


def quantize_int8_static(
    fp32_path: str | os.PathLike, int8_path: str | os.PathLike, batches: Iterable[np.ndarray]
) -> None:
    """ONNX Runtime's static QDQ quantization of an fp32 graph, calibrated (min-max) on ``batches``: uint8
    activations x int8 per-channel symmetric weights, full range, the GEMMs only (the fast path of its VNNI kernels)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.remaining = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.remaining, None)
            return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}

    prepared = Path(int8_path).with_suffix(".prepared.onnx")
    quant_pre_process(str(fp32_path), str(prepared))
    quantize_static(
        str(prepared),
        str(int8_path),
        Batches(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(STATIC_OP_TYPES),
        per_channel=True,
        reduce_range=False,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    prepared.unlink()


def quantize_int8(fp32_path: str | os.PathLike, int8_path: str | os.PathLike) -> None:
    """ONNX Runtime's dynamic int8 quantization (signed int8 weights, per tensor) of an fp32 graph."""
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    prepared = Path(int8_path).with_suffix(".prepared.onnx")
    quant_pre_process(str(fp32_path), str(prepared))  # shape inference + graph fusions, as ORT recommends
    quantize_dynamic(str(prepared), str(int8_path), weight_type=QuantType.QInt8)
    prepared.unlink()


def compare(model, onnx_path: str | os.PathLike) -> dict[str, float]:
    """Max abs logit and probability differences of ONNX Runtime vs PyTorch on :func:`verification_batch`."""
    inputs = verification_batch(model)
    with torch.no_grad():
        expected = forward_logits(model.eval(), inputs).numpy()
    session = create_session(onnx_path)
    logits = session.run([OUTPUT_NAME], {INPUT_NAME: inputs.numpy()})[0]
    probabilities = [torch.sigmoid(torch.from_numpy(values).double()).numpy() for values in (logits, expected)]
    return {
        "batch_size": len(inputs),
        "max_abs_logit_diff": float(np.abs(logits - expected).max()),
        "max_abs_probability_diff": float(np.abs(probabilities[0] - probabilities[1]).max()),
    }


def export_onnx(
    model_name_or_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    quantize: str | None = None,
    opset: int | None = None,
    calibration: Calibration | None = None,
    fp32_graph: str | os.PathLike | None = None,
) -> dict:
    """Write ``model.onnx``, ``config.json``, ``preprocessor_config.json`` and ``export.json`` to ``output_dir``.

    ``int8_static`` needs ``calibration`` (:func:`calibration_from_dataset`). ``fp32_graph``: the ``model.onnx`` of
    an fp32 export of the same model, quantized instead of exporting again (checked against PyTorch all the same).
    Returns the ``export.json`` record.
    Raises :class:`ExportError` when the fp32 graph's logits differ from PyTorch's by more than ``FP32_TOLERANCE``:
    a folder that computes something else is not written.
    """
    if quantize not in (None, *QUANTIZATIONS):
        raise ValueError(f"quantize must be one of {QUANTIZATIONS} or None, got {quantize!r}")
    if (quantize == "int8_static") != (calibration is not None):
        raise ValueError("int8_static quantization needs calibration images (--calibration_dataset), and only it does")
    missing = [name for name in DEPLOY_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f'exporting needs {", ".join(missing)}: pip install -e ".[deploy]"')
    model = load_model(model_name_or_path)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        fp32_path = Path(work) / ONNX_FILE
        if fp32_graph is None:
            export_fp32(model, fp32_path, opset)
        else:
            shutil.copyfile(fp32_graph, fp32_path)
        fp32 = compare(model, fp32_path)
        if fp32["max_abs_logit_diff"] > FP32_TOLERANCE:
            raise ExportError(
                f"the ONNX graph's logits differ from PyTorch's by {fp32['max_abs_logit_diff']:.2e} "
                f"(> {FP32_TOLERANCE}); nothing written to {output}"
            )
        final = fp32_path
        if quantize == "int8":
            final = Path(work) / "model.int8.onnx"
            quantize_int8(fp32_path, final)
        elif quantize == "int8_static":
            final = Path(work) / "model.int8_static.onnx"
            quantize_int8_static(fp32_path, final, calibration.batches)
        shutil.copyfile(final, output / ONNX_FILE)
    record = {
        **source_record(model, model_name_or_path),
        "quantize": quantize,
        "opset": opset,
        "exporter": "torch.onnx.export (dynamo)",
        "fp32_check": {**fp32, "tolerance": FP32_TOLERANCE, "passed": True},
        "versions": {name: version(name) for name in ("torch", "timm", *DEPLOY_MODULES)},
    }
    if quantize:
        record["int8_check"] = {**compare(model, output / ONNX_FILE), "note": "reached, not a tolerance"}
    if calibration is not None:
        record["calibration"] = {**calibration.source, "method": "MinMax", "op_types": list(STATIC_OP_TYPES)}
    write_model_configs(model, model_name_or_path, output)
    (output / EXPORT_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def source_record(model, model_name_or_path: str | os.PathLike) -> dict:
    """What an export folder's ``export.json`` says of the model it came from, and of the input it takes."""
    return {
        "source": str(model_name_or_path),
        "source_fingerprint": weights_fingerprint(timm_state_dict(model.state_dict())),
        "architecture": model.config.architecture,
        "input_size": list(data_config(model)["input_size"]),
        "input": f"{INPUT_NAME}: float32 (batch, 3, H, W), normalised as the model's data config says",
    }


def write_model_configs(model, model_name_or_path: str | os.PathLike, output: Path) -> None:
    """The model's ``config.json`` (labels, thresholds and ``pretrained_cfg`` travel with the export) and
    ``preprocessor_config.json``."""
    model.config.save_pretrained(output)
    write_preprocessor_config(model_name_or_path, output)


def write_preprocessor_config(model_name_or_path: str | os.PathLike, output: Path) -> None:
    """The model's ``preprocessor_config.json``: copied when the folder has one, else the settings of the image
    processor transformers makes from ``config.json``'s ``pretrained_cfg``."""
    source = Path(model_name_or_path) / PREPROCESSOR_FILE
    if source.is_file():
        shutil.copyfile(source, output / PREPROCESSOR_FILE)
        return
    from transformers import AutoImageProcessor

    # TimmWrapperImageProcessor.save_pretrained writes nothing (its settings live in config.json); other ONNX
    # runtimes look for the file, so write its dict
    AutoImageProcessor.from_pretrained(output).to_json_file(output / PREPROCESSOR_FILE)
