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


def plot_training_curves(log_history: list[dict], path: str | os.PathLike, weighted_loss: bool = False) -> None:
    """Four panels: train / validation loss and macro AUC per epoch.

    ``weighted_loss``: the run weighted positives (``--pos_weight``), so both loss panels show the weighted BCE
    (the unweighted one is ``eval_bce`` in the results). The train AUC exists only with ``--train_metrics``.
    """
    loss_name = "BCE, positives weighted" if weighted_loss else "BCE"
    panels = [
        ("loss", f"Train loss ({loss_name})"),
        ("eval_loss", f"Validation loss ({loss_name})"),
        ("epoch_auc_macro", "Train macro AUC (14 findings)"),
        ("eval_auc_macro", "Validation macro AUC (14 findings)"),
    ]
    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    for axis, (key, title) in zip(axes.flat, panels, strict=False):
        epochs, values = epoch_series(log_history, key)
        axis.plot(epochs, values, marker="o", color="tab:orange" if key.startswith("eval") else "tab:blue")
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        if "auc" in key:
            axis.set_ylim(0.0, 1.0)
            axis.axhline(0.5, color="gray", linestyle=":", linewidth=1)
        if not values:
            hints = {"loss": "no training log", "epoch_auc_macro": "not computed (--train_metrics)"}
            hint = hints.get(key, "no evaluation")
            axis.text(0.5, 0.5, hint, ha="center", va="center", transform=axis.transAxes, color="gray")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
