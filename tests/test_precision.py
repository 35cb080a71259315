"""--precision auto|fp32|bf16, one option for every script: bf16 where the CPU has it natively (AVX512-BF16 or
AMX-BF16 in /proc/cpuinfo's flags), and the precision used recorded beside every output."""

import argparse
import json

import pandas as pd
import pytest
from conftest import MINI_IMAGES, REPO
from inference_helpers import load_script

from cxr_vit.cli import add_precision_argument
from cxr_vit.cpu_features import cpu_fields, cpu_flags, native_cpu_bf16
from cxr_vit.inference import Classifier, resolve_precision
from cxr_vit.prediction import Predictor, load_model

IMAGES = [str(path) for path in sorted(MINI_IMAGES.glob("*.png"))[:3]]
ZEN4_FLAGS = "fpu sse2 avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni"


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    second = "processor\t: 1\nflags\t\t: fpu amx_bf16\n"
    cpuinfo.write_text(
        f"processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nflags\t\t: {ZEN4_FLAGS}\n\n{second}"
    )
    assert cpu_fields(cpuinfo)["cpu family"] == "25" and "avx512_bf16" in cpu_flags(cpuinfo)
    assert "amx_bf16" not in cpu_flags(cpuinfo)  # the first processor's block only
    assert native_cpu_bf16(cpu_flags(cpuinfo)) and native_cpu_bf16(frozenset({"amx_bf16"}))
    assert not native_cpu_bf16(frozenset({"avx2", "avx512f", "avx512_vnni"}))
    assert cpu_fields(tmp_path / "missing") == {}  # not Linux: nothing known, auto stays fp32


def test_auto_is_bf16_exactly_where_this_cpu_has_it_natively(model_dir):
    expected = "bf16" if native_cpu_bf16() else "fp32"
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    classifier = Classifier(load_model(model_dir), device="cpu")
    assert classifier.precision == expected
    assert classifier.runtime == {"bf16": "bf16 autocast, fp32 head", "fp32": "fp32"}[expected]
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", "cpu")


def test_the_precision_option_is_one_reusable_argument():
    parser = argparse.ArgumentParser()
    add_precision_argument(parser)
    assert parser.parse_args([]).precision == "auto" and parser.parse_args(["--precision", "bf16"]).precision == "bf16"
    with pytest.raises(SystemExit):
        parser.parse_args(["--precision", "int8"])


def test_predict_records_the_precision_and_refuses_to_mix_two_in_one_file(model_dir, tmp_path, capsys):
    predict = load_script(REPO / "scripts" / "predict.py").main
    output = tmp_path / "preds.csv"
    assert predict(["--model", str(model_dir), *IMAGES[:2], "--output", str(output), "--precision", "bf16"]) == 0
    assert "computing in bf16 autocast, fp32 head on cpu" in capsys.readouterr().err
    record = json.loads((tmp_path / "preds.csv.json").read_text())
    assert record["precision"] == "bf16 autocast, fp32 head" and record["backend"] == "torch"
    assert "set by the test" in record["thresholds"] and record["device"] == "cpu"
    args = ["--model", str(model_dir), *IMAGES, "--output", str(output), "--resume"]
    assert predict([*args, "--precision", "fp32"]) == 2
    assert "cannot resume, its rows were computed in 'bf16 autocast, fp32 head'" in capsys.readouterr().err
    assert predict([*args, "--precision", "bf16"]) == 0
    assert len(pd.read_csv(output)) == 3


def test_the_app_says_what_computed_each_result(model_dir):
    app = load_script(REPO / "app.py")
    predictor = Predictor.from_pretrained(model_dir, device="cpu", precision="fp32")
    _, positives, _ = app.analyse(predictor, IMAGES[0])
    assert "computed in fp32 on cpu" in positives
    assert predictor.record()["precision"] == "fp32"
