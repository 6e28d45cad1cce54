"""The MUSt3R image encoder (the DUSt3R/CroCo ViT): 16-px patches, 2D RoPE, pre-norm blocks, final LayerNorm."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import EncoderBlock, LayerNorm, parse_pos_embed


class PatchEmbed(nn.Module):
    """Conv patchify of an image as given (portrait or landscape); returns tokens and their (row, col) grid."""

    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = img.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {self.patch_size}")
        x = self.proj(img)
        gh, gw = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        return x, token_positions(b, gh, gw, img.device)


def token_positions(batch: int, rows: int, cols: int, device=None) -> torch.Tensor:
    """(batch, rows*cols, 2) int64 (row, col) of each token in row-major order."""
    grid = torch.cartesian_prod(torch.arange(rows, device=device), torch.arange(cols, device=device))
    return grid.view(1, rows * cols, 2).expand(batch, -1, -1).clone()


class Must3rEncoder(nn.Module):
    """ViT encoder; defaults are the official ViT-L (dim 1024, depth 24, 16 heads).

    ``img_size`` is recorded for the checkpoint args only: the encoder runs at any multiple of the patch size.
    """

    def __init__(
        self,
        img_size=(224, 224),
        patch_size: int = 16,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        pos_embed: str = "RoPE100",
    ):
        super().__init__()
        self.img_size = tuple(img_size)
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.rope = parse_pos_embed(pos_embed)
        self.blocks_enc = nn.ModuleList(EncoderBlock(embed_dim, num_heads, self.rope, mlp_ratio) for _ in range(depth))
        self.norm_enc = LayerNorm(embed_dim)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """img (n, 3, H, W) normalised to [-1, 1] -> tokens (n, N, D) and positions (n, N, 2).

        Like the official encoder, it runs in float32 even inside an autocast region (officially CUDA only; here
        CPU autocast too, so both devices behave the same).
        """
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            x, pos = self.patch_embed(img.to(self.patch_embed.proj.weight.dtype))
            for blk in self.blocks_enc:
                x = blk(x, pos)
            return self.norm_enc(x), pos
