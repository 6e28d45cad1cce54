"""3AM (the streaming engine with the merged-feature provider) on tiny random models: an untrained merger
reproduces streaming SAM 2 exactly; a trained-looking
(perturbed) one changes the masks; fine-tuning gradients reach exactly the merger, memory attention and mask decoder;
the factory builds both methods and refuses bad configs; caps hold."""

import numpy as np
import pytest
import torch

from threeam_model.data.synthetic import render_scene
from threeam_model.factory import TrackerConfig, build_must3r_model, build_sam2_model, build_tracker, merger_config_for
from threeam_model.interface import PromptError
from threeam_model.merger import FeatureMerger
from threeam_model.must3r.stream import Must3rStream
from threeam_model.streaming import MergedFeatures, SamFeatures, StreamingSAM2, merge_features
from threeam_model.streaming.engine import IMG_MEAN, IMG_STD
from threeam_model.train.trainable import PAPER_LEARNING_RATES, trainable_parameter_groups

TINY = TrackerConfig(tiny=True, seed=0, method="3am")


@pytest.fixture(scope="module")
def scene():
    # 7:3 frames: SAM 2 squashes them, MUSt3R crops them to 4:3, so SAM 2 cells at both sides are unseen
    return render_scene(seed=3, num_frames=10, width=112, height=48, num_objects=3)


@pytest.fixture(scope="module")
def models():
    return build_sam2_model(TINY), build_must3r_model(TINY)


def _threeam(sam2, must3r_model, merger=None, **kw):
    merger = merger or FeatureMerger(merger_config_for(sam2, must3r_model))
    stream = Must3rStream(must3r_model, image_size={1.0: (64, 64), 4 / 3: (64, 48)}, feat_layers=(0, 4, 7, 11))
    return StreamingSAM2(sam2, features=MergedFeatures(stream, merger), **kw)


def _run(tracker, rgb, instance):
    """Box prompt for object 1 on frame 0, click for object 2 on frame 2, then track; logits per frame/object."""
    out = []
    for i, frame in enumerate(rgb):
        res = tracker.track(frame)
        if i == 0:
            ys, xs = np.nonzero(instance[0] > 0)
            res.objects[1] = tracker.add_prompt(1, box=[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        if i == 2:
            res.objects[2] = tracker.add_prompt(2, points=[[20, 20], [70, 30]], labels=[1, 0])
        out.append({k: (o.mask_logits, o.mask, o.score) for k, o in res.objects.items()})
    return out


def test_untrained_merger_reproduces_streaming_sam2(scene, models):
    sam2, must3r_model = models
    rgb, inst = scene["rgb"], scene["instance"]
    ref = _run(StreamingSAM2(sam2), rgb, inst)
    got = _run(_threeam(sam2, must3r_model), rgb, inst)
    assert len(got) == len(ref) == 10
    assert all(set(g) == set(r) for g, r in zip(got, ref)) and set(got[-1]) == {1, 2}
    worst = 0.0
    for g, r in zip(got, ref):
        for k in r:
            np.testing.assert_allclose(g[k][0], r[k][0], atol=1e-5, rtol=0)
            assert np.array_equal(g[k][1], r[k][1])
            assert abs(g[k][2] - r[k][2]) <= 1e-6
            worst = max(worst, float(np.abs(g[k][0] - r[k][0]).max()))
    assert worst == 0.0  # the merger's residual starts at exactly zero, so this is bit-exact
    assert any(r[1][1].any() for r in ref)  # the comparison is not between empty masks


def test_perturbed_merger_changes_the_masks(scene, models):
    sam2, must3r_model = models
    merger = FeatureMerger(merger_config_for(sam2, must3r_model))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in merger.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    ref = _run(StreamingSAM2(sam2), scene["rgb"], scene["instance"])
    got = _run(_threeam(sam2, must3r_model, merger), scene["rgb"], scene["instance"])
    diff = max(float(np.abs(got[i][1][0] - ref[i][1][0]).max()) for i in range(1, 10))
    assert diff > 1e-2


def _clip_loss(sam2, must3r_model, merger, rgb):
    """A training-style forward over a clip (2 objects, memory across frames), returning a scalar."""
    stream = Must3rStream(must3r_model, image_size={1.0: (64, 64), 4 / 3: (64, 48)}, feat_layers=(0, 4, 7, 11))
    mean, std = torch.tensor(IMG_MEAN)[:, None, None], torch.tensor(IMG_STD)[:, None, None]
    banks = {k: {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}} for k in (1, 2)}
    boxes = {1: torch.tensor([[[4.0, 4.0], [30.0, 40.0]]]), 2: torch.tensor([[[30.0, 20.0], [60.0, 60.0]]])}
    loss = 0.0
    for t, frame in enumerate(rgb):
        img = torch.nn.functional.interpolate(torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255, (64, 64))
        backbone = sam2.forward_image((img - mean) / std)
        merged = merge_features(merger, backbone["backbone_fpn"][-1], stream.step(frame), frame.shape[:2])
        backbone = {
            "backbone_fpn": backbone["backbone_fpn"][:-1] + [merged],
            "vision_pos_enc": backbone["vision_pos_enc"],
        }
        _, feats, pos, sizes = sam2._prepare_backbone_features(backbone)
        for k, bank in banks.items():
            points = {"point_coords": boxes[k], "point_labels": torch.tensor([[2, 3]])} if t == 0 else None
            out = sam2.track_step(t, t == 0, feats, pos, sizes, points, None, bank, len(rgb))
            (bank["cond_frame_outputs"] if t == 0 else bank["non_cond_frame_outputs"])[t] = out
            loss = loss + out["pred_masks"].sigmoid().mean() + out["object_score_logits"].mean() + out["obj_ptr"].mean()
    return loss


def test_gradients_reach_exactly_merger_memory_attention_and_mask_decoder(scene):
    sam2, must3r_model = build_sam2_model(TINY), build_must3r_model(TINY)  # own copies: requires_grad changes
    merger = FeatureMerger(merger_config_for(sam2, must3r_model))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in merger.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    groups = trainable_parameter_groups(sam2, merger, must3r_model)
    assert [(x["name"], x["lr"]) for x in groups] == list(PAPER_LEARNING_RATES.items())
    assert PAPER_LEARNING_RATES == {"merger": 1e-5, "memory_attention": 5e-6, "mask_decoder": 5e-6}
    trainable = {id(p) for x in groups for p in x["params"]}
    everything = [*sam2.named_parameters(), *merger.named_parameters(), *must3r_model.named_parameters()]
    assert {id(p) for _, p in everything if p.requires_grad} == trainable

    _clip_loss(sam2, must3r_model, merger, scene["rgb"][:4]).backward()
    with_grad = {id(p) for _, p in everything if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad <= trainable  # nothing frozen moves
    for x in groups:  # every trainable part really learns
        assert any(id(p) in with_grad for p in x["params"]), x["name"]
    merger_unused = [n for n, p in merger.named_parameters() if id(p) not in with_grad]
    assert merger_unused == [], merger_unused
    n_attn = sum(id(p) in with_grad for p in sam2.memory_attention.parameters())
    assert n_attn >= 0.9 * len(list(sam2.memory_attention.parameters()))
    with pytest.raises(ValueError, match="unknown parameter groups"):
        trainable_parameter_groups(sam2, merger, lrs={"image_encoder": 1e-4})


def test_factory_builds_both_methods_and_refuses_bad_configs():
    threeam = build_tracker(TINY)
    assert isinstance(threeam, StreamingSAM2) and isinstance(threeam.features, MergedFeatures)
    plain = build_tracker(TrackerConfig(tiny=True, method="sam2"))
    assert isinstance(plain, StreamingSAM2) and isinstance(plain.features, SamFeatures)
    assert TrackerConfig(variant="base_plus").variant == "b+"
    with pytest.raises(ValueError, match="method"):
        TrackerConfig(method="sam3")
    with pytest.raises(ValueError, match="variant"):
        TrackerConfig(variant="huge")
    with pytest.raises(ValueError, match="float16 is not supported"):
        TrackerConfig(dtype="float16")
    with pytest.raises(ValueError, match="must3r"):
        TrackerConfig(must3r="1024")
    with pytest.raises(ValueError, match="cannot load their checkpoints"):
        TrackerConfig(tiny=True, sam2_checkpoint="x.pt")
    with pytest.raises(ValueError, match="max_objects"):
        TrackerConfig(max_objects=0)


def test_mismatched_merger_is_refused(models):
    sam2, must3r_model = models
    from threeam_model.merger import MergerConfig

    bad = FeatureMerger(MergerConfig(enc_dim=32, dec_dim=32, sam_dim=24, num_heads=2, mlp_ratio=2.0))
    with pytest.raises(ValueError, match="sam_dim"):
        _threeam(sam2, must3r_model, bad)


def test_reset_remove_caps_and_bounded_state(models):
    sam2, must3r_model = models
    tracker = _threeam(sam2, must3r_model, max_objects=2, max_cond_frames=2)
    must3r = tracker.features.must3r
    must3r.max_memory_images = 3
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (14, 54, 96, 3), dtype=np.uint8)
    tracker.track(frames[0])
    tracker.add_prompt(1, box=[5, 5, 40, 40])
    tracker.add_prompt(2, points=[[60, 30]])
    with pytest.raises(PromptError, match="max_objects=2"):
        tracker.add_prompt(3, points=[[10, 10]])
    sizes = []
    for i, f in enumerate(frames[1:]):
        res = tracker.track(f)
        assert {"must3r", "merger"} <= set(res.timings)
        if i % 3 == 0:
            tracker.add_prompt(1, points=[[20, 20]])  # corrections keep adding memory frames
        sizes.append(tracker.state_nbytes())
        assert len(must3r.memory_images) <= 3
    assert max(sizes[-4:]) <= max(sizes[5:9]) * 1.05  # flat once every cap is reached
    tracker.remove_object(2)
    assert tracker.object_ids == [1]
    tracker.reset()
    assert tracker.object_ids == [] and tracker.frame_index == -1 and must3r.frame_count == 0
    res = tracker.track(frames[0][:40])  # a new stream may have another size
    assert res.image_size == (40, 96) and res.frame_index == 0
    tracker.reset()
    portrait = np.ascontiguousarray(frames[:3].transpose(0, 2, 1, 3))  # 96 high, 54 wide
    tracker.track(portrait[0])
    tracker.add_prompt(1, box=[5, 30, 40, 70])
    for f in portrait[1:]:
        res = tracker.track(f)
        assert res.objects[1].mask.shape == (96, 54)
    assert res.scene.true_shape == (64, 48)  # MUSt3R's portrait crop, the frame's scene output


def test_bfloat16_autocast_untrained_equivalence_and_must3r_in_float32(scene, models):
    """Under bfloat16 autocast the untrained 3AM still equals SAM 2; MUSt3R's pose fitting stays float32."""
    sam2, must3r_model = models
    rgb, inst = scene["rgb"][:4], scene["instance"][:4]
    ref = _run(StreamingSAM2(sam2, dtype=torch.bfloat16), rgb, inst)
    tracker = _threeam(sam2, must3r_model, dtype=torch.bfloat16)
    got = _run(tracker, rgb, inst)
    for g, r in zip(got, ref):
        for k in r:
            assert np.array_equal(g[k][0], r[k][0])
    assert tracker.track(rgb[0]).scene.c2w.dtype == torch.float32


@pytest.mark.slow
def test_compiled_3am_agrees_with_eager(scene):
    """TrackerConfig(compile=True): the image encoder and the merger through torch.compile track like eager."""
    rgb, inst = scene["rgb"][:4], scene["instance"][:4]
    eager = build_tracker(TINY)
    compiled = build_tracker(TrackerConfig(tiny=True, seed=0, method="3am", compile=True))
    assert compiled.compile and compiled.features._merge is not compiled.features.merger
    ref, got = _run(eager, rgb, inst), _run(compiled, rgb, inst)
    for g, r in zip(got, ref, strict=True):
        for k in r:
            assert float(np.abs(g[k][0] - r[k][0]).max()) <= 1e-3 * max(1.0, float(np.abs(r[k][0]).max()))
