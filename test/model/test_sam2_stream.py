"""StreamingSAM2 behaviour on a tiny random-weight SAM 2.1 (CPU): bounded state, object independence, reset, the
feature-provider and memory-policy seams, input errors. Parity with the official predictor is in
test_sam2_stream_parity.py."""

import numpy as np
import pytest
import torch

from threeam_model.interface import FrameError, PromptError, Tracker, TrackerInputError
from threeam_model.sam2_build import build_sam2
from threeam_model.streaming import FeatureOutput, Sam2Window, SamFeatures, StreamingSAM2


@pytest.fixture(scope="module")
def model():
    return build_sam2(tiny=True, seed=4)


def moving_frames(n, h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 80, size=(h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        f = background.copy()
        f[(yy - 20) ** 2 + (xx - 10 - (i % 40)) ** 2 < 8**2] = (220, 70, 60)
        f[(yy >= 30) & (xx >= 40 - (i % 20)) & (xx < 55 - (i % 20))] = (50, 190, 100)
        yield f


def logits_of(result):
    return {obj_id: obj.mask_logits for obj_id, obj in result.objects.items()}


def same(a, b, exact: bool) -> bool:
    """Equal bit for bit (per-object path), or same mask and logits to float32 rounding (batched path, where the
    other objects of a batch change the order of sums)."""
    if exact:
        return np.array_equal(a, b)
    return np.array_equal(a > 0, b > 0) and float(np.abs(a - b).max()) <= 1e-5 * max(1.0, float(np.abs(a).max()))


BOTH_PATHS = pytest.mark.parametrize("batch_objects", [False, True], ids=["per_object", "batched"])


def test_implements_tracker_and_reports_results(model):
    tracker = StreamingSAM2(model)
    assert isinstance(tracker, Tracker)
    assert tracker.frame_index == -1 and tracker.object_ids == []
    frames = moving_frames(3)
    first = tracker.track(next(frames))
    assert first.frame_index == 0 and first.image_size == (48, 64) and first.objects == {}
    obj = tracker.add_prompt(7, points=[[10, 20]])
    assert obj.obj_id == 7 and obj.mask_logits.shape == (48, 64) and obj.mask_logits.dtype == np.float32
    assert 0.0 <= obj.score <= 1.0 and (obj.mask == (obj.mask_logits > 0)).all()
    result = tracker.track(next(frames))
    assert result.frame_index == 1 and list(result.objects) == [7] and tracker.object_ids == [7]
    assert {"image_encoder", "memory_features", "objects", "results", "total"} <= set(result.timings)


def test_a_correction_conditions_the_memory_only_when_asked(model):
    """Official rule: a first prompt is a conditioning frame, a correction on a tracked frame is not; a prompt with
    conditioning=True (what re-identification sends) is one, and the predictor's own setting stays as it was."""
    tracker = StreamingSAM2(model)
    assert not tracker.correction_as_cond
    frames = moving_frames(4)
    tracker.track(next(frames))
    tracker.add_prompt(1, points=[[10, 20]])
    for i in (1, 2):
        tracker.track(next(frames))
        tracker.add_prompt(1, points=[[12, 20]], conditioning=True if i == 2 else None)
    tracker.track(next(frames))
    assert tracker.memory_frames(1)["cond"] == [0, 2]
    assert not tracker.correction_as_cond


@pytest.mark.slow
def test_state_is_flat_over_2000_frames(model):
    """Stored tensor bytes stop growing once every object's windows are full (16 frames after its last prompt), with
    prompts, corrections that become conditioning frames beyond the cap, and an object added mid-stream."""
    tracker = StreamingSAM2(model, max_cond_frames=2, correction_as_cond=True)
    nbytes, prompted = [], set()
    for i, frame in enumerate(moving_frames(2000, h=32, w=40)):
        tracker.track(frame)
        nbytes.append(tracker.state_nbytes())
        if i == 0:
            tracker.add_prompt(1, points=[[10, 20]])
        elif i == 3:
            tracker.add_prompt(2, box=[20, 18, 38, 30])
        elif i in (4, 7, 10) or i % 250 == 100:  # corrections: conditioning frames beyond the cap of 2
            tracker.add_prompt(1, points=[[12, 20]], labels=[1])
        else:
            continue
        prompted.add(i)
        for obj_id in tracker.object_ids:
            held = tracker.memory_frames(obj_id)
            assert len(held["cond"]) <= 2 and len(held["non_cond"]) <= 16
    steady = nbytes[10 + 16]  # the last early prompt was on frame 10
    assert steady > 0
    # never above the steady value, and exactly it wherever no prompt happened in the last 16 frames
    assert max(nbytes[16:]) == steady
    quiet = [i for i in range(16, 2000) if not any(i - 16 <= p <= i for p in prompted)]
    assert len(quiet) > 1500 and {nbytes[i] for i in quiet} == {steady}
    held = tracker.memory_frames(1)
    assert held["non_cond"] == list(range(1984, 2000)) and len(held["cond"]) == 2


@BOTH_PATHS
def test_removing_an_object_leaves_the_others_unchanged(model, batch_objects):
    def run(remove_at):
        tracker = StreamingSAM2(model, batch_objects=batch_objects)
        per_frame = []
        for i, frame in enumerate(moving_frames(24)):
            per_frame.append(logits_of(tracker.track(frame)))
            if i == 0:
                tracker.add_prompt(1, points=[[10, 20]])
                tracker.add_prompt(2, box=[25, 30, 55, 47])
            if i == 4:
                tracker.add_prompt(3, points=[[50, 40], [10, 20]], labels=[1, 0])
            if i == 9:
                tracker.add_prompt(2, points=[[30, 35]], labels=[1])  # pending correction on the removed object
            if i == remove_at:
                tracker.remove_object(2)
                assert tracker.object_ids == [1, 3]
        return per_frame

    kept, removed = run(remove_at=None), run(remove_at=9)
    for i, (a, b) in enumerate(zip(kept, removed, strict=True)):
        assert set(b) == (set(a) - {2} if i > 9 else set(a))
        for obj_id in b:
            assert same(a[obj_id], b[obj_id], not batch_objects), f"object {obj_id} changed on frame {i}"


def test_reset_returns_to_an_empty_state(model):
    tracker = StreamingSAM2(model)
    for i, frame in enumerate(moving_frames(6)):
        tracker.track(frame)
        if i == 0:
            tracker.add_prompt(1, points=[[10, 20]])
    tracker.reset()
    assert tracker.object_ids == [] and tracker.frame_index == -1 and tracker.image_size is None
    assert tracker.state_nbytes() == 0
    with pytest.raises(PromptError):
        tracker.add_prompt(1, points=[[1, 1]])
    # a new stream of another size runs exactly like a fresh predictor
    fresh = StreamingSAM2(model)
    for t in (tracker, fresh):
        frames = moving_frames(5, h=40, w=40, seed=1)
        t.outputs = []
        for i, frame in enumerate(frames):
            t.outputs.append(logits_of(t.track(frame)))
            if i == 0:
                t.add_prompt(4, box=[5, 5, 30, 30])
    for a, b in zip(tracker.outputs, fresh.outputs, strict=True):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@BOTH_PATHS
def test_new_object_and_refinement_do_not_disturb_others(model, batch_objects):
    def run(with_second):
        tracker = StreamingSAM2(model, batch_objects=batch_objects)
        out = []
        for i, frame in enumerate(moving_frames(12)):
            out.append(logits_of(tracker.track(frame)).get(1))
            if i == 0:
                tracker.add_prompt(1, points=[[10, 20]])
            if with_second and i == 5:
                tracker.add_prompt(2, points=[[45, 40]])
                tracker.add_prompt(2, points=[[30, 40]], labels=[0])
            if with_second and i == 8:
                tracker.add_prompt(2, mask=np.pad(np.ones((10, 10), bool), ((30, 8), (30, 24))))
        return out

    for a, b in zip(run(False), run(True), strict=True):
        assert (a is None and b is None) or same(a, b, not batch_objects)


class Shifted(SamFeatures):
    """A feature provider that changes SAM 2's stride-16 feature and counts its calls."""

    def __init__(self):
        self.calls, self.last = 0, None

    def __call__(self, backbone_out, frame, geometry):
        assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8
        self.calls += 1
        self.last = backbone_out["backbone_fpn"][-1] * 0.5 + 0.1
        return FeatureOutput(self.last, scene={"frame": self.calls}, timings={"shift": 0.0})


@BOTH_PATHS
def test_feature_provider_feeds_memory_attention_and_memory_encoder(model, batch_objects):
    """The provider's stride-16 feature is computed once per frame and is what memory attention and the memory
    encoder receive; the stride-4/8 features still reach the mask decoder unchanged; its scene output and timings
    come back in the FrameResult."""
    seen = {"mem_enc": [], "mem_attn": []}
    hooks = [
        model.memory_encoder.register_forward_pre_hook(lambda m, args: seen["mem_enc"].append(args[0])),
        model.memory_attention.register_forward_pre_hook(
            lambda m, args, kwargs: seen["mem_attn"].append(kwargs["curr"][-1]), with_kwargs=True
        ),
    ]
    try:
        shifted = Shifted()
        tracker = StreamingSAM2(model, features=shifted, batch_objects=batch_objects)
        plain = StreamingSAM2(model, batch_objects=batch_objects)
        for i, frame in enumerate(moving_frames(6)):
            for t in (tracker, plain):
                if t is tracker:
                    seen["mem_enc"].clear()
                    seen["mem_attn"].clear()
                r = t.track(frame)
                if i == 0:
                    t.add_prompt(1, points=[[10, 20]])
                    t.add_prompt(2, box=[25, 30, 55, 47])
                    t.add_prompt(2, points=[[40, 40]])
                if t is tracker:
                    assert r.scene == {"frame": i + 1} and "shift" in r.timings
                if t is tracker and i > 1:
                    feat = shifted.last
                    for x in seen["mem_enc"]:  # (B, C, H, W)
                        assert torch.equal(x, feat.expand_as(x))
                    for x in seen["mem_attn"]:  # (HW, B, C)
                        assert torch.equal(x, feat.flatten(2).permute(2, 0, 1).expand_as(x))
                    # one step per object, or one batch for both (same memory layout)
                    assert len(seen["mem_enc"]) == len(seen["mem_attn"]) == (1 if batch_objects else 2)
                    assert sum(x.shape[0 if x.dim() == 4 else 1] for x in seen["mem_enc"]) == 2
                if t is tracker:
                    shifted_logits = logits_of(r)
            if i > 0:
                assert not np.array_equal(shifted_logits[1], logits_of(r)[1])
        assert shifted.calls == 6  # once per frame, whatever the objects and prompts
    finally:
        for h in hooks:
            h.remove()


class EverySecondFrame(Sam2Window):
    """Test policy: tracked frames enter memory only on even frame indices (prompts always do)."""

    def admit(self, memory, frame_idx, output, is_cond):
        if is_cond or frame_idx % 2 == 0:
            super().admit(memory, frame_idx, output, is_cond)


@BOTH_PATHS
def test_a_memory_policy_decides_what_memory_attention_reads(model, batch_objects):
    """With a policy that keeps every second tracked frame, memory attention reads exactly the conditioning frame
    plus the even frames among the last 6, in the official order (conditioning first, then oldest to newest)."""
    reads = []
    hook = model.memory_attention.register_forward_pre_hook(
        lambda m, args, kwargs: reads.append((kwargs["memory"], kwargs["num_obj_ptr_tokens"])), with_kwargs=True
    )
    try:
        policy = EverySecondFrame(model, max_cond_frames=8)
        tracker = StreamingSAM2(model, memory_policy=policy, batch_objects=batch_objects)
        plain = StreamingSAM2(model, batch_objects=batch_objects)
        for i, frame in enumerate(moving_frames(14)):
            reads.clear()
            r, p = tracker.track(frame), plain.track(frame)
            if i == 0:
                tracker.add_prompt(1, points=[[10, 20]])
                plain.add_prompt(1, points=[[10, 20]])
                continue
            held = tracker.memory_frames(1)
            assert held["cond"] == [0] and all(t % 2 == 0 for t in held["non_cond"])
            if i < 3:
                continue
            memory, n_ptr = reads[0]  # this frame's read, before this frame's output entered memory
            mem_frames = [0] + [t for t in range(i - 6, i) if t > 0 and t % 2 == 0]
            ptr_frames = [0] + [t for t in range(i - 15, i) if t > 0 and t % 2 == 0]
            bank = tracker._objects[1].memory
            stored = {**bank.non_cond, **bank.cond}
            hw = stored[0]["maskmem_features"].flatten(2).shape[-1]
            assert memory.shape[0] == len(mem_frames) * hw + n_ptr
            for k, t in enumerate(mem_frames):
                feats = stored[t]["maskmem_features"].flatten(2).permute(2, 0, 1)
                assert torch.equal(memory[k * hw : (k + 1) * hw], feats.to(memory.dtype))
            ptr_split = model.hidden_dim // model.mem_dim
            assert n_ptr == len(ptr_frames) * ptr_split
            if i % 2 == 1:  # odd frames: plain SAM 2 reads 3 more memories than the policy leaves
                assert not np.array_equal(r.objects[1].mask_logits, p.objects[1].mask_logits)
    finally:
        hook.remove()


def test_bfloat16_autocast_runs_and_roughly_agrees(model):
    outs = {}
    for dtype in (torch.float32, torch.bfloat16):
        tracker = StreamingSAM2(model, dtype=dtype)
        for i, frame in enumerate(moving_frames(4)):
            r = tracker.track(frame)
            if i == 0:
                tracker.add_prompt(1, points=[[10, 20]])
        outs[dtype] = r.objects[1].mask_logits
    assert np.isfinite(outs[torch.bfloat16]).all()
    assert np.corrcoef(outs[torch.float32].ravel(), outs[torch.bfloat16].ravel())[0, 1] > 0.9


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda t: t.remove_object(99), PromptError, "not tracked"),
        (lambda t: t.add_prompt(0, points=[[1, 1]]), PromptError, "1..65535"),
        (lambda t: t.add_prompt("a", points=[[1, 1]]), PromptError, "integer"),
        (lambda t: t.add_prompt(2, points=[[64, 10]]), PromptError, "outside"),
        (lambda t: t.add_prompt(2, points=[[np.nan, 10]]), PromptError, "NaN"),
        (lambda t: t.add_prompt(2, box=[10, 10, 5, 20]), PromptError, "inverted"),
        (lambda t: t.add_prompt(2, mask=np.ones((48, 63), bool)), PromptError, "(48, 64)"),
        (lambda t: t.add_prompt(2, mask=np.zeros((48, 64), bool)), PromptError, "empty"),
        (lambda t: t.add_prompt(2), PromptError, "at least one"),
        (lambda t: t.add_prompt(3, points=[[5, 5]]), PromptError, "max_objects"),
        (lambda t: t.track(np.zeros((48, 65, 3), np.uint8)), FrameError, "reset()"),
        (lambda t: t.track(np.zeros((0, 64, 3), np.uint8)), FrameError, "empty"),
        (lambda t: t.track(np.zeros((48, 64), np.uint8)), FrameError, "(H, W, 3)"),
        (lambda t: t.track(np.zeros((48, 64, 3), np.float32)), FrameError, "uint8"),
    ],
)
def test_bad_input_is_refused_without_changing_state(model, call, error, words):
    tracker = StreamingSAM2(model, max_objects=2)
    frames = moving_frames(2)
    tracker.track(next(frames))
    tracker.add_prompt(1, points=[[10, 20]])
    before = (tracker.object_ids, tracker.frame_index, tracker.state_nbytes())
    with pytest.raises(error, match=None) as info:
        if "max_objects" in words:
            tracker.add_prompt(2, points=[[30, 30]])
        call(tracker)
    assert isinstance(info.value, TrackerInputError) and words in str(info.value)
    if "max_objects" not in words:
        assert (tracker.object_ids, tracker.frame_index, tracker.state_nbytes()) == before
    tracker.track(next(frames))  # still usable


def test_a_failing_feature_step_leaves_the_state_as_it_was(model):
    class Flaky(SamFeatures):
        fail = False

        def __call__(self, backbone_out, frame, geometry):
            if self.fail:
                raise RuntimeError("feature step failed")
            return super().__call__(backbone_out, frame, geometry)

    provider = Flaky()
    flaky, plain = StreamingSAM2(model, features=provider), StreamingSAM2(model)
    for i, frame in enumerate(moving_frames(6)):
        for t in (flaky, plain):
            if t is flaky and i == 3:
                provider.fail = True
                with pytest.raises(RuntimeError, match="feature step failed"):
                    t.track(frame)
                assert t.frame_index == 2
                provider.fail = False
            r = t.track(frame)
            if i in (0, 2):  # the prompt on frame 2 is still pending when frame 3 fails
                t.add_prompt(1, points=[[10 + i, 20]])
            t.last = logits_of(r)
        assert flaky.last.keys() == plain.last.keys()
        assert all(np.array_equal(flaky.last[k], plain.last[k]) for k in plain.last)


def test_prompt_before_the_first_frame_is_refused(model):
    with pytest.raises(PromptError, match="track"):
        StreamingSAM2(model).add_prompt(1, points=[[1, 1]])


def test_constructor_checks():
    model = build_sam2(tiny=True)
    with pytest.raises(ValueError, match="max_cond_frames"):
        StreamingSAM2(model, max_cond_frames=0)
    with pytest.raises(ValueError, match="dtype"):
        StreamingSAM2(model, dtype=torch.float16)


@pytest.mark.slow
def test_compiled_image_encoder_agrees_with_eager(model):
    """compile=True (torch.compile of the image encoder, static shapes) tracks like eager on a CPU."""
    eager, compiled = StreamingSAM2(model), StreamingSAM2(model, compile=True)
    assert compiled.compile and compiled.steps._image_encoder is not model.image_encoder
    for i, frame in enumerate(moving_frames(4)):
        for t in (eager, compiled):
            t.result = t.track(frame)
            if i == 0:
                t.add_prompt(1, points=[[10, 20]])
                t.add_prompt(2, box=[25, 30, 55, 47])
        if i > 0:
            for obj_id in (1, 2):
                a, b = eager.result.objects[obj_id].mask_logits, compiled.result.objects[obj_id].mask_logits
                assert float(np.abs(a - b).max()) <= 1e-3 * max(1.0, float(np.abs(a).max()))


def test_padded_batches_keep_static_shapes_and_the_results(model):
    """pad_objects_to: every batch runs with that many objects (the last repeated), results as without padding."""
    seen = []
    hook = model.memory_attention.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["curr"][0].shape[1]), with_kwargs=True
    )
    try:
        runs = {}
        for pad in (None, 4):
            tracker = StreamingSAM2(model, pad_objects_to=pad)
            out = []
            for i, frame in enumerate(moving_frames(6)):
                seen.clear()
                out.append(logits_of(tracker.track(frame)))
                if i == 0:
                    tracker.add_prompt(1, points=[[10, 20]])
                    tracker.add_prompt(2, box=[25, 30, 55, 47])
                if pad and i > 0:
                    assert seen and set(seen) == {4}
            runs[pad] = out
    finally:
        hook.remove()
    for a, b in zip(runs[None], runs[4], strict=True):
        assert a.keys() == b.keys() and all(same(a[k], b[k], exact=False) for k in a)
    with pytest.raises(ValueError, match="pad_objects_to"):
        StreamingSAM2(model, pad_objects_to=0)
