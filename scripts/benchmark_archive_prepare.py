"""Prepare from the release's archives vs from the extracted folder, on synthesized full-size NIH-like films.

    python scripts/benchmark_archive_prepare.py [--num_images 192] [--num_archives 2] [--image_size 256]

Prints a Markdown table: images/s (wall), CPU seconds per image, input and prepared kilobytes per image (the
figures docs/data.md quotes). About a minute on a 2-core CPU, most of it synthesizing the PNGs.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from cxr_vit.arguments import parse_script_arguments
from cxr_vit.benchmarks.archive_prepare import format_rows, measure_archive_prepare

REPO = Path(__file__).resolve().parents[1]


@dataclass
class ArchiveBenchmarkArguments:
    num_images: int = field(default=192, metadata={"help": "Synthesized 1024 px images."})
    num_archives: int = field(default=2, metadata={"help": "Archives they are packed into."})
    image_size: int = field(default=256, metadata={"help": "Prepare --image_size."})
    names_csv: str = field(default=str(REPO / "data/nih_mini/sample_labels.csv"), metadata={"help": "NIH rows."})
    output_json: str | None = field(default=None, metadata={"help": "Also write the rows here."})


if __name__ == "__main__":
    (args,) = parse_script_arguments(ArchiveBenchmarkArguments)
    rows = measure_archive_prepare(args.names_csv, args.num_images, args.num_archives, args.image_size)
    print(format_rows(rows))
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(rows, indent=2) + "\n")
