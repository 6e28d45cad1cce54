"""Loss curves from a run's metrics.csv (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import csv
import pathlib

import numpy as np

from threeam_model.train.losses import LOSS_KEYS


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) == 0 or window <= 1:
        return values
    window = min(window, len(values))
    c = np.cumsum(np.insert(values, 0, 0.0))
    out = (c[window:] - c[:-window]) / window
    return np.concatenate([np.cumsum(values[: window - 1]) / np.arange(1, window), out])


def plot_loss_curves(csv_path, out_path, window: int | None = None) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    steps = np.array([int(r["step"]) for r in rows])
    window = window or max(1, len(rows) // 20)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    total = np.array([float(r["loss"]) for r in rows])
    axes[0].plot(steps, total, alpha=0.3, label="loss")
    axes[0].plot(steps, moving_average(total, window), label=f"loss (moving average {window})")
    axes[0].set_xlabel("step")
    axes[0].set_yscale("log")
    axes[0].set_title("weighted total")
    axes[0].legend()
    for key in LOSS_KEYS:
        axes[1].plot(steps, moving_average(np.array([float(r[key]) for r in rows]), window), label=key)
    axes[1].set_xlabel("step")
    axes[1].set_yscale("log")
    axes[1].set_title(f"components (moving average {window})")
    axes[1].legend()
    fig.tight_layout()
    out = pathlib.Path(out_path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
