"""Frame results composed from low-res logits: the sparse (CPU) and dense (GPU-style) ways give the official
upsampling's masks, boxes and label image exactly; full-size logits are made only on request."""

import numpy as np
import pytest
import torch

from threeam_model.interface import FrameResult, ObjectResult
from threeam_model.sam2_build import build_sam2
from threeam_model.streaming import StreamingSAM2
from threeam_model.streaming.results import compose_dense, compose_sparse, separable_upsampling_is_exact, upsample


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
