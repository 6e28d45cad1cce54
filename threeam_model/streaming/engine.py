"""Streaming SAM 2: frames in one at a time, objects added, refined and removed at any time, bounded memory.

`StreamingSAM2` is a stateful layer over a stateless SAM 2 model (`SAM2Base`, e.g. from
`threeam_model.sam2_build.build_sam2`), with two parts composed in:
- a `FeatureProvider` (features.py) for the stride-16 feature memory works on: SAM 2's own (`SamFeatures`), or
  3AM's merged SAM 2 + MUSt3R feature (`MergedFeatures`);
- a `MemoryPolicy` (memory.py) deciding per object what enters memory, what leaves and what memory attention reads;
  the default, `Sam2Window`, is the official rule.

Per frame the image encoder and the feature provider run once for all objects. Then every object is tracked:
- `batch_objects=True` (default): objects whose memories have the same token layout go through memory attention,
  the SAM heads and the memory encoder in one batch (batched.py); equal to the official step within float32
  rounding (checked to 1e-5, with identical masks);
- `batch_objects=False`: the official per-object `SAM2Base.track_step`, one object at a time, exactly as the
  official `SAM2VideoPredictor` runs it (bit for bit; the parity reference).
Results are composed from all objects' low-res logits in one pass where the model runs (results.py).

What is kept: no frame images, image features only for the current frame (prompts reuse them), and per object
what its memory policy keeps (default: at most `max_cond_frames` conditioning frames and the outputs of the current
frame plus the 15 before it, which is all a prompt on the current frame or the next frame can read), so the state
is flat over an endless stream. Past the conditioning cap, the result equals the official predictor run with
`max_cond_frames_in_attn = max_cond_frames`.

How the official algorithm maps onto a stream (frame f is the current frame, the last one passed to `track`):
- `add_prompt` on an object not yet tracked on f (a new object) makes f an initial conditioning frame for it; more
  prompts on f keep refining that conditioning frame. On an object already tracked on f it is a correction
  (non-conditioning, unless the model's `add_all_frames_to_correct_as_cond` or `conditioning=True`). Point prompts
  accumulate on f; a box starts the point list afresh (SAM 2 wants the box first); a mask replaces any points.
- Like the official predictor, a prompt's memory is encoded only when tracking moves on (on the next `track`), from
  the final prompt output, with masks binarised as the official video predictor configures it.
- Object pointers are positioned as in an unbounded video (`num_frames` never limits them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from threeam_model.interface import (
    CameraGeometry,
    FrameResult,
    ObjectResult,
    PromptError,
    Tracker,
    check_frame,
    check_obj_id,
    check_prompt,
)
from threeam_model.streaming.backend import TorchSteps
from threeam_model.streaming.batched import memory_tokens
from threeam_model.streaming.features import FeatureProvider, SamFeatures
from threeam_model.streaming.memory import (
    Admission,
    MemoryPolicy,
    ObjectMemory,
    Sam2Window,
    SteppingPolicy,
    StepReport,
)
from threeam_model.streaming.results import compose_dense, compose_sparse, separable_upsampling_is_exact

# Object pointers are positioned relative to the current frame only; an unbounded stream has no length.
_UNBOUNDED = sys.maxsize
# SAM 2's image normalisation (sam2.utils.misc.load_video_frames)
IMG_MEAN = (0.485, 0.456, 0.406)
IMG_STD = (0.229, 0.224, 0.225)
COMPOSE_MODES = ("auto", "sparse", "dense")
# How a frame is resized to the model's input: "pil" (sam2's video loader: PIL's bicubic on the uint8 frame) or
# "antialias_bilinear" (torchvision's resize of the [0, 1] float frame, as DAM4SAM's tracker prepares images)
RESIZE_MODES = ("pil", "antialias_bilinear")
_MEAN = torch.tensor(IMG_MEAN, dtype=torch.float32)[:, None, None]
_STD = torch.tensor(IMG_STD, dtype=torch.float32)[:, None, None]


def sam2_preprocess(frame: np.ndarray, size: int, resize: str = "pil", device=None) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, size, size) float32 normalised on `device` (CPU if None): SAM 2's input for a frame.

    "pil" is exactly sam2's frame loader (PIL's resize of the uint8 frame, squashed to a square); the parity tests
    pin it. "antialias_bilinear" resizes the [0, 1] float frame on `device`, as DAM4SAM's tracker does. The
    tracker and the trainer both prepare frames here.
    """
    device = torch.device("cpu") if device is None else device
    if resize == "pil":
        resized = np.array(Image.fromarray(frame).resize((size, size)))
        image = torch.from_numpy(resized / 255.0).permute(2, 0, 1).float()
    else:
        image = torch.from_numpy(frame).to(device).permute(2, 0, 1).float() / 255.0
        image = F.interpolate(image[None], (size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    image = (image - _MEAN.to(image.device)) / _STD.to(image.device)
    return image.to(device)


@dataclasses.dataclass
class _PendingPrompt:
    """The last prompt output of an object on the current frame, stored in memory when tracking moves on."""

    is_cond: bool
    output: dict


@dataclasses.dataclass
class _ObjectTrack:
    """One object: its memory bank and its prompt state on the current frame."""

    obj_id: int
    memory: ObjectMemory
    tracked_current: bool = False  # did `track` run this object on the current frame
    points: dict | None = None  # accumulated point inputs on the current frame (model coordinates)
    pending: _PendingPrompt | None = None

    def current_output(self, frame_idx: int, is_cond: bool) -> dict | None:
        """The latest output on `frame_idx` (official lookup order: temporary first, then stored)."""
        if self.pending is not None and self.pending.is_cond == is_cond:
            return self.pending.output
        return self.memory.cond.get(frame_idx) or self.memory.non_cond.get(frame_idx)


class StreamingSAM2(Tracker):
    """Frame-by-frame, many-object SAM 2 (or 3AM) predictor with bounded per-object memory (module docstring).

    model: a `SAM2Base`, shared and never modified; it should be in eval mode.
    features: the FeatureProvider of the stride-16 feature; None = SAM 2's own (`SamFeatures`).
    memory_policy: the MemoryPolicy; None = `Sam2Window(model, max_cond_frames)`.
    batch_objects: track objects with the same memory layout in one batch (False: the official per-object step).
    pad_objects_to: with batch_objects, run every batch with at least this many objects (static shapes).
    max_cond_frames: conditioning frames kept per object by the default memory policy (>= 1).
    max_objects: most objects tracked at once; adding more raises PromptError.
    dtype: torch.float32, or torch.bfloat16 to run the model under autocast (CPU or CUDA).
    correction_as_cond: whether a correction on a tracked frame becomes a conditioning frame; None follows the
        model's `add_all_frames_to_correct_as_cond` (False in the official video predictor).
    compose: how results are made from low-res logits: "sparse" (per-object windows, for CPUs), "dense" (whole-frame
        tensor operations, for GPUs), "auto" (sparse on a CPU for frame sizes where it equals torch's upsampling bit
        for bit, else dense).
    resize: how frames are resized to the model input, one of RESIZE_MODES (the official loader's by default).
    steps: where the per-frame modules run: None = `backend.TorchSteps(model, compile)`, or e.g.
        `threeam_model.export.runtime.OnnxSteps` (ONNX Runtime); prompts always run in PyTorch.
    compile: run the image encoder through torch.compile (static shapes; on CUDA with CUDA-graph capture), and
        ask the feature provider to do the same with its per-frame modules; the first frame of a stream compiles.
    """

    def __init__(
        self,
        model,
        features: FeatureProvider | None = None,
        memory_policy: MemoryPolicy | None = None,
        batch_objects: bool = True,
        pad_objects_to: int | None = None,
        max_cond_frames: int = 8,
        max_objects: int = 16,
        dtype: torch.dtype = torch.float32,
        correction_as_cond: bool | None = None,
        compose: str = "auto",
        compile: bool = False,
        resize: str = "pil",
        steps=None,
    ):
        if max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {max_objects}")
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype}")
        if compose not in COMPOSE_MODES:
            raise ValueError(f"compose must be one of {COMPOSE_MODES}, got {compose!r}")
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.resize = resize
        if pad_objects_to is not None and pad_objects_to < 1:
            raise ValueError(f"pad_objects_to must be >= 1 or None, got {pad_objects_to}")
        self.model = model
        self.device = model.device
        self.features = SamFeatures() if features is None else features
        self.features.bind(model)
        self.memory_policy = Sam2Window(model, max_cond_frames) if memory_policy is None else memory_policy
        self.batch_objects = bool(batch_objects)
        self.pad_objects_to = pad_objects_to
        self.max_objects = max_objects
        self.dtype = dtype
        if correction_as_cond is None:
            correction_as_cond = getattr(model, "add_all_frames_to_correct_as_cond", False)
        self.correction_as_cond = bool(correction_as_cond)
        self.compose = compose
        self.compile = bool(compile)
        self.steps = TorchSteps(model, compile) if steps is None else steps
        if self.compile:
            self.features.compile("reduce-overhead" if self.device.type == "cuda" else None)
        self.reset()

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
        self.features.reset()

    def remove_object(self, obj_id: int) -> None:
        obj_id = check_obj_id(obj_id)
        if obj_id not in self._objects:
            raise PromptError(f"cannot remove object {obj_id}: it is not tracked (tracked ids: {self.object_ids})")
        del self._objects[obj_id]

    @torch.inference_mode()
    def track(self, frame: np.ndarray, geometry: CameraGeometry | None = None) -> FrameResult:
        t0 = time.perf_counter()
        frame = check_frame(frame, self._image_size)
        timings = {}
        with self._autocast():
            features, scene = self._encode_frame(frame, geometry, timings)  # first: if it fails, nothing changed
            # memories of the prompts on the previous frame are encoded with that frame's features, before they go
            self._commit_prompts()
            self._features = features
            self._frame_idx += 1
            self._image_size = (frame.shape[0], frame.shape[1])
            for obj in self._objects.values():
                obj.tracked_current = False
                self.memory_policy.prune(obj.memory, self._frame_idx)
            t = time.perf_counter()
            objs = list(self._objects.values())
            policy = self.memory_policy
            if isinstance(policy, SteppingPolicy):  # the policy steps and stores by itself
                outputs = [policy.track_object(self.model, features, o.memory, self._frame_idx) for o in objs]
                for obj in objs:
                    obj.tracked_current = True
            else:
                outputs = self._step_all(objs)
                for obj, out in zip(objs, outputs, strict=True):
                    candidates = out.pop("multimask_logits", None), out.pop("multimask_ious", None)
                    policy.admit(obj.memory, self._frame_idx, out, is_cond=False)
                    obj.tracked_current = True
                    report = StepReport(self._frame_idx, self._image_size, out, *candidates)
                    if policy.review(obj.memory, report) is Admission.CONDITIONING:
                        # a conditioning frame once tracking moves on, its memory re-encoded as for a prompt
                        obj.pending = _PendingPrompt(True, {**out, "maskmem_features": None, "maskmem_pos_enc": None})
            timings["objects"] = time.perf_counter() - t
        t = time.perf_counter()
        labels, results = self._compose([o.obj_id for o in objs], outputs)
        timings["results"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        return FrameResult(self._frame_idx, self._image_size, results, timings, labels=labels, scene=scene)

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
            obj = _ObjectTrack(obj_id, self.memory_policy.new_memory())
        is_init_cond_frame = not obj.tracked_current
        is_cond = is_init_cond_frame or (self.correction_as_cond if conditioning is None else bool(conditioning))
        with self._autocast():
            if m is not None:
                obj.points = None
                out = self._step_one(
                    obj, is_init_cond_frame=is_init_cond_frame, mask_inputs=self._mask_inputs(m), run_mem_encoder=False
                )
            else:
                obj.points = self._point_inputs(obj.points if bx is None else None, pts, lab, bx)
                prev = obj.current_output(self._frame_idx, is_cond)
                out = self._step_one(
                    obj,
                    is_init_cond_frame=is_init_cond_frame,
                    point_inputs=obj.points,
                    run_mem_encoder=False,
                    prev_logits=None if prev is None else torch.clamp(prev["pred_masks"], -32.0, 32.0),
                )
        obj.pending = _PendingPrompt(is_cond, out)
        self._objects[obj_id] = obj
        return self._compose([obj_id], [out])[1][obj_id]

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
            add(list(obj.memory.tensors()))
            add([obj.points, None if obj.pending is None else obj.pending.output])
        return total + self.features.nbytes()

    def memory_bank(self, obj_id: int) -> ObjectMemory:
        """One object's memory bank as its policy keeps it (for inspection and tests)."""
        return self._objects[check_obj_id(obj_id)].memory

    def memory_frames(self, obj_id: int) -> dict[str, list[int]]:
        """Frame indices held for one object: {"cond": [...], "non_cond": [...]} (for inspection and tests)."""
        return self._objects[check_obj_id(obj_id)].memory.frames()

    # ------------------------------------------------------------------------------------------------ steps

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _preprocess(self, frame: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (1, 3, S, S) normalised, exactly as sam2's frame loader does it (`sam2_preprocess`)."""
        return sam2_preprocess(frame, self.model.image_size, self.resize, self.device).unsqueeze(0)

    def _encode_frame(self, frame: np.ndarray, geometry: CameraGeometry | None, timings: dict):
        self.features.start(frame, geometry)  # e.g. 3AM's MUSt3R, queued to run beside the image encoder
        t = time.perf_counter()
        backbone_out = self.steps.forward_image(self._preprocess(frame))
        t1 = time.perf_counter()
        provided = self.features(backbone_out, frame, geometry)
        timings["image_encoder"] = t1 - t
        timings["memory_features"] = time.perf_counter() - t1
        timings.update(provided.timings)
        expected = tuple(backbone_out["backbone_fpn"][-1].shape)
        if tuple(provided.feature.shape) != expected:
            got = tuple(provided.feature.shape)
            raise RuntimeError(f"the feature provider returned shape {got}, expected {expected}")
        backbone_out = {
            "backbone_fpn": backbone_out["backbone_fpn"][:-1] + [provided.feature],
            "vision_pos_enc": backbone_out["vision_pos_enc"],
        }
        _, vision_feats, vision_pos_embeds, feat_sizes = self.model._prepare_backbone_features(backbone_out)
        return (vision_feats, vision_pos_embeds, feat_sizes), provided.scene

    def _step_one(
        self, obj, is_init_cond_frame=False, point_inputs=None, mask_inputs=None, run_mem_encoder=True, prev_logits=None
    ) -> dict:
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
            output_dict=self.memory_policy.view(obj.memory, self._frame_idx),
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

    def _step_all(self, objs: list[_ObjectTrack]) -> list[dict]:
        """Tracking steps of all objects on the current frame: one batch per memory layout, or (batch_objects off)
        one object at a time, through the official step where the policy reads memory by SAM 2's offsets."""
        policy, f = self.memory_policy, self._frame_idx
        tokens = [policy.memory_tokens(self.model, obj.memory, f) for obj in objs]
        if not self.batch_objects:
            return [
                self._step_one(obj) if tok is None else self._step_batched([tok])[0]
                for obj, tok in zip(objs, tokens, strict=True)
            ]
        tokens = [
            memory_tokens(self.model, f, policy.view(obj.memory, f), _UNBOUNDED) if tok is None else tok
            for obj, tok in zip(objs, tokens, strict=True)
        ]
        return self._step_batched(tokens)

    def _step_batched(self, tokens: list) -> list[dict]:
        """Tracking steps of objects given their memory tokens, one batch per memory layout."""
        groups: dict = {}
        for i, tok in enumerate(tokens):
            groups.setdefault(self.steps.group_key(tok), []).append(i)
        outputs: list[dict | None] = [None] * len(tokens)
        for members in groups.values():
            out = self.steps.step(self._features, [tokens[i] for i in members], self.pad_objects_to)
            pos_enc = self._shared_pos_enc(out["maskmem_pos_enc"])
            memory = out["maskmem_features"].to(torch.bfloat16)
            for k, i in enumerate(members):
                outputs[i] = {
                    "maskmem_features": memory[k : k + 1].clone(),  # an object's memory outlives its batch
                    "maskmem_pos_enc": pos_enc,
                    "pred_masks": out["pred_masks"][k : k + 1],
                    "obj_ptr": out["obj_ptr"][k : k + 1].clone(),
                    "object_score_logits": out["object_score_logits"][k : k + 1].clone(),
                    "multimask_logits": out["multimask_logits"][k : k + 1],
                    "multimask_ious": out["multimask_ious"][k : k + 1],
                }
        return outputs

    def _shared_pos_enc(self, pos_enc):
        if pos_enc is None:
            return None
        if self._maskmem_pos_enc is None:
            self._maskmem_pos_enc = [x[0:1].clone() for x in pos_enc]
        return self._maskmem_pos_enc

    def _commit_prompts(self) -> None:
        """Move each object's last prompt output on the current frame into its memory, encoding its memory from
        the final mask (as the official `propagate_in_video_preflight`)."""
        size = self.model.image_size
        for obj in self._objects.values():
            obj.points = None
            if obj.pending is None:
                continue
            pending, obj.pending = obj.pending, None
            out = pending.output
            if out["maskmem_features"] is None:
                high_res = F.interpolate(out["pred_masks"], size=(size, size), mode="bilinear", align_corners=False)
                maskmem, pos_enc = self.steps.encode_memory(
                    self._features, high_res, out["object_score_logits"], is_mask_from_pts=True
                )
                out["maskmem_features"] = maskmem.to(torch.bfloat16)
                out["maskmem_pos_enc"] = self._shared_pos_enc(pos_enc)
            self.memory_policy.admit(obj.memory, self._frame_idx, out, is_cond=pending.is_cond)

    def _compose(self, obj_ids: list[int], outputs: list[dict]) -> tuple[np.ndarray, dict[int, ObjectResult]]:
        """Label image and per-object results of the current frame, from the outputs' low-res logits."""
        size = self._image_size
        if not obj_ids:
            return np.zeros(size, np.uint16), {}
        low_res = torch.cat([out["pred_masks"] for out in outputs]).float()
        scores = torch.sigmoid(torch.cat([out["object_score_logits"] for out in outputs]).float()).reshape(-1)
        order = np.argsort(obj_ids, kind="stable")
        ids = [obj_ids[i] for i in order]
        index = torch.as_tensor(order, device=low_res.device)
        low_res, scores = low_res[index], scores[index]
        sparse = self.compose == "sparse"
        if self.compose == "auto":
            sparse = self.device.type == "cpu" and separable_upsampling_is_exact(tuple(low_res.shape[-2:]), size)
        if sparse:
            return compose_sparse(low_res.cpu(), ids, scores.tolist(), size)
        return compose_dense(low_res, ids, scores, size)

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


__all__ = ["COMPOSE_MODES", "IMG_MEAN", "IMG_STD", "RESIZE_MODES", "StreamingSAM2", "sam2_preprocess"]
