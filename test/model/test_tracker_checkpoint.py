"""The 3AM checkpoint: round trip through save/load and the factory, strict refusal of anything that does not fit."""

import dataclasses

import numpy as np
import pytest
import torch

from threeam_model import threeam_checkpoint as ckpt
from threeam_model.factory import TrackerConfig, build_must3r_model, build_sam2_model, build_threeam, merger_config_for
from threeam_model.merger import FeatureMerger, MergerConfig

TINY = TrackerConfig(tiny=True, seed=0, method="3am")


def _trained(seed=1):
    """Tiny SAM 2 + merger with every 3AM-trainable part moved away from its initial values."""
    sam2, must3r = build_sam2_model(TINY), build_must3r_model(TINY)
    merger = FeatureMerger(merger_config_for(sam2, must3r))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (merger, sam2.memory_attention, sam2.sam_mask_decoder):
            for p in module.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return sam2, merger


def test_round_trip_restores_exactly_the_three_parts(tmp_path):
    sam2, merger = _trained()
    path = ckpt.save_checkpoint(tmp_path / "3am.pt", merger, sam2, {"sam2_variant": "t", "step": 7})
    assert not (tmp_path / "3am.pt.tmp").exists()
    fresh_sam2, fresh_must3r = build_sam2_model(TINY), build_must3r_model(TINY)
    fresh = FeatureMerger(merger_config_for(fresh_sam2, fresh_must3r))
    encoder_before = {k: v.clone() for k, v in fresh_sam2.image_encoder.state_dict().items()}
    config = ckpt.load_checkpoint(path, fresh, fresh_sam2, expected={"sam2_variant": "t"})
    assert config["step"] == 7 and MergerConfig.from_dict(config["merger"]) == merger.cfg
    for a, b in [
        (merger, fresh),
        (sam2.memory_attention, fresh_sam2.memory_attention),
        (sam2.sam_mask_decoder, fresh_sam2.sam_mask_decoder),
    ]:
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    # everything else stays as the official checkpoints (here: the built model) have it
    assert all(torch.equal(v, fresh_sam2.image_encoder.state_dict()[k]) for k, v in encoder_before.items())


def test_factory_loads_a_checkpoint_and_tracks_differently(tmp_path):
    sam2, merger = _trained()
    path = ckpt.save_checkpoint(tmp_path / "3am.pt", merger, sam2)
    base = build_threeam(TINY)
    tuned = build_threeam(TrackerConfig(tiny=True, seed=0, threeam_checkpoint=str(path)))
    assert torch.equal(tuned.features.merger.out_block[-1].weight, merger.out_block[-1].weight)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (4, 48, 64, 3), dtype=np.uint8)
    outs = []
    for tracker in (base, tuned):
        tracker.track(frames[0])
        tracker.add_prompt(1, box=[5, 5, 40, 40])
        outs.append([tracker.track(f).objects[1].mask_logits for f in frames[1:]])
    assert max(float(np.abs(a - b).max()) for a, b in zip(*outs)) > 1e-3


def test_refusals(tmp_path):
    sam2, merger = _trained()
    good = ckpt.save_checkpoint(tmp_path / "good.pt", merger, sam2, {"sam2_variant": "t", "must3r": "512"})

    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.read_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="not a readable PyTorch checkpoint"):
        ckpt.read_checkpoint(tmp_path / "junk.pt")
    torch.save({"model": {}}, tmp_path / "sam2.pt")
    with pytest.raises(ckpt.CheckpointError, match="official SAM 2 or MUSt3R checkpoint"):
        ckpt.read_checkpoint(tmp_path / "sam2.pt")
    payload = torch.load(good, weights_only=True)
    torch.save({**payload, "version": 99}, tmp_path / "v99.pt")
    with pytest.raises(ckpt.CheckpointError, match="version 99"):
        ckpt.read_checkpoint(tmp_path / "v99.pt")
    torch.save({k: v for k, v in payload.items() if k != "mask_decoder"}, tmp_path / "part.pt")
    with pytest.raises(ckpt.CheckpointError, match=r"lacks the parts \['mask_decoder'\]"):
        ckpt.read_checkpoint(tmp_path / "part.pt")

    # trained for another model pair
    with pytest.raises(ckpt.CheckpointError, match="sam2_variant: checkpoint has 't', the tracker is built with 'l'"):
        ckpt.load_checkpoint(good, merger, sam2, expected={"sam2_variant": "l"})
    # a missing key, an extra key, a wrong shape: strict, nothing loaded
    for name, edit, msg in [
        ("missing", lambda sd: sd.pop(next(iter(sd))), "1 missing keys"),
        ("extra", lambda sd: sd.__setitem__("bogus.weight", torch.zeros(1)), "1 unexpected keys"),
        ("shape", lambda sd: sd.__setitem__(next(iter(sd)), torch.zeros(3, 3)), "1 shape mismatches"),
    ]:
        bad = torch.load(good, weights_only=True)
        edit(bad["memory_attention"])
        torch.save(bad, tmp_path / f"{name}.pt")
        fresh_sam2 = build_sam2_model(TINY)
        before = {k: v.clone() for k, v in fresh_sam2.sam_mask_decoder.state_dict().items()}
        with pytest.raises(ckpt.CheckpointError, match=f"memory_attention: .*{msg}"):
            ckpt.load_checkpoint(tmp_path / f"{name}.pt", FeatureMerger(merger.cfg), fresh_sam2)
        after = fresh_sam2.sam_mask_decoder.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)  # refused before touching any part
    # a merger of another size
    other = FeatureMerger(MergerConfig(enc_dim=32, dec_dim=32, sam_dim=32, num_heads=4, mlp_ratio=2.0))
    with pytest.raises(ckpt.CheckpointError, match="holds a merger with config"):
        ckpt.load_checkpoint(good, other, build_sam2_model(TINY))
    with pytest.raises(ValueError, match="written from the merger"):
        ckpt.save_checkpoint(tmp_path / "x.pt", merger, sam2, {"merger": {}})


def test_factory_refuses_a_checkpoint_for_another_variant(tmp_path, monkeypatch):
    sam2, merger = _trained()
    path = ckpt.save_checkpoint(tmp_path / "3am.pt", merger, sam2, {"sam2_variant": "tiny", "must3r": "224"})
    cfg = TrackerConfig(
        variant="l", must3r="224", sam2_checkpoint=None, must3r_checkpoint=None, threeam_checkpoint=str(path)
    )
    # the refusal must come before any full-size model is built
    import threeam_model.factory as factory

    monkeypatch.setattr(factory, "build_sam2_model", lambda cfg: pytest.fail("built SAM 2 before checking"))
    with pytest.raises(ckpt.CheckpointError, match="sam2_variant: checkpoint has 't', the tracker is built with 'l'"):
        factory.build_threeam(cfg)
    tiny_path = ckpt.save_checkpoint(tmp_path / "tiny.pt", merger, sam2, {"tiny": True})
    with pytest.raises(ckpt.CheckpointError, match="tiny: checkpoint has True"):
        factory.build_threeam(dataclasses.replace(cfg, threeam_checkpoint=str(tiny_path)))
