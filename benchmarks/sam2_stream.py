"""StreamingSAM2 benchmarks: memory over a long stream, and seconds per frame by model size / precision / objects.

    python benchmarks/sam2_stream.py long  [--frames 2000]   # tiny model: RSS, state bytes, time every 250 frames
    python benchmarks/sam2_stream.py speed [--frames 3]      # hiera_t and hiera_l, 512 and 1024, fp32 and bf16,
                                                              # 1 and 3 objects (random weights, full size)
    python benchmarks/sam2_stream.py all                      # both

Options: --device cpu|cuda, --threads N (CPU threads, default 1), --variants t,l, --sizes 512,1024.
Timing goals live here, not in tests. Random weights time the same as the official ones (same shapes); the masks
they give are meaningless, which does not matter for timing.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import psutil
import torch

from threeam_model.sam2_build import build_sam2
from threeam_model.streaming import StreamingSAM2


def moving_scene(n: int, h: int, w: int, seed: int = 0):
    """A textured background with two moving shapes (uint8 RGB frames)."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 120, size=(h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        f = background.copy()
        cx = (0.2 + 0.6 * ((i % 100) / 100)) * w
        f[(yy - 0.4 * h) ** 2 + (xx - cx) ** 2 < (0.12 * h) ** 2] = (220, 70, 60)
        f[(yy > 0.6 * h) & (yy < 0.85 * h) & (np.abs(xx - (w - cx)) < 0.1 * w)] = (50, 190, 100)
        yield f


def prompts(h: int, w: int):
    """Three object prompts: a click, a box, a click with a negative one."""
    return [
        dict(points=[[0.2 * w, 0.4 * h]]),
        dict(box=[0.7 * w, 0.6 * h, 0.9 * w, 0.85 * h]),
        dict(points=[[0.5 * w, 0.1 * h], [0.2 * w, 0.4 * h]], labels=[1, 0]),
    ]


def rss_mb() -> float:
    return psutil.Process(os.getpid()).memory_info().rss / 2**20


def sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_long(args):
    h, w = 120, 160
    print(f"# long stream: tiny random SAM 2.1, {w}x{h} frames, 2 objects (one added on frame 5), device {args.device}")
    tracker = StreamingSAM2(build_sam2(tiny=True, device=args.device))
    p = prompts(h, w)
    cuda = args.device.startswith("cuda")
    print(f"{'frame':>6} {'rss_MB':>8} {'state_KB':>9} {'ms/frame(last 250)':>19}" + (" cuda_alloc_MB" if cuda else ""))
    t_window = time.perf_counter()
    for i, frame in enumerate(moving_scene(args.frames, h, w)):
        tracker.track(frame)
        if i == 0:
            tracker.add_prompt(1, **p[0])
        if i == 5:
            tracker.add_prompt(2, **p[1])
        if (i + 1) % 250 == 0 or i == 0:
            sync(args.device)
            n = 1 if i == 0 else 250
            ms = 1000 * (time.perf_counter() - t_window) / n
            line = f"{i + 1:6d} {rss_mb():8.1f} {tracker.state_nbytes() / 1024:9.1f} {ms:19.2f}"
            print(line + (f" {torch.cuda.memory_allocated() / 2**20:13.1f}" if cuda else ""), flush=True)
            t_window = time.perf_counter()


def bench_speed(args):
    h, w = 480, 640
    print(f"# speed: random-weight SAM 2.1, {w}x{h} frames, device {args.device}, threads {torch.get_num_threads()}")
    print(f"# {args.frames} timed frames after {args.warmup} warm-up frames; mean s/frame, image encoder, objects")
    print("# s/frame is wall time; cpu_s/frame is this process's CPU time (steadier on a shared machine)")
    print(
        f"{'model':>8} {'size':>5} {'dtype':>9} {'objects':>7} {'s/frame':>9} {'cpu_s/frame':>11} {'encoder_s':>9} "
        f"{'objects_s':>9}"
    )
    p = prompts(h, w)
    for variant in args.variants.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            model = build_sam2(variant, image_size=size, device=args.device)
            for dtype in (torch.float32, torch.bfloat16):
                for n_obj in (1, 3):
                    tracker = StreamingSAM2(model, dtype=dtype)
                    frames = moving_scene(args.frames + args.warmup, h, w)
                    tracker.track(next(frames))
                    for k in range(n_obj):
                        tracker.add_prompt(k + 1, **p[k])
                    for _ in range(args.warmup - 1):
                        tracker.track(next(frames))
                    total = cpu = enc = per_obj = 0.0
                    for frame in frames:
                        sync(args.device)
                        t, c = time.perf_counter(), time.process_time()
                        r = tracker.track(frame)
                        sync(args.device)
                        total += time.perf_counter() - t
                        cpu += time.process_time() - c
                        enc += r.timings["image_encoder"]
                        per_obj += r.timings["objects"]
                    n = args.frames
                    name = {torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype]
                    print(
                        f"hiera_{variant:>2} {size:5d} {name:>9} {n_obj:7d} {total / n:9.3f} {cpu / n:11.3f} "
                        f"{enc / n:9.3f} {per_obj / n:9.3f}",
                        flush=True,
                    )
            del model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["long", "speed", "all"], nargs="?", default="all")
    parser.add_argument("--frames", type=int, default=None, help="frames (long: 2000; speed: 3 timed)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1, help="speed: untimed frames first (the prompt frame is one)")
    parser.add_argument("--variants", default="t,l")
    parser.add_argument("--sizes", default="512,1024")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    frames = args.frames
    if args.what in ("long", "all"):
        args.frames = frames or 2000
        bench_long(args)
    if args.what in ("speed", "all"):
        args.frames = frames or 3
        bench_speed(args)


if __name__ == "__main__":
    main()
