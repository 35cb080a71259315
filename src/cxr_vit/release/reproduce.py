"""From nothing to the official-test figure: download -> prepare -> train -> evaluate -> calibrate, then
``reproduction.md`` with our macro AUROC beside the published ones.

Each step writes ``steps/<step>.json`` (atomically, only once its output is complete) holding a key: a digest of
its inputs, of the package version and of the steps before it. A step whose marker holds the current key is
skipped, so a run killed at any point continues from the last complete step when started again; an interrupted
training resumes from its newest complete checkpoint (``--resume_from_checkpoint auto``), and a changed input or
a new version of the package redoes its step and those after it. While a step runs, ``steps/<step>.attempts.json``
records when each attempt started and was last seen running, so a step's time includes its killed attempts. The
steps run the project's scripts (training under ``accelerate launch`` on several GPUs), so a reproduction is
exactly what a user running them by hand would get. ``reproduction.md`` states the protocol as the run's own
files record it (``run_args.yaml``, ``trainer_state.json``, ``prepare.json``), not as the recipe intended.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import timm
import torch
import yaml

from .. import __version__
from ..atomic import write_json_atomic, write_text_atomic
from ..constants import FINDINGS, NO_FINDING
from ..data.builder import DEFAULT_SPLIT_SEED
from ..data.nih import NIHDataError
from ..data.prepare import ensure_prepared
from ..data.provenance import PREPARE_RECORD, prepare_record
from ..markdown import format_ci, table
from ..step_clock import HEARTBEAT_S, StepClock
from .download import download_files
from .files import (
    LABELS_CSV,
    NUM_RELEASE_IMAGES,
    NUM_TRAIN_VAL_IMAGES,
    RELEASE_FILES,
    TEST_LIST,
    TRAIN_VAL_LIST,
    release_files,
)
from .published import PUBLISHED

logger = logging.getLogger(__name__)

STEPS = ("download", "prepare", "train", "evaluate", "calibrate")
GPU_STEPS = ("train", "evaluate", "calibrate")
REPORT_NAME = "reproduction.md"
KAGGLE_LABELS_CSV = "Data_Entry_2017.csv"
VALIDATION_FRACTION = 0.1  # of train_val_list.txt's patients, the preparation's default
# What this package measured, that the --dry_run estimate rests on: prepare from archives to 256 px, synthesized
# 1024 px 8-bit PNGs of ~550 KB (scripts/benchmark_archive_prepare.py, docs/data.md; 2-core AMD EPYC KVM guest,
# no GPU): CPU seconds per image and prepared Parquet bytes per image.
PREPARE_CPU_S_PER_IMAGE = 0.015
PREPARED_BYTES_PER_IMAGE = 23_600
MEASURED_PREPARE = "measured by scripts/benchmark_archive_prepare.py on a 2-core CPU with synthesized films"
THROUGHPUT_KEY = "train_steady_images_per_second"  # what train.py measures of its own steps (train_results.json)


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
    dry_run: bool = field(
        default=False, metadata={"help": "Print the plan, disk and the times this package measured; run nothing."}
    )
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
        self.earlier_attempts: list[float] = []  # seconds of the running step's stopped attempts

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
            if step == "download":  # the version here reaches every later key: new code redoes the steps
                key = _digest(__version__, sorted(entry.name for entry in self.files_to_fetch()))
            elif step == "prepare":
                options = self.prepare_options()
                parameters = {
                    **options,
                    "validation_fraction": VALIDATION_FRACTION,
                    "test_fraction": 0.1,
                    "on_bad_image": "error",
                }
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
            clock = StepClock(self.steps_dir / f"{step}.attempts.json", self.step_key(step))
            self.earlier_attempts = clock.earlier
            with clock:
                details = actions[step]()
            # GPUs used: training takes --gpus, evaluation and calibration one; 0 on a CPU-only machine
            gpus = min(self.args.gpus if step == "train" else 1, torch.cuda.device_count()) if step in GPU_STEPS else 0
            wall = sum(clock.attempts_s)
            marker = {
                "step": step,
                "key": self.step_key(step),
                "wall_s": round(wall, 1),  # every attempt of this key: the killed ones (to their last sign of life)
                "attempts_s": [round(seconds, 1) for seconds in clock.attempts_s],
                "gpus": gpus,
                "gpu_hours": round(wall * gpus / 3600, 3),
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **details,
            }
            write_json_atomic(self.steps_dir / f"{step}.json", marker)
            clock.path.unlink(missing_ok=True)
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
        same_run = bool(self.earlier_attempts)  # an attempt with these inputs was stopped: resume its checkpoints
        if not same_run and self.model_dir.exists():
            shutil.rmtree(self.model_dir)  # checkpoints of other inputs must not be resumed
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
        protocol = read_protocol(self.model_dir, self.prepared)
        ours = f"**{format_ci(macro)}**"
        rows = [
            [f"cxr-vit, this run (`{self.recipe_path.name}`)", ours, protocol.resolution, protocol.epochs,
             protocol.split, protocol.selection, "this run"]
        ]  # fmt: skip
        rows += [[p.model, p.macro_auroc, p.resolution, p.epochs, p.split, p.selection, p.source] for p in PUBLISHED]
        labels = evaluation["labels"]
        per_label = [
            [label, format_ci(v["auc"]), str(v["positives"])]
            for label, v in ((label, labels[label]) for label in (*FINDINGS, NO_FINDING))
        ]
        steps = [
            [step, f"{m['wall_s'] / 60:.1f}", str(len(m.get("attempts_s", [m["wall_s"]]))), str(m["gpus"]),
             f"{m['gpu_hours']:.3f}", m["finished"]]
            for step, m in markers.items()
            if m is not None
        ]  # fmt: skip
        total = sum(m["wall_s"] for m in markers.values() if m)
        bootstrap = evaluation["bootstrap"]
        columns = ["model", "macro AUROC (14 findings)", "input", "epochs", "split", "checkpoint selection", "source"]
        return "\n".join(
            [
                "# Reproduction: NIH ChestX-ray14, official test list",
                "",
                f"Recipe `{self.recipe_path}`, data `{self.data_dir}`, cxr-vit {__version__}; "
                f"{evaluation['num_images']} test images of {evaluation['num_patients']} patients. Macro AUROC over "
                f"the 14 findings (No Finding apart), 95% interval from {bootstrap['n_resamples']} resamples of "
                f"{bootstrap['unit']}s.",
                "",
                table(columns, rows),
                "",
                "This run's row is read from its own files (`run_args.yaml`, `trainer_state.json`, `config.json` "
                f"in `{self.model_dir}`, `prepare.json` in `{self.prepared}`); epochs are those run of those "
                f"planned. {protocol.test_use}. The published rows are as their sources give them; those that "
                "chose their checkpoint on the test set are optimistic. Per-label published tables are not "
                "transcribed here (see `cxr_vit.release.published`).",
                "",
                "## Per label (this run)",
                "",
                table(["label", "AUROC (95% CI)", "positives"], per_label),
                "",
                "## Time per step",
                "",
                table(["step", "wall time (min)", "attempts", "GPUs", "GPU-hours", "finished (UTC)"], steps),
                "",
                f"Total wall time {total / 3600:.2f} h over the runs that did the steps, killed attempts included "
                f"(each to its last sign of life, noted every {HEARTBEAT_S:g} s). The calibrated model is in "
                f"`{self.calibrated_dir}`; the full evaluation in `{self.evaluation_dir / 'report.md'}`.",
                "",
            ]
        )

    # ---- plan --------------------------------------------------------------------------------------
    def plan(self) -> str:
        """What a run would do, the disk each step needs and the time where this package measured what it rests
        on; every figure says whether it was measured or computed."""
        epochs = self.recipe.get("num_train_epochs", 3)
        train_images = round((1 - VALIDATION_FRACTION) * NUM_TRAIN_VAL_IMAGES)
        disk = {
            "download": self._download_disk(),
            "prepare": _gb(3 * PREPARED_BYTES_PER_IMAGE * NUM_RELEASE_IMAGES)
            + f" while building, a third of it after ({MEASURED_PREPARE}, at 256 px)",
            "train": _gb(self.checkpoint_bytes())
            + " of checkpoints (computed: weights + AdamW state, fp32, for the recipe's save_total_limit)",
            "evaluate": "not measured (a report, its figures and thresholds)",
            "calibrate": _gb(4 * self.parameter_count()) + " (computed: one fp32 model)",
        }
        processes = self.args.num_proc or 1
        estimate = {
            "download": "network-bound, not estimated",
            "prepare": _duration(NUM_RELEASE_IMAGES * PREPARE_CPU_S_PER_IMAGE / min(processes, 12))
            + f" with {processes} process(es) on free cores, one per archive at most (at the "
            f"{PREPARE_CPU_S_PER_IMAGE} CPU s per image measured likewise)",
            "train": self._train_estimate(epochs, train_images),
            "evaluate": "not measured",
            "calibrate": "not measured",
        }
        lines = [f"Reproduction in {self.output_dir} (recipe {self.recipe_path}, data {self.data_dir}):"]
        for step in STEPS:
            status = "done, skipped" if self._done_without_inputs(step) else "to run"
            lines.append(f"  {step:<9} {status:<13} disk {disk[step]}; time {estimate[step]}")
        return "\n".join(lines)

    def _train_estimate(self, epochs: float, train_images: int) -> str:
        """From this output folder's own measured training throughput when a run wrote one, else none."""
        work = (
            f"{epochs:g} epochs x {train_images:,} training images (computed: train_val_list.txt less the validation)"
        )
        results = self.model_dir / "train_results.json"
        measured = json.loads(results.read_text()).get(THROUGHPUT_KEY) if results.is_file() else None
        if not measured:
            return (
                f"not estimated: this package has no measured training throughput for this recipe on your GPUs "
                f"(`python scripts/benchmark.py` measures one, {THROUGHPUT_KEY}); {work}"
            )
        return (
            _duration(epochs * train_images / measured)
            + f" for {work}, at the {measured:,.0f} images/s this folder's last training measured ({results}, "
            f"{THROUGHPUT_KEY}); early stopping may end sooner"
        )

    def parameter_count(self) -> int:
        """The recipe's model's parameters (built on the meta device: nothing is allocated)."""
        with torch.device("meta"):
            model = timm.create_model(
                self.recipe.get("model_name", "vit_base_patch16_224"),
                pretrained=False,
                **(self.recipe.get("model_kwargs") or {}),
            )
        return sum(parameter.numel() for parameter in model.parameters())

    def checkpoint_bytes(self) -> float:
        """The checkpoints the recipe keeps (``save_total_limit``, 2 by default) and the final model: 12 bytes per
        parameter each (fp32 weights and AdamW's two moments), 4 for the final weights."""
        return self.parameter_count() * (12 * self.recipe.get("save_total_limit", 2) + 4)

    def _download_disk(self) -> str:
        """The release's files already in ``data_dir`` (measured); NIH publishes no sizes, so none is printed for
        files not there yet."""
        present = [self.data_dir / entry.name for entry in RELEASE_FILES if (self.data_dir / entry.name).is_file()]
        unknown = "not known before the files arrive (NIH publishes no sizes); the archives stay packed"
        if not present:
            return unknown
        measured = _gb(sum(path.stat().st_size for path in present))
        return f"{measured} measured in the {len(present)} file(s) already there; for the rest {unknown}"

    def _done_without_inputs(self, step: str) -> bool:
        try:
            return self.is_done(step)
        except (NIHDataError, OSError):  # the files a key reads are not there yet: the step is not done
            return False


def _gb(value: float) -> str:
    return f"~{value / 1e9:.1f} GB"


def _duration(seconds: float) -> str:
    return f"~{seconds / 60:.0f} min" if seconds < 7200 else f"~{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class RunProtocol:
    """How a training run was done, as its files record it: input size, epochs run of those planned, the split
    trained, selected and scored on, how the checkpoint was chosen, and whether the test split took part."""

    resolution: str
    epochs: str
    split: str
    selection: str
    test_use: str


def read_protocol(model_dir: str | os.PathLike, prepared_dir: str | os.PathLike | None = None) -> RunProtocol:
    """Read :class:`RunProtocol` from train.py's ``run_args.yaml``, ``trainer_state.json`` and ``config.json`` in
    ``model_dir`` and the preparation's ``prepare.json``; what a file does not record is said to be missing."""
    model_dir = Path(model_dir)
    missing = "not recorded ({} missing)"
    run_args = _read(model_dir / "run_args.yaml", yaml.safe_load) or {}
    training = next((v for k, v in run_args.items() if k.endswith("TrainingArguments")), None)
    data = run_args.get("DataArguments") or {}
    state = _read(model_dir / "trainer_state.json", json.loads)
    config = _read(model_dir / "config.json", json.loads) or {}
    input_size = (config.get("pretrained_cfg") or {}).get("input_size")
    resolution = f"{input_size[-1]} px" if input_size else missing.format("config.json")

    if training is None or state is None:
        absent = "run_args.yaml" if training is None else "trainer_state.json"
        unknown = missing.format(absent)
        test_use = f"Whether the test split took part in training is {unknown}"
        return RunProtocol(resolution, unknown, _split(prepared_dir, data), unknown, test_use)
    epochs = f"{state.get('epoch') or 0:g} of {training['num_train_epochs']:g}"
    if training.get("early_stopping_patience") and (state.get("epoch") or 0) < training["num_train_epochs"]:
        epochs += " (early stopping)"
    history = state.get("log_history") or []
    metric = training.get("metric_for_best_model")
    if training.get("load_best_model_at_end"):
        evaluations = sum(f"eval_{metric}" in entry for entry in history)
        step = state.get("best_global_step") or _checkpoint_step(state.get("best_model_checkpoint"))
        best = state.get("best_metric")
        selection = f"best of {evaluations} evaluation(s) on `{data.get('eval_split')}` by {metric}" + (
            f" ({best:.4f}, step {step} of {state.get('global_step')})" if best is not None else ""
        )
    else:
        selection = f"the final weights (step {state.get('global_step')}): load_best_model_at_end false, no selection"
    if any(key.startswith("test_") for entry in history for key in entry):
        test_use = "The test split was evaluated during training (trainer_state.json logs test_ metrics)"
    else:
        closing = (model_dir / "test_results.json").is_file()
        after = "train.py's closing evaluation and evaluate.py" if closing else "evaluate.py"
        test_use = (
            "The test split took no part in training or checkpoint selection (trainer_state.json logs no test "
            f"evaluation); it was scored after training, by {after}"
        )
    return RunProtocol(resolution, epochs, _split(prepared_dir, data), selection, test_use)


def _split(prepared_dir: str | os.PathLike | None, data: dict) -> str:
    record = _read(Path(prepared_dir) / PREPARE_RECORD, json.loads) if prepared_dir is not None else None
    if record is None:
        return "not recorded (prepare.json missing)"
    parameters, inputs = record["parameters"], record["inputs"]
    validation = f"`{data.get('eval_split', 'validation')}`"
    fraction = f"{parameters['validation_fraction']:.0%}"
    if parameters.get("config") == "full" and inputs.get("train_val_list") and inputs.get("test_list"):
        return (
            f"train and {validation} ({fraction} of the patients, seed {parameters['split_seed']}) from "
            f"{Path(inputs['train_val_list']['path']).name}; scored on {Path(inputs['test_list']['path']).name}"
        )
    return (
        f"patient-wise random split, seed {parameters['split_seed']}: {validation} {fraction}, test "
        f"{parameters['test_fraction']:.0%} of the patients"
    )


def _read(path: Path, parse: Callable[[str], Any]) -> Any:
    return parse(path.read_text()) if path.is_file() else None


def _checkpoint_step(checkpoint: str | None) -> int | None:
    name = Path(checkpoint).name if checkpoint else ""
    return int(name.removeprefix("checkpoint-")) if name.removeprefix("checkpoint-").isdigit() else None
