"""threeam-bench end to end with tiny random models: on a generated scene and on DAVIS blackswan.

The numbers are meaningless (random weights); what is checked is the pipeline and the files it writes: per-sequence
result JSON with per-frame numbers for every object and frame, mask and label PNGs, summary JSON, the markdown
table, plots, the overlay video, resume, and the comparison table.
"""

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from threeam_model.cli.bench import main
from threeam_model.data.synthetic import generate_scene


def _check_outputs(out, seq, num_frames, frame_size):
    result = json.loads((out / seq / "result.json").read_text())
    assert result["sequence"] == seq and result["num_frames"] == num_frames
    assert result["image_size"] == list(frame_size)
    assert result["objects"], "no object scored"
    for obj_id, e in result["objects"].items():
        pf = e["per_frame"]
        assert len(pf["iou"]) == len(pf["f"]) == len(pf["gt_area"]) == num_frames
        assert all(0.0 <= v <= 1.0 for v in pf["iou"])
        assert e["iou"] == pytest.approx(np.mean(pf["iou"]))
        assert e["n_positive"] == sum(a > 0 for a in pf["gt_area"])
        # the saved masks are the scored masks: pixel counts match the recorded prediction areas
        masks = sorted((out / seq / "masks" / obj_id).glob("*.png"))
        assert len(masks) == num_frames
        areas = [int((np.asarray(Image.open(m)) > 0).sum()) for m in masks]
        assert areas == pf["pred_area"]
    labels = sorted((out / seq / "labels").glob("*.png"))
    assert len(labels) == num_frames and Image.open(labels[0]).mode == "P"
    assert Image.open(labels[0]).size == (frame_size[1], frame_size[0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sequences"] == [seq] and summary["whole"]["n_objects"] == len(result["objects"])
    table = (out / "table.md").read_text()
    assert "| Method | Whole Set IoU | Whole Set Positive IoU | Whole Set Successful IoU" in table
    assert (out / "plots" / "object_iou_spread.png").stat().st_size > 1000
    assert (out / "plots" / f"{seq}_per_frame_iou.png").stat().st_size > 1000
    return result, summary


@pytest.mark.timeout(300)
def test_bench_on_generated_scene(tmp_path, capsys):
    scene = generate_scene(tmp_path / "scenes" / "room0", seed=3, num_frames=14, width=96, height=72, num_objects=3)
    out = tmp_path / "out"
    args = [
        str(scene),
        "--layout",
        "synthetic",
        "-o",
        str(out),
        "--method",
        "sam2",
        "--tiny",
        "--device",
        "cpu",
        "--l-min",
        "1",
        "--quiet",
    ]
    assert main(args) == 0
    result, summary = _check_outputs(out, "room0", 14, (72, 96))
    # the scene's objects leave the view and come back: the largest-mask frame is not always frame 0, so both
    # directions ran, and the subset holds the objects with >= 2 visible segments longer than 1 frame
    conds = {e["conditioning_frame"] for e in result["objects"].values()}
    assert any(0 < c < 13 for c in conds)
    for e in result["objects"].values():
        vis = np.asarray(e["per_frame"]["gt_area"]) > 0
        assert e["selected_subset"] == (e["visible_segments"] >= 2)
        assert e["per_frame"]["iou"][e["conditioning_frame"]] > 0  # the prompt frame is answered with a mask
        assert vis[e["conditioning_frame"]]
    assert summary["subset"]["n_objects"] == sum(e["selected_subset"] for e in result["objects"].values())
    printed = capsys.readouterr().out
    assert "| sam2 |" in printed and "1 sequence(s) run, 0 resumed" in printed

    # resume: nothing is rerun, the same numbers come back
    assert main(args) == 0
    assert "0 sequence(s) run, 1 resumed" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["whole"] == summary["whole"]

    # two-view protocol into another folder, then one comparison table for both runs
    out2 = tmp_path / "out_two_view"
    assert main([*args[:3], "-o", str(out2), *args[5:], "--protocol", "two_view", "--no-plots", "--label", "2v"]) == 0
    two_view = json.loads((out2 / "room0" / "result.json").read_text())
    assert two_view["protocol"] == "two_view" and two_view["objects"].keys() == result["objects"].keys()
    capsys.readouterr()
    assert main(["--compare", str(out / "summary.json"), str(out2 / "summary.json"), "--labels", "bi", "2v"]) == 0
    table = capsys.readouterr().out
    assert "| bi |" in table and "| 2v |" in table


@pytest.mark.timeout(300)
def test_bench_on_davis_blackswan(shared_dir, tmp_path):
    """DAVIS layout (a single-sequence folder), frames thinned and downscaled to keep the run short."""
    out = tmp_path / "out"
    args = [
        str(shared_dir / "data/davis/blackswan"),
        "--layout",
        "davis",
        "-o",
        str(out),
        "--method",
        "sam2",
        "--tiny",
        "--device",
        "cpu",
        "--stride",
        "5",
        "--max-frames",
        "8",
        "--max-side",
        "240",
        "--video",
        "--quiet",
    ]
    assert main(args) == 0
    result, _ = _check_outputs(out, "blackswan", 8, (135, 240))
    assert list(result["objects"]) == ["1"]  # the swan: 0/255 grayscale masks are object 1
    assert result["frame_names"] == [f"{i:05d}" for i in range(0, 40, 5)]
    gt_area = result["objects"]["1"]["per_frame"]["gt_area"]
    assert all(a > 0 for a in gt_area)  # the swan is on every frame
    video = cv2.VideoCapture(str(out / "videos" / "blackswan.mp4"))
    assert video.isOpened() and int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 8
    size = (int(video.get(cv2.CAP_PROP_FRAME_WIDTH)), int(video.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    assert size == (240, 136)  # 240x135 padded to even for MPEG-4
    video.release()


def test_bench_usage_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("THREEAM_WEIGHTS", str(tmp_path / "no_weights"))
    scene = generate_scene(tmp_path / "s", seed=0, num_frames=3, width=32, height=24, num_objects=1)
    # real weights are required unless random ones are asked for
    assert main([str(scene), "--layout", "synthetic", "-o", str(tmp_path / "o"), "--method", "sam2"]) == 2
    assert "official weights missing" in capsys.readouterr().err
    assert main([str(tmp_path / "nowhere"), "--layout", "davis", "--tiny"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([str(scene), "--layout", "davis", "--tiny"]) == 2
    assert "JPEGImages" in capsys.readouterr().err
    assert main([]) == 2
    assert "give the data folder" in capsys.readouterr().err


@pytest.mark.timeout(300)
def test_bench_3am_on_generated_scene(tmp_path):
    """The 3AM tracker (tiny SAM 2 + tiny MUSt3R + merger) through the same harness."""
    scene = generate_scene(tmp_path / "room1", seed=5, num_frames=8, width=64, height=48, num_objects=2)
    out = tmp_path / "out"
    args = [
        str(scene),
        "--layout",
        "synthetic",
        "-o",
        str(out),
        "--method",
        "3am",
        "--tiny",
        "--device",
        "cpu",
        "--no-plots",
        "--quiet",
    ]
    assert main(args) == 0
    result = json.loads((out / "room1" / "result.json").read_text())
    assert result["method"]["method"] == "3am" and result["method"]["tiny"]
    assert result["objects"] and all(len(e["per_frame"]["iou"]) == 8 for e in result["objects"].values())
    assert "| 3am |" in (out / "table.md").read_text()
