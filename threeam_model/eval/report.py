"""Benchmark reports: a summary over all sequences, a markdown table laid out like the paper's, plots, videos.

The summary pools objects across sequences (each object one vote, the averaging in threeam_model.eval.metrics),
for the Whole Set and for the Selected Subset, and adds the frame-pooled means and DAVIS J / F for comparison.
"""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np

from threeam_model.eval.metrics import METRIC_NAMES, ObjectScores, average_objects, pool_frames
from threeam_model.eval.runner import to_json

SUMMARY_FILE = "summary.json"
TABLE_FILE = "table.md"


def _objects(results: list[dict]):
    for r in results:
        for obj_id, e in r["objects"].items():
            yield r["sequence"], obj_id, e


def _block(entries: list[dict]) -> dict:
    scores = [ObjectScores(**{k: e[k] for k in ObjectScores.__dataclass_fields__}) for e in entries]
    out = average_objects(scores)
    out["frame_pooled"] = pool_frames(
        [e["per_frame"]["iou"] for e in entries], [np.asarray(e["per_frame"]["gt_area"]) > 0 for e in entries]
    )
    out["J_mean"] = _mean([e["J"]["mean"] for e in entries])
    out["F_mean"] = _mean([e["F"]["mean"] for e in entries if "F" in e])
    return out


def _mean(values) -> float:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else math.nan


def summarise(results: list[dict]) -> dict:
    """Whole Set and Selected Subset over all objects of all sequences."""
    entries = [e for _, _, e in _objects(results)]
    first = results[0] if results else {}
    return {
        "averaging": "per object: each metric is the mean over that object's frame set; the table value is the "
        "plain mean over objects (objects whose frame set is empty are left out of that metric)",
        "method": first.get("method"),
        "protocol": first.get("protocol"),
        "settings": first.get("settings"),
        "sequences": [r["sequence"] for r in results],
        "whole": _block(entries),
        "subset": _block([e for e in entries if e["selected_subset"]]),
        "seconds_per_step": _mean([r["timing"]["seconds_per_step"] for r in results]),
    }


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def markdown_table(rows: dict[str, dict], title: str | None = None) -> str:
    """Table 2 layout: per method, Whole Set and Selected Subset (IoU, Positive IoU, Successful IoU), plus the
    object counts and DAVIS J / F over the Whole Set."""
    head = ["Method"]
    for part in ("Whole Set", "Selected Subset"):
        head += [f"{part} IoU", f"{part} Positive IoU", f"{part} Successful IoU", f"{part} #obj"]
    head += ["J (whole)", "F (whole)"]
    lines = [f"**{title}**", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for label, s in rows.items():
        cells = [label]
        for part in ("whole", "subset"):
            cells += [_fmt(s[part][m]) for m in METRIC_NAMES] + [str(s[part]["n_objects"])]
        cells += [_fmt(s["whole"]["J_mean"]), _fmt(s["whole"]["F_mean"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def describe_settings(summary: dict) -> str:
    st = summary.get("settings") or {}
    sub = st.get("subset", {})
    return (
        f"Protocol: {summary.get('protocol')}. Averaging: mean over objects of per-object means. "
        f"Selected Subset: >= {sub.get('min_segments')} visible segments longer than l_min = {sub.get('l_min')} frames "
        f"(visible = GT mask >= {sub.get('min_visible_pixels')} px). Sequences: {len(summary.get('sequences', []))}."
    )


# ------------------------------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_object_spread(per_method: dict[str, list[dict]], path) -> pathlib.Path:
    """Per-object IoU, Positive IoU and Successful IoU of each method: one dot per object, box for the spread."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), sharey=True)
    labels = list(per_method)
    for ax, metric in zip(axes, METRIC_NAMES, strict=True):
        data = []
        for label in labels:
            vals = [e[metric] for _, _, e in _objects(per_method[label])]
            data.append([v for v in vals if v is not None and not math.isnan(v)])
        ax.boxplot([d if d else [np.nan] for d in data], showfliers=False)
        ax.set_xticks(range(1, len(labels) + 1), labels, rotation=20)
        rng = np.random.default_rng(0)
        for i, d in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(d)), d, s=10, alpha=0.6)
        ax.set_title(metric.replace("_", " "))
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("per-object value")
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_per_frame(result: dict, path, max_objects: int = 8) -> pathlib.Path:
    """Per-frame IoU of each object, with the frames where its GT is visible shaded and its conditioning frame."""
    plt = _pyplot()
    items = list(result["objects"].items())[:max_objects]
    fig, axes = plt.subplots(len(items), 1, figsize=(10, 1.6 * len(items) + 0.6), sharex=True, squeeze=False)
    x = np.arange(result["num_frames"])
    for ax, (obj_id, e) in zip(axes[:, 0], items, strict=True):
        visible = np.asarray(e["per_frame"]["gt_area"]) > 0
        ax.fill_between(x, 0, 1, where=visible, step="mid", color="tab:green", alpha=0.15, label="GT visible")
        ax.plot(x, e["per_frame"]["iou"], color="tab:blue", lw=1.2, label="IoU")
        ax.axvline(e["conditioning_frame"], color="tab:red", ls="--", lw=1, label="conditioning frame")
        subset = " (subset)" if e["selected_subset"] else ""
        ax.set_ylabel(f"obj {obj_id}{subset}", fontsize=8)
        ax.set_ylim(-0.05, 1.05)
    axes[0, 0].legend(loc="upper right", fontsize=7, ncol=3)
    axes[0, 0].set_title(f"{result['sequence']}: per-frame IoU ({result['protocol']})")
    axes[-1, 0].set_xlabel("frame")
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_overlay_video(source, label_dir, path, fps: float = 10.0) -> pathlib.Path:
    """mp4 (mp4v) of the frames with the predicted labels blended in colour and the GT outlines drawn in white."""
    from PIL import Image

    from threeam_model.data.video import write_mp4
    from threeam_model.eval.runner import frame_name
    from threeam_model.viz import DAVIS_COLORS, WHITE, draw_outlines, draw_overlay

    path = pathlib.Path(path)

    def frames():
        for i in range(len(source)):
            f = source.frame(i)
            labels = np.asarray(Image.open(pathlib.Path(label_dir) / f"{frame_name(source, i)}.png"))
            rgb = draw_overlay(np.ascontiguousarray(f.rgb), labels, 0.5, colors=DAVIS_COLORS, captions=False)
            yield draw_outlines(rgb, f.instance > 0, WHITE)

    write_mp4(path, frames(), fps)
    return path


def write_report(results: list[dict], out_dir, label: str, plots: bool = True) -> dict:
    """summary.json, table.md and plots/ for one method's results; returns the summary."""
    out_dir = pathlib.Path(out_dir)
    summary = summarise(results)
    (out_dir / SUMMARY_FILE).write_text(json.dumps(to_json(summary), indent=1))
    table = markdown_table({label: summary}, title=f"{label}: {', '.join(summary['sequences'])}")
    (out_dir / TABLE_FILE).write_text(table + "\n" + describe_settings(summary) + "\n")
    if plots:
        plot_dir = out_dir / "plots"
        plot_dir.mkdir(exist_ok=True)
        plot_object_spread({label: results}, plot_dir / "object_iou_spread.png")
        for r in results:
            plot_per_frame(r, plot_dir / f"{r['sequence']}_per_frame_iou.png")
    return summary


def compare(summary_files: list, labels: list[str] | None = None) -> str:
    """One markdown table from several runs' summary.json files (e.g. SAM 2 and 3AM on the same data)."""
    rows = {}
    for i, f in enumerate(summary_files):
        s = json.loads(pathlib.Path(f).read_text())
        rows[labels[i] if labels else f"{(s.get('method') or {}).get('label', pathlib.Path(f).parent.name)}"] = s
    return markdown_table(rows)


__all__ = [
    "compare",
    "markdown_table",
    "plot_object_spread",
    "plot_per_frame",
    "summarise",
    "write_overlay_video",
    "write_report",
]
