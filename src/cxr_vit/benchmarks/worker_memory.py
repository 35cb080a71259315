"""Memory per DataLoader worker: reading the memmap cache must not copy it into each worker."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.cache import IMAGES_FILE
from ..data.cached_dataset import CachedImageDataset, collate_batch


def process_memory_kb(mapped_name: str = IMAGES_FILE) -> tuple[int, int]:
    """(anonymous kB, resident kB of mappings of files named ``mapped_name``) of this process, from smaps."""
    anonymous = mapped = 0
    in_file = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            key = line.split(maxsplit=1)[0]
            if not key.endswith(":"):  # a mapping's header line: "start-end perms offset dev inode [path]"
                in_file = line.rstrip().endswith(mapped_name)
            elif key == "Anonymous:":
                anonymous += int(line.split()[1])
            elif key == "Rss:" and in_file:
                mapped += int(line.split()[1])
    return anonymous, mapped


class _MemoryProbe(Dataset):
    """Wraps a :class:`CachedImageDataset`; each batch also reports the worker's memory before and after."""

    def __init__(self, inner: CachedImageDataset):
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        before = process_memory_kb()[0]
        batch = self.inner.__getitems__(indices)
        after, mapped = process_memory_kb()
        batch["probe"] = torch.tensor([os.getpid(), before, after, mapped])
        return batch


def measure_worker_memory(cache_dir: Path, num_workers: int = 2) -> dict[str, Any]:
    """Read a whole cache through worker processes: their private memory must not grow by a dataset copy."""
    if not Path("/proc/self/smaps").is_file():
        return {"status": "not measured (needs Linux /proc)"}
    loader = DataLoader(
        _MemoryProbe(CachedImageDataset(cache_dir)),
        batch_size=64,
        shuffle=True,
        num_workers=num_workers,
        collate_fn=collate_batch,
    )
    first: dict[int, int] = {}
    last: dict[int, tuple[int, int]] = {}
    for batch in loader:
        pid, before, after, mapped = batch["probe"].tolist()
        first.setdefault(pid, before)
        last[pid] = (after, mapped)
    growth = {pid: (last[pid][0] - first[pid]) / 1024 for pid in first}
    return {
        "cache_mb": (cache_dir / IMAGES_FILE).stat().st_size / 2**20,
        "workers": len(first),
        "max_worker_private_growth_mb": max(growth.values()),
        "max_worker_cache_mapped_mb": max(mapped for _, mapped in last.values()) / 1024,
        "note": "private: anonymous memory grown over a full epoch; mapped: shared page-cache pages of the memmap",
    }
