"""Tracking FPS on a GPU: 3AM (and SAM 2 alone) at full size, random weights, bfloat16 autocast; and the streaming
engine with many objects against the official SAM2VideoPredictor.

One script, one run, well under 10 minutes on an H100 (a time budget stops each part early and says so):

    python benchmarks/device_fps.py                      # both parts, on cuda
    python benchmarks/device_fps.py --part objects       # only the many-object part
    python benchmarks/device_fps.py --tiny --frames 3    # CPU smoke test of the script itself

Part `3am`: SAM 2.1 t / b+ / l x MUSt3R 224 / 512, 1 and 4 objects, with the median time of every stage of a 3AM
frame (FrameResult.timings, 1 object). Part `objects`: SAM 2.1-t at 512 and 1024 px,
1 / 4 / 16 objects, batched vs per-object, compile off / on, and the official `SAM2VideoPredictor` on the same
clip in the same run (its `propagate_in_video` over a JPEG folder, objects prompted on frame 0); at 1024 the
16-object frame time is set against memory attention's arithmetic alone (605 GFLOP per object and frame).

Random weights: speed does not depend on them (MUSt3R's keyframe policy does, a little: the count of keyframes
is printed). Frames are 640x480 renders of a synthetic room; FPS counts `track()` calls (all objects) per second,
timed after warm-up with CUDA synchronisation.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np
import torch

from threeam_model.data.synthetic import render_scene
from threeam_model.factory import TrackerConfig, build_tracker
from threeam_model.streaming import StreamingSAM2

COMBOS = [("t", "224"), ("t", "512"), ("b+", "224"), ("b+", "512"), ("l", "224"), ("l", "512")]
# FrameResult.timings of a 3AM frame, in the table's order: MUSt3R's stages are device times (CUDA events), the
# others host times around the engine's steps
STAGES_3AM = (
    "image_encoder",
    "must3r_encode",
    "must3r_decode",
    "must3r_postprocess",
    "must3r_pose",
    "must3r_coverage",
    "must3r",
    "merger",
    "objects",
    "results",
    "total",
)


def sync(device) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prompt(tracker, frame: np.ndarray, n: int) -> None:
    h, w = frame.shape[:2]
    for k in range(n):
        x0 = int(w * k / n)
        tracker.add_prompt(k + 1, box=[x0 + 2, h // 4, x0 + w // n - 2, 3 * h // 4])


def fps(tracker, frames: np.ndarray, objects: int, warmup: int, device) -> float:
    return fps_and_stages(tracker, frames, objects, warmup, device)[0]


def fps_and_stages(tracker, frames: np.ndarray, objects: int, warmup: int, device) -> tuple[float, dict]:
    """`fps`, and the median milliseconds of every stage in the timed frames' FrameResult.timings."""
    tracker.reset()
    tracker.track(frames[0])
    prompt(tracker, frames[0], objects)
    for f in frames[1 : 1 + warmup]:
        tracker.track(f)
    sync(device)
    timed, stages = frames[1 + warmup :], []
    t0 = time.perf_counter()
    for f in timed:
        stages.append(tracker.track(f).timings)
    sync(device)
    rate = len(timed) / (time.perf_counter() - t0)
    return rate, {k: 1e3 * float(np.median([t.get(k, np.nan) for t in stages])) for k in STAGES_3AM}


MEMORY_ATTENTION_GFLOP_1024 = 605.0  # per object and frame, SAM 2.1 at 1024 px (counted earlier)


def official_fps(model, frames: np.ndarray, objects: int, warmup: int, device) -> float:
    """The official predictor over the same frames (written as JPEGs, as it loads videos), objects on frame 0."""
    import tempfile

    from PIL import Image

    with tempfile.TemporaryDirectory() as folder:
        for i, f in enumerate(frames):
            Image.fromarray(f).save(f"{folder}/{i:05d}.jpg", quality=95)
        state = model.init_state(folder)
        h, w = frames.shape[1:3]
        for k in range(objects):
            x0 = int(w * k / objects)
            box = np.array([x0 + 2, h // 4, x0 + w // objects - 2, 3 * h // 4], np.float32)
            model.add_new_points_or_box(state, 0, k + 1, box=box)
        times = []
        sync(device)
        t = time.perf_counter()
        for _ in model.propagate_in_video(state):
            sync(device)
            now = time.perf_counter()
            times.append(now - t)
            t = now
    timed = times[1 + warmup :]
    return len(timed) / sum(timed)


def objects_part(args, frames: np.ndarray, device: str, dtype: str, t_start: float) -> None:
    """Many objects: batched vs per-object, compile off / on, and the official predictor (see the docstring)."""
    from threeam_model.sam2_build import build_sam2

    print("\n## many objects: SAM 2.1-t, streaming engine vs the official SAM2VideoPredictor")
    print("| input | objects | official | per-object | batched | batched + compile | batched 16 vs 1 |")
    print("|---|---|---|---|---|---|---|")
    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    sizes = [64] if args.tiny else [512, 1024]
    for size in sizes:
        if time.perf_counter() - t_start > args.budget:
            print(f"  budget of {args.budget:.0f} s spent: skipping {size} px")
            continue
        model = build_sam2(tiny=True, device=device) if args.tiny else build_sam2("t", image_size=size, device=device)
        model.eval()
        engines = {
            "per_object": StreamingSAM2(model, dtype=torch_dtype, batch_objects=False),
            "batched": StreamingSAM2(model, dtype=torch_dtype),
            "compiled": StreamingSAM2(model, dtype=torch_dtype, compile=True),
        }
        by_n = {}
        for n in (1, 4, 16):
            with (
                torch.inference_mode(),
                torch.autocast(device.split(":")[0], dtype=torch_dtype, enabled=torch_dtype != torch.float32),
            ):
                official = official_fps(model, frames, n, args.warmup, device)
            with torch.inference_mode():
                r = {name: fps(t, frames, n, args.warmup, device) for name, t in engines.items()}
            by_n[n] = r
            ratio = f"{by_n[16]['batched'] / by_n[1]['batched']:.0%}" if n == 16 else ""
            print(
                f"| {size} | {n} | {official:.1f} | {r['per_object']:.1f} | {r['batched']:.1f} | "
                f"{r['compiled']:.1f} | {ratio} |",
                flush=True,
            )
        if size == 1024:
            frame_s = 1 / by_n[16]["batched"]
            tflops = 16 * MEMORY_ATTENTION_GFLOP_1024 / 1000 / frame_s
            print(
                f"  1024 px, 16 objects batched: {frame_s * 1000:.0f} ms/frame; memory attention alone is "
                f"{16 * MEMORY_ATTENTION_GFLOP_1024 / 1000:.1f} TFLOP a frame, i.e. {tflops:.0f} TFLOP/s if it "
                "were all of the frame"
            )
        del engines, model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny random models on CPU (smoke test)")
    p.add_argument("--frames", type=int, default=40, help="timed frames per measurement")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--image-size", type=int, default=1024, help="SAM 2 input size")
    p.add_argument("--combos", default=",".join(f"{v}/{m}" for v, m in COMBOS), help="SAM2/MUSt3R pairs")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", default=None, choices=("bfloat16", "float32"), help="default: bfloat16 (tiny: float32)")
    p.add_argument("--budget", type=float, default=270.0, help="seconds per part; what is left is skipped")
    p.add_argument("--part", choices=("all", "3am", "objects"), default="all")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore", UserWarning)
    t_start = time.perf_counter()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("float32" if args.tiny else "bfloat16")
    if args.tiny:
        torch.set_num_threads(1)  # tiny models: threads only add contention
    if not args.tiny and device == "cpu":
        print("device_fps: no GPU; full-size models on CPU take minutes per frame. Use --tiny for a smoke test.")
        return 2
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    print(f"device_fps: torch {torch.__version__}, {name}, {dtype}, {args.frames} timed frames after {args.warmup}")
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    size = (96, 72) if args.tiny else (640, 480)
    n = 1 + args.warmup + args.frames
    clip = render_scene(seed=0, num_frames=min(n, 30), width=size[0], height=size[1], num_objects=4)["rgb"]
    frames = np.stack([clip[i % len(clip)] for i in range(n)])
    combos = [("tiny", "tiny")] if args.tiny else [tuple(c.split("/")) for c in args.combos.split(",")]

    if args.part in ("all", "objects"):
        objects_part(args, frames, device, dtype, time.perf_counter())
        if args.part == "objects":
            print(f"device_fps: done in {time.perf_counter() - t_start:.0f} s")
            return 0
    t_start_3am = time.perf_counter()
    rows = []
    for variant, must3r in combos:
        if time.perf_counter() - t_start_3am > args.budget:
            print(f"  budget of {args.budget:.0f} s spent: skipping SAM 2.1-{variant} + MUSt3R-{must3r}")
            continue
        if args.tiny:
            cfg = TrackerConfig(tiny=True, method="3am", device=device, dtype=dtype)
        else:
            cfg = TrackerConfig(
                method="3am",
                variant=variant,
                must3r=must3r,
                image_size=args.image_size,
                sam2_checkpoint=None,
                must3r_checkpoint=None,
                device=device,
                dtype=dtype,
            )
        t0 = time.perf_counter()
        threeam = build_tracker(cfg)
        sam2 = StreamingSAM2(threeam.model, dtype=threeam.dtype)  # same SAM 2 model, no MUSt3R
        build_s = time.perf_counter() - t0
        with torch.inference_mode():
            r = {
                "sam2_1": fps(sam2, frames, 1, args.warmup, threeam.device),
                "sam2_4": fps(sam2, frames, 4, args.warmup, threeam.device),
            }
            r["3am_1"], stages = fps_and_stages(threeam, frames, 1, args.warmup, threeam.device)
            keyframes = len(threeam.features.must3r.memory_images)
            r["3am_4"] = fps(threeam, frames, 4, args.warmup, threeam.device)
        mem = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
        rows.append((variant, must3r, r, keyframes, mem, stages))
        print(
            f"  SAM 2.1-{variant}@{args.image_size if not args.tiny else 64} + MUSt3R-{must3r}: "
            f"3AM {r['3am_1']:.1f} FPS (1 object), {r['3am_4']:.1f} FPS (4 objects); SAM 2 alone "
            f"{r['sam2_1']:.1f} / {r['sam2_4']:.1f} FPS; built in {build_s:.0f} s, MUSt3R memory images "
            f"{keyframes}, peak GPU memory {mem:.1f} GiB",
            flush=True,
        )
        del threeam, sam2
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    print("\n| SAM 2.1 | MUSt3R | 3AM FPS 1 obj | 3AM FPS 4 obj | SAM 2 FPS 1 obj | SAM 2 FPS 4 obj |")
    print("|---|---|---|---|---|---|")
    for variant, must3r, r, *_ in rows:
        print(f"| {variant} | {must3r} | {r['3am_1']:.1f} | {r['3am_4']:.1f} | {r['sam2_1']:.1f} | {r['sam2_4']:.1f} |")
    print(
        "\n3AM, 1 object: median ms per stage (must3r_*: MUSt3R's stages, device time on CUDA; must3r: host time of"
        " its step; the rest: host time around the engine's steps)"
    )
    print("| SAM 2.1 | MUSt3R | " + " | ".join(STAGES_3AM) + " |")
    print("|---|---|" + "---|" * len(STAGES_3AM))
    for variant, must3r, *_, stages in rows:
        print(f"| {variant} | {must3r} | " + " | ".join(f"{stages[k]:.1f}" for k in STAGES_3AM) + " |")
    print(f"device_fps: done in {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
