"""Per-frame time and memory size of Must3rStream on a synthetic camera sweep (random weights unless --checkpoint).

    python benchmarks/must3r_stream.py                          # tiny long run + tiny and full-224 at 224x224
    python benchmarks/must3r_stream.py --model tiny --frames 2000 --cap 32
    python benchmarks/must3r_stream.py --model full224 --frames 20
    python benchmarks/must3r_stream.py --checkpoint MUSt3R_224_cvpr.pth --device cuda --dtype bf16

Prints, every --every frames, the mean per-frame time of the last block, the memory images/tokens/MB and the
process RSS. With random weights the keyframe scores mean nothing, so by default every frame is made a keyframe
(the worst case for memory growth: the cap is hit and eviction runs every frame); --official-policy keeps the
official thresholds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import psutil
import torch

from threeam_model.must3r import build_must3r, load_must3r, tiny_must3r
from threeam_model.must3r.checkpoint import decoder_kwargs, encoder_kwargs
from threeam_model.must3r.model import make_head_camera_like
from threeam_model.must3r.stream import Must3rStream

FULL_224 = (
    "Dust3rEncoder(img_size=(224,224))",
    "MUSt3R(img_size=(224,224),feedback_type='single_mlp',memory_mode='kv')",
)


def synthetic_frames(n: int, h: int, w: int, seed: int = 0):
    """A textured panorama seen through a window that pans: consecutive frames overlap."""
    rng = np.random.default_rng(seed)
    pano = rng.integers(0, 256, (h, 4 * w, 3), dtype=np.uint8)
    pano = (pano.astype(np.float32) * 0.5 + np.roll(pano, 1, axis=1) * 0.5).astype(np.uint8)
    for i in range(n):
        x = int((np.sin(i / 40.0) * 0.5 + 0.5) * 3 * w)
        yield pano[:, x : x + w]


def make_model(name: str, checkpoint: str | None, device: str):
    if checkpoint:
        return load_must3r(checkpoint, device=device)
    if name == "tiny":
        return tiny_must3r(seed=0).to(device)
    torch.manual_seed(0)
    model = build_must3r(encoder_kwargs(FULL_224[0]), decoder_kwargs(FULL_224[1]))
    with torch.no_grad():
        model.decoder.head_dec.proj.weight.mul_(0.02)  # keep expm1(|p|) finite with random weights
        make_head_camera_like(model.decoder)
    return model.to(device).eval()


def run(args, name: str, frames: int, every: int) -> float:
    model = make_model(name, args.checkpoint, args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    policy = {} if args.official_policy else dict(overlap_thr=-1.0, min_conf=0.0)
    stream = Must3rStream(model, image_size=224, max_memory_images=args.cap, device=args.device, dtype=dtype, **policy)
    proc = psutil.Process(os.getpid())
    label = args.checkpoint or name
    print(f"[{label}] {frames} frames {args.size}x{args.size} -> 224x224, cap {args.cap} images, "
          f"device {args.device}, dtype {args.dtype}, threads {torch.get_num_threads()}")  # fmt: skip
    times = []
    block_start = time.perf_counter()
    for i, frame in enumerate(synthetic_frames(frames, args.size, args.size)):
        t0 = time.perf_counter()
        out = stream.step(frame)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        if (i + 1) % every == 0 or i + 1 == frames:
            block = times[-((i % every) + 1) :]
            mem = stream.memory
            print(
                f"  frame {i + 1:6d}: {1e3 * np.mean(block):8.1f} ms/frame (last {len(block)}), "
                f"memory {len(stream.memory_images):3d} images {stream.memory_tokens:6d} tokens "
                f"{mem.nbytes() / 2**20:8.1f} MB, keyframe={out.is_keyframe}, "
                f"RSS {proc.memory_info().rss / 2**20:7.0f} MB, wall {time.perf_counter() - block_start:7.1f} s"
            )
    steady = times[1:] if len(times) > 1 else times
    mean = float(np.mean(steady))
    print(f"[{label}] mean per-frame time (excluding frame 1): {1e3 * mean:.1f} ms  "
          f"(median {1e3 * np.median(steady):.1f} ms)")  # fmt: skip
    return mean


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["all", "tiny", "full224"], default="all")
    p.add_argument("--checkpoint", default=None, help="official .pth instead of random weights")
    p.add_argument("--frames", type=int, default=None, help="frames per run (default: tiny 1000, full224 20)")
    p.add_argument("--every", type=int, default=100, help="report every n frames")
    p.add_argument("--cap", type=int, default=16, help="max_memory_images")
    p.add_argument("--size", type=int, default=224, help="input frame size (square)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--official-policy", action="store_true", help="official keyframe thresholds (default: all)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = ["tiny", "full224"] if args.model == "all" else [args.model]
    if args.checkpoint:
        names = ["checkpoint"]
    results = {}
    for name in names:
        frames = args.frames or (1000 if name == "tiny" else 20)
        results[name] = run(args, name, frames, args.every if frames > args.every else max(1, frames // 4))
    print("summary: " + ", ".join(f"{k} {1e3 * v:.1f} ms/frame" for k, v in results.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
