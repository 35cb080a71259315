"""CPU inference side by side in one run: PyTorch eager fp32 and bf16, ``torch.compile``, ONNX Runtime fp32 and
int8 (dynamic and static QDQ), Inductor's static int8 (fp32 or bf16 float ops), end to end; each against the CPU's
peak for its precision, with the machine's load.

``scripts/benchmark.py --inference`` runs :func:`run_inference_benchmark` and prints
:func:`format_inference_table`. The model (``--model_name`` at ``--image_size``, random init: speed does not depend
on the weights) is saved, exported with :func:`cxr_vit.onnx_export.export_onnx` (fp32, int8 dynamic, int8 static
calibrated on seeded noise: a static graph's speed does not depend on its ranges) and to a static int8 PT2E program
(:func:`cxr_vit.inductor_export.export_inductor`, calibrated the same way), and each backend runs the same
normalised batch with the same number of threads (``--inference_threads``, torch intra-op and ORT intra-op alike).
Backends are timed in interleaved rounds and each keeps its best round, so load from other processes cannot deflate
one side only.

Each figure is set against the peak of its precision (:mod:`.peak`: vector width, FMA units and a measured clock),
counting the forward's FLOPs per image (:func:`.flops.forward_flops_per_image` on the timed model); above 100% is
a measurement error and the table says so. The load during each best round (:mod:`.load`: CPUs busy with other
work) is recorded, and a cell timed on a loaded machine says "loaded" instead of giving the figure as one.

End to end is ``predict.py``'s loop (:func:`cxr_vit.prediction.predict_files` writing the CSV) over synthesized
1024 px NIH-like PNGs, decoded in ``--inference_workers`` processes. A per-op profile of each backend at the largest
batch says where the time goes. With ``--planted_model`` and ``--planted_dataset`` it also reports the macro AUC
change of bf16 and of the int8 exports (static ones calibrated on that set's validation split) on its test split.
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

from ..cpu_features import cpu_flags
from ..inductor_export import export_inductor
from ..inductor_model import InductorModel
from ..inference import Classifier, forward_logits
from ..modeling import create_model, save_model
from ..onnx_export import (
    LogitsForward,
    calibration_from_dataset,
    calibration_from_noise,
    export_onnx,
    verification_batch,
)
from ..onnx_model import INPUT_NAME, ONNX_FILE, OUTPUT_NAME, OnnxModel, create_session
from ..prediction import PredictionsCSV, Predictor, find_images, load_model, predict_files, read_image
from .cpu_pipeline import interleaved_measurements
from .flops import forward_flops_per_image
from .load import LOADED_CPUS, load_average
from .peak import cpu_peaks, measure_clock_hz, physical_cores
from .run import machine_info
from .synthetic import write_synthetic_nih

BACKENDS = {  # name: (what the table calls it, the precision whose peak it is measured against)
    "eager": ("PyTorch eager fp32", "fp32"),
    "eager_bf16": ("PyTorch eager bf16 autocast (fp32 head)", "bf16"),
    "compiled": ("PyTorch torch.compile fp32", "fp32"),
    "ort_fp32": ("ONNX Runtime fp32", "fp32"),
    "ort_int8": ("ONNX Runtime int8 (dynamic)", "int8"),
    "ort_int8_static": ("ONNX Runtime int8 (static QDQ)", "int8"),
    "inductor_int8": ("Inductor int8 (static PT2E), fp32 float ops", "int8"),
    "inductor_int8_bf16": ("Inductor int8 (static PT2E), bf16 float ops", "int8"),
}
INDUCTOR_ROUTES = {"inductor_int8": None, "inductor_int8_bf16": torch.bfloat16}  # name: dtype of the float ops
EXPORTS = {"ort_fp32": None, "ort_int8": "int8", "ort_int8_static": "int8_static"}
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni", "amx_int8")


@dataclass
class InferenceBenchmarkArguments:
    """Options of ``scripts/benchmark.py --inference`` (the model is ``--model_name`` at ``--image_size``)."""

    inference: bool = field(default=False, metadata={"help": "Run the CPU inference benchmark instead."})
    inference_batch_sizes: str = field(default="1,32", metadata={"help": "Batch sizes timed (comma-separated)."})
    inference_seconds: float = field(default=12.0, metadata={"help": "Timed seconds per backend and batch size."})
    inference_rounds: int = field(default=3, metadata={"help": "Interleaved rounds; each backend keeps its best."})
    inference_threads: int = field(default=0, metadata={"help": "Threads of both runtimes (0: every core)."})
    inference_compile: bool = field(default=True, metadata={"help": "Also time torch.compile."})
    inference_inductor: bool = field(
        default=True, metadata={"help": "Also export and time Inductor's static int8 (compiled once per precision)."}
    )
    inference_e2e_images: int = field(default=64, metadata={"help": "1024 px PNGs predicted end to end (0: skip)."})
    inference_workers: int = field(default=1, metadata={"help": "Decoding processes of the end-to-end runs."})
    inference_profile: bool = field(default=True, metadata={"help": "Per-op profiles at the largest batch."})
    inference_markdown: str | None = field(default=None, metadata={"help": "Also write the table to this file."})
    cpu_fma_per_cycle: int | None = field(
        default=None, metadata={"help": "512-bit FMAs a core issues a cycle, where the vendor/family rule is wrong."}
    )
    planted_model: str | None = field(default=None, metadata={"help": "A trained model: bf16's and int8's AUC change."})
    planted_dataset: str | None = field(
        default=None, metadata={"help": "Its prepared dataset: validation calibrates static int8, test gives the AUC."}
    )

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
    clock_start, clock_how = measure_clock_hz()
    flags = cpu_flags()
    results: dict[str, Any] = {
        "machine": {
            **machine_info(),
            "cpu_flags": [flag for flag in RELEVANT_FLAGS if flag in flags],
            "load_average_at_start": load_average(),
        },
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
        for name, quantize in EXPORTS.items():
            start = time.perf_counter()
            calibration = calibration_from_noise(model) if quantize == "int8_static" else None
            fp32_graph = work / "ort_fp32" / ONNX_FILE if quantize else None  # exported once, then quantized
            record = export_onnx(model_dir, work / name, quantize, calibration=calibration, fp32_graph=fp32_graph)
            exports[name] = {"seconds": time.perf_counter() - start, **record}
        inductor = None
        if args.inference_inductor:
            start = time.perf_counter()
            record = export_inductor(model_dir, work / "inductor", calibration_from_noise(model))
            exports["inductor"] = {"seconds": time.perf_counter() - start, **record}
            inductor = InductorModel(work / "inductor", threads)  # one compilation per precision, shared below
        results["exports"] = exports
        results["gflop_per_image"] = (
            forward_flops_per_image(lambda inputs: forward_logits(model, inputs), verification_batch(model, 1)) / 1e9
        )
        results["throughput"], results["load"], results["compile_seconds"] = measure_backends(
            model, inductor, work, args, threads
        )
        clock_end, _ = measure_clock_hz()
        clocks = [clock for clock in (clock_start, clock_end) if clock]
        results["clock"] = {"start_hz": clock_start, "end_hz": clock_end, "how": clock_how}
        cores = min(threads, physical_cores())
        results["peaks"] = cpu_peaks(cores, max(clocks) if clocks else None, args.cpu_fma_per_cycle, flags)
        results["peak_fraction"] = peak_fractions(results)
        if args.inference_profile:
            results["profile"] = profile_backends(model, inductor, work, max(args.batch_sizes), threads)
        if args.inference_e2e_images:
            results["end_to_end"] = measure_end_to_end(bench, args, model, inductor, work, threads)
        if args.planted_model:
            results["planted_auc"] = planted_auc_change(
                args.planted_model, args.planted_dataset, work, threads, args.inference_inductor
            )
        results["machine"]["load_average_at_end"] = load_average()
    return results


def inductor_routes(inductor: InductorModel | None) -> dict[str, torch.dtype | None]:
    """The Inductor routes timed: none without ``--inference_inductor``."""
    return INDUCTOR_ROUTES if inductor is not None else {}


def measure_backends(
    model, inductor: InductorModel | None, work: Path, args: InferenceBenchmarkArguments, threads: int
):
    """({batch size: {backend: images/s}}, {batch size: {backend: load during its best round}}, {what was
    compiled: its first-call seconds}: torch.compile's when timed, and each Inductor int8 route's)."""
    sessions = {name: create_session(work / name / ONNX_FILE, threads) for name in EXPORTS}
    compiled, compile_seconds = None, {}
    if args.inference_compile:
        compiled = torch.compile(LogitsForward(model).eval())
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(verification_batch(model, batch_size=2))
        compile_seconds["compiled"] = time.perf_counter() - start
    for name, dtype in inductor_routes(inductor).items():
        start = time.perf_counter()
        inductor.logits(verification_batch(model, batch_size=2), dtype)
        compile_seconds[name] = time.perf_counter() - start
    throughput, load = {}, {}
    for batch_size in args.batch_sizes:
        inputs = verification_batch(model, batch_size)
        steps = {
            "eager": lambda inputs=inputs: run_torch(lambda x: forward_logits(model, x), inputs),
            "eager_bf16": lambda inputs=inputs: run_torch(lambda x: forward_logits(model, x, torch.bfloat16), inputs),
        }
        if compiled is not None:
            steps["compiled"] = lambda inputs=inputs: run_torch(compiled, inputs)
        for name, session in sessions.items():
            feed = {INPUT_NAME: inputs.numpy()}
            steps[name] = lambda session=session, feed=feed: len(session.run([OUTPUT_NAME], feed)[0])
        for name, dtype in inductor_routes(inductor).items():
            steps[name] = lambda inputs=inputs, dtype=dtype: len(inductor.logits(inputs, dtype))
        measured = interleaved_measurements(steps, args.inference_seconds, args.inference_rounds)
        throughput[batch_size] = {name: rate for name, (rate, _) in measured.items()}
        load[batch_size] = {
            name: asdict(interval) | {"loaded": interval.loaded} for name, (_, interval) in measured.items()
        }
    return throughput, load, compile_seconds


def peak_fractions(results: dict[str, Any]) -> dict[int, dict[str, float | None]]:
    """Per batch size and backend: its FLOPs a second over its precision's peak (None when the peak is unknown)."""
    fractions = {}
    for size, rates in results["throughput"].items():
        fractions[size] = {}
        for name, rate in rates.items():
            peak = results["peaks"][BACKENDS[name][1]]["ops_per_s"]
            fractions[size][name] = rate * results["gflop_per_image"] * 1e9 / peak if peak else None
    return fractions


def run_torch(forward, inputs: torch.Tensor) -> int:
    with torch.inference_mode():
        forward(inputs)
    return len(inputs)


def profile_backends(
    model, inductor: InductorModel | None, work: Path, batch_size: int, threads: int, top: int = 8
) -> dict[str, Any]:
    """Share of the time per op type: ORT's profiler for the graphs, torch's for eager and Inductor's int8
    (``top`` kinds each)."""
    inputs = verification_batch(model, batch_size)
    profiles = {}
    for name in EXPORTS:
        session = create_session(work / name / ONNX_FILE, threads, profile_prefix=str(work / f"profile_{name}"))
        for _ in range(2):
            session.run([OUTPUT_NAME], {INPUT_NAME: inputs.numpy()})
        events = json.loads(Path(session.end_profiling()).read_text())
        per_op: dict[str, float] = defaultdict(float)
        for event in events:
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                per_op[event["args"]["op_name"]] += event["dur"]
        profiles[name] = top_shares(per_op, top)
    forwards = {"eager": lambda: forward_logits(model, inputs)}
    for name, dtype in inductor_routes(inductor).items():
        forwards[name] = lambda dtype=dtype: inductor.logits(inputs, dtype)
    for name, forward in forwards.items():
        forward()  # compiled (or cached) before the profile
        with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            forward()
        per_op = {event.key: event.self_cpu_time_total for event in prof.key_averages()}
        profiles[name] = top_shares(per_op, top)
    return {"batch_size": batch_size, "share_of_time": profiles}


def top_shares(times: dict[str, float], top: int) -> dict[str, float]:
    total = sum(times.values()) or 1.0
    ranked = sorted(times.items(), key=lambda item: -item[1])[:top]
    return {name: round(value / total, 4) for name, value in ranked}


def measure_end_to_end(
    bench, args: InferenceBenchmarkArguments, model, inductor: InductorModel | None, work: Path, threads: int
) -> dict[str, Any]:
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
        "eager_bf16": Predictor(model, device="cpu", precision="bf16"),
        **{name: Predictor(OnnxModel(work / name, threads)) for name in EXPORTS},
        **{
            name: Predictor(inductor, precision="bf16" if dtype else "fp32")
            for name, dtype in inductor_routes(inductor).items()
        },
    }
    for name, predictor in predictors.items():
        start = time.perf_counter()
        with PredictionsCSV(work / f"e2e_{name}.csv") as csv:
            for result in predict_files(predictor, paths, 32, num_workers=args.inference_workers, progress=False):
                csv.write(result)
        results[f"{name}_img_per_s"] = len(paths) / (time.perf_counter() - start)
    return results


def planted_auc_change(
    model_dir: str, dataset_name: str, work: Path, threads: int, with_inductor: bool = True
) -> dict[str, Any]:
    """Macro AUC (14 findings) on the test split: PyTorch fp32, bf16 autocast, the int8 exports (static ones
    calibrated on the validation split), and each one's change from fp32."""
    from ..data import load_chestxray14, select_splits
    from ..metrics import label_scores

    model = load_model(model_dir)
    export_onnx(model_dir, work / "planted_fp32")
    fp32_graph = work / "planted_fp32" / ONNX_FILE
    export_onnx(model_dir, work / "planted_int8", "int8", fp32_graph=fp32_graph)
    calibration = calibration_from_dataset(model, dataset_name, "validation")
    export_onnx(model_dir, work / "planted_int8_static", "int8_static", calibration=calibration, fp32_graph=fp32_graph)
    inductor = None
    if with_inductor:
        export_inductor(model_dir, work / "planted_inductor", calibration)
        inductor = InductorModel(work / "planted_inductor", threads)
    (test,) = select_splits(load_chestxray14(dataset_name), ["test"], dataset_name)
    routes = {
        "eager": Classifier(model, device="cpu", precision="fp32"),
        "eager_bf16": Classifier(model, device="cpu", precision="bf16"),
        "ort_int8": Classifier(OnnxModel(work / "planted_int8", threads)),
        "ort_int8_static": Classifier(OnnxModel(work / "planted_int8_static", threads)),
        **{
            name: Classifier(inductor, precision="bf16" if dtype else "fp32")
            for name, dtype in inductor_routes(inductor).items()
        },
    }
    macro = {}
    for name, classifier in routes.items():
        probabilities, targets = classifier.predict_dataset(test, progress=False)
        macro[name] = label_scores(probabilities, targets).macro()
    change = {name: value - macro["eager"] for name, value in macro.items() if name != "eager"}
    return {"macro_auc": macro, "change": change, "images": len(test), "calibration_images": calibration.images}


def format_inference_table(results: dict[str, Any]) -> str:
    """The Markdown of docs/speed.md: per backend and batch size, images/s and the share of its precision's peak,
    marked where the machine was loaded or the figure is above peak; then the peaks, the load, end to end, AUC."""
    throughput = {int(size): rates for size, rates in results["throughput"].items()}
    load = {int(size): rows for size, rows in results["load"].items()}
    fractions = {int(size): rows for size, rows in results["peak_fraction"].items()}
    sizes = sorted(throughput)
    largest = sizes[-1]
    header = " | ".join(f"batch {size}: " + ("ms, " if size == 1 else "") + "images/s, % of peak" for size in sizes)
    lines = [f"| backend | peak | {header} | x eager at batch {largest} |", "|---" * (len(sizes) + 3) + "|"]
    loaded_cells = 0
    for name, (label, precision) in BACKENDS.items():
        if name not in throughput[largest]:
            continue
        cells = []
        for size in sizes:
            rate, fraction, interval = throughput[size][name], fractions[size][name], load[size][name]
            cell = (f"{1000 * size / rate:.0f} ms, " if size == 1 else "") + f"{rate:.2f}"
            if fraction is not None:
                cell += f", {100 * fraction:.1f}%" + (" (above peak: a measurement error)" if fraction > 1 else "")
            if interval["loaded"]:
                loaded_cells += 1
                stolen = f", {interval['stolen_cpus']:.2f} stolen" if interval["stolen_cpus"] >= LOADED_CPUS else ""
                cell = f"loaded ({interval['other_cpus']:.2f} CPUs of other work{stolen}), not a figure: {cell}"
            cells.append(cell)
        ratio = throughput[largest][name] / throughput[largest]["eager"]
        lines.append(f"| {label} | {precision} | " + " | ".join(cells) + f" | {ratio:.2f}x |")
    lines += ["", *peak_and_load_lines(results, loaded_cells)]
    e2e = results.get("end_to_end")
    if e2e:
        lines.append("")
        lines.append(f"| end to end, predict.py's loop, {e2e['images']} PNGs at {e2e['image_size']} px, "
                     f"{e2e['workers']} decode worker(s), batch 32 | images/s |")  # fmt: skip
        lines.append("|---|---|")
        lines.append(f"| decode only, one core | {e2e['decode_img_per_s_one_core']:.1f} |")
        for name in BACKENDS:
            if f"{name}_img_per_s" in e2e:
                lines.append(f"| {BACKENDS[name][0]} | {e2e[f'{name}_img_per_s']:.2f} |")
    planted = results.get("planted_auc")
    if planted:
        macro, change = planted["macro_auc"], planted["change"]
        routes = ", ".join(f"{BACKENDS[name][0]} {macro[name]:.4f} ({change[name]:+.4f})" for name in change)
        lines += ["", f"Planted-signal model, test split ({planted['images']} images): macro AUC PyTorch fp32 "
                  f"{macro['eager']:.4f}; {routes}."]  # fmt: skip
    return "\n".join(lines)


def peak_and_load_lines(results: dict[str, Any], loaded_cells: int) -> list[str]:
    """The sentences under the table: each precision's peak with its basis, the FLOPs counted, the machine's load."""
    clock = results["clock"]
    measured = ", ".join(f"{hz / 1e9:.2f} GHz at the {when}" for when, hz in
                         (("start", clock["start_hz"]), ("end", clock["end_hz"])) if hz)  # fmt: skip
    lines = [f"Peaks ({results['threads']} threads; clock {measured or 'unknown'}, {clock['how']}; the higher used):"]
    for precision, peak in results["peaks"].items():
        value = (
            f"{peak['ops_per_s'] / 1e9:,.0f} G{'FLOP' if precision != 'int8' else 'OP'}/s"
            if peak["ops_per_s"]
            else "unknown"
        )
        lines.append(f"- {precision}: {value} = {peak['basis']}")
    lines.append(
        f"- work counted: {results['gflop_per_image']:.3g} GFLOP an image (the forward's matrix products and "
        "attention, FlopCounterMode on the timed model), the same count for every precision"
    )
    intervals = [row for rows in results["load"].values() for row in rows.values() if row["other_cpus"] is not None]
    machine = results["machine"]
    verdict = (
        f"**loaded**: {loaded_cells} cell(s) timed while other work (or the host) took at least {LOADED_CPUS} CPU; "
        "rerun on an idle machine"
        if loaded_cells
        else f"idle: other work and steal below {LOADED_CPUS} CPU in every best round"
    )
    lines.append(
        f"- load: {verdict} (other work up to {max((row['other_cpus'] for row in intervals), default=0):.2f} CPUs, "
        f"stolen by the host up to {max((row['stolen_cpus'] for row in intervals), default=0):.2f}; load average "
        f"{format_load(machine.get('load_average_at_start'))} at the start, "
        f"{format_load(machine.get('load_average_at_end'))} at the end)"
    )
    return lines


def format_load(values: list[float] | None) -> str:
    return "/".join(f"{value:.2f}" for value in values) if values else "unknown"
