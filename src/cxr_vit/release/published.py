"""Published 14-finding macro AUROCs on the official ChestX-ray14 test list, with their sources, input size,
fine-tuning epochs, split and how each picked its checkpoint, for the table ``reproduction.md`` puts beside ours.

Input size and epochs are those of the fine-tuning commands each repository publishes: medical_mae's
``FINETUNE.md`` (``--epochs 75``; ``main_finetune_chestxray.py``'s ``--input_size`` default 224, not changed there)
and EVA-X's classification README table (EVA-X-B: 10 epochs at 224x224, ``train_files/eva_x/cxr14/vit_b.sh``).
Both train on the official training list and score the official test list, with no validation split in use.

Only figures whose source could be named are here (the same ones docs/training.md cites). Per-label tables of
these papers are not transcribed: they could not be checked against the papers where this was written, and a
mistyped number beside ours would mislead more than a missing one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublishedResult:
    model: str
    macro_auroc: str  # as published (a range where paper versions differ)
    source: str
    selection: str  # how the reported checkpoint was chosen
    resolution: str  # input size of the fine-tuning
    epochs: str  # fine-tuning epochs
    split: str  # what was trained on, selected on and scored on


_MEDICAL_MAE_SPLIT = "official training list; scored on test_list.txt; no validation split in use"

PUBLISHED: tuple[PublishedResult, ...] = (
    PublishedResult(
        "Wang et al. 2017, the ChestX-ray8 baseline",
        "0.738-0.745",
        "Wang et al., ChestX-ray8, CVPR 2017 (arXiv:1705.02315; paper versions differ)",
        "not stated",
        "not checked here",
        "not checked here",
        "differs between paper versions; not checked here",
    ),
    PublishedResult(
        "DenseNet-121 (ImageNet)",
        "0.822",
        "github.com/lambert-x/medical_mae README (Xiao et al., WACV 2023)",
        "checkpoint chosen on the test set",
        "224 px",
        "75",
        _MEDICAL_MAE_SPLIT,
    ),
    PublishedResult(
        "ViT-S/16 (ImageNet, DeiT)",
        "0.796",
        "github.com/lambert-x/medical_mae README (Xiao et al., WACV 2023)",
        "checkpoint chosen on the test set",
        "224 px",
        "75",
        _MEDICAL_MAE_SPLIT,
    ),
    PublishedResult(
        "ViT-B/16, MAE on 0.5M chest X-rays",
        "0.830",
        "github.com/lambert-x/medical_mae README (Xiao et al., WACV 2023)",
        "checkpoint chosen on the test set",
        "224 px",
        "75",
        _MEDICAL_MAE_SPLIT,
    ),
    PublishedResult(
        "EVA-X-B, masked-image pretraining on 520k X-rays",
        "0.835",
        "github.com/hustvl/EVA-X, classification README",
        "checkpoint chosen on the test set",
        "224 px",
        "10",
        "official training list; scored on the official test list; the validation list not used (vit_b.sh)",
    ),
)
