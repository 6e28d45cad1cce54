"""SAM 2.1 model building (tiny and full configs, strict checkpoint loading) and the checkpoint registry."""

import os

import pytest
import torch

from threeam_model import weights
from threeam_model.sam2_build import VARIANTS, build_sam2, load_checkpoint


def test_tiny_is_deterministic_from_seed_and_configured_like_the_official_video_predictor():
    a, b, c = build_sam2(tiny=True, seed=1), build_sam2(tiny=True, seed=1), build_sam2(tiny=True, seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert type(a).__name__ == "SAM2VideoPredictor" and not a.training
    assert a.fill_hole_area == 0 and a.binarize_mask_from_pts_for_mem_enc
    assert a.image_size == 64 and a.hidden_dim == 32 and a.mem_dim == 16
    assert sum(p.numel() for p in a.parameters()) < 1_000_000
    assert a.sam_mask_decoder.dynamic_multimask_via_stability


def test_full_hiera_t_at_512_builds_with_the_package_config():
    model = build_sam2("t", image_size=512)
    assert model.image_size == 512 and model.hidden_dim == 256 and model.mem_dim == 64
    assert model.image_encoder.trunk.blocks[0].dim == 96 and len(model.image_encoder.trunk.blocks) == 12
    assert model.memory_attention.layers[0].self_attn.freqs_cis.shape[0] == 32 * 32
    assert model.fill_hole_area == 0


def test_variants_name_existing_package_configs_and_registered_checkpoints():
    import sam2

    root = os.path.dirname(sam2.__file__)
    for config, checkpoint in VARIANTS.values():
        assert os.path.isfile(os.path.join(root, config))
        assert checkpoint in weights.CHECKPOINTS


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="variant"):
        build_sam2("xl")
    with pytest.raises(ValueError, match="image_size"):
        build_sam2("t", image_size=768)
    with pytest.raises(ValueError, match="checkpoint"):
        build_sam2(tiny=True, checkpoint="x.pt")


def test_checkpoint_loads_with_strict_keys(tmp_path):
    source = build_sam2(tiny=True, seed=5)
    path = tmp_path / "tiny.pt"
    torch.save({"model": source.state_dict()}, path)
    loaded = build_sam2(tiny=True, seed=6)
    load_checkpoint(loaded, path)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in source.state_dict().items())

    state = dict(source.state_dict())
    state.pop("no_mem_embed")
    state["extra.weight"] = torch.zeros(1)
    torch.save({"model": state}, path)
    with pytest.raises(RuntimeError, match="1 missing keys.*no_mem_embed.*1 unexpected keys.*extra.weight"):
        load_checkpoint(loaded, path)
    with pytest.raises(FileNotFoundError, match="threeam-download-weights"):
        load_checkpoint(loaded, tmp_path / "absent.pt")


def test_auto_checkpoint_is_looked_up_in_the_weights_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("THREEAM_WEIGHTS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="threeam-download-weights sam2.1_hiera_tiny"):
        build_sam2("t", checkpoint="auto")
    assert weights.weights_dir() == tmp_path


def test_registry_lists_official_checkpoints():
    names = set(weights.CHECKPOINTS)
    expected = {"MUSt3R_224_cvpr", "MUSt3R_512_cvpr", "MUSt3R_512"}
    assert expected | {f"sam2.1_hiera_{v}" for v in ("tiny", "small", "base_plus", "large")} == names
    for entry in weights.CHECKPOINTS.values():
        assert entry.url.startswith("https://") and entry.url.endswith(entry.filename)
        assert entry.approx_bytes > 100e6


def test_find_weights_and_download_from_a_local_url(tmp_path, monkeypatch):
    monkeypatch.setenv("THREEAM_WEIGHTS", str(tmp_path / "w"))
    source = tmp_path / "served.pt"
    source.write_bytes(b"x" * 1000)
    entry = weights.Checkpoint("toy", "toy.pt", source.as_uri(), 1000, "test file")
    monkeypatch.setitem(weights.CHECKPOINTS, "toy", entry)
    with pytest.raises(FileNotFoundError, match="threeam-download-weights toy"):
        weights.find_weights("toy")
    assert weights.main(["toy"]) == 0
    assert weights.find_weights("toy").read_bytes() == b"x" * 1000
    assert weights.find_weights("toy.pt") == tmp_path / "w" / "toy.pt"

    # a wrong size is not kept; an unreachable server fails with a clear message and exit status 1
    monkeypatch.setitem(weights.CHECKPOINTS, "toy", weights.Checkpoint("toy", "toy.pt", source.as_uri(), 5000, ""))
    with pytest.raises(RuntimeError, match="expected about 5000"):
        weights.download("toy", force=True)
    monkeypatch.setitem(weights.CHECKPOINTS, "toy", weights.Checkpoint("toy", "t2.pt", "http://127.0.0.1:9/x", 10, ""))
    with pytest.raises(RuntimeError, match="could not download"):
        weights.download("toy", timeout=2)
    assert weights.main(["toy"]) == 1
    assert weights.main(["nonsense"]) == 2
    assert not list((tmp_path / "w").glob("*.part"))


def test_list_shows_presence(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("THREEAM_WEIGHTS", str(tmp_path))
    (tmp_path / "sam2.1_hiera_tiny.pt").write_bytes(b"")
    assert weights.main(["--list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "present" in lines["sam2.1_hiera_tiny"] and "missing" in lines["MUSt3R_512"]
