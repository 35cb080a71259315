"""Static int8 for the CPU through PyTorch 2 export quantization (PT2E), run by Inductor (``--backend inductor``).

The model's forward on the *normalised* pixel batch (its timm network: fp32 logits, as
:func:`cxr_vit.inference.forward_logits` in fp32) is captured by ``torch.export`` with a dynamic batch axis and
quantized by torchao's PT2E flow with the x86 Inductor quantizer: uint8 activations (asymmetric, per tensor, ranges
from a histogram observer) times int8 weights (symmetric, one scale per output channel) around every linear layer
and the patch embedding, calibrated on real X-rays (:func:`cxr_vit.onnx_export.calibration_from_dataset`: the
validation split through the model's own preprocessing). The converted program, int8 weights only, is saved with
``torch.export.save``; :class:`cxr_vit.inductor_model.InductorModel` compiles it where it runs, where Inductor
lowers it to oneDNN's int8 GEMMs (VNNI, AMX-INT8).

The check runs the saved program uncompiled (reference int8 arithmetic) and PyTorch on one seeded batch; the logit
difference is recorded as reached, not held to a tolerance: the measure of an int8 model is its AUC on real
images (``tests/test_learnability.py``, ``scripts/benchmark.py --inference --planted_model``).
"""

from __future__ import annotations

import importlib.util
import json
import os
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from .inductor_model import PROGRAM_FILE, load_program
from .inference import forward_logits
from .onnx_export import Calibration, source_record, verification_batch, write_model_configs
from .onnx_model import EXPORT_FILE
from .prediction import load_model

QUANTIZER_MODULE = "torchao"  # the deploy extra: PT2E quantization moved from torch.ao to torchao
MAX_BATCH = 4096


def quantize_program(model, calibration: Calibration) -> torch.export.ExportedProgram:
    """``model``'s logits on a normalised batch as a static int8 PT2E program, calibrated on ``calibration``."""
    if importlib.util.find_spec(QUANTIZER_MODULE) is None:
        raise ImportError('the inductor export needs torchao (PT2E quantization): pip install -e ".[deploy]"')
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    example = (verification_batch(model, batch_size=2, seed=1),)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)
    with torch.no_grad():
        captured = torch.export.export(model.timm_model.eval(), example, dynamic_shapes=dynamic)
        prepared = prepare_pt2e(captured.module(), quantizer)
        for batch in calibration.batches:
            prepared(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        converted = convert_pt2e(prepared)  # weights folded to int8 constants
        drop_unused_attributes(converted)
        return torch.export.export(converted, example, dynamic_shapes=dynamic)


def drop_unused_attributes(graph_module: torch.fx.GraphModule) -> None:
    """Remove the fp32 weights the converted graph no longer reads (else the file keeps both, 5x an int8 one)."""
    graph_module.graph.eliminate_dead_code()
    used = {node.target for node in graph_module.graph.nodes if node.op == "get_attr"}
    names = [name for name, _ in graph_module.named_parameters()] + [name for name, _ in graph_module.named_buffers()]
    for name in names:
        if name not in used:
            parent, _, leaf = name.rpartition(".")
            delattr(graph_module.get_submodule(parent), leaf)
    graph_module.recompile()


def compare_program(model, program: torch.export.ExportedProgram) -> dict[str, float]:
    """Max abs logit and probability differences of the program (uncompiled) vs PyTorch fp32 on a seeded batch."""
    inputs = verification_batch(model)
    with torch.no_grad():
        expected = forward_logits(model.eval(), inputs)
        logits = program.module()(inputs)
    probabilities = [torch.sigmoid(values.double()) for values in (logits, expected)]
    return {
        "batch_size": len(inputs),
        "max_abs_logit_diff": float((logits - expected).abs().max()),
        "max_abs_probability_diff": float((probabilities[0] - probabilities[1]).abs().max()),
        "note": "reached by the uncompiled program (reference int8 arithmetic), not a tolerance",
    }


def export_inductor(
    model_name_or_path: str | os.PathLike, output_dir: str | os.PathLike, calibration: Calibration
) -> dict:
    """Write ``model.pt2``, ``config.json``, ``preprocessor_config.json`` and ``export.json`` to ``output_dir``;
    returns the ``export.json`` record."""
    model = load_model(model_name_or_path)
    program = quantize_program(model, calibration)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, output / PROGRAM_FILE)
    saved = load_program(output / PROGRAM_FILE)  # check what was written, not what is in memory
    record = {
        **source_record(model, model_name_or_path),
        "quantize": "int8_static",
        "exporter": "torch.export + torchao PT2E (X86InductorQuantizer), run by torch.compile (inductor)",
        "int8_check": compare_program(model, saved),
        "calibration": {
            **calibration.source,
            "method": "HistogramObserver (activations, uint8 per tensor), PerChannelMinMaxObserver (weights, int8)",
        },
        "versions": {name: version(name) for name in ("torch", "timm", QUANTIZER_MODULE)},
    }
    write_model_configs(model, model_name_or_path, output)
    (output / EXPORT_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record
