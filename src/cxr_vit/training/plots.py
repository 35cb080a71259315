"""The training-curves figure: loss and 14-finding macro AUC per epoch, train and validation."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # headless: training runs on servers
import matplotlib.pyplot as plt  # noqa: E402


def epoch_series(log_history: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of every log entry that has ``key``."""
    entries = [entry for entry in log_history if key in entry and "epoch" in entry]
    return [entry["epoch"] for entry in entries], [entry[key] for entry in entries]


def plot_training_curves(log_history: list[dict], path: str | os.PathLike) -> None:
    """Four panels, as in the seed notebook, with AUC in place of element-wise accuracy."""
    panels = [
        ("epoch_loss", "Train loss (BCE)"),
        ("eval_loss", "Validation loss (BCE)"),
        ("epoch_auc_macro", "Train macro AUC (14 findings)"),
        ("eval_auc_macro", "Validation macro AUC (14 findings)"),
    ]
    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    for axis, (key, title) in zip(axes.flat, panels, strict=False):
        epochs, values = epoch_series(log_history, key)
        axis.plot(epochs, values, marker="o", color="tab:blue" if key.startswith("epoch") else "tab:orange")
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        if "auc" in key:
            axis.set_ylim(0.0, 1.0)
            axis.axhline(0.5, color="gray", linestyle=":", linewidth=1)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
