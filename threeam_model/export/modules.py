"""SAM 2's per-frame path as four modules with static shapes, for ONNX export (and, in PyTorch, as their reference).

- `ImageEncoder`: frame (1, 3, S, S) -> the stride-4/8 features (projected for the mask decoder, as
  `SAM2Base.forward_image` does), the stride-16 feature, and the three levels' positional encodings.
- `MemoryAttention`: a fixed object batch B, a fixed number of spatial memory slots and of object-pointer slots,
  and a validity flag per slot; invalid slots are masked out of the cross-attention (their keys get no weight), so
  any memory up to the slots equals SAM 2's attention over exactly that memory. Rotary encodings in real arithmetic
  (ONNX has no complex numbers).
- `SamHeads`: the prompt encoder (no prompt) and mask decoder of a tracking step, with the no-object masking, the
  best-IoU choice and the object pointer: SAM2Base._forward_sam_heads for tracked frames.
- `MemoryEncoder`: SAM 2's memory encoder on prepared mask inputs, plus the no-object embedding.
Prompts (clicks, boxes, masks) stay in PyTorch: they are rare and their shapes vary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from threeam_model.streaming.batched import decode_candidates


class ImageEncoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        out = self.model.forward_image(image)
        fpn, pos = out["backbone_fpn"], out["vision_pos_enc"]
        return fpn[0], fpn[1], fpn[2], pos[0], pos[1], pos[2]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary encoding of (..., N, D) by per-token angles (N, D/2): pairs (x0, x1) rotate like complex numbers."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2).type_as(x)


def _attention(attn, q, k, v, rope: tuple | None, k_rope_tokens: int, key_bias: torch.Tensor | None):
    """sam2's RoPEAttention forward in real arithmetic, with an additive key bias (B, 1, 1, Lk) for masking."""
    q, k, v = attn.q_proj(q), attn.k_proj(k), attn.v_proj(v)
    heads = attn.num_heads

    def split(x):
        b, n, c = x.shape
        return x.reshape(b, n, heads, c // heads).transpose(1, 2)

    q, k, v = split(q), split(k), split(v)
    if rope is not None:
        cos, sin = rope
        q = _rotate(q, cos, sin)
        if k_rope_tokens:
            repeat = k_rope_tokens // cos.shape[0]
            k_rot = _rotate(k[:, :, :k_rope_tokens], cos.repeat(repeat, 1), sin.repeat(repeat, 1))
            k = torch.cat([k_rot, k[:, :, k_rope_tokens:]], dim=2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias)
    b, h, n, d = out.shape
    return attn.out_proj(out.transpose(1, 2).reshape(b, n, h * d))


class MemoryAttention(nn.Module):
    """SAM 2's memory attention over a static memory layout (see the module docstring).

    Inputs (sequence first, as SAM 2): curr, curr_pos (HW, B, C); memory, memory_pos (L, B, Cm) with
    L = memory_slots * HW + pointer_slots * tokens_per_pointer; slot_valid (B, memory_slots + pointer_slots) bool.
    """

    def __init__(self, model, memory_slots: int, pointer_slots: int):
        super().__init__()
        self.attention = model.memory_attention
        self.memory_slots, self.pointer_slots = int(memory_slots), int(pointer_slots)
        self.tokens_per_pointer = model.hidden_dim // model.mem_dim if model.mem_dim < model.hidden_dim else 1
        H, W = (model.image_size // 16,) * 2
        self.hw = H * W
        layer = self.attention.layers[0]
        freqs = layer.self_attn.compute_cis(end_x=W, end_y=H)  # (HW, D/2) complex, as sam2 computes it
        self.register_buffer("cos", freqs.real.float().clone(), persistent=False)
        self.register_buffer("sin", freqs.imag.float().clone(), persistent=False)

    def forward(self, curr, curr_pos, memory, memory_pos, slot_valid):
        ma = self.attention
        x = curr
        if ma.pos_enc_at_input:
            x = x + 0.1 * curr_pos
        # batch first inside, as sam2's MemoryAttention
        x, qpos = x.transpose(0, 1), curr_pos.transpose(0, 1)
        mem, mpos = memory.transpose(0, 1), memory_pos.transpose(0, 1)
        spatial = self.memory_slots * self.hw
        token_valid = torch.cat(
            [
                slot_valid[:, : self.memory_slots].repeat_interleave(self.hw, dim=1),
                slot_valid[:, self.memory_slots :].repeat_interleave(self.tokens_per_pointer, dim=1),
            ],
            dim=1,
        )
        key_bias = torch.where(token_valid, 0.0, float("-inf")).to(x.dtype)[:, None, None, :]
        rope = (self.cos, self.sin)
        for layer in ma.layers:
            t = layer.norm1(x)
            qk = t + qpos if layer.pos_enc_at_attn else t
            x = x + layer.dropout1(_attention(layer.self_attn, qk, qk, t, rope, qk.shape[1], None))
            t = layer.norm2(x)
            q = t + qpos if layer.pos_enc_at_cross_attn_queries else t
            k = mem + mpos if layer.pos_enc_at_cross_attn_keys else mem
            x = x + layer.dropout2(_attention(layer.cross_attn_image, q, k, mem, rope, spatial, key_bias))
            t = layer.norm3(x)
            x = x + layer.dropout3(layer.linear2(layer.dropout(layer.activation(layer.linear1(t)))))
        return ma.norm(x).transpose(0, 1)


class SamHeads(nn.Module):
    """Prompt-free SAM heads of a tracking step: pix_feat (B, C, H, W) and the stride-4/8 features (B, ...) ->
    best low-res mask (B, 1, h, w), its high-res version (B, 1, S, S), object pointer (B, C), object score (B, 1),
    all candidate masks (B, M, h, w) and their IoUs (B, M)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pix_feat, high_res_0, high_res_1):
        m = self.model
        B = pix_feat.shape[0]
        multimask = m._use_multimask(False, None)
        low_res, ious, tokens, object_score_logits = decode_candidates(m, pix_feat, [high_res_0, high_res_1], multimask)
        appearing = object_score_logits > 0
        best = ious.argmax(dim=-1) if multimask else torch.zeros(B, dtype=torch.long, device=pix_feat.device)
        index = best[:, None, None, None].expand(-1, 1, *low_res.shape[-2:])
        low_best = torch.gather(low_res, 1, index)
        size = m.image_size
        high_best = F.interpolate(low_best, size=(size, size), mode="bilinear", align_corners=False)
        token = tokens[:, 0]
        if multimask and tokens.shape[1] > 1:
            token = torch.gather(tokens, 1, best[:, None, None].expand(-1, 1, tokens.shape[-1]))[:, 0]
        obj_ptr = m.obj_ptr_proj(token)
        if m.pred_obj_scores:
            lam = object_score_logits.sigmoid() if m.soft_no_obj_ptr else appearing.float()
            if m.fixed_no_obj_ptr:
                obj_ptr = lam * obj_ptr
            obj_ptr = obj_ptr + (1 - lam) * m.no_obj_ptr
        return low_best, high_best, obj_ptr, object_score_logits, low_res, ious


class MemoryEncoder(nn.Module):
    """pix_feat (B, C, H, W), mask_for_mem (B, 1, S, S) (sigmoid or binarised, scaled and biased as SAM 2 does),
    object_score_logits (B, 1) -> memory features (B, Cm, H, W)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pix_feat, mask_for_mem, object_score_logits):
        m = self.model
        features = m.memory_encoder(pix_feat, mask_for_mem, skip_mask_sigmoid=True)["vision_features"]
        if m.no_obj_embed_spatial is not None:
            appearing = (object_score_logits > 0).float()
            features = features + (1 - appearing[..., None, None]) * m.no_obj_embed_spatial[..., None, None]
        return features


class Merger(nn.Module):
    """3AM's Feature Merger for one camera resolution: MUSt3R's token grid, the frame size and MUSt3R's crop box are
    fixed at export. Inputs: SAM 2's stride-16 feature (1, C, Hs, Ws), MUSt3R's encoder tokens (1, N, Denc), world
    pointmap and ray map (1, H', W', 3), and the merged decoder layers' tokens (1, N, D) in `layers` order."""

    def __init__(self, merger, token_grid, image_size, crop_box, layers):
        super().__init__()
        self.merger = merger
        self.token_grid, self.image_size = tuple(token_grid), tuple(image_size)
        self.crop_box, self.layers = tuple(float(v) for v in crop_box), tuple(layers)

    def forward(self, sam_feat, enc_tokens, pts3d, rays, *layer_feats):
        return self.merger(
            sam_feat,
            enc_tokens=enc_tokens,
            layer_feats=dict(zip(self.layers, layer_feats, strict=True)),
            pts3d=pts3d,
            rays=rays,
            token_grid=self.token_grid,
            image_size=self.image_size,
            crop_box=self.crop_box,
        )


def mask_for_memory(model, high_res_masks: torch.Tensor, is_mask_from_pts: bool) -> torch.Tensor:
    """SAM 2's mask preparation before the memory encoder (`_encode_new_memory`)."""
    if model.binarize_mask_from_pts_for_mem_enc and is_mask_from_pts:
        mask = (high_res_masks > 0).float()
    else:
        mask = torch.sigmoid(high_res_masks)
    if model.sigmoid_scale_for_mem_enc != 1.0:
        mask = mask * model.sigmoid_scale_for_mem_enc
    if model.sigmoid_bias_for_mem_enc != 0.0:
        mask = mask + model.sigmoid_bias_for_mem_enc
    return mask


__all__ = ["ImageEncoder", "MemoryAttention", "MemoryEncoder", "Merger", "SamHeads", "mask_for_memory"]
