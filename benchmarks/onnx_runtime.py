"""PyTorch eager vs ONNX Runtime for the streaming engine: ms per frame, 1 and 4 objects, one run.

    python benchmarks/onnx_runtime.py                          # tiny and SAM 2.1-t@512, CPU provider
    python benchmarks/onnx_runtime.py --models t512 --providers cuda,tensorrt --device cuda   # on a GPU

Each model is exported once (object batch 4) into a temporary folder; the same frames (a rendered room, 640x480),
the same box prompts on frame 0; `track` timed after two warm-up frames, median. Random weights (they time like the
released ones). One CPU thread for both runtimes by default (--threads), so the comparison is like for like.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from bench_models import prompt_side_by_side, sam2_by_name

from threeam_model.data.synthetic import render_scene
from threeam_model.export.onnx_export import export_sam2
from threeam_model.export.runtime import OnnxSteps
from threeam_model.streaming import StreamingSAM2


def time_run(tracker, clip, objects: int, device: str) -> float:
    tracker.track(clip[0])
    prompt_side_by_side(tracker, objects)
    times = []
    with torch.inference_mode():
        for i, frame in enumerate(clip[1:]):
            t0 = time.perf_counter()
            tracker.track(frame)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="tiny,t512")
    p.add_argument("--providers", default="cpu", help="comma list of ONNX Runtime providers to time: cpu,cuda,tensorrt")
    p.add_argument("--device", default="cpu")
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    clip = render_scene(seed=0, num_frames=args.frames + 1, width=640, height=480, num_objects=4)["rgb"]
    print(f"# onnx_runtime: 640x480, device {args.device}, {args.threads} thread(s), median of {args.frames - 2}")
    print("| model | runtime | objects | ms/frame | x torch |")
    print("|---|---|---|---|---|")
    for name in args.models.split(","):
        model = sam2_by_name(name, args.device)
        with tempfile.TemporaryDirectory() as folder:
            t0 = time.perf_counter()
            export_sam2(model, folder, object_batch=4)
            print(f"  {name}: exported in {time.perf_counter() - t0:.0f} s", flush=True)
            for n in (1, 4):
                base = time_run(StreamingSAM2(model), clip, n, args.device)
                print(f"| {name} | torch eager | {n} | {base:.1f} | 1.00 |", flush=True)
                for provider in args.providers.split(","):
                    steps = OnnxSteps(folder, model, providers=(provider,), threads=args.threads)
                    ms = time_run(StreamingSAM2(model, steps=steps), clip, n, args.device)
                    print(f"| {name} | onnxruntime {provider} | {n} | {ms:.1f} | {ms / base:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
