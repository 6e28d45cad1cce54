"""threeam-export: SAM 2.1's per-frame path as ONNX files for the ONNX Runtime backend.

    threeam-export -o onnx/t512 --variant t --image-size 512              # official weights from the weights folder
    threeam-export -o onnx/tiny --tiny                                     # tiny random model (tests, smoke runs)
    threeam-track clip.mp4 -o out --box 1:10,10,90,90 --variant t --image-size 512 \
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

from threeam_model.export.onnx_export import ExportError, export_sam2
from threeam_model.factory import TrackerConfig, build_sam2_model, resolve_weights


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="threeam-export", description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", required=True, help="folder for the ONNX files and manifest.json")
    p.add_argument("--variant", default="t", help="SAM 2.1 size: t, s, b+, l (default: t)")
    p.add_argument("--image-size", type=int, default=None, help="SAM 2 input size: 1024 (default) or 512")
    p.add_argument("--sam2-checkpoint", default="auto", help="official SAM 2.1 .pt (default: from the weights folder)")
    p.add_argument("--random-weights", action="store_true", help="random weights (timing and tests only)")
    p.add_argument("--tiny", action="store_true", help="tiny random model (tests, smoke runs)")
    p.add_argument("--object-batch", type=int, default=4, help="objects per batch in the files (default: 4)")
    p.add_argument("--memory-slots", type=int, default=None, help="spatial memory slots (default: 8 + num_maskmem - 1)")
    p.add_argument("--pointer-slots", type=int, default=None, help="object-pointer slots (default: 8 + 15)")
    p.add_argument("--opset", type=int, default=18)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.tiny:
            cfg = TrackerConfig(tiny=True, method="sam2")
        else:
            cfg = TrackerConfig(method="sam2", variant=args.variant, image_size=args.image_size,
                                sam2_checkpoint=None if args.random_weights else args.sam2_checkpoint)  # fmt: skip
            cfg, missing = resolve_weights(cfg)
            if missing and not args.random_weights:
                raise ExportError("; ".join(missing) + " (or pass --random-weights to export random weights)")
        t0 = time.perf_counter()
        model = build_sam2_model(cfg).eval()
        manifest = export_sam2(model, args.output, args.object_batch, args.memory_slots, args.pointer_slots,
                               args.opset)  # fmt: skip
    except (ExportError, ValueError, FileNotFoundError) as exc:
        print(f"threeam-export: {exc}", file=sys.stderr)
        return 2
    print(f"threeam-export: {cfg.describe()} -> {args.output} in {time.perf_counter() - t0:.0f} s "
          f"(object batch {manifest['object_batch']}, {manifest['memory_slots']} memory slots, "
          f"{manifest['pointer_slots']} pointer slots)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
