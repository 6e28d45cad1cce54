"""One tracking step for many objects at once: memory attention, SAM heads and memory encoder in batched calls.

SAM2Base's `track_step` takes one memory dict for the whole batch and one positional encoding per object pointer
for every batch element, so it can batch only objects whose memories sit at the same frames. Memory attention
itself needs less: the same number of memory tokens and of object-pointer tokens per element, while positional
encodings may differ per element. `memory_tokens` therefore assembles one object's memory exactly as
`SAM2Base._prepare_memory_conditioned_features` does (same selection, same order, same encodings), and
`step_objects` stacks objects with equal token counts into one batch. Results agree with the per-object official
step to float32 rounding (batched matrix products may sum in another order); the per-object path stays the bit for
bit reference.
"""

from __future__ import annotations

import dataclasses

import torch
from sam2.modeling.sam2_base import NO_OBJ_SCORE
from sam2.modeling.sam2_utils import get_1d_sine_pe, select_closest_cond_frames


@dataclasses.dataclass
class MemoryTokens:
    """One object's memory for memory attention (batch size 1, sequence first)."""

    memory: torch.Tensor  # (L, 1, mem_dim)
    pos: torch.Tensor  # (L, 1, mem_dim)
    num_obj_ptr_tokens: int
    # what was read, in concatenation order: {"maskmem": [(kind, frame)], "obj_ptr": [(kind, frame)]},
    # kind "cond" or "non_cond" (for inspection and parity tests)
    frames: dict = dataclasses.field(default_factory=dict)

    @property
    def layout(self) -> tuple[int, int]:
        """What must match for two objects to share a batch."""
        return self.memory.shape[0], self.num_obj_ptr_tokens


def memory_tokens(model, frame_idx: int, output_dict: dict, num_frames: int) -> MemoryTokens:
    """The memory an object's tracking step on `frame_idx` reads (not an initial conditioning frame), assembled
    in the order and with the encodings of `SAM2Base._prepare_memory_conditioned_features` (eval mode, forward)."""
    device = model.device
    cond_outputs = output_dict["cond_frame_outputs"]
    if not cond_outputs:
        raise RuntimeError("an object with no conditioning frame cannot be tracked (its memory policy dropped them)")
    selected, unselected = select_closest_cond_frames(frame_idx, cond_outputs, model.max_cond_frames_in_attn)
    t_pos_and_prevs = [(0, out, ("cond", t)) for t, out in selected.items()]
    stride = model.memory_temporal_stride_for_eval
    for t_pos in range(1, model.num_maskmem):
        t_rel = model.num_maskmem - t_pos
        if t_rel == 1:
            prev = frame_idx - 1
        else:
            prev = ((frame_idx - 2) // stride) * stride - (t_rel - 2) * stride
        out = output_dict["non_cond_frame_outputs"].get(prev)
        kind = "non_cond"
        if out is None:
            out, kind = unselected.get(prev), "cond"
        t_pos_and_prevs.append((t_pos, out, (kind, prev)))

    memory, pos, read = [], [], {"maskmem": [], "obj_ptr": []}
    for t_pos, prev, where in t_pos_and_prevs:
        if prev is None:
            continue
        memory.append(prev["maskmem_features"].to(device).flatten(2).permute(2, 0, 1))
        enc = prev["maskmem_pos_enc"][-1].to(device).flatten(2).permute(2, 0, 1)
        pos.append(enc + model.maskmem_tpos_enc[model.num_maskmem - t_pos - 1])
        read["maskmem"].append(where)

    num_ptr_tokens = 0
    if model.use_obj_ptrs_in_encoder:
        max_ptrs = min(num_frames, model.max_obj_ptrs_in_encoder)
        if model.only_obj_ptrs_in_the_past_for_eval:
            ptr_cond = {t: out for t, out in selected.items() if t <= frame_idx}
        else:
            ptr_cond = selected
        pos_and_ptrs = [
            ((frame_idx - t) if model.use_signed_tpos_enc_to_obj_ptrs else abs(frame_idx - t), out["obj_ptr"])
            for t, out in ptr_cond.items()
        ]
        read["obj_ptr"] = [("cond", t) for t in ptr_cond]
        for t_diff in range(1, max_ptrs):
            t = frame_idx - t_diff
            if t < 0 or t >= num_frames:
                break
            out = output_dict["non_cond_frame_outputs"].get(t)
            kind = "non_cond"
            if out is None:
                out, kind = unselected.get(t), "cond"
            if out is not None:
                pos_and_ptrs.append((t_diff, out["obj_ptr"]))
                read["obj_ptr"].append((kind, t))
        num_ptr_tokens = append_pointer_tokens(model, memory, pos, pos_and_ptrs, max_ptrs - 1)
    return MemoryTokens(torch.cat(memory, dim=0), torch.cat(pos, dim=0), num_ptr_tokens, read)


def append_pointer_tokens(model, memory: list, pos: list, pos_and_ptrs: list, t_diff_max: int) -> int:
    """Object pointers [(temporal position, (1, C) pointer)] -> memory tokens and encodings appended to `memory`
    and `pos` (SAM 2's sine encoding of position / t_diff_max, split into mem_dim tokens); returns the count."""
    if not pos_and_ptrs:
        return 0
    C, mem_dim = model.hidden_dim, model.mem_dim
    pos_list, ptrs = zip(*pos_and_ptrs, strict=True)
    obj_ptrs = torch.stack(ptrs, dim=0)  # (P, 1, C)
    if model.add_tpos_enc_to_obj_ptrs:
        tpos_dim = C if model.proj_tpos_enc_in_obj_ptrs else mem_dim
        obj_pos = torch.tensor(pos_list).to(device=obj_ptrs.device)
        obj_pos = get_1d_sine_pe(obj_pos / t_diff_max, dim=tpos_dim)
        obj_pos = model.obj_ptr_tpos_proj(obj_pos).unsqueeze(1).expand(-1, 1, mem_dim)
    else:
        obj_pos = obj_ptrs.new_zeros(len(pos_list), 1, mem_dim)
    if mem_dim < C:
        obj_ptrs = obj_ptrs.reshape(-1, 1, C // mem_dim, mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
        obj_pos = obj_pos.repeat_interleave(C // mem_dim, dim=0)
    memory.append(obj_ptrs)
    pos.append(obj_pos)
    return obj_ptrs.shape[0]


def step_objects(model, features, tokens: list[MemoryTokens], pad_to: int | None = None) -> dict:
    """Track a group of objects with one memory layout on the current frame, in one batch.

    features: (vision_feats, vision_pos_embeds, feat_sizes) of the frame (batch 1, as `_prepare_backbone_features`
    returns them); tokens: each object's `memory_tokens`, all with the same layout; pad_to: run a batch of at
    least this many (repeating the last object) so shapes stay static. Returns batched tensors for the group's
    objects: multimask_logits (B, M, h, w) and multimask_ious (B, M) (every candidate of the SAM head),
    pred_masks (B, 1, h, w), obj_ptr (B, C), object_score_logits (B, 1), maskmem_features (B, Cm, H, W),
    maskmem_pos_enc (list of (1, Cm, H, W)).
    """
    vision_feats, vision_pos_embeds, feat_sizes = features
    n = len(tokens)
    if len({t.layout for t in tokens}) != 1:
        raise ValueError(f"objects of one batch need one memory layout, got {sorted({t.layout for t in tokens})}")
    padded = tokens + [tokens[-1]] * max(0, (pad_to or 0) - n)
    B = len(padded)
    C = model.hidden_dim
    H, W = feat_sizes[-1]
    curr = vision_feats[-1].expand(-1, B, -1)
    curr_pos = vision_pos_embeds[-1].expand(-1, B, -1)
    memory = torch.cat([t.memory for t in padded], dim=1)
    memory_pos = torch.cat([t.pos for t in padded], dim=1)
    with_memory = model.memory_attention(
        curr=[curr],
        curr_pos=[curr_pos],
        memory=memory,
        memory_pos=memory_pos,
        num_obj_ptr_tokens=padded[0].num_obj_ptr_tokens,
    )
    pix_feat = with_memory.permute(1, 2, 0).view(B, C, H, W)
    high_res = [
        x.permute(1, 2, 0).view(1, x.size(2), *s).expand(B, -1, -1, -1)
        for x, s in zip(vision_feats[:-1], feat_sizes[:-1], strict=True)
    ]
    low_res_multimasks, _, ious, low_res_masks, high_res_masks, obj_ptr, object_score_logits = model._forward_sam_heads(
        backbone_features=pix_feat,
        point_inputs=None,
        mask_inputs=None,
        high_res_features=high_res or None,
        multimask_output=model._use_multimask(False, None),
    )
    maskmem_features, maskmem_pos_enc = model._encode_new_memory(
        current_vision_feats=[curr],
        feat_sizes=feat_sizes,
        pred_masks_high_res=high_res_masks,
        object_score_logits=object_score_logits,
        is_mask_from_pts=False,
    )
    return {
        "multimask_logits": low_res_multimasks[:n],
        "multimask_ious": ious[:n],
        "pred_masks": low_res_masks[:n],
        "obj_ptr": obj_ptr[:n],
        "object_score_logits": object_score_logits[:n],
        "maskmem_features": maskmem_features[:n],
        "maskmem_pos_enc": [x[0:1] for x in maskmem_pos_enc],
    }


def decode_candidates(model, pix_feat: torch.Tensor, high_res: list | None, multimask: bool = True):
    """SAM's heads without a prompt, as a tracking step runs them: every candidate mask (B, M, h, w) (no-object
    masked, float32), their IoUs (B, M), output tokens (B, M', C) and object scores (B, 1)."""
    B, device = pix_feat.shape[0], pix_feat.device
    sparse, dense = model.sam_prompt_encoder(
        points=(torch.zeros(B, 1, 2, device=device), -torch.ones(B, 1, dtype=torch.int32, device=device)),
        boxes=None,
        masks=None,
    )
    low_res, ious, tokens, object_score_logits = model.sam_mask_decoder(
        image_embeddings=pix_feat,
        image_pe=model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
        repeat_image=False,
        high_res_features=high_res or None,
    )
    if model.pred_obj_scores:
        low_res = torch.where(object_score_logits[:, :, None, None] > 0, low_res, NO_OBJ_SCORE)
    return low_res.float(), ious, tokens, object_score_logits


__all__ = ["MemoryTokens", "append_pointer_tokens", "decode_candidates", "memory_tokens", "step_objects"]
