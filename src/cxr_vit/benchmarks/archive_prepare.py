"""Measure preparing the release from its archives against preparing the extracted folder, on synthesized
full-size films (1024x1024 8-bit PNGs of ~550 KB with real NIH names): wall time, CPU time per image and disk.

CPU seconds per image (this process and its workers) is the figure that scales to the 112,120 images: on a
shared machine the wall time depends on what else runs, the CPU time much less.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from pathlib import Path

from ..data.archives import write_archives
from ..data.prepare import prepare_dataset
from .synthetic import write_synthetic_nih


def _cpu_seconds() -> float:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def measure_archive_prepare(
    names_csv: str | os.PathLike,
    num_images: int = 192,
    num_archives: int = 2,
    image_size: int = 256,
    num_proc: tuple[int, ...] = (1, 2),
    synthetic_size: int = 1024,
    work_dir: str | os.PathLike | None = None,
) -> list[dict]:
    """One row per (source, num_proc): images/s, CPU s per image, input and output bytes per image.

    ``synthetic_size``: side of the synthesized films (NIH's is 1024; smaller only to test this quickly).
    """
    with tempfile.TemporaryDirectory(prefix="cxr_vit_archive_bench_", dir=work_dir) as work:
        work = Path(work)
        images_dir, labels_csv = write_synthetic_nih(work / "synthetic", names_csv, num_images, synthetic_size)
        names = sorted(path.name for path in images_dir.iterdir())
        archives_dir = work / "archives"
        write_archives(images_dir, names, archives_dir, num_archives)
        sources = {"extracted folder": images_dir, f"{num_archives} archives": archives_dir}
        rows = []
        for source, path in sources.items():
            for processes in num_proc:
                output = work / f"prepared_{len(rows)}"
                cpu, wall = _cpu_seconds(), time.perf_counter()
                prepare_dataset(path, labels_csv, output, image_size=image_size, num_proc=processes)
                wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
                rows.append(
                    {
                        "source": source,
                        "num_proc": processes,
                        "images": num_images,
                        "images_per_s": num_images / wall,
                        "cpu_s_per_image": cpu / num_images,
                        "input_bytes_per_image": _folder_bytes(path) / num_images,
                        "output_bytes_per_image": _folder_bytes(output / "data") / num_images,
                    }
                )
    return rows


def format_rows(rows: list[dict]) -> str:
    """A Markdown table of :func:`measure_archive_prepare`'s rows."""
    lines = [
        "| source | processes | images/s (wall) | CPU s per image | input KB/image | prepared KB/image |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['source']} | {row['num_proc']} | {row['images_per_s']:.1f} | {row['cpu_s_per_image']:.4f} | "
            f"{row['input_bytes_per_image'] / 1e3:.0f} | {row['output_bytes_per_image'] / 1e3:.1f} |"
        )
    return "\n".join(lines)
