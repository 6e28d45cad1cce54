"""threeam-bench: the paper's offline VOS benchmark (IoU, Positive IoU, Successful IoU; DAVIS J / F) for one method.

    threeam-bench DATA --layout davis -o OUT --method sam2             # DAVIS-layout folder(s)
    threeam-bench SCENES --layout synthetic -o OUT --method 3am        # generated scenes (generate_scene)
    threeam-bench DATA_ROOT --layout scannetpp --obj-id-root OBJ_IDS -o OUT --stride 10
    threeam-bench REPLICA --layout replica --label-dir semantic_instance -o OUT
    threeam-bench --compare OUT_SAM2/summary.json OUT_3AM/summary.json   # one table for several runs
    threeam-bench --task instances3d SCENES -o OUT --method 3am           # 3D instances (Table 5; its own options:
                                                                          # threeam-bench --task instances3d -h)

Writes OUT/<sequence>/result.json (per-object, per-frame numbers), masks/ and labels/ PNGs, OUT/summary.json,
OUT/table.md (laid out like the paper's Table 2) and OUT/plots/. A rerun skips the sequences already done with
the same settings. Benchmarks refuse to run on random weights unless --random-weights or --tiny says so.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from threeam_model.cli.common import method_record, tracker_config
from threeam_model.cli.options import add_tracker_options
from threeam_model.errors import UsageError
from threeam_model.eval.protocols import PROTOCOLS, SubsetRule
from threeam_model.eval.sequences import LAYOUTS, Thinned, open_sequences

PROG = "threeam-bench"
TRACKER_OWN = ("max_objects",)  # --max-objects is the protocol's (objects scored): the tracker keeps its cap
TASKS = ("vos", "instances3d")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--task",
        choices=TASKS,
        default="vos",
        help="vos (this benchmark, default) or instances3d (class-agnostic 3D instances, threeam_model.cli.instances)",
    )
    p.add_argument("data", nargs="?", help="a sequence folder or a folder of sequences (see --layout)")
    p.add_argument("--layout", choices=LAYOUTS, default="davis", help="how DATA is laid out (default: %(default)s)")
    p.add_argument("-o", "--output", default="threeam_bench", help="output folder (default: %(default)s)")
    p.add_argument("--sequences", nargs="+", metavar="NAME", help="only these sequences / scene ids")
    p.add_argument("--obj-id-root", help="scannetpp: the toolkit's per-frame object-id folder")
    p.add_argument("--image-dir", help="replica: frame folder inside a scene (default: rgb)")
    p.add_argument("--label-dir", help="replica: instance-id folder inside a scene (default: instance)")
    p.add_argument("--compare", nargs="+", metavar="SUMMARY", help="print one table from several summary.json")
    p.add_argument("--labels", nargs="+", help="--compare: row labels, one per summary")
    g = p.add_argument_group("protocol")
    g.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="bidirectional",
        help="bidirectional: condition on the largest GT mask, track forward and backward (paper Sec. "
        "4.1); two_view: every frame matched against that source frame alone (Table 3)",
    )
    rule = SubsetRule()
    g.add_argument(
        "--l-min",
        type=int,
        default=rule.l_min,
        help="Selected Subset: a visible segment counts when "
        "it is longer than this many frames (default: %(default)s; the paper gives no value)",
    )
    g.add_argument(
        "--min-segments",
        type=int,
        default=rule.min_segments,
        help="Selected Subset: counted segments an object needs (default: %(default)s)",
    )
    g.add_argument(
        "--min-visible-pixels",
        type=int,
        default=rule.min_visible_pixels,
        help="a frame shows an object when its GT mask has this many pixels (default: %(default)s)",
    )
    g.add_argument("--max-objects", type=int, default=None, help="score only the first N object ids per sequence")
    t = p.add_argument_group("frames")
    t.add_argument("--stride", type=int, default=1, help="use every N-th frame (default: 1)")
    t.add_argument("--max-frames", type=int, default=None, help="at most N frames per sequence (after --stride)")
    t.add_argument("--max-side", type=int, default=None, help="downscale frames and labels to this longer side")
    m = p.add_argument_group("model")
    m.add_argument("--label", help="row label in the table (default: the method)")
    # TrackerConfig's knobs (--method, --variant, ..., --memory-policy): the paper's 3AM is --method 3am
    # --variant large with its checkpoint; --max-objects above is the protocol's, so the tracker keeps its cap
    add_tracker_options(m, skip=TRACKER_OWN)
    m.add_argument("--random-weights", action="store_true", help="allow random weights (numbers are meaningless)")
    o = p.add_argument_group("output")
    o.add_argument("--no-boundary", action="store_true", help="skip DAVIS F (faster; J is always computed)")
    o.add_argument("--no-masks", action="store_true", help="do not write mask and label PNGs")
    o.add_argument("--no-plots", action="store_true", help="do not draw plots")
    o.add_argument("--video", action="store_true", help="write an overlay MP4 per sequence (needs the masks)")
    o.add_argument("--fps", type=float, default=10.0, help="overlay video frame rate (default: %(default)s)")
    o.add_argument("--no-resume", action="store_true", help="rerun sequences that already have results")
    o.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    task = argparse.ArgumentParser(add_help=False)
    task.add_argument("--task", choices=TASKS, default="vos")
    known, rest = task.parse_known_args(argv)
    if known.task == "instances3d":  # a different benchmark with its own options
        from threeam_model.cli.instances import bench_main

        return bench_main(rest)
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from threeam_model.eval import report

    if args.compare:
        if args.labels and len(args.labels) != len(args.compare):
            raise UsageError(f"{len(args.compare)} summaries but {len(args.labels)} labels")
        print(report.compare(args.compare, args.labels), end="")
        return 0
    if not args.data:
        raise UsageError("give the data folder (or --compare SUMMARY...)")

    import torch

    from threeam_model.eval.runner import BenchSettings, run_benchmark
    from threeam_model.factory import build_tracker

    settings = BenchSettings(
        protocol=args.protocol,
        subset=SubsetRule(args.l_min, args.min_segments, args.min_visible_pixels),
        boundary=not args.no_boundary,
        write_masks=not args.no_masks,
        max_objects=args.max_objects,
    )
    if args.video and args.no_masks:
        raise UsageError("--video draws the predicted label PNGs: drop --no-masks")
    sources = open_sequences(args.data, args.layout, args.image_dir, args.label_dir, args.sequences, args.obj_id_root)
    sources = [Thinned(s, args.stride, args.max_frames, args.max_side) for s in sources]
    data = {
        "path": str(pathlib.Path(args.data).resolve()),
        "layout": args.layout,
        "stride": args.stride,
        "max_frames": args.max_frames,
        "max_side": args.max_side,
    }

    cfg = tracker_config(args, skip=TRACKER_OWN)
    if cfg.tiny or args.random_weights:
        print(f"{PROG}: RANDOM WEIGHTS ({cfg.describe()}): the numbers mean nothing", file=sys.stderr)
    label = args.label or cfg.method
    with torch.inference_mode():
        tracker = build_tracker(cfg)
        results = run_benchmark(
            tracker,
            sources,
            settings,
            args.output,
            method_record(cfg, label),
            data,
            progress=not args.quiet,
            resume=not args.no_resume,
        )
    out = pathlib.Path(args.output)
    summary = report.write_report(results, out, label, plots=not args.no_plots)
    if args.video:
        (out / "videos").mkdir(exist_ok=True)
        for src in sources:
            report.write_overlay_video(src, out / src.name / "labels", out / "videos" / f"{src.name}.mp4", args.fps)
    print((out / report.TABLE_FILE).read_text(), end="")
    done = sum(not r.get("resumed") for r in results)
    print(
        f"\n{done} sequence(s) run, {len(results) - done} resumed; results in {out}/ "
        f"({summary['seconds_per_step']:.3f} s per tracker step)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
