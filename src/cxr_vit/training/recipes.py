"""Published fine-tuning recipes that bundled configs say they follow: the settings, in ``train.py``'s argument names,
with where each was read, and what cxr-vit does not reproduce. ``tests/test_recipes.py`` reads each listed config
against its recipe, so a config cannot drift from the recipe it cites.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# medical_mae fine-tunes on the chest-X-ray statistics, not ImageNet's (util/datasets.py, build_transform)
MEDICAL_MAE_NORMALIZATION = {"mean": [0.5056] * 3, "std": [0.252] * 3}


@dataclass(frozen=True)
class PublishedRecipe:
    """A published fine-tuning recipe; ``settings`` keys are ``train.py`` arguments, ``model_kwargs.X`` entries of
    ``--model_kwargs`` (timm keywords)."""

    name: str
    source: str  # where the settings were read
    settings: dict[str, Any]
    not_reproduced: dict[str, str] = field(default_factory=dict)  # the recipe's setting -> what cxr-vit does instead
    configs: tuple[str, ...] = ()  # bundled configs (paths from the repository root) that say they follow it


MEDICAL_MAE_VIT = PublishedRecipe(
    name="medical_mae ViT fine-tuning on ChestX-ray14 (Xiao et al., WACV 2023)",
    source=(
        "github.com/lambert-x/medical_mae: FINETUNE.md, 'Fine-tune ViTs' (--epochs 75 --blr 2.5e-4 --layer_decay 0.55 "
        "--weight_decay 0.05 --warmup_epochs 5 --drop_path 0.2 --min_lr 1e-5 --mixup 0 --cutmix 0, 8 GPUs x 128); "
        "main_finetune_chestxray.py (--global_pool on by default: mean of the patch tokens through a new fc_norm; "
        "lr = blr x global batch / 256; AdamW); util/datasets.py (normalization); MAE's util/lr_sched.py (linear "
        "warm-up, then half-cycle cosine down to min_lr)"
    ),
    settings={
        "num_train_epochs": 75,
        "warmup_steps": 0.0667,  # 5 warm-up epochs of 75
        "lr_base": 2.5e-4,
        "lr_base_batch_size": 256,
        "lr_base_scale": "linear",
        "lr_scheduler_type": "cosine_with_min_lr",
        "lr_scheduler_kwargs": {"min_lr_rate": 0.01},  # min_lr 1e-5 of lr 1e-3 (2.5e-4 x 1024 / 256)
        "layer_decay": 0.55,
        "weight_decay": 0.05,
        "drop_path_rate": 0.2,
        "model_kwargs.global_pool": "avg",  # timm: fc_norm on the mean patch token, the final norm dropped
        "model_kwargs.pretrained_cfg_overlay": MEDICAL_MAE_NORMALIZATION,
    },
    not_reproduced={
        "--aa rand-m6-mstd0.5-inc1 with timm's random-resized crop and flip": "X-ray intensity augmentation "
        "(aug_ops all: brightness, contrast, gamma, sharpness, noise), no crop or flip",
        "checkpoint chosen on the test set (best of the evaluations every 10 epochs)": "chosen on a validation split "
        "carved patient-wise from train_val_list.txt",
        "global batch 1024 (8 GPUs x 128)": "whatever the devices give; the learning rate follows it linearly, as "
        "the recipe's does",
    },
    configs=(
        "configs/nih_full_official_vit_base.yaml",
        "configs/nih_full_official_vit_base_448.yaml",
        "configs/nih_full_official_vit_base_cxr_pretrained.yaml",
        "configs/encoders/mae_vit_base.yaml",
    ),
)

PUBLISHED_RECIPES: tuple[PublishedRecipe, ...] = (MEDICAL_MAE_VIT,)
