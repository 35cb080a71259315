"""The options of ``scripts/benchmark.py`` (what to measure, on which images, how long)."""

from __future__ import annotations

from dataclasses import dataclass, field

NOT_MEASURED = "not measured yet"


MIN_IMAGES = 24  # fewer rows can leave a patient-wise split empty


@dataclass
class BenchmarkArguments:
    """Options of ``scripts/benchmark.py``; the defaults run in about 20 s on a 2-core CPU."""

    images_dir: str | None = field(default=None, metadata={"help": "Real NIH PNGs; default: synthesize them."})
    labels_csv: str | None = field(default=None, metadata={"help": "Their label CSV (either NIH format)."})
    names_csv: str = field(
        default="data/nih_mini/sample_labels.csv",
        metadata={"help": "Real NIH rows that name the synthesized images (the repository's bundled CSV)."},
    )
    output_json: str | None = field(default=None, metadata={"help": "Write the results here as JSON."})
    num_images: int = field(default=32, metadata={"help": f"Images to use (at least {MIN_IMAGES})."})
    synthetic_size: int = field(default=1024, metadata={"help": "Side of synthesized PNGs (NIH: 1024)."})
    prepare_image_size: int = field(default=256, metadata={"help": "--image_size of the prepare step."})
    model_name: str = field(default="vit_base_patch16_224", metadata={"help": "timm architecture."})
    image_size: int = field(default=224, metadata={"help": "Model input size."})
    cpu_batch_size: int = field(
        default=32,
        metadata={"help": "Batch of our CPU measurement (at 64 x 224 px the 38 MB output is page-faulted anew)."},
    )
    cpu_seconds: float = field(default=1.5, metadata={"help": "Seconds per CPU pipeline, over 3 rounds."})
    read_cache_mb: int = field(
        default=128,
        metadata={"help": "Our reads use the cache repeated to this size, so batches come from RAM, not CPU caches."},
    )
    batch_size: int = field(default=256, metadata={"help": "Our GPU training batch."})
    gpu_steps: int = field(default=30, metadata={"help": "Timed GPU steps per measurement."})
    gpu_warmup_steps: int = field(default=5, metadata={"help": "Untimed steps first (torch.compile runs here)."})
    num_workers: int = field(default=4, metadata={"help": "DataLoader workers of our plain-loop GPU run."})
    torch_compile: bool = field(default=True, metadata={"help": "torch.compile our model on the GPU."})
    flops_sizes: str = field(
        default="224,384,448,512",
        metadata={"help": "Input sizes whose training FLOPs per image are counted (comma-separated; '' to skip)."},
    )
    train_script: str = field(
        default="scripts/train.py", metadata={"help": "The training script timed end to end (accelerate launch)."}
    )
    accelerate_config: str = field(default="accelerate_config.yaml", metadata={"help": "Its accelerate config."})
    train_script_timeout: int = field(
        default=1200, metadata={"help": "Seconds before a hung training-script run is stopped (an error)."}
    )
    work_dir: str | None = field(default=None, metadata={"help": "Keep the files here (default: a temp dir)."})

    def __post_init__(self):
        if self.num_images < MIN_IMAGES:
            raise ValueError(f"--num_images must be at least {MIN_IMAGES}, got {self.num_images}")
        if (self.images_dir is None) != (self.labels_csv is None):
            raise ValueError("give both --images_dir and --labels_csv, or neither (synthesized images)")
