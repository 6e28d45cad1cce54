"""Transformer pieces shared by the MUSt3R encoder and decoder: 2D RoPE, attention, MLP, blocks.

Parameter names follow the official checkpoints (``attn.qkv``, ``cross_attn.projq``, ``mlp.fc1`` ...), so a
state_dict loads with strict key matching.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

# Every LayerNorm of MUSt3R uses eps 1e-6, except the feedback norm (plain nn.LayerNorm, eps 1e-5).
LayerNorm = partial(nn.LayerNorm, eps=1e-6)

MEMORY_MODES = ("kv", "norm_y", "raw")


class RoPE2D(nn.Module):
    """2D rotary position embedding: half of each head's channels rotate with the token row, half with its column.

    ``base`` is the frequency base (100 for ``RoPE100``); ``freq_scale`` multiplies every frequency, which is how
    ``RoPE100_A:B`` (scale A/B) adapts a model trained at size A to size B.
    """

    def __init__(self, base: float = 100.0, freq_scale: float = 1.0):
        super().__init__()
        self.base = float(base)
        self.freq_scale = float(freq_scale)
        self._cache: dict = {}

    def _cos_sin(self, dim: int, length: int, device, dtype):
        key = (dim, length, device, dtype)
        if key not in self._cache:
            inv_freq = self.freq_scale / (self.base ** (torch.arange(0, dim, 2, device=device).float() / dim))
            t = torch.arange(length, device=device, dtype=inv_freq.dtype)
            angles = torch.outer(t, inv_freq).to(dtype)
            angles = torch.cat((angles, angles), dim=-1)
            self._cache[key] = (angles.cos(), angles.sin())
        return self._cache[key]

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=-1)
        return torch.cat((-b, a), dim=-1)

    def _rotate(self, x: torch.Tensor, pos1d: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        c = F.embedding(pos1d, cos)[:, None]  # (B, 1, N, d)
        s = F.embedding(pos1d, sin)[:, None]
        return x * c + self._rotate_half(x) * s

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """tokens (B, heads, N, head_dim), pos (B, N, 2) int64 holding (row, col) of a grid of N tokens."""
        half = tokens.shape[-1] // 2
        # positions of a grid of N tokens are < N: a table of N rows avoids reading pos.max() from the device
        cos, sin = self._cos_sin(half, pos.shape[-2], tokens.device, tokens.dtype)
        y, x = tokens.chunk(2, dim=-1)
        return torch.cat((self._rotate(y, pos[..., 0], cos, sin), self._rotate(x, pos[..., 1], cos, sin)), dim=-1)


def parse_pos_embed(name: str) -> RoPE2D:
    """'RoPE100' -> RoPE2D(100); 'RoPE100_224:512' -> RoPE2D(100, freq_scale=224/512)."""
    if not name.startswith("RoPE"):
        raise ValueError(f"unsupported pos_embed {name!r}: only 'RoPE<base>' or 'RoPE<base>_<A>:<B>' exist")
    body = name[len("RoPE") :]
    scale = 1.0
    if "_" in body:
        body, sizes = body.split("_", 1)
        old, new = sizes.split(":")
        scale = float(old) / float(new)
    return RoPE2D(float(body), freq_scale=scale)


class Mlp(nn.Module):
    """Linear -> exact GELU -> Linear."""

    def __init__(self, dim: int, hidden: int, out_dim: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class SelfAttention(nn.Module):
    """Multi-head self-attention with RoPE on queries and keys."""

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k = self.rope(q, pos), self.rope(k, pos)
        return self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v)))


class MemoryCrossAttention(nn.Module):
    """Cross-attention from image tokens to memory tokens, without positional encoding.

    Keys and values can be projected once when a token enters the memory (``project_kv``) and reused afterwards.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.projq = nn.Linear(dim, dim)
        self.projk = nn.Linear(dim, dim)
        self.projv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def project_kv(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.projk(y), self.projv(y)

    def forward(self, x: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        q = _heads(self.projq(x), self.num_heads)
        k, v = _heads(key, self.num_heads), _heads(value, self.num_heads)
        if k.dtype != v.dtype or q.dtype != v.dtype:  # mixed dtypes under autocast
            q, k = q.to(v.dtype), k.to(v.dtype)
        return self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v)))


class EncoderBlock(nn.Module):
    """Pre-norm ViT block: x + SA(norm1 x), then x + MLP(norm2 x)."""

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads, rope)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), pos)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """MUSt3R decoder block: self-attention, cross-attention to the memory, MLP.

    The memory of this block stores, per token, one of three layouts (``memory_mode``), all giving the same output:
    ``kv`` the projected keys and values [k | v] (2*dim, fastest), ``norm_y`` the normalised token, ``raw`` the token.
    """

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D, mlp_ratio: float = 4.0, memory_mode: str = "norm_y"):
        super().__init__()
        if memory_mode not in MEMORY_MODES:
            raise ValueError(f"memory_mode must be one of {MEMORY_MODES}, got {memory_mode!r}")
        self.memory_mode = memory_mode
        self.norm1 = LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads, rope)
        self.norm2 = LayerNorm(dim)
        self.norm_y = LayerNorm(dim)
        self.cross_attn = MemoryCrossAttention(dim, num_heads)
        self.norm3 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def memory_entry(self, tokens: torch.Tensor) -> torch.Tensor:
        """What this block keeps in memory for the given (input) tokens, in its memory_mode layout."""
        if self.memory_mode == "raw":
            return tokens
        normed = self.norm_y(tokens).to(tokens.dtype)
        if self.memory_mode == "norm_y":
            return normed
        return torch.cat(self.cross_attn.project_kv(normed), dim=-1)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), pos)
        if self.memory_mode == "kv":
            key, value = memory.split(x.shape[-1], dim=-1)
        else:
            y = self.norm_y(memory) if self.memory_mode == "raw" else memory
            key, value = self.cross_attn.project_kv(y)
        x = x + self.cross_attn(self.norm2(x), key, value)
        return x + self.mlp(self.norm3(x))
