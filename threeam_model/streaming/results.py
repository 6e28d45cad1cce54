"""Frame results from all objects' low-resolution logits, composed where the model runs.

The masks, boxes, scores and label image of every object come out of one pass over the stacked low-res logits
(N, 1, h, w); full-resolution float logits are made only when a caller reads `ObjectResult.mask_logits`.

Two ways to the same masks:
- `dense` (on a GPU): one bilinear upsampling of all objects, the label image by one argmax, boxes by reductions,
  and one device-to-host copy of a packed buffer.
- `sparse` (on a CPU, where the frame-size work of every object is the cost): a pixel of a bilinear upsampling is
  a convex combination of at most 4 low-res cells, so it can be positive only next to a positive cell. Each object
  is upsampled only over the window around its positive cells, in two passes that equal torch's upsampling bit for
  bit: torch's CPU bilinear kernel is separable (width, then height, in float32) and a pass whose size does not
  change is the identity, so rows outside the window can be left out of the width pass and columns (in whole
  vector blocks) out of the height pass. Frame-size work is
  then one fill of the label image, whatever the number of objects. `separable_upsampling_is_exact` checks that
  property of the running torch build for the stream's sizes; the engine uses `dense` where it does not hold.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from threeam_model.interface import ObjectResult


def upsample(low_res: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The official upsampling of low-res logits (N, 1, h, w) to the frame (N, 1, H, W), float32."""
    return F.interpolate(low_res.float(), size=size, mode="bilinear", align_corners=False)


@functools.lru_cache(maxsize=32)
def _source_span(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """For each output index of a bilinear resize n_in -> n_out: the first and last input index it reads,
    measured on the kernel itself (one-hot inputs), so no formula has to match torch's."""
    probe = torch.eye(n_in, dtype=torch.float32)[:, None, :, None]
    weights = F.interpolate(probe, size=(n_out, 1), mode="bilinear", align_corners=False)[:, 0, :, 0].T
    reads = (weights != 0).numpy()  # (n_out, n_in)
    first = reads.argmax(1)
    last = n_in - 1 - reads[:, ::-1].argmax(1)
    return first, last


def _window(pos_lo: int, pos_hi: int, n_in: int, n_out: int) -> tuple[int, int, int, int]:
    """Output range [o0, o1) whose pixels read any input index in [pos_lo, pos_hi], and the input range
    [i0, i1) those pixels read."""
    first, last = _source_span(n_in, n_out)
    reads = (last >= pos_lo) & (first <= pos_hi)
    o0 = int(reads.argmax())
    o1 = n_out - int(reads[::-1].argmax())
    return o0, o1, int(first[o0]), int(last[o1 - 1]) + 1


# torch's CPU kernel vectorises along the output width in blocks from column 0 and takes another kernel for narrow
# outputs, so a window's columns start on a block boundary and span at least one block (measured, not documented;
# `separable_upsampling_is_exact` checks it for each stream's sizes).
_COLUMN_BLOCK = 64


def _column_window(x0: int, x1: int, W: int) -> tuple[int, int]:
    x0 = x0 // _COLUMN_BLOCK * _COLUMN_BLOCK
    x1 = min(W, max(-(-x1 // _COLUMN_BLOCK) * _COLUMN_BLOCK, x0 + _COLUMN_BLOCK))
    return x0, x1


def _upsample_window(low: torch.Tensor, size: tuple[int, int], rows: tuple, cols: tuple[int, int]) -> torch.Tensor:
    """Upsampled values of one (h, w) map on the output window rows [y0, y1) x cols [x0, x1), equal to
    `upsample(low)[..., y0:y1, x0:x1]` (see the module docstring); cols from `_column_window`."""
    h, w = low.shape
    H, W = size
    y0, y1, r0, r1 = rows
    x0, x1 = cols
    # width pass over the rows the window reads (height unchanged: identity)
    wide = F.interpolate(low[None, None, r0:r1], size=(r1 - r0, W), mode="bilinear", align_corners=False)
    # height pass over the window's columns (width unchanged: identity); rows the window does not read stay 0
    tall = low.new_zeros(1, 1, h, x1 - x0)
    tall[0, 0, r0:r1] = wide[0, 0, :, x0:x1]
    return F.interpolate(tall, size=(H, x1 - x0), mode="bilinear", align_corners=False)[0, 0, y0:y1]


@functools.lru_cache(maxsize=32)
def separable_upsampling_is_exact(low_size: tuple[int, int], size: tuple[int, int]) -> bool:
    """Does `_upsample_window` equal `upsample` bit for bit for these sizes on this torch build (CPU)? (torch
    picks its kernel by size: small frames, e.g. 64 pixels wide, take a non-separable one.)"""
    (h, w), (H, W) = low_size, size
    low = torch.randn(h, w, generator=torch.Generator().manual_seed(0)) * 4
    full = upsample(low[None, None], (H, W))[0, 0]
    spans = (
        ((0, h - 1), (0, w - 1)),
        ((h // 3, h // 2), (w // 2, w - 1)),
        ((1, 2), (0, 1)),
        ((h - 2, h - 1), (w // 3, w // 3)),
    )
    for rows_on, cols_on in spans:
        rows = _window(*rows_on, h, H)
        cols = _column_window(*_window(*cols_on, w, W)[:2], W)
        part = _upsample_window(low, (H, W), rows, cols)
        if not torch.equal(part, full[rows[0] : rows[1], cols[0] : cols[1]]):
            return False
    return True


def _logits_of(low_res: torch.Tensor, size: tuple[int, int]):
    return lambda: upsample(low_res, size)[0, 0].cpu().numpy()


def compose_sparse(
    low_res: torch.Tensor, obj_ids: list[int], scores: list[float], size: tuple[int, int]
) -> tuple[np.ndarray, dict[int, ObjectResult]]:
    """(label image (H, W) uint16, {obj_id: ObjectResult}) from low-res logits (N, 1, h, w) on the CPU."""
    H, W = size
    low_res = low_res.float()
    labels = torch.zeros(size, dtype=torch.int32)
    # the winning logit per pixel, 0 where no object is: a pixel goes to an object whose logit beats it, which is
    # "inside the mask and higher than any earlier object" in one comparison
    best = torch.zeros(size)
    objects = {}
    positive = low_res[:, 0] > 0
    if list(obj_ids) != sorted(obj_ids):
        raise ValueError("compose_sparse needs object ids in ascending order")
    for i, obj_id in enumerate(obj_ids):
        low = low_res[i, 0]
        logits = _logits_of(low_res[i : i + 1], size)
        rows_on = positive[i].any(1).nonzero()
        box, window = None, None
        if len(rows_on):
            cols_on = positive[i].any(0).nonzero()
            rows = _window(int(rows_on[0]), int(rows_on[-1]), low.shape[0], H)
            cols = _column_window(*_window(int(cols_on[0]), int(cols_on[-1]), low.shape[1], W)[:2], W)
            values = _upsample_window(low, size, rows, cols)
            inside = values > 0
            flags = inside.view(torch.uint8)  # uint8 max is much faster than bool any on a CPU
            ys, xs = flags.amax(1).nonzero(), flags.amax(0).nonzero()
            if len(ys):
                wy0, wy1, wx0, wx1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
                inside, values = inside[wy0:wy1, wx0:wx1], values[wy0:wy1, wx0:wx1]
                y0, x0 = rows[0] + wy0, cols[0] + wx0
                box = (x0, y0, x0 + wx1 - wx0 - 1, y0 + wy1 - wy0 - 1)
                window = inside.numpy()
                region = (slice(y0, y0 + wy1 - wy0), slice(x0, x0 + wx1 - wx0))
                best_here, labels_here = best[region], labels[region]
                # strictly greater: on a tie the lower id (visited first) keeps the pixel, as argmax would
                wins = values > best_here
                torch.maximum(best_here, values, out=best_here)
                # ids come in ascending order, so a pixel's new winner always has the larger id
                torch.maximum(labels_here, wins.to(torch.int32).mul_(obj_id), out=labels_here)
        objects[obj_id] = ObjectResult(obj_id, scores[i], box, size, window, logits)
    return labels.numpy().astype(np.uint16), objects


def compose_dense(
    low_res: torch.Tensor, obj_ids: list[int], scores: torch.Tensor, size: tuple[int, int]
) -> tuple[np.ndarray, dict[int, ObjectResult]]:
    """The same as `compose_sparse`, by whole-frame tensor operations and one device-to-host copy."""
    H, W = size
    n = len(obj_ids)
    logits = upsample(low_res, size)[:, 0]  # (N, H, W)
    masks = logits > 0
    ids = torch.tensor(obj_ids, dtype=torch.int32, device=low_res.device)
    winner = torch.where(masks, logits, float("-inf")).argmax(0)  # argmax keeps the first (lowest id) on ties
    labels = torch.where(masks.any(0), ids[winner], 0).to(torch.int16)  # id bits; read back as uint16
    rows, cols = masks.any(2), masks.any(1)  # (N, H), (N, W)
    ar_h = torch.arange(H, device=low_res.device)
    ar_w = torch.arange(W, device=low_res.device)
    big = max(H, W)
    boxes = torch.stack(
        [
            torch.where(cols, ar_w, big).amin(1),
            torch.where(rows, ar_h, big).amin(1),
            torch.where(cols, ar_w, -1).amax(1),
            torch.where(rows, ar_h, -1).amax(1),
        ],
        dim=1,
    ).to(torch.float32)
    stats = torch.cat([boxes, scores.float().reshape(n, 1)], dim=1)  # (N, 5)
    packed = torch.cat(
        [stats.reshape(-1).view(torch.uint8), labels.reshape(-1).view(torch.uint8), masks.reshape(-1).view(torch.uint8)]
    ).cpu()  # the one transfer
    host = packed.numpy()
    k = n * 5 * 4
    stats_h = host[:k].view(np.float32).reshape(n, 5)
    labels_h = host[k : k + 2 * H * W].view(np.uint16).reshape(H, W)
    masks_h = host[k + 2 * H * W :].view(np.bool_).reshape(n, H, W)
    objects = {}
    for i, obj_id in enumerate(obj_ids):
        x0, y0, x1, y1 = (int(v) for v in stats_h[i, :4])
        box = None if x1 < 0 else (x0, y0, x1, y1)
        window = None if box is None else masks_h[i, y0 : y1 + 1, x0 : x1 + 1].copy()  # frees the buffer
        logits_fn = _logits_of(low_res[i : i + 1], size)
        objects[obj_id] = ObjectResult(obj_id, float(stats_h[i, 4]), box, size, window, logits_fn)
    return labels_h.copy(), objects


__all__ = ["compose_dense", "compose_sparse", "separable_upsampling_is_exact", "upsample"]
