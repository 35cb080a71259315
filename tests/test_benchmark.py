"""scripts/benchmark.py with tiny settings: it runs, prints the table and writes every JSON key."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image

from cxr_vit.benchmarks.arguments import NOT_MEASURED, BenchmarkArguments
from cxr_vit.benchmarks.cpu_pipeline import interleaved_rates
from cxr_vit.benchmarks.gpu import GPU_KEYS
from cxr_vit.benchmarks.synthetic import synthetic_xray

pytestmark = pytest.mark.no_hf_floor

TINY = [
    "--num_images", "24", "--synthetic_size", "128", "--prepare_image_size", "64", "--image_size", "32",
    "--model_name", "vit_tiny_patch16_224", "--cpu_seconds", "0.3", "--cpu_batch_size", "8",
    "--read_cache_mb", "4",
]  # fmt: skip


def test_benchmark_script_tiny(tmp_path):
    output = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(REPO / "scripts" / "benchmark.py"), *TINY, "--output_json", str(output)]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(output.read_text())
    for section, key in [
        ("cpu_pipeline", "notebook_img_per_s"),
        ("cpu_pipeline", "ours_img_per_s"),
        ("cpu_pipeline", "ours_read_only_img_per_s"),
        ("cpu_pipeline", "datasets_path_img_per_s"),
        ("prepare", "img_per_s"),
        ("cache", "img_per_s"),
    ]:
        assert results[section][key] > 0, (section, key)
    assert results["prepare"]["images"] == 24 and results["cache"]["images"] == 24
    assert results["memory"]["max_worker_private_growth_mb"] < results["memory"]["cache_mb"]
    gpu = results["gpu"]
    assert set(GPU_KEYS) <= set(gpu) and "device" in results
    if not torch.cuda.is_available():
        assert all(gpu[key] is None for key in GPU_KEYS) and gpu["device"] is None
        assert results["device"].startswith("cpu")
        assert result.stdout.count(NOT_MEASURED) == len(GPU_KEYS)
    assert "| CPU, notebook recipe (per core) |" in result.stdout and "| prepare (1 process) |" in result.stdout


def test_benchmark_arguments_are_checked():
    with pytest.raises(ValueError, match="at least 24"):
        BenchmarkArguments(num_images=5)
    with pytest.raises(ValueError, match="both --images_dir and --labels_csv"):
        BenchmarkArguments(images_dir="somewhere")


def test_synthetic_xray_is_nih_sized(tmp_path):
    image = synthetic_xray(0)
    assert image.shape == (1024, 1024) and image.dtype == np.uint8
    Image.fromarray(image).save(tmp_path / "x.png")
    assert 450_000 < (tmp_path / "x.png").stat().st_size < 650_000  # real NIH PNGs: ~400-700 KB
    assert np.array_equal(synthetic_xray(0)[:8], image[:8]) and not np.array_equal(synthetic_xray(1), image)


def test_interleaved_rates_keeps_the_best_round():
    """Step "a" does 1,000x more images a call in its second round only (a round ends when "b" runs): the rate
    reported is that round's, not the mean (a third of it) nor the slowest."""
    state = {"round": 0, "b_ran": True, "round_2_calls": []}

    def a() -> int:
        if state["b_ran"]:
            state["round"], state["b_ran"] = state["round"] + 1, False
        start = time.perf_counter()
        time.sleep(0.002)
        if state["round"] == 2:
            state["round_2_calls"].append(time.perf_counter() - start)
        return 10_000 if state["round"] == 2 else 10

    def b() -> int:
        state["b_ran"] = True
        return 1

    rates = interleaved_rates({"a": a, "b": b}, seconds=0.3, rounds=3)
    assert state["round"] == 3
    round_2 = 10_000 / max(state["round_2_calls"])  # a lower bound of that round's rate, its slowest call
    assert round_2 * 0.6 < rates["a"] <= 10_000 / min(state["round_2_calls"])


def test_gpu_measurement_code_runs_on_cpu(tmp_path):
    """The GPU section, run on the CPU with a tiny model: every step of it executes and reports images/s."""
    from cxr_vit.benchmarks.gpu import measure_gpu
    from cxr_vit.data.cache import write_cache
    from cxr_vit.data.transforms import EvalGeometry

    paths = []
    for index in range(16):  # one full notebook-recipe batch
        paths.append(tmp_path / f"{index:08d}_000.png")
        Image.fromarray(synthetic_xray(index, size=64)).save(paths[-1])
    labels = np.zeros((16, 15), np.float32)
    images = [Image.fromarray(synthetic_xray(index, size=35)) for index in range(16)]
    write_cache(tmp_path / "cache", lambda a, b: images[a:b], labels, EvalGeometry(32, 35, "bicubic"))
    args = BenchmarkArguments(
        model_name="vit_tiny_patch16_224",
        image_size=32,
        batch_size=8,
        gpu_steps=2,
        gpu_warmup_steps=1,
        num_workers=0,
        torch_compile=False,
    )
    results = measure_gpu(args, paths, labels, tmp_path / "cache", device="cpu")
    for key in ("notebook_end_to_end_img_per_s", "ours_model_only_img_per_s", "ours_plain_loop_img_per_s"):
        assert results[key] > 0, key
    assert results["status"] == "measured"


def test_train_script_measurement_runs_on_cpu(tmp_path, prepared_mini):
    """The end-to-end GPU row runs the real accelerate launch scripts/train.py; here on the CPU, tiny."""
    from cxr_vit.benchmarks.gpu import measure_train_script, release_gpu_memory

    args = BenchmarkArguments(
        model_name="vit_tiny_patch16_224", image_size=32, batch_size=8, gpu_steps=3, gpu_warmup_steps=2,
        torch_compile=False, train_script=str(REPO / "scripts" / "train.py"),
        accelerate_config=str(REPO / "accelerate_config.yaml"),
    )  # fmt: skip
    release_gpu_memory()  # what the benchmark calls between its GPU sections; a no-op without CUDA
    results = measure_train_script(args, prepared_mini, tmp_path, device="cpu")
    assert results["ours_end_to_end_img_per_s"] > 0 and results["peak_memory_gb"] is None
    assert results["train_script_num_workers"] == 0  # train.py's CPU default
    run = json.loads((tmp_path / "run" / "train_results.json").read_text())
    assert run["train_steady_images"] == 3 * 8  # the steps after the 2 warm-up ones


def test_tiled_train_split_keeps_the_prepared_features(tmp_path, prepared_mini):
    import datasets

    from cxr_vit.benchmarks.gpu import tile_train_split

    original = datasets.load_dataset(str(prepared_mini))
    tiled = datasets.load_dataset(str(tile_train_split(prepared_mini, tmp_path / "tiled", 2000)))
    assert len(tiled["train"]) == 3 * len(original["train"]) and tiled["train"].features == original["train"].features
    assert len(tiled["validation"]) == len(original["validation"])


def test_training_flops_grow_faster_than_the_pixels():
    """Counted, not timed: 4x the pixels at 448 px is 4x the tokens, and attention grows with their square."""
    from cxr_vit.benchmarks.flops import measure_train_flops

    flops = measure_train_flops("vit_tiny_patch16_224", [224, 448])
    assert flops["224"]["relative"] == 1.0 and 4.0 < flops["448"]["relative"] < 8.0
    assert 3.0 < flops["224"]["gflop"] < 10.0  # ViT-Ti/16: ~1.1 GMAC forward, x2 FLOP/MAC, x3 with backward


def test_inference_benchmark_tiny(tmp_path):
    """scripts/benchmark.py --inference's measurements on a tiny ViT: every backend, each against its precision's
    peak with the load of its best round, and the end-to-end rows. Inductor's int8 is left out: compiling it twice
    from a cold cache costs about two minutes of CI (test_learnability.py runs and profiles that backend)."""
    from cxr_vit.benchmarks.inference import (
        BACKENDS,
        InferenceBenchmarkArguments,
        format_inference_table,
        run_inference_benchmark,
    )

    names = str(REPO / "data" / "nih_mini" / "sample_labels.csv")
    bench = BenchmarkArguments(model_name="vit_tiny_patch16_224", image_size=32, synthetic_size=128, names_csv=names,
                               work_dir=str(tmp_path))  # fmt: skip
    args = InferenceBenchmarkArguments(inference=True, inference_batch_sizes="1,4", inference_seconds=0.2,
                                       inference_rounds=1, inference_compile=False, inference_e2e_images=4,
                                       inference_inductor=False)  # fmt: skip
    results = run_inference_benchmark(bench, args)
    backends = {"eager", "eager_bf16", "ort_fp32", "ort_int8", "ort_int8_static"}
    assert set(results["throughput"]) == {1, 4} and set(results["throughput"][4]) == backends
    assert all(rate > 0 for rates in results["throughput"].values() for rate in rates.values())
    assert results["exports"]["ort_fp32"]["fp32_check"]["max_abs_logit_diff"] <= 1e-4
    assert results["exports"]["ort_int8_static"]["calibration"]["dataset"].startswith("seeded normal noise")
    assert "inductor" not in results["exports"] and results["compile_seconds"] == {}
    assert set(results["profile"]["share_of_time"]) == backends - {"eager_bf16"}
    assert results["end_to_end"]["images"] == 4 and results["end_to_end"]["ort_int8_static_img_per_s"] > 0
    # ViT-Ti/16 at 32 px: 4 patches + the class token, 12 blocks of 0.44 M multiply-adds a token: ~0.053 GFLOP
    assert 0.05 < results["gflop_per_image"] < 0.06
    assert {"fp32", "bf16", "int8"} == set(results["peaks"])
    for size in (1, 4):
        for name in backends:
            fraction = results["peak_fraction"][size][name]
            assert fraction is None or 0 < fraction < 1, (size, name, fraction)  # a tiny model is far from peak
            assert results["load"][size][name]["own_cpus"] > 0 and results["load"][size][name]["wall_s"] > 0
    table = format_inference_table(json.loads(json.dumps(results)))  # as read back from the JSON
    assert "| ONNX Runtime int8 (static QDQ) | int8 |" in table and "decode only, one core" in table
    assert "- fp32: " in table and "- load: " in table
    assert all(label in table for label, _ in BACKENDS.values() if "compile" not in label and "Inductor" not in label)


def test_a_loaded_or_above_peak_cell_is_not_given_as_the_figure():
    """The table's rules: a cell timed while other work kept >= 0.1 CPU busy says "loaded", and one above its
    precision's peak says it is a measurement error."""
    from cxr_vit.benchmarks.inference import format_inference_table

    row = {"wall_s": 1.0, "own_cpus": 2.0, "stolen_cpus": 0.0}
    results = {
        "throughput": {"32": {"eager": 5.0, "ort_int8": 40.0}},
        "load": {
            "32": {
                "eager": {**row, "other_cpus": 0.85, "loaded": True},
                "ort_int8": {**row, "other_cpus": 0.01, "loaded": False},
            }
        },  # fmt: skip
        "peak_fraction": {"32": {"eager": 0.7, "ort_int8": 1.5}},
        "clock": {"start_hz": 3.7e9, "end_hz": None, "how": "measured"},
        "peaks": {"fp32": {"ops_per_s": 2.4e11, "basis": "b"}, "int8": {"ops_per_s": 9.5e11, "basis": "b"}},
        "threads": 2,
        "gflop_per_image": 35.1,
        "machine": {"load_average_at_start": [0.1, 0.1, 0.1], "load_average_at_end": [0.2, 0.1, 0.1]},
    }
    table = format_inference_table(results)
    assert "| PyTorch eager fp32 | fp32 | loaded (0.85 CPUs of other work), not a figure: 5.00, 70.0% |" in table
    assert "40.00, 150.0% (above peak: a measurement error)" in table
    assert "**loaded**: 1 cell(s)" in table


def test_the_peak_follows_the_cpu_and_the_clock_is_measured():
    """Zen 4 (this kind of CI machine): 16 fp32 FMA a cycle a core, bf16 2x, VNNI int8 4x; the clock is measured
    (a dependent-add chain), not read from /proc/cpuinfo's nominal MHz."""
    import platform

    from cxr_vit.benchmarks.peak import cpu_peaks, measure_clock_hz

    zen4 = frozenset({"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni"})
    peaks = cpu_peaks(2, 3.7e9, fma_override=1, flags=zen4)
    assert peaks["fp32"]["ops_per_s"] == pytest.approx(2 * 16 * 2 * 3.7e9)  # ~237 GFLOP/s
    assert peaks["bf16"]["ops_per_s"] == 2 * peaks["fp32"]["ops_per_s"]
    assert peaks["int8"]["ops_per_s"] == 4 * peaks["fp32"]["ops_per_s"] and "VNNI" in peaks["int8"]["basis"]
    plain = cpu_peaks(2, 3.0e9, fma_override=2, flags=frozenset({"avx2", "fma"}))
    assert plain["fp32"]["macs_per_cycle_per_core"] == 16 and plain["bf16"] == {
        **plain["fp32"],
        "basis": plain["bf16"]["basis"],
    }
    if platform.machine() == "x86_64":
        hz, how = measure_clock_hz(runs=20)
        assert 0.5e9 < hz < 7e9 and how.startswith("measured")
