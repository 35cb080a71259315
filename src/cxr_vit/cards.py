"""Dataset and model cards, rendered from the Jinja templates in ``dataset_card/`` and ``model_card/``.

Templates: when this module runs from a source checkout (``<repo>/src/cxr_vit``), the checkout's own
``<repo>/dataset_card/`` and ``<repo>/model_card/``, so a checkout renders the templates it carries (an editable
install of another checkout, or none at all, changes nothing); installed from a wheel, the copies shipped in the
package (``cxr_vit.dataset_card``, ``cxr_vit.model_card``).

The model card (:func:`render_model_card`) takes every number from files in the model folder: ``config.json``,
the training run's results files and ``run_args.yaml``, and, when there is one, an evaluation report
(``report.json`` of ``scripts/evaluate.py``): by default ``<model_dir>/evaluation/report.json`` (what
``evaluate.py --output_dir <model_dir>/evaluation`` writes), or the one given (``push_to_hub.py --report``). A
report is used only if it describes the weights in the folder (its ``model_fingerprint``,
:func:`cxr_vit.evaluation.weights_fingerprint`): a stale one at the default place is skipped with a warning, a
given one that does not match is an error.

Cards name the training data by its Hub id, or describe it (split seed, images per split), never by a local path
(:mod:`cxr_vit.public_names`); ``model-index`` is named after the repo id when pushing.
"""

from __future__ import annotations

import json
import logging
import os
from importlib.metadata import version
from importlib.resources import files
from pathlib import Path

import yaml
from huggingface_hub import CardData, DatasetCard, DatasetCardData, EvalResult, ModelCard, ModelCardData

from .constants import DEFAULT_SOURCE, FINDINGS, LABELS, NO_FINDING, SOURCES_KEY, TRAINING_CURVES_NAME
from .public_names import DatasetReference, dataset_reference, hub_id_of_cached_file

logger = logging.getLogger(__name__)

TEMPLATE_NAME = "README.md"
REPORT_DIR = "evaluation"  # <model_dir>/evaluation/report.json: where the card looks for a report by default
REPORT_NAME = "report.json"
_SOURCE_ROOT = Path(__file__).resolve().parents[2]  # <repo> when running from <repo>/src/cxr_vit


class ReportMismatchError(ValueError):
    """An evaluation report given for a model card is missing, unreadable or about other weights."""


def template_path(kind: str, name: str = TEMPLATE_NAME) -> str:
    """Path of the template ``name`` of ``kind`` ("dataset_card" or "model_card"): the checkout's, else the
    package's. The dataset card has a second template, ``external.md``, for releases other than NIH."""
    checkout = _SOURCE_ROOT / kind / name
    if Path(__file__).resolve().parent.parent.name == "src" and checkout.is_file():
        return str(checkout)
    return str(files(f"cxr_vit.{kind}").joinpath(name))


def render_card(kind: str, card_data: CardData, template: str = TEMPLATE_NAME, **values) -> DatasetCard | ModelCard:
    """Fill the template with ``values``; ``card_data`` becomes the YAML header the Hub reads."""
    card_class = DatasetCard if isinstance(card_data, DatasetCardData) else ModelCard
    return card_class.from_template(card_data, template_path=template_path(kind, template), **values)


# ---- the evaluation report beside a model ------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def folder_fingerprint(model_dir: str | os.PathLike) -> str | None:
    """:func:`cxr_vit.evaluation.weights_fingerprint` of ``model_dir/model.safetensors`` (None without one)."""
    from safetensors.torch import load_file

    from .evaluation import weights_fingerprint

    weights = Path(model_dir) / "model.safetensors"
    return weights_fingerprint(load_file(weights)) if weights.is_file() else None


def report_path(report: str | os.PathLike) -> Path:
    """``report.json`` itself, or inside the folder given."""
    report = Path(report)
    return report / REPORT_NAME if report.is_dir() else report


def find_report(model_dir: str | os.PathLike, report: str | os.PathLike | None = None) -> tuple[dict, Path] | None:
    """(report, its path) for the model card of ``model_dir``, or None; see the module docstring for the rules."""
    explicit = report is not None
    path = report_path(report) if explicit else Path(model_dir) / REPORT_DIR / REPORT_NAME
    if not path.is_file():
        if explicit:
            raise ReportMismatchError(f"--report {report}: no {REPORT_NAME} there (write one with scripts/evaluate.py)")
        return None
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        content, problem = None, f"{path} cannot be read as JSON ({err})"
    else:
        usable = isinstance(content, dict) and {"model_fingerprint", "auc_macro", "labels"} <= set(content)
        problem = None if usable else f"{path} is not a report.json of scripts/evaluate.py with a model fingerprint"
    if problem is None and content["model_fingerprint"] != folder_fingerprint(model_dir):
        problem = (
            f"{path} describes other weights than {Path(model_dir) / 'model.safetensors'} (model fingerprints "
            "differ): evaluate this model again"
        )
    if problem is not None:
        if explicit:
            raise ReportMismatchError(problem)
        logger.warning("model card without evaluation report: %s", problem)
        return None
    return content, path


def read_run_args(model_dir: str | os.PathLike) -> dict:
    """The training run's resolved arguments (``run_args.yaml``, by dataclass name), or {} without one."""
    path = Path(model_dir) / "run_args.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def run_arg_paths(run_args: dict) -> list[str]:
    """Every argument value of the run that looks like a path (holds a separator), also inside a list (several
    ``--dataset_name``): what a card must not name."""
    values = [value for section in run_args.values() for value in section.values()]
    values = [item for value in values for item in (value if isinstance(value, list) else [value])]
    return [value for value in values if isinstance(value, str) and "/" in value]


def card_evaluation(report: dict) -> dict:
    """What the model card shows of a report: the headline, a calibration line, a short subgroup table."""
    from .evaluation.subgroups import ATTRIBUTE_TITLES, macro_cell, underdiagnosis_cell
    from .markdown import format_ci

    calibration = report.get("calibration") or {}
    model, before = calibration.get("model"), calibration.get("uncalibrated")
    if model and before:
        calibration_line = (
            f"ECE {before['ece_macro']:.3f} before temperature scaling, {model['ece_macro']:.3f} after; Brier "
            f"{before['brier_macro']:.3f} -> {model['brier_macro']:.3f}"
        )
    elif model:
        calibration_line = f"ECE {model['ece_macro']:.3f}, Brier {model['brier_macro']:.3f}"
    else:
        calibration_line = None
    subgroups = report.get("subgroups") or {}
    rows = []
    for attribute, section in (subgroups.get("attributes") or {}).items():
        for name, entry in section["groups"].items():
            macro = entry["note"] or macro_cell(entry)
            title = ATTRIBUTE_TITLES.get(attribute, attribute)
            rows.append((title, name, entry["n_images"], macro, underdiagnosis_cell(entry["underdiagnosis"])))
    localization = report.get("localization") or {}
    overall = localization.get("overall") or {}
    localization_line = None
    if overall.get("n_boxes"):
        localization_line = (
            f"pointing game {overall['pointing_accuracy']:.3f} (chance {overall['chance_pointing']:.3f}) over "
            f"{overall['n_boxes']} radiologist boxes, `{localization['explainer']}` heatmaps"
        )
    return {
        "split": report.get("split", "?"),
        "dataset": report.get("dataset", "?"),
        "validation_split": report.get("validation_split", "validation"),
        "num_images": report.get("num_images"),
        "num_patients": report.get("num_patients"),
        "auc_macro": format_ci(report["auc_macro"]),
        "calibration_line": calibration_line,
        "binning": (model or {}).get("binning"),
        "subgroup_rows": rows,
        "subgroups_reason": None if subgroups.get("available") else subgroups.get("reason", "not computed"),
        "localization_line": localization_line,
    }


def card_calibration(config: dict) -> dict | None:
    """The temperature scaling recorded in a calibrated model's config (``cxr_vit_calibration``), for the card."""
    from .evaluation.calibration import CALIBRATION_KEY

    record = config.get(CALIBRATION_KEY)
    if not record:
        return None
    labels = record.get("labels", {})
    return {
        "method": record.get("method", "temperature scaling"),
        "bias_rule": record.get("bias_rule"),
        "fitted_on": record.get("fitted_on") or {},
        "rows": [
            (label, labels[label]["temperature"], labels[label]["bias"], labels[label].get("not_fitted_because", ""))
            for label in LABELS
            if label in labels
        ],
    }


# ---- the model card ----------------------------------------------------------------------------------------


def render_model_card(
    model_dir: str | os.PathLike,
    repo_id: str | None = None,
    report: str | os.PathLike | None = None,
    dataset_repo: str | None = None,
) -> ModelCard:
    """The model card of a model folder; every number comes from its files (module docstring).

    ``dataset_repo``: the Hub id of the training data when the run does not record it (see
    :func:`cxr_vit.public_names.dataset_reference`); the card never names a local path.
    """
    found = find_report(model_dir, report)
    return model_card_with_report(model_dir, repo_id, found[0] if found else None, dataset_repo)


def training_dataset_names(run_args: dict) -> list[str]:
    """The run's ``--dataset_name`` values (one, or several sources), from ``run_args.yaml``."""
    names = run_args.get("DataArguments", {}).get("dataset_name")
    return [names] if isinstance(names, str) else list(names or [])


def training_sets(run_args: dict) -> list[str]:
    """Every training set as a card names it (Hub id or description), for a run on several sources."""
    seed = run_args.get("DataArguments", {}).get("split_seed")
    return [dataset_reference(name, split_seed=seed).name for name in training_dataset_names(run_args)]


def training_data_reference(run_args: dict, results: dict, dataset_repo: str | None = None) -> DatasetReference:
    """The training data as the card names it: the run's (first) dataset (``run_args.yaml``) by Hub id or
    description; a run on several sources lists them all too (:func:`training_sets`)."""
    data_args = run_args.get("DataArguments", {})
    counts = {"train": "train_samples", "validation": "eval_samples", "test": "test_samples"}
    used = {split: int(results[key]) for split, key in counts.items() if results.get(key) is not None}
    names = training_dataset_names(run_args)
    return dataset_reference(
        names[0] if names else None,
        hub_id=dataset_repo,
        split_seed=data_args.get("split_seed"),
        splits=used or None,
        prepared_locally=bool(data_args.get("images_dir")),  # train.py prepared it: a local folder, even if gone
    )


def model_card_with_report(
    model_dir: str | os.PathLike, repo_id: str | None, report: dict | None, dataset_repo: str | None = None
) -> ModelCard:
    """:func:`render_model_card` with the evaluation report already found (:func:`find_report`), or None."""
    model_dir = Path(model_dir)
    config = _read_json(model_dir / "config.json")
    results = {**_read_json(model_dir / "all_results.json"), **_read_json(model_dir / "test_results.json")}
    run_args = read_run_args(model_dir)
    model_args = run_args.get("ModelArguments", {})
    training_args = run_args.get("CXRTrainingArguments", {})
    pretrained_cfg = config.get("pretrained_cfg", {})
    initialization = config.get("cxr_vit_initialization") or {}  # --pretrained_weights
    checkpoint = initialization.get("checkpoint")
    checkpoint_repo = hub_id_of_cached_file(model_args.get("pretrained_weights")) if checkpoint else None
    pretrained = bool(model_args.get("pretrained", False)) and not checkpoint
    base_model = checkpoint_repo or (pretrained_cfg.get("hf_hub_id") if pretrained else None)
    dataset = training_data_reference(run_args, results, dataset_repo)
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
            dataset_type=dataset.hub_id or "nih-chestxray14",
            dataset_name=dataset.name,
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
        datasets=[dataset.hub_id] if dataset.hub_id else None,
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
        checkpoint=checkpoint,
        checkpoint_repo=checkpoint_repo,
        checkpoint_format=initialization.get("format_description"),
        checkpoint_changes=[change for kind in ("resampled", "lossy") for change in initialization.get(kind, [])],
        finetune=config.get("cxr_vit_finetune"),
        input_size=pretrained_cfg.get("input_size"),
        dataset=dataset,
        training_sets=training_sets(run_args),
        sources=config.get(SOURCES_KEY) or [DEFAULT_SOURCE],
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
        evaluation=card_evaluation(report) if report else None,
        report_link=f"{REPORT_DIR}/report.md",
        calibration=card_calibration(config),
        versions={lib: version(lib) for lib in ("transformers", "timm", "torch", "datasets")},
    )


def write_model_card(
    model_dir: str | os.PathLike,
    repo_id: str | None = None,
    report: str | os.PathLike | None = None,
    dataset_repo: str | None = None,
) -> Path:
    """Render :func:`render_model_card` into ``model_dir/README.md``."""
    path = Path(model_dir) / "README.md"
    render_model_card(model_dir, repo_id, report, dataset_repo).save(path)
    return path
