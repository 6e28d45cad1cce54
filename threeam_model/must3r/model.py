"""Must3rModel: the encoder and the decoder together, built from keyword dicts (the parsed checkpoint args)."""

from __future__ import annotations

import torch
from torch import nn

from .decoder import Must3rDecoder, Must3rMemory
from .encoder import Must3rEncoder

# The tiny sizes of the reference fixtures (../shared/reference/must3r): real decoder depth, tiny widths.
TINY_ENCODER_ARGS = dict(img_size=(64, 64), embed_dim=32, depth=2, num_heads=4)
TINY_DECODER_ARGS = dict(
    img_size=(64, 64),
    enc_embed_dim=32,
    embed_dim=32,
    depth=12,
    num_heads=4,
    feedback_type="single_mlp",
    memory_mode="kv",
)


class Must3rModel(nn.Module):
    """MUSt3R = encoder + decoder. Stateless: the memory is passed in and returned."""

    def __init__(self, encoder: Must3rEncoder, decoder: Must3rDecoder, encoder_args=None, decoder_args=None):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.encoder_args = dict(encoder_args or {})
        self.decoder_args = dict(decoder_args or {})

    @property
    def patch_size(self) -> int:
        return self.encoder.patch_size

    def encode(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """img (n, 3, H, W) in [-1, 1] -> tokens (n, N, Denc), pos (n, N, 2)."""
        return self.encoder(img)

    def forward(self, img: torch.Tensor, memory: Must3rMemory | None = None, render: bool = False):
        """One call with n images of one shape (B=1): returns (memory, raw pointmaps, feats, enc tokens)."""
        tokens, pos = self.encode(img)
        true_shape = torch.tensor(img.shape[-2:], device=img.device).expand(1, img.shape[0], 2)
        memory, raw, feats = self.decoder(tokens[None], pos[None], true_shape, memory, render=render)
        return memory, raw, feats, tokens


def build_must3r(encoder_args: dict, decoder_args: dict) -> Must3rModel:
    """Build an (uninitialised) model from constructor keyword dicts; works under ``torch.device('meta')``."""
    return Must3rModel(Must3rEncoder(**encoder_args), Must3rDecoder(**decoder_args), encoder_args, decoder_args).eval()


@torch.no_grad()
def tiny_must3r(seed: int = 0, feedback_type: str | None = "single_mlp", memory_mode: str = "kv") -> Must3rModel:
    """A tiny random-weight model with the fixtures' sizes (enc 32x2, dec 32x12, 4 heads), for tests.

    The head is made camera-like (as in the fixtures: x/y grow across each patch, z around 2.5) so that focal,
    pose and keyframe scores stay finite.
    """
    dec_args = dict(TINY_DECODER_ARGS, feedback_type=feedback_type, memory_mode=memory_mode)
    model = build_must3r(dict(TINY_ENCODER_ARGS), dec_args)
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.state_dict().items():
        if name.endswith("image2_embed"):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        elif p.ndim >= 2:
            fan_in = p[0].numel()
            p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
        elif "norm" in name and name.endswith("weight"):
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
        else:
            p.copy_(0.02 * torch.randn(p.shape, generator=gen))
    make_head_camera_like(model.decoder)
    return model


@torch.no_grad()
def make_head_camera_like(decoder: Must3rDecoder) -> None:
    """Scale the pointmap rows of the head by 0.1 and bias them like a pinhole camera looking down +z."""
    proj = decoder.head_dec.proj
    p = decoder.patch_size
    per_channel = p * p
    rows = torch.arange(per_channel)
    dy = (rows // p).float() - (p - 1) / 2
    dx = (rows % p).float() - (p - 1) / 2
    for base in (0, 3):  # pts3d and pts3d_local
        sl = slice(base * per_channel, (base + 3) * per_channel)
        proj.weight[sl] *= 0.1
        proj.bias[sl] *= 0.1
        proj.bias[base * per_channel : (base + 1) * per_channel] += 0.15 * dx / p
        proj.bias[(base + 1) * per_channel : (base + 2) * per_channel] += 0.15 * dy / p
        proj.bias[(base + 2) * per_channel : (base + 3) * per_channel] += 2.5
