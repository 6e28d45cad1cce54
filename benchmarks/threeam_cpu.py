"""CPU cost of 3AM, measured in one run (random weights: speed does not depend on them).

1. Per-frame time of 3AM versus SAM 2 alone plus MUSt3R alone, at the same sizes (goal: 3AM <= 1.15 x the sum).
   The three run frame by frame in turn on the same frames, so load changes on a shared machine hit all three.
2. Marginal cost of each extra object: 3AM with 1 and with 4 objects (goal: <= 10% of a one-object frame), next
   to SAM 2's own (the merger and MUSt3R run once per frame, so the per-object work is SAM 2's).
3. A long stream with tiny configs: RSS and per-frame time from frame 100 to the end (default 5,000 frames),
   2 objects, MUSt3R keyframes evicted by its cap (goal: drift < 5% for both).

    python benchmarks/threeam_cpu.py                     # SAM 2.1-t @512 + MUSt3R 224, then the long tiny stream
    python benchmarks/threeam_cpu.py --variant b+ --image-size 1024 --must3r 512 --frames 6
    python benchmarks/threeam_cpu.py --long-frames 600   # shorter drift check
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np
import psutil
import torch

from threeam_model.data.synthetic import render_scene
from threeam_model.factory import TrackerConfig, build_tracker
from threeam_model.must3r.stream import Must3rStream
from threeam_model.streaming import MergedFeatures, StreamingSAM2


def frames_for(n: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    """A rendered clip (camera circling a room) looped to n frames."""
    clip = render_scene(seed=seed, num_frames=min(n, 60), width=width, height=height, num_objects=4)["rgb"]
    return np.stack([clip[i % len(clip)] for i in range(n)])


def prompt_boxes(tracker, frame: np.ndarray, n: int) -> None:
    h, w = frame.shape[:2]
    for k in range(n):  # n boxes side by side
        x0 = int(w * k / n)
        tracker.add_prompt(k + 1, box=[x0 + 2, h // 4, x0 + w // n - 2, 3 * h // 4])


def per_frame_costs(cfg: TrackerConfig, frames: np.ndarray, warmup: int) -> dict:
    """Median per-frame seconds of SAM 2 alone (1 and 4 objects), MUSt3R alone, 3AM with 1 and with 4 objects."""
    threeam1 = build_tracker(cfg)
    # the other runs share its stateless models (SAM 2, MUSt3R, merger), each with its own streaming state

    def must3r_stream():
        s = threeam1.features.must3r
        return Must3rStream(
            s.model, image_size=s.image_size, max_memory_images=s.max_memory_images, feat_layers=s.feat_layers
        )

    options = dict(max_cond_frames=cfg.max_conditioning_frames, max_objects=cfg.max_objects)
    merged4 = MergedFeatures(must3r_stream(), threeam1.features.merger)
    threeam4 = StreamingSAM2(threeam1.model, features=merged4, **options)
    sam2 = StreamingSAM2(threeam1.model, **options)
    sam2_4 = StreamingSAM2(threeam1.model, **options)
    must3r = must3r_stream()
    runs = {
        "sam2_1obj": lambda f: sam2.track(f),
        "sam2_4obj": lambda f: sam2_4.track(f),
        "must3r": lambda f: must3r.step(f),
        "3am_1obj": lambda f: threeam1.track(f),
        "3am_4obj": lambda f: threeam4.track(f),
    }
    times = {k: [] for k in [*runs, "merger"]}
    for i, frame in enumerate(frames):
        for name, run in runs.items():
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = run(frame)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
                if name == "3am_1obj":
                    times["merger"].append(out.timings["merger"])
        if i == 0:
            prompt_boxes(sam2, frame, 1)
            prompt_boxes(sam2_4, frame, 4)
            prompt_boxes(threeam1, frame, 1)
            prompt_boxes(threeam4, frame, 4)
    return {k: statistics.median(v) for k, v in times.items()}


def long_stream(n: int, start: int, objects: int, seed: int) -> dict:
    """Tiny 3AM on an n-frame stream: per-frame time and RSS, compared between frames [start, start+w) and the end."""
    cfg = TrackerConfig(tiny=True, seed=seed, method="3am", must3r_max_keyframes=8, max_conditioning_frames=4)
    tracker = build_tracker(cfg)
    clip = frames_for(60, 96, 72, seed)
    proc = psutil.Process()
    times, cpu, rss, state = [], [], [], []
    t_start = time.perf_counter()
    for i in range(n):
        frame = clip[i % len(clip)]
        c0 = time.process_time()
        t0 = time.perf_counter()
        tracker.track(frame)
        if i == 0:
            prompt_boxes(tracker, frame, objects)
        elif i % 500 == 250:  # a correction now and then: conditioning frames hit their cap too
            tracker.add_prompt(1, points=[[10, 10]])
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        rss.append(proc.memory_info().rss)
        state.append(tracker.state_nbytes())
        if i % 1000 == 999:
            print(
                f"  frame {i + 1}: {np.mean(times[-1000:]) * 1e3:.1f} ms/frame, RSS {rss[-1] / 2**20:.1f} MiB, "
                f"state {state[-1] / 2**10:.0f} KiB, {time.perf_counter() - t_start:.0f} s",
                flush=True,
            )
    w = min(500, (n - start) // 2)
    early, late = slice(start, start + w), slice(n - w, n)
    return {
        "window": w,
        "time_early": float(np.median(times[early])),
        "time_late": float(np.median(times[late])),
        "cpu_early": float(np.median(cpu[early])),
        "cpu_late": float(np.median(cpu[late])),
        "rss_at_start": rss[start],
        "rss_end": rss[-1],
        "rss_max": max(rss[start:]),
        "state_at_start": state[start],
        "state_end": state[-1],
        "must3r_memory_images": len(tracker.features.must3r.memory_images),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="t", help="SAM 2.1 size for parts 1-2 (default: t)")
    p.add_argument("--image-size", type=int, default=512, help="SAM 2 input size (default: 512)")
    p.add_argument("--must3r", default="224", choices=("224", "512"), help="MUSt3R release (default: 224)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--frames", type=int, default=8, help="frames timed in parts 1-2 (after --warmup)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--long-frames", type=int, default=5000, help="length of the tiny stream (0 = skip part 3)")
    p.add_argument("--long-start", type=int, default=100)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: steadier timings)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-full", action="store_true", help="only the tiny long stream")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", UserWarning)
    print(
        f"threeam_cpu: torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}"
    )

    if not args.skip_full:
        cfg = TrackerConfig(
            method="3am",
            variant=args.variant,
            image_size=args.image_size,
            must3r=args.must3r,
            sam2_checkpoint=None,
            must3r_checkpoint=None,
            seed=args.seed,
        )
        print(
            f"\n[1-2] {cfg.describe()}, random weights, {args.width}x{args.height} frames, "
            f"{args.frames} timed after {args.warmup} warm-up"
        )
        frames = frames_for(args.warmup + args.frames, args.width, args.height, args.seed)
        c = per_frame_costs(cfg, frames, args.warmup)
        both = c["sam2_1obj"] + c["must3r"]
        print(f"  SAM 2 alone (1 object)      {c['sam2_1obj'] * 1e3:9.1f} ms/frame")
        print(f"  MUSt3R alone                {c['must3r'] * 1e3:9.1f} ms/frame")
        print(f"  sum                         {both * 1e3:9.1f} ms/frame")
        ratio = c["3am_1obj"] / both
        print(
            f"  3AM (1 object)              {c['3am_1obj'] * 1e3:9.1f} ms/frame = {ratio:.3f} x the sum "
            f"(goal <= 1.15: {'met' if ratio <= 1.15 else 'NOT met'})"
        )
        extra = (c["3am_4obj"] - c["3am_1obj"]) / 3
        share = extra / c["3am_1obj"]
        print(f"    of which the Feature Merger {c['merger'] * 1e3:9.1f} ms/frame")
        print(f"  3AM (4 objects)             {c['3am_4obj'] * 1e3:9.1f} ms/frame")
        print(
            f"  marginal cost per object    {extra * 1e3:9.1f} ms = {share * 100:.1f}% of a one-object frame "
            f"(goal <= 10%: {'met' if share <= 0.10 else 'NOT met'})"
        )
        sam2_extra = (c["sam2_4obj"] - c["sam2_1obj"]) / 3
        print(
            f"  for comparison, SAM 2 alone: {c['sam2_4obj'] * 1e3:.1f} ms/frame with 4 objects, "
            f"{sam2_extra * 1e3:.1f} ms per extra object (per-object work is SAM 2's own; 3AM adds none)"
        )

    if args.long_frames:
        n = args.long_frames
        print(f"\n[3] tiny 3AM stream, {n} frames, 2 objects, MUSt3R memory cap 8 images, conditioning cap 4")
        r = long_stream(n, args.long_start, 2, args.seed)
        dt = r["time_late"] / r["time_early"] - 1
        dc = r["cpu_late"] / r["cpu_early"] - 1
        dr = r["rss_end"] / r["rss_at_start"] - 1
        w = r["window"]
        # CPU time is what the tracker itself costs; wall time also moves with the machine's load
        print(
            f"  per-frame CPU time (median of {w}): frames {args.long_start}-{args.long_start + w}: "
            f"{r['cpu_early'] * 1e3:.2f} ms, last {w}: {r['cpu_late'] * 1e3:.2f} ms, drift {dc * 100:+.1f}% "
            f"(goal < 5%: {'met' if abs(dc) < 0.05 else 'NOT met'})"
        )
        print(
            f"  per-frame wall time (median of {w}): {r['time_early'] * 1e3:.2f} ms ->"
            f" {r['time_late'] * 1e3:.2f} ms, "
            f"drift {dt * 100:+.1f}% (includes load changes on a shared machine)"
        )
        print(
            f"  RSS: frame {args.long_start} {r['rss_at_start'] / 2**20:.1f} MiB, end {r['rss_end'] / 2**20:.1f} MiB "
            f"(max {r['rss_max'] / 2**20:.1f}), drift {dr * 100:+.2f}% "
            f"(goal < 5%: {'met' if abs(dr) < 0.05 else 'NOT met'})"
        )
        print(
            f"  tracker state: frame {args.long_start} {r['state_at_start'] / 2**10:.0f} KiB, end "
            f"{r['state_end'] / 2**10:.0f} KiB; MUSt3R memory images at the end: {r['must3r_memory_images']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
