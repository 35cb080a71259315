"""cxr-vit: fine-tune a timm Vision Transformer for multi-label chest X-ray classification, the Hugging Face way.

The public API, in the order data flows through it::

    from cxr_vit import prepare_dataset, load_chestxray14, read_xray       # data
    from cxr_vit import create_model, save_model                           # model
    from cxr_vit import CXRTrainingArguments, MultiLabelTrainer            # training
    from cxr_vit import Classifier, Predictor, evaluate_model              # evaluation and prediction
    from cxr_vit import push_model, push_dataset                           # the Hub

Names are imported on first use, so ``import cxr_vit`` (or a light submodule such as ``cxr_vit.constants``)
does not pull in torch, transformers and datasets until something needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    # constants
    "LABELS": "cxr_vit.constants",
    "FINDINGS": "cxr_vit.constants",
    "NO_FINDING": "cxr_vit.constants",
    # data
    "NIHDataError": "cxr_vit.data",
    "PrepareArguments": "cxr_vit.data",
    "prepare_dataset": "cxr_vit.data",
    "ensure_prepared": "cxr_vit.data",
    "load_chestxray14": "cxr_vit.data",
    "read_xray": "cxr_vit.data.images",
    "XrayReadError": "cxr_vit.data.images",
    # model
    "ModelArguments": "cxr_vit.modeling",
    "create_model": "cxr_vit.modeling",
    "save_model": "cxr_vit.modeling",
    # training
    "CXRTrainingArguments": "cxr_vit.training",
    "DataArguments": "cxr_vit.training",
    "MultiLabelTrainer": "cxr_vit.training",
    "parse_args": "cxr_vit.training",
    # evaluation and prediction
    "Classifier": "cxr_vit.inference",
    "Ensemble": "cxr_vit.inference",
    "Predictor": "cxr_vit.prediction",
    "load_model": "cxr_vit.prediction",
    "evaluate_model": "cxr_vit.evaluation",
    "write_report": "cxr_vit.evaluation",
    # the Hub
    "push_model": "cxr_vit.hub",
    "push_dataset": "cxr_vit.hub",
    "check_push_access": "cxr_vit.hub",
    "HubAccessError": "cxr_vit.hub",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cxr_vit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
