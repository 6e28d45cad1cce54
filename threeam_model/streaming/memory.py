"""Per-object memory: the bank (`ObjectMemory`) and the rule that fills it (`MemoryPolicy`).

A policy answers these questions for one object, on the engine's schedule:
- `admit`: a new output enters memory (a tracked frame, or a committed prompt as conditioning or not);
- `review`: after a tracked frame, with that frame's candidate masks: keep the frame as a recent one, or make it a
  conditioning frame (DAM4SAM's distractor-resolving memory), re-encoded from its binarised mask like a prompt;
- `prune`: the stream moved on to frame f; what can no longer be read leaves;
- `view`: what memory attention reads on frame f, as the official output dict
  (`{"cond_frame_outputs": {t: out}, "non_cond_frame_outputs": {t: out}}`), which SAM2Base reads by frame offset
  (non-conditioning memories at f-1 ... f-(num_maskmem-1), object pointers back to f-(max_obj_ptrs-1));
- `memory_tokens`: None to let the engine read `view` by SAM 2's offsets, or the memory tokens themselves, for a
  rule that SAM 2's offsets cannot express (which frames, in which order, with which temporal encodings).
The engine only stores the `ObjectMemory` the policy made for each object and hands it back.

`Sam2Window` is the official rule, trimmed for a stream: conditioning frames up to a cap (the oldest leave first, and
stay readable as recent frames while in reach), and only the recent frames the next frame can still read.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Protocol, runtime_checkable

import torch


class ObjectMemory:
    """One object's memory bank, in the official predictor's format: frame index -> compact step output
    ({"maskmem_features", "maskmem_pos_enc", "obj_ptr", "object_score_logits", "pred_masks"})."""

    def __init__(self):
        self.cond: dict[int, dict] = {}  # conditioning frames (prompted)
        self.non_cond: dict[int, dict] = {}  # recent tracked frames
        # Once a conditioning frame left for the cap, the official predictor attends to the closest ones in the
        # order `select_closest_cond_frames` lists them, latest first: same order, same floating-point sums.
        self.cond_latest_first = False

    def frames(self) -> dict[str, list[int]]:
        return {"cond": sorted(self.cond), "non_cond": sorted(self.non_cond)}

    def tensors(self):
        """Every tensor the bank holds (for byte counts)."""
        for bank in (self.cond, self.non_cond):
            for out in bank.values():
                for value in out.values():
                    if isinstance(value, torch.Tensor):
                        yield value
                    elif isinstance(value, (list, tuple)):
                        yield from (v for v in value if isinstance(v, torch.Tensor))


class Admission(enum.Enum):
    """What `review` decides about a tracked frame."""

    RECENT = "recent"  # stays a recent frame, as stored by admit
    CONDITIONING = "conditioning"  # becomes a conditioning frame when tracking moves on, memory from its binary mask


@dataclasses.dataclass
class StepReport:
    """One object's tracking step on one frame, as a policy's `review` sees it."""

    frame_idx: int
    image_size: tuple[int, int]  # (H, W) of the frame
    output: dict  # the stored output (pred_masks: the chosen low-res logits (1, 1, h, w), object_score_logits...)
    multimask_logits: torch.Tensor  # (1, M, h, w) every candidate mask of the SAM head (no-object masked)
    multimask_ious: torch.Tensor  # (1, M) their predicted IoUs


@runtime_checkable
class SteppingPolicy(Protocol):
    """A memory policy that runs an object's whole tracking step itself (SAM2Long: several pathways per object,
    each with its own memory); the engine then only hands it the frame and reports what it returns. Its `admit`
    still receives the object's committed prompts."""

    def track_object(self, model, features, memory: ObjectMemory, frame_idx: int) -> dict:
        """Track one object on the current frame; returns the output to report (pred_masks (1, 1, h, w),
        object_score_logits (1, 1))."""


@runtime_checkable
class MemoryPolicy(Protocol):
    """What enters an object's memory, what leaves, and what memory attention reads (see the module docstring)."""

    def new_memory(self) -> ObjectMemory:
        """An empty bank for a new object."""

    def admit(self, memory: ObjectMemory, frame_idx: int, output: dict, is_cond: bool) -> None:
        """Store `output`, the object's final output on `frame_idx` (a conditioning frame when `is_cond`)."""

    def review(self, memory: ObjectMemory, report: StepReport) -> Admission:
        """After a tracked frame (the output is already admitted as recent): keep it so, or condition on it."""

    def prune(self, memory: ObjectMemory, frame_idx: int) -> None:
        """Frame `frame_idx` became current: drop what it and later frames can no longer read."""

    def view(self, memory: ObjectMemory, frame_idx: int) -> dict:
        """The official output dict memory attention reads on `frame_idx`."""

    def memory_tokens(self, model, memory: ObjectMemory, frame_idx: int):
        """None (read `view` by SAM 2's offsets), or this policy's `batched.MemoryTokens` for `frame_idx`."""


class Sam2Window:
    """The official SAM 2 memory rule over a bounded stream (see the module docstring).

    model: the SAM2Base whose reach is kept (num_maskmem, memory_temporal_stride_for_eval, max_obj_ptrs_in_encoder);
    max_cond_frames: conditioning frames kept per object (>= 1).
    """

    def __init__(self, model, max_cond_frames: int = 8):
        if max_cond_frames < 1:
            raise ValueError(f"max_cond_frames must be >= 1, got {max_cond_frames}")
        self.max_cond_frames = int(max_cond_frames)
        stride = model.memory_temporal_stride_for_eval
        # how far back the next frame reads: memory features, and object pointers
        self.mem_window = max(model.num_maskmem - 2, 0) * stride + 1 if model.num_maskmem > 1 else 0
        self.ptr_window = model.max_obj_ptrs_in_encoder - 1 if model.use_obj_ptrs_in_encoder else 0

    def new_memory(self) -> ObjectMemory:
        return ObjectMemory()

    def admit(self, memory: ObjectMemory, frame_idx: int, output: dict, is_cond: bool) -> None:
        (memory.cond if is_cond else memory.non_cond)[frame_idx] = output
        if is_cond:
            memory.non_cond.pop(frame_idx, None)

    def review(self, memory: ObjectMemory, report: StepReport) -> Admission:
        return Admission.RECENT

    def memory_tokens(self, model, memory: ObjectMemory, frame_idx: int):
        return None

    def prune(self, memory: ObjectMemory, frame_idx: int) -> None:
        while len(memory.cond) > self.max_cond_frames:
            # the oldest conditioning frame leaves the attention set but stays readable as a recent frame
            t = min(memory.cond)
            memory.non_cond.setdefault(t, memory.cond.pop(t))
            memory.cond_latest_first = True
        for t in list(memory.non_cond):
            out = memory.non_cond[t]
            if t < frame_idx - max(self.ptr_window, self.mem_window):
                del memory.non_cond[t]
                continue
            if t < frame_idx - self.mem_window and "maskmem_features" in out:
                out = memory.non_cond[t] = {"obj_ptr": out["obj_ptr"]}  # beyond the memory reach: pointer only
            out.pop("pred_masks", None)  # low-res logits are read only on their own frame (refinement)
        for out in memory.cond.values():
            out.pop("pred_masks", None)

    def view(self, memory: ObjectMemory, frame_idx: int) -> dict:
        cond = memory.cond
        if memory.cond_latest_first:
            cond = dict(sorted(cond.items(), reverse=True))
        return {"cond_frame_outputs": cond, "non_cond_frame_outputs": memory.non_cond}


__all__ = ["Admission", "MemoryPolicy", "ObjectMemory", "Sam2Window", "StepReport", "SteppingPolicy"]
