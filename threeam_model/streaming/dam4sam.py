"""DAM4SAM's distractor-aware memory (Videnovic et al., CVPR 2025) as a `MemoryPolicy`.

Memory has two parts in SAM 2's `num_maskmem` slots:
- RAM, recent appearance: frames where the object was visible, newest first: the newest visible frame before the
  current one, then one every `ram_stride` frames before it (each slot stepping back by the stride until it finds a
  visible frame). Empty frames, frame 0 and DRM frames never enter RAM; slots that find nothing stay empty.
- DRM, distractor resolving: the initial frame and frames added when the tracker was sure of the target while a
  look-alike showed among SAM's other candidate masks. On a frame, at most `drm_size` of them are read: the newest
  one before the previous frame, the initial frame, then the closest in time (never the previous frame, which RAM
  reads). RAM takes the slots DRM leaves.
A frame enters DRM when (after its tracking step): the chosen mask's predicted IoU > `drm_min_iou`; its size is
within `drm_size_ratio` of the median of the last 10 non-empty sizes; more than `drm_min_gap` frames passed since
the last add; and some other candidate mask, without the chosen mask's pixels and reduced to its largest
8-connected part, joined to the chosen mask, has a bounding box whose IoU with the chosen mask's box is <=
`drm_max_box_iou` (a distractor next to the target). The frame is then re-encoded as a conditioning frame from its
binarised mask when tracking moves on, as a prompt is.
Memory attention reads the memories ordered by time, DRM first with SAM 2's conditioning encoding, RAM frames with
temporal encodings counted from the newest; object pointers of the read DRM frames, then of the last visible frames
within `max_obj_ptrs_in_encoder`. The tracker is online: the pointers' temporal normaliser grows with the stream
over its first frames, as in DAM4SAM's tracker.

Defaults are the published ones (the `sam21pp` configs and the tracker at github.com/jovanavidenovic/DAM4SAM,
commit 9c95450): 7 memory slots (the model's), `drm_size` 4 (initial frame included), RAM stride 5, IoU > 0.8,
size ratio in [0.8, 1.2] over the last 10 non-empty of the last 300 frames, gap > 5 frames, box IoU <= 0.7; DAM4SAM
makes corrections conditioning frames (`correction_as_cond`) and prepares images with an antialiased bilinear
resize (the engine's `resize="antialias_bilinear"`). Sizes for the size test are pixels of the frame-resolution
mask; visibility for RAM and pointers is a positive low-res logit.

State is bounded whatever the stream length: the frames RAM can still reach (the newest visible frame and the
newest `num_maskmem - 1` visible frames on the stride), the pointer window, the initial frame and the newest DRM
frames that selection can still pick.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from threeam_model.streaming.batched import MemoryTokens, append_pointer_tokens
from threeam_model.streaming.memory import Admission, ObjectMemory, StepReport

_SIZE_HISTORY = 300  # frames of mask sizes the size test looks back over
_SIZE_MEDIAN_OF = 10  # the median is over this many latest non-empty sizes


@dataclasses.dataclass
class DrmCheck:
    """One frame where the DRM's first test passed and distractor candidates were compared (for inspection)."""

    frame_idx: int
    box_ious: list[float]
    added: bool


class Dam4samMemory(ObjectMemory):
    """An ObjectMemory with DAM4SAM's bookkeeping: mask sizes, the last DRM add, recent DRM checks."""

    def __init__(self):
        super().__init__()
        self.sizes: collections.deque[int] = collections.deque(maxlen=_SIZE_HISTORY)
        self.last_added = -1
        self.init_frame: int | None = None  # the object's first conditioning frame (DAM4SAM's frame 0)
        self.checks: collections.deque[DrmCheck] = collections.deque(maxlen=64)


class Dam4samPolicy:
    """DAM4SAM's RAM + DRM memory (see the module docstring); model: the SAM2Base it runs on."""

    def __init__(
        self,
        model,
        drm_size: int = 4,
        ram_stride: int = 5,
        drm_min_iou: float = 0.8,
        drm_size_ratio: tuple[float, float] = (0.8, 1.2),
        drm_min_gap: int = 5,
        drm_max_box_iou: float = 0.7,
    ):
        if drm_size < 2:
            raise ValueError(f"drm_size must be >= 2 (the initial frame and one more), got {drm_size}")
        if ram_stride < 1:
            raise ValueError(f"ram_stride must be >= 1, got {ram_stride}")
        self.num_maskmem = model.num_maskmem
        self.max_ptrs = model.max_obj_ptrs_in_encoder if model.use_obj_ptrs_in_encoder else 0
        self.drm_size = int(drm_size)
        self.ram_stride = int(ram_stride)
        self.drm_min_iou = float(drm_min_iou)
        self.drm_size_ratio = (float(drm_size_ratio[0]), float(drm_size_ratio[1]))
        self.drm_min_gap = int(drm_min_gap)
        self.drm_max_box_iou = float(drm_max_box_iou)

    # ------------------------------------------------------------------------------------------ the protocol

    def new_memory(self) -> Dam4samMemory:
        return Dam4samMemory()

    def admit(self, memory: Dam4samMemory, frame_idx: int, output: dict, is_cond: bool) -> None:
        output["n_pixels_pos"] = int((output["pred_masks"][0, 0] > 0).sum())
        if is_cond and memory.init_frame is None:
            memory.init_frame = frame_idx
        (memory.cond if is_cond else memory.non_cond)[frame_idx] = output
        if is_cond:
            memory.non_cond.pop(frame_idx, None)

    def review(self, memory: Dam4samMemory, report: StepReport) -> Admission:
        if report.multimask_logits is None:  # a step without candidates (never from this policy's own steps)
            return Admission.RECENT
        f, size = report.frame_idx, report.image_size
        chosen = _frame_mask(report.output["pred_masks"][0, 0], size)
        n = int(chosen.sum())
        memory.sizes.append(n)
        if len(memory.sizes) > 1 and n >= 1:
            recent = [s for s in memory.sizes if s >= 1][-_SIZE_MEDIAN_OF:]
            ratio = n / float(np.median(recent))
        else:
            ratio = -1.0
        ious = report.multimask_ious[0].float()
        best = int(ious.argmax())
        lo, hi = self.drm_size_ratio
        gap_ok = memory.last_added == -1 or f - memory.last_added > self.drm_min_gap
        if not (float(ious[best]) > self.drm_min_iou and lo <= ratio <= hi and n >= 1 and gap_ok):
            return Admission.RECENT
        others = [i for i in range(report.multimask_logits.shape[1]) if i != best]
        box_ious = distractor_box_ious(chosen, [_frame_mask(report.multimask_logits[0, i], size) for i in others])
        if not box_ious:
            return Admission.RECENT
        added = min(box_ious) <= self.drm_max_box_iou
        memory.checks.append(DrmCheck(f, box_ious, added))
        if not added:
            return Admission.RECENT
        memory.last_added = f
        return Admission.CONDITIONING

    def prune(self, memory: Dam4samMemory, frame_idx: int) -> None:
        f, init = frame_idx, memory.init_frame
        drm = sorted(memory.cond)
        # DRM selection can pick the initial frame and the newest drm_size frames (one may be f - 1, read by RAM)
        keep_drm = {t for t in drm if t == init or t >= f - self.max_ptrs} | set(drm[-self.drm_size :])
        visible = sorted(t for t, out in memory.non_cond.items() if out.get("n_pixels_pos", 0) >= 1 and t > init)
        reach = set(visible[-1:])  # RAM's first slot: the newest visible frame
        on_stride = [t for t in visible if (t - init) % self.ram_stride == 0]
        reach |= set(on_stride[-(self.num_maskmem - 1) :])
        for t in drm:
            if t not in keep_drm:
                del memory.cond[t]
        for t in list(memory.non_cond):
            out = memory.non_cond[t]
            if t in reach:
                pass
            elif t >= f - self.max_ptrs:
                if "maskmem_features" in out:  # pointer only
                    out = memory.non_cond[t] = {"obj_ptr": out["obj_ptr"], "n_pixels_pos": out["n_pixels_pos"]}
            else:
                del memory.non_cond[t]
                continue
            out.pop("pred_masks", None)
        for out in memory.cond.values():
            out.pop("pred_masks", None)

    def view(self, memory: ObjectMemory, frame_idx: int) -> dict:
        return {"cond_frame_outputs": memory.cond, "non_cond_frame_outputs": memory.non_cond}

    def memory_tokens(self, model, memory: Dam4samMemory, frame_idx: int) -> MemoryTokens:
        f, init = frame_idx, memory.init_frame
        if init is None:
            raise RuntimeError("DAM4SAM needs the object's initial frame in memory; prompt it first")
        cond, non_cond = memory.cond, memory.non_cond
        selected = self._select_drm(cond, f, init)
        entries = [(0, cond[t], ("cond", t)) for t in selected]  # (sort key, output, where)
        ram_keys = self._select_ram(cond, non_cond, selected, f, init)
        entries += ram_keys
        # time order (stable: DRM frames keep their selection order); temporal encodings by position in this order
        entries.sort(key=lambda e: e[0])
        total = len(entries)
        memory_list, pos, read = [], [], {"maskmem": [], "obj_ptr": []}
        for index, (key, out, where) in enumerate(entries):
            if out is None:
                continue
            t_pos = 0 if key == 0 else index
            memory_list.append(out["maskmem_features"].to(model.device).flatten(2).permute(2, 0, 1))
            enc = out["maskmem_pos_enc"][-1].to(model.device).flatten(2).permute(2, 0, 1)
            pos.append(enc + model.maskmem_tpos_enc[total - t_pos - 1])
            read["maskmem"].append(where)
        num_ptr_tokens = 0
        if self.max_ptrs:
            num_frames = f - init + 1  # online: the object's stream so far
            max_ptrs = min(num_frames, self.max_ptrs)
            ptr_frames = [t for t in selected if t <= f or not model.only_obj_ptrs_in_the_past_for_eval]
            pos_and_ptrs = [(abs(f - t), cond[t]["obj_ptr"]) for t in ptr_frames]
            read["obj_ptr"] = [("cond", t) for t in ptr_frames]
            unselected = {t: out for t, out in cond.items() if t not in selected}
            for t_diff in range(1, max_ptrs):
                t = f - t_diff
                if t < init:
                    break
                out, kind = non_cond.get(t), "non_cond"
                if out is None:
                    out, kind = unselected.get(t), "cond"
                if out is not None and out["n_pixels_pos"] >= 1:  # pointers of visible frames only
                    pos_and_ptrs.append((t_diff, out["obj_ptr"]))
                    read["obj_ptr"].append((kind, t))
            num_ptr_tokens = append_pointer_tokens(model, memory_list, pos, pos_and_ptrs, max_ptrs - 1)
        return MemoryTokens(torch.cat(memory_list), torch.cat(pos), num_ptr_tokens, read)

    # ------------------------------------------------------------------------------------------ selection

    def _select_drm(self, cond: dict, f: int, init: int) -> list[int]:
        """The DRM frames read on frame f, in DAM4SAM's order: the newest before f - 1, the initial frame, then the
        closest in time (never f - 1), up to drm_size."""
        selected = []
        before = [t for t in cond if t < f - 1]
        if before:
            selected.append(max(before))
        if init not in selected:
            selected.append(init)
        rest = sorted((t for t in cond if t not in selected and t != f - 1), key=lambda t: abs(t - f))
        return selected + rest[: max(0, self.drm_size - len(selected))]

    def _select_ram(self, cond: dict, non_cond: dict, selected: list[int], f: int, init: int) -> list[tuple]:
        """RAM entries (sort key, output or None, where): the newest visible frame before f, then one per stride
        (frame indices counted from the initial frame, as DAM4SAM's tracker counts them)."""

        def usable(out, t) -> bool:
            return out is not None and out["n_pixels_pos"] >= 1 and t not in selected

        entries = []
        rel = f - 1 - init  # the previous frame, relative to the initial one
        for slot in range(self.num_maskmem - len(selected)):
            if slot == 0:
                t = rel + init
                out = cond.get(t) if t in cond else non_cond.get(t)
                step = 1
            elif rel >= 0:
                rel = ((rel - 1) // self.ram_stride) * self.ram_stride
                out = non_cond.get(rel + init)
                step = self.ram_stride
            else:
                entries.append((rel, None, None))
                continue
            if not usable(out, rel + init):
                while True:  # step back to an older visible frame (the initial frame and DRM frames excluded)
                    rel -= step
                    if rel <= 0:
                        out = None
                        break
                    out = non_cond.get(rel + init)
                    if usable(out, rel + init):
                        break
            t = rel + init
            entries.append((rel, out, None if out is None else ("cond" if t in cond else "non_cond", t)))
        return entries


def _frame_mask(low_res: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A low-res logit map (h, w) -> the frame-resolution binary mask (H, W)."""
    up = F.interpolate(low_res.float()[None, None], size=size, mode="bilinear", align_corners=False)
    return (up[0, 0] > 0).cpu().numpy()


def _box_area(mask: np.ndarray) -> tuple[tuple[int, int, int, int], int] | None:
    """The mask's box in the VOT toolkit's convention: x, y, w = right - left, h = bottom - top, rasterised as
    pixels [x, x + w) x [y, y + h) (so the last row and column drop out)."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    x0, y0 = int(xs.min()), int(ys.min())
    return (x0, y0, int(xs.max()) - x0, int(ys.max()) - y0), (int(xs.max()) - x0) * (int(ys.max()) - y0)


def distractor_box_ious(chosen: np.ndarray, candidates: list[np.ndarray]) -> list[float]:
    """For each other candidate mask: without the chosen mask's pixels, its largest 8-connected part joined to the
    chosen mask; the IoU of that union's box with the chosen mask's box (VOT rasterised boxes; 1.0 when both are
    degenerate). Candidates with nothing left outside the chosen mask are skipped."""
    ious = []
    chosen_box = _box_area(chosen)
    for cand in candidates:
        rest = cand & ~chosen
        if not rest.any():
            continue
        labels, count = ndimage.label(rest, structure=np.ones((3, 3), bool))
        sizes = np.bincount(labels.ravel())[1:]
        largest = labels == (int(sizes.argmax()) + 1)
        union_box = _box_area(largest | chosen)
        ious.append(_rect_iou(chosen_box, union_box))
    return ious


def _rect_iou(a, b) -> float:
    """IoU of two rasterised VOT boxes ((x, y, w, h), area) or None; 1.0 when the union is empty."""
    if a is None or b is None:
        area_a = 0 if a is None else a[1]
        area_b = 0 if b is None else b[1]
        return 1.0 if area_a + area_b == 0 else 0.0
    (ax, ay, aw, ah), area_a = a
    (bx, by, bw, bh), area_b = b
    iw = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = area_a + area_b - inter
    return 1.0 if union == 0 else inter / union


__all__ = ["Dam4samMemory", "Dam4samPolicy", "DrmCheck", "distractor_box_ious"]
