"""Must3rStream: the per-frame contract, agreement with the official step records, bounded memory."""

import numpy as np
import pytest
import torch

from threeam_model.interface import FrameError
from threeam_model.must3r import load_must3r, tiny_must3r
from threeam_model.must3r.stream import Must3rFrame, Must3rStream

TABLE_64x48 = {4 / 3: (64, 48)}  # the fixtures' frames are already 64x48: no resize
ALWAYS_KEYFRAME = dict(overlap_thr=-1.0, min_conf=0.0)


@pytest.fixture(scope="module")
def ref_dir(shared_dir):
    return shared_dir / "reference" / "must3r"


def _err(a, b):
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("seq,num_init", [("single_init", 1), ("pair_init", 2)])
def test_stream_steps_equal_official_steps(ref_dir, seq, num_init):
    io = torch.load(ref_dir / "tiny_kv_mlp_io.pt", map_location="cpu", weights_only=True)
    stream = Must3rStream(
        load_must3r(ref_dir / "tiny_kv_mlp.pth"), image_size=TABLE_64x48, num_init_frames=num_init,
        max_memory_images=10, **ALWAYS_KEYFRAME,
    )  # fmt: skip
    records = {}  # frame index -> (record, position in that call)
    for rec in io["runs"][seq]["steps"]:
        for j, fid in enumerate(rec["frame_ids"]):
            records[fid] = (rec, j)
    # frame 0 is first decoded alone; with num_init_frames=2, frame 1 re-runs both jointly (official slam driver)
    records[0] = (io["runs"]["single_init"]["steps"][0], 0)
    for i in range(5):
        frame = stream.step(io["frames_uint8"][i].numpy())
        rec, j = records[i]
        assert frame.is_keyframe and frame.memory_images == list(range(i + 1))
        assert stream.memory_tokens == 12 * (i + 1)
        assert _err(frame.enc_tokens, rec["enc_tokens"][j]) <= 1e-4
        for k in (0, 4, 7, 11):
            assert _err(frame.feats[k], rec["feats"][k][0, j]) <= 1e-4, k
        for key in ("pts3d", "pts3d_local", "conf"):
            assert _err(getattr(frame, key), rec[key][0, j]) <= 1e-4, key
    # render() of frame 0 against the final memory equals the official render record
    rendered = stream.render(io["frames_uint8"][0].numpy())
    rec = io["runs"][seq]["renders"]["frame0"]
    assert _err(rendered.pts3d, rec["pts3d"][0, 0]) <= 1e-4 and not rendered.is_keyframe
    assert stream.memory_tokens == 60


def test_frame_contract_fields():
    stream = Must3rStream(tiny_must3r(), image_size=224, max_memory_images=4)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (120, 200, 3), dtype=np.uint8)  # landscape 5:3 -> centre crop 120x120 -> 224
    out = stream.step(frame)
    assert isinstance(out, Must3rFrame)
    assert out.true_shape == (224, 224) and out.token_grid == (14, 14)
    assert out.crop_box == (40, 0, 160, 120)
    assert out.enc_tokens.shape == (196, 32)
    assert sorted(out.feats) == [0, 4, 7, 11] and all(f.shape == (196, 32) for f in out.feats.values())
    assert torch.equal(out.feats[0], out.enc_tokens)
    assert out.pts3d.shape == out.pts3d_local.shape == out.rays.shape == (224, 224, 3)
    assert out.conf.shape == (224, 224) and bool((out.conf >= 1).all())
    torch.testing.assert_close(out.rays.norm(dim=-1), torch.ones(224, 224))
    assert out.rays[112, 112, 2] == pytest.approx(1.0)  # principal point looks down +z
    assert out.c2w.shape == (4, 4) and torch.equal(out.c2w, torch.eye(4))  # the first frame defines the world
    assert out.is_keyframe and out.memory_images == [0] and stream.memory_tokens == 196
    assert np.isfinite(out.focal) and out.focal > 0
    np.testing.assert_allclose(out.to_original([[0, 0], [224, 224]]), [[40, 0], [160, 120]])
    second = stream.step(frame)
    assert second.frame_index == 1 and second.memory_images == [0, 1]  # the init pair is always in memory
    third = stream.step(frame, keyframe=False)  # the caller can override the policy
    assert not third.is_keyframe and stream.memory_images == [0, 1]
    fourth = stream.step(frame, keyframe=True)
    assert fourth.is_keyframe and stream.memory_images == [0, 1, 3]
    stream.reset()
    assert stream.memory_images == [] and stream.memory_tokens == 0
    with pytest.raises(RuntimeError, match="needs a memory"):
        stream.render(frame)
    for bad in (frame[..., 0], frame.astype(np.float32), "image", frame[:0]):
        with pytest.raises(FrameError):
            stream.step(bad)


def test_parameters_are_checked():
    model = tiny_must3r()
    with pytest.raises(ValueError, match="protected_images"):
        Must3rStream(model, max_memory_images=2, protected_images=2)
    with pytest.raises(ValueError, match="feat_layers"):
        Must3rStream(model, feat_layers=(0, 13))
    with pytest.raises(ValueError, match="percentile"):
        Must3rStream(model, percentile=101)


@pytest.mark.slow  # about 10 s alone, more on a loaded 2-core machine
def test_500_frame_stream_keeps_memory_bounded():
    cap, protected = 6, 2
    stream = Must3rStream(
        tiny_must3r(seed=1), image_size=TABLE_64x48, max_memory_images=cap, protected_images=protected,
        **ALWAYS_KEYFRAME,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    sizes = []
    for _ in range(500):
        noise = rng.integers(-20, 21, base.shape)
        out = stream.step(np.clip(base.astype(int) + noise, 0, 255).astype(np.uint8))
        assert out.is_keyframe
        assert len(stream.memory_images) <= cap and stream.memory_tokens <= cap * 12
        assert len(stream.coverage) == len(stream.memory_images)
        sizes.append(stream.memory_tokens)
    # full from frame cap-1 on; the protected init frames stay, the rest are the newest keyframes
    assert sizes[cap - 1 :] == [cap * 12] * (500 - cap + 1)
    assert stream.memory_images == [0, 1, 496, 497, 498, 499]
    assert stream.memory.labels.shape[1] == cap * 12 and stream.memory.nimgs == 500


def test_autocast_dtype_runs_and_stays_close(ref_dir):
    io = torch.load(ref_dir / "tiny_kv_mlp_io.pt", map_location="cpu", weights_only=True)
    outs = {}
    for dtype in (torch.float32, torch.bfloat16):
        stream = Must3rStream(
            load_must3r(ref_dir / "tiny_kv_mlp.pth"), image_size=TABLE_64x48, dtype=dtype, **ALWAYS_KEYFRAME
        )
        outs[dtype] = [stream.step(f.numpy()) for f in io["frames_uint8"]]
        assert stream.memory.values[0].dtype == dtype
        assert outs[dtype][-1].enc_tokens.dtype == torch.float32  # the encoder runs in float32, as officially
    for low, ref in zip(outs[torch.bfloat16], outs[torch.float32]):
        assert low.pts3d.dtype == torch.float32
        rel = ((low.pts3d - ref.pts3d).norm(dim=-1) / ref.pts3d.norm(dim=-1)).max().item()
        assert rel < 0.1
