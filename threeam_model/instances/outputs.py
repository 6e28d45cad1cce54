"""What a segmented scene is written as:

OUT/instances.npz    ids (N,) int32 instance id per scene point (0 = none), scores (N,) float32 per-point
                     consistency in [0, 1], instance_scores (M,) float64 (instance i + 1 at index i)
OUT/instances.ply    the scene points (and mesh faces) coloured by instance (grey = none), with the
                     per-point `instance` and `score` as extra vertex properties
OUT/instances.json   the scene, the instances (id, score, points, centroid, bounds, tracks, frames), the run's
                     statistics and settings, and the evaluation when the scene has ground truth
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from threeam_model.data.ply import write_ply

NPZ_FILE, PLY_FILE, JSON_FILE = "instances.npz", "instances.ply", "instances.json"
NONE_COLOR = (128, 128, 128)


def instance_colors(num: int) -> np.ndarray:
    """(num + 1, 3) uint8: grey for 0, then well-separated hues (golden-ratio steps) for ids 1..num."""
    import colorsys

    out = np.zeros((num + 1, 3), np.uint8)
    out[0] = NONE_COLOR
    for i in range(1, num + 1):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95)
        out[i] = (round(255 * r), round(255 * g), round(255 * b))
    return out


def write_outputs(out_dir, scene, result, record: dict) -> dict[str, pathlib.Path]:
    """Write the three files above for a `Scene3D` and its `InstanceResult`; record: extra JSON fields."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels, scores = result.labels.astype(np.int32), result.point_scores.astype(np.float32)
    instance_scores = np.array([inst["score"] for inst in result.instances], dtype=np.float64)
    np.savez_compressed(out / NPZ_FILE, ids=labels, scores=scores, instance_scores=instance_scores)
    colors = instance_colors(len(result.instances))[labels]
    p = result.points  # the scene's points, or the cloud grown from pointmaps (then without the mesh's faces)
    faces = scene.faces if result.camera_centres is None else None
    vertex = {
        "x": p[:, 0].astype(np.float32),
        "y": p[:, 1].astype(np.float32),
        "z": p[:, 2].astype(np.float32),
        "red": colors[:, 0],
        "green": colors[:, 1],
        "blue": colors[:, 2],
        "instance": labels,
        "score": scores,
    }
    write_ply(out / PLY_FILE, vertex, faces)
    instances = []
    for inst in result.instances:
        pts = p[labels == inst["id"]]
        instances.append(
            {
                **inst,
                "centroid": pts.mean(0).round(4).tolist(),
                "bounds_min": pts.min(0).round(4).tolist(),
                "bounds_max": pts.max(0).round(4).tolist(),
            }
        )
    doc = {"scene": scene.name, "num_points": int(len(p)), **record, "stats": result.stats, "instances": instances}
    (out / JSON_FILE).write_text(json.dumps(doc, indent=1, default=_json_default))
    return {"npz": out / NPZ_FILE, "ply": out / PLY_FILE, "json": out / JSON_FILE}


def write_benchmark_format(pred_dir, scene_name: str, labels: np.ndarray, scores: dict[int, float]) -> pathlib.Path:
    """Predictions in the official ScanNet evaluator's input format, class-agnostic (every mask label 3, as the
    class-agnostic runs feed it): pred_dir/<scene>.txt with one line `pred_mask/<scene>_<i>.txt 3 <score>` per
    instance, and pred_dir/pred_mask/<scene>_<i>.txt with one 0/1 per point. Returns the scene's file."""
    pred_dir = pathlib.Path(pred_dir)
    (pred_dir / "pred_mask").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, inst_id in enumerate(sorted(scores)):
        rel = f"pred_mask/{scene_name}_{i:03d}.txt"
        np.savetxt(pred_dir / rel, (np.asarray(labels) == inst_id).astype(np.int32), fmt="%d")
        lines.append(f"{rel} 3 {scores[inst_id]:f}")
    out = pred_dir / f"{scene_name}.txt"
    out.write_text("".join(line + "\n" for line in lines))
    return out


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


__all__ = ["JSON_FILE", "NPZ_FILE", "PLY_FILE", "instance_colors", "write_benchmark_format", "write_outputs"]
