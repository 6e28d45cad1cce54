"""FeatureMerger as a pure module on random tensors: shapes, exact identity when untrained, grid geometry, RoPE."""

import pytest
import torch

from threeam_model.merger import (
    FeatureMerger,
    MergerConfig,
    resample_to_sam_grid,
    sam_grid_sample_coords,
    token_positions,
)
from threeam_model.must3r.postprocess import pinhole_rays

TINY = MergerConfig(enc_dim=48, dec_dim=32, sam_dim=24, num_heads=2, mlp_ratio=2.0, patch_size=4)


def _inputs(cfg=TINY, grid=(3, 5), sam_grid=(8, 8), b=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = grid
    n = h * w
    p = cfg.patch_size
    return dict(
        sam_feat=torch.randn(b, cfg.sam_dim, *sam_grid, generator=g),
        enc_tokens=torch.randn(b, n, cfg.enc_dim, generator=g),
        layer_feats={i: torch.randn(b, n, cfg.dec_dim, generator=g) for i in cfg.merge_layers},
        pts3d=torch.randn(b, h * p, w * p, 3, generator=g) * 5,
        rays=pinhole_rays(h * p, w * p, focal=10.0).expand(b, -1, -1, -1),
        token_grid=grid,
        image_size=(48, 80),
        crop_box=(8.0, 0.0, 72.0, 48.0),
    )


def _perturb(module, seed=1, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def test_untrained_merger_returns_sam_feature_exactly():
    torch.manual_seed(0)
    merger = FeatureMerger(TINY).eval()
    x = _inputs()
    out = merger(**x)
    assert out.shape == x["sam_feat"].shape and out.dtype == x["sam_feat"].dtype
    assert torch.equal(out, x["sam_feat"])


def test_untrained_merger_is_identity_in_bfloat16():
    merger = FeatureMerger(TINY).to(torch.bfloat16).eval()
    x = {k: (v.to(torch.bfloat16) if torch.is_tensor(v) else v) for k, v in _inputs().items()}
    x["layer_feats"] = {i: t.to(torch.bfloat16) for i, t in x["layer_feats"].items()}
    assert torch.equal(merger(**x), x["sam_feat"])


def test_perturbed_merger_changes_feature_and_depends_on_every_must3r_input():
    torch.manual_seed(0)
    merger = FeatureMerger(TINY).eval()
    _perturb(merger)
    x = _inputs()
    out = merger(**x)
    assert not torch.allclose(out, x["sam_feat"], atol=1e-3)
    g = torch.Generator().manual_seed(5)
    for key in ("enc_tokens", "pts3d", "rays"):
        y = dict(x)
        y[key] = x[key] + torch.randn(x[key].shape, generator=g)
        assert not torch.allclose(merger(**y), out, atol=1e-5), key
    for i in TINY.merge_layers:
        y = dict(x)
        y["layer_feats"] = {**x["layer_feats"], i: torch.randn(x["layer_feats"][i].shape, generator=g)}
        assert not torch.allclose(merger(**y), out, atol=1e-5), i


def test_gradients_reach_every_merger_parameter_after_perturbation():
    merger = FeatureMerger(TINY)
    _perturb(merger)
    x = _inputs()
    merger(**x).square().mean().backward()
    for name, p in merger.named_parameters():
        if name == "unseen_fill":
            continue  # only used where MUSt3R did not see; checked below
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert merger.unseen_fill.grad.abs().sum() > 0  # the crop in _inputs leaves strips unseen


def test_batch_items_are_independent():
    merger = FeatureMerger(TINY).eval()
    _perturb(merger)
    x2 = _inputs(b=2)
    out2 = merger(**x2)
    x1 = {k: (v[1:] if torch.is_tensor(v) else v) for k, v in x2.items()}
    x1["layer_feats"] = {i: t[1:] for i, t in x2["layer_feats"].items()}
    torch.testing.assert_close(merger(**x1), out2[1:], atol=1e-5, rtol=1e-5)


def test_missing_layer_and_bad_shapes_are_refused():
    merger = FeatureMerger(TINY)
    x = _inputs()
    x["layer_feats"] = {4: x["layer_feats"][4]}
    with pytest.raises(ValueError, match=r"decoder layers \[7, 11\] are missing"):
        merger(**x)
    x = _inputs()
    x["token_grid"] = (5, 3)
    with pytest.raises(ValueError, match="do not tile"):
        merger(**x)
    x = _inputs()
    x["sam_feat"] = torch.zeros(1, TINY.sam_dim + 1, 8, 8)
    with pytest.raises(ValueError, match="channels"):
        merger(**x)
    with pytest.raises(ValueError, match="divisible"):
        MergerConfig(dec_dim=30, num_heads=4)


def test_config_round_trip_and_unknown_keys():
    assert MergerConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match="unknown merger config keys"):
        MergerConfig.from_dict({**TINY.to_dict(), "width": 3})


def test_paper_sizes():
    cfg = MergerConfig()
    m = FeatureMerger(cfg)
    assert m.enc_proj.in_channels == 1024 and m.enc_proj.out_channels == 768
    assert len(m.fuse) == 3 and cfg.merge_layers == (4, 7, 11)
    assert m.out_block[-1].out_channels == 256


# ------------------------------------------------------------------------------------------------ geometry


def _coordinate_feature(image_size, crop_box, grid):
    """A MUSt3R-grid feature whose channels hold the original-frame (x, y) of each token centre."""
    h, w = grid
    x0, y0, x1, y1 = crop_box
    xs = x0 + (torch.arange(w) + 0.5) * (x1 - x0) / w
    ys = y0 + (torch.arange(h) + 0.5) * (y1 - y0) / h
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy])[None], (x1 - x0) / w, (y1 - y0) / h


@pytest.mark.parametrize(
    "image_size, crop_box, grid",
    [
        ((720, 1280), (160.0, 0.0, 1120.0, 720.0), (24, 32)),  # landscape, MUSt3R cut the sides (4:3 of 16:9)
        ((1280, 720), (0.0, 160.0, 720.0, 1120.0), (32, 24)),  # portrait, cut top and bottom
        ((480, 640), (0.0, 0.0, 640.0, 480.0), (24, 32)),  # no crop
    ],
)
def test_sam_cells_sample_the_same_image_point(image_size, crop_box, grid):
    sam_grid = (64, 64)
    feat, tok_w, tok_h = _coordinate_feature(image_size, crop_box, grid)
    fill = torch.tensor([-1.0, -1.0])
    out = resample_to_sam_grid(feat, image_size, crop_box, sam_grid, fill)[0]
    h, w = image_size
    cx = (torch.arange(64) + 0.5) * w / 64
    cy = (torch.arange(64) + 0.5) * h / 64
    cyy, cxx = torch.meshgrid(cy, cx, indexing="ij")
    x0, y0, x1, y1 = crop_box
    inside = (cxx >= x0) & (cxx <= x1) & (cyy >= y0) & (cyy <= y1)
    # away from the crop's outer half-token the bilinear sample of a linear ramp is exact
    interior = (cxx >= x0 + tok_w / 2) & (cxx <= x1 - tok_w / 2) & (cyy >= y0 + tok_h / 2) & (cyy <= y1 - tok_h / 2)
    torch.testing.assert_close(out[0][interior], cxx[interior], atol=1e-2, rtol=0)
    torch.testing.assert_close(out[1][interior], cyy[interior], atol=1e-2, rtol=0)
    assert (out[:, ~inside] == -1).all()
    _, inside_fn = sam_grid_sample_coords(image_size, crop_box, sam_grid)
    assert torch.equal(inside_fn, inside)
    if crop_box == (0.0, 0.0, float(w), float(h)):
        assert inside.all()
    else:
        assert not inside.all() and inside.any()


def test_token_positions_are_row_major():
    assert token_positions((2, 3)).tolist() == [[[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]]
    assert token_positions((2, 3), batch=2).shape == (2, 6, 2)
