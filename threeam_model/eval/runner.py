"""Run one tracker over sequences under one protocol, score every object, write masks and per-sequence results.

Per sequence: scan the ground truth once (per-object mask areas), pick each object's conditioning frame, run the
protocol (objects sharing a conditioning frame share a run), and score each prediction as it arrives, so nothing
but per-frame numbers is held in memory. Results go to ``<out>/<sequence>/result.json``; a sequence whose
result file exists with the same settings fingerprint is skipped (resume after an interruption).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pathlib
import time

import numpy as np
from PIL import Image
from tqdm import tqdm

from threeam_model.data.frames import VideoSource
from threeam_model.eval.metrics import (
    DAVIS_BOUND_TH,
    average_objects,
    davis_f,
    davis_statistics,
    iou_from_counts,
    mask_counts,
    object_scores,
)
from threeam_model.eval.protocols import (
    PROTOCOLS,
    SubsetRule,
    conditioning_frame,
    count_segments,
    group_by_conditioning_frame,
    in_selected_subset,
    run_protocol,
)
from threeam_model.interface import Tracker

RESULT_FILE = "result.json"
RESULT_FORMAT = "threeam-bench-sequence-v1"


@dataclasses.dataclass
class BenchSettings:
    protocol: str = "bidirectional"  # or "two_view"
    subset: SubsetRule = dataclasses.field(default_factory=SubsetRule)
    boundary: bool = True  # also compute DAVIS F (J is the per-frame IoU itself)
    bound_th: float = DAVIS_BOUND_TH
    write_masks: bool = True  # per-object PNG masks and a per-frame palette label PNG
    max_objects: int | None = None  # score only the first N object ids of a sequence (None = all)

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        if self.max_objects is not None and self.max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {self.max_objects}")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def fingerprint(settings: BenchSettings, method: dict, data: dict) -> str:
    blob = json.dumps({"settings": settings.as_dict(), "method": method, "data": data}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _FrameCache:
    """Keeps the last loaded frame: the tracker and the scorer read the same frame back to back."""

    def __init__(self, source: VideoSource):
        self.source, self.index, self.frame = source, None, None

    def get(self, index: int):
        if index != self.index:
            self.index, self.frame = index, self.source.frame(index)
        return self.frame


def frame_name(source: VideoSource, index: int) -> str:
    name = getattr(source, "frame_name", None)
    return name(index) if name else f"{index:05d}"


def scan_ground_truth(source: VideoSource, max_objects: int | None = None) -> dict[int, np.ndarray]:
    """{obj_id: per-frame GT mask area} over the whole sequence (objects never visible are dropped)."""
    counts: dict[int, np.ndarray] = {}
    for i in range(len(source)):
        ids, n = np.unique(source.frame(i, with_rgb=False).instance, return_counts=True)
        for obj_id, c in zip(ids.tolist(), n.tolist(), strict=True):
            if obj_id > 0:
                counts.setdefault(obj_id, np.zeros(len(source), np.int64))[i] = c
    ids = sorted(counts)[:max_objects]
    return {k: counts[k] for k in ids}


def evaluate_sequence(
    tracker: Tracker,
    source: VideoSource,
    settings: BenchSettings,
    out_dir: pathlib.Path | None = None,
    progress: bool = True,
) -> dict:
    """Run and score one sequence; returns the per-sequence result dict (also written to out_dir if given)."""
    n = len(source)
    areas = scan_ground_truth(source, settings.max_objects)
    if not areas:
        raise ValueError(f"sequence {source.name}: no object is ever visible in the ground truth")
    cond_of = {k: conditioning_frame(a) for k, a in areas.items()}
    per_frame = {
        k: {
            "iou": np.full(n, np.nan),
            "f": np.full(n, np.nan),
            "pred_area": np.zeros(n, np.int64),
            "score": np.full(n, np.nan),
        }
        for k in areas
    }
    cache = _FrameCache(source)
    image_size = None
    mask_dir = out_dir / "masks" if (out_dir is not None and settings.write_masks) else None
    steps = 0
    t_track = 0.0
    bar = tqdm(total=n * len(group_by_conditioning_frame(cond_of)), desc=source.name, disable=not progress, leave=False)
    for cond, obj_ids in group_by_conditioning_frame(cond_of).items():
        prompt_labels = cache.get(cond).instance
        prompts = {k: prompt_labels == k for k in obj_ids}
        stream = run_protocol(settings.protocol, tracker, lambda t: cache.get(t).rgb, n, cond, prompts)
        while True:
            t0 = time.perf_counter()
            try:
                t, results = next(stream)
            except StopIteration:
                break
            t_track += time.perf_counter() - t0
            steps += 1
            gt = cache.get(t).instance
            image_size = gt.shape
            for obj_id, res in results.items():
                pred = res.mask
                if pred.shape != gt.shape:
                    raise RuntimeError(f"tracker returned a {pred.shape} mask for a {gt.shape} frame")
                gt_mask = gt == obj_id
                inter, union, _, n_pred = mask_counts(gt_mask, pred)
                rec = per_frame[obj_id]
                rec["iou"][t] = iou_from_counts(inter, union)
                rec["pred_area"][t] = n_pred
                rec["score"][t] = res.score
                if settings.boundary:
                    rec["f"][t] = davis_f(gt_mask, pred, bound_th=settings.bound_th)
                if mask_dir is not None:
                    d = mask_dir / f"{obj_id}"
                    d.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(pred.astype(np.uint8) * 255).save(d / f"{frame_name(source, t)}.png")
            bar.update(1)
    bar.close()

    objects = {}
    for obj_id, a in areas.items():
        rec = per_frame[obj_id]
        if np.isnan(rec["iou"]).any():
            raise RuntimeError(f"{source.name}: object {obj_id} was not scored on every frame")
        present = a >= settings.subset.min_visible_pixels
        scores = object_scores(rec["iou"], a > 0)
        entry = {
            **scores.as_dict(),
            "conditioning_frame": cond_of[obj_id],
            "visible_segments": count_segments(present, settings.subset.l_min),
            "selected_subset": in_selected_subset(a, settings.subset),
            "J": dataclasses.asdict(davis_statistics(rec["iou"])),
            "per_frame": {
                "iou": rec["iou"].tolist(),
                "gt_area": a.tolist(),
                "pred_area": rec["pred_area"].tolist(),
                "score": rec["score"].tolist(),
            },
        }
        if settings.boundary:
            entry["F"] = dataclasses.asdict(davis_statistics(rec["f"]))
            entry["per_frame"]["f"] = rec["f"].tolist()
        objects[str(obj_id)] = entry

    if mask_dir is not None:
        write_label_pngs(source, sorted(areas), mask_dir, out_dir / "labels")

    result = {
        "format": RESULT_FORMAT,
        "sequence": source.name,
        "dataset": getattr(source, "dataset", "unknown"),
        "num_frames": n,
        "frame_names": [frame_name(source, i) for i in range(n)],
        "image_size": list(image_size),
        "protocol": settings.protocol,
        "objects": objects,
        "summary": summarise_objects(objects),
        "timing": {"tracker_steps": steps, "tracker_seconds": t_track, "seconds_per_step": t_track / max(steps, 1)},
    }
    return result


def summarise_objects(objects: dict) -> dict:
    """Whole-set and Selected-Subset macro averages (and DAVIS J / F means) over the given objects."""
    from threeam_model.eval.metrics import ObjectScores

    def block(entries):
        scores = [ObjectScores(**{k: e[k] for k in ObjectScores.__dataclass_fields__}) for e in entries]
        out = average_objects(scores)
        out["J_mean"] = _nanmean([e["J"]["mean"] for e in entries])
        out["F_mean"] = _nanmean([e["F"]["mean"] for e in entries if "F" in e])
        return out

    entries = list(objects.values())
    return {"whole": block(entries), "subset": block([e for e in entries if e["selected_subset"]])}


def to_json(value):
    """NaN (an undefined metric) becomes null, so the files are strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


def _nanmean(values) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def write_label_pngs(source: VideoSource, obj_ids: list[int], mask_dir: pathlib.Path, label_dir: pathlib.Path):
    """One palette PNG per frame, pixel = object id (DAVIS result format). Where independent per-object runs
    overlap, the higher id is painted last and wins; the scores use the per-object masks, not these."""
    from threeam_model.data.labels_io import write_annotation

    label_dir.mkdir(parents=True, exist_ok=True)
    for i in range(len(source)):
        name = frame_name(source, i)
        labels = None
        for obj_id in obj_ids:
            m = np.asarray(Image.open(mask_dir / f"{obj_id}" / f"{name}.png")) > 0
            if labels is None:
                labels = np.zeros(m.shape, np.uint8)
            labels[m] = obj_id if obj_id < 256 else 255
        write_annotation(label_dir / f"{name}.png", labels)


def run_benchmark(
    tracker: Tracker,
    sources: list[VideoSource],
    settings: BenchSettings,
    out_dir,
    method: dict,
    data: dict | None = None,
    progress: bool = True,
    resume: bool = True,
) -> list[dict]:
    """Evaluate every sequence into ``out_dir/<sequence>/``; skip those already done with the same fingerprint."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(settings, method, data or {})
    results = []
    for source in tqdm(sources, desc="sequences", disable=not progress or len(sources) < 2):
        seq_dir = out_dir / source.name
        path = seq_dir / RESULT_FILE
        if resume and path.is_file():
            old = json.loads(path.read_text())
            if old.get("fingerprint") == fp:
                old["resumed"] = True
                results.append(old)
                continue
        seq_dir.mkdir(parents=True, exist_ok=True)
        result = evaluate_sequence(tracker, source, settings, seq_dir, progress=progress)
        result.update(fingerprint=fp, method=method, settings=settings.as_dict(), data=data or {})
        result = to_json(result)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=1, allow_nan=False))
        tmp.replace(path)  # atomic: a crash never leaves a half-written result that resume would trust
        result["resumed"] = False
        results.append(result)
    return results


__all__ = [
    "BenchSettings",
    "evaluate_sequence",
    "fingerprint",
    "run_benchmark",
    "scan_ground_truth",
    "summarise_objects",
    "to_json",
]
