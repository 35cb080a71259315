"""Export a cxr-vit model to ONNX (optionally int8) and verify it against PyTorch at once.

What is exported is the model's forward on the *normalised* pixel batch (:func:`cxr_vit.inference.forward_logits`
in fp32), with a dynamic batch axis, through ``torch.onnx.export`` (torch's default exporter, ``torch.export`` +
onnxscript). The preprocessing stays in :class:`cxr_vit.inference.Classifier` for both backends, so it exists once.
``int8`` is ONNX Runtime's dynamic quantization (``quantize_dynamic``: int8 weights per tensor, activations
quantized per batch at run time) of that fp32 graph.

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
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from .evaluation.report import weights_fingerprint
from .inference import forward_logits
from .modeling import data_config, timm_state_dict
from .onnx_model import EXPORT_FILE, INPUT_NAME, ONNX_FILE, OUTPUT_NAME, create_session
from .prediction import load_model

QUANTIZATIONS = ("int8",)
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
) -> dict:
    """Write ``model.onnx``, ``config.json``, ``preprocessor_config.json`` and ``export.json`` to ``output_dir``.

    Returns the ``export.json`` record. Raises :class:`ExportError` when the fp32 graph's logits differ from
    PyTorch's by more than ``FP32_TOLERANCE``: a folder that computes something else is not written.
    """
    if quantize not in (None, *QUANTIZATIONS):
        raise ValueError(f"quantize must be one of {QUANTIZATIONS} or None, got {quantize!r}")
    missing = [name for name in DEPLOY_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f'exporting needs {", ".join(missing)}: pip install -e ".[deploy]"')
    model = load_model(model_name_or_path)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        fp32_path = Path(work) / ONNX_FILE
        export_fp32(model, fp32_path, opset)
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
        shutil.copyfile(final, output / ONNX_FILE)
    record = {
        "source": str(model_name_or_path),
        "source_fingerprint": weights_fingerprint(timm_state_dict(model.state_dict())),
        "architecture": model.config.architecture,
        "input_size": list(data_config(model)["input_size"]),
        "input": f"{INPUT_NAME}: float32 (batch, 3, H, W), normalised as the model's data config says",
        "quantize": quantize,
        "opset": opset,
        "exporter": "torch.onnx.export (dynamo)",
        "fp32_check": {**fp32, "tolerance": FP32_TOLERANCE, "passed": True},
        "versions": {name: version(name) for name in ("torch", "timm", *DEPLOY_MODULES)},
    }
    if quantize == "int8":
        record["int8_check"] = {**compare(model, output / ONNX_FILE), "note": "reached, not a tolerance"}
    model.config.save_pretrained(output)  # labels, thresholds and pretrained_cfg travel with the graph
    write_preprocessor_config(model_name_or_path, output)
    (output / EXPORT_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


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
