"""MUSt3R checkpoints: official key layouts, official-format round trip, refusal of bad files, safe args parsing."""

import argparse
import json

import pytest
import torch

from threeam_model.must3r import CheckpointError, build_must3r, load_must3r, save_must3r, tiny_must3r
from threeam_model.must3r.checkpoint import decoder_kwargs, encoder_kwargs, parse_constructor, with_image_size

KEY_FILES = [
    "keys_MUSt3R_224_cvpr.json",
    "keys_MUSt3R_512_cvpr.json",
    "keys_MUSt3R_512.json",
    "keys_512_kv_mlp.json",
    "keys_512_normy.json",
    "keys_224_normy.json",
    "keys_224_kv_linear.json",
]


@pytest.fixture(scope="module")
def ref_dir(shared_dir):
    return shared_dir / "reference" / "must3r"


@pytest.mark.parametrize("name", KEY_FILES)
def test_full_size_key_shapes_equal_official(ref_dir, name):
    ref = json.loads((ref_dir / name).read_text())
    with torch.device("meta"):  # no 1.7 GB allocation
        model = build_must3r(encoder_kwargs(ref["args"]["encoder"]), decoder_kwargs(ref["args"]["decoder"]))
    for part in ("encoder", "decoder"):
        ours = {k: list(v.shape) for k, v in getattr(model, part).state_dict().items()}
        assert ours == ref[part], f"{name} {part}: key->shape map differs"
        assert list(ours) == list(ref[part]), f"{name} {part}: key order differs"
        assert sum(p.numel() for p in getattr(model, part).parameters()) == ref["numel"][part]


def test_training_style_args_are_parsed_without_eval():
    dec = (
        "CausalMUSt3R(img_size=(512, 512), feedback_type='single_mlp', memory_mode=\"kv\", mem_dropout=0.1, "
        "dropout_mode='temporary', use_xformers_mask=True, use_mem_mask=True, landscape_only=True)"
    )
    kw = decoder_kwargs(dec)
    assert kw == {"img_size": (512, 512), "feedback_type": "single_mlp", "memory_mode": "kv"}
    assert parse_constructor("Dust3rEncoder(img_size=(224,224))") == ("Dust3rEncoder", {"img_size": (224, 224)})
    for evil in (
        "Dust3rEncoder(img_size=__import__('os').system('true'))",
        "__import__('os').system('true')",
        "Dust3rEncoder(*args)",
        "Dust3rEncoder(224)",
    ):
        with pytest.raises(CheckpointError):
            encoder_kwargs(evil)
    with pytest.raises(CheckpointError, match="unknown decoder argument"):
        decoder_kwargs("MUSt3R(wings=2)")
    with pytest.raises(CheckpointError, match="unknown encoder class"):
        encoder_kwargs("Os(img_size=(1,1))")


def test_image_size_override_adapts_rope_like_official():
    kw = with_image_size({"img_size": (512, 512)}, 768)
    assert kw == {"img_size": (768, 768), "pos_embed": "RoPE100_512:768"}
    assert with_image_size({"img_size": (512, 512), "pos_embed": "RoPE100_224:512"}, 768)["pos_embed"] == (
        "RoPE100_224:768"
    )
    assert "pos_embed" not in with_image_size({"img_size": (512, 512)}, 512)


def test_official_format_roundtrip(tmp_path, ref_dir):
    model = tiny_must3r(seed=3)
    path = tmp_path / "tiny.pth"
    save_must3r(model, path)
    raw = torch.load(path, map_location="cpu", weights_only=False)
    assert set(raw) == {"args", "encoder", "decoder", "epoch"} and isinstance(raw["args"], argparse.Namespace)
    loaded = load_must3r(path)
    assert not loaded.training
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    # the official fixture checkpoints (CausalMUSt3R args, no landscape_only) load too
    official = load_must3r(ref_dir / "tiny_raw_linear.pth")
    assert official.decoder.feedback_type == "single_linear" and official.decoder.memory_mode == "raw"


def _write(path, **ckpt):
    torch.save(ckpt, path)
    return path


def test_bad_checkpoints_are_refused_with_the_keys_named(tmp_path):
    model = tiny_must3r()
    args = argparse.Namespace(
        encoder="Dust3rEncoder(img_size=(64,64),embed_dim=32,depth=2,num_heads=4)",
        decoder="CausalMUSt3R(img_size=(64,64),enc_embed_dim=32,embed_dim=32,depth=12,num_heads=4,"
        "feedback_type='single_mlp',memory_mode='kv')",
    )
    enc, dec = model.encoder.state_dict(), model.decoder.state_dict()
    good = _write(tmp_path / "good.pth", args=args, encoder=enc, decoder=dec, epoch=1)
    load_must3r(good)

    missing = dict(dec)
    missing.pop("blocks_dec.3.norm_y.weight")
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): blocks_dec\.3\.norm_y\.weight"):
        load_must3r(_write(tmp_path / "m.pth", args=args, encoder=enc, decoder=missing))

    extra = dict(enc, **{"blocks_enc.2.norm1.weight": torch.zeros(32)})
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): blocks_enc\.2\.norm1\.weight"):
        load_must3r(_write(tmp_path / "u.pth", args=args, encoder=extra, decoder=dec))

    # weights of another variant (no feedback layer) under single_mlp args
    normy = tiny_must3r(feedback_type=None).decoder.state_dict()
    with pytest.raises(CheckpointError, match="missing keys.*feedback_layer.fc1.bias"):
        load_must3r(_write(tmp_path / "v.pth", args=args, encoder=enc, decoder=normy))

    wrong = dict(dec, **{"head_dec.proj.bias": torch.zeros(7)})
    with pytest.raises(CheckpointError, match=r"shape mismatch.*head_dec\.proj\.bias \(7,\) != \(1792,\)"):
        load_must3r(_write(tmp_path / "s.pth", args=args, encoder=enc, decoder=wrong))

    with pytest.raises(CheckpointError, match="top-level key"):
        load_must3r(_write(tmp_path / "k.pth", args=args, encoder=enc))

    data = good.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_must3r(truncated)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint" * 100)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_must3r(garbage)
    with pytest.raises(CheckpointError, match="not found"):
        load_must3r(tmp_path / "absent.pth")


def test_pickled_code_is_not_executed(tmp_path):
    class Boom:
        def __reduce__(self):
            return (print, ("pickle payload ran",))

    path = _write(tmp_path / "evil.pth", args=Boom(), encoder={}, decoder={})
    with pytest.raises(CheckpointError, match="cannot read"):
        load_must3r(path)
