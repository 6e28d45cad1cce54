"""Per-stage time of Must3rStream at 224 and 512 px and several memory caps (random weights unless --checkpoint).

    python benchmarks/must3r_stream.py                          # tiny model, 224 and 512, caps 10 / 20 / 32, CPU
    python benchmarks/must3r_stream.py --sizes 512 --caps 32 --coverage morton,kdtree,grid,official
    python benchmarks/must3r_stream.py --model full --sizes 224 --caps 10 --frames 3
    python benchmarks/must3r_stream.py --checkpoint MUSt3R_512.pth --sizes 512 --device cuda --dtype bf16
    python benchmarks/must3r_stream.py --long 2000 --caps 16   # memory size and RSS over a long run

Frames are 640x480 views of a panning synthetic panorama (MUSt3R takes 512x384 or a 224x224 crop). With random
weights the keyframe scores mean nothing, so every frame is made a keyframe with every point confident (the worst
case for the coverage index: it grows by a full image and evicts one on every frame); --official-policy keeps the
official thresholds. Each configuration first fills the memory to its cap, then times --frames steps and prints
the median ms of every stage (`Must3rFrame.timings`: device time on CUDA) and the coverage test's share of the
decoder's time. Coverage indexes: morton (the CPU default, compiled), kdtree (scipy trees of the changed bins),
grid (the CUDA default, torch), official (scipy trees rebuilt from every memory point on every keyframe, as the
official searcher does).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import psutil
import torch
from scipy.spatial import cKDTree

from threeam_model.must3r import build_must3r, load_must3r, tiny_must3r
from threeam_model.must3r.checkpoint import decoder_kwargs, encoder_kwargs
from threeam_model.must3r.keyframes import direction_bin
from threeam_model.must3r.model import make_head_camera_like
from threeam_model.must3r.stream import STAGES, Must3rStream


def full_args(size: int) -> tuple[str, str]:
    """Constructor strings of the released models at this size (ViT-L encoder, ViT-B decoder with feedback)."""
    img = f"img_size=({size},{size})"
    return f"Dust3rEncoder({img})", f"MUSt3R({img},feedback_type='single_mlp',memory_mode='kv')"


def synthetic_frames(n: int, h: int, w: int, seed: int = 0):
    """A textured panorama seen through a window that pans: consecutive frames overlap."""
    rng = np.random.default_rng(seed)
    pano = rng.integers(0, 256, (h, 4 * w, 3), dtype=np.uint8)
    pano = (pano.astype(np.float32) * 0.5 + np.roll(pano, 1, axis=1) * 0.5).astype(np.uint8)
    for i in range(n):
        x = int((np.sin(i / 40.0) * 0.5 + 0.5) * 3 * w)
        yield pano[:, x : x + w]


class OfficialRebuild:
    """The official searcher's cost, behind the coverage index interface: on every change, each bin's tree is
    rebuilt from all memory points (in insertion order); queries in pixel order. Same answers as KDTreeIndex."""

    on_host = True

    def __init__(self, q: int = 2, images=None):
        self.q, self.num_bins = q, 2 * q * q
        self.images = dict(images or {})  # image id -> points per bin
        self.trees = {}
        for b in range(self.num_bins):
            pts = [per_bin[b] for per_bin in self.images.values() if len(per_bin[b])]
            if pts:
                self.trees[b] = cKDTree(np.concatenate(pts), balanced_tree=False, compact_nodes=False)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_points(self) -> int:
        return sum(len(p) for per_bin in self.images.values() for p in per_bin)

    def updated(self, add=(), drop=()):
        images = {k: v for k, v in self.images.items() if k not in set(drop)}
        for image, pts, valid, cam_center in add:
            p = pts.detach().float().cpu().numpy().reshape(-1, 3)[valid.cpu().numpy().reshape(-1)]
            which = direction_bin(p - cam_center.cpu().numpy()[None], self.q)
            images[image] = [p[which == b] for b in range(self.num_bins)]
        return OfficialRebuild(self.q, images)

    def nearest(self, pts, valid, cam_center):
        p = pts.detach().float().cpu().numpy().reshape(-1, 3)
        sel = np.flatnonzero(valid.cpu().numpy().reshape(-1))
        dists = np.full(len(p), np.inf)
        which = direction_bin(p[sel] - cam_center.cpu().numpy()[None], self.q)
        for b in np.unique(which):
            if int(b) in self.trees:
                rows = which == b
                dists[sel[rows]] = self.trees[int(b)].query(p[sel][rows], k=1)[0]
        return torch.from_numpy(dists).to(pts.device), None, None

    def nearest_exact(self, pts, valid, cam_center, distances, unresolved):
        return distances

    def learn(self, needed) -> None:
        pass


def make_model(name: str, size: int, checkpoint: str | None, device: str):
    if checkpoint:
        return load_must3r(checkpoint, device=device)
    if name == "tiny":
        return tiny_must3r(seed=0).to(device)
    torch.manual_seed(0)
    encoder, decoder = full_args(size)
    model = build_must3r(encoder_kwargs(encoder), decoder_kwargs(decoder))
    with torch.no_grad():
        model.decoder.head_dec.proj.weight.mul_(0.02)  # keep expm1(|p|) finite with random weights
        make_head_camera_like(model.decoder)
    return model.to(device).eval()


def make_stream(args, model, size: int, cap: int, coverage: str) -> Must3rStream:
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    policy = {} if args.official_policy else dict(overlap_thr=-1.0, min_conf=0.0)
    index = (lambda: OfficialRebuild()) if coverage == "official" else coverage
    return Must3rStream(
        model, image_size=size, max_memory_images=cap, device=args.device, dtype=dtype, coverage=index, **policy
    )


def timed(args, model, size: int, cap: int, coverage: str) -> dict:
    stream = make_stream(args, model, size, cap, coverage)
    frames = synthetic_frames(cap + args.frames, 480, 640)
    per_stage = {s: [] for s in (*STAGES, "step")}
    for i, frame in enumerate(frames):
        t0 = time.perf_counter()
        out = stream.step(frame)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        step = time.perf_counter() - t0
        if i >= cap:  # the memory is full: every step adds one image and evicts one
            for s in STAGES:
                per_stage[s].append(out.timings[s])
            per_stage["step"].append(step)
    h, w = out.true_shape
    points = stream.coverage.num_points if hasattr(stream.coverage, "num_points") else -1
    return dict(
        ms={s: 1e3 * float(np.median(v)) for s, v in per_stage.items()},
        shape=(w, h),
        points=points,
        images=len(stream.memory_images),
        rereads=stream.coverage_rereads,
    )


def long_run(args, model, size: int) -> None:
    stream = make_stream(args, model, size, args.caps[0], args.coverage[0])
    proc = psutil.Process(os.getpid())
    times = []
    for i, frame in enumerate(synthetic_frames(args.long, 480, 640)):
        t0 = time.perf_counter()
        out = stream.step(frame)
        times.append(time.perf_counter() - t0)
        if (i + 1) % args.every == 0 or i + 1 == args.long:
            block = times[-((i % args.every) + 1) :]
            print(
                f"  frame {i + 1:6d}: {1e3 * np.mean(block):8.1f} ms/frame (last {len(block)}), memory "
                f"{len(stream.memory_images):3d} images {stream.memory_tokens:6d} tokens "
                f"{stream.memory.nbytes() / 2**20:8.1f} MB, keyframe={out.is_keyframe}, "
                f"RSS {proc.memory_info().rss / 2**20:7.0f} MB",
                flush=True,
            )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny", "full"], default="tiny", help="random weights: tiny or released sizes")
    p.add_argument("--checkpoint", default=None, help="official .pth instead of random weights")
    p.add_argument("--sizes", default="224,512", help="MUSt3R input sizes (official tables)")
    p.add_argument("--caps", default="10,20,32", help="max_memory_images values")
    p.add_argument(
        "--coverage", default="auto", help="coverage indexes, comma separated: auto, morton, kdtree, grid, official"
    )
    p.add_argument("--frames", type=int, default=4, help="timed frames per configuration, after the memory is full")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--official-policy", action="store_true", help="official keyframe thresholds (default: all)")
    p.add_argument("--long", type=int, default=0, help="instead: one long run of this many frames (first cap)")
    p.add_argument("--every", type=int, default=100, help="report every n frames of the long run")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.caps = [int(c) for c in args.caps.split(",")]
    args.coverage = args.coverage.split(",")
    sizes = [int(s) for s in args.sizes.split(",")]
    label = args.checkpoint or args.model
    print(
        f"must3r_stream: {label}, device {args.device}, {args.dtype}, {torch.get_num_threads()} thread(s), "
        f"torch {torch.__version__}; 640x480 frames, every frame a keyframe: {not args.official_policy}"
    )
    if args.long:
        long_run(args, make_model(args.model, sizes[0], args.checkpoint, args.device), sizes[0])
        return 0
    print(
        "\n| input | cap | points | index | encode | decode | postprocess | pose | coverage | step | "
        "coverage / decode |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )
    for size in sizes:
        model = make_model(args.model, size, args.checkpoint, args.device)
        for cap in args.caps:
            for coverage in args.coverage:
                r = timed(args, model, size, cap, coverage)
                ms = r["ms"]
                share = ms["coverage"] / ms["decode"]
                reread = f" ({r['rereads']} rereads)" if r["rereads"] else ""
                print(
                    f"| {r['shape'][0]}x{r['shape'][1]} | {cap} | {r['points']} | {coverage}{reread} | "
                    + " | ".join(f"{ms[s]:.1f}" for s in (*STAGES, "step"))
                    + f" | {share:.1%} |",
                    flush=True,
                )
    print("ms per frame, medians over the timed frames; points: the coverage index's confident points at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
