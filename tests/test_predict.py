"""Prediction on files and folders (every PNG flavour, broken files), stored thresholds, Grad-CAM heatmaps."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import MINI_IMAGES, REPO, TEST_DATA
from inference_helpers import TINY_SIZE, load_script, save_tiny_model, write_mixed_folder
from PIL import Image

from cxr_vit.constants import LABELS
from cxr_vit.data.transforms import model_view
from cxr_vit.evaluation.heatmaps import grad_cam, heatmap_panel, overlay
from cxr_vit.prediction import (
    ModelLoadError,
    Predictor,
    UnreadableImageError,
    find_images,
    load_thresholds,
    read_image,
)

XRAY = TEST_DATA / "00000011_000.png"


@pytest.fixture
def mixed(tmp_path):
    return write_mixed_folder(XRAY, tmp_path / "xrays")


def test_find_images_is_recursive_and_names_missing_paths(mixed, tmp_path):
    found = find_images([mixed["gray"].parent])
    assert sorted(found) == sorted(mixed.values())  # .JPG too; notes.txt is not an image file
    assert find_images([mixed["gray"], mixed["gray"].parent / "notes.txt"])[1].name == "notes.txt"  # named: tried
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        find_images([tmp_path / "no_such_folder"])


def test_every_flavour_decodes_to_the_same_grayscale(mixed):
    reference = np.asarray(read_image(mixed["gray"]), dtype=int)
    for flavour in ("rgba", "16bit", "rgb"):
        image = read_image(mixed[flavour])
        assert image.mode == "L" and image.size == (256, 256)
        tolerance = 3 if flavour == "rgb" else 0  # JPEG is lossy
        assert np.abs(np.asarray(image, dtype=int) - reference).mean() <= tolerance
    with pytest.raises(UnreadableImageError, match="corrupt.png"):
        read_image(mixed["corrupt"])


def test_stored_thresholds_decide_the_positives(predictor):
    assert "set by the test" in predictor.thresholds_source
    (result,) = predictor.predict([read_image(XRAY)])
    assert result.probabilities.shape == (15,) and result.positives == ["Effusion"]


def test_without_stored_thresholds_prediction_uses_half_and_says_so(tmp_path):
    predictor = Predictor.from_pretrained(save_tiny_model(tmp_path / "plain"), device="cpu")
    assert "0.5" in predictor.thresholds_source and "no thresholds stored" in predictor.thresholds_source
    (result,) = predictor.predict([read_image(XRAY)])
    assert result.positives == [label for label, p in zip(LABELS, result.probabilities, strict=True) if p >= 0.5]


@pytest.mark.parametrize("stored", [{"Effusion": 0.3}, dict.fromkeys(LABELS, "high"), [0.5] * 15])
def test_malformed_stored_thresholds_are_named(model_dir, stored):
    config = Predictor.from_pretrained(model_dir, device="cpu").model.config
    config.cxr_vit_thresholds = stored
    with pytest.raises(ModelLoadError, match="config.json cxr_vit_thresholds must map each of the 15 labels"):
        load_thresholds(config)


def test_grad_cam_shape_range_and_class_specificity(predictor):
    images = [read_image(XRAY), read_image(TEST_DATA / "00000017_000.png")]
    pixels = predictor.classifier.inputs(predictor.classifier.squares(images))
    maps = grad_cam(predictor.model, pixels, torch.tensor([[0, 4, 9], [1, 4, 13]]))
    assert maps.shape == (2, 3, TINY_SIZE, TINY_SIZE)
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert torch.allclose(maps.amax(dim=(2, 3)), torch.ones(2, 3))  # each map is scaled to reach 1
    assert not torch.allclose(maps[0, 0], maps[0, 1])  # per finding, unlike attention rollout
    assert all(parameter.grad is None for parameter in predictor.model.parameters())  # no side effects


def test_heatmap_panel_and_overlay(predictor):
    image = read_image(XRAY)
    view = model_view(predictor.classifier.squares([image])[0].numpy(), predictor.classifier.geometry)
    assert view.size == (TINY_SIZE, TINY_SIZE)  # what the model saw: resized and center-cropped
    blended = overlay(view, np.linspace(0, 1, 16).reshape(4, 4))
    assert blended.mode == "RGB" and blended.size == view.size
    (result,) = predictor.predict([image], heatmap_top_k=3)
    assert result.heatmap.size == (4 * 256, 256 + 32)  # the input view, then 3 overlays with captions


def run_predict(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "scripts/predict.py", *map(str, args)]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_predict_script_on_a_mixed_folder(model_dir, mixed, tmp_path):
    output, heatmaps = tmp_path / "preds.csv", tmp_path / "heatmaps"
    folder = mixed["gray"].parent
    result = run_predict("--model", model_dir, folder, "--output", output, "--heatmaps", heatmaps, "--batch_size", 2)
    assert result.returncode == 1, result.stderr  # 1: a file was skipped
    assert "skipped 1 unreadable file(s)" in result.stderr and str(mixed["corrupt"]) in result.stderr
    assert "Traceback" not in result.stderr

    frame = pd.read_csv(output, keep_default_na=False)
    assert list(frame.columns) == ["path", *LABELS, "positives", "heatmap"]
    expected = {str(mixed[name]) for name in ("gray", "rgb", "rgba", "16bit")}
    assert set(frame["path"]) == expected
    assert (frame["positives"] == "Effusion").all()
    rows = frame.set_index("path")[list(LABELS)]
    for name in ("rgba", "16bit"):  # the same pixels in another container: the same probabilities
        np.testing.assert_allclose(rows.loc[str(mixed[name])], rows.loc[str(mixed["gray"])], atol=1e-6)
    for path in frame["heatmap"]:
        assert Image.open(path).mode == "RGB"
    assert len(list(heatmaps.iterdir())) == 4


def test_predict_script_exit_codes(model_dir, tmp_path, capsys):
    main = load_script(REPO / "scripts" / "predict.py").main
    output = tmp_path / "preds.csv"
    images = [str(path) for path in sorted(MINI_IMAGES.glob("*.png"))[:5]]
    assert main(["--model", str(model_dir), *images, "--output", str(output)]) == 0
    assert len(pd.read_csv(output)) == 5 and "set by the test" in capsys.readouterr().err
    assert main(["--model", str(model_dir), str(tmp_path / "missing.png"), "--output", str(output)]) == 2
    assert "missing.png: no such file or folder" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "no_model"), images[0], "--output", str(output)]) == 2
    assert "no_model: no such model folder" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert main(["--model", str(model_dir), str(bad), "--output", str(output)]) == 1
    assert "bad.png" in capsys.readouterr().err
    assert list(pd.read_csv(output).columns[:2]) == ["path", "Atelectasis"]  # no rows, but the header


def test_heatmap_panel_sizes():
    view = Image.new("L", (64, 64), 128)
    panel = heatmap_panel(view, [("A", np.zeros((64, 64))), ("B", np.ones((64, 64)))], panel_size=100)
    assert panel.size == (300, 100 + 12)


def test_a_thresholds_file_decides_the_positives_without_touching_the_model(tmp_path, capsys):
    from inference_helpers import only_positive

    from cxr_vit.evaluation import write_thresholds

    model = save_tiny_model(tmp_path / "model")
    thresholds = write_thresholds(tmp_path / "thresholds.json", only_positive("Hernia"), {"rule": "set by the test"})
    predictor = Predictor.from_pretrained(model, device="cpu", thresholds_file=thresholds)
    assert predictor.predict([read_image(XRAY)])[0].positives == ["Hernia"]
    assert "thresholds.json" in predictor.thresholds_source and "set by the test" in predictor.thresholds_source

    main = load_script(REPO / "scripts" / "predict.py").main
    output = tmp_path / "preds.csv"
    assert main(["--model", str(model), str(XRAY), "--output", str(output), "--thresholds", str(thresholds)]) == 0
    assert pd.read_csv(output)["positives"].tolist() == ["Hernia"]
    broken = tmp_path / "broken.json"
    broken.write_text('{"thresholds": {"Hernia": 0.5}}')
    assert main(["--model", str(model), str(XRAY), "--output", str(output), "--thresholds", str(broken)]) == 2
    assert "broken.json: not a thresholds.json" in capsys.readouterr().err


def test_tta_and_ensembles_through_the_scripts(prepared_mini, tmp_path, capsys):
    """predict.py and evaluate.py average fixed views and several models, and say so; thresholds chosen on an
    average are not stored in one model's config."""
    first, second = save_tiny_model(tmp_path / "a", seed=0), save_tiny_model(tmp_path / "b", seed=1)
    predict = load_script(REPO / "scripts" / "predict.py").main
    images = [str(path) for path in sorted(MINI_IMAGES.glob("*.png"))[:4]]
    tables = {}
    for name, models in {"a": [first], "b": [second], "ab": [first, second]}.items():
        output = tmp_path / f"{name}.csv"
        flags = [flag for model in models for flag in ("--model", str(model))]
        assert predict([*flags, *images, "--output", str(output), "--tta", "3"]) == 0
        tables[name] = pd.read_csv(output)[list(LABELS)].to_numpy()
    np.testing.assert_allclose(tables["ab"], (tables["a"] + tables["b"]) / 2, atol=2e-6)  # the CSV's 6 decimals

    evaluate = load_script(REPO / "scripts" / "evaluate.py").main
    common = ["--model", str(first), "--model", str(second), "--dataset_name", str(prepared_mini), "--n_bootstrap", "5"]
    assert evaluate([*common, "--output_dir", str(tmp_path / "report"), "--tta", "2"]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["averaged"] == {"tta_views": 2, "models": 2, "rule": report["averaged"]["rule"]}
    assert "over 2 fixed views per image" in report["averaged"]["rule"] and "of 2 models" in report["averaged"]["rule"]
    assert "of 2 models" in (tmp_path / "report" / "report.md").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        evaluate([*common, "--output_dir", str(tmp_path / "r2"), "--save_thresholds"])
    assert "belong to that averaging" in capsys.readouterr().err
