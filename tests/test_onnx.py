"""The ONNX backend and predict.py's streaming CSV: export -> ONNX Runtime equals torch, the same positives and
report through predict.py / evaluate.py --backend onnx, no heatmaps there, and a killed predict.py resumed."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import MINI_IMAGES, REPO
from inference_helpers import TINY_ARCH, TINY_SIZE, load_script

from cxr_vit.constants import LABELS
from cxr_vit.evaluation import store_thresholds, threshold_config_entries
from cxr_vit.inference import Classifier
from cxr_vit.modeling import create_model, save_model
from cxr_vit.onnx_model import EXPORT_FILE, ONNX_FILE, OnnxModel
from cxr_vit.prediction import Prediction, PredictionsCSV, load_model, read_image

pytestmark = pytest.mark.no_hf_floor  # ONNX Runtime's side; the models load through paths other tests drive
IMAGES = sorted(MINI_IMAGES.glob("*.png"))[:48]


def gap_thresholds(probabilities: np.ndarray) -> dict[str, float]:
    """Per label, the middle of the widest gap between neighbouring probabilities in the middle half: about half
    the images positive, and no image near its threshold (so a 1e-6 difference cannot flip a positive)."""
    thresholds = {}
    for index, label in enumerate(LABELS):
        values = np.sort(probabilities[:, index])
        quarter = len(values) // 4
        middle = np.arange(quarter, len(values) - quarter - 1)
        widest = middle[np.argmax(values[middle + 1] - values[middle])]
        thresholds[label] = float((values[widest] + values[widest + 1]) / 2)
    return thresholds


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(torch model folder, its fp32 export folder) of a 2-block ViT-Tiny at 64 px whose stored thresholds split the
    bundled images about in half per label; exported through scripts/export_onnx.py."""
    root = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    model_dir = root / "model"
    save_model(create_model(TINY_ARCH, pretrained=False, image_size=TINY_SIZE, model_kwargs={"depth": 2}), model_dir)
    classifier = Classifier(load_model(model_dir), device="cpu", precision="fp32")  # what the fp32 export computes
    probabilities = classifier.predict_images([read_image(p) for p in IMAGES])
    store_thresholds(model_dir, threshold_config_entries(gap_thresholds(probabilities), {"rule": "set by the test"}))
    export = root / "onnx"
    export_script = load_script(REPO / "scripts" / "export_onnx.py").main
    assert export_script(["--model", str(model_dir), "--output_dir", str(export)]) == 0
    return model_dir, export


def test_export_writes_the_graph_and_configs_and_onnxruntime_equals_torch(exported):
    model_dir, export = exported
    assert {ONNX_FILE, "config.json", "preprocessor_config.json", EXPORT_FILE} <= {p.name for p in export.iterdir()}
    record = json.loads((export / EXPORT_FILE).read_text())
    assert record["fp32_check"]["passed"] and record["fp32_check"]["max_abs_logit_diff"] <= 1e-4
    assert record["quantize"] is None and "int8_check" not in record

    onnx_model = OnnxModel(export)
    assert onnx_model.config.cxr_vit_thresholds == load_model(model_dir).config.cxr_vit_thresholds  # travelled
    torch_side, onnx_side = Classifier(load_model(model_dir), device="cpu", precision="fp32"), Classifier(onnx_model)
    squares = torch_side.squares([read_image(path) for path in IMAGES[:7]])  # a batch size the export never saw
    np.testing.assert_allclose(onnx_side.logits(squares).numpy(), torch_side.logits(squares).numpy(), atol=1e-4)


def test_predict_backend_onnx_writes_the_same_positives_as_torch(exported, tmp_path, capsys):
    model_dir, export = exported
    predict = load_script(REPO / "scripts" / "predict.py").main
    frames = {}
    for backend, model in (("torch", model_dir), ("onnx", export)):
        output = tmp_path / f"{backend}.csv"
        args = ["--backend", backend, "--model", str(model), *map(str, IMAGES), "--output", str(output)]
        assert predict([*args, "--batch_size", "16", "--num_workers", "1", "--precision", "fp32"]) == 0
        assert "set by the test" in capsys.readouterr().err  # the thresholds stored before the export
        frames[backend] = pd.read_csv(output, keep_default_na=False).set_index("path")
    torch_frame, onnx_frame = frames["torch"], frames["onnx"].loc[frames["torch"].index]
    assert len(torch_frame) == len(IMAGES)
    assert (onnx_frame["positives"] == torch_frame["positives"]).all()
    positive_counts = torch_frame["positives"].str.split(";").explode().value_counts()
    assert set(positive_counts.index) == set(LABELS) and positive_counts.max() < len(IMAGES)  # not a trivial split
    np.testing.assert_allclose(onnx_frame[list(LABELS)], torch_frame[list(LABELS)], atol=2e-6)


def test_heatmaps_stay_on_torch(exported, tmp_path, capsys):
    _, export = exported
    predict = load_script(REPO / "scripts" / "predict.py").main
    args = ["--backend", "onnx", "--model", str(export), str(IMAGES[0]), "--output", str(tmp_path / "p.csv")]
    assert predict([*args, "--heatmaps", str(tmp_path / "maps")]) == 2
    assert "heatmaps need gradients" in capsys.readouterr().err
    evaluate = load_script(REPO / "scripts" / "evaluate.py").main
    with pytest.raises(SystemExit):
        evaluate(["--backend", "onnx", "--model", str(export), "--dataset_name", "x", "--output_dir", str(tmp_path),
                  "--bbox_csv", "boxes.csv"])  # fmt: skip
    assert "heatmaps need gradients" in capsys.readouterr().err
    assert (
        predict(["--backend", "onnx", "--model", str(tmp_path), str(IMAGES[0]), "--output", str(tmp_path / "p.csv")])
        == 2
    )
    assert "export_onnx.py" in capsys.readouterr().err  # a folder without model.onnx says how to make one
    inductor = ["--backend", "inductor", "--model", str(tmp_path), str(IMAGES[0]), "--output", str(tmp_path / "p.csv")]
    assert predict(inductor) == 2
    assert "export_inductor.py" in capsys.readouterr().err  # nor one without model.pt2


def test_evaluate_backend_onnx_reports_what_torch_reports(exported, prepared_mini, tmp_path):
    """evaluate.py --backend onnx: the report of the PyTorch model (evaluate_model), from ONNX Runtime."""
    from cxr_vit.data import load_chestxray14, select_splits
    from cxr_vit.evaluation import evaluate_model

    model_dir, export = exported
    evaluate = load_script(REPO / "scripts" / "evaluate.py").main
    args = ["--backend", "onnx", "--model", str(export), "--dataset_name", str(prepared_mini), "--n_bootstrap", "20"]
    assert evaluate([*args, "--output_dir", str(tmp_path)]) == 0
    onnx_report = json.loads((tmp_path / "report.json").read_text())
    test, validation = select_splits(load_chestxray14(str(prepared_mini)), ["test", "validation"], "mini")
    torch_report = evaluate_model(
        load_model(model_dir), test, validation, n_bootstrap=20, device="cpu", precision="fp32"
    ).report
    assert onnx_report["precision"] == "onnxruntime fp32" and torch_report["precision"] == "fp32"
    assert onnx_report["model_fingerprint"].startswith("onnx:")
    for label in LABELS:
        assert onnx_report["labels"][label]["auc"]["value"] == pytest.approx(
            torch_report["labels"][label]["auc"]["value"], abs=1e-4
        )
        assert onnx_report["thresholds"][label] == pytest.approx(torch_report["thresholds"][label], abs=1e-5)


def test_a_cut_off_last_row_is_dropped_on_resume(tmp_path):
    path = tmp_path / "p.csv"
    with PredictionsCSV(path) as csv:
        csv.write(Prediction("a.png", np.full(15, 0.25), ["Hernia"]))
        csv.write(Prediction("b.png", np.full(15, 0.5), []))
    path.write_bytes(path.read_bytes()[:-20])  # a kill in the middle of b's row
    resumed = PredictionsCSV(path, resume=True)
    resumed.close()
    assert resumed.done == {"a.png"} and pd.read_csv(path)["path"].tolist() == ["a.png"]
    with pytest.raises(ValueError, match="same --heatmaps"):
        PredictionsCSV(path, heatmaps=True, resume=True)


def test_killed_predict_resumes_without_losing_or_duplicating(exported, tmp_path):
    """SIGKILL predict.py (and its decoding workers) mid-run, rerun with --resume: every file exactly once, with the
    values of a clean run."""
    model_dir, _ = exported
    images = [str(path) for path in sorted(MINI_IMAGES.glob("*.png"))[:80]]
    output = tmp_path / "killed.csv"
    command = [sys.executable, str(REPO / "scripts" / "predict.py"), "--model", str(model_dir), *images,
               "--output", str(output), "--batch_size", "4", "--num_workers", "1", "--device", "cpu"]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        if output.is_file() and output.read_bytes().count(b"\n") > 9:  # the header and 8 rows
            break
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    rows_at_kill = len(pd.read_csv(output))
    assert 8 <= rows_at_kill < len(images), "the run was not killed mid-way"

    predict = load_script(REPO / "scripts" / "predict.py").main
    assert predict(["--model", str(model_dir), *images, "--output", str(output), "--resume", "--batch_size", "4"]) == 0
    clean = tmp_path / "clean.csv"
    assert predict(["--model", str(model_dir), *images, "--output", str(clean), "--batch_size", "4"]) == 0
    resumed = pd.read_csv(output, keep_default_na=False)
    assert sorted(resumed["path"]) == sorted(images) and resumed["path"].is_unique
    expected = pd.read_csv(clean, keep_default_na=False).set_index("path").loc[resumed["path"]]
    np.testing.assert_allclose(resumed[list(LABELS)], expected[list(LABELS)], atol=2e-6)
    assert resumed["positives"].tolist() == expected["positives"].tolist()


def test_app_serves_an_export_without_heatmaps(exported):
    from cxr_vit.prediction import Predictor

    _, export = exported
    app = load_script(REPO / "app.py")
    predictor = Predictor.from_pretrained(export, backend="onnx")
    probabilities, positives, heatmap = app.analyse(predictor, str(IMAGES[0]))
    assert set(probabilities) == set(LABELS) and heatmap is None
    assert "set by the test" in positives and "need gradients" in app.heatmap_label(predictor)


def test_static_int8_export_is_calibrated_on_validation_images_and_says_so(exported, prepared_mini, tmp_path, capsys):
    """scripts/export_onnx.py --quantize int8_static: a QDQ graph calibrated on the prepared set's validation images
    (per-channel int8 weights), run through the same inference path; without calibration images it stops."""
    import onnx

    model_dir, _ = exported
    export = load_script(REPO / "scripts" / "export_onnx.py").main
    output = tmp_path / "static"
    args = ["--model", str(model_dir), "--output_dir", str(output), "--quantize", "int8_static"]
    with pytest.raises(SystemExit):
        export(args)
    assert "needs --calibration_dataset" in capsys.readouterr().err
    assert export([*args, "--calibration_dataset", str(prepared_mini), "--calibration_images", "24"]) == 0
    record = json.loads((output / EXPORT_FILE).read_text())
    assert record["quantize"] == "int8_static" and record["int8_check"]["max_abs_logit_diff"] > 0
    calibration = record["calibration"]
    assert calibration["split"] == "validation" and calibration["images"] == 24 and calibration["method"] == "MinMax"
    graph = onnx.load(output / ONNX_FILE).graph
    operators = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "MatMul"} <= operators
    weight_scales = [init for init in graph.initializer if init.name.endswith("_scale") and len(init.dims) == 1]
    assert weight_scales, "no per-channel weight scales"  # one scale per output channel
    classifier = Classifier(OnnxModel(output))
    assert classifier.runtime == "onnxruntime int8 (static QDQ quantization)"
    squares = classifier.squares([read_image(path) for path in IMAGES[:4]])
    reference = Classifier(load_model(model_dir), device="cpu", precision="fp32").probabilities(squares)
    assert 0 < np.abs(classifier.probabilities(squares) - reference).max() < 0.05
