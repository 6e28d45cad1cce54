"""Benchmark inputs: every layout finds its sequences and yields the same frames and ids; thinning and resizing."""

import numpy as np
import pytest
from PIL import Image

from threeam_model.data.readers import SyntheticScene
from threeam_model.data.synthetic import export_davis, generate_scene
from threeam_model.eval.runner import scan_ground_truth
from threeam_model.eval.sequences import Thinned, natural_key, open_sequences


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return generate_scene(tmp_path_factory.mktemp("scenes") / "roomA", seed=1, num_frames=12, width=64, height=48)


def test_davis_multi_sequence_root_matches_the_scene(scene, tmp_path):
    export_davis(scene, tmp_path / "davis", "roomA")
    export_davis(scene, tmp_path / "davis", "roomB")
    seqs = open_sequences(tmp_path / "davis", "davis")
    assert [s.name for s in seqs] == ["roomA", "roomB"]
    truth = SyntheticScene(scene)
    for i in (0, 7):
        assert np.array_equal(seqs[0].frame(i).instance, truth.frame(i).instance)
    assert open_sequences(tmp_path / "davis", "davis", names=["roomB"])[0].name == "roomB"
    with pytest.raises(FileNotFoundError, match="roomC"):
        open_sequences(tmp_path / "davis", "davis", names=["roomC"])


def test_davis_single_sequence_folder(shared_dir):
    (seq,) = open_sequences(shared_dir / "data/davis/blackswan", "davis")
    assert seq.name == "blackswan" and len(seq) == 50
    f = seq.frame(0)
    assert f.rgb.shape == (480, 854, 3) and set(np.unique(f.instance).tolist()) == {0, 1}


def test_replica_layout_with_semantic_nerf_names(scene, tmp_path):
    truth = SyntheticScene(scene)
    root = tmp_path / "replica" / "room_0"
    (root / "rgb").mkdir(parents=True)
    (root / "semantic_instance").mkdir()
    for i in range(len(truth)):  # rgb_<i>.png / semantic_instance_<i>.png, unpadded numbers
        f = truth.frame(i)
        Image.fromarray(f.rgb).save(root / "rgb" / f"rgb_{i}.png")
        Image.fromarray(f.instance.astype(np.uint16)).save(root / "semantic_instance" / f"semantic_instance_{i}.png")
    (seq,) = open_sequences(tmp_path / "replica", "replica", label_dir="semantic_instance")
    assert seq.name == "room_0" and len(seq) == len(truth)
    for i in (2, 10, 11):  # natural order: frame 10 is not read after frame 1
        assert np.array_equal(seq.frame(i).instance, truth.frame(i).instance)
        assert np.array_equal(seq.frame(i).rgb, truth.frame(i).rgb)
    with pytest.raises(FileNotFoundError, match="instance"):
        open_sequences(tmp_path / "replica", "replica")  # default label folder "instance" is absent


def test_synthetic_layout_and_ground_truth_scan(scene):
    (seq,) = open_sequences(scene, "synthetic")
    (same,) = open_sequences(scene.parent, "synthetic")
    assert seq.name == same.name == "roomA"
    areas = scan_ground_truth(seq)
    truth = SyntheticScene(scene)
    for obj_id, a in areas.items():
        assert a.tolist() == [int((truth.frame(i).instance == obj_id).sum()) for i in range(len(truth))]
    assert set(areas) <= set(truth.object_ids)
    assert list(scan_ground_truth(seq, max_objects=1)) == sorted(areas)[:1]


def test_thinned_view(scene):
    (seq,) = open_sequences(scene, "synthetic")
    t = Thinned(seq, stride=3, max_frames=3, max_side=32)
    assert len(t) == 3 and [t.frame_name(i) for i in range(3)] == ["00000", "00003", "00006"]
    f = t.frame(1)
    assert f.rgb.shape == (24, 32, 3) and f.instance.shape == (24, 32)
    # ids survive nearest-neighbour downscaling (no blended, made-up ids)
    assert set(np.unique(f.instance)) <= set(np.unique(seq.frame(3).instance))
    assert np.array_equal(Thinned(seq).frame(5).instance, seq.frame(5).instance)
    with pytest.raises(ValueError, match="bad thinning"):
        Thinned(seq, stride=0)


def test_layout_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown layout"):
        open_sequences(tmp_path, "kitti")
    with pytest.raises(FileNotFoundError, match="JPEGImages"):
        open_sequences(tmp_path, "davis")
    with pytest.raises(ValueError, match="obj_id_root"):
        open_sequences(tmp_path, "scannetpp")
    assert sorted(["f10", "f9", "f100"], key=natural_key) == ["f9", "f10", "f100"]
