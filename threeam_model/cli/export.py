"""threeam-export: SAM 2.1's per-frame path as ONNX files for the ONNX Runtime backend.

    threeam-export -o onnx/t512 --variant tiny --image-size 512              # official weights from the weights folder
    threeam-export -o onnx/tiny --tiny                                     # tiny random model (tests, smoke runs)
    threeam-export -o onnx/3am --variant large --checkpoint 3am.pt --merger-for 640x480   # + 3AM's merger for 640x480
    threeam-track clip.mp4 -o out --box 1:10,10,90,90 --variant tiny --image-size 512 \
        --backend onnxruntime --onnx onnx/t512

Writes image_encoder.onnx, memory_attention.onnx, sam_heads.onnx, memory_encoder.onnx and manifest.json with static
shapes: an object batch (--object-batch; more objects run in several batches), memory and pointer slots (empty
ones are masked; defaults: what the default memory policy reads with 8 conditioning frames). The weights come
from the same places as threeam-track's (official checkpoint, or --random-weights / --tiny).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from threeam_model.cli.options import TRACKER_ALIASES, add_knob_options, knob_values
from threeam_model.errors import ExportError
from threeam_model.export.onnx_export import export_merger, export_sam2
from threeam_model.factory import TrackerConfig, build_sam2_model, build_tracker, resolve_weights

MODEL_KNOBS = (
    "variant",
    "image_size",
    "sam2_checkpoint",
    "must3r",
    "must3r_checkpoint",
    "threeam_checkpoint",
    "tiny",
    "seed",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="threeam-export", description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", required=True, help="folder for the ONNX files and manifest.json")
    # TrackerConfig's knobs of the model to export (MUSt3R and the 3AM checkpoint: with --merger-for)
    add_knob_options(p, TrackerConfig, only=MODEL_KNOBS, aliases=TRACKER_ALIASES)
    p.add_argument("--random-weights", action="store_true", help="random weights (timing and tests only)")
    p.add_argument("--object-batch", type=int, default=4, help="objects per batch in the files (default: 4)")
    p.add_argument("--memory-slots", type=int, default=None, help="spatial memory slots (default: 8 + num_maskmem - 1)")
    p.add_argument("--pointer-slots", type=int, default=None, help="object-pointer slots (default: 8 + 15)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--merger-for", metavar="WxH", help="also export 3AM's merger for frames of this size")
    return p


def _export_merger(tracker, size: str, folder: str, opset: int) -> None:
    """One MUSt3R step on a blank frame of the size gives the token grid and crop box the merger is fixed to."""
    try:
        w, h = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise ExportError(f"--merger-for {size!r}: expected WxH, e.g. 640x480") from None
    with torch.inference_mode():
        result = tracker.track(np.zeros((h, w, 3), np.uint8))
        backbone = tracker.steps.forward_image(tracker._preprocess(np.zeros((h, w, 3), np.uint8)))
    sam_feat = backbone["backbone_fpn"][-1].clone()
    export_merger(tracker.features.merger, result.scene, (h, w), sam_feat, folder, opset)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        method = "3am" if args.merger_for else "sam2"
        values = knob_values(args, TrackerConfig, only=MODEL_KNOBS)
        if args.random_weights or args.tiny:
            values.update(sam2_checkpoint=None, must3r_checkpoint=None)
        cfg = TrackerConfig(method=method, device="cpu", **values)  # traced on the CPU: files for any provider
        cfg, missing = resolve_weights(cfg)
        if missing and not args.random_weights:
            raise ExportError("; ".join(missing) + " (or pass --random-weights to export random weights)")
        t0 = time.perf_counter()
        if args.merger_for:
            tracker = build_tracker(cfg)
            model = tracker.model.eval()
            _export_merger(tracker, args.merger_for, args.output, args.opset)
        else:
            model = build_sam2_model(cfg).eval()
        manifest = export_sam2(model, args.output, args.object_batch, args.memory_slots, args.pointer_slots, args.opset)
    except (ExportError, ValueError, FileNotFoundError) as exc:
        print(f"threeam-export: {exc}", file=sys.stderr)
        return 2
    print(
        f"threeam-export: {cfg.describe()} -> {args.output} in {time.perf_counter() - t0:.0f} s "
        f"(object batch {manifest['object_batch']}, {manifest['memory_slots']} memory slots, "
        f"{manifest['pointer_slots']} pointer slots)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
