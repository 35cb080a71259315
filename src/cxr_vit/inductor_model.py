"""The inductor backend: a static int8 program (``scripts/export_inductor.py``) compiled by ``torch.compile``.

An export folder holds ``model.pt2``: the model's forward on the *normalised* pixel batch, quantized with PyTorch 2
export quantization (PT2E, the x86 Inductor quantizer) and saved by ``torch.export.save``, beside the model's
``config.json`` and ``preprocessor_config.json``. Inductor, with weight freezing, lowers its quantize-dequantize
pairs around each linear layer to oneDNN's int8 GEMMs (VNNI / AMX-INT8 where the CPU has them). Where the CPU
computes bf16 natively (:func:`cxr_vit.inference.native_bf16`), ``--precision auto`` also runs what stays in
floating point (LayerNorm, GELU, softmax, attention) in bf16: int8-mixed-bf16; ``--precision fp32`` keeps it fp32.

The program is portable (plain ATen and quantize/dequantize ops); what runs is compiled on the machine that runs
it, at the first batch (under half a minute for ViT-B/16 on two cores; Inductor's cache makes later starts quick).
The lowering to int8 GEMMs is torchao's: its Inductor passes are registered when its x86 quantizer module is
imported, and without them Inductor would compile the program as dequantize + fp32 GEMMs, a silent fp32 model.
So this backend needs torchao (the ``deploy`` extra) as the export does. Heatmaps need gradients, which a frozen
int8 program does not have: they stay on torch.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .data.provenance import file_sha256
from .onnx_model import read_export_folder

PROGRAM_FILE = "model.pt2"


class InductorModelError(ValueError):
    """A folder that is not a cxr-vit inductor export; the message says what to do."""


def register_int8_lowering() -> None:
    """Register torchao's Inductor passes that fuse quantize-dequantize-linear into oneDNN's int8 GEMMs."""
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401  registers on import
    except ImportError as err:
        raise InductorModelError(
            "the inductor backend needs torchao, whose Inductor passes lower the int8 program: "
            'pip install -e ".[deploy]"'
        ) from err


def load_program(path: str | os.PathLike) -> torch.export.ExportedProgram:
    """A saved int8 program; its quantize/dequantize ops (``quantized_decomposed``) are registered first."""
    import torch.ao.quantization.fx._decomposed  # noqa: F401

    return torch.export.load(path)


class InductorModel:
    """An export folder's ``model.pt2``, compiled by Inductor on the CPU at its first batch, with its ``config``.

    Args:
        folder: written by ``scripts/export_inductor.py`` (:func:`cxr_vit.inductor_export.export_inductor`).
        num_threads: torch intra-op threads while it runs (default: as set).
    """

    backend = "inductor"

    def __init__(self, folder: str | os.PathLike, num_threads: int | None = None):
        register_int8_lowering()
        self.folder = Path(folder)
        how_to_make = (
            "the inductor backend takes a folder written by scripts/export_inductor.py (python "
            f"scripts/export_inductor.py --model MODEL --calibration_dataset DATASET --output_dir {self.folder})"
        )
        path, self.config, self.export_record = read_export_folder(
            self.folder, PROGRAM_FILE, how_to_make, InductorModelError
        )
        self.num_threads = num_threads
        program = load_program(path).module()
        # dynamic=True: one compilation serves every batch size (a short last batch does not compile again)
        self.compiled = torch.compile(program, dynamic=True)
        self.fingerprint = "pt2:" + file_sha256(path)  # never equal to a torch weights fingerprint

    @property
    def description(self) -> str:
        """What runs the model, for reports (the Classifier adds the precision of the rest)."""
        return "torch inductor int8 (static PT2E quantization)"

    def logits(self, pixel_values: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """float32 logits ``(B, 15)`` of a normalised CPU batch; ``dtype`` bf16: the float ops in bf16."""
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        autocast = torch.autocast("cpu", dtype=dtype, enabled=dtype is not None)
        # freezing folds the int8 weights into prepacked oneDNN constants; it is read when the graph compiles.
        # Always inference mode, whatever the caller's grad mode: a guard on it would compile the graph again.
        with torch.inference_mode(), autocast, torch._inductor.config.patch(freezing=True):
            return self.compiled(pixel_values.detach().cpu()).float()
