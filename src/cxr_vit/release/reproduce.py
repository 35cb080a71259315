"""From nothing to the official-test figure: download -> prepare -> train -> evaluate -> calibrate, then
``reproduction.md`` with our macro AUROC beside the published ones.

Each step writes ``steps/<step>.json`` (atomically, only once its output is complete) holding a key: a digest of
its inputs and of the steps before it. A step whose marker holds the current key is skipped, so a run killed at
any point continues from the last complete step when started again; an interrupted training resumes from its
newest complete checkpoint (``--resume_from_checkpoint auto``), and a changed input redoes its step and those
after it. The steps run the project's scripts (training under ``accelerate launch`` on several GPUs), so a
reproduction is exactly what a user running them by hand would get.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import timm
import torch
import yaml

from ..atomic import write_json_atomic, write_text_atomic
from ..constants import FINDINGS, NO_FINDING
from ..data.builder import DEFAULT_SPLIT_SEED
from ..data.nih import NIHDataError
from ..data.prepare import ensure_prepared
from ..data.provenance import prepare_record
from ..markdown import format_ci, table
from .download import download_files
from .files import LABELS_CSV, NUM_RELEASE_IMAGES, RELEASE_GB, TEST_LIST, TRAIN_VAL_LIST, release_files
from .published import PUBLISHED

logger = logging.getLogger(__name__)

STEPS = ("download", "prepare", "train", "evaluate", "calibrate")
GPU_STEPS = ("train", "evaluate", "calibrate")
REPORT_NAME = "reproduction.md"
KAGGLE_LABELS_CSV = "Data_Entry_2017.csv"
# Measured figures the --dry_run estimate rests on. Prepare from archives to 256 px, synthesized 1024 px 8-bit PNGs of
# ~550 KB (scripts/benchmark_archive_prepare.py, docs/data.md; 2-core AMD EPYC KVM guest, no GPU): CPU seconds per
# image and prepared Parquet bytes per image.
PREPARE_CPU_S_PER_IMAGE = 0.015
PREPARED_BYTES_PER_IMAGE = 23_600
# ViT-B/16 at 224, bf16, uint8 cache + GPU augmentation, torch.compile, one NVIDIA H200: measured by a program
# outside this package, so not reproducible with it.
TRAIN_IMAGES_PER_S_PER_GPU = 2885


@dataclass
class ReproduceArguments:
    """Arguments of ``scripts/reproduce.py``."""

    data_dir: str = field(metadata={"help": "The release's files (fetched here when missing)."})
    recipe: str = field(
        default="official_vit_base",
        metadata={"help": "configs/nih_full_<recipe>.yaml, or the path of a training YAML."},
    )
    output_dir: str | None = field(default=None, metadata={"help": "Default: outputs/reproduce_<recipe>."})
    gpus: int = field(default=1, metadata={"help": "GPUs for training (accelerate launch --multi_gpu above 1)."})
    dry_run: bool = field(default=False, metadata={"help": "Print the plan, disk and time estimates; run nothing."})
    urls: str | None = field(default=None, metadata={"help": "URL list for the download (see download_nih.py)."})
    num_proc: int | None = field(default=None, metadata={"help": "Processes that prepare (one per archive)."})
    n_bootstrap: int = field(default=1000, metadata={"help": "Patient resamples for the confidence intervals."})


def resolve_recipe(recipe: str, configs_dir: str | os.PathLike) -> Path:
    """A YAML path, or the name ``X`` of ``configs/nih_full_X.yaml``."""
    if Path(recipe).is_file():
        return Path(recipe)
    path = Path(configs_dir) / f"nih_full_{recipe}.yaml"
    if not path.is_file():
        known = sorted(p.stem.removeprefix("nih_full_") for p in Path(configs_dir).glob("nih_full_*.yaml"))
        raise ValueError(f"no recipe {recipe!r}: give a YAML path or one of {', '.join(known)}")
    return path


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class Reproduction:
    """The steps of one reproduction in ``output_dir``; :meth:`run` does what is not done yet."""

    def __init__(self, args: ReproduceArguments, scripts_dir: str | os.PathLike, configs_dir: str | os.PathLike):
        self.args = args
        self.scripts_dir = Path(scripts_dir)
        self.recipe_path = resolve_recipe(args.recipe, configs_dir)
        self.recipe = yaml.safe_load(self.recipe_path.read_text()) or {}
        name = Path(args.recipe).stem if Path(args.recipe).is_file() else args.recipe
        self.output_dir = Path(args.output_dir or f"outputs/reproduce_{name}")
        self.data_dir = Path(args.data_dir)
        self.steps_dir = self.output_dir / "steps"
        self.prepared = self.output_dir / "prepared"
        self.model_dir = self.output_dir / "model"
        self.evaluation_dir = self.output_dir / "evaluation"
        self.calibrated_dir = self.output_dir / "calibrated"
        self.keys: dict[str, str] = {}

    # ---- inputs ------------------------------------------------------------------------------------
    @property
    def labels_csv(self) -> Path:
        kaggle = self.data_dir / KAGGLE_LABELS_CSV
        return kaggle if kaggle.is_file() and not (self.data_dir / LABELS_CSV).is_file() else self.data_dir / LABELS_CSV

    def files_to_fetch(self):
        """The URL list's files, less the archives when the folder holds the extracted (Kaggle) layout, and less
        the v2020 label CSV when Kaggle's ``Data_Entry_2017.csv`` stands in for it."""
        files = release_files(self.args.urls)
        extracted = any(path.is_dir() for path in self.data_dir.glob("images_*"))
        kaggle_csv = (self.data_dir / KAGGLE_LABELS_CSV).is_file()
        return [
            entry
            for entry in files
            if not (extracted and entry.is_archive) and not (kaggle_csv and entry.name == LABELS_CSV)
        ]

    def prepare_options(self) -> dict:
        return {
            "config": "full",
            "image_size": self.recipe.get("prepare_image_size"),
            "split_seed": self.recipe.get("split_seed", DEFAULT_SPLIT_SEED),
            "train_val_list": str(self.data_dir / TRAIN_VAL_LIST),
            "test_list": str(self.data_dir / TEST_LIST),
        }

    def step_key(self, step: str) -> str:
        """The digest of what ``step`` depends on (the steps before it included)."""
        if step not in self.keys:
            if step == "download":
                key = _digest(sorted(entry.name for entry in self.files_to_fetch()))
            elif step == "prepare":
                options = self.prepare_options()
                parameters = {**options, "validation_fraction": 0.1, "test_fraction": 0.1, "on_bad_image": "error"}
                record = prepare_record(
                    self.data_dir, self.labels_csv, parameters, options["train_val_list"], options["test_list"]
                )
                key = _digest(self.step_key("download"), record["parameters"], record["inputs"])
            elif step == "train":
                key = _digest(self.step_key("prepare"), self.recipe_path.read_text())
            elif step == "evaluate":
                key = _digest(self.step_key("train"), self.args.n_bootstrap)
            else:
                key = _digest(self.step_key("train"))
            self.keys[step] = key
        return self.keys[step]

    # ---- steps -------------------------------------------------------------------------------------
    def marker(self, step: str) -> dict | None:
        path = self.steps_dir / f"{step}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def is_done(self, step: str) -> bool:
        # Download first: the later keys read the downloaded files.
        marker = self.marker(step)
        return marker is not None and marker["key"] == self.step_key(step)

    def run(self) -> Path:
        """Run every step not done yet, then write ``reproduction.md``; returns its path."""
        self.steps_dir.mkdir(parents=True, exist_ok=True)
        actions: dict[str, Callable[[], dict]] = {
            "download": self.download,
            "prepare": self.prepare,
            "train": self.train,
            "evaluate": self.evaluate,
            "calibrate": self.calibrate,
        }
        for step in STEPS:
            if self.is_done(step):
                logger.info("%s: done before, skipped", step)
                continue
            logger.info("%s: running", step)
            started = time.perf_counter()
            details = actions[step]()
            wall = time.perf_counter() - started
            # GPUs used: training takes --gpus, evaluation and calibration one; 0 on a CPU-only machine
            gpus = min(self.args.gpus if step == "train" else 1, torch.cuda.device_count()) if step in GPU_STEPS else 0
            marker = {
                "step": step,
                "key": self.step_key(step),
                "wall_s": round(wall, 1),
                "gpus": gpus,
                "gpu_hours": round(wall * gpus / 3600, 3),
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **details,
            }
            write_json_atomic(self.steps_dir / f"{step}.json", marker)
        return write_text_atomic(self.output_dir / REPORT_NAME, self.report())

    def download(self) -> dict:
        results = download_files(self.files_to_fetch(), self.data_dir, progress=True)
        self.keys.clear()  # the files are there now: the later keys can be computed
        return {"files": {result.name: result.status for result in results}}

    def prepare(self) -> dict:
        # A folder left by a killed preparation is ours to rebuild (it is inside output_dir).
        report = ensure_prepared(
            self.prepared,
            self.data_dir,
            self.labels_csv,
            overwrite=True,
            num_proc=self.args.num_proc,
            **self.prepare_options(),
        )
        return {"reused": report is None, "splits": None if report is None else report.split_rows}

    def train(self) -> dict:
        started = self.steps_dir / "train.started.json"
        same_run = started.is_file() and json.loads(started.read_text())["key"] == self.step_key("train")
        if not same_run and self.model_dir.exists():
            shutil.rmtree(self.model_dir)  # checkpoints of other inputs must not be resumed
        write_json_atomic(started, {"key": self.step_key("train")})
        options = self.prepare_options()
        launcher = [sys.executable]
        if self.args.gpus > 1:
            launcher += ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(self.args.gpus)]
            config = self.scripts_dir.parent / "accelerate_config.yaml"
            launcher += ["--config_file", str(config)] if config.is_file() else []
        self._run_script(
            *launcher,
            str(self.scripts_dir / "train.py"),
            "--config", str(self.recipe_path),
            "--output_dir", str(self.model_dir),
            "--dataset_name", str(self.prepared),
            "--images_dir", str(self.data_dir),
            "--labels_csv", str(self.labels_csv),
            "--prepare_config", "full",
            "--train_val_list", options["train_val_list"],
            "--test_list", options["test_list"],
            "--resume_from_checkpoint", "auto" if same_run else "none",
        )  # fmt: skip
        results = json.loads((self.model_dir / "all_results.json").read_text())
        return {"train_runtime_s": results.get("train_runtime"), "resumed": same_run}

    def evaluate(self) -> dict:
        self._run_on_model("evaluate.py", self.evaluation_dir, "--n_bootstrap", str(self.args.n_bootstrap))
        return {"report": str(self.evaluation_dir / "report.json")}

    def calibrate(self) -> dict:
        self._run_on_model("calibrate.py", self.calibrated_dir)
        return {"model": str(self.calibrated_dir)}

    def _run_on_model(self, script: str, output_dir: Path, *extra: str) -> None:
        """``script --model <model> --dataset_name <prepared> --output_dir ...``, into a fresh ``output_dir``."""
        shutil.rmtree(output_dir, ignore_errors=True)  # what a killed attempt left
        self._run_script(
            sys.executable, str(self.scripts_dir / script),
            "--model", str(self.model_dir),
            "--dataset_name", str(self.prepared),
            "--output_dir", str(output_dir),
            *extra,
        )  # fmt: skip

    def _run_script(self, *command: str) -> None:
        logger.info("running %s", " ".join(command))
        if subprocess.run(command, check=False).returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed (its output is above); run again to continue")

    # ---- report ------------------------------------------------------------------------------------
    def report(self) -> str:
        evaluation = json.loads((self.evaluation_dir / "report.json").read_text())
        macro = evaluation["auc_macro"]
        markers = {step: self.marker(step) for step in STEPS}
        ours = f"**{format_ci(macro)}**"
        rows = [["cxr-vit, this run (`" + self.recipe_path.name + "`)", ours, "this run", "best epoch on validation"]]
        rows += [[p.model, p.macro_auroc, p.source, p.selection] for p in PUBLISHED]
        labels = evaluation["labels"]
        per_label = [
            [label, format_ci(v["auc"]), str(v["positives"])]
            for label, v in ((label, labels[label]) for label in (*FINDINGS, NO_FINDING))
        ]
        steps = [
            [step, f"{m['wall_s'] / 60:.1f}", str(m["gpus"]), f"{m['gpu_hours']:.3f}", m["finished"]]
            for step, m in markers.items()
            if m is not None
        ]
        total = sum(m["wall_s"] for m in markers.values() if m)
        bootstrap = evaluation["bootstrap"]
        return "\n".join(
            [
                "# Reproduction: NIH ChestX-ray14, official test list",
                "",
                f"Recipe `{self.recipe_path}`, data `{self.data_dir}`; {evaluation['num_images']} test images of "
                f"{evaluation['num_patients']} patients. Macro AUROC over the 14 findings (No Finding apart), 95% "
                f"interval from {bootstrap['n_resamples']} resamples of {bootstrap['unit']}s.",
                "",
                table(["model", "macro AUROC (14 findings)", "source", "checkpoint selection"], rows),
                "",
                "The published figures chose their checkpoint on the test set, so they are optimistic; this run chose "
                "it on the validation split carved out of train_val_list.txt and saw the test list once. Per-label "
                "published tables are not transcribed here (see `cxr_vit.release.published`).",
                "",
                "## Per label (this run)",
                "",
                table(["label", "AUROC (95% CI)", "positives"], per_label),
                "",
                "## Time per step",
                "",
                table(["step", "wall time (min)", "GPUs", "GPU-hours", "finished (UTC)"], steps),
                "",
                f"Total wall time {total / 3600:.2f} h over the runs that did the steps. The calibrated model is in "
                f"`{self.calibrated_dir}`; the full evaluation in `{self.evaluation_dir / 'report.md'}`.",
                "",
            ]
        )

    # ---- plan --------------------------------------------------------------------------------------
    def plan(self) -> str:
        """What a run would do, the disk each step needs, and the time estimated from measured throughputs."""
        epochs = self.recipe.get("num_train_epochs", 3)
        train_images = 0.9 * 86_524  # train_val_list.txt less the 10% validation carve-out
        disk = {
            "download": f"{RELEASE_GB} GB (the archives stay packed)",
            "prepare": _gb(3 * PREPARED_BYTES_PER_IMAGE * NUM_RELEASE_IMAGES)
            + " while building (measured at 256 px), a third "
            "of it after",
            "train": _gb(self.checkpoint_bytes()) + " of checkpoints (weights + AdamW state, fp32)",
            "evaluate": "< 0.1 GB",
            "calibrate": "one model folder",
        }
        estimate = {
            "download": "network-bound, not estimated",
            "prepare": _duration(NUM_RELEASE_IMAGES * PREPARE_CPU_S_PER_IMAGE / min(self.args.num_proc or 1, 12))
            + f" with {self.args.num_proc or 1} process(es) on free cores (one per archive at most)",
            "train": _duration(epochs * train_images / (TRAIN_IMAGES_PER_S_PER_GPU * self.args.gpus))
            + f" for {epochs} epochs on {self.args.gpus} GPU(s) at the {TRAIN_IMAGES_PER_S_PER_GPU} images/s per H200 "
            "measured for ViT-B/16 at 224 px (other models, GPUs or resolutions differ; early stopping may end sooner)",
            "evaluate": "not measured",
            "calibrate": "not measured",
        }
        lines = [f"Reproduction in {self.output_dir} (recipe {self.recipe_path}, data {self.data_dir}):"]
        for step in STEPS:
            status = "done, skipped" if self._done_without_inputs(step) else "to run"
            lines.append(f"  {step:<9} {status:<13} disk {disk[step]}; time {estimate[step]}")
        return "\n".join(lines)

    def checkpoint_bytes(self) -> float:
        """The checkpoints the recipe keeps (``save_total_limit``, 2 by default) and the final model: 12 bytes per
        parameter each (fp32 weights and AdamW's two moments), 4 for the final weights."""
        model = timm.create_model(
            self.recipe.get("model_name", "vit_base_patch16_224"),
            pretrained=False,
            **(self.recipe.get("model_kwargs") or {}),
        )
        parameters = sum(parameter.numel() for parameter in model.parameters())
        return parameters * (12 * self.recipe.get("save_total_limit", 2) + 4)

    def _done_without_inputs(self, step: str) -> bool:
        try:
            return self.is_done(step)
        except (NIHDataError, OSError):  # the files a key reads are not there yet: the step is not done
            return False


def _gb(value: float) -> str:
    return f"~{value / 1e9:.1f} GB"


def _duration(seconds: float) -> str:
    return f"~{seconds / 60:.0f} min" if seconds < 7200 else f"~{seconds / 3600:.1f} h"
