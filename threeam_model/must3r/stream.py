"""Must3rStream: frame-by-frame MUSt3R with a bounded memory and the official keyframe policy.

Each ``step(frame)`` preprocesses and encodes the frame, runs one memory-adding decoder call, post-processes the
pointmaps, estimates focal and pose, scores view coverage, and keeps the updated memory only for keyframes. A
non-keyframe's call attends to exactly the memory (its own tokens are masked), so its outputs equal a render.

Official online behaviour reproduced (must3r/slam): the first ``num_init_frames`` frames are re-run jointly to
start the memory (the first one is the reference camera: world frame = its camera frame); the focal is the
confidence-weighted running mean of per-frame estimates and rescales the local depth before pose registration.

Bounded state (not in the official code, which grows without limit): at most ``max_memory_images`` images are in
memory. When a new keyframe arrives with the memory full, the oldest memory image that is not protected is evicted
(tokens of every layer and its coverage points); the first ``protected_images`` memory images (the init frames,
which anchor the world frame and scale) are never evicted.

Small differences from the official driver, by design: the coverage points of the joint init frames are always
indexed (officially only when the frame also passes the score test; it is in memory either way); ``rays`` are
pinhole rays from the (sequence) focal, which the official code does not output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from .decoder import Must3rMemory
from .keyframes import CoverageIndex, KeyframeParams, coverage_points, is_keyframe, overlap_score
from .model import Must3rModel
from .postprocess import estimate_focal, pinhole_rays, pose_matrix, postprocess, rigid_registration
from .preprocess import Preprocessed, preprocess_image, slam_preprocess

DEFAULT_FEAT_LAYERS = (0, 4, 7, 11)


@dataclasses.dataclass
class Must3rFrame:
    """MUSt3R's outputs for one frame (batch dim dropped). H', W' = MUSt3R's input size (``true_shape``)."""

    enc_tokens: torch.Tensor  # (N, Denc) encoder output
    # layer -> (N, D): 0 = encoder tokens as given (Denc), k = output of decoder block k (k = depth: after norm_dec)
    feats: dict[int, torch.Tensor]
    token_grid: tuple[int, int]  # (h, w) tokens, N = h*w, row-major
    pts3d: torch.Tensor  # (H', W', 3) in the memory's world frame (the reference frame's camera)
    pts3d_local: torch.Tensor  # (H', W', 3) in this frame's camera frame (network output, not rescaled)
    conf: torch.Tensor  # (H', W') >= 1
    rays: torch.Tensor  # (H', W', 3) unit camera-frame rays of a pinhole camera with `focal`, pp (W'/2, H'/2)
    focal: float  # pixels at H'xW' (the running sequence focal when fixed_focal, else this frame's estimate)
    c2w: torch.Tensor  # (4, 4) camera-to-world
    true_shape: tuple[int, int]  # (H', W')
    crop_box: tuple[int, int, int, int]  # (x0, y0, x1, y1) of the original frame that was resized to H'xW'
    is_keyframe: bool  # the frame was written to memory
    memory_images: list[int]  # frame indices in memory after this step
    frame_index: int = -1
    overlap_score: float = float("nan")  # view-coverage score (higher = more unseen content)

    def to_original(self, xy: np.ndarray) -> np.ndarray:
        """Map (..., 2) MUSt3R pixel coordinates (x, y) to pixels of the original frame."""
        x0, y0, x1, y1 = self.crop_box
        h, w = self.true_shape
        return np.asarray(xy, dtype=np.float64) * [(x1 - x0) / w, (y1 - y0) / h] + [x0, y0]


class Must3rStream:
    """Stateful streaming layer over a stateless Must3rModel."""

    def __init__(
        self,
        model: Must3rModel,
        image_size: int | dict = 224,
        keyframes: KeyframeParams | None = None,
        max_memory_images: int = 32,
        protected_images: int | None = None,
        feat_layers: Sequence[int] = DEFAULT_FEAT_LAYERS,
        device=None,
        dtype: torch.dtype = torch.float32,
        preprocessing: str = "demo",
        **keyframe_overrides,
    ):
        """image_size: 224, 512 (official tables) or a custom {W/H ratio: (W, H)} table.
        keyframes / keyframe_overrides: KeyframeParams (e.g. overlap_thr=0.1, num_init_frames=1).
        protected_images: never-evicted first memory images (default: num_init_frames, at most cap - 1).
        dtype: float32, or bfloat16/float16 to run the decoder under autocast (CUDA; the encoder stays float32 as
        in the official code)."""
        self.model = model.eval()
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)
        if preprocessing not in ("demo", "slam"):
            raise ValueError(f"preprocessing must be 'demo' or 'slam', got {preprocessing!r}")
        if preprocessing == "slam" and not isinstance(image_size, int):
            raise ValueError("slam preprocessing needs an int image_size (the official res)")
        self.image_size = image_size
        self.preprocessing = preprocessing
        self.params = dataclasses.replace(keyframes or KeyframeParams(), **keyframe_overrides)
        if max_memory_images < 1:
            raise ValueError(f"max_memory_images must be >= 1, got {max_memory_images}")
        if protected_images is None:
            protected_images = min(self.params.num_init_frames, max_memory_images - 1)
        self.protected_images = protected_images
        if not 0 <= self.protected_images < max_memory_images:
            raise ValueError(
                f"protected_images ({self.protected_images}) must be < max_memory_images ({max_memory_images})"
            )
        if self.params.num_init_frames > max_memory_images:
            raise ValueError("num_init_frames cannot exceed max_memory_images")
        self.max_memory_images = max_memory_images
        depth = model.decoder.depth
        bad = [k for k in feat_layers if not 0 <= k <= depth]
        if bad:
            raise ValueError(f"feat_layers {bad} out of range: 0 (encoder) .. {depth} (last decoder block)")
        self.feat_layers = tuple(feat_layers)
        self.dtype = dtype
        self.reset()

    # ----------------------------------------------------------------------------------------------- state
    def reset(self) -> None:
        self.memory: Must3rMemory | None = None
        self._memory_frames: dict[int, int] = {}  # memory image label -> frame index
        self.coverage = CoverageIndex(self.params.quadrant_divider)
        self._focal_sums = [0.0, 0.0]  # running sum of focal * weight and of weight (= mean conf - 1): O(1) state
        self._init_frames: list[tuple[int, Preprocessed, torch.Tensor, torch.Tensor]] = []
        self.frame_count = 0
        self.last_call_scores: list[float] = []

    @property
    def memory_images(self) -> list[int]:
        """Frame indices of the images in memory, oldest first."""
        if self.memory is None:
            return []
        return [self._memory_frames[i] for i in self.memory.image_ids]

    @property
    def memory_tokens(self) -> int:
        return 0 if self.memory is None else self.memory.num_tokens

    def seq_focal(self) -> float | None:
        """Confidence-weighted mean focal of the frames processed so far (the official fixed focal)."""
        weighted, total = self._focal_sums
        return weighted / total if total else None

    # ----------------------------------------------------------------------------------------------- steps
    def _autocast(self):
        enabled = self.dtype != torch.float32
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=enabled)

    def _prepare(self, frame: np.ndarray):
        if self.preprocessing == "slam":
            prep = slam_preprocess(frame, self.image_size)[0]
        else:
            prep = preprocess_image(frame, self.image_size)
        with torch.no_grad(), self._autocast():
            tokens, pos = self.model.encode(prep.img[None].to(self.device))
        return prep, tokens, pos

    def _decode(self, items, memory, render: bool):
        """items: list of (prep, tokens (1,N,D), pos) decoded jointly, one group per image (official list path)."""
        with torch.no_grad(), self._autocast():
            shapes = [torch.tensor(p.true_shape, device=self.device).view(1, 1, 2) for p, _, _ in items]
            return self.model.decoder(
                [t[None] for _, t, _ in items], [q[None] for _, _, q in items], shapes, memory, render=render
            )

    @torch.no_grad()
    def render(self, frame: np.ndarray) -> Must3rFrame:
        """Query a frame against the memory without adding it (needs a non-empty memory)."""
        if self.memory is None:
            raise RuntimeError("render() needs a memory: call step() on at least one frame first")
        prep, tokens, pos = self._prepare(frame)
        _, raws, feats = self._decode([(prep, tokens, pos)], self.memory, render=True)
        out = postprocess(raws[0][0, 0])
        focal_now = float(estimate_focal(out["pts3d_local"][None])[0])
        seq_focal = self.seq_focal() if self.params.fixed_focal else None
        c2w = self._pose(out, seq_focal, False, focal_now)
        return self._frame(prep, tokens, feats[0], out, seq_focal or focal_now, c2w, False, -1, float("nan"))

    @torch.no_grad()
    def step(self, frame: np.ndarray, keyframe: bool | None = None) -> Must3rFrame:
        """Process the next frame of the stream; it enters the memory if the keyframe policy says so.

        ``keyframe`` overrides the policy (True: write to memory, False: render only); the init frames of the
        joint restart are in memory regardless.
        """
        index = self.frame_count
        self.frame_count += 1
        prep, tokens, pos = self._prepare(frame)
        item = (index, prep, tokens, pos)

        rerun_init = self.memory is not None and len(self._init_frames) < self.params.num_init_frames
        if rerun_init:  # restart the memory from all init frames jointly, as the official driver does
            batch = self._init_frames + [item]
            self.memory, self._memory_frames = None, {}
            self.coverage.clear()
            self._focal_sums = [0.0, 0.0]
        else:
            batch = [item]

        new_memory, raws, feats = self._decode([b[1:] for b in batch], self.memory, render=False)
        first_label = new_memory.nimgs - len(batch)
        self.last_call_scores = []
        result, committed = None, False
        for k, (frame_idx, b_prep, b_tokens, _) in enumerate(batch):
            out = postprocess(raws[k][0, 0])
            first = self.memory is None
            focal_now = float(estimate_focal(out["pts3d_local"][None])[0])
            seq_focal = self.seq_focal() if self.params.fixed_focal else None
            c2w = self._pose(out, seq_focal, first, focal_now)
            depth = out["pts3d_local"][..., 2] * ((seq_focal / focal_now) if (seq_focal and not first) else 1.0)
            cam_center = c2w[:3, 3]
            score = overlap_score(self.coverage, out["pts3d"], depth, out["conf"], cam_center, self.params)
            self.last_call_scores.append(score)
            chosen = is_keyframe(score, out["conf"], first, self.params) if keyframe is None else bool(keyframe)
            weight = float(out["conf"].mean()) - 1.0
            self._focal_sums = [self._focal_sums[0] + focal_now * weight, self._focal_sums[1] + weight]
            focal = self.seq_focal() if self.params.fixed_focal else focal_now
            in_memory = chosen or rerun_init  # joint init frames are in the memory whatever their score
            if in_memory:
                if not committed:
                    self._commit(new_memory, batch, first_label)
                    committed = True
                self.coverage.add(frame_idx, coverage_points(out["pts3d"], out["conf"], self.params), cam_center)
            if frame_idx == index:
                result = self._frame(b_prep, b_tokens, feats[k], out, focal, c2w, in_memory, index, score)
                if in_memory and len(self._init_frames) < self.params.num_init_frames:
                    self._init_frames.append(item)
        return result

    def _commit(self, new_memory: Must3rMemory, batch, first_label: int) -> None:
        for k, b in enumerate(batch):
            self._memory_frames[first_label + k] = b[0]
        self.memory = new_memory
        self._evict()

    def _evict(self) -> None:
        ids = self.memory.image_ids
        excess = len(ids) - self.max_memory_images
        if excess <= 0:
            return
        victims = ids[self.protected_images : self.protected_images + excess]
        self.memory = self.memory.drop_images(victims)
        for v in victims:
            self.coverage.remove(self._memory_frames.pop(v))

    def _pose(self, out, seq_focal: float | None, first: bool, focal_now: float) -> torch.Tensor:
        """Camera-to-world by weighted Procrustes of the (focal-rescaled) local points onto the world points."""
        if first:
            return torch.eye(4, device=out["pts3d"].device)
        local = out["pts3d_local"].reshape(-1, 3)
        if seq_focal and focal_now:
            local = local * torch.tensor([1.0, 1.0, seq_focal / focal_now], device=local.device)
        rot, t = rigid_registration(local, out["pts3d"].reshape(-1, 3), out["conf"].reshape(-1) - 1.0)
        return pose_matrix(rot, t)

    def _frame(self, prep, tokens, feats, out, focal, c2w, keyframe, index, score) -> Must3rFrame:
        h, w = prep.true_shape
        p = self.model.patch_size
        return Must3rFrame(
            enc_tokens=tokens[0],
            feats={k: feats[k][0, 0] for k in self.feat_layers},
            token_grid=(h // p, w // p),
            pts3d=out["pts3d"],
            pts3d_local=out["pts3d_local"],
            conf=out["conf"],
            rays=pinhole_rays(h, w, focal, device=out["pts3d"].device),
            focal=float(focal),
            c2w=c2w,
            true_shape=(h, w),
            crop_box=prep.crop_box,
            is_keyframe=bool(keyframe),
            memory_images=self.memory_images,
            frame_index=index,
            overlap_score=score,
        )
