"""Publishing to the Hugging Face Hub: access checks up front, model and dataset pushes with real cards.

Model repos get ``model.safetensors`` (timm-named weights), ``config.json`` (also the image-processor
config), ``training_curves.png``, the results files (``run_args.yaml``, which holds local paths, only when asked),
the evaluation report when there is one (``evaluation/``: report.json, report.md, its figures, thresholds.json) and
a ``README.md`` rendered by :func:`cxr_vit.cards.render_model_card`; they open with
``AutoModelForImageClassification``, ``pipeline("image-classification")`` and
``timm.create_model("hf-hub:<id>", pretrained=True)``. Dataset repos get the folder written by
``scripts/prepare_data.py`` (the ``push_to_hub`` layout, ``prepare.json`` without local paths), so
``load_dataset(<id>)`` works, streaming too. Nothing uploaded names a local path (:mod:`cxr_vit.public_names`).
Cards are rendered in :mod:`cxr_vit.cards`; this module only talks to the Hub.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from fnmatch import fnmatch
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from .cards import REPORT_DIR, find_report, model_card_with_report, read_run_args, run_arg_paths
from .constants import TRAINING_CURVES_NAME
from .public_names import check_no_local_paths

logger = logging.getLogger(__name__)

__all__ = ["MODEL_FILES", "HubAccessError", "check_push_access", "push_dataset", "push_model"]

MODEL_FILES = (
    "model.safetensors",
    "config.json",
    TRAINING_CURVES_NAME,
    "all_results.json",
    "test_results.json",
    "eval_results.json",
)
RUN_ARGS_FILE = "run_args.yaml"  # the resolved arguments, local paths included: uploaded only when asked


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


def push_model(
    model_dir: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload cxr-vit model",
    report: str | os.PathLike | None = None,
    dataset_repo: str | None = None,
    include_run_args: bool = False,
) -> str:
    """Upload a model folder (see ``MODEL_FILES``) with a freshly rendered card; returns the URL.

    ``dataset_repo``: the Hub id of the training data, for the card (default: what the run's dataset records, see
    :mod:`cxr_vit.public_names`). ``include_run_args``: upload ``run_args.yaml`` too, with its local paths.
    The evaluation report the card finds (``report``: a report.json or its folder; default
    ``<model_dir>/evaluation``, see :mod:`cxr_vit.cards`) goes up too, as ``evaluation/``. A ``report`` that is
    missing or about other weights raises :class:`cxr_vit.cards.ReportMismatchError` before anything is pushed.
    """
    from .evaluation import REPORT_FILES

    model_dir = Path(model_dir)
    for required in ("model.safetensors", "config.json"):
        if not (model_dir / required).is_file():
            raise FileNotFoundError(f"{model_dir} has no {required}: is it a cxr-vit training output folder?")
    found = find_report(model_dir, report)
    repo_id = check_push_access(repo_id, token=token, private=private)
    with tempfile.TemporaryDirectory(prefix="cxr_vit_push_") as staging:
        # Stage exactly what belongs on the Hub: no optimizer states or checkpoints, one commit.
        for name in (*MODEL_FILES, RUN_ARGS_FILE) if include_run_args else MODEL_FILES:
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, Path(staging) / name)
        if found:
            (Path(staging) / REPORT_DIR).mkdir()
            for name in REPORT_FILES:
                if (found[1].parent / name).is_file():
                    shutil.copy2(found[1].parent / name, Path(staging) / REPORT_DIR / name)
        # the weights hashed once
        card = model_card_with_report(model_dir, repo_id, found[0] if found else None, dataset_repo=dataset_repo)
        card.save(Path(staging) / "README.md")
        if not include_run_args:  # run_args.yaml: the one file allowed to name local paths, when asked
            local = [model_dir, *run_arg_paths(read_run_args(model_dir))]
            check_no_local_paths(staging, [*local, found[1].parent] if found else local)
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
    """Upload a folder written by ``scripts/prepare_data.py`` (Parquet shards + card) as a dataset repo.

    ``prepare.json`` goes up with its input files named by file name only (no local paths); locally, it then
    records the repo id (:func:`cxr_vit.data.provenance.record_push`), so model cards can name the data by it.
    """
    from .data.provenance import PREPARE_RECORD, public_record, read_record, record_push

    prepared_dir = Path(prepared_dir)
    shards = sorted(prepared_dir.glob("data/*.parquet"))
    if not (prepared_dir / "README.md").is_file() or not shards:
        raise FileNotFoundError(f"{prepared_dir} is not a prepared dataset folder (README.md + data/*.parquet)")
    record = read_record(prepared_dir)
    repo_id = check_push_access(repo_id, token=token, repo_type="dataset", private=private)
    api = HfApi(token=token)
    uploads = {"README.md": prepared_dir / "README.md", **{f"data/{shard.name}": shard for shard in shards}}
    if record is not None:
        uploads[PREPARE_RECORD] = json.dumps(public_record(record), indent=2).encode() + b"\n"
    stale = [  # a re-push with other shards must not leave the old ones behind
        name
        for name in api.list_repo_files(repo_id, repo_type="dataset")
        if fnmatch(name, "data/*.parquet") and name not in uploads
    ]
    operations = [CommitOperationDelete(name) for name in stale]
    operations += [CommitOperationAdd(name, content) for name, content in uploads.items()]
    api.create_commit(repo_id, operations, commit_message=commit_message, repo_type="dataset")
    if record is None:
        logger.warning("%s has no %s: the repo id is not recorded for model cards", prepared_dir, PREPARE_RECORD)
    else:
        record_push(prepared_dir, repo_id)
    return f"{hub_constants.ENDPOINT}/datasets/{repo_id}"
