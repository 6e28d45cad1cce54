"""Cost of threeam-instances on a long generated scene: per-frame time, peak memory, and growth with the length.

    python benchmarks/instances_cost.py                            # 300-frame scene, 20 objects, 100/200/300 frames
    python benchmarks/instances_cost.py --frames 50 100 --objects 8    # a quick look

Generates one scene (160 x 120 frames, with its points) and runs the CLI on its first N frames, each run in a fresh
process on the CPU (one thread), for each configuration:
- `oracle`: ground-truth masks as proposals and as the tracker (the pipeline's own cost: lifting, evidence,
  merging, voting);
- `3am-tiny/gt-prompts`: the tiny random 3AM tracker prompted with the ground-truth masks of each keyframe, so it
  propagates a track for every object like a real run would (its masks are meaningless, its cost is not);
- `3am-tiny/sam2-proposals`: the same tracker with SAM 2's automatic mask generator on keyframes (the random
  model proposes few masks, so this times the generator, not 20 tracks).
Printed per run: ms per frame in the tracker, the proposals and the lifting; the end-of-scene merge + vote and
the superpoint segmentation (once per scene) in seconds; the 3D evidence held at the end; the process's peak RSS
(ru_maxrss, which includes ~0.5 GB of torch and numpy). Then the growth from the shortest to the longest run.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

CONFIGS = {
    "oracle": ["--method", "oracle"],
    "3am-tiny/gt-prompts": ["--method", "3am", "--tiny", "--proposals", "oracle"],
    "3am-tiny/sam2-proposals": ["--method", "3am", "--tiny", "--proposals", "sam2"],
}
CHILD = """
import json, resource, sys, torch
torch.set_num_threads(1)
from threeam_model.cli.instances import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def run_cli(scene: pathlib.Path, out: pathlib.Path, frames: int, extra: list[str]) -> dict:
    args = [str(scene), "-o", str(out), "--quiet", "--device", "cpu", "--max-frames", str(frames), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"threeam-instances failed:\n{proc.stderr[-2000:]}")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    doc = json.loads((out / "instances.json").read_text())
    s = doc["stats"]
    n = doc["data"]["frames"]
    sec = s["seconds"]
    return {
        "frames": n,
        "tracks": s["tracks"],
        "keyframes": s["keyframes"],
        "track_ms": 1000 * sec["track"] / n,
        "proposals_ms": 1000 * sec["proposals"] / n,
        "lift_ms": 1000 * sec["lift"] / n,
        "per_frame_ms": 1000 * (sec["track"] + sec["proposals"] + sec["lift"]) / n,
        "merge_vote_s": sec["merge_and_vote"],
        "superpoints_s": sec["superpoints"],
        "evidence_mb": s["evidence_bytes"] / 2**20,
        "peak_rss_mb": child["maxrss_kb"] / 1024,
        "wall_s": wall,
        "num_points": doc["num_points"],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, nargs="+", default=[100, 200, 300], help="prefix lengths to run")
    p.add_argument("--objects", type=int, default=20)
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--scene-dir", help="reuse (or write) the generated scene here")
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args(argv)
    from threeam_model.data.synthetic import generate_scene

    tmp = tempfile.TemporaryDirectory()
    scene = pathlib.Path(args.scene_dir or tmp.name) / f"cost_{max(args.frames)}f_{args.objects}obj"
    if not (scene / "points.ply").is_file():
        t0 = time.perf_counter()
        generate_scene(scene, seed=0, num_frames=max(args.frames), num_objects=args.objects, with_points=True)
        print(f"generated {scene} in {time.perf_counter() - t0:.1f} s")
    rows = {}
    head = (
        f"{'config':<24} {'frames':>6} {'tracks':>6} {'ms/frame':>9} {'track':>7} {'propose':>7} {'lift':>6} "
        f"{'merge+vote s':>12} {'superpts s':>10} {'evidence MB':>11} {'peak RSS MB':>11}"
    )
    print(head)
    for name in args.configs:
        for n in sorted(args.frames):
            r = run_cli(scene, pathlib.Path(tmp.name) / "out", n, CONFIGS[name])
            rows.setdefault(name, []).append(r)
            cols = (
                f"{r['per_frame_ms']:>9.1f} {r['track_ms']:>7.1f} {r['proposals_ms']:>7.1f} {r['lift_ms']:>6.1f} "
                f"{r['merge_vote_s']:>12.2f} {r['superpoints_s']:>10.2f} {r['evidence_mb']:>11.2f}"
            )
            print(f"{name:<24} {r['frames']:>6} {r['tracks']:>6} {cols} {r['peak_rss_mb']:>11.0f}", flush=True)
    print(
        f"\ngrowth from {min(args.frames)} to {max(args.frames)} frames ({rows[args.configs[0]][0]['num_points']} "
        "scene points):"
    )
    for name, rs in rows.items():
        a, b = rs[0], rs[-1]
        work = b["per_frame_ms"] * b["frames"] / (a["per_frame_ms"] * a["frames"])
        merge = b["merge_vote_s"] / max(a["merge_vote_s"], 1e-9)
        evidence = b["evidence_mb"] / max(a["evidence_mb"], 1e-9)
        print(
            f"  {name:<24} frames x{b['frames'] / a['frames']:.1f}: per-frame work x{work:.2f} (ms/frame "
            f"{a['per_frame_ms']:.1f} -> {b['per_frame_ms']:.1f}), tracks {a['tracks']} -> {b['tracks']}, merge+vote "
            f"x{merge:.2f}, evidence x{evidence:.2f}, peak RSS {a['peak_rss_mb']:.0f} -> {b['peak_rss_mb']:.0f} MB"
        )
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
