"""One explainer registry for predict.py, the demo and the report, and one rule for choosing: an explainer asked for
is used or refused with a message naming the model's family; without one, the default, else Grad-CAM, else none."""

import pytest
import torch
from conftest import MINI_IMAGES, REPO, TEST_DATA
from inference_helpers import load_script

from cxr_vit.evaluation.explainers import (
    DEFAULT_EXPLAINER,
    FALLBACK_EXPLAINER,
    ExplainerError,
    resolve_explainer,
)
from cxr_vit.modeling import create_model, save_model
from cxr_vit.prediction import Predictor

CONVNEXT = ("convnext_atto", {"depths": (1, 1, 1, 1), "dims": (8, 16, 32, 64)})


def tiny(architecture: str = "vit_tiny_patch16_224", **model_kwargs):
    torch.manual_seed(0)
    image_size = 64 if architecture.startswith("vit") else None  # ConvNeXt takes any size, and no img_size argument
    return create_model(architecture, pretrained=False, image_size=image_size, model_kwargs=model_kwargs).eval()


@pytest.fixture(scope="module")
def convnext_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("convnext") / "model"
    save_model(tiny(CONVNEXT[0], **CONVNEXT[1]), folder)
    return folder


def test_the_rule():
    vit = tiny(depth=1)
    assert resolve_explainer(vit) == (DEFAULT_EXPLAINER, "the default")
    assert resolve_explainer(vit, "gradcam") == ("gradcam", "asked for")
    # A ViT whose attention pooling ("map") the attention explainers do not support: Grad-CAM, and it says why.
    pooled = tiny(depth=1, global_pool="map")
    name, why = resolve_explainer(pooled)
    assert name == FALLBACK_EXPLAINER and why.startswith(f"fallback: the default, {DEFAULT_EXPLAINER}, cannot")
    assert "pools with 'map'" in why
    with pytest.raises(ExplainerError, match="the 'rollout' explainer supports class-token or average pooling"):
        resolve_explainer(pooled, "rollout")  # asked for: never replaced by another method
    convnext = tiny(CONVNEXT[0], **CONVNEXT[1])
    with pytest.raises(ExplainerError, match=r"no explainer can explain 'convnext_atto' \(ConvNeXt\)"):
        resolve_explainer(convnext)
    with pytest.raises(ExplainerError, match="'convnext_atto' \\(ConvNeXt\\) is not one\\.$"):
        resolve_explainer(convnext, "grad_rollout")  # no advice to use gradcam, which cannot either
    with pytest.raises(ExplainerError, match="unknown explainer 'lime'; available: grad_rollout, gradcam, rollout"):
        resolve_explainer(vit, "lime")


def test_predict_script_draws_the_heatmaps_of_the_explainer_asked_for(model_dir, tmp_path, capsys):
    main = load_script(REPO / "scripts" / "predict.py").main
    image = str(TEST_DATA / "00000011_000.png")
    heatmaps = tmp_path / "heatmaps"
    args = ["--model", str(model_dir), image, "--output", str(tmp_path / "p.csv"), "--heatmaps", str(heatmaps)]
    assert main([*args, "--explainer", "rollout", "--heatmap_top_k", "2"]) == 0
    assert "heatmaps: rollout (asked for)" in capsys.readouterr().err
    assert [path.name for path in heatmaps.iterdir()] == ["00000011_000_heatmap.png"]
    assert main(args) == 0 and f"heatmaps: {DEFAULT_EXPLAINER} (the default)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", str(model_dir), image, "--output", str(tmp_path / "p.csv"), "--explainer", "gradcam"])


def test_a_family_without_explainer_predicts_but_draws_no_heatmaps(convnext_dir, tmp_path, capsys):
    main = load_script(REPO / "scripts" / "predict.py").main
    images = [str(path) for path in sorted(MINI_IMAGES.glob("*.png"))[:2]]
    args = ["--model", str(convnext_dir), *images, "--output", str(tmp_path / "p.csv")]
    assert main(args) == 0  # probabilities need no explainer
    assert main([*args, "--heatmaps", str(tmp_path / "h")]) == 2
    assert "error: --heatmaps: no explainer can explain 'convnext_atto' (ConvNeXt)" in capsys.readouterr().err
    assert main([*args, "--heatmaps", str(tmp_path / "h"), "--explainer", "gradcam"]) == 2
    assert "the 'gradcam' explainer needs a timm Vision Transformer" in capsys.readouterr().err

    app = load_script(REPO / "app.py")
    predictor = Predictor.from_pretrained(convnext_dir, device="cpu")
    assert predictor.explainer is None and app.heatmap_label(predictor).startswith("No heatmaps for this model")
    probabilities, _, heatmap = app.analyse(predictor, images[0])
    assert heatmap is None and len(probabilities) == 15
    with pytest.raises(SystemExit) as exit_info:
        app.main(["--model", str(convnext_dir), "--explainer", "rollout"])
    assert exit_info.value.code == 2 and "the 'rollout' explainer needs" in capsys.readouterr().err
