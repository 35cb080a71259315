"""--finetune modes: what trains, what the optimizer holds, what is recorded, and that LoRA saves a stock model."""

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import tiny_vit_trainer
from transformers import AutoModelForImageClassification

from cxr_vit import load_chestxray14
from cxr_vit.cards import render_model_card
from cxr_vit.evaluation import evaluate_model
from cxr_vit.modeling import create_model
from cxr_vit.training.finetune import apply_finetune, merge_lora, parse_finetune


def tiny_vit(depth: int = 3):
    return create_model("vit_tiny_patch16_224", pretrained=False, image_size=32, model_kwargs={"depth": depth})


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def changed(before: dict, model) -> set[str]:
    return {name for name, param in model.named_parameters() if not torch.equal(before[name], param.detach())}


def optimizer_parameters(trainer) -> int:
    return sum(param.numel() for group in trainer.optimizer.param_groups for param in group["params"])


def test_partial_trains_the_last_blocks_only(tmp_path):
    trainer = tiny_vit_trainer(tmp_path, model=tiny_vit(3), finetune="partial:1", max_steps=2, learning_rate=1e-2)
    before = snapshot(trainer.model)
    trainer.train()
    moved = changed(before, trainer.model)
    assert moved and all(".blocks.2." in name or ".norm." in name or ".head." in name for name in moved)
    assert any(".blocks.2." in name for name in moved) and any(".head." in name for name in moved)
    record = trainer.model.config.cxr_vit_finetune
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    assert record["mode"] == "partial:1" and record["trainable_parameters"] == trainable
    assert optimizer_parameters(trainer) == trainable < record["total_parameters"]


def test_full_mode_records_every_parameter(tmp_path):
    trainer = tiny_vit_trainer(tmp_path, model=tiny_vit(1), max_steps=1)
    record = trainer.model.config.cxr_vit_finetune
    assert record["mode"] == "full" and record["trainable_parameters"] == record["total_parameters"]


def test_lora_merge_keeps_the_adapted_function():
    model = tiny_vit(2).eval()
    apply_finetune(model, "lora", lora_rank=4, lora_target_modules="qkv,fc1")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)  # B starts at zero: make the adapters do something
        x = torch.randn(2, 3, 32, 32)
        adapted = model(pixel_values=x).logits
        assert merge_lora(model) == 4
        merged = model(pixel_values=x).logits
    assert not any("lora" in name for name in model.state_dict())
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=0)


def test_lora_trains_saves_merged_and_reloads_in_stock_transformers(tmp_path, prepared_mini):
    trainer = tiny_vit_trainer(tmp_path, model=tiny_vit(2), finetune="lora", lora_rank=4, max_steps=3,
                               learning_rate=1e-2)  # fmt: skip
    before = snapshot(trainer.model)
    trainable = trainer.model.config.cxr_vit_finetune["trainable_parameters"]
    trainer.train()
    assert optimizer_parameters(trainer) == trainable
    trainer.save_model(str(tmp_path / "saved"))
    weights = load_file(tmp_path / "saved" / "model.safetensors")
    assert not any("lora" in key or "base_layer" in key for key in weights)
    # the adapters moved qkv (it was the adapted layer's base_layer while training)
    assert not torch.equal(
        weights["blocks.0.attn.qkv.weight"], before["timm_model.blocks.0.attn.qkv.base_layer.weight"]
    )
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "saved").eval()
    assert reloaded.config.cxr_vit_finetune["mode"] == "lora"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=x).logits, trainer.model.eval()(pixel_values=x).logits,
                                   atol=1e-5, rtol=0)  # fmt: skip
    # the card and the evaluation report state the mode and what trained
    card = render_model_card(tmp_path / "saved").text
    assert f"Fine-tuning mode `lora` (`--finetune`): {trainable:,} of" in card
    splits = load_chestxray14(str(prepared_mini))
    report = evaluate_model(reloaded, splits["test"], splits["validation"], n_bootstrap=10).report
    assert report["finetune"]["mode"] == "lora" and report["finetune"]["trainable_parameters"] == trainable


@pytest.mark.parametrize("mode", ["partial", "partial:0", "linear:2", "lora:x", "half"])
def test_bad_modes_are_named(mode):
    with pytest.raises(ValueError, match="--finetune must be one of"):
        parse_finetune(mode)
