"""The instances3d benchmark's report: a table laid out like the paper's Table 5, and a plot of AP per IoU."""

from __future__ import annotations

import pathlib

import numpy as np

from threeam_model.instances.evaluator import OVERLAPS

TABLE_FILE, SUMMARY_FILE, PLOT_FILE = "table.md", "summary.json", "ap_per_iou.png"
# The paper's Table 5 (ScanNet200, class-agnostic; x100): method, type, uses 3D GT, AP, AP50, AP25.
PAPER_TABLE_5 = (
    ("SAMPro3D", "Offline", "Yes", 18.0, 32.8, 56.1),
    ("Open3DIS", "Offline", "Yes", 34.6, 43.1, 48.5),
    ("SAI3D", "Offline", "Yes", 28.2, 47.2, 67.9),
    ("SAM2Object", "Offline", "Yes", 34.0, 52.7, 70.3),
    ("SAM3D", "Online", "Yes", 20.2, 35.7, 55.5),
    ("ESAM", "Online", "Yes", 42.2, 63.7, 79.6),
    ("3AM (paper)", "Online", "No", 47.3, 59.7, 75.3),
)


def _pct(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.1f}"


def table(label: str, pooled: dict, per_scene: dict[str, dict], data: str) -> str:
    """Markdown: our row (pooled over the scenes), per-scene rows, then the paper's rows for reference."""
    head = "| Method | Type | 3D GT | AP | AP50 | AP25 |\n|---|---|---|---|---|---|\n"
    lines = [
        f"## Class-agnostic 3D instance segmentation on {data} ({len(per_scene)} scene(s), pooled)",
        "",
        head + f"| {label} | Online | No | {_pct(pooled['ap'])} | {_pct(pooled['ap50'])} | {_pct(pooled['ap25'])} |",
    ]
    lines += ["", "Per scene:", "", "| Scene | AP | AP50 | AP25 | GT | predictions |", "|---|---|---|---|---|---|"]
    for name, r in per_scene.items():
        lines.append(
            f"| {name} | {_pct(r['ap'])} | {_pct(r['ap50'])} | {_pct(r['ap25'])} | {r['num_gt']} | {r['num_pred']} |"
        )
    lines += ["", "The paper's Table 5 (ScanNet200, not these scenes), for reference:", "", head.rstrip("\n")]
    lines += [f"| {m} | {t} | {g} | {a} | {a50} | {a25} |" for m, t, g, a, a50, a25 in PAPER_TABLE_5]
    return "\n".join(lines) + "\n"


def plot_ap_per_iou(rows: dict[str, list[float]], path) -> pathlib.Path:
    """AP against the IoU threshold (0.25, 0.5 ... 0.9), one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(OVERLAPS)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, aps in rows.items():
        ax.plot(OVERLAPS[order], np.asarray(aps)[order] * 100, marker="o", label=label)
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("AP (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["PAPER_TABLE_5", "PLOT_FILE", "SUMMARY_FILE", "TABLE_FILE", "plot_ap_per_iou", "table"]
