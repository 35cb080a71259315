"""A bundled config that cites a published fine-tuning recipe has that recipe's settings, as
``cxr_vit.training.recipes`` records them with their sources."""

from pathlib import Path

import pytest
import timm
import torch

from cxr_vit.modeling import create_model, data_config
from cxr_vit.pretrained import load_backbone_checkpoint
from cxr_vit.training.config import parse_args
from cxr_vit.training.recipes import MEDICAL_MAE_VIT, PUBLISHED_RECIPES

REPO = Path(__file__).resolve().parents[1]
CHECKED = [(recipe, config) for recipe in PUBLISHED_RECIPES for config in recipe.configs]


def setting(arguments, key: str):
    if key.startswith("model_kwargs."):
        return (arguments[0].model_kwargs or {}).get(key.removeprefix("model_kwargs."))
    (value,) = [getattr(group, key) for group in arguments if hasattr(group, key)]
    return getattr(value, "value", value)  # enums (lr_scheduler_type) as their YAML spelling


@pytest.mark.parametrize(("recipe", "config"), CHECKED, ids=[config for _, config in CHECKED])
def test_a_config_has_the_settings_of_the_recipe_it_cites(tmp_path, recipe, config):
    arguments = parse_args(["--config", str(REPO / config), "--output_dir", str(tmp_path)])
    differing = {
        key: (setting(arguments, key), expected)
        for key, expected in recipe.settings.items()
        if setting(arguments, key) != expected
    }
    assert not differing, f"{config} differs from {recipe.name} ({recipe.source}): {differing}"


def test_every_config_that_cites_a_recipe_is_checked():
    citing = {
        str(path.relative_to(REPO))
        for path in (REPO / "configs").rglob("*.yaml")
        if any("recipe" in line.lower() for line in path.read_text().splitlines() if line.lstrip().startswith("#"))
    }
    assert citing and citing <= {config for _, config in CHECKED}


def test_the_medical_mae_pooling_and_normalization_build_what_the_recipe_trains(tmp_path):
    """Mean of the patch tokens through a fc_norm that starts fresh (the MAE checkpoint's final norm unused), and
    the chest-X-ray normalization in the data config, as medical_mae's fine-tuning does."""
    kwargs = {key.removeprefix("model_kwargs."): v for key, v in MEDICAL_MAE_VIT.settings.items() if "." in key}
    mae = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1, num_classes=0)
    torch.save({"model": mae.state_dict()}, tmp_path / "mae.pth")  # MAE's encoder: a final norm, no fc_norm
    model = create_model("vit_tiny_patch16_224", pretrained=False, image_size=32, model_kwargs={"depth": 1, **kwargs})
    result = load_backbone_checkpoint(model.timm_model, tmp_path / "mae.pth")
    assert sorted(result.missing) == ["fc_norm.bias", "fc_norm.weight"]
    assert sorted(result.unexpected) == ["norm.bias", "norm.weight"]
    timm_model = model.timm_model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = timm_model.forward_features(x)
        pooled = timm_model.forward_head(tokens, pre_logits=True)
    torch.testing.assert_close(pooled, timm_model.fc_norm(tokens[:, 1:].mean(1)))
    config = data_config(model)
    assert (config["mean"], config["std"]) == ((0.5056,) * 3, (0.252,) * 3)
