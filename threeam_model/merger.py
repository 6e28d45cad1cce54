"""The 3AM Feature Merger (paper sec. 3.2, supplement B.1) and the map from MUSt3R's token grid to SAM 2's grid.

Data flow for one frame (B = batch, N = h*w MUSt3R tokens):

    enc_tokens (B, N, Denc) --1x1 conv--> F (B, N, D)          D = MUSt3R decoder width (768 full size)
    pointmap + ray map (B, H', W', 3+3) --patch MLP--> PE3D (B, N, D)
    F <- Block(F + PE3D)                                       self-attention + FFN, 2D RoPE on the token grid
    for each decoder layer i in (4, 7, 11):
        F <- FFN(CrossAttn(SelfAttn(F + PE3D), F_i + PE3D))     pre-norm, residual around each of the three
    F --resample onto SAM 2's stride-16 grid--> (B, D, Hs, Ws) --3x3 conv--> (B, Dc, Hs, Ws)
    F_merged = F_2D + ConvBlock([F_2D, F])                     the block's last conv starts at zero

Choices the paper leaves open, made here:
- PE3D input: MUSt3R's pointmap in its shared world frame (the reference camera's), which is what makes positions
  agree across views, plus the per-pixel unit ray direction in the camera frame. MUSt3R has no ray output; the ray
  map is derived from its focal estimate: the rays of a pinhole camera with MUSt3R's running sequence focal and the
  principal point at the image centre (`Must3rFrame.rays`, from `must3r.postprocess.pinhole_rays`). Point
  coordinates go through sign(x) * log1p(|x|) so the arbitrary scene scale cannot blow up the embedding. Each p x p
  pixel patch is flattened and embedded by a two-layer MLP: one PE3D vector per MUSt3R token.
- PE2D: MUSt3R's own 2D rotary embedding (`must3r.blocks.RoPE2D`, base 100) on the (row, col) token position,
  applied to queries and keys of every attention (self and cross; both sides share the token grid).
- Grid mapping: SAM 2 squashes the whole frame to a square; MUSt3R resizes and centre-crops it. Each SAM 2 cell
  centre is taken to original frame pixels, then into MUSt3R's crop, and the MUSt3R feature is sampled bilinearly
  there. Cells outside the crop (the strip MUSt3R cut away) get a learned fill vector, initialised to zero.
- The 3x3 conv reduces D to `conv_dim` (SAM 2's width by default) so the concatenation stays cheap.
- Exact identity when untrained: the merge is residual, F_2D + block(...), and the block's last 1x1 conv has zero
  weight and bias, so the untrained merger returns SAM 2's feature bit for bit (in any dtype).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from threeam_model.must3r.blocks import RoPE2D

# ------------------------------------------------------------------------------------------------ configuration


@dataclasses.dataclass(frozen=True)
class MergerConfig:
    """Sizes of the Feature Merger. Defaults are the paper's (MUSt3R ViT-L encoder, ViT-B decoder, SAM 2.1)."""

    enc_dim: int = 1024  # MUSt3R encoder token width
    dec_dim: int = 768  # MUSt3R decoder token width, also the merger's working width
    sam_dim: int = 256  # SAM 2's stride-16 feature width (hidden_dim)
    num_heads: int = 12
    mlp_ratio: float = 4.0
    merge_layers: tuple[int, ...] = (4, 7, 11)  # MUSt3R decoder layers fused in, in order
    patch_size: int = 16  # MUSt3R pixels per token side (for PE3D)
    conv_dim: int | None = None  # width after the 3x3 conv; None = sam_dim
    rope_base: float = 100.0

    def __post_init__(self):
        object.__setattr__(self, "merge_layers", tuple(int(i) for i in self.merge_layers))
        if self.dec_dim % self.num_heads:
            raise ValueError(f"dec_dim {self.dec_dim} is not divisible by num_heads {self.num_heads}")
        if (self.dec_dim // self.num_heads) % 4:
            raise ValueError(f"head width {self.dec_dim // self.num_heads} must be a multiple of 4 for 2D RoPE")
        if not self.merge_layers:
            raise ValueError("merge_layers must name at least one MUSt3R decoder layer")

    @property
    def out_conv_dim(self) -> int:
        return self.sam_dim if self.conv_dim is None else self.conv_dim

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["merge_layers"] = list(self.merge_layers)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MergerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown merger config keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)


# ---------------------------------------------------------------------------------------------- positional codes


def token_positions(grid: tuple[int, int], batch: int = 1, device=None) -> torch.Tensor:
    """(batch, h*w, 2) integer (row, col) of each token of an h x w grid, row-major like MUSt3R's tokens."""
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=-1).expand(batch, -1, -1)


class PointRayEmbed(nn.Module):
    """PE3D: embeds each p x p patch of (pointmap, ray map) into one token-width vector."""

    def __init__(self, dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        in_dim = 6 * patch_size * patch_size
        self.mlp = nn.Sequential(nn.Linear(in_dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, pts3d: torch.Tensor, rays: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """pts3d, rays: (B, H', W', 3) with H' = h*p, W' = w*p. Returns (B, h*w, dim)."""
        p = self.patch_size
        h, w = grid
        b, hh, ww, _ = pts3d.shape
        if (hh, ww) != (h * p, w * p) or rays.shape != pts3d.shape:
            raise ValueError(
                f"pointmap {tuple(pts3d.shape)} / ray map {tuple(rays.shape)} do not tile the {h}x{w} token grid "
                f"with {p}-pixel patches (expected (B, {h * p}, {w * p}, 3))"
            )
        x = torch.cat([torch.sign(pts3d) * torch.log1p(pts3d.abs()), rays], dim=-1)  # (B, H', W', 6)
        x = x.reshape(b, h, p, w, p, 6).permute(0, 1, 3, 2, 4, 5).reshape(b, h * w, p * p * 6)
        return self.mlp(x)


# --------------------------------------------------------------------------------------------- attention blocks


class Attention(nn.Module):
    """Multi-head attention with 2D RoPE on queries and keys (self-attention when kv is None)."""

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x: torch.Tensor, pos: torch.Tensor, kv: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        src = x if kv is None else kv
        q = self.q(x).view(b, n, self.num_heads, -1).transpose(1, 2)
        k, v = self.kv(src).view(b, src.shape[1], 2, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = self.rope(q, pos), self.rope(k, pos)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Sequential):
    def __init__(self, dim: int, mlp_ratio: float):
        hidden = int(dim * mlp_ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class SelfBlock(nn.Module):
    """The first stage: F <- F + SelfAttn(norm(F)); F <- F + FFN(norm(F))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rope: RoPE2D):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, rope)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), pos)
        return x + self.mlp(self.norm2(x))


class FuseBlock(nn.Module):
    """Eq. (1) with its norms and skips: F <- FFN(CrossAttn(SelfAttn(F + PE3D), F_i + PE3D))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rope: RoPE2D):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, num_heads, rope)
        self.norm2 = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, num_heads, rope)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, layer_feat: torch.Tensor, pe3d: torch.Tensor, pos: torch.Tensor):
        x = x + pe3d
        x = x + self.self_attn(self.norm1(x), pos)
        x = x + self.cross_attn(self.norm2(x), pos, kv=self.norm_kv(layer_feat + pe3d))
        return x + self.mlp(self.norm3(x))


# ------------------------------------------------------------------------------------------------ grid mapping


def sam_grid_sample_coords(
    image_size: tuple[int, int],
    crop_box: tuple[float, float, float, float],
    sam_grid: tuple[int, int],
    device=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each SAM 2 stride-16 cell falls in MUSt3R's crop.

    image_size: original frame (H, W); crop_box: (x0, y0, x1, y1) region of the original frame, in pixels, that
    MUSt3R resized to its input; sam_grid: (Hs, Ws). SAM 2 squashes the whole frame, so cell (i, j) covers original
    pixel centre ((j + 0.5) W / Ws, (i + 0.5) H / Hs).

    Returns grid (Hs, Ws, 2) in grid_sample's [-1, 1] convention (align_corners=False: -1 and 1 are the crop's outer
    pixel edges) and inside (Hs, Ws) bool, False where MUSt3R did not see the cell centre.
    """
    h, w = image_size
    hs, ws = sam_grid
    x0, y0, x1, y1 = (float(v) for v in crop_box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"crop box {crop_box} is empty")
    ys = (torch.arange(hs, device=device, dtype=torch.float32) + 0.5) * (h / hs)
    xs = (torch.arange(ws, device=device, dtype=torch.float32) + 0.5) * (w / ws)
    gx = (xs - x0) / (x1 - x0) * 2 - 1
    gy = (ys - y0) / (y1 - y0) * 2 - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)  # (Hs, Ws, 2) as (x, y)
    inside = (grid.abs() <= 1).all(dim=-1)
    return grid, inside


def resample_to_sam_grid(
    feat: torch.Tensor,
    image_size: tuple[int, int],
    crop_box: tuple[float, float, float, float],
    sam_grid: tuple[int, int],
    fill: torch.Tensor,
) -> torch.Tensor:
    """Resample a MUSt3R feature map (B, D, h, w) onto SAM 2's (Hs, Ws) grid of the same frame.

    fill (D,) is written where MUSt3R did not see the frame.
    """
    grid, inside = sam_grid_sample_coords(image_size, crop_box, sam_grid, device=feat.device)
    grid = grid.to(feat.dtype).expand(feat.shape[0], -1, -1, -1)
    out = F.grid_sample(feat, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return torch.where(inside, out, fill.to(out.dtype)[:, None, None])


# ---------------------------------------------------------------------------------------------------- the merger


class FeatureMerger(nn.Module):
    """Fuses MUSt3R's multi-level features into SAM 2's stride-16 feature. See the module docstring."""

    def __init__(self, cfg: MergerConfig | None = None):
        super().__init__()
        cfg = cfg or MergerConfig()
        self.cfg = cfg
        d = cfg.dec_dim
        rope = RoPE2D(cfg.rope_base)
        self.enc_proj = nn.Conv2d(cfg.enc_dim, d, kernel_size=1)  # the paper's 1x1 conv, 1024 -> 768
        self.pe3d = PointRayEmbed(d, cfg.patch_size)
        self.coarse = SelfBlock(d, cfg.num_heads, cfg.mlp_ratio, rope)
        self.fuse = nn.ModuleList(FuseBlock(d, cfg.num_heads, cfg.mlp_ratio, rope) for _ in cfg.merge_layers)
        self.norm = nn.LayerNorm(d)
        self.unseen_fill = nn.Parameter(torch.zeros(d))  # learned, starts as a zero fill
        c = cfg.out_conv_dim
        self.refine = nn.Conv2d(d, c, kernel_size=3, padding=1)
        self.out_block = nn.Sequential(
            nn.Conv2d(cfg.sam_dim + c, cfg.sam_dim, kernel_size=3, padding=1),
            nn.GroupNorm(1, cfg.sam_dim),
            nn.GELU(),
            nn.Conv2d(cfg.sam_dim, cfg.sam_dim, kernel_size=1),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Fresh weights; the last conv at zero so the merger starts as the identity on SAM 2's feature."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5))
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.unseen_fill)
        last = self.out_block[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def fuse_tokens(
        self,
        enc_tokens: torch.Tensor,
        layer_feats: dict[int, torch.Tensor],
        pts3d: torch.Tensor,
        rays: torch.Tensor,
        token_grid: tuple[int, int],
    ) -> torch.Tensor:
        """The attention stage on MUSt3R's grid. enc_tokens (B, N, Denc), layer_feats {i: (B, N, D)},
        pts3d / rays (B, H', W', 3). Returns (B, D, h, w)."""
        cfg = self.cfg
        h, w = token_grid
        b, n, _ = enc_tokens.shape
        if n != h * w:
            raise ValueError(f"{n} MUSt3R tokens do not fill the {h}x{w} token grid")
        missing = [i for i in cfg.merge_layers if i not in layer_feats]
        if missing:
            raise ValueError(
                f"MUSt3R features of decoder layers {missing} are missing (got {sorted(layer_feats)}); "
                f"run MUSt3R with feat_layers including {list(cfg.merge_layers)}"
            )
        pos = token_positions(token_grid, b, enc_tokens.device)
        x = enc_tokens.transpose(1, 2).reshape(b, -1, h, w)
        x = self.enc_proj(x).flatten(2).transpose(1, 2)  # (B, N, D)
        pe3d = self.pe3d(pts3d, rays, token_grid)
        x = self.coarse(x + pe3d, pos)
        for block, i in zip(self.fuse, cfg.merge_layers):
            x = block(x, layer_feats[i], pe3d, pos)
        x = self.norm(x)
        return x.transpose(1, 2).reshape(b, -1, h, w)

    def forward(
        self,
        sam_feat: torch.Tensor,
        enc_tokens: torch.Tensor,
        layer_feats: dict[int, torch.Tensor],
        pts3d: torch.Tensor,
        rays: torch.Tensor,
        token_grid: tuple[int, int],
        image_size: tuple[int, int],
        crop_box: tuple[float, float, float, float],
    ) -> torch.Tensor:
        """sam_feat: SAM 2's stride-16 feature (B, sam_dim, Hs, Ws). Returns F_merged, same shape and dtype."""
        if sam_feat.shape[1] != self.cfg.sam_dim:
            raise ValueError(f"SAM 2 feature has {sam_feat.shape[1]} channels, the merger expects {self.cfg.sam_dim}")
        f3d = self.fuse_tokens(enc_tokens, layer_feats, pts3d, rays, token_grid)
        f3d = resample_to_sam_grid(f3d, image_size, crop_box, tuple(sam_feat.shape[-2:]), self.unseen_fill)
        f3d = self.refine(f3d).to(sam_feat.dtype)
        return sam_feat + self.out_block(torch.cat([sam_feat, f3d], dim=1))


__all__ = [
    "FeatureMerger",
    "MergerConfig",
    "resample_to_sam_grid",
    "sam_grid_sample_coords",
    "token_positions",
]
