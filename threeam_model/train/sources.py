"""Build the training scenes named in the config's `data.datasets` list (one reader per scene / video)."""

from __future__ import annotations

import pathlib

from threeam_model.data.frames import VideoSource


def build_sources(datasets: list[dict], seed: int = 0) -> tuple[dict[str, list[VideoSource]], dict[str, float]]:
    """-> ({dataset type: [sources]}, {dataset type: weight}). Types:

    synthetic      procedural scenes rendered in memory: num_scenes, num_frames, width, height, num_objects,
                   lookalike (scene k uses seed `seed * 1000 + k`)
    synthetic_dir  folders written by generate_scene: root (each sub-folder with a scene.json is a scene)
    scannetpp      root (the release's data/), obj_id_root, scenes (list or a text file path; default: all)
    ase            root, scenes (default: every sub-folder with a trajectory.csv)
    mose           root (with JPEGImages/ and Annotations/), videos (default: all)
    """
    from threeam_model.data.readers import ASEScene, MoseVideo, RenderedScene, ScanNetPPScene, SyntheticScene
    from threeam_model.data.synthetic import render_scene

    sources: dict[str, list[VideoSource]] = {}
    weights: dict[str, float] = {}
    for spec in datasets:
        spec = dict(spec)
        kind = spec.pop("type", None)
        weight = float(spec.pop("weight", 1.0))
        if kind == "synthetic":
            n = int(spec.pop("num_scenes", 8))
            opts = {
                k: spec.pop(k) for k in list(spec) if k in ("num_frames", "width", "height", "num_objects", "lookalike")
            }
            found = [RenderedScene(render_scene(seed=seed * 1000 + k, **opts)) for k in range(n)]
            key = "synthetic"
        elif kind == "synthetic_dir":
            root = pathlib.Path(spec.pop("root"))
            found = [SyntheticScene(p.parent) for p in sorted(root.glob("*/scene.json"))]
            key = "synthetic"
        elif kind == "scannetpp":
            root, obj_root = pathlib.Path(spec.pop("root")), pathlib.Path(spec.pop("obj_id_root"))
            scenes = _scene_list(
                spec.pop("scenes", None), lambda r=obj_root: sorted(p.name for p in r.iterdir() if p.is_dir())
            )
            found = [ScanNetPPScene(root, s, obj_root) for s in scenes]
            key = "scannetpp"
        elif kind == "ase":
            root = pathlib.Path(spec.pop("root"))
            scenes = _scene_list(
                spec.pop("scenes", None), lambda r=root: sorted(p.parent.name for p in r.glob("*/trajectory.csv"))
            )
            found = [ASEScene(root, s) for s in scenes]
            key = "ase"
        elif kind == "mose":
            root = pathlib.Path(spec.pop("root"))
            videos = _scene_list(spec.pop("videos", None), lambda r=root: MoseVideo.list_videos(r))
            found = [MoseVideo(root, v) for v in videos]
            key = "mose"
        else:
            raise ValueError(f"unknown dataset type {kind!r}; use synthetic, synthetic_dir, scannetpp, ase or mose")
        if spec:
            raise KeyError(f"dataset {kind}: unknown options {sorted(spec)}")
        if not found:
            raise FileNotFoundError(f"dataset {kind}: no scenes found")
        sources.setdefault(key, []).extend(found)
        weights[key] = weights.get(key, 0.0) + weight
    return sources, weights


def _scene_list(value, default) -> list[str]:
    if value is None:
        return default()
    if isinstance(value, str):
        return [ln.strip() for ln in pathlib.Path(value).read_text().splitlines() if ln.strip()]
    return [str(v) for v in value]
