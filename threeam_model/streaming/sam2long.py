"""SAM2Long's memory tree (Ding et al., ICCV 2025) as a stepping memory policy: several pathways per object.

Each object keeps `num_pathways` segmentation pathways. On a frame every pathway runs a tracking step on its own
memory and proposes SAM's 3 candidate masks; a candidate scores its pathway's accumulated score plus
log(predicted IoU + 1e-5). The `num_pathways` best candidates are kept: when some pathway's object score is
confident (|logit| > `uncertainty`) simply the top ones, otherwise going down the ranking and skipping a candidate
whose signed IoU (negative when its pathway sees no object), rounded to 2 decimals, was already kept, then, if
too few remain, the best candidate of each pathway not yet represented. Each kept candidate becomes a pathway (its
parent's history plus itself), with its own memory encoding (from its own mask) and object pointer. The first frame
after a conditioning frame is one ordinary step.

A pathway's memory on frame f: its frames from f-1 back to its conditioning frame whose candidate had IoU >
`iou_threshold` and a positive object score, the newest `max_obj_ptrs_in_encoder - 1` of them, plus f-1 always;
spatial memory = the conditioning frames and the newest 6 of those (no stride); pointers = the conditioning frames'
(position = frame distance) and those frames' newest first, the oldest left out (position = rank). When more than
one spatial memory frame is read, memory attention's keys are scaled per frame (and per pointer) by 0.95 ... 1.05
in the order of their object scores (conditioning frames count as 10); values are not scaled.

Streaming differs from the official code in two ways, both by necessity: the official output picks, for every
frame, the pathway that is best after the *last* frame (a choice known only at the end of the video); a stream
answers now, so the reported mask is that of the currently best pathway (slot 0). And a conditioning prompt later
in the stream (the official code takes prompts on the first frame only) restarts the tree from that frame, keeping
every conditioning frame in memory. Corrections therefore always condition the memory (`correction_as_cond`).

Defaults are the published ones (github.com/Mark12Ding/SAM2Long, commit 7193b77, README commands and the
functions' defaults): 3 pathways, IoU threshold 0.1, uncertainty 2; the key-scaling range [0.95, 1.05] and the
conditioning score 10 are constants of that code. SAM2Long's code is CC BY-NC 4.0; this module is our own
implementation from the paper and the behaviour of that code, but users of this policy should check those terms.

State is bounded: at most `num_pathways` candidates on each of the frames some pathway can still read (its newest
15 valid frames and f-1), so at most `num_pathways` times SAM 2's reach, plus the conditioning frames (capped).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from threeam_model.streaming.batched import MemoryTokens, append_pointer_tokens, decode_candidates
from threeam_model.streaming.memory import Admission, ObjectMemory

_KEY_SCALE = (0.95, 1.05)  # SAM2Long's range of key scaling by object-score rank
_COND_SCORE = 10.0  # the object score a conditioning frame counts with in that ranking


class Sam2LongMemory(ObjectMemory):
    """An object's SAM2Long tree: conditioning frames (`cond`), per frame its kept candidates (`slots`, slot 0 the
    best), per pathway its history (frame -> slot) and accumulated score. `non_cond` holds the reported output of
    the current frame only (what a refinement click reads)."""

    def __init__(self):
        super().__init__()
        self.slots: dict[int, list[dict]] = {}
        self.paths: list[dict[int, int]] = []
        self.scores: list[float] = []
        self.start: int | None = None  # the conditioning frame the tree grows from
        self.reads: dict[int, list[dict]] = {}  # last frame's memory reads per pathway (for inspection)

    def tensors(self):
        yield from super().tensors()
        for slots in self.slots.values():
            for slot in slots:
                for value in slot.values():
                    if isinstance(value, torch.Tensor):
                        yield value
                    elif isinstance(value, list):
                        yield from (v for v in value if isinstance(v, torch.Tensor))


class Sam2LongPolicy:
    """SAM2Long's memory tree (see the module docstring); model: the SAM2Base it runs on."""

    def __init__(
        self,
        model,
        num_pathways: int = 3,
        iou_threshold: float = 0.1,
        uncertainty: float = 2.0,
        max_cond_frames: int = 8,
    ):
        if num_pathways < 1:
            raise ValueError(f"num_pathways must be >= 1, got {num_pathways}")
        self.num_pathways = int(num_pathways)
        self.iou_threshold = float(iou_threshold)
        self.uncertainty = float(uncertainty)
        self.max_cond_frames = int(max_cond_frames)
        self.num_maskmem = model.num_maskmem
        self.max_ptrs = model.max_obj_ptrs_in_encoder if model.use_obj_ptrs_in_encoder else 0

    # ------------------------------------------------------------------------------------------ the protocol

    def new_memory(self) -> Sam2LongMemory:
        return Sam2LongMemory()

    def admit(self, memory: Sam2LongMemory, frame_idx: int, output: dict, is_cond: bool) -> None:
        """Only prompts reach here (this policy stores its own tracked frames): each one conditions the memory and
        restarts the tree from its frame."""
        memory.cond[frame_idx] = output
        memory.non_cond.pop(frame_idx, None)
        memory.slots.clear()
        memory.paths, memory.scores = [], []
        memory.start = frame_idx
        while len(memory.cond) > self.max_cond_frames:
            del memory.cond[min(t for t in memory.cond if t != frame_idx)]

    def review(self, memory, report) -> Admission:
        return Admission.RECENT  # never asked: track_object keeps what it decides

    def memory_tokens(self, model, memory, frame_idx):
        return None  # never asked: track_object reads memory itself

    def view(self, memory: Sam2LongMemory, frame_idx: int) -> dict:
        """The official dict of the best pathway (for a prompt on a tracked frame, which runs SAM 2's own step)."""
        non_cond = {}
        if memory.paths:
            for t, s in memory.paths[0].items():
                if t in memory.slots:
                    non_cond[t] = memory.slots[t][s]
        non_cond.update(memory.non_cond)
        return {"cond_frame_outputs": memory.cond, "non_cond_frame_outputs": non_cond}

    def prune(self, memory: Sam2LongMemory, frame_idx: int) -> None:
        f = frame_idx
        keep = set()
        for path in memory.paths:
            keep.update(self._valid_frames(memory, path, f))
        for t in list(memory.slots):
            if t not in keep:
                del memory.slots[t]
            else:
                for slot in memory.slots[t]:
                    slot.pop("pred_masks", None)
        memory.paths = [{t: s for t, s in path.items() if t in memory.slots} for path in memory.paths]
        memory.non_cond.clear()
        for out in memory.cond.values():
            out.pop("pred_masks", None)

    # ------------------------------------------------------------------------------------------ the step

    def track_object(self, model, features, memory: Sam2LongMemory, frame_idx: int) -> dict:
        """Track one object on the current frame; returns the reported output (pred_masks, object_score_logits)."""
        f = frame_idx
        if memory.start is None:
            raise RuntimeError("SAM2Long needs a conditioning frame first; prompt the object")
        first = f == memory.start + 1 or not memory.paths
        paths = [None] if first else memory.paths
        tokens = [self._tokens(model, memory, path, f) for path in paths]
        cands = _candidates(model, features, tokens)
        memory.reads = {f: [t.frames for t in tokens]}
        if first:
            j = int(cands["ious"][0].argmax())
            kept = [(0, j, 0.0)]
        else:
            kept = self._select(memory, cands)
        maskmem, pos_enc = _encode(model, features, cands, kept)
        slots = []
        for k, (p, j, score) in enumerate(kept):
            slots.append(
                {
                    "maskmem_features": maskmem[k : k + 1],
                    "maskmem_pos_enc": pos_enc,
                    "obj_ptr": cands["obj_ptrs"][p : p + 1, j].clone(),
                    "object_score_logits": cands["object_score_logits"][p : p + 1].clone(),
                    "iou": float(cands["ious"][p, j]),
                    "acc_score": score,
                    "pred_masks": cands["low_res"][p : p + 1, j : j + 1],
                    "parent": p,
                    "mask_index": j,
                }
            )
        memory.slots[f] = slots
        if first:
            memory.paths = [{f: 0} for _ in range(self.num_pathways)]
            memory.scores = [0.0] * self.num_pathways
        else:
            parents = [dict(memory.paths[p]) for p, _, _ in kept]
            for k, path in enumerate(parents):
                path[f] = k
            memory.paths = parents
            memory.scores = [score for _, _, score in kept]
        best = slots[0]
        memory.non_cond = {f: best}
        return {"pred_masks": best["pred_masks"], "object_score_logits": best["object_score_logits"]}

    def _select(self, memory: Sam2LongMemory, cands: dict) -> list[tuple[int, int, float]]:
        """The kept (pathway, mask, score) candidates, best first (see the module docstring)."""
        P = self.num_pathways
        ious = cands["ious"].float()
        objs = cands["object_score_logits"].float().reshape(-1)
        scored = []
        for p in range(P):
            for j in range(ious.shape[1]):
                iou = float(ious[p, j])
                signed = iou if float(objs[p]) > 0 else -iou
                scored.append((p, j, memory.scores[p] + math.log(iou + 1e-5), signed))
        ranked = sorted(scored, key=lambda c: c[2], reverse=True)  # stable: ties keep pathway, mask order
        if max(abs(float(o)) for o in objs) > self.uncertainty:
            kept = ranked[:P]
        else:
            kept, seen = [], set()
            for cand in ranked:
                value = round(cand[3], 2)
                if value not in seen:
                    kept.append(cand)
                    seen.add(value)
                if len(kept) == P:
                    break
            if len(kept) < P:  # most candidates alike: keep every pathway represented
                have = {c[0] for c in kept}
                for p in range(P):
                    if p not in have:
                        kept.append(next(c for c in ranked if c[0] == p))
                    if len(kept) == P:
                        break
        return [(p, j, score) for p, j, score, _ in kept]

    # ------------------------------------------------------------------------------------------ memory

    def _valid_frames(self, memory: Sam2LongMemory, path: dict[int, int], f: int) -> list[int]:
        """The frames a pathway reads on frame f, oldest first (see the module docstring)."""
        valid = []
        # frames no pathway could read any more were pruned; the rest is scanned newest first
        for t in sorted((t for t in path if memory.start < t < f and t in memory.slots), reverse=True):
            slot = memory.slots[t][path[t]]
            if slot["iou"] > self.iou_threshold and float(slot["object_score_logits"].reshape(-1)[0]) > 0:
                valid.insert(0, t)
            if len(valid) >= self.max_ptrs - 1:
                break
        if f - 1 not in valid and f - 1 in path:
            valid.append(f - 1)
        return valid

    def _tokens(self, model, memory: Sam2LongMemory, path: dict[int, int] | None, f: int) -> MemoryTokens:
        device = model.device
        cond = [t for t in memory.cond]
        valid = [] if path is None else self._valid_frames(memory, path, f)
        memory_list, pos, frame_scores = [], [], []
        read = {"maskmem": [], "obj_ptr": []}
        for t in cond:  # conditioning frames: temporal position 0
            out = memory.cond[t]
            memory_list.append(out["maskmem_features"].to(device).flatten(2).permute(2, 0, 1))
            enc = out["maskmem_pos_enc"][-1].to(device).flatten(2).permute(2, 0, 1)
            pos.append(enc + model.maskmem_tpos_enc[model.num_maskmem - 1])
            frame_scores.append(_COND_SCORE)
            read["maskmem"].append(("cond", t, None))
        newest = valid[-(self.num_maskmem - 1) :] if valid else []
        for k, t in enumerate(newest):  # the newest gets temporal position num_maskmem - 1
            t_pos = self.num_maskmem - len(newest) + k
            slot = memory.slots[t][path[t]]
            memory_list.append(slot["maskmem_features"].to(device).flatten(2).permute(2, 0, 1))
            enc = slot["maskmem_pos_enc"][-1].to(device).flatten(2).permute(2, 0, 1)
            pos.append(enc + model.maskmem_tpos_enc[model.num_maskmem - t_pos - 1])
            frame_scores.append(float(slot["object_score_logits"].reshape(-1)[0]))
            read["maskmem"].append(("non_cond", t, path[t]))
        tokens_per_frame = [m.shape[0] for m in memory_list]
        num_ptr_tokens, ptr_scores = 0, []
        if self.max_ptrs:
            ptr_cond = [t for t in cond if t <= f or not model.only_obj_ptrs_in_the_past_for_eval]
            pos_and_ptrs = [(abs(f - t), memory.cond[t]["obj_ptr"]) for t in ptr_cond]
            ptr_scores = [_COND_SCORE] * len(ptr_cond)
            for t_diff in range(1, self.max_ptrs):
                if t_diff >= len(valid):
                    break
                t = valid[-t_diff]
                slot = memory.slots[t][path[t]]
                pos_and_ptrs.append((t_diff, slot["obj_ptr"]))
                ptr_scores.append(float(slot["object_score_logits"].reshape(-1)[0]))
                read["obj_ptr"].append((t, path[t]))
            num_ptr_tokens = append_pointer_tokens(model, memory_list, pos, pos_and_ptrs, self.max_ptrs - 1)
        memory_t, pos_t = torch.cat(memory_list), torch.cat(pos)
        if len(frame_scores) > 1:
            pos_t = _scaled_key_pos(memory_t, pos_t, frame_scores, tokens_per_frame, ptr_scores, num_ptr_tokens)
        return MemoryTokens(memory_t, pos_t, num_ptr_tokens, read)


def _rank_scales(scores: list[float]) -> torch.Tensor:
    """0.95 ... 1.05 assigned by ascending score."""
    values = torch.tensor(scores, dtype=torch.float32)
    scales = torch.zeros_like(values)
    scales[torch.argsort(values)] = torch.linspace(*_KEY_SCALE, len(scores))
    return scales


def _scaled_key_pos(memory, pos, frame_scores, tokens_per_frame, ptr_scores, num_ptr_tokens):
    """Memory attention's keys are memory + pos and its values memory: scaling the keys alone by s means passing
    pos' = s * (memory + pos) - memory."""
    per_token = [_rank_scales(frame_scores).repeat_interleave(torch.tensor(tokens_per_frame))]
    if num_ptr_tokens:
        per_token.append(_rank_scales(ptr_scores).repeat_interleave(num_ptr_tokens // len(ptr_scores)))
    s = torch.cat(per_token).to(memory.device)[:, None, None]
    return s * (memory + pos) - memory


def _candidates(model, features, tokens: list[MemoryTokens]) -> dict:
    """Every pathway's step on the current frame (memory attention batched over pathways with one layout): all 3
    candidate masks of each, their IoUs, object pointers and the pathway's object score."""
    vision_feats, vision_pos_embeds, feat_sizes = features
    C = model.hidden_dim
    H, W = feat_sizes[-1]
    groups: dict[tuple, list[int]] = {}
    for i, tok in enumerate(tokens):
        groups.setdefault(tok.layout, []).append(i)
    pix = [None] * len(tokens)
    for members in groups.values():
        B = len(members)
        out = model.memory_attention(
            curr=[vision_feats[-1].expand(-1, B, -1)],
            curr_pos=[vision_pos_embeds[-1].expand(-1, B, -1)],
            memory=torch.cat([tokens[i].memory for i in members], dim=1),
            memory_pos=torch.cat([tokens[i].pos for i in members], dim=1),
            num_obj_ptr_tokens=tokens[members[0]].num_obj_ptr_tokens,
        )
        feats = out.permute(1, 2, 0).view(B, C, H, W)
        for k, i in enumerate(members):
            pix[i] = feats[k : k + 1]
    pix_feat = torch.cat(pix)
    B = pix_feat.shape[0]
    high_res = [
        x.permute(1, 2, 0).view(1, x.size(2), *s).expand(B, -1, -1, -1)
        for x, s in zip(vision_feats[:-1], feat_sizes[:-1], strict=True)
    ]
    low_res, ious, out_tokens, object_score_logits = decode_candidates(model, pix_feat, high_res)
    appearing = object_score_logits > 0
    size = model.image_size
    high = F.interpolate(low_res, size=(size, size), mode="bilinear", align_corners=False)
    obj_ptrs = model.obj_ptr_proj(out_tokens)  # (B, M, C): a pointer for every candidate
    lam = appearing.float()[:, None]
    obj_ptrs = lam * obj_ptrs + (1 - lam) * model.no_obj_ptr
    return {
        "low_res": low_res,
        "high_res": high,
        "ious": ious,
        "obj_ptrs": obj_ptrs,
        "object_score_logits": object_score_logits,
    }


def _encode(model, features, cands: dict, kept: list[tuple[int, int, float]]):
    """Memory encodings of the kept candidates, each from its own mask (sigmoid, not binarised) -> bfloat16."""
    vision_feats, _, feat_sizes = features
    K = len(kept)
    masks = torch.cat([cands["high_res"][p : p + 1, j : j + 1] for p, j, _ in kept])
    scores = torch.cat([cands["object_score_logits"][p : p + 1] for p, _, _ in kept])
    maskmem, pos_enc = model._encode_new_memory(
        current_vision_feats=[vision_feats[-1].expand(-1, K, -1)],
        feat_sizes=feat_sizes,
        pred_masks_high_res=masks,
        object_score_logits=scores,
        is_mask_from_pts=False,
    )
    return maskmem.to(torch.bfloat16), [x[0:1] for x in pos_enc]


__all__ = ["Sam2LongMemory", "Sam2LongPolicy"]
