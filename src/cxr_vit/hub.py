"""Publishing to the Hugging Face Hub: access checks up front, model and dataset pushes with real cards.

Model repos get ``model.safetensors`` (timm-named weights), ``config.json`` (also the image-processor
config), ``training_curves.png``, the results files and a ``README.md`` rendered from ``model_card/``; they
open with ``AutoModelForImageClassification``, ``pipeline("image-classification")`` and
``timm.create_model("hf-hub:<id>", pretrained=True)``. Dataset repos get the folder written by
``scripts/prepare_data.py`` as is (the ``push_to_hub`` layout), so ``load_dataset(<id>)`` works, streaming too.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from .cards import render_card
from .constants import FINDINGS, LABELS, NO_FINDING, TRAINING_CURVES_NAME

logger = logging.getLogger(__name__)

MODEL_FILES = (
    "model.safetensors",
    "config.json",
    TRAINING_CURVES_NAME,
    "all_results.json",
    "test_results.json",
    "eval_results.json",
    "run_args.yaml",
)


class HubAccessError(RuntimeError):
    """The Hub cannot be used as asked (bad token, bad repo id, unreachable endpoint); says how to fix it."""


def check_push_access(
    repo_id: str | None, token: str | None = None, repo_type: str = "model", private: bool | None = None
) -> str:
    """Fail fast, before hours of work: the endpoint answers, the token is valid, the repo can be created.

    Returns the full repo id (``namespace/name``; a bare name goes to the token owner's namespace).
    """
    endpoint = hub_constants.ENDPOINT
    if not repo_id:
        raise HubAccessError(f"pushing needs a repo id (--hub_model_id / --hub_dataset_id / --repo_id) for {endpoint}")
    api = HfApi(token=token)
    try:
        user = api.whoami()["name"]
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        raise HubAccessError(
            f"the Hub at {endpoint} rejected the token (HTTP {status}). Set a write token in HF_TOKEN or run "
            "`hf auth login`."
        ) from err
    except Exception as err:  # connection errors (the HTTP client's own types), a missing token, ...
        raise HubAccessError(f"cannot use the Hub at {endpoint}: {type(err).__name__}: {err}") from err
    full_id = repo_id if "/" in repo_id else f"{user}/{repo_id}"
    try:
        validate_repo_id(full_id)
        api.create_repo(full_id, repo_type=repo_type, private=private, exist_ok=True)
    except HFValidationError as err:
        raise HubAccessError(f"invalid repo id {repo_id!r}: {err}") from err
    except HfHubHTTPError as err:
        raise HubAccessError(f"cannot create or write {repo_type} repo {full_id!r} at {endpoint}: {err}") from err
    return full_id


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def render_model_card(model_dir: str | os.PathLike, repo_id: str | None = None) -> ModelCard:
    """The model card of a training output folder; every number comes from its results files."""
    model_dir = Path(model_dir)
    config = _read_json(model_dir / "config.json")
    results = {**_read_json(model_dir / "all_results.json"), **_read_json(model_dir / "test_results.json")}
    run_args = (
        yaml.safe_load((model_dir / "run_args.yaml").read_text()) if (model_dir / "run_args.yaml").is_file() else {}
    )
    model_args = run_args.get("ModelArguments", {})
    data_args = run_args.get("DataArguments", {})
    training_args = run_args.get("CXRTrainingArguments", {})
    pretrained_cfg = config.get("pretrained_cfg", {})
    pretrained = bool(model_args.get("pretrained", False))
    base_model = pretrained_cfg.get("hf_hub_id") if pretrained else None
    dataset = data_args.get("dataset_name")
    hub_dataset = dataset if dataset and not Path(dataset).exists() and "/" in dataset else None
    name = repo_id or model_dir.name

    def metric(key: str) -> float | None:
        value = results.get(key)
        return None if value is None else float(value)

    per_label = [(label, metric(f"test_auc_{label}")) for label in LABELS]
    headline = [("Macro ROC-AUC (14 findings)", metric("test_auc_macro"))]
    reported = headline + [(f"ROC-AUC {label}", value) for label, value in per_label]
    eval_results = [
        EvalResult(
            task_type="image-classification",
            dataset_type=hub_dataset or "nih-chestxray14",
            dataset_name=hub_dataset or f"NIH ChestX-ray14 ({dataset})",
            dataset_split="test",
            metric_type="roc_auc",
            metric_name=metric_name,
            metric_value=round(value, 4),
        )
        for metric_name, value in reported
        if value is not None
    ]
    card_data = ModelCardData(
        model_name=name,
        library_name="transformers",
        pipeline_tag="image-classification",
        license=pretrained_cfg.get("license", "apache-2.0"),
        base_model=base_model,
        datasets=[hub_dataset] if hub_dataset else None,
        tags=["image-classification", "timm", "medical", "chest-x-ray", "multi-label-classification", "cxr-vit"],
        eval_results=eval_results or None,
    )
    hyperparameters = {
        key: training_args.get(key)
        for key in (
            "learning_rate",
            "num_train_epochs",
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "weight_decay",
            "lr_scheduler_type",
            "warmup_steps",
            "optim",
            "bf16",
            "pos_weight",
            "seed",
        )
        if key in training_args
    }
    return render_card(
        "model_card",
        card_data,
        repo_id=name,
        architecture=config.get("architecture", "?"),
        base_model=base_model,
        pretrained=pretrained,
        input_size=pretrained_cfg.get("input_size"),
        dataset=dataset,
        per_label=per_label,
        no_finding=NO_FINDING,
        num_findings=len(FINDINGS),
        auc_macro=metric("test_auc_macro"),
        auc_macro_15=metric("test_auc_macro_15"),
        auprc_macro=metric("test_auprc_macro"),
        eval_auc_macro=metric("eval_auc_macro"),
        test_samples=results.get("test_samples"),
        hyperparameters=hyperparameters,
        has_curves=(model_dir / TRAINING_CURVES_NAME).is_file(),
        versions={lib: version(lib) for lib in ("transformers", "timm", "torch", "datasets")},
    )


def write_model_card(model_dir: str | os.PathLike, repo_id: str | None = None) -> Path:
    path = Path(model_dir) / "README.md"
    render_model_card(model_dir, repo_id).save(path)
    return path


def push_model(
    model_dir: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload cxr-vit model",
) -> str:
    """Upload a training output folder (see ``MODEL_FILES``) with a freshly rendered card; returns the URL."""
    model_dir = Path(model_dir)
    for required in ("model.safetensors", "config.json"):
        if not (model_dir / required).is_file():
            raise FileNotFoundError(f"{model_dir} has no {required}: is it a cxr-vit training output folder?")
    repo_id = check_push_access(repo_id, token=token, private=private)
    with tempfile.TemporaryDirectory(prefix="cxr_vit_push_") as staging:
        # Stage exactly what belongs on the Hub: no optimizer states or checkpoints, one commit.
        for name in MODEL_FILES:
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, Path(staging) / name)
        render_model_card(model_dir, repo_id).save(Path(staging) / "README.md")
        commit = HfApi(token=token).upload_folder(
            repo_id=repo_id, folder_path=staging, repo_type="model", commit_message=commit_message
        )
    logger.info("pushed %s to %s", model_dir, commit.commit_url)
    return f"{hub_constants.ENDPOINT}/{repo_id}"


def push_dataset(
    prepared_dir: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload prepared NIH ChestX-ray14",
) -> str:
    """Upload a folder written by ``scripts/prepare_data.py`` (Parquet shards + card) as a dataset repo."""
    prepared_dir = Path(prepared_dir)
    if not (prepared_dir / "README.md").is_file() or not list(prepared_dir.glob("data/*.parquet")):
        raise FileNotFoundError(f"{prepared_dir} is not a prepared dataset folder (README.md + data/*.parquet)")
    repo_id = check_push_access(repo_id, token=token, repo_type="dataset", private=private)
    HfApi(token=token).upload_folder(
        repo_id=repo_id,
        folder_path=prepared_dir,
        repo_type="dataset",
        allow_patterns=["README.md", "prepare.json", "data/*.parquet"],
        delete_patterns=["data/*.parquet"],  # a re-push with other shards must not leave stale ones
        commit_message=commit_message,
    )
    return f"{hub_constants.ENDPOINT}/datasets/{repo_id}"
