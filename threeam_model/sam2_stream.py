"""Streaming SAM 2: frames in one at a time, objects added, refined and removed at any time, bounded memory.

`StreamingSAM2` is a thin stateful layer over a stateless SAM 2 model (`SAM2Base`, e.g. from
`threeam_model.sam2_build.build_sam2`). Per object it runs the official per-object tracking step
(`SAM2Base.track_step`: memory attention -> SAM heads -> memory encoder) exactly as the official
`SAM2VideoPredictor` does, on the official kind of memory bank (`{"cond_frame_outputs", "non_cond_frame_outputs"}`),
so its outputs equal the official ones frame for frame. What differs is only what is kept:

- no frame images, and image features only for the current frame (prompts reuse them);
- per object, its conditioning frames (at most `max_cond_frames`, the oldest leave first) and its output on the
  current frame plus the 15 frames before it, which is all a prompt on the current frame or the next frame can
  read: the memory reads the last `num_maskmem - 1` = 6 frames (their memory features), the object pointers reach
  back `max_obj_ptrs_in_encoder - 1` = 15 (only the pointer is kept beyond 6); low-res mask logits only for the
  current frame (refinement clicks read them).

So the state is flat over an endless stream. When an object has more conditioning frames than the cap, the result
equals the official predictor run with `max_cond_frames_in_attn = max_cond_frames` (it attends to the closest ones,
which in a stream are the latest); an evicted one stays readable as a recent frame, as the official code allows.

How the official algorithm maps onto a stream (frame f is the current frame, the last one passed to `track`):
- `add_prompt` on an object not yet tracked on f (a new object) makes f an initial conditioning frame for it; more
  prompts on f keep refining that conditioning frame. On an object already tracked on f it is a correction
  (non-conditioning, unless the model's `add_all_frames_to_correct_as_cond`). Point prompts accumulate on f; a box
  starts the point list afresh (SAM 2 wants the box first); a mask replaces any points.
- Like the official predictor, a prompt's memory is encoded only when tracking moves on (on the next `track`), from
  the final prompt output, with masks binarised as the official video predictor configures it.
- Object pointers are positioned as in an unbounded video (`num_frames` never limits them).

Replaceable step (for the 3AM tracker): the image encoder runs once per frame for all objects. Its stride-16 feature
is the one that feeds memory attention (and through it the mask decoder) and the memory encoder; it is produced by
`memory_features(backbone_out, frame)`, identity by default. A subclass overrides that one method to substitute its
own feature (e.g. SAM 2 features merged with MUSt3R features); the stride-4/8 features go straight to the mask
decoder unchanged.
"""

from __future__ import annotations

import contextlib
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from threeam_model.interface import (
    FrameError,
    FrameResult,
    ObjectResult,
    PromptError,
    Tracker,
    check_frame,
    check_obj_id,
    check_prompt,
)

# Object pointers are positioned relative to the current frame only; an unbounded stream has no length.
_UNBOUNDED = sys.maxsize
# SAM 2's image normalisation (sam2.utils.misc.load_video_frames)
_IMG_MEAN = (0.485, 0.456, 0.406)
_IMG_STD = (0.229, 0.224, 0.225)


class _ObjectTrack:
    """Memory bank and current-frame prompt state of one object."""

    def __init__(self, obj_id: int):
        self.obj_id = obj_id
        self.cond: dict[int, dict] = {}  # frame index -> compact output, conditioning frames
        self.non_cond: dict[int, dict] = {}  # frame index -> compact output, recent tracked frames
        self.tracked_current = False  # did `track` run this object on the current frame
        self.points: dict | None = None  # accumulated point inputs on the current frame (model coordinates)
        self.pending: tuple[bool, dict] | None = None  # (is_cond, output) of the last prompt on the current frame
        self.evicted = False  # has a conditioning frame left for the cap

    def output_dict(self) -> dict:
        cond = self.cond
        if self.evicted:
            # Past the cap, the official predictor attends to the closest conditioning frames in the order its
            # `select_closest_cond_frames` lists them: latest first. Same order, same floating-point sums.
            cond = dict(sorted(cond.items(), reverse=True))
        return {"cond_frame_outputs": cond, "non_cond_frame_outputs": self.non_cond}

    def current_output(self, frame_idx: int, is_cond: bool) -> dict | None:
        """The latest output on `frame_idx` (official lookup order: temporary first, then stored)."""
        if self.pending is not None and self.pending[0] == is_cond:
            return self.pending[1]
        return self.cond.get(frame_idx) or self.non_cond.get(frame_idx)


class StreamingSAM2(Tracker):
    """Frame-by-frame, many-object SAM 2 predictor with a bounded per-object memory (see the module docstring).

    model: a `SAM2Base` (e.g. `build_sam2(...)`), shared and never modified; it should be in eval mode.
    max_cond_frames: conditioning frames kept per object (>= 1).
    max_objects: most objects tracked at once; adding more raises PromptError.
    dtype: torch.float32, or torch.bfloat16 to run the model under autocast (CPU or CUDA).
    correction_as_cond: whether a correction on a tracked frame becomes a conditioning frame; None follows the
        model's `add_all_frames_to_correct_as_cond` (False in the official video predictor).
    """

    def __init__(
        self,
        model,
        max_cond_frames: int = 8,
        max_objects: int = 16,
        dtype: torch.dtype = torch.float32,
        correction_as_cond: bool | None = None,
    ):
        if max_cond_frames < 1:
            raise ValueError(f"max_cond_frames must be >= 1, got {max_cond_frames}")
        if max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {max_objects}")
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype}")
        self.model = model
        self.max_cond_frames = max_cond_frames
        self.max_objects = max_objects
        self.dtype = dtype
        self.device = model.device
        if correction_as_cond is None:
            correction_as_cond = getattr(model, "add_all_frames_to_correct_as_cond", False)
        self.correction_as_cond = bool(correction_as_cond)
        # how far back the next frame reads: memory features, and object pointers
        r = model.memory_temporal_stride_for_eval
        self._mem_window = max(model.num_maskmem - 2, 0) * r + 1 if model.num_maskmem > 1 else 0
        self._ptr_window = model.max_obj_ptrs_in_encoder - 1 if model.use_obj_ptrs_in_encoder else 0
        self._img_mean = torch.tensor(_IMG_MEAN, dtype=torch.float32)[:, None, None]
        self._img_std = torch.tensor(_IMG_STD, dtype=torch.float32)[:, None, None]
        self.reset()

    # ------------------------------------------------------------------------------------------------ the hook

    def memory_features(self, backbone_out: dict, frame: np.ndarray) -> torch.Tensor:
        """The stride-16 feature map (1, C, H/16, W/16) that memory attention and the memory encoder see.

        backbone_out: `SAM2Base.forward_image` output for this frame ("backbone_fpn": stride 4, 8, 16 maps, the
        first two already projected for the mask decoder; "vision_pos_enc": their positional encodings).
        frame: the (H, W, 3) uint8 RGB frame as given to `track`.
        Default: SAM 2's own feature. Override to substitute another feature of the same shape; it is computed
        once per frame and shared by every object and every prompt on that frame.
        """
        return backbone_out["backbone_fpn"][-1]

    # --------------------------------------------------------------------------------------------- interface

    @property
    def object_ids(self) -> list[int]:
        return sorted(self._objects)

    @property
    def frame_index(self) -> int:
        return self._frame_idx

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(H, W) of this stream's frames, None before the first frame."""
        return self._image_size

    def reset(self) -> None:
        self._objects: dict[int, _ObjectTrack] = {}
        self._frame_idx = -1
        self._image_size: tuple[int, int] | None = None
        self._features = None  # (vision_feats, vision_pos_embeds, feat_sizes) of the current frame
        self._maskmem_pos_enc = None  # the memory positional encoding, the same for every frame and object

    def remove_object(self, obj_id: int) -> None:
        obj_id = check_obj_id(obj_id)
        if obj_id not in self._objects:
            raise PromptError(f"cannot remove object {obj_id}: it is not tracked (tracked ids: {self.object_ids})")
        del self._objects[obj_id]

    @torch.inference_mode()
    def track(self, frame: np.ndarray) -> FrameResult:
        t0 = time.perf_counter()
        frame = check_frame(frame, self._image_size)
        timings = {}
        with self._autocast():
            t = time.perf_counter()
            features = self._encode_frame(frame, timings)  # first: if it fails, the state is as it was
            timings["image_encoder"] = time.perf_counter() - t - timings["memory_features"]
            # memories of the prompts on the previous frame are encoded with that frame's features, before they go
            self._commit_prompts()
            self._features = features
            self._frame_idx += 1
            self._image_size = (frame.shape[0], frame.shape[1])
            self._prune()
            t = time.perf_counter()
            results = {}
            for obj in self._objects.values():
                out = self._run_step(obj, is_init_cond_frame=False, point_inputs=None, mask_inputs=None)
                obj.non_cond[self._frame_idx] = out
                obj.tracked_current = True
                results[obj.obj_id] = self._object_result(obj.obj_id, out)
            timings["objects"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        return FrameResult(self._frame_idx, self._image_size, dict(sorted(results.items())), timings)

    @torch.inference_mode()
    def add_prompt(self, obj_id, points=None, labels=None, box=None, mask=None, conditioning=None) -> ObjectResult:
        if self._features is None:
            raise PromptError("no frame yet: call track(frame) first; prompts apply to the current frame")
        obj_id = check_obj_id(obj_id)
        pts, lab, bx, m = check_prompt(self._image_size, points, labels, box, mask)
        obj = self._objects.get(obj_id)
        if obj is None:
            if len(self._objects) >= self.max_objects:
                raise PromptError(
                    f"cannot add object {obj_id}: already tracking max_objects={self.max_objects} objects "
                    f"{self.object_ids}; remove one first"
                )
            obj = _ObjectTrack(obj_id)
        is_init_cond_frame = not obj.tracked_current
        is_cond = is_init_cond_frame or (self.correction_as_cond if conditioning is None else bool(conditioning))
        with self._autocast():
            if m is not None:
                obj.points = None
                out = self._run_step(obj, is_init_cond_frame, None, self._mask_inputs(m), run_mem_encoder=False)
            else:
                obj.points = self._point_inputs(obj.points if bx is None else None, pts, lab, bx)
                prev = obj.current_output(self._frame_idx, is_cond)
                prev_logits = None if prev is None else torch.clamp(prev["pred_masks"], -32.0, 32.0)
                out = self._run_step(obj, is_init_cond_frame, obj.points, None, False, prev_logits)
        obj.pending = (is_cond, out)
        self._objects[obj_id] = obj
        return self._object_result(obj_id, out)

    # ------------------------------------------------------------------------------------------------ state

    def state_nbytes(self) -> int:
        """Bytes held in tensors by this predictor's state (each storage counted once); flat on a long stream."""
        seen, total = set(), 0

        def add(x):
            nonlocal total
            if isinstance(x, torch.Tensor):
                key = (x.untyped_storage().data_ptr(), x.device)
                if key not in seen:
                    seen.add(key)
                    total += x.untyped_storage().nbytes()
            elif isinstance(x, dict):
                for v in x.values():
                    add(v)
            elif isinstance(x, (list, tuple)):
                for v in x:
                    add(v)

        add([self._features, self._maskmem_pos_enc])
        for obj in self._objects.values():
            add([obj.cond, obj.non_cond, obj.points, obj.pending])
        return total

    def memory_frames(self, obj_id: int) -> dict[str, list[int]]:
        """Frame indices held for one object: {"cond": [...], "non_cond": [...]} (for inspection and tests)."""
        obj = self._objects[check_obj_id(obj_id)]
        return {"cond": sorted(obj.cond), "non_cond": sorted(obj.non_cond)}

    # ------------------------------------------------------------------------------------------------ steps

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _preprocess(self, frame: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (1, 3, S, S) normalised, exactly as sam2's frame loader does it."""
        size = self.model.image_size
        resized = np.array(Image.fromarray(frame).resize((size, size)))
        image = torch.from_numpy(resized / 255.0).permute(2, 0, 1).float()
        image = (image - self._img_mean) / self._img_std
        return image.to(self.device).unsqueeze(0)

    def _encode_frame(self, frame: np.ndarray, timings: dict):
        backbone_out = self.model.forward_image(self._preprocess(frame))
        t = time.perf_counter()
        feat = self.memory_features(backbone_out, frame)
        timings["memory_features"] = time.perf_counter() - t
        expected = tuple(backbone_out["backbone_fpn"][-1].shape)
        if tuple(feat.shape) != expected:
            raise RuntimeError(f"memory_features returned shape {tuple(feat.shape)}, expected {expected}")
        backbone_out = {
            "backbone_fpn": backbone_out["backbone_fpn"][:-1] + [feat],
            "vision_pos_enc": backbone_out["vision_pos_enc"],
        }
        _, vision_feats, vision_pos_embeds, feat_sizes = self.model._prepare_backbone_features(backbone_out)
        return vision_feats, vision_pos_embeds, feat_sizes

    def _run_step(self, obj, is_init_cond_frame, point_inputs, mask_inputs, run_mem_encoder=True, prev_logits=None):
        """One official tracking step for one object on the current frame -> compact output (as the official
        predictor stores it: memory features in bfloat16, a shared memory positional encoding)."""
        vision_feats, vision_pos_embeds, feat_sizes = self._features
        out = self.model.track_step(
            frame_idx=self._frame_idx,
            is_init_cond_frame=is_init_cond_frame,
            current_vision_feats=vision_feats,
            current_vision_pos_embeds=vision_pos_embeds,
            feat_sizes=feat_sizes,
            point_inputs=point_inputs,
            mask_inputs=mask_inputs,
            output_dict=obj.output_dict(),
            num_frames=_UNBOUNDED,
            track_in_reverse=False,
            run_mem_encoder=run_mem_encoder,
            prev_sam_mask_logits=prev_logits,
        )
        maskmem = out["maskmem_features"]
        return {
            "maskmem_features": None if maskmem is None else maskmem.to(torch.bfloat16),
            "maskmem_pos_enc": self._shared_pos_enc(out["maskmem_pos_enc"]),
            "pred_masks": out["pred_masks"],
            "obj_ptr": out["obj_ptr"],
            "object_score_logits": out["object_score_logits"],
        }

    def _shared_pos_enc(self, pos_enc):
        if pos_enc is None:
            return None
        if self._maskmem_pos_enc is None:
            self._maskmem_pos_enc = [x[0:1].clone() for x in pos_enc]
        return self._maskmem_pos_enc

    def _commit_prompts(self) -> None:
        """Move each object's last prompt output on the current frame into its memory bank, encoding its memory
        from the final mask (as the official `propagate_in_video_preflight`)."""
        size = self.model.image_size
        for obj in self._objects.values():
            obj.points = None
            if obj.pending is None:
                continue
            is_cond, out = obj.pending
            obj.pending = None
            if out["maskmem_features"] is None:
                high_res = F.interpolate(out["pred_masks"], size=(size, size), mode="bilinear", align_corners=False)
                vision_feats, _, feat_sizes = self._features
                maskmem, pos_enc = self.model._encode_new_memory(
                    current_vision_feats=vision_feats,
                    feat_sizes=feat_sizes,
                    pred_masks_high_res=high_res,
                    object_score_logits=out["object_score_logits"],
                    is_mask_from_pts=True,
                )
                out["maskmem_features"] = maskmem.to(torch.bfloat16)
                out["maskmem_pos_enc"] = self._shared_pos_enc(pos_enc)
            (obj.cond if is_cond else obj.non_cond)[self._frame_idx] = out
            if is_cond:
                obj.non_cond.pop(self._frame_idx, None)

    def _prune(self) -> None:
        """Drop what the current frame and later ones can no longer read (called once the frame index moved on)."""
        f = self._frame_idx
        for obj in self._objects.values():
            obj.tracked_current = False
            while len(obj.cond) > self.max_cond_frames:
                # the oldest conditioning frame leaves the attention set but stays readable as a recent frame
                t = min(obj.cond)
                obj.non_cond.setdefault(t, obj.cond.pop(t))
                obj.evicted = True
            for t in list(obj.non_cond):
                out = obj.non_cond[t]
                if t < f - max(self._ptr_window, self._mem_window):
                    del obj.non_cond[t]
                    continue
                if t < f - self._mem_window and "maskmem_features" in out:
                    out = obj.non_cond[t] = {"obj_ptr": out["obj_ptr"]}
                out.pop("pred_masks", None)
            for out in obj.cond.values():
                out.pop("pred_masks", None)

    # ------------------------------------------------------------------------------------------------ inputs

    def _point_inputs(self, previous, pts, lab, box) -> dict:
        """Points in model coordinates, box corners first (labels 2, 3), appended to `previous` (official
        `add_new_points_or_box` with normalize_coords=True)."""
        h, w = self._image_size
        points = torch.zeros(0, 2) if pts is None else torch.from_numpy(pts)
        labels = torch.zeros(0, dtype=torch.int32) if lab is None else torch.from_numpy(lab)
        if box is not None:
            points = torch.cat([torch.from_numpy(box).reshape(2, 2), points], dim=0)
            labels = torch.cat([torch.tensor([2, 3], dtype=torch.int32), labels], dim=0)
        points = points[None] / torch.tensor([w, h]) * self.model.image_size
        points, labels = points.to(self.device), labels[None].to(self.device)
        if previous is not None:
            points = torch.cat([previous["point_coords"], points], dim=1)
            labels = torch.cat([previous["point_labels"], labels], dim=1)
        return {"point_coords": points, "point_labels": labels}

    def _mask_inputs(self, mask: np.ndarray) -> torch.Tensor:
        """Frame-size bool mask -> (1, 1, S, S) float at model size (official `add_new_mask`)."""
        size = self.model.image_size
        m = torch.from_numpy(mask)[None, None].float().to(self.device)
        if m.shape[-2:] != (size, size):
            m = F.interpolate(m, size=(size, size), align_corners=False, mode="bilinear", antialias=True)
            m = (m >= 0.5).float()
        return m

    def _object_result(self, obj_id: int, out: dict) -> ObjectResult:
        logits = F.interpolate(out["pred_masks"].float(), size=self._image_size, mode="bilinear", align_corners=False)
        score = torch.sigmoid(out["object_score_logits"].float()).item()
        return ObjectResult.from_logits(obj_id, logits[0, 0].cpu().numpy(), score)


__all__ = ["StreamingSAM2", "FrameError", "PromptError"]
