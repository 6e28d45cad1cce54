"""Many objects on one frame: ms per frame of `track` + label image, and the bytes of results held, by objects.

    python benchmarks/multi_object.py                   # tiny and SAM 2.1-t@512, 640x480 and 1920x1080, CPU
    python benchmarks/multi_object.py --models tiny --frames 3 --sizes 640x480      # a quick look

For each model, frame size and object count (1 / 4 / 16 boxes in a grid, all prompted on the first frame) it
times two ways of running the same stream:
- `batched`: the engine's default (objects with one memory layout in one batch, results composed sparsely on a
  CPU, densely on a GPU, one transfer);
- `per_object`: the official per-object step and whole-frame result composition (what main did before the
  batched engine, less its per-object host copies).
Printed per row: median ms/frame, the ratio to the 1-object time of the same mode in this run, and the bytes the
FrameResult holds (label image, mask windows; no full-size logits unless asked). Random weights time like the
released ones (same shapes), but their masks are not object-sized: the tiny model's cover about a third of the
frame each, all in one place. So a second table times the result composition alone on object-sized masks (SAM 2's
256x256 low-res logits of 1 / 4 / 16 objects in a grid, each about 2% of the frame): the engine's sparse and dense
composition against the old per-object host path (upsample, copy to the host, mask, box, label image by argmax),
and the sparse composition of masks like the random model's (16x16 logits, nearly equal, each over about a third
of the frame, all overlapping), where it takes its line-segment way.
"results held" counts the mask windows made so far: the line-segment way makes them on first access (of `mask`,
`window`, `area`, `covers`), so there it is the label image alone.
One CPU thread by default (--threads), so the ratios are not thread-scheduling noise.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from bench_models import sam2_by_name

from threeam_model.interface import FrameResult, ObjectResult
from threeam_model.streaming import StreamingSAM2
from threeam_model.streaming.results import compose_dense, compose_sparse, upsample

MODES = {"batched": dict(batch_objects=True, compose="auto"), "per_object": dict(batch_objects=False, compose="dense")}


def frames(n: int, h: int, w: int, seed: int = 0) -> list[np.ndarray]:
    """Textured background with 16 moving squares (one per grid cell)."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 120, size=(h, w, 3), dtype=np.uint8)
    out = []
    for i in range(n):
        f = background.copy()
        for k in range(16):
            y0 = int(h * (k // 4 + 0.25) / 4) + i
            x0 = int(w * (k % 4 + 0.25) / 4) + 2 * i
            f[y0 : y0 + h // 8, x0 : x0 + w // 8] = ((37 * k) % 255, 200, (91 * k) % 255)
        out.append(f)
    return out


def grid_boxes(n: int, h: int, w: int) -> list[list[float]]:
    return [
        [w * (k % 4 + 0.2) / 4, h * (k // 4 + 0.2) / 4, w * (k % 4 + 0.2) / 4 + w / 6, h * (k // 4 + 0.2) / 4 + h / 6]
        for k in range(n)
    ]


def run(model, mode: str, clip: list[np.ndarray], objects: int, device: str) -> tuple[float, int]:
    tracker = StreamingSAM2(model, max_objects=16, **MODES[mode])
    h, w = clip[0].shape[:2]
    tracker.track(clip[0])
    for k, box in enumerate(grid_boxes(objects, h, w)):
        tracker.add_prompt(k + 1, box=box)
    times, held = [], 0
    for i, frame in enumerate(clip[1:]):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = tracker.track(frame)
        labels = result.label_image()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i > 0:  # the first tracked frame warms up
            times.append(time.perf_counter() - t0)
        held = result.nbytes()
        assert labels.shape == (h, w)
    return 1000 * statistics.median(times), held


def object_sized_logits(n: int, low: int = 256) -> torch.Tensor:
    """(n, 1, low, low) logits: one disc per grid cell of a 4x4 grid, about 2% of the frame each."""
    yy, xx = torch.meshgrid(
        torch.arange(low, dtype=torch.float32), torch.arange(low, dtype=torch.float32), indexing="ij"
    )
    maps = []
    for k in range(n):
        cy, cx = low * (k // 4 + 0.5) / 4, low * (k % 4 + 0.5) / 4
        maps.append(8 * (1 - ((yy - cy) ** 2 + (xx - cx) ** 2) / (0.08 * low) ** 2))
    return torch.stack(maps)[:, None]


def overlapping_logits(n: int, low: int = 16, seed: int = 0) -> torch.Tensor:
    """(n, 1, low, low) logits like the tiny random model's: one shared random field plus 1e-3 noise per object, so
    every mask covers the same half of the frame and the winner changes cell by cell."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(low, low, generator=g) + 1e-3 * torch.randn(n, low, low, generator=g))[:, None]


def per_object_host(low_res: torch.Tensor, ids: list[int], scores: list[float], size: tuple[int, int]):
    """The old result path: each object upsampled and copied to the host alone, its mask and box found there, the
    label image by an argmax over the restacked maps."""
    objects = {
        obj_id: ObjectResult.from_logits(obj_id, upsample(low_res[i : i + 1], size)[0, 0].numpy(), scores[i])
        for i, obj_id in enumerate(ids)
    }
    result = FrameResult(0, size, objects)
    h, w = size
    masks = np.stack([o.mask for o in objects.values()])
    logits = np.where(masks, np.stack([o.mask_logits for o in objects.values()]), -np.inf)
    labels = np.where(masks.any(0), np.array(ids, np.uint16)[logits.argmax(0)], 0)
    return labels, result.objects


def compose_table(sizes: list[tuple[int, int]], counts: list[int], repeats: int = 5) -> None:
    print("\n| frame | composition | objects | ms | x 1 object | results held (MB) |")
    print("|---|---|---|---|---|---|")
    ways = {
        "sparse (engine, CPU)": compose_sparse,
        "dense (engine, GPU way)": compose_dense,
        "per-object host (before)": per_object_host,
        "sparse, overlapping masks": compose_sparse,
    }
    for w, h in sizes:
        for name, compose in ways.items():
            base = None
            for n in counts:
                low_res = overlapping_logits(n) if name.endswith("overlapping masks") else object_sized_logits(n)
                ids = list(range(1, n + 1))
                scores = torch.full((n,), 0.9)
                args = (low_res, ids, scores if compose is compose_dense else scores.tolist(), (h, w))
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    labels, objects = compose(*args)
                    times.append(time.perf_counter() - t0)
                ms = 1000 * statistics.median(times)
                base = ms if base is None else base
                held = labels.nbytes + sum(o.nbytes() for o in objects.values())
                print(f"| {w}x{h} | {name} | {n} | {ms:.1f} | {ms / base:.2f} | {held / 1e6:.2f} |", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="tiny,t512", help="comma list of tiny, t512 (SAM 2.1-t at 512), t1024")
    p.add_argument("--sizes", default="640x480,1920x1080", help="comma list of WxH frame sizes")
    p.add_argument("--objects", default="1,4,16")
    p.add_argument("--frames", type=int, default=5, help="frames per measurement (the first is warm-up)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    counts = [int(x) for x in args.objects.split(",")]
    print(
        f"# multi_object: track + label image, device {args.device}, {args.threads} CPU thread(s), torch "
        f"{torch.__version__}; median of {args.frames - 1} frames after one warm-up"
    )
    print("| model | frame | mode | objects | ms/frame | x 1 object | results held (MB) |")
    print("|---|---|---|---|---|---|---|")
    goal = {}
    for name in args.models.split(","):
        model = sam2_by_name(name, args.device)
        for size in args.sizes.split(","):
            w, h = (int(v) for v in size.split("x"))
            clip = frames(args.frames + 1, h, w)
            for mode in MODES:
                base = None
                for n in counts:
                    ms, held = run(model, mode, clip, n, args.device)
                    base = ms if base is None else base
                    goal[(name, size, mode, n)] = (ms / base, held)
                    print(
                        f"| {name} | {size} | {mode} | {n} | {ms:.1f} | {ms / base:.2f} | {held / 1e6:.2f} |",
                        flush=True,
                    )
    compose_table([tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")], counts)
    key = ("tiny", "1920x1080", "batched", 16)
    if key in goal:
        ratio, held = goal[key]
        print(
            f"goal (tiny, 1920x1080, 16 objects, batched): {ratio:.2f}x one object (goal <= 3x), "
            f"{held / 1e6:.1f} MB held (goal <= 40 MB)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
