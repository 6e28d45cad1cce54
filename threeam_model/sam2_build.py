"""Build SAM 2.1 models from the installed `sam2` package's own hydra configs.

`build_sam2` returns the official `SAM2VideoPredictor` module (a `SAM2Base` subclass) configured exactly like
`sam2.build_sam.build_sam2_video_predictor` configures it, so the same object is both the stateless model our
streaming predictor drives and the official oracle the tests compare against:
- the video-predictor post-processing overrides (dynamic multimask fallback, binarised click masks in memory);
- `fill_hole_area = 0`, set on the built module: the hole filling needs sam2's CUDA extension, without it sam2 warns
  on every frame and skips it anyway (a hydra override does not stick: sam2 appends its own `fill_hole_area=8`).

`tiny=True` builds a random-weight model with very small dimensions on top of the hiera_t config, for CPU tests.
"""

from __future__ import annotations

import math
import os

import torch

from threeam_model.weights import find_weights

VARIANTS = {
    # variant -> (sam2 package config, official checkpoint registry name)
    "t": ("configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny"),
    "s": ("configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small"),
    "b+": ("configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus"),
    "l": ("configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large"),
}
IMAGE_SIZES = (1024, 512)
TINY_IMAGE_SIZE = 64

# What sam2.build_sam.build_sam2_video_predictor adds on top of a config (apply_postprocessing=True), minus the
# fill_hole_area override that is set on the module afterwards.
_VIDEO_PREDICTOR_OVERRIDES = [
    "++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictor",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
    "++model.binarize_mask_from_pts_for_mem_enc=true",
]

# Tiny model on the hiera_t layout: hidden 32, memory 16 (so object pointers still split into 2 tokens), 5 Hiera
# blocks (one global), 2 memory-attention layers. The SAM heads keep their hard-coded sizes (8 heads, MLP 2048).
_TINY_OVERRIDES = [
    "model.image_encoder.trunk.embed_dim=8",
    "model.image_encoder.trunk.num_heads=1",
    "model.image_encoder.trunk.stages=[1,1,2,1]",
    "model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.trunk.window_spec=[8,4,4,2]",
    "model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[4,4]",
    "model.image_encoder.neck.d_model=32",
    "model.image_encoder.neck.backbone_channel_list=[64,32,16,8]",
    "model.image_encoder.neck.position_encoding.num_pos_feats=32",
    "model.memory_attention.d_model=32",
    "model.memory_attention.num_layers=2",
    "model.memory_attention.layer.d_model=32",
    "model.memory_attention.layer.dim_feedforward=64",
    "model.memory_attention.layer.self_attention.embedding_dim=32",
    "model.memory_attention.layer.cross_attention.embedding_dim=32",
    "model.memory_attention.layer.cross_attention.kv_in_dim=16",
    "model.memory_encoder.out_dim=16",
    "++model.memory_encoder.in_dim=32",
    "model.memory_encoder.position_encoding.num_pos_feats=16",
    "++model.memory_encoder.mask_downsampler.embed_dim=32",
    "model.memory_encoder.fuser.layer.dim=32",
    "model.memory_encoder.fuser.num_layers=1",
]


def build_sam2(
    variant: str = "t",
    checkpoint: str | os.PathLike | None = None,
    image_size: int | None = None,
    device: str | torch.device = "cpu",
    tiny: bool = False,
    seed: int = 0,
):
    """Build a SAM 2.1 model in eval mode (an official `SAM2VideoPredictor`, i.e. a `SAM2Base`).

    variant: "t", "s", "b+" or "l" (hiera tiny/small/base+/large); ignored when tiny=True.
    checkpoint: an official SAM 2.1 `.pt` file, loaded with strict keys; "auto" looks it up with
        `threeam_model.weights.find_weights` (see `threeam-download-weights`); None keeps random weights.
    image_size: 1024 (official) or 512 (faster; same weights); None means 1024, or 64 for tiny.
    tiny: random-weight miniature for tests (deterministic from `seed`, CPU-fast at 64x64).
    """
    import sam2  # noqa: F401  (initialises hydra with the package's configs)
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    if variant not in VARIANTS:
        raise ValueError(f"unknown SAM 2.1 variant {variant!r}; choose one of {sorted(VARIANTS)}")
    if tiny and checkpoint is not None:
        raise ValueError("tiny=True builds random weights; it cannot load a checkpoint")
    if image_size is None:
        image_size = TINY_IMAGE_SIZE if tiny else 1024
    if image_size % 32 or image_size <= 0 or (not tiny and image_size not in IMAGE_SIZES):
        allowed = "a positive multiple of 32" if tiny else f"one of {IMAGE_SIZES}"
        raise ValueError(f"image_size must be {allowed}, got {image_size}")

    config_name, weights_name = VARIANTS["t" if tiny else variant]
    if checkpoint is not None and str(checkpoint) == "auto":
        checkpoint = find_weights(weights_name)
    feat = image_size // 16
    overrides = list(_VIDEO_PREDICTOR_OVERRIDES) + (_TINY_OVERRIDES if tiny else [])
    overrides += [
        f"model.image_size={image_size}",
        f"model.memory_attention.layer.self_attention.feat_sizes=[{feat},{feat}]",
        f"model.memory_attention.layer.cross_attention.feat_sizes=[{feat},{feat}]",
    ]
    cfg = compose(config_name=config_name, overrides=overrides)
    OmegaConf.resolve(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = instantiate(cfg.model, _recursive_=True)
        if tiny:
            _randomize(model)
    model.fill_hole_area = 0

    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model.to(device).eval()


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load an official SAM 2 checkpoint ({"model": state_dict}) with strict keys and a clear error."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"SAM 2 checkpoint not found: {path} (run `threeam-download-weights`)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state) if isinstance(state, dict) else state
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"{path} does not match the built SAM 2 model (wrong variant?): "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}"
        )


@torch.no_grad()
def _randomize(model: torch.nn.Module) -> None:
    """Give every parameter a non-trivial random value (default init leaves zeros and 1e-6 layer scales, which
    would make a random model's outputs degenerate): weights N(0, 1/fan_in), norms 1 + N(0, 0.1^2), biases and
    embeddings small."""
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if p.ndim >= 2 and leaf == "weight":
            fan_in = math.prod(p.shape[1:])
            p.normal_(0.0, 1.0 / math.sqrt(fan_in))
        elif "norm" in name and leaf == "weight":
            p.normal_(1.0, 0.1)
        elif leaf in ("bias", "gamma") or p.ndim == 1:
            p.normal_(0.0, 0.02 if leaf == "bias" else 0.1)
        else:  # embeddings and tokens: pos_embed, no_mem_embed, maskmem_tpos_enc, no_obj_ptr, ...
            p.normal_(0.0, 0.2)


__all__ = ["IMAGE_SIZES", "TINY_IMAGE_SIZE", "VARIANTS", "build_sam2", "load_checkpoint"]
