"""threeam-instances: class-agnostic 3D instance segmentation of an RGB-D scene from tracked 2D masks.

    threeam-instances SCENE -o OUT                               # generated scene (generate_scene(with_points=True))
    threeam-instances SCANS/scene0011_00 --layout scannet --label-map scannetv2-labels.combined.tsv -o OUT
    threeam-instances DATA/<scene_id> --layout scannetpp -o OUT --frame-stride 10
    threeam-instances SCENE --method oracle -o OUT               # ground-truth masks (checks lifting and merging)

2D proposals from SAM 2's automatic mask generator on keyframes, propagated forward with the tracker (3AM or
SAM 2), lifted onto the scene's points with depth and pose, merged and voted per superpoint (the paper's
supplement D; threeam_model.instances). Writes OUT/instances.npz (per-point ids and scores), OUT/instances.ply
(coloured by instance) and OUT/instances.json (instances, statistics, and AP / AP50 / AP25 when the scene has
ground truth). Scene layouts: threeam_model.instances.scenes. Refuses random weights unless --random-weights or
--tiny says so.

`threeam-bench --task instances3d DATA ...` runs the same over several scenes and writes a Table-5-style table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

from threeam_model.instances.keyframes import KEYFRAME_MODES, KeyframeParams
from threeam_model.instances.lifting import LiftParams
from threeam_model.instances.merging import MergeParams
from threeam_model.instances.pipeline import PipelineParams
from threeam_model.instances.proposals import SamProposalParams
from threeam_model.instances.scenes import LAYOUTS
from threeam_model.instances.voting import VoteParams

PROG = "threeam-instances"
BENCH_PROG = "threeam-bench --task instances3d"


def add_scene_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layout", choices=LAYOUTS, default="synthetic", help="scene layout (default: %(default)s)")
    p.add_argument("--label-map", help="scannet: scannetv2-labels.combined.tsv, for the ground truth")
    p.add_argument(
        "--geometry",
        choices=("depth", "pointmap"),
        default="depth",
        help="lift with each frame's depth and pose onto the scene's points (default), or with the 3am tracker's "
        "MUSt3R pointmaps onto a cloud grown from them (no depth used; evaluated by moving the labels onto the "
        "scene's points)",
    )
    p.add_argument("--frame-stride", type=int, default=1, help="use every N-th frame (default: 1)")
    p.add_argument("--max-frames", type=int, default=None, help="at most N frames (after --frame-stride)")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    from threeam_model.cli.options import add_tracker_options

    m = p.add_argument_group("model")
    m.add_argument(
        "--method",
        choices=("auto", "sam2", "3am", "oracle"),
        default="auto",
        help="tracker: auto (3am with --checkpoint, else sam2), sam2, 3am, or oracle (ground-truth masks)",
    )
    add_tracker_options(m, skip=("method", "max_objects"))  # TrackerConfig's other knobs; max objects: --max-tracks
    m.add_argument("--random-weights", action="store_true", help="allow random weights (results are meaningless)")
    m.add_argument("--max-tracks", type=int, default=32, help="tracks alive at once (the tracker's max objects)")
    m.add_argument(
        "--proposals",
        choices=("sam2", "oracle"),
        default="sam2",
        help="sam2: SAM 2's automatic mask generator (default); oracle: the ground-truth masks prompt the "
        "tracker (to test or time it on every object)",
    )


def add_pipeline_arguments(p: argparse.ArgumentParser) -> None:
    d, k, lift, merge, vote, prop = (
        PipelineParams(),
        KeyframeParams(),
        LiftParams(),
        MergeParams(),
        VoteParams(),
        SamProposalParams(),
    )
    g = p.add_argument_group("pipeline")
    g.add_argument("--keyframes", choices=KEYFRAME_MODES, default=k.mode, help="keyframe rule (default: %(default)s)")
    g.add_argument(
        "--keyframe-stride", type=int, default=k.stride, help="stride rule: every N-th frame (default: %(default)s)"
    )
    g.add_argument(
        "--new-fraction",
        type=float,
        default=k.new_fraction,
        help="coverage rule: share of unseen points that makes a keyframe (default: %(default)s)",
    )
    g.add_argument(
        "--points-per-side",
        type=int,
        default=prop.points_per_side,
        help="automatic mask generator grid (default: %(default)s)",
    )
    g.add_argument(
        "--pred-iou-thresh",
        type=float,
        default=None,
        help=f"generator's predicted-IoU filter (default: {prop.pred_iou_thresh}; 0 with random weights)",
    )
    g.add_argument(
        "--stability-thresh",
        type=float,
        default=None,
        help=f"generator's stability filter (default: {prop.stability_score_thresh}; 0 with random weights)",
    )
    g.add_argument("--min-proposal-area", type=int, default=prop.min_area, help="pixels (default: %(default)s)")
    g.add_argument("--erosion", type=int, default=lift.erosion_px, help="mask erosion in pixels (default: %(default)s)")
    g.add_argument(
        "--depth-tolerance",
        type=float,
        default=lift.depth_tolerance,
        help="reprojection: metres of depth disagreement allowed (default: %(default)s)",
    )
    g.add_argument("--no-depth-check", action="store_true", help="skip the reprojection test (an ablation)")
    g.add_argument(
        "--patience",
        type=int,
        default=d.patience,
        help="retire a track invisible for this many frames (default: only when the tracker is full)",
    )
    g.add_argument(
        "--overlap-3d", type=float, default=merge.overlap_3d, help="3D merge threshold (default: %(default)s)"
    )
    g.add_argument(
        "--min-points", type=int, default=vote.min_points, help="smallest instance kept (default: %(default)s)"
    )


def pipeline_params(args) -> PipelineParams:
    return PipelineParams(
        keyframes=KeyframeParams(mode=args.keyframes, stride=args.keyframe_stride, new_fraction=args.new_fraction),
        lift=LiftParams(erosion_px=args.erosion, depth_tolerance=args.depth_tolerance),
        merge=MergeParams(overlap_3d=args.overlap_3d),
        vote=VoteParams(min_points=args.min_points),
        patience=args.patience,
        check_depth=not args.no_depth_check,
    )


def proposal_params(args, random_weights: bool) -> SamProposalParams:
    d = SamProposalParams()
    # random weights predict meaningless IoUs and stabilities: filtering on them would keep nothing
    iou = args.pred_iou_thresh if args.pred_iou_thresh is not None else (0.0 if random_weights else d.pred_iou_thresh)
    stab = (
        args.stability_thresh
        if args.stability_thresh is not None
        else (0.0 if random_weights else d.stability_score_thresh)
    )
    return SamProposalParams(
        points_per_side=args.points_per_side,
        pred_iou_thresh=iou,
        stability_score_thresh=stab,
        min_area=args.min_proposal_area,
    )


def method_of(args):
    """ "oracle", or the TrackerConfig of the arguments (the benchmark's weight rules)."""
    from threeam_model.instances.runner import ORACLE

    if args.method == ORACLE:
        return ORACLE, {"method": ORACLE, "description": "ground-truth masks (oracle)"}
    from threeam_model.cli.common import method_record, tracker_config

    cfg = tracker_config(args, skip=("method", "max_objects"))
    cfg = dataclasses.replace(cfg, max_objects=args.max_tracks)
    return cfg, method_record(cfg, cfg.method)


def _random(method, args) -> bool:
    return method != "oracle" and (args.tiny or args.random_weights)


# --------------------------------------------------------------------------------------------- one scene


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scene", help="the scene folder (see --layout)")
    p.add_argument("-o", "--output", default="threeam_instances", help="output folder (default: %(default)s)")
    p.add_argument(
        "--gt-file", help="scannet: benchmark GT txt (label*1000+instance per vertex) instead of the aggregation"
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument(
        "--benchmark-format",
        action="store_true",
        help="also write OUT/benchmark/, the official ScanNet evaluator's prediction files",
    )
    add_scene_arguments(p)
    add_model_arguments(p)
    add_pipeline_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


def _segment(scene, method, args):
    import torch

    from threeam_model.instances.runner import build_method, segment_scene

    with torch.inference_mode():
        tracker, proposals = build_method(
            method, _frames_for(scene, args), proposal_params(args, _random(method, args)), args.proposals
        )
        progress = None if args.quiet else _progress(scene.name)
        run = segment_scene(
            scene,
            tracker,
            proposals,
            pipeline_params(args),
            args.frame_stride,
            args.max_frames,
            progress,
            args.geometry,
        )
    if progress is not None:
        print(file=sys.stderr)
    return run


def _frames_for(scene, args):
    from threeam_model.instances.runner import FrameSubset

    return FrameSubset(scene.frames, args.frame_stride, args.max_frames)


def _progress(name: str):
    def report(i: int) -> None:
        print(f"\r{name}: frame {i + 1}", end="", file=sys.stderr, flush=True)

    return report


def _record(method_rec: dict, args, run) -> dict:
    rec = {
        "method": method_rec,
        "proposals": "oracle" if args.method == "oracle" else args.proposals,
        "data": {
            "layout": args.layout,
            "frame_stride": args.frame_stride,
            "max_frames": args.max_frames,
            "frames": run.frames,
            "geometry": args.geometry,
        },
        "params": dataclasses.asdict(pipeline_params(args)),
        "seconds": run.seconds,
    }
    if run.evaluation is not None:
        rec["evaluation"] = run.evaluation.as_dict()
    return rec


def _run(args) -> int:
    from threeam_model.instances.outputs import write_benchmark_format, write_outputs
    from threeam_model.instances.scenes import open_scene

    scene = open_scene(args.scene, args.layout, args.label_map, args.gt_file)
    method, method_rec = method_of(args)
    if _random(method, args):
        print(f"{PROG}: RANDOM WEIGHTS ({method_rec['description']}): the instances mean nothing", file=sys.stderr)
    run = _segment(scene, method, args)
    files = write_outputs(args.output, scene, run.result, _record(method_rec, args, run))
    if args.benchmark_format:
        files["benchmark"] = write_benchmark_format(
            pathlib.Path(args.output) / "benchmark", scene.name, run.result.labels, run.result.scores
        )
    s = run.result.stats
    print(
        f"{scene.name}: {s['instances']} instances from {s['tracks']} tracks over {run.frames} frames "
        f"({s['keyframes']} keyframes) in {run.seconds:.1f} s"
    )
    if run.evaluation is not None:
        e = run.evaluation
        print(
            f"AP {100 * e.ap:.1f}  AP50 {100 * e.ap50:.1f}  AP25 {100 * e.ap25:.1f}  "
            f"({e.num_gt} GT instances, {e.num_pred} predictions)"
        )
    print("wrote " + ", ".join(str(f) for f in files.values()))
    return 0


# --------------------------------------------------------------------------------------------- benchmark


def build_bench_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=BENCH_PROG,
        description="Class-agnostic 3D instance segmentation over several "
        "scenes, pooled AP / AP50 / AP25 (the paper's Table 5). Writes OUT/<scene>/instances.*"
        ", OUT/summary.json, OUT/table.md and OUT/plots/.",
    )
    p.add_argument("data", help="a scene folder, or a folder of scene folders")
    p.add_argument("-o", "--output", default="threeam_bench_instances", help="output folder (default: %(default)s)")
    p.add_argument("--scenes", nargs="+", metavar="NAME", help="only these scenes")
    p.add_argument("--label", help="row label in the table (default: the method)")
    p.add_argument("--no-plots", action="store_true", help="do not draw plots")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--gt-file", default=None, help=argparse.SUPPRESS)
    add_scene_arguments(p)
    add_model_arguments(p)
    add_pipeline_arguments(p)
    return p


def _is_scene(path: pathlib.Path, layout: str) -> bool:
    if layout == "synthetic":
        return (path / "scene.json").is_file()
    if layout == "scannet":
        return (path / f"{path.name}_vh_clean_2.ply").is_file()
    return (path / "scans").is_dir()


def find_scenes(data, layout: str, names: list[str] | None = None) -> list[pathlib.Path]:
    root = pathlib.Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    found = (
        [root] if _is_scene(root, layout) else sorted(p for p in root.iterdir() if p.is_dir() and _is_scene(p, layout))
    )
    if names:
        missing = set(names) - {p.name for p in found}
        if missing:
            raise FileNotFoundError(f"no {layout} scene named {sorted(missing)} in {root}")
        found = [p for p in found if p.name in names]
    if not found:
        raise FileNotFoundError(f"{root} holds no {layout} scene (see threeam_model.instances.scenes)")
    return found


def bench_main(argv: list[str] | None = None) -> int:
    args = build_bench_parser().parse_args(argv)
    try:
        return _bench(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"{BENCH_PROG}: error: {exc}", file=sys.stderr)
        return 2


def _bench(args) -> int:
    from threeam_model.instances import report
    from threeam_model.instances.evaluator import evaluate
    from threeam_model.instances.outputs import write_outputs
    from threeam_model.instances.scenes import open_scene

    paths = find_scenes(args.data, args.layout, args.scenes)
    method, method_rec = method_of(args)
    if _random(method, args):
        print(f"{BENCH_PROG}: RANDOM WEIGHTS ({method_rec['description']}): the numbers mean nothing", file=sys.stderr)
    out = pathlib.Path(args.output)
    pooled_input, per_scene, runs = [], {}, {}
    for path in paths:
        scene = open_scene(path, args.layout, args.label_map)
        if scene.gt is None:
            raise ValueError(f"scene {scene.name} has no ground truth to evaluate against")
        run = _segment(scene, method, args)
        write_outputs(out / scene.name, scene, run.result, _record(method_rec, args, run))
        pooled_input.append(run.scene_instances)
        per_scene[scene.name] = run.evaluation.as_dict()
        runs[scene.name] = {"frames": run.frames, "seconds": run.seconds, "stats": run.result.stats}
    pooled = evaluate(pooled_input).as_dict()
    label = args.label or args.method
    summary = {
        "label": label,
        "method": method_rec,
        "data": str(pathlib.Path(args.data).resolve()),
        "layout": args.layout,
        "pooled": pooled,
        "per_scene": per_scene,
        "runs": runs,
        "params": dataclasses.asdict(pipeline_params(args)),
    }
    (out / report.SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    text = report.table(label, pooled, per_scene, f"{args.layout} scenes")
    (out / report.TABLE_FILE).write_text(text)
    if not args.no_plots:
        report.plot_ap_per_iou({label: pooled["ap_per_overlap"]}, out / "plots" / report.PLOT_FILE)
    print(text, end="")
    print(f"\n{len(paths)} scene(s); results in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
