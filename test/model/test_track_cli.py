"""threeam-track: frame order of the forward/backward passes, outputs (DAVIS PNGs, overlay MP4), prompts from the
command line, the demo, the random-weights warning and clear errors."""

import pathlib

import cv2
import numpy as np
import pytest
from PIL import Image

from threeam_model.cli import track as cli
from threeam_model.data.labels_io import davis_palette, read_annotation
from threeam_model.interface import FrameResult, ObjectResult, Tracker, check_frame, check_prompt


class StampTracker(Tracker):
    """Fake tracker: every tracked object's mask is the rectangle of rows [0, v) where v = the frame's stamp (its
    pixel value), so the PNG written for a frame tells which frame the tracker saw. Records every call."""

    def __init__(self):
        self.calls = []
        self.reset()

    def reset(self):
        self.calls.append(("reset",))
        self._ids, self._frame, self._idx = {}, None, -1

    def _obj(self, obj_id):
        m = np.zeros(self._frame.shape[:2], np.float32) - 1
        m[: int(self._frame[0, 0, 0])] = 1
        return ObjectResult.from_logits(obj_id, m, 1.0)

    def track(self, frame):
        self._frame = check_frame(frame)
        self._idx += 1
        self.calls.append(("track", int(frame[0, 0, 0])))
        return FrameResult(self._idx, frame.shape[:2], {k: self._obj(k) for k in sorted(self._ids)})

    def add_prompt(self, obj_id, points=None, labels=None, box=None, mask=None, conditioning=None):
        check_prompt(self._frame.shape[:2], points, labels, box, mask)
        self.calls.append(("prompt", obj_id, int(self._frame[0, 0, 0])))
        self._ids[obj_id] = True
        return self._obj(obj_id)

    def remove_object(self, obj_id):
        del self._ids[obj_id]

    @property
    def object_ids(self):
        return sorted(self._ids)

    @property
    def frame_index(self):
        return self._idx


def _stamped_folder(tmp_path, n=7, size=(30, 40)):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(n):  # stamp i+1 in every pixel; names sort naturally (frame_2 before frame_10)
        cv2.imwrite(str(folder / f"frame_{i * 5}.png"), np.full((*size, 3), i + 1, np.uint8))
    return folder


@pytest.mark.parametrize("direction", ["both", "forward", "backward"])
def test_forward_and_backward_passes_write_each_frame_from_its_own_pass(tmp_path, direction):
    source = cli.FrameSource(_stamped_folder(tmp_path))
    assert source.names == [f"frame_{i * 5}" for i in range(7)]
    tracker = StampTracker()
    prompts = cli.parse_prompts(["1:5,5"], ["2:1,1,20,20"], None)
    out = tmp_path / "masks"
    out.mkdir()
    cli.track_video(tracker, source, prompts, 3, out, direction=direction, progress=False)
    tracks = [c[1] for c in tracker.calls if c[0] == "track"]
    fwd, bwd = [4, 5, 6, 7], [4, 3, 2, 1]
    assert tracks == {"both": fwd + bwd, "forward": fwd, "backward": bwd}[direction]
    prompted = [c for c in tracker.calls if c[0] == "prompt"]
    assert all(c[2] == 4 for c in prompted) and {c[1] for c in prompted} == {1, 2}
    tracked = set(tracks)
    for i, name in enumerate(source.names):
        labels = read_annotation(out / f"{name}.png")
        assert Image.open(out / f"{name}.png").mode == "P"
        rows = int((labels > 0).any(axis=1).sum())
        # object 2 covers object 1 where both are set (equal logits: the higher id wins the tie by order)
        assert rows == (i + 1 if (i + 1) in tracked else 0), name


def test_backward_from_the_first_frame_writes_the_prompted_frame(tmp_path):
    source = cli.FrameSource(_stamped_folder(tmp_path, n=3))
    tracker = StampTracker()
    out = tmp_path / "masks"
    out.mkdir()
    stats = cli.track_video(tracker, source, cli.parse_prompts(["1:5,5"], None, None), 0, out, "backward", False)
    assert [c[1] for c in tracker.calls if c[0] == "track"] == [1] and stats["frames"] == 1
    rows = [int((read_annotation(out / f"{name}.png") > 0).any(axis=1).sum()) for name in source.names]
    assert rows == [1, 0, 0], "frame 0 holds its prompt's mask, the frames no pass reached are background"


def test_prompt_parsing(tmp_path):
    label = np.zeros((30, 40), np.uint8)
    label[2:8, 3:9] = 4
    label[10:20, 10:30] = 7
    img = Image.fromarray(label, mode="P")
    img.putpalette(davis_palette())
    img.save(tmp_path / "labels.png")
    Image.fromarray(((label == 4) * 255).astype(np.uint8)).save(tmp_path / "one.png")
    p = cli.parse_prompts(["1:5,6", "1:7,8:0"], ["2:1,2,3,4"], [str(tmp_path / "labels.png"), f"9:{tmp_path}/one.png"])
    assert sorted(p) == [1, 2, 4, 7, 9]
    assert p[1].points == [[5, 6], [7, 8]] and p[1].labels == [1, 0] and p[1].box is None
    assert p[2].box == [1, 2, 3, 4]
    assert p[4].mask.sum() == 36 and p[7].mask.sum() == 200 and np.array_equal(p[9].mask, label == 4)
    for bad, msg in [
        (dict(points=["x:1,2"]), "integer object id"),
        (dict(points=["1:1,2,3"]), "2 comma-separated numbers"),
        (dict(points=["1:1,2:5"]), "label must be 1"),
        (dict(points=["300:1,2"]), "1..255"),
        (dict(boxes=["1:1,2,3,4", "1:0,0,5,5"]), "two boxes"),
        (dict(masks=["3:nothere.png"]), "file not found"),
        (dict(points=["9:1,1"], masks=[f"9:{tmp_path}/one.png"]), "cannot be combined"),
    ]:
        with pytest.raises(cli.UsageError, match=msg):
            cli.parse_prompts(bad.get("points"), bad.get("boxes"), bad.get("masks"))


def test_video_file_end_to_end_with_tiny_models(tmp_path, capsys):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(5):
        writer.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    writer.release()
    out = tmp_path / "out"
    rc = cli.main(
        [str(video), "-o", str(out), "--tiny", "--frame", "2", "--box", "1:5,5,30,30", "--point", "2:50,40", "--quiet"]
    )
    assert rc == 0, capsys.readouterr().err
    pngs = sorted((out / "Annotations" / "clip").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(5)]
    cap = cv2.VideoCapture(str(out / "clip_overlay.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    cap.release()
    err = capsys.readouterr().err
    assert "tiny RANDOM models" in err and "5 frames tracked" in err


def test_demo_with_tiny_models(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["--demo", "--tiny", "-o", str(out), "--demo-frames", "6", "--quiet", "--method", "3am"]) == 0
    captured = capsys.readouterr()
    assert len(list((out / "Annotations" / "demo").glob("*.png"))) == 6
    assert (out / "demo_overlay.mp4").stat().st_size > 0
    assert "demo scores against the ground truth" in captured.out


def test_demo_with_rgbd_reid_gets_the_clips_exact_geometry(tmp_path, capsys, monkeypatch):
    from threeam_model.reid.reid import GeometricReID

    seen = []
    track = GeometricReID.track

    def recording(self, frame, geometry=None):
        seen.append(geometry)
        return track(self, frame, geometry)

    monkeypatch.setattr(GeometricReID, "track", recording)
    out = tmp_path / "demo"
    argv = ["--demo", "--tiny", "-o", str(out), "--demo-frames", "4", "--quiet", "--no-video", "--method", "sam2"]
    assert cli.main([*argv, "--reid", "rgbd"]) == 0
    assert "geometric re-id (rgbd)" in capsys.readouterr().err
    from threeam_model.data.readers.synthetic import SyntheticScene

    scene = SyntheticScene(out / "demo_scene")
    assert seen and all(g is not None for g in seen)
    depths = {g.depth.tobytes() for g in seen}
    truth = {scene.frame(i, with_rgb=False).depth.tobytes() for i in range(len(scene))}
    assert depths <= truth and len(depths) == len(truth), "every tracked frame got one of the clip's depth maps"
    assert cli.main(["clip.mp4", "--point", "1:1,1", "--reid", "rgbd", "-o", str(tmp_path / "o"), "--quiet"]) == 2
    assert "only the --demo clip" in capsys.readouterr().err


def test_missing_weights_give_a_loud_warning_and_random_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("THREEAM_WEIGHTS", str(tmp_path / "empty"))
    args = cli.build_parser().parse_args(["clip.mp4", "--point", "1:1,1", "--method", "3am"])
    cfg, notes = cli.config_from_args(args)
    assert cfg.sam2_checkpoint is None and cfg.must3r_checkpoint is None and not cfg.tiny
    assert any("RANDOM WEIGHTS" in n and "threeam-download-weights" in n for n in notes)
    assert any("Feature Merger is untrained" in n for n in notes)
    demo_cfg, demo_notes = cli.config_from_args(cli.build_parser().parse_args(["--demo"]))
    assert demo_cfg.tiny and any("tiny random models" in n for n in demo_notes)
    # with the files present, they are used
    (tmp_path / "w").mkdir()
    for name in ("sam2.1_hiera_tiny.pt", "MUSt3R_512.pth"):
        (tmp_path / "w" / name).write_bytes(b"x")
    monkeypatch.setenv("THREEAM_WEIGHTS", str(tmp_path / "w"))
    cfg, notes = cli.config_from_args(args)
    assert pathlib.Path(cfg.sam2_checkpoint).name == "sam2.1_hiera_tiny.pt"
    assert pathlib.Path(cfg.must3r_checkpoint).name == "MUSt3R_512.pth"
    assert not any("RANDOM" in n for n in notes)


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    folder = _stamped_folder(tmp_path, n=3)
    cases = [
        ([str(tmp_path / "nope")], "input not found"),
        ([str(folder)], "at least one prompt"),
        ([str(folder), "--point", "1:500,5", "--tiny"], "object 1 on frame 0: point (500, 5) lies outside the 40x30"),
        ([str(folder), "--point", "1:5,5", "--frame", "9", "--tiny"], "--frame 9 is outside"),
        (["--demo", str(folder)], "do not give an input"),
        ([], "give a video file or an image folder"),
    ]
    for argv, msg in cases:
        assert cli.main([*argv, "-o", str(tmp_path / "o"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert msg in err, (argv, err)


def test_main_leaves_autograd_as_it_found_it(tmp_path):
    import torch

    assert torch.is_grad_enabled()
    cli.main(["--demo", "--tiny", "-o", str(tmp_path), "--demo-frames", "2", "--quiet", "--no-video"])
    assert torch.is_grad_enabled()
