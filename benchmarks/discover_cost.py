"""What discovery and the per-object 3D outputs cost on the CPU, at 640x480 on a generated RGB-D clip.

    python benchmarks/discover_cost.py                 # tiny and SAM 2.1-t@512 (random weights), 4 objects
    python benchmarks/discover_cost.py --models tiny --points-per-side 8

Prints, per model: one discovery (SAM 2's automatic mask generator with points_per_side^2 prompts, then the
selection and the mask prompts) in ms, the tracked frame in ms (median over frames), and the per-frame cost of the
3D outputs (lifting every object's mask with exact depth, its box, centroid and capped points; message packing
excluded) in ms and as a share of the tracked frame. Random weights: the masks are meaningless, the times are not.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_models import prompt_side_by_side, sam2_by_name

from threeam_model.data.synthetic import render_scene
from threeam_model.discovery import DiscoverySettings, discover
from threeam_model.instances.proposals import SamProposalParams, SamProposals
from threeam_model.interface import CameraGeometry
from threeam_model.objects3d import Object3DSettings, objects_from_frame
from threeam_model.streaming import StreamingSAM2


def run(name: str, clip: dict, objects: int, frames: int, points_per_side: int) -> dict:
    tracker = StreamingSAM2(sam2_by_name(name))
    first = tracker.track(clip["rgb"][0])
    prompt_side_by_side(tracker, objects, width=clip["rgb"].shape[2])
    params = SamProposalParams(points_per_side=points_per_side, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    generator = SamProposals(tracker.model, params)
    t0 = time.perf_counter()
    found = discover(tracker, clip["rgb"][0], first.objects, generator, DiscoverySettings(min_score=0.0), 16)
    discover_ms = (time.perf_counter() - t0) * 1e3
    track_ms, lift_ms = [], []
    for t in range(1, frames + 1):
        t0 = time.perf_counter()
        result = tracker.track(clip["rgb"][t])
        t1 = time.perf_counter()
        camera = CameraGeometry(clip["depth"][t], clip["K"], clip["poses"][t])
        objects_from_frame(result.objects, camera, Object3DSettings(), in_world=True)
        t2 = time.perf_counter()
        track_ms.append((t1 - t0) * 1e3)
        lift_ms.append((t2 - t1) * 1e3)
    track, lift = statistics.median(track_ms), statistics.median(lift_ms)
    return {"discover": discover_ms, "found": len(found), "track": track, "lift": lift, "share": lift / track}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny,t512")
    ap.add_argument("--objects", type=int, default=4)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--points-per-side", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clip = render_scene(seed=0, num_frames=args.frames + 1, width=640, height=480, num_objects=args.objects)
    print(f"640x480, {args.objects} objects, {args.threads} thread(s), points_per_side {args.points_per_side}")
    print("| model | discover ms (new objects) | track ms/frame | 3D ms/frame | 3D share |")
    print("|---|---|---|---|---|")
    for name in args.models.split(","):
        r = run(name, clip, args.objects, args.frames, args.points_per_side)
        print(
            f"| {name} | {r['discover']:.0f} ({r['found']}) | {r['track']:.1f} | {r['lift']:.2f} | "
            f"{100 * r['share']:.1f}% |"
        )


if __name__ == "__main__":
    main()
