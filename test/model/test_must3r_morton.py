"""The compiled Morton coverage index against the official KD-tree searcher: exact nearest points, the ranked
queries that answer exactly only what the keyframe score's percentile reads, bounded slots, the CPU default."""

import numpy as np
import pytest
import torch

from threeam_model.must3r import keyframes, morton_index
from threeam_model.must3r.keyframes import KDTreeIndex, KeyframeParams, Ranked, coverage_index, overlap_score
from threeam_model.must3r.morton_index import MortonIndex

CAM = torch.tensor([0.1, -0.2, 0.05])


def cloud(rng, kind: str, n: int, i: int) -> np.ndarray:
    if kind == "gaussian":
        return rng.normal(size=(n, 3)) * (1 + 0.1 * i)
    if kind == "clusters_and_far":  # dense clusters, and points far outside the grid (clamped to its border)
        return np.concatenate([rng.normal(size=(n - 5, 3)) * 0.01 + i, rng.normal(size=(5, 3)) * 1e5])
    if kind == "surface":  # a wavy sheet seen from the camera, as a pointmap is
        u, v = rng.uniform(-1, 1, (2, n))
        return np.stack([u + 0.05 * i, v, 2 + 0.1 * np.sin(5 * u) * np.cos(3 * v)], -1)
    return np.repeat(rng.normal(size=(n // 5, 3)), 5, axis=0)  # every point five times


def image(rng, kind, n, i, valid_share=0.8):
    pts = torch.from_numpy(cloud(rng, kind, n, i).astype(np.float32))
    valid = torch.from_numpy(rng.random(n) < valid_share)
    return pts, valid


def filled(kind: str, seed: int = 0, images: int = 9, n: int = 500):
    """Both indexes after `images` updates that evict as a capped memory does (one image without valid points)."""
    rng = np.random.default_rng(seed)
    morton, kdtree = MortonIndex(2), KDTreeIndex(2)
    for i in range(images):
        pts, valid = image(rng, kind, n, i, 0.0 if i == 2 else 0.8)
        drop = [i - 4] if i >= 4 else []
        morton = morton.updated([(i, pts, valid, CAM)], drop)
        kdtree = kdtree.updated([(i, pts, valid, CAM)], drop)
    return rng, morton, kdtree


@pytest.mark.parametrize("kind", ["gaussian", "clusters_and_far", "surface", "duplicates"])
def test_exact_nearest_points_equal_the_kdtree_searchers(kind):
    rng, morton, kdtree = filled(kind)
    assert len(morton) == len(kdtree) == 4 and morton.num_points == kdtree.num_points
    pts, valid = image(rng, kind, 3000, 4)
    pts[:40] = pts[:40] * 1e3  # and queries far from everything
    got, unresolved, needed = morton.nearest(pts, valid, CAM)
    want = kdtree.nearest(pts, valid, CAM)[0]
    assert unresolved is None and needed is None
    assert torch.equal(got[valid], want[valid])  # the same float64 formula on the same points: bit for bit


def test_an_empty_index_and_empty_bins_answer_inf():
    assert torch.isinf(MortonIndex(2).nearest(torch.ones(4, 3), torch.ones(4, dtype=torch.bool), CAM)[0]).all()
    one_side = torch.tensor([[1.0, 0.0, 1.0], [1.2, 0.1, 1.0]])  # a single direction bin holds points
    index = MortonIndex(2).updated([(0, one_side, torch.ones(2, dtype=torch.bool), torch.zeros(3))])
    d = index.nearest(
        torch.tensor([[1.1, 0.0, 1.0], [-1.0, 0.0, -1.0]]), torch.ones(2, dtype=torch.bool), torch.zeros(3)
    )[0]
    assert torch.isfinite(d[0]) and torch.isinf(d[1])


@pytest.mark.parametrize("percentile", [0.0, 1.0, 50.0, 85.0, 99.9, 100.0])
@pytest.mark.parametrize("kind", ["gaussian", "surface", "duplicates"])
def test_ranked_queries_give_the_exact_score(kind, percentile):
    rng, morton, kdtree = filled(kind, seed=1)
    params = KeyframeParams(subsample=1, percentile=percentile)
    pts, valid = image(rng, kind, 4000, 5)
    depth = torch.from_numpy(rng.uniform(0.5, 4.0, (40, 100)).astype(np.float32))
    depth.view(-1)[:7] = torch.tensor([0.0, -1.0, float("inf"), 2.0, 3.0, -0.5, 1e-12])  # scales of either sign
    exact = kdtree.nearest(pts, valid, CAM)[0]
    ranked = Ranked(keyframes.score_scale(depth, params), percentile)
    got = morton.nearest(pts, valid, CAM, ranked)[0]
    want_score = overlap_score(exact, depth, valid, params)
    assert overlap_score(got, depth, valid, params).item() == want_score.item()
    differ = valid & (got != exact)
    assert (got[differ] >= exact[differ]).all()  # where not exact, an upper bound
    if 50.0 <= percentile <= 85.0:  # the cheap bound was enough for some of the queries
        assert differ.sum() > 0


def test_ranked_queries_with_few_or_no_valid_points():
    _, morton, kdtree = filled("gaussian", seed=2)
    params = KeyframeParams(subsample=1)
    pts = torch.randn(6, 3)
    depth = torch.full((1, 6), 2.0)
    for count in (0, 1, 2, 6):
        valid = torch.arange(6) < count
        got = morton.nearest(pts, valid, CAM, Ranked(keyframes.score_scale(depth, params), 85.0))[0]
        want = kdtree.nearest(pts, valid, CAM)[0]
        assert overlap_score(got, depth, valid, params).item() == overlap_score(want, depth, valid, params).item()


def test_versions_are_immutable_and_slots_stay_bounded_on_a_long_stream():
    rng = np.random.default_rng(4)
    index, cap = MortonIndex(2), 4
    first = None
    for i in range(300):
        pts, valid = image(rng, "gaussian", 50, i % 7)
        index = index.updated([(i, pts, valid, CAM)], [i - cap] if i >= cap else [])
        first = first or index
    assert len(index) == cap and len(first) == 1 and first.num_points < index.num_points
    assert int(index.slots.max()) < cap + 1  # slots are reused: their ids do not grow with the stream
    assert sorted(index.images) == list(range(300 - cap, 300))
    with pytest.raises(ValueError, match="already indexed"):
        index.updated([(299, pts, valid, CAM)])


def test_auto_is_the_morton_index_on_a_cpu_and_the_kdtree_without_numba(monkeypatch):
    assert isinstance(coverage_index("auto", 2, torch.device("cpu")), MortonIndex)
    monkeypatch.setattr(morton_index, "numba", None)
    assert isinstance(coverage_index("auto", 2, torch.device("cpu")), KDTreeIndex)
    with pytest.raises(ImportError, match="pip install numba"):
        coverage_index("morton", 2, torch.device("cpu"))
