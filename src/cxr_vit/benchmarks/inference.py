"""CPU inference side by side in one run: PyTorch eager, ``torch.compile``, ONNX Runtime fp32 and int8, end to end.

``scripts/benchmark.py --inference`` runs :func:`run_inference_benchmark` and prints
:func:`format_inference_table`. The model (``--model_name`` at ``--image_size``, random init: speed does not depend
on the weights) is saved, exported with :func:`cxr_vit.onnx_export.export_onnx` (fp32 and int8), and each backend
runs the same normalised batch with the same number of threads (``--inference_threads``, torch intra-op and ORT
intra-op alike). Backends are timed in interleaved rounds and each keeps its best round, so load from other
processes cannot deflate one side only. End to end is ``predict.py``'s loop (:func:`cxr_vit.prediction.predict_files`
writing the CSV) over synthesized 1024 px NIH-like PNGs, decoded in ``--inference_workers`` processes. A per-op
profile of each backend at the largest batch says where the time goes. With ``--planted_model`` and
``--planted_dataset`` it also reports the int8 export's macro AUC change on that model's test split.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..inference import Classifier, forward_logits
from ..modeling import create_model, save_model
from ..onnx_export import LogitsForward, export_onnx, verification_batch
from ..onnx_model import INPUT_NAME, ONNX_FILE, OUTPUT_NAME, OnnxModel, create_session
from ..prediction import PredictionsCSV, Predictor, find_images, load_model, predict_files, read_image
from .cpu_pipeline import interleaved_rates
from .run import machine_info
from .synthetic import write_synthetic_nih

BACKEND_NAMES = {
    "eager": "PyTorch eager fp32",
    "compiled": "PyTorch torch.compile fp32",
    "ort_fp32": "ONNX Runtime fp32",
    "ort_int8": "ONNX Runtime int8 (dynamic)",
}


@dataclass
class InferenceBenchmarkArguments:
    """Options of ``scripts/benchmark.py --inference`` (the model is ``--model_name`` at ``--image_size``)."""

    inference: bool = field(default=False, metadata={"help": "Run the CPU inference benchmark instead."})
    inference_batch_sizes: str = field(default="1,32", metadata={"help": "Batch sizes timed (comma-separated)."})
    inference_seconds: float = field(default=12.0, metadata={"help": "Timed seconds per backend and batch size."})
    inference_rounds: int = field(default=3, metadata={"help": "Interleaved rounds; each backend keeps its best."})
    inference_threads: int = field(default=0, metadata={"help": "Threads of both runtimes (0: every core)."})
    inference_compile: bool = field(default=True, metadata={"help": "Also time torch.compile."})
    inference_e2e_images: int = field(default=64, metadata={"help": "1024 px PNGs predicted end to end (0: skip)."})
    inference_workers: int = field(default=1, metadata={"help": "Decoding processes of the end-to-end runs."})
    inference_profile: bool = field(default=True, metadata={"help": "Per-op profiles at the largest batch."})
    planted_model: str | None = field(default=None, metadata={"help": "A trained model: its int8 AUC change."})
    planted_dataset: str | None = field(default=None, metadata={"help": "Its prepared dataset (test split used)."})

    def __post_init__(self):
        if (self.planted_model is None) != (self.planted_dataset is None):
            raise ValueError("give both --planted_model and --planted_dataset, or neither")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"--inference_batch_sizes must list positive sizes, got {self.inference_batch_sizes!r}")

    @property
    def batch_sizes(self) -> list[int]:
        return [int(size) for size in self.inference_batch_sizes.split(",") if size.strip()]


def run_inference_benchmark(bench, args: InferenceBenchmarkArguments) -> dict[str, Any]:
    """Everything measured in one process; ``bench`` is the :class:`BenchmarkArguments` (model, sizes, work dir)."""
    threads = args.inference_threads or os.cpu_count()
    torch.set_num_threads(threads)
    results: dict[str, Any] = {
        "machine": {**machine_info(), "load_average_at_start": os.getloadavg()},
        "settings": {**asdict(args), "model_name": bench.model_name, "image_size": bench.image_size},
        "threads": threads,
    }
    with tempfile.TemporaryDirectory(prefix="cxr_vit_infer_") as temporary:
        work = Path(bench.work_dir or temporary)
        model_dir = work / "model"
        torch.manual_seed(0)  # the same random weights each run (speed does not depend on them, the int8 check does)
        save_model(create_model(bench.model_name, pretrained=False, image_size=bench.image_size), model_dir)
        model = load_model(model_dir)
        exports = {}
        for name, quantize in (("ort_fp32", None), ("ort_int8", "int8")):
            start = time.perf_counter()
            record = export_onnx(model_dir, work / name, quantize=quantize)
            exports[name] = {"seconds": time.perf_counter() - start, **record}
        results["exports"] = exports
        results["throughput"], results["compile_seconds"] = measure_backends(model, work, args, threads)
        if args.inference_profile:
            results["profile"] = profile_backends(model, work, max(args.batch_sizes), threads)
        if args.inference_e2e_images:
            results["end_to_end"] = measure_end_to_end(bench, args, model, work, threads)
        if args.planted_model:
            results["planted_int8"] = planted_auc_change(args.planted_model, args.planted_dataset, work, threads)
        results["machine"]["load_average_at_end"] = os.getloadavg()
    return results


def measure_backends(model, work: Path, args: InferenceBenchmarkArguments, threads: int):
    """({batch size: {backend: images/s}}, torch.compile's first-call seconds or None)."""
    sessions = {name: create_session(work / name / ONNX_FILE, threads) for name in ("ort_fp32", "ort_int8")}
    compiled, compile_seconds = None, None
    if args.inference_compile:
        compiled = torch.compile(LogitsForward(model).eval())
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(verification_batch(model, batch_size=2))
        compile_seconds = time.perf_counter() - start
    throughput = {}
    for batch_size in args.batch_sizes:
        inputs = verification_batch(model, batch_size)
        steps = {"eager": lambda inputs=inputs: run_torch(lambda x: forward_logits(model, x), inputs)}
        if compiled is not None:
            steps["compiled"] = lambda inputs=inputs: run_torch(compiled, inputs)
        for name, session in sessions.items():
            feed = {INPUT_NAME: inputs.numpy()}
            steps[name] = lambda session=session, feed=feed: len(session.run([OUTPUT_NAME], feed)[0])
        throughput[batch_size] = interleaved_rates(steps, args.inference_seconds, args.inference_rounds)
    return throughput, compile_seconds


def run_torch(forward, inputs: torch.Tensor) -> int:
    with torch.inference_mode():
        forward(inputs)
    return len(inputs)


def profile_backends(model, work: Path, batch_size: int, threads: int, top: int = 8) -> dict[str, Any]:
    """Share of the time per op type: ORT's profiler for the graphs, torch's for eager (``top`` kinds each)."""
    inputs = verification_batch(model, batch_size)
    profiles = {}
    for name in ("ort_fp32", "ort_int8"):
        session = create_session(work / name / ONNX_FILE, threads, profile_prefix=str(work / f"profile_{name}"))
        for _ in range(2):
            session.run([OUTPUT_NAME], {INPUT_NAME: inputs.numpy()})
        events = json.loads(Path(session.end_profiling()).read_text())
        per_op: dict[str, float] = defaultdict(float)
        for event in events:
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                per_op[event["args"]["op_name"]] += event["dur"]
        profiles[name] = top_shares(per_op, top)
    with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        forward_logits(model, inputs)
    per_op = {event.key: event.self_cpu_time_total for event in prof.key_averages()}
    profiles["eager"] = top_shares(per_op, top)
    return {"batch_size": batch_size, "share_of_time": profiles}


def top_shares(times: dict[str, float], top: int) -> dict[str, float]:
    total = sum(times.values()) or 1.0
    ranked = sorted(times.items(), key=lambda item: -item[1])[:top]
    return {name: round(value / total, 4) for name, value in ranked}


def measure_end_to_end(bench, args: InferenceBenchmarkArguments, model, work: Path, threads: int) -> dict[str, Any]:
    """predict.py's loop over synthesized 1024 px PNGs for each backend, and the decode rate of one core."""
    images_dir, _ = write_synthetic_nih(work / "e2e", bench.names_csv, args.inference_e2e_images, bench.synthetic_size)
    paths = find_images([images_dir])
    start = time.perf_counter()
    for path in paths:
        read_image(path)
    results: dict[str, Any] = {
        "images": len(paths),
        "image_size": bench.synthetic_size,
        "workers": args.inference_workers,
        "decode_img_per_s_one_core": len(paths) / (time.perf_counter() - start),
    }
    predictors = {
        "eager": Predictor(model, device="cpu", precision="fp32"),
        "ort_fp32": Predictor(OnnxModel(work / "ort_fp32", threads)),
        "ort_int8": Predictor(OnnxModel(work / "ort_int8", threads)),
    }
    for name, predictor in predictors.items():
        start = time.perf_counter()
        with PredictionsCSV(work / f"e2e_{name}.csv") as csv:
            for result in predict_files(predictor, paths, 32, num_workers=args.inference_workers, progress=False):
                csv.write(result)
        results[f"{name}_img_per_s"] = len(paths) / (time.perf_counter() - start)
    return results


def planted_auc_change(model_dir: str, dataset_name: str, work: Path, threads: int) -> dict[str, Any]:
    """Macro AUC (14 findings) on the test split of PyTorch fp32 vs the model's int8 export, and the change."""
    from ..data import load_chestxray14, select_splits
    from ..metrics import label_scores

    export_onnx(model_dir, work / "planted_int8", quantize="int8")
    (test,) = select_splits(load_chestxray14(dataset_name), ["test"], dataset_name)
    scores = {}
    for name, model in (("torch_fp32", load_model(model_dir)), ("ort_int8", OnnxModel(work / "planted_int8", threads))):
        probabilities, targets = Classifier(model, device="cpu", precision="fp32").predict_dataset(test, progress=False)
        scores[name] = label_scores(probabilities, targets).macro()
    return {**scores, "change": scores["ort_int8"] - scores["torch_fp32"], "images": len(test)}


def format_inference_table(results: dict[str, Any]) -> str:
    """The Markdown table of docs/speed.md: images/s per backend and batch size, end to end, int8 AUC."""
    throughput = {int(size): rates for size, rates in results["throughput"].items()}
    sizes = sorted(throughput)
    largest = sizes[-1]
    header = "| backend | " + " | ".join(
        f"batch {size}: ms / batch, images/s" if size == 1 else f"batch {size}: images/s" for size in sizes
    )
    lines = [header + f" | x eager at batch {largest} |", "|---" * (len(sizes) + 2) + "|"]
    for name, label in BACKEND_NAMES.items():
        if name not in throughput[largest]:
            continue
        cells = []
        for size in sizes:
            rate = throughput[size][name]
            cells.append(f"{1000 * size / rate:.0f} ms, {rate:.2f}" if size == 1 else f"{rate:.2f}")
        ratio = throughput[largest][name] / throughput[largest]["eager"]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {ratio:.2f}x |")
    e2e = results.get("end_to_end")
    if e2e:
        lines.append("")
        lines.append(f"| end to end, predict.py's loop, {e2e['images']} PNGs at {e2e['image_size']} px, "
                     f"{e2e['workers']} decode worker(s), batch 32 | images/s |")  # fmt: skip
        lines.append("|---|---|")
        lines.append(f"| decode only, one core | {e2e['decode_img_per_s_one_core']:.1f} |")
        for name in ("eager", "ort_fp32", "ort_int8"):
            lines.append(f"| {BACKEND_NAMES[name]} | {e2e[f'{name}_img_per_s']:.2f} |")
    planted = results.get("planted_int8")
    if planted:
        lines.append("")
        lines.append(
            f"Planted-signal model, test split ({planted['images']} images): macro AUC {planted['torch_fp32']:.4f} "
            f"(PyTorch fp32) vs {planted['ort_int8']:.4f} (ONNX Runtime int8), change {planted['change']:+.4f}."
        )
    return "\n".join(lines)
