"""threeam-instances and threeam-bench --task instances3d end to end: the oracle (AP checked) and the tiny random
tracker with SAM 2's automatic mask generator (numbers meaningless: the files are checked)."""

import json

import numpy as np
import pytest

from threeam_model.cli import bench
from threeam_model.cli import instances as cli
from threeam_model.data.ply import read_ply
from threeam_model.data.synthetic import POINTS_FILE, generate_scene


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    for seed in (0, 1):
        generate_scene(root / f"scene{seed}", seed=seed, num_frames=40, num_objects=4, with_points=True)
    return root


def _check_outputs(out, scene_dir):
    vertex, _ = read_ply(scene_dir / POINTS_FILE)
    n = len(vertex["x"])
    npz = np.load(out / "instances.npz")
    ids, scores = npz["ids"], npz["scores"]
    assert ids.shape == (n,) and scores.shape == (n,) and ids.dtype == np.int32
    doc = json.loads((out / "instances.json").read_text())
    assert doc["num_points"] == n
    listed = {inst["id"]: inst for inst in doc["instances"]}
    assert set(np.unique(ids)) - {0} == set(listed)
    for i, inst in listed.items():
        assert inst["num_points"] == int((ids == i).sum())
        assert npz["instance_scores"][i - 1] == pytest.approx(inst["score"])
    assert ((scores > 0) <= (ids > 0)).all() and (scores <= 1.0).all()
    ply, _ = read_ply(out / "instances.ply")
    np.testing.assert_array_equal(ply["instance"], ids)
    np.testing.assert_allclose(ply["x"], vertex["x"])
    colors = np.stack([ply["red"], ply["green"], ply["blue"]], 1)
    for i in listed:  # one colour per instance, grey for none
        assert len(np.unique(colors[ids == i], axis=0)) == 1
    assert (colors[ids == 0] == 128).all()
    return doc


def test_oracle_run_writes_consistent_files_and_scores(scenes, tmp_path, capsys):
    out = tmp_path / "oracle"
    assert (
        cli.main([str(scenes / "scene0"), "--method", "oracle", "-o", str(out), "--quiet", "--benchmark-format"]) == 0
    )
    doc = _check_outputs(out, scenes / "scene0")
    assert doc["evaluation"]["num_gt"] == 4 and doc["evaluation"]["ap50"] >= 0.9
    # the official evaluator's input format: one line per instance, one 0/1 per point in its mask file
    ids = np.load(out / "instances.npz")["ids"]
    lines = (out / "benchmark" / "scene0.txt").read_text().splitlines()
    assert len(lines) == len(doc["instances"])
    for line, inst in zip(lines, sorted(doc["instances"], key=lambda i: i["id"])):
        rel, label, score = line.split()
        assert label == "3" and float(score) == pytest.approx(inst["score"], abs=1e-6)
        np.testing.assert_array_equal(np.loadtxt(out / "benchmark" / rel, dtype=int), ids == inst["id"])
    assert "AP50" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["3am", "sam2"])
def test_tiny_tracker_with_sam2_proposals_end_to_end(scenes, tmp_path, capsys, method):
    out = tmp_path / "tiny"
    args = [
        str(scenes / "scene1"),
        "--method",
        method,
        "--tiny",
        "--device",
        "cpu",
        "-o",
        str(out),
        "--quiet",
        "--max-frames",
        "12",
        "--keyframe-stride",
        "4",
        "--points-per-side",
        "6",
        "--min-points",
        "1",
    ]
    assert cli.main(args) == 0
    doc = _check_outputs(out, scenes / "scene1")
    stats = doc["stats"]
    assert doc["data"]["frames"] == 12 and stats["keyframes"] == 3
    assert stats["proposals"] > 0 and stats["tracks"] > 0  # the generator proposed, the tracker propagated
    assert doc["method"]["tiny"] and "RANDOM WEIGHTS" in capsys.readouterr().err


def test_refuses_random_weights_without_being_told(scenes, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("THREEAM_WEIGHTS", str(tmp_path / "no_weights"))
    assert cli.main([str(scenes / "scene0"), "--method", "sam2", "-o", str(tmp_path / "x")]) == 2
    assert "random-weights" in capsys.readouterr().err


def test_bench_instances3d_table_and_plot(scenes, tmp_path, capsys):
    out = tmp_path / "bench"
    code = bench.main(["--task", "instances3d", str(scenes), "--method", "oracle", "-o", str(out), "--quiet"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["per_scene"]) == {"scene0", "scene1"} and summary["pooled"]["num_gt"] == 8
    assert summary["pooled"]["ap50"] >= 0.9
    table = (out / "table.md").read_text()
    assert "| Method | Type | 3D GT | AP | AP50 | AP25 |" in table and "| oracle | Online | No |" in table
    assert "ESAM" in table  # the paper's rows, for reference
    assert (out / "plots" / "ap_per_iou.png").stat().st_size > 1000
    assert (out / "scene1" / "instances.ply").is_file()
    assert "3AM (paper)" in capsys.readouterr().out
    # the VOS benchmark is untouched by the task switch
    with pytest.raises(SystemExit):
        bench.main(["--task", "nope"])


def test_tiny_3am_lifting_with_its_pointmaps(scenes, tmp_path):
    out = tmp_path / "pointmap"
    args = [
        str(scenes / "scene0"),
        "--method",
        "3am",
        "--tiny",
        "--device",
        "cpu",
        "-o",
        str(out),
        "--quiet",
        "--geometry",
        "pointmap",
        "--max-frames",
        "8",
        "--keyframe-stride",
        "4",
        "--proposals",
        "oracle",
        "--min-points",
        "1",
    ]
    assert cli.main(args) == 0
    doc = json.loads((out / "instances.json").read_text())
    n = doc["stats"]["cloud_points"]
    assert n > 0 and doc["num_points"] == n and doc["data"]["geometry"] == "pointmap"
    ids = np.load(out / "instances.npz")["ids"]
    ply, faces = read_ply(out / "instances.ply")
    assert len(ids) == len(ply["x"]) == n and faces is None  # the cloud grown from MUSt3R's pointmaps
    assert "evaluation" in doc  # labels moved onto the scene's points (random MUSt3R: meaningless numbers)
    # plain SAM 2 returns no pointmaps
    assert cli.main([*args[:2], "sam2", *args[3:]]) == 2
