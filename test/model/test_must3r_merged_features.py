"""3AM's feature provider: MUSt3R started before SAM 2's image encoder gives what running it afterwards gives, and
MUSt3R's stage times reach the frame's timings. On CUDA, MUSt3R on its side stream against the plain order."""

import numpy as np
import pytest
import torch

from threeam_model.data.synthetic import render_scene
from threeam_model.factory import TrackerConfig, build_must3r_model, build_sam2_model, merger_config_for
from threeam_model.merger import FeatureMerger
from threeam_model.must3r.stream import STAGES, Must3rStream
from threeam_model.streaming import MergedFeatures, StreamingSAM2

TABLE = {1.0: (64, 64), 4 / 3: (64, 48)}


class MustStartFirst(MergedFeatures):
    """Records whether the engine started MUSt3R before asking for the feature."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.started = []

    def start(self, frame, geometry):
        self.started.append(frame)
        super().start(frame, geometry)


class NeverStarted(MergedFeatures):
    """The provider as an engine without `start` would use it: MUSt3R runs inside `__call__`."""

    def start(self, frame, geometry):
        if getattr(self, "_inside_call", False):
            super().start(frame, geometry)

    def __call__(self, backbone_out, frame, geometry):
        self._inside_call = True
        try:
            return super().__call__(backbone_out, frame, geometry)
        finally:
            self._inside_call = False


def _tracker(sam2, must3r_model, provider_cls, merger_state, device="cpu"):
    merger = FeatureMerger(merger_config_for(sam2, must3r_model))
    merger.load_state_dict(merger_state)
    stream = Must3rStream(must3r_model, image_size=TABLE, device=device)
    return StreamingSAM2(sam2, features=provider_cls(stream, merger))


def _perturbed_merger_state(sam2, must3r_model):
    merger = FeatureMerger(merger_config_for(sam2, must3r_model))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in merger.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))  # an untrained merger would hide MUSt3R entirely
    return merger.state_dict()


def _track(tracker, frames, instance):
    results = []
    for i, frame in enumerate(frames):
        res = tracker.track(frame)
        if i == 0:
            ys, xs = np.nonzero(instance[0] > 0)
            tracker.add_prompt(1, box=[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        results.append(res)
    return results


def test_must3r_started_before_the_image_encoder_gives_the_same_frames():
    cfg = TrackerConfig(tiny=True, seed=0)
    sam2, must3r_model = build_sam2_model(cfg), build_must3r_model(cfg)
    scene = render_scene(seed=4, num_frames=6, width=80, height=60, num_objects=2)
    state = _perturbed_merger_state(sam2, must3r_model)
    started = _tracker(sam2, must3r_model, MustStartFirst, state)
    plain = _tracker(sam2, must3r_model, NeverStarted, state)
    got = _track(started, scene["rgb"], scene["instance"])
    ref = _track(plain, scene["rgb"], scene["instance"])
    assert len(started.features.started) == 6
    for g, r in zip(got, ref):
        assert torch.equal(g.scene.pts3d, r.scene.pts3d) and g.scene.is_keyframe == r.scene.is_keyframe
        assert set(g.objects) == set(r.objects)
        for k in g.objects:
            assert np.array_equal(g.objects[k].mask, r.objects[k].mask)
            assert g.objects[k].score == r.objects[k].score
        for stage in STAGES:
            assert g.timings[f"must3r_{stage}"] >= 0
        assert {"must3r", "merger", "image_encoder"} <= set(g.timings)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: MUSt3R on a side stream")
def test_on_cuda_must3r_on_its_side_stream_equals_the_plain_order():
    cfg = TrackerConfig(tiny=True, seed=0)
    sam2, must3r_model = build_sam2_model(cfg), build_must3r_model(cfg)
    sam2, must3r_model = sam2.cuda(), must3r_model.cuda()
    scene = render_scene(seed=4, num_frames=8, width=80, height=60, num_objects=2)
    state = _perturbed_merger_state(sam2, must3r_model)
    side = _tracker(sam2, must3r_model, MergedFeatures, state, "cuda")
    plain = _tracker(sam2, must3r_model, NeverStarted, state, "cuda")
    got, ref = _track(side, scene["rgb"], scene["instance"]), _track(plain, scene["rgb"], scene["instance"])
    assert side.features._side is not None
    for g, r in zip(got, ref):
        assert torch.equal(g.scene.pts3d, r.scene.pts3d) and g.scene.memory_images == r.scene.memory_images
        for k in g.objects:
            assert np.array_equal(g.objects[k].mask, r.objects[k].mask)
