"""Run configuration: data arguments, ``CXRTrainingArguments`` and a parser that also reads a YAML file.

Precedence: command-line flags > ``--config file.yaml`` > the defaults below.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments

from ..data.prepare import DEFAULT_SPLIT_SEED
from ..inference import native_bf16
from ..modeling import ModelArguments
from .finetune import DEFAULT_LORA_TARGETS, FINETUNE_MODES, parse_finetune
from .throughput import DEFAULT_SKIP_STEPS

logger = logging.getLogger(__name__)


class RepeatedOption(argparse.Action):
    """A list option that may be given several times (``--dataset_name A --dataset_name B``, or ``A B``): its first
    use on the command line replaces the default or the ``--config`` value, later uses add to it."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        keep = [] if current is self.default or current is None else list(current)
        setattr(namespace, self.dest, keep + list(values))


DEFAULT_DATASET = "data/nih_mini_prepared"


@dataclass
class DataArguments:
    """Which prepared dataset(s) to train on (see ``scripts/prepare_data.py``).

    Several ``dataset_name`` (repeated): train on the union of their splits, with the loss skipping the labels a
    source does not annotate, and validate on each source and on the pooled validation splits.
    """

    dataset_name: list[str] = field(
        default_factory=lambda: [DEFAULT_DATASET],
        metadata={
            "help": "A folder written by scripts/prepare_data.py, or a Hub dataset id; repeat it (--dataset_name A "
            "--dataset_name B) to train on the union of several sources.",
            "action": RepeatedOption,
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset config, if any."})
    train_split: str = field(default="train")
    eval_split: str | None = field(
        default="validation",
        metadata={
            "help": "Split for model selection; none to train only (with --eval_strategy no "
            "--load_best_model_at_end false)."
        },
    )
    test_split: str | None = field(default="test", metadata={"help": "Split reported at the end; none to skip."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate train (debugging)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate eval/test (debugging)."})
    images_dir: str | None = field(
        default=None,
        metadata={"help": "With labels_csv: prepare dataset_name from these NIH files first if it does not exist."},
    )
    labels_csv: str | None = field(default=None, metadata={"help": "NIH label CSV for that preparation."})
    prepare_image_size: int | None = field(default=None, metadata={"help": "--image_size of that preparation."})
    prepare_config: str = field(
        default="sample",
        metadata={"help": "--config of that preparation: sample (any subset) or full.", "choices": ["sample", "full"]},
    )
    train_val_list: str | None = field(
        default=None, metadata={"help": "Official train_val_list.txt for that preparation (--prepare_config full)."}
    )
    test_list: str | None = field(
        default=None, metadata={"help": "Official test_list.txt for that preparation (--prepare_config full)."}
    )
    split_seed: int = field(
        default=DEFAULT_SPLIT_SEED,
        metadata={"help": "Seed of that preparation's patient-wise split; independent of --seed (the training seed)."},
    )
    overwrite_prepared: bool = field(
        default=False,
        metadata={"help": "Rebuild dataset_name when it was prepared from other files or settings (else: an error)."},
    )
    image_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where --input_pipeline cache keeps its uint8 image caches (default: <dataset_name>/cache for a "
            "prepared folder, ~/.cache/cxr_vit/<id> for a Hub dataset)."
        },
    )

    def __post_init__(self):
        if isinstance(self.dataset_name, (str, os.PathLike)):  # one name, from Python or a --config file
            self.dataset_name = [str(self.dataset_name)]
        self.dataset_name = [str(name) for name in self.dataset_name]
        if not self.dataset_name:
            raise ValueError("--dataset_name: give at least one dataset")
        if (self.images_dir is None) != (self.labels_csv is None):
            raise ValueError("give both --images_dir and --labels_csv (to prepare the dataset), or neither")
        if self.images_dir is not None and len(self.dataset_name) > 1:
            raise ValueError(
                "--images_dir prepares one dataset: prepare each source with scripts/prepare_data.py, then give the "
                "prepared folders as --dataset_name"
            )
        if self.eval_split in ("", "none", "None"):
            self.eval_split = None
        if self.test_split in ("", "none", "None"):
            self.test_split = None


INPUT_PIPELINES = ("cache", "datasets")
EMA_EVAL = ("ema", "raw", "both")
LR_BASE_SCALES = ("sqrt", "linear")
# --fsdp defaults (a given --fsdp_config overrides each): FSDP2, one unit per timm block (the classes are read from
# the model, cxr_vit.training.distributed.configure_fsdp), checkpoints saved sharded, one shard file per process.
FSDP_DEFAULTS = {"version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "state_dict_type": "SHARDED_STATE_DICT"}
# Per-device batches when none is given: a GPU needs large batches to keep its matrix units busy (small ones
# leave it waiting on kernel launches); on a CPU a small batch keeps steps short.
GPU_BATCH_SIZE, CPU_TRAIN_BATCH_SIZE, CPU_EVAL_BATCH_SIZE = 256, 32, 64


def scaled_learning_rate(base: float, base_batch_size: int, global_batch_size: int, rule: str) -> float:
    """timm's rule: ``base * (global / base_batch_size)``, square-rooted for adaptive optimizers like AdamW."""
    if rule not in LR_BASE_SCALES:
        raise ValueError(f"--lr_base_scale must be one of {LR_BASE_SCALES}, got {rule!r}")
    ratio = global_batch_size / base_batch_size
    return base * (ratio**0.5 if rule == "sqrt" else ratio)


def default_num_workers(input_pipeline: str, on_gpu: bool) -> int:
    """DataLoader workers per process that keep a GPU fed without taking cores the model needs.

    Cache workers only copy uint8 batches out of a memory map, microseconds an image: 4 are plenty.
    ``datasets`` workers decode and resize PNGs, milliseconds an image: they get every core of this process
    but one. On a CPU the model itself is the bottleneck: no workers.
    """
    if not on_gpu:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_process = max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return min(4, per_process) if input_pipeline == "cache" else max(1, per_process - 1)


@dataclass
class CXRTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with defaults for multi-label chest X-ray fine-tuning.

    Parameters that differ from ``TrainingArguments``:
        eval_strategy / save_strategy / logging_strategy: ``"epoch"``.
        load_best_model_at_end: ``True``, by ``metric_for_best_model="auc_macro"`` (14-finding macro ROC-AUC).
        lr_scheduler_type: ``"cosine"`` with ``warmup_steps=0.05`` (a ratio of all steps).
        learning_rate: ``None`` = ``lr_base`` (1e-4 for a global batch of 256) scaled to the global batch by
            ``lr_base_scale`` (timm's convention): 5e-5 at 64, 1e-4 at 256, 2e-4 at 1,024. A value given is
            used as it is. weight_decay ``0.05``.
        per_device_train_batch_size / per_device_eval_batch_size: ``None`` = 256 on a GPU; 32 / 64 on a CPU.
        bf16: ``None`` = on exactly when the GPU supports it natively (Ampere or newer).
        remove_unused_columns: ``False`` (the image column is consumed by ``with_transform``).
        report_to: ``["tensorboard"]``; save_total_limit ``2``.
        run_name: ``None`` = the output folder's name and the start time (``quickstart-20261204-153134``): the
            final evaluations, logged after training ends, rejoin the training run by this name (trackio
            resumes a run by name; without one they would start a second run). project: ``"cxr-vit"``.
        optim: ``"adamw_torch_fused"`` (one kernel per step for all parameters).
        dataloader_num_workers: ``None`` = 0 on a CPU (the model needs the cores); on a GPU up to 4 for the
            cache pipeline (its workers only copy uint8 batches out of a memory map), all but one of this
            process's cores for the ``datasets`` pipeline (its workers decode PNGs).
        dataloader_persistent_workers: ``None`` = on whenever there are workers.
        torch_compile: left off (``--torch_compile true`` compiles the model at the start for faster steps
            afterwards; worth it for runs of more than a few minutes on a GPU).
        logging_nan_inf_filter: ``False``: the filter reads every step's loss on the host, which blocks the
            host on the GPU once per step; the trainer's own non-finite check stops training instead. (Off,
            transformers also keeps non-finite batches in ``eval_loss``, which then shows them as NaN.)
        accelerator_config: ``{"non_blocking": True}`` on a GPU when none is given: batches are copied from
            pinned memory asynchronously, not with a copy that waits for the previous step to finish.

    Parameters of our own:
        input_pipeline: ``"cache"`` (default) decodes each split once into a uint8 memory-mapped cache and reads
            a sorted batch per worker call; ``"datasets"`` decodes each image in DataLoader workers
            (``with_transform``). Both give the device the same uint8 squares, which the same batch transform
            augments (training) or crops (evaluation), so they train and evaluate alike.
        pos_weight: weight positives per label by the train split's negative/positive ratio in the BCE loss.
        early_stopping_patience: stop after this many evaluations without a better ``auc_macro``.
        lr_base / lr_base_batch_size / lr_base_scale: the learning rate when ``learning_rate`` is not given.
        train_drop_last: drop the last, short training batch of each epoch; ``None`` = with ``torch_compile``
            (a short batch would make torch.compile build the model again, in the middle of training).
        throughput_skip_steps: steps before ``train_steady_images_per_second`` starts timing (compile, start-up).
        train_metrics: log ``epoch_auc_macro``, the macro AUC over each epoch's (augmented) training batches, for
            the training curves; off by default (it keeps every training prediction until the epoch ends).
        layer_decay: layer-wise learning-rate decay (timm's groups). Whatever it is, weight decay never applies
            to biases, norms, position embeddings and class/register tokens (timm's ``no_weight_decay()``).
        ema_decay / ema_eval: an exponential moving average of the weights (timm's ``ModelEmaV3``), evaluated
            and kept as the best model by default; checkpoints hold both, and resume restores both.
        aug_ops / aug_magnitude / aug_num_ops: X-ray intensity augmentation (brightness, contrast, gamma,
            sharpness, noise) drawn per image on the batch path of both input pipelines, after the geometric
            augmentation (crop 75-100%, rotation up to 10 degrees, 5% shifts; no horizontal flip).
        finetune / lora_*: which parameters train (:mod:`cxr_vit.training.finetune`): ``full``, ``linear``
            (the head on cached features of the frozen backbone), ``lora`` (peft adapters merged at the end) or
            ``partial:N`` (the last N blocks); the optimizer holds the trainable parameters only.

    Sharding: ``--fsdp`` takes ``FSDP_DEFAULTS`` under any ``--fsdp_config`` given (FSDP2, timm blocks as units,
    sharded checkpoints; the final model is gathered into one safetensors file). It needs GPUs: accelerate keeps
    the FSDP plugin only for accelerator devices and would run CPU processes as plain data parallel, so a CPU run
    with ``--fsdp`` is an error. ``--gradient_checkpointing`` recomputes each timm block in the backward pass.

    A plain ``python scripts/train.py`` on a machine with several GPUs trains with torch's DataParallel: one
    process, ``per_device_train_batch_size`` on each GPU. The default learning rate is scaled to that real
    global batch; ``accelerate launch --multi_gpu`` is the faster way to use several GPUs.
    """

    output_dir: str = field(default="outputs/cxr-vit", metadata={"help": "Where checkpoints and results go."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate: no / steps / epoch."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to checkpoint: no / steps / epoch / best."})
    logging_strategy: str = field(default="epoch", metadata={"help": "When to log: no / steps / epoch."})
    load_best_model_at_end: bool = field(default=True, metadata={"help": "Keep the best checkpoint, not the last."})
    metric_for_best_model: str | None = field(default="auc_macro", metadata={"help": "Model-selection metric."})
    greater_is_better: bool | None = field(default=True, metadata={"help": "Higher metric is better."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warmup: steps, or a fraction of all steps if < 1."})
    learning_rate: float | None = field(
        default=None, metadata={"help": "Peak AdamW learning rate; default: lr_base scaled to the global batch."}
    )
    lr_base: float = field(default=1e-4, metadata={"help": "Learning rate for a global batch of lr_base_batch_size."})
    lr_base_batch_size: int = field(default=256, metadata={"help": "The global batch lr_base is meant for."})
    lr_base_scale: str = field(
        default="sqrt",
        metadata={"help": "How lr_base scales with the global batch (sqrt: AdamW).", "choices": list(LR_BASE_SCALES)},
    )
    per_device_train_batch_size: int | None = field(
        default=None, metadata={"help": "Training batch per device; default: 256 on a GPU, 32 on a CPU."}
    )
    per_device_eval_batch_size: int | None = field(
        default=None, metadata={"help": "Evaluation batch per device; default: 256 on a GPU, 64 on a CPU."}
    )
    logging_nan_inf_filter: bool = field(
        default=False, metadata={"help": "Hide non-finite losses from logs (a host sync per step); we stop on them."}
    )
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay."})
    num_train_epochs: float = field(default=10.0, metadata={"help": "Epochs."})
    bf16: bool | None = field(default=None, metadata={"help": "bf16 autocast; default: when the GPU supports it."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the image column for transforms."})
    report_to: None | str | list[str] = field(
        default="tensorboard",
        metadata={"help": "Loggers: tensorboard, trackio (pip install -e '.[tracking]'), wandb, none, ..."},
    )
    run_name: str | None = field(
        default=None,
        metadata={"help": "Run name in the loggers (trackio, wandb); default: the output folder's name and the time."},
    )
    project: str = field(default="cxr-vit", metadata={"help": "Trackio project the run is logged to."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept (best is never removed)."})
    optim: str = field(default="adamw_torch_fused", metadata={"help": "Optimizer (transformers' OptimizerNames)."})
    dataloader_num_workers: int | None = field(
        default=None,
        metadata={
            "help": "DataLoader workers per process; default: 0 on CPU; on a GPU up to 4 (cache) or all cores but one "
            "(datasets)."
        },
    )
    dataloader_persistent_workers: bool | None = field(
        default=None, metadata={"help": "Keep DataLoader workers alive between epochs; default: when there are any."}
    )
    input_pipeline: str = field(
        default="cache",
        metadata={
            "help": "cache: uint8 memmap cache + batch augmentation on the device; datasets: PIL per image in workers.",
            "choices": list(INPUT_PIPELINES),
        },
    )
    pos_weight: bool = field(
        default=False, metadata={"help": "Weight each label's positives by its train negative/positive ratio."}
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after this many evaluations without improvement."}
    )
    train_drop_last: bool | None = field(
        default=None,
        metadata={
            "help": "Drop the last partial training batch each epoch (evaluation keeps every image); default: on "
            "with --torch_compile, so the compiled model never meets a new batch shape mid-training."
        },
    )
    layer_decay: float | None = field(
        default=None,
        metadata={
            "help": "Layer-wise learning-rate decay (e.g. 0.55-0.75 when fine-tuning): each layer below the head "
            "gets this factor once more. Default: one rate for all layers."
        },
    )
    ema_decay: float | None = field(
        default=None, metadata={"help": "Keep an exponential moving average of the weights (e.g. 0.9998)."}
    )
    ema_eval: str = field(
        default="ema",
        metadata={
            "help": "With --ema_decay: evaluate and keep as best the EMA weights (ema), the raw ones (raw), or "
            "evaluate both and keep the EMA (both; the raw metrics are logged as eval_raw_*).",
            "choices": list(EMA_EVAL),
        },
    )
    aug_ops: str = field(
        default="all",
        metadata={
            "help": "Intensity augmentations drawn per image: comma-separated among brightness, contrast, gamma, "
            "sharpness, noise; 'all' or 'none'."
        },
    )
    aug_magnitude: float = field(
        default=5.0, metadata={"help": "Strength of the intensity augmentations, 0 (off) to 10 (RandAugment-like)."}
    )
    aug_num_ops: int = field(default=2, metadata={"help": "Intensity augmentations per image."})
    train_metrics: bool = field(
        default=False,
        metadata={"help": "Log the macro AUC of each epoch's training batches (epoch_auc_macro) for the curves."},
    )
    finetune: str = field(
        default="full",
        metadata={
            "help": f"Which parameters train: {', '.join(FINETUNE_MODES)} (linear: the head on the frozen "
            "backbone's features, cached once per split; lora: peft adapters, merged into the weights at the end; "
            "partial:N: the last N blocks)."
        },
    )
    lora_rank: int = field(default=8, metadata={"help": "--finetune lora: the adapters' rank."})
    lora_alpha: float = field(default=16.0, metadata={"help": "--finetune lora: the adapters' scale numerator."})
    lora_dropout: float = field(default=0.0, metadata={"help": "--finetune lora: dropout on the adapters' input."})
    lora_target_modules: str = field(
        default=DEFAULT_LORA_TARGETS,
        metadata={"help": "--finetune lora: comma-separated module names to adapt (timm ViT: qkv, proj, fc1, fc2)."},
    )
    throughput_skip_steps: int = field(
        default=DEFAULT_SKIP_STEPS,
        metadata={"help": "Steps not timed in train_steady_images_per_second (compile, worker start)."},
    )

    def __post_init__(self):
        on_gpu = not self.use_cpu and torch.cuda.is_available()
        if self.bf16 is None:
            # native bf16 (Ampere and newer): older GPUs only emulate it, slower than fp32
            self.bf16 = bool(on_gpu and native_bf16("cuda"))
        if not on_gpu:
            self.dataloader_pin_memory = False  # nothing to pin for; avoids a warning per DataLoader
        if self.train_drop_last is None:
            self.train_drop_last = self.torch_compile
        if self.per_device_train_batch_size is None:
            self.per_device_train_batch_size = GPU_BATCH_SIZE if on_gpu else CPU_TRAIN_BATCH_SIZE
        if self.per_device_eval_batch_size is None:
            self.per_device_eval_batch_size = GPU_BATCH_SIZE if on_gpu else CPU_EVAL_BATCH_SIZE
        if self.accelerator_config is None and on_gpu and self.dataloader_pin_memory:
            self.accelerator_config = {"non_blocking": True}
        if self.input_pipeline not in INPUT_PIPELINES:
            raise ValueError(f"--input_pipeline must be one of {INPUT_PIPELINES}, got {self.input_pipeline!r}")
        if self.dataloader_num_workers is None:
            self.dataloader_num_workers = default_num_workers(self.input_pipeline, on_gpu)
        if self.dataloader_persistent_workers is None:
            self.dataloader_persistent_workers = self.dataloader_num_workers > 0
        if self.early_stopping_patience is not None and not self.load_best_model_at_end:
            raise ValueError("--early_stopping_patience needs --load_best_model_at_end true")
        if self.ema_eval not in EMA_EVAL:
            raise ValueError(f"--ema_eval must be one of {EMA_EVAL}, got {self.ema_eval!r}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"--ema_decay must be between 0 and 1 (e.g. 0.9998), got {self.ema_decay}")
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"--layer_decay must be in (0, 1] (e.g. 0.65), got {self.layer_decay}")
        if self.fsdp:
            self._resolve_fsdp(on_gpu)
        finetune_kind, _ = parse_finetune(self.finetune)
        if finetune_kind == "lora" and self.ema_decay is not None:
            raise ValueError("--ema_decay averages plain weights; it does not combine with --finetune lora")
        if self.throughput_skip_steps < 1:
            raise ValueError(f"--throughput_skip_steps must be at least 1, got {self.throughput_skip_steps}")
        if self.run_name is None:
            self.run_name = f"{Path(os.path.abspath(self.output_dir)).name}-{time.strftime('%Y%m%d-%H%M%S')}"
        scale_learning_rate = self.learning_rate is None
        if scale_learning_rate:
            self.learning_rate = self.lr_base  # a placeholder until the devices (and so the global batch) are known
        super().__post_init__()
        if scale_learning_rate:
            self.learning_rate = scaled_learning_rate(
                self.lr_base, self.lr_base_batch_size, self.global_train_batch_size, self.lr_base_scale
            )
        if self.n_gpu > 1:
            logger.warning(
                "%d GPUs in one process: torch DataParallel, global batch %d. `accelerate launch --multi_gpu "
                "--num_processes %d scripts/train.py ...` trains faster.",
                self.n_gpu, self.global_train_batch_size, self.n_gpu,
            )  # fmt: skip

    def _resolve_fsdp(self, on_gpu: bool) -> None:
        if not on_gpu:
            raise ValueError(
                "--fsdp needs GPUs: accelerate keeps its FSDP plugin only for accelerator devices and would silently "
                "run CPU processes as plain data parallel (every process holding the whole model). On a CPU, drop "
                "--fsdp (torchrun then runs data parallel over gloo)."
            )
        if self.ema_decay is not None:
            raise ValueError("--ema_decay keeps a full copy of the weights in each process; not with --fsdp")
        config = self.fsdp_config
        if isinstance(config, str):
            config = json.loads(Path(config).read_text())
        config = {key.removeprefix("fsdp_"): value for key, value in (config or {}).items()}
        self.fsdp_config = {**FSDP_DEFAULTS, **config}

    @property
    def global_train_batch_size(self) -> int:
        """Images per optimizer step: per device x GPUs of this process (DataParallel) x accumulation x processes."""
        return self.train_batch_size * self.gradient_accumulation_steps * self.world_size


ARGUMENT_CLASSES = (ModelArguments, DataArguments, CXRTrainingArguments)


def _set_defaults_from_yaml(parser: HfArgumentParser, path: str) -> None:
    """Make the YAML file's values the parser's defaults, so explicit flags still win."""
    values = yaml.safe_load(Path(path).read_text()) or {}
    actions = {action.dest: action for action in parser._actions}
    unknown = sorted(set(values) - set(actions))
    if unknown:
        raise ValueError(f"{path}: unknown option(s) {unknown}")
    for key, value in values.items():
        action = actions[key]
        # YAML reads 1e-4 as a string; convert through the option's own type like a flag would be.
        if isinstance(value, str) and action.type not in (None, str):
            value = action.type(value)
        values[key] = value
    parser.set_defaults(**values)
    # A value from the file satisfies a required option.
    for key in values:
        actions[key].required = False


def parse_args(args: list[str] | None = None) -> tuple[ModelArguments, DataArguments, CXRTrainingArguments]:
    """Parse ``[--config F.yaml] [--flag value ...]`` into the three argument dataclasses."""
    args = list(sys.argv[1:] if args is None else args)
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    parser.add_argument("--config", default=None, help="YAML file of options; command-line flags override it.")
    known, _ = parser.parse_known_args(args)
    if known.config:
        _set_defaults_from_yaml(parser, known.config)
    *dataclasses, remaining = parser.parse_args_into_dataclasses(args=args, return_remaining_strings=True)
    remaining = [item for item in remaining if item]
    if remaining:
        parser.error(f"unrecognized arguments: {' '.join(remaining)}")
    model_args, data_args, training_args = dataclasses[:3]
    return model_args, data_args, training_args


def save_run_args(path: str | Path, *arguments) -> None:
    """Write the resolved arguments as YAML next to the outputs, for reproducibility."""
    resolved = {}
    for argument in arguments:
        values = argument.to_dict() if hasattr(argument, "to_dict") else asdict(argument)
        resolved[type(argument).__name__] = values
    Path(path).write_text(yaml.safe_dump(resolved, sort_keys=False, default_flow_style=False))
