"""Frame sampling: the FoV ratio against hand-computed geometry, and the sampler's modes and probabilities."""

import numpy as np
import pytest

from threeam_model.data.frames import Frame
from threeam_model.data.readers import MoseVideo, RenderedScene
from threeam_model.data.sampling import FrameSampler, fov_overlap_ratio
from threeam_model.data.synthetic import render_scene

F, SIZE, Z = 100.0, 100, 2.0
K = np.array([[F, 0, (SIZE - 1) / 2], [0, F, (SIZE - 1) / 2], [0, 0, 1.0]])  # cx = cy = 49.5


def _frame(pose, mask_cols=(60, 90), mask_rows=(40, 60), depth=Z):
    """A camera seeing a fronto-parallel plane at `depth`, with an object mask on a pixel rectangle."""
    inst = np.zeros((SIZE, SIZE), np.int64)
    inst[mask_rows[0] : mask_rows[1], mask_cols[0] : mask_cols[1]] = 1
    return Frame(0, np.zeros((0, 0, 3), np.uint8), inst, np.full((SIZE, SIZE), depth, np.float32), K, pose)


def _translated(tx=0.0, ty=0.0, tz=0.0):
    pose = np.eye(4)
    pose[:3, 3] = [tx, ty, tz]
    return pose


REF = _frame(_translated())


@pytest.mark.parametrize(
    "baseline, expect",
    [
        # mask columns 60..89 (30 px) shift by f * b / Z pixels in the reference; inside while u_ref < 99.5
        (0.0, 1.0),
        (0.3, 25 / 30),  # shift 15 px: columns 60..84 land at 75..99
        (0.5, 15 / 30),  # shift 25 px: 60..74 -> 85..99
        (0.7, 5 / 30),  # shift 35 px: 60..64 -> 95..99, below tau
        (0.9, 0.0),  # shift 45 px: all beyond the right edge
        (-0.6, 1.0),  # shift -30 px: 30..59, all inside
    ],
)
def test_ratio_for_sideways_baseline(baseline, expect):
    cand = _frame(_translated(tx=baseline))
    mask = cand.instance == 1
    ratio = fov_overlap_ratio(cand, REF, mask)
    assert ratio == pytest.approx(expect, abs=1e-12)
    assert (ratio > 0.25) == (expect > 0.25)


def test_ratio_for_vertical_baseline_and_depth_change():
    # camera 0.2 m lower (y down -> +y) and the plane at 4 m: rows 40..59 shift by 100 * 0.2 / 4 = 5 px -> all in
    cand = _frame(_translated(ty=0.2), depth=4.0)
    assert fov_overlap_ratio(cand, REF, cand.instance == 1) == pytest.approx(1.0)
    # 1.2 m lower: shift 30 px: rows 70..89 still inside; 2.4 m: 60 px: rows 100..119 all outside
    cand = _frame(_translated(ty=2.4), depth=4.0)
    assert fov_overlap_ratio(cand, REF, cand.instance == 1) == 0.0
    # candidate 1 m behind the reference sees the plane at 3 m; the points are 2 m in front of the reference:
    # u_ref = cx + (u - cx) * 3 / 2 < 99.5  <=>  u < 82.83, so columns 60..82 (23 of 30) are inside
    cand = _frame(_translated(tz=-1.0), depth=3.0)
    assert fov_overlap_ratio(cand, REF, cand.instance == 1) == pytest.approx(23 / 30)


def test_points_behind_the_reference_do_not_count():
    # a candidate at the origin looking backwards (rotated 180 deg about y): its points have z < 0 in the
    # reference frame; ignoring the sign would project them back into the image
    pose = np.diag([-1.0, 1.0, -1.0, 1.0])
    cand = _frame(pose, mask_cols=(40, 60))
    assert fov_overlap_ratio(cand, REF, cand.instance == 1) == 0.0


def test_rotated_candidate_matches_hand_computation():
    # candidate at (2, 0, 2) looking along world -x: camera axes x = world +z, y = world +y, z = world -x.
    # Row 50 of its image at depth d is the world line x = 2 - d, y = 0.005 d, z = 2 + (u - 49.5) d / 100.
    R = np.stack([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]], axis=1)
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = R, [2.0, 0.0, 2.0]
    assert np.linalg.det(R) == pytest.approx(1.0)
    # d = 2: points on x = 0 with z in [1.01, 3.01]: the reference sees them all at u_ref = 49.5
    cand = _frame(pose, mask_cols=(0, 100), mask_rows=(50, 51), depth=2.0)
    assert fov_overlap_ratio(cand, REF, cand.instance == 1) == pytest.approx(1.0)
    # d = 1: points on x = 1: u_ref = 49.5 + 100 / z < 99.5  <=>  z > 2  <=>  u > 49.5: 50 of 100 columns
    cand = _frame(pose, mask_cols=(0, 100), mask_rows=(50, 51), depth=1.0)
    assert fov_overlap_ratio(cand, REF, cand.instance == 1) == pytest.approx(0.5)


def test_invalid_depth_is_left_out_and_geometry_required():
    cand = _frame(_translated(tx=0.3))
    cand.depth[:, 60:75] = 0  # the 15 columns that would land inside at 75..89
    # remaining 60+15..89 (15 cols) shift to 90..104: 10 inside of 15 valid
    assert fov_overlap_ratio(cand, REF, cand.instance == 1) == pytest.approx(10 / 15)
    assert fov_overlap_ratio(cand, REF, np.zeros((SIZE, SIZE), bool)) == 0.0
    no_geo = Frame(0, cand.rgb, cand.instance)
    with pytest.raises(ValueError, match="depth"):
        fov_overlap_ratio(no_geo, REF, cand.instance == 1)


@pytest.fixture(scope="module")
def source():
    return RenderedScene(render_scene(seed=0, num_frames=40, width=80, height=60, num_objects=4))


def test_fov_samples_keep_only_overlapping_frames(source):
    sampler = FrameSampler(num_frames=8, tau=0.25)
    rng = np.random.default_rng(0)
    for _ in range(5):
        s = sampler.fov(source, rng)
        assert s.mode == "fov" and 2 <= len(s.frame_indices) <= 8 and len(set(s.frame_indices)) == len(s.frame_indices)
        ref = source.frame(s.frame_indices[0])
        assert all((ref.instance == i).any() for i in s.obj_ids)
        for t, r in zip(s.frame_indices[1:], s.fov_ratios):
            cand = source.frame(t)
            assert r > 0.25
            assert fov_overlap_ratio(cand, ref, np.isin(cand.instance, s.obj_ids)) == pytest.approx(r)
        assert s.frame_indices[1:] == sorted(s.frame_indices[1:])


def test_fov_drops_what_random_sampling_would_keep(source):
    """Some frames that show the object fail the test: the filter does something on this scene."""
    ref = source.frame(10)
    ids = [i for i in source.object_ids if (ref.instance == i).any()]
    ratios = []
    for t in range(len(source)):
        cand = source.frame(t)
        mask = np.isin(cand.instance, ids)
        if mask.any():
            ratios.append(fov_overlap_ratio(cand, ref, mask))
    assert min(ratios) <= 0.25 < max(ratios)


def test_continuous_samples_and_mode_probabilities(source):
    sampler = FrameSampler(num_frames=8)
    rng = np.random.default_rng(0)
    s = sampler.continuous(source, rng)
    assert s.frame_indices == list(range(s.frame_indices[0], s.frame_indices[0] + 8))
    assert s.obj_ids and all((source.frame(s.frame_indices[0]).instance == i).any() for i in s.obj_ids)
    modes = [sampler.sample(source, rng).mode for _ in range(200)]
    fov_share = np.mean([m.startswith("fov") for m in modes])
    assert 0.7 < fov_share < 0.9  # paper: 0.8 for datasets with geometry (binomial sd ~ 0.03)


def test_no_geometry_means_continuous(tmp_path):
    from threeam_model.data.synthetic import export_davis, generate_scene

    path = generate_scene(tmp_path / "s", seed=2, num_frames=10, width=48, height=36, num_objects=2)
    export_davis(path, tmp_path / "davis", "clip")
    video = MoseVideo(tmp_path / "davis", "clip")
    sampler = FrameSampler(num_frames=4)
    rng = np.random.default_rng(0)
    assert all(sampler.sample(video, rng).mode == "continuous" for _ in range(20))
    with pytest.raises(KeyError, match="FoV sampling probability"):
        FrameSampler(fov_prob={"ase": 0.8}).sample(video, rng)
