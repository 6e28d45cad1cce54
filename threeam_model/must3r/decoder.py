"""The MUSt3R decoder: a ViT-B whose blocks cross-attend to a multi-view token memory, plus the pointmap head.

One call takes the encoder tokens of one or more images. With ``render=False`` the images are added to the memory
(each image sees the memory and the other new images, never its own tokens, except a lone first image that starts
an empty memory); with ``render=True`` they only query it. The memory of block i holds the *input* tokens of block i
of every memory image; with a feedback layer, the tokens stored for blocks 0..depth-2 get an offset computed from
the input of the last block.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .blocks import MEMORY_MODES, DecoderBlock, LayerNorm, Mlp, parse_pos_embed

FEEDBACK_TYPES = (None, "single_mlp", "single_linear")


@dataclasses.dataclass
class Must3rMemory:
    """The decoder memory: per block, the stored tokens of every memory image, plus the image index of each token.

    ``values[i]`` is (B, Nm, Dm) with Dm = 2*D in kv mode, D otherwise. ``labels`` (B, Nm) holds the image index of
    each token (indices continue from ``nimgs``, the number of images ever added, so they stay unique after
    eviction). ``blocks`` says the same on the host, as (image index, token count) in memory order: each image's
    tokens are contiguous, so reading the order or dropping an image never waits for the device. The memory is
    immutable: adding or dropping images returns a new object.
    """

    values: list[torch.Tensor]
    labels: torch.Tensor
    nimgs: int
    blocks: tuple[tuple[int, int], ...]

    @property
    def num_tokens(self) -> int:
        return int(self.labels.shape[1])

    @property
    def image_ids(self) -> list[int]:
        """Image indices present, in memory order."""
        return [image for image, _ in self.blocks]

    def drop_images(self, image_ids) -> Must3rMemory:
        """A memory without the tokens of the given image indices."""
        drop = {int(i) for i in image_ids}
        spans, start = [], 0
        for image, count in self.blocks:
            if image not in drop:
                if spans and spans[-1][1] == start:  # extend the previous kept span
                    spans[-1] = (spans[-1][0], start + count)
                else:
                    spans.append((start, start + count))
            start += count

        def keep(t: torch.Tensor) -> torch.Tensor:
            parts = [t[:, a:b] for a, b in spans] or [t[:, :0]]
            return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

        blocks = tuple(b for b in self.blocks if b[0] not in drop)
        return Must3rMemory([keep(v) for v in self.values], keep(self.labels), self.nimgs, blocks)

    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.values)


class LinearHead(nn.Module):
    """Per-token Linear to patch*patch*7 values, unpatchified with pixel_shuffle to (n, H, W, 7)."""

    def __init__(self, dim: int, output_dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(dim, output_dim)

    def forward(self, tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        h, w = hw
        p = self.patch_size
        x = self.proj(tokens).transpose(-1, -2).reshape(tokens.shape[0], -1, h // p, w // p)
        return F.pixel_shuffle(x, p).permute(0, 2, 3, 1)


def _autocast_dtype(default: torch.dtype) -> torch.dtype:
    if torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    if torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return default


def _shape_of_group(true_shape, n_tokens: int, patch: int) -> tuple[int, int]:
    # needed on the host: Must3rStream passes nested lists; a device tensor costs a read from the device
    if isinstance(true_shape, torch.Tensor):
        true_shape = true_shape.detach().cpu().tolist()
    ts = np.asarray(true_shape, dtype=np.int64).reshape(-1, 2)
    if not (ts == ts[:1]).all():
        raise ValueError(f"all images of one group must share true_shape, got {ts.tolist()}")
    h, w = (int(v) for v in ts[0])
    if (h // patch) * (w // patch) != n_tokens:
        raise ValueError(f"true_shape {h}x{w} does not match {n_tokens} tokens of {patch}px patches")
    return h, w


class Must3rDecoder(nn.Module):
    """Decoder with memory; defaults are the official ViT-B (dim 768, depth 12, 12 heads, head 16*16*7)."""

    def __init__(
        self,
        img_size=(224, 224),
        enc_embed_dim: int = 1024,
        patch_size: int = 16,
        embed_dim: int = 768,
        output_dim: int = 1792,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        pos_embed: str = "RoPE100",
        feedback_type: str | None = None,
        memory_mode: str = "norm_y",
    ):
        super().__init__()
        if feedback_type not in FEEDBACK_TYPES:
            raise ValueError(f"feedback_type must be one of {FEEDBACK_TYPES}, got {feedback_type!r}")
        if memory_mode not in MEMORY_MODES:
            raise ValueError(f"memory_mode must be one of {MEMORY_MODES}, got {memory_mode!r}")
        self.img_size = tuple(img_size)
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.depth = depth
        self.feedback_type = feedback_type
        self.memory_mode = memory_mode
        self.feat_embed_enc_to_dec = nn.Linear(enc_embed_dim, embed_dim)
        self.image2_embed = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.rope = parse_pos_embed(pos_embed)
        self.blocks_dec = nn.ModuleList(
            DecoderBlock(embed_dim, num_heads, self.rope, mlp_ratio, memory_mode) for _ in range(depth)
        )
        if feedback_type == "single_mlp":
            self.feedback_layer = Mlp(embed_dim, 4 * embed_dim)
        elif feedback_type == "single_linear":
            self.feedback_layer = nn.Linear(embed_dim, embed_dim)
        else:
            self.feedback_layer = None
        self.feedback_norm = nn.LayerNorm(embed_dim) if feedback_type else None
        self.norm_dec = LayerNorm(embed_dim)
        self.head_dec = LinearHead(embed_dim, output_dim, patch_size)

    @property
    def memory_dim(self) -> int:
        return 2 * self.embed_dim if self.memory_mode == "kv" else self.embed_dim

    def empty_memory(self, batch: int, device, dtype) -> Must3rMemory:
        values = [torch.zeros((batch, 0, self.memory_dim), device=device, dtype=dtype) for _ in range(self.depth)]
        return Must3rMemory(values, torch.zeros((batch, 0), dtype=torch.int64, device=device), 0, ())

    def forward(self, x, pos, true_shape, memory: Must3rMemory | None = None, render: bool = False):
        """Run one decoder call.

        x: encoder tokens (B, n, N, Denc), or a list of such groups (one per image shape) that share the call.
        pos: (B, n, N, 2) int64 token (row, col), or a list. true_shape: (B, n, 2) [H, W] (a tensor or nested
        lists), or a list of those.
        Returns (memory, pointmaps, feats): the memory after the call (the same object when rendering), the raw
        head output (B, n, H, W, 7) (channels: pts3d world, pts3d_local, confidence logit) and a list of
        depth+1 features (B, n, N, .): [encoder tokens as given, output of block 1, ..., output of block depth with
        norm_dec applied]. With list inputs, pointmaps and feats are lists over groups.
        """
        grouped = isinstance(x, (list, tuple))
        xs, poss, shapes = (list(x), list(pos), list(true_shape)) if grouped else ([x], [pos], [true_shape])
        if render and memory is None:
            raise ValueError("render=True needs an existing memory")
        dtype = _autocast_dtype(xs[0].dtype)
        B = xs[0].shape[0]
        D = self.embed_dim
        sizes = [(g.shape[1], g.shape[2]) for g in xs]  # (n images, N tokens) per group
        hws = [_shape_of_group(s, n_tok, self.patch_size) for s, (_, n_tok) in zip(shapes, sizes)]

        first_call = memory is None
        if first_call:
            memory = self.empty_memory(B, xs[0].device, dtype)
        image2 = self.image2_embed.to(dtype)
        feats, tokens, flat_pos = [], [], []
        for g, (xg, pg) in enumerate(zip(xs, poss)):
            n, n_tok = sizes[g]
            flat = xg.reshape(B * n, n_tok, xg.shape[-1])
            feats.append([flat])
            t = self.feat_embed_enc_to_dec(flat).view(B, n, n_tok, D)
            if first_call and g == 0:  # the very first image is the reference frame: no image2 embedding
                t = torch.cat([t[:, :1], t[:, 1:] + image2], dim=1)
            else:
                t = t + image2
            tokens.append(t.reshape(B * n, n_tok, D))
            flat_pos.append(pg.reshape(B * n, n_tok, 2))

        Nm = memory.num_tokens
        n_total = sum(n for n, _ in sizes)
        keep = None
        if not render and (Nm > 0 or n_total > 1):
            keep = self._keep_indices(Nm, sizes, xs[0].device)

        stored_inputs = []
        for blk, mem_blk in zip(self.blocks_dec, memory.values):
            if render:
                mem_all = mem_blk
            else:
                new = torch.cat([t.view(B, -1, D) for t in tokens], dim=1)
                stored_inputs.append(new)
                mem_all = torch.cat([mem_blk, blk.memory_entry(new)], dim=1)
            Dm = mem_all.shape[-1]
            for g, (n, _) in enumerate(sizes):
                if keep is None:
                    mem_g = mem_all.unsqueeze(1).expand(B, n, -1, -1).reshape(B * n, -1, Dm)
                else:
                    mem_g = mem_all[:, keep[g]].reshape(B * n, -1, Dm)
                tokens[g] = blk(tokens[g], mem_g, flat_pos[g])
                feats[g].append(tokens[g])

        if not render:
            memory = self._append(memory, stored_inputs, sizes)

        pointmaps = []
        for g, (n, _) in enumerate(sizes):
            feats[g][-1] = self.norm_dec(feats[g][-1])
            with torch.autocast("cuda", enabled=False):
                pm = self.head_dec(feats[g][-1].float(), hws[g])
            pointmaps.append(pm.view(B, n, *pm.shape[1:]))
            feats[g] = [f.view(B, n, *f.shape[1:]) for f in feats[g]]
        if grouped:
            return memory, pointmaps, feats
        return memory, pointmaps[0], feats[0]

    @staticmethod
    def _keep_indices(Nm: int, sizes, device) -> list[torch.Tensor]:
        """Per group, (n, Nm + new - N) indices into [memory | new tokens] leaving out each image's own tokens.

        Built on the device by arithmetic (index i of the kept list skips the N own tokens once i reaches them)."""
        total = Nm + sum(n * t for n, t in sizes)
        out, offset = [], Nm
        for n, n_tok in sizes:
            kept = torch.arange(total - n_tok, device=device)
            own_start = offset + n_tok * torch.arange(n, device=device)
            out.append(kept + n_tok * (kept[None] >= own_start[:, None]))
            offset += n * n_tok
        return out

    def _append(self, memory: Must3rMemory, stored_inputs: list[torch.Tensor], sizes) -> Must3rMemory:
        if self.feedback_layer is not None:
            offset = self.feedback_layer(self.feedback_norm(stored_inputs[-1]))
            stored_inputs = [t + offset for t in stored_inputs[:-1]] + [stored_inputs[-1]]
        values = [
            torch.cat([old, blk.memory_entry(new)], dim=1)
            for old, blk, new in zip(memory.values, self.blocks_dec, stored_inputs)
        ]
        B = memory.labels.shape[0]
        new_labels, blocks, next_id = [], list(memory.blocks), memory.nimgs
        for n, n_tok in sizes:
            ids = torch.arange(next_id, next_id + n, device=memory.labels.device)
            new_labels.append(ids.repeat_interleave(n_tok).unsqueeze(0).expand(B, -1))
            blocks += [(next_id + j, n_tok) for j in range(n)]
            next_id += n
        labels = torch.cat([memory.labels, *new_labels], dim=1)
        return Must3rMemory(values, labels, next_id, tuple(blocks))
