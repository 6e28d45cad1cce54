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

One read from the device per step: everything up to the keyframe decision is queued on the device (the coverage
index with this frame added is prepared too, and kept only for a keyframe), then one small tensor (the scores,
the median-confidence tests, the focal) comes to the host, which decides and commits. With the grid coverage
index a query it could not answer within its fixed sizes costs a second read (counted in ``coverage_rereads``).
``submit(frame)`` queues the work and returns at once; ``PendingFrame.result()`` reads, decides and commits (the
3AM feature provider runs SAM 2's image encoder in between). ``step`` is the two in a row.

Small differences from the official driver, by design: the coverage points of the joint init frames are always
indexed (officially only when the frame also passes the score test; it is in memory either way); ``rays`` are
pinhole rays from the (sequence) focal, which the official code does not output.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np
import torch

from .decoder import Must3rMemory
from .keyframes import (
    KeyframeParams,
    Ranked,
    coverage_index,
    coverage_points,
    is_keyframe,
    median_confident,
    overlap_score,
    score_scale,
)
from .model import Must3rModel
from .postprocess import estimate_focal, pinhole_rays, pose_matrix, postprocess, rigid_registration
from .preprocess import Preprocessed, check_frame_array, preprocess_image, slam_preprocess

DEFAULT_FEAT_LAYERS = (0, 4, 7, 11)
STAGES = ("encode", "decode", "postprocess", "pose", "coverage")


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

    @property
    def timings(self) -> dict[str, float]:
        """Seconds per stage of the step that made this frame (STAGES; device time on CUDA): encode (with the
        preprocessing), decode, postprocess, pose (focal and Procrustes), coverage (the test, and the index update
        prepared for a keyframe). A measurement, not an output: not a dataclass field, so caches leave it out."""
        return getattr(self, "_timings", {})

    @timings.setter
    def timings(self, value: dict[str, float]) -> None:
        self._timings = dict(value)

    def to_original(self, xy: np.ndarray) -> np.ndarray:
        """Map (..., 2) MUSt3R pixel coordinates (x, y) to pixels of the original frame."""
        x0, y0, x1, y1 = self.crop_box
        h, w = self.true_shape
        return np.asarray(xy, dtype=np.float64) * [(x1 - x0) / w, (y1 - y0) / h] + [x0, y0]


class StageClock:
    """Time per stage of a step: CUDA events on CUDA (read once the step has been read back), else the wall clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._marks: list[tuple[str, object]] = [("", self._now())]

    def _now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def mark(self, stage: str) -> None:
        """The time since the previous mark belongs to `stage`."""
        self._marks.append((stage, self._now()))

    def seconds(self) -> dict[str, float]:
        """Seconds per stage (summed over repeated marks); on CUDA only after the marks have completed."""
        out: dict[str, float] = {}
        for (_, a), (stage, b) in zip(self._marks, self._marks[1:]):
            dt = a.elapsed_time(b) / 1e3 if self.cuda else b - a
            out[stage] = out.get(stage, 0.0) + dt
        return out


@dataclasses.dataclass
class _Decided:
    """What `result()` needs of one frame of the decoder call, in device tensors until the read."""

    frame_idx: int
    prep: Preprocessed
    tokens: torch.Tensor
    feats: list
    out: dict
    c2w: torch.Tensor
    first: bool
    points: torch.Tensor  # coverage points and their validity (keyframes.coverage_points)
    valid: torch.Tensor
    depth: torch.Tensor
    cam_center: torch.Tensor
    coverage: object  # the index this frame was scored against
    distances: torch.Tensor
    unresolved: torch.Tensor | None
    needed: torch.Tensor | None  # what the index query needed, for its `learn`
    score: torch.Tensor
    median_ok: torch.Tensor


class PendingFrame:
    """A submitted step: the device work is queued; `result()` reads it back, decides and commits (once)."""

    def __init__(self, stream: Must3rStream, token: object, state: dict):
        self._stream, self._token, self._state = stream, token, state
        self._result: Must3rFrame | None = None

    def result(self) -> Must3rFrame:
        if self._result is None:
            self._result = self._stream._complete(self._token, self._state)
        return self._result


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
        coverage: str = "auto",
        **keyframe_overrides,
    ):
        """image_size: 224, 512 (official tables) or a custom {W/H ratio: (W, H)} table.
        keyframes / keyframe_overrides: KeyframeParams (e.g. overlap_thr=0.1, num_init_frames=1).
        protected_images: never-evicted first memory images (default: num_init_frames, at most cap - 1).
        dtype: float32, or bfloat16/float16 to run the decoder under autocast (CUDA; the encoder stays float32 as
        in the official code).
        coverage: the keyframe test's index: 'morton' (compiled on the host, the fastest on a CPU), 'kdtree'
        (scipy on the host), 'grid' (torch on the device, no host reads) or 'auto' (grid on CUDA, morton otherwise,
        kdtree without numba), all with the official scores; or a callable returning an empty
        `keyframes.CoverageIndex`."""
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
        self.coverage_kind = coverage
        self._empty_coverage()  # refuse a bad name now
        self.coverage_rereads = 0  # steps that needed a second read (grid queries beyond its fixed sizes)
        self.reset()

    # ----------------------------------------------------------------------------------------------- state
    def reset(self) -> None:
        self.memory: Must3rMemory | None = None
        self._memory_frames: dict[int, int] = {}  # memory image label -> frame index
        self.coverage = self._empty_coverage()
        self._focal_sums = self._no_focal()  # running sums of focal * weight and of weight (weight = mean conf - 1)
        self._init_frames: list[tuple[int, Preprocessed, torch.Tensor, torch.Tensor]] = []
        self.frame_count = 0
        self.last_call_scores: list[float] = []
        self._pending_token: object | None = None

    def _empty_coverage(self):
        if callable(self.coverage_kind):
            return self.coverage_kind()
        return coverage_index(self.coverage_kind, self.params.quadrant_divider, self.device)

    def _no_focal(self):
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        return (zero, zero, 0)  # (sum focal * weight, sum weight, frames)

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
        weighted, total, frames = self._focal_sums
        return float(weighted / total) if frames else None

    # ----------------------------------------------------------------------------------------------- steps
    def _autocast(self):
        enabled = self.dtype != torch.float32
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=enabled)

    def _prepare(self, frame: np.ndarray):
        if self.preprocessing == "slam":
            prep = slam_preprocess(frame, self.image_size)[0]
        else:
            prep = preprocess_image(frame, self.image_size)
        img = prep.img[None]
        if self.device.type == "cuda":  # from pinned memory the upload does not wait for the device
            img = img.pin_memory().to(self.device, non_blocking=True)
        with torch.no_grad(), self._autocast():
            tokens, pos = self.model.encode(img.to(self.device))
        return prep, tokens, pos

    def _decode(self, items, memory, render: bool):
        """items: list of (prep, tokens (1,N,D), pos) decoded jointly, one group per image (official list path)."""
        with torch.no_grad(), self._autocast():
            shapes = [[[list(p.true_shape)]] for p, _, _ in items]  # (1, 1, 2) each, as host values
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
        focal_now = estimate_focal(out["pts3d_local"][None])[0]
        seq_focal = self.seq_focal() if self.params.fixed_focal else None
        c2w = self._pose(out, None if seq_focal is None else seq_focal / focal_now, False)
        focal = seq_focal if seq_focal is not None else float(focal_now)
        frame_out = self._frame(prep, tokens, feats[0], out, focal, c2w, False, -1, float("nan"))
        return frame_out

    @torch.no_grad()
    def step(self, frame: np.ndarray, keyframe: bool | None = None) -> Must3rFrame:
        """Process the next frame of the stream; it enters the memory if the keyframe policy says so.

        ``keyframe`` overrides the policy (True: write to memory, False: render only); the init frames of the
        joint restart are in memory regardless.
        """
        return self.submit(frame, keyframe).result()

    @torch.no_grad()
    def submit(self, frame: np.ndarray, keyframe: bool | None = None) -> PendingFrame:
        """Queue the device work of `step(frame, keyframe)` and return without waiting for it.

        Nothing of the stream changes until `result()`; a newer submit replaces a pending one that was never read.
        """
        check_frame_array(frame)
        clock = StageClock(self.device)
        index = self.frame_count
        prep, tokens, pos = self._prepare(frame)
        clock.mark("encode")
        item = (index, prep, tokens, pos)
        rerun_init = self.memory is not None and len(self._init_frames) < self.params.num_init_frames
        if rerun_init:  # restart the memory from all init frames jointly, as the official driver does
            batch, memory = self._init_frames + [item], None
            coverage, focal_sums = self._empty_coverage(), self._no_focal()
        else:
            batch, memory = [item], self.memory
            coverage, focal_sums = self.coverage, self._focal_sums
        new_memory, raws, feats = self._decode([b[1:] for b in batch], memory, render=False)
        clock.mark("decode")
        decided = []
        for k, (frame_idx, b_prep, b_tokens, _) in enumerate(batch):
            out = postprocess(raws[k][0, 0])
            clock.mark("postprocess")
            first = memory is None and k == 0
            focal_now = estimate_focal(out["pts3d_local"][None])[0]
            weighted, total, frames = focal_sums
            # the official fixed focal rescales this frame's depth before the pose, from the focal of the frames
            # before it (none for the first frame)
            ratio = ((weighted / total) / focal_now.double()).float() if (self.params.fixed_focal and frames) else None
            c2w = self._pose(out, ratio, first)
            depth = out["pts3d_local"][..., 2] * (ratio if (ratio is not None and not first) else 1.0)
            weight = out["conf"].mean().double() - 1.0
            focal_sums = (weighted + focal_now.double() * weight, total + weight, frames + 1)
            # what the frame reports: the sequence focal with this frame in it, or this frame's own
            focal = focal_sums[0] / focal_sums[1] if self.params.fixed_focal else focal_now.double()
            clock.mark("pose")
            points, valid = coverage_points(out["pts3d"], out["conf"], self.params)
            cam_center = c2w[:3, 3]
            # the score reads one percentile of distance / depth: an index may answer exactly only what decides it
            ranked = Ranked(score_scale(depth, self.params), self.params.percentile)
            distances, unresolved, needed = coverage.nearest(points, valid, cam_center, ranked)
            score = overlap_score(distances, depth, valid, self.params, on_host=coverage.on_host)
            decided.append(
                _Decided(
                    frame_idx,
                    b_prep,
                    b_tokens,
                    feats[k],
                    out,
                    c2w,
                    first,
                    points,
                    valid,
                    depth,
                    cam_center,
                    coverage,
                    distances,
                    unresolved,
                    needed,
                    score,
                    median_confident(out["conf"], self.params),
                )
            )
            if rerun_init:  # joint init frames are in the memory whatever their score
                coverage = coverage.updated(add=[(frame_idx, points, valid, cam_center)])
            clock.mark("coverage")
        victims = []
        if not rerun_init:  # the index as it will be if this frame becomes a keyframe, thrown away otherwise
            victims = self._victims(new_memory)
            d = decided[0]
            drop = [self._memory_frames[v] for v in victims]
            coverage = coverage.updated(add=[(index, d.points, d.valid, d.cam_center)], drop=drop)
            clock.mark("coverage")
        token = object()
        self._pending_token = token
        state = dict(
            index=index,
            item=item,
            batch=batch,
            keyframe=keyframe,
            rerun_init=rerun_init,
            new_memory=new_memory,
            victims=victims,
            decided=decided,
            coverage=coverage,
            focal_sums=focal_sums,
            focal=focal,
            clock=clock,
        )
        return PendingFrame(self, token, state)

    def _complete(self, token, state) -> Must3rFrame:
        if token is not self._pending_token:
            raise RuntimeError("this frame was superseded by a later submit() or a reset(); submit it again")
        self._pending_token = None
        decided, n = state["decided"], len(state["decided"])
        extra = [t for d in decided for t in (d.unresolved, d.needed) if t is not None]  # grid index only
        read = torch.cat(
            [
                *(torch.stack([d.score, d.median_ok.double()]) for d in decided),
                state["focal"].view(1),
                *(t.sum().double().view(1) if t.dtype == torch.bool else t.double() for t in extra),
            ]
        )
        host = read.tolist()  # the one read from the device per step
        scores, medians, focal = host[0 : 2 * n : 2], host[1 : 2 * n : 2], host[2 * n]
        unresolved, pos = 0, 2 * n + 1
        for d in decided:
            if d.unresolved is not None:
                unresolved += host[pos]
                pos += 1
            if d.needed is not None:
                d.coverage.learn(host[pos : pos + d.needed.numel()])
                pos += d.needed.numel()
        if unresolved:
            scores = self._rescore(decided)
        self.last_call_scores = list(scores)
        index, keyframe, last = state["index"], state["keyframe"], decided[-1]
        if keyframe is None:
            chosen = is_keyframe(scores[-1], medians[-1] > 0.5, last.first, self.params)
        else:
            chosen = bool(keyframe)
        in_memory = chosen or state["rerun_init"]  # joint init frames are in the memory whatever their score
        if in_memory:
            if state["rerun_init"]:
                self._memory_frames = {}
            self._commit(state["new_memory"], state["batch"], state["victims"])
            self.coverage = state["coverage"]
            if len(self._init_frames) < self.params.num_init_frames:
                self._init_frames.append(state["item"])
        self._focal_sums = state["focal_sums"]
        self.frame_count = index + 1
        result = self._frame(
            last.prep, last.tokens, last.feats, last.out, focal, last.c2w, in_memory, index, scores[-1]
        )
        result.timings = state["clock"].seconds()
        return result

    def _rescore(self, decided) -> list[float]:
        """Scores with the queries the grid index left unresolved answered exactly (reads from the device)."""
        self.coverage_rereads += 1
        scores = []
        for d in decided:
            distances = d.distances
            if d.unresolved is not None:
                distances = d.coverage.nearest_exact(d.points, d.valid, d.cam_center, distances, d.unresolved)
            scores.append(float(overlap_score(distances, d.depth, d.valid, self.params)))
        return scores

    def _victims(self, memory: Must3rMemory) -> list[int]:
        """Memory image labels evicted once `memory` is committed: the oldest unprotected ones over the cap."""
        ids = memory.image_ids
        excess = len(ids) - self.max_memory_images
        return ids[self.protected_images : self.protected_images + excess] if excess > 0 else []

    def _commit(self, new_memory: Must3rMemory, batch, victims) -> None:
        first_label = new_memory.nimgs - len(batch)
        for k, b in enumerate(batch):
            self._memory_frames[first_label + k] = b[0]
        self.memory = new_memory.drop_images(victims) if victims else new_memory
        for v in victims:
            self._memory_frames.pop(v)

    def _pose(self, out, ratio: torch.Tensor | None, first: bool) -> torch.Tensor:
        """Camera-to-world by weighted Procrustes of the (focal-rescaled) local points onto the world points.

        ratio: sequence focal / this frame's focal (0-dim tensor), or None (no rescaling)."""
        if first:
            return torch.eye(4, device=out["pts3d"].device)
        local = out["pts3d_local"].reshape(-1, 3)
        if ratio is not None:
            local = torch.cat((local[:, :2], local[:, 2:] * ratio), dim=1)
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
