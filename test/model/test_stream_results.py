"""Frame results composed from low-res logits: the sparse (CPU) and dense (GPU-style) ways give the official
upsampling's masks, boxes and label image exactly; full-size logits are made only on request."""

import numpy as np
import pytest
import torch

from threeam_model.interface import FrameResult, ObjectResult
from threeam_model.sam2_build import build_sam2
from threeam_model.streaming import StreamingSAM2
from threeam_model.streaming.results import (
    compose_dense,
    compose_sparse,
    height_formula_is_exact,
    separable_upsampling_is_exact,
    upsample,
)


def blobs(n, h, w, seed):
    """n low-res logit maps with a few positive blobs each (some overlapping, one empty)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    maps = []
    for i in range(n):
        cy, cx = torch.rand(2, generator=g) * torch.tensor([h, w])
        r = 2 + torch.rand(1, generator=g) * h / 3
        logit = 4 * (1 - ((yy - cy) ** 2 + (xx - cx) ** 2) / r**2) + 0.3 * torch.randn(h, w, generator=g)
        maps.append(logit if i != 2 else -torch.ones(h, w))  # object 3 is absent
    return torch.stack(maps)[:, None]


def reference(low_res, ids, size):
    """Masks and label image by the official upsampling of every object and an argmax on the host."""
    logits = upsample(low_res, size)[:, 0].numpy()
    masks = logits > 0
    winner = np.where(masks, logits, -np.inf).argmax(0)
    labels = np.where(masks.any(0), np.array(ids)[winner], 0).astype(np.uint16)
    return logits, masks, labels


@pytest.mark.parametrize("low, size", [((16, 16), (120, 160)), ((64, 64), (72, 88)), ((32, 32), (480, 640))])
def test_sparse_and_dense_equal_the_official_upsampling(low, size):
    assert separable_upsampling_is_exact(low, size)  # the property the sparse path rests on, on this torch
    ids = [3, 5, 7, 8, 20, 21]
    low_res = blobs(len(ids), *low, seed=sum(size))
    logits, masks, labels = reference(low_res, ids, size)
    scores = torch.linspace(0.1, 0.9, len(ids))
    for compose in (compose_sparse, compose_dense):
        got_labels, objects = compose(low_res, ids, scores.tolist() if compose is compose_sparse else scores, size)
        assert np.array_equal(got_labels, labels), compose.__name__
        assert list(objects) == ids
        for i, obj_id in enumerate(ids):
            obj = objects[obj_id]
            assert np.array_equal(obj.mask, masks[i])
            assert obj.visible == bool(masks[i].any()) and obj.area == int(masks[i].sum())
            ys, xs = np.nonzero(masks[i])
            assert obj.box == (None if ys.size == 0 else (xs.min(), ys.min(), xs.max(), ys.max()))
            assert obj.score == pytest.approx(float(scores[i]))
            assert np.array_equal(obj.mask_logits, logits[i])  # lazily, bit for bit
    assert not objects[7].visible and objects[7].box is None
    assert len(np.unique(labels)) > 3  # the comparison is not vacuous: several objects and overlaps
    assert (masks.sum(0) > 1).any()


def test_label_image_is_recomposed_when_an_object_is_replaced():
    size = (72, 96)
    ids = [1, 2, 4]
    low_res = blobs(3, 16, 16, seed=5)
    labels, objects = compose_dense(low_res, ids, torch.ones(3), size)
    result = FrameResult(0, size, dict(objects), labels=labels)
    assert result.label_image() is labels or np.array_equal(result.label_image(), labels)
    # the host fallback composes the same image from the objects alone
    assert np.array_equal(FrameResult(0, size, dict(objects)).label_image(), labels)
    # a replaced object (e.g. by re-identification) is what the label image then shows
    replaced = np.full(size, -5.0, np.float32)
    replaced[:10, :10] = 5.0
    result.objects[4] = ObjectResult.from_logits(4, replaced, 1.0)
    got = result.label_image()
    assert (got[:10, :10] == 4).all() and not (got[10:] == 4).any()
    assert np.array_equal(got.astype(np.uint8), result.label_image(np.uint8))


def test_engine_results_are_the_same_either_way_and_hold_no_full_size_floats():
    """At 640x480, sparse and dense composition give the same masks and label image from the same model; the
    results hold windows and a label image (no float maps) until logits are asked for."""
    model = build_sam2(tiny=True, seed=4)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (3, 480, 640, 3), dtype=np.uint8)
    results = {}
    for compose in ("sparse", "dense"):
        tracker = StreamingSAM2(model, compose=compose)
        tracker.track(frames[0])
        for k in range(6):
            tracker.add_prompt(k + 1, box=[20 + 100 * k, 100, 110 + 100 * k, 300])
        results[compose] = [tracker.track(f) for f in frames[1:]]
    for a, b in zip(results["sparse"], results["dense"], strict=True):
        assert np.array_equal(a.label_image(), b.label_image())
        for obj_id in a.objects:
            assert np.array_equal(a.objects[obj_id].mask, b.objects[obj_id].mask)
            assert a.objects[obj_id].box == b.objects[obj_id].box
    last = results["sparse"][-1]
    held = last.nbytes()
    assert held < 480 * 640 * 2 + sum(o.area for o in last.objects.values()) + 1  # uint16 labels + windows
    assert last.objects[1].mask_logits.dtype == np.float32  # asked for: now one float map more
    assert last.nbytes() == held + 480 * 640 * 4


# ------------------------------------------------------------------ the line-segment way (many large overlapping masks)


def overlapping(n, h, w, seed):
    """n maps like the tiny random model's: nearly equal everywhere (the winner changes cell by cell), each positive
    over about half the frame, with the hard cases: an exact duplicate, a map 1 ulp above another, exact zeros,
    an absent object (-1024), few-bit values with exact ties."""
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(h, w, generator=g) + 1e-3 * torch.randn(n, h, w, generator=g)
    m[1] = m[0]
    m[3] = torch.nextafter(m[2], torch.full_like(m[2], 9.0))
    m[4] = m[4].clamp(max=0)
    m[5] = -1024.0
    m[6] = (m[6] * 4).round() / 4
    m[7, :, : w // 2] = 0.0
    return m[:, None]


def exact_fma_float32(a, b, c):
    """a * b + c rounded once to float32 (nearest, ties to even), from exact rationals."""
    from fractions import Fraction

    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    near = np.float32(float(exact))
    best = None
    for cand in (np.nextafter(near, np.float32(-np.inf)), near, np.nextafter(near, np.float32(np.inf))):
        key = (abs(Fraction(float(cand)) - exact), int(np.array(cand).view(np.uint32)) & 1)
        best = (key, cand) if best is None or key < best[0] else best
    return best[1]


def test_height_values_round_once():
    """`_height_values` is fma(a, l0, fl(b l1)) in float32: the float64 sum's second rounding is corrected where it
    lands on a float32 midpoint."""
    from threeam_model.streaming.results import _height_values

    one = torch.tensor([1 + 2.0**-12])  # (1 + 2^-12)^2 = 1 + 2^-11 + 2^-24: a float32 midpoint
    for tiny in (2.0**-70, -(2.0**-70)):
        got = _height_values(one, torch.tensor([tiny]), one, torch.tensor([1.0]))
        want = exact_fma_float32(one[0], one[0], np.float32(tiny))
        naive = (one.double() * one.double() + tiny).float()
        assert got.view(torch.int32).item() == np.array(want).view(np.int32)
        if tiny > 0:
            assert not torch.equal(naive, got)  # the case is not vacuous: rounding twice would be wrong
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 300, generator=g) * torch.exp(8 * torch.randn(2, 300, generator=g))
    l1 = torch.rand(300, generator=g)
    l0 = 1 - l1
    got = _height_values(a, b, l0, l1)
    for i in range(300):
        want = exact_fma_float32(a[i], l0[i], (b[i] * l1[i]).numpy())
        assert got[i].view(torch.int32).item() == np.array(want).view(np.int32)


@pytest.mark.parametrize(
    "low, size", [((16, 16), (270, 480)), ((16, 16), (101, 203)), ((32, 32), (480, 640)), ((64, 64), (72, 88))]
)
def test_line_way_equals_the_official_upsampling(low, size, monkeypatch):
    from threeam_model.streaming import results

    assert height_formula_is_exact(low, size)  # the property the line way rests on, on this torch
    ids = [2, 3, 5, 9, 10, 11, 40, 41, 50, 60]
    low_res = overlapping(len(ids), *low, seed=sum(size))
    logits, masks, labels = reference(low_res, ids, size)
    exact_values = []
    height_values = results._height_values
    monkeypatch.setattr(results, "_height_values", lambda *a: exact_values.append(a[0].numel()) or height_values(*a))
    got_labels, objects = results._compose_lines(low_res, ids, [0.5] * len(ids), size)
    assert exact_values  # some pixels next to a change of winner were computed exactly
    assert got_labels.dtype == np.uint16 and np.array_equal(got_labels, labels)
    lazy = 0
    for i, obj_id in enumerate(ids):
        obj = objects[obj_id]
        ys, xs = np.nonzero(masks[i])
        assert obj.box == (None if ys.size == 0 else (xs.min(), ys.min(), xs.max(), ys.max()))
        lazy += obj._win_fn is not None
        assert obj.nbytes() == 0 or obj._win_fn is None  # a window is made on first access (unless the box needed it)
        assert obj.visible == bool(masks[i].any()) and obj.area == int(masks[i].sum())
        assert np.array_equal(obj.mask, masks[i])
        assert obj.nbytes() == (0 if obj.window is None else obj.window.size)
        if obj.visible:
            y, x = ys[len(ys) // 2], xs[len(xs) // 2]
            assert obj.covers(x, y) and obj.covers(x, y) == masks[i][y, x]
        assert np.array_equal(obj.mask_logits, logits[i])
    assert lazy >= 7
    assert len(np.unique(labels)) > 5 and not objects[11].visible and objects[3].area == objects[2].area
    # the frame's label image, composed again from the objects alone, is the same
    assert np.array_equal(FrameResult(0, size, dict(objects)).label_image(), labels)


def test_sparse_composition_picks_its_way_and_falls_back(monkeypatch):
    """Many large overlapping masks take the line way (windows made on access), object-sized ones the window way;
    where the line way gives up (too many unproven pixels, or an unprovable box edge) the result is the same."""
    from threeam_model.streaming import results

    size = (1080, 1920)
    ids = list(range(1, 9))
    low_res = overlapping(len(ids), 16, 16, seed=7)
    _, masks, labels = reference(low_res, ids, size)
    _, objects = compose_sparse(low_res, ids, [0.5] * 8, size)
    assert objects[1]._win_fn is not None  # lines
    small = blobs(6, 64, 64, seed=3)
    _, objects_small = compose_sparse(small, list(range(1, 7)), [0.5] * 6, size)
    assert all(o._win_fn is None for o in objects_small.values())  # windows
    # every box edge left to the window way
    monkeypatch.setattr(results, "_EDGE_LIMIT", -1)
    got, objects = compose_sparse(low_res, ids, [0.5] * 8, size)
    assert np.array_equal(got, labels)
    assert all(np.array_equal(objects[k].mask, masks[i]) for i, k in enumerate(ids))
    # the label image left to the window way
    monkeypatch.setattr(results, "_line_labels", lambda *a, **k: None)
    got, objects = compose_sparse(low_res, ids, [0.5] * 8, size)
    assert np.array_equal(got, labels) and objects[1]._win_fn is None
    assert all(np.array_equal(objects[k].mask, masks[i]) for i, k in enumerate(ids))


def test_lazy_window_survives_reacquisition():
    size = (120, 160)
    low_res = overlapping(10, 16, 16, seed=2)
    _, masks, _ = reference(low_res, list(range(1, 11)), size)
    from threeam_model.streaming.results import _compose_lines

    obj = _compose_lines(low_res, list(range(1, 11)), [0.5] * 10, size)[1][1]
    assert obj._win_fn is not None
    again = obj.with_reacquired()
    assert again.reacquired and again.nbytes() == 0 and np.array_equal(again.mask, masks[0])
    assert np.array_equal(obj.window, again.window) and obj.window is not again.window
