"""Frame results from all objects' low-resolution logits, composed where the model runs.

The masks, boxes, scores and label image of every object come out of one pass over the stacked low-res logits
(N, 1, h, w); full-resolution float logits are made only when a caller reads `ObjectResult.mask_logits`.

Two ways to the same masks:
- `dense` (on a GPU): one bilinear upsampling of all objects, the label image by one argmax, boxes by reductions,
  and one device-to-host copy of a packed buffer.
- `sparse` (on a CPU, where the frame-size work of every object is the cost), itself in one of two ways, whichever
  costs less for the frame's masks (`_lines_pay`):
  - windows (`compose_windows`, masks of object size): a pixel of a bilinear upsampling is a convex combination of
    at most 4 low-res cells, so it can be positive only next to a positive cell. Each object is upsampled only
    over the window around its positive cells, in two passes that equal torch's upsampling bit for bit: torch's
    CPU bilinear kernel is separable (width, then height, in float32) and a pass whose size does not change is the
    identity, so rows outside the window can be left out of the width pass and columns (in whole vector blocks)
    out of the height pass. `separable_upsampling_is_exact` checks that property of the running torch build for
    the stream's sizes; the engine uses `dense` where it does not hold.
  - line segments (`_compose_lines`, many large overlapping masks): the height pass's value per pixel is known
    as a float32 formula of two width-pass rows (`height_formula_is_exact` checks it per sizes, else windows), so
    the label image and the boxes come from per-column line segments with proven margins, a few pixels computed
    exactly, and the masks are made on first access (see the section below).
  Frame-size work is then one fill of the label image, whatever the number of objects.
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


# ----------------------------------------------------------------------------- the height pass as line segments
#
# torch's CPU height pass makes output row y from two rows a = wide[r0(y)], b = wide[r1(y)] of the width pass as
# fma(a, l0(y), fl(b * l1(y))) in float32 (measured, not documented; `height_formula_is_exact` checks it for each
# stream's sizes). So within the rows that read the same pair of low-res rows (a "segment", one per r0), each
# column of an object is a line a + t (b - a) in t = l1(y), which the kernel's value follows to a few ulps of
# max(|a|, |b|) (`_MARGIN`). The label image of many overlapping objects then needs no full-size value per object:
# per segment and column, the upper envelope of the objects' lines (and the background's, 0) says which object wins
# on which rows; a row is proven when the winner beats every other line there by more than both lines' margins
# (or it dominates a higher id exactly: the kernel's value is monotone in a and b). The few rows next to a change
# of winner that the margins cannot prove are computed exactly (`_height_values`). Boxes come the same way: a
# line's positive rows are one interval, proven by margins, and only rows or columns at a box edge that the
# margins leave open are computed exactly. Objects whose logits equal a lower id's everywhere never win a pixel
# (equal values, the lower id first), so they take no part in the label image.
#
# The margin: with m = max(|a|, |b|) and u = 2**-24, |fma(a, l0, fl(b l1)) - (a l0 + b l1)| <= u |b| l1 +
# u |a l0 + fl(b l1)| <= 2.01 u m (weights in [0, 1], l0 + l1 <= 1 + 2**-22), and |a l0 + b l1 - (a + l1 (b - a))|
# = |a| |l0 + l1 - 1| <= 2**-22 m (both checked in `_RowPlan`): 1.5 * 2**-22 m in all, 0.375 of `_MARGIN` m; the
# rest covers the float64 rounding of the line arithmetic.

_MARGIN = 2.0**-20  # per unit of max(|a|, |b|): > 2.7x the kernel's distance from the line (2 roundings, l0+l1-1)
_TINY = 2.0**-140  # absolute slack for subnormal roundings


class _RowPlan:
    """The height pass's row structure for one (h -> H): per output row the two low-res rows it reads and their
    float32 weights, measured on the kernel (one-hot inputs), and the segments (rows with the same first row)."""

    def __init__(self, h: int, H: int):
        probe = torch.eye(h, dtype=torch.float32)[:, None, :, None]
        wts = F.interpolate(probe, size=(H, 1), mode="bilinear", align_corners=False)[:, 0, :, 0].T  # (H, h)
        reads = wts != 0
        n_reads = reads.sum(1)
        r0 = reads.to(torch.uint8).argmax(1)
        two = n_reads == 2
        r1 = torch.where(two, r0 + 1, (r0 + 1).clamp(max=h - 1))
        l0 = wts.gather(1, r0[:, None])[:, 0]
        l1 = torch.where(two, wts.gather(1, r1[:, None])[:, 0], 0.0)
        self.valid = bool(
            ((n_reads == 1) | two).all()
            and (~two | reads.gather(1, r1[:, None])[:, 0]).all()  # the two reads are adjacent rows
            and (r0[1:] >= r0[:-1]).all()
            and ((l0 >= 0) & (l0 <= 1) & (l1 >= 0) & (l1 < 1)).all()
            and ((l0.double() + l1.double() - 1).abs() <= 2.0**-22).all()
        )
        keys = r0.double() + l1.double()  # row y's (segment, t): non-decreasing in y
        self.valid = self.valid and bool((keys[1:] >= keys[:-1]).all())
        self.r0, self.r1, self.l0, self.l1, self.keys = r0, r1, l0, l1, keys
        counts = torch.bincount(r0, minlength=h)
        self.seg_end = counts.cumsum(0)
        self.seg_start = self.seg_end - counts
        self.nonempty = counts > 0
        first = self.seg_start.clamp(max=H - 1)
        last = (self.seg_end - 1).clamp(min=0)
        self.t_first, self.t_last = l1[first].double(), l1[last].double()


@functools.lru_cache(maxsize=32)
def _row_plan(h: int, H: int) -> _RowPlan:
    return _RowPlan(h, H)


def _height_values(a: torch.Tensor, b: torch.Tensor, l0: torch.Tensor, l1: torch.Tensor) -> torch.Tensor:
    """fma(a, l0, fl(b * l1)) in float32, bit for bit: the sum is taken in float64 (a * l0 is exact there) and
    rounded to float32; that second rounding differs from one rounding only when the float64 sum is inexact and
    lies on a float32 midpoint, which is then resolved by the sum's exact error (TwoSum)."""
    q = (b * l1).double()
    p = a.double() * l0.double()
    s = p + q
    r = s.float()
    back = s - p
    err = (p - (s - back)) + (q - back)
    rd = r.double()
    other = torch.nextafter(r, torch.where(s > rd, torch.inf, -torch.inf).float())
    od = other.double()
    fix = (err != 0) & (s == (rd + od) * 0.5) & ((err > 0) == (od > rd))
    return torch.where(fix, other, r)


def _width_pass(low_res: torch.Tensor, W: int) -> torch.Tensor:
    """(N, 1, h, w) -> (N, h, W): the width pass of `upsample` (height unchanged: identity)."""
    return F.interpolate(low_res, size=(low_res.shape[-2], W), mode="bilinear", align_corners=False)[:, 0]


def _rows_exact(wide: torch.Tensor, plan: _RowPlan, ys: torch.Tensor) -> torch.Tensor:
    """Exact upsampled values of whole rows ys of (..., h, W) width-pass maps: (..., len(ys), W)."""
    return _height_values(wide[..., plan.r0[ys], :], wide[..., plan.r1[ys], :], plan.l0[ys, None], plan.l1[ys, None])


@functools.lru_cache(maxsize=32)
def height_formula_is_exact(low_size: tuple[int, int], size: tuple[int, int]) -> bool:
    """Does `_height_values` over `_RowPlan`'s rows, on the width pass, equal `upsample` bit for bit for these sizes
    on this torch build (CPU)? Checked on random maps of widely varying magnitudes, signs and exact zeros."""
    (h, w), (H, W) = low_size, size
    plan = _row_plan(h, H)
    if not plan.valid:
        return False
    g = torch.Generator().manual_seed(1)
    low = torch.randn(3, 1, h, w, generator=g) * torch.exp(3 * torch.randn(3, 1, h, 1, generator=g))
    low[2] = (torch.randn(h, w, generator=g) * 8).round() / 8  # few-bit values: exact ties and zeros
    full = upsample(low, size)[:, 0]
    got = _rows_exact(_width_pass(low, W), plan, torch.arange(H))
    return torch.equal(got, full)


def _segment_rows(A, S, theta, on, plan: _RowPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """For lines g(t) = A + t S (D, P, W) of segment p where `on` says g > theta at one end of the segment: per
    object the first and the last row where some such line has g > theta (rows outside are g <= theta), (D,) each;
    H and -1 for none. A rising line's rows start after its root, a falling one's end before it, so per segment only
    the extreme roots count."""
    D, P, _ = A.shape
    H = len(plan.keys)
    p = torch.arange(P).view(1, P)
    s0, s1 = plan.seg_start.view(1, P), plan.seg_end.view(1, P)
    root = (theta - A) / torch.where(S == 0, 1.0, S)

    def rows(t, right):
        key = (p + t.clamp(-0.5, 1.5)).reshape(-1)
        return torch.searchsorted(plan.keys, key, right=right).view(D, P)

    # a line that is `on` has g > theta at its higher end, so a rising one's first row is at most the last row
    rise = torch.where(on & (S > 0), root, torch.inf).amin(2)
    first = torch.where((on & (S <= 0)).any(2), s0, torch.minimum(torch.maximum(rows(rise, True), s0), s1 - 1))
    fall = torch.where(on & (S < 0), root, -torch.inf).amax(2)
    last = torch.where((on & (S >= 0)).any(2), s1 - 1, torch.maximum(torch.minimum(rows(fall, False) - 1, s1 - 1), s0))
    seg_on = on.any(2)
    return torch.where(seg_on, first, H).amin(1), torch.where(seg_on, last, -1).amax(1)


def _edge(candidates: list[int], has_positive) -> int | None:
    """The first of `candidates` (rows or columns in search order) for which `has_positive` is true."""
    if not candidates:
        return None
    hits = has_positive(torch.tensor(candidates))
    return candidates[int(hits.to(torch.uint8).argmax())] if bool(hits.any()) else None


_EDGE_LIMIT = 8  # rows or columns at a box edge the margins may leave open before an object takes the window path


def _line_boxes(wide_d, A, S, eps, plan: _RowPlan, size) -> list:
    """Exact boxes of the distinct objects (D, P, W lines); None for an object whose box needs its whole window."""
    H, W = size
    D = A.shape[0]
    tF, tL = plan.t_first.view(1, -1, 1), plan.t_last.view(1, -1, 1)
    gmax = torch.maximum(A + tF * S, A + tL * S)
    gmax = torch.where(plan.nonempty.view(1, -1, 1), gmax, -torch.inf)
    sure, poss = gmax > eps, gmax > -eps  # some row surely positive / not every row surely negative
    y0s, y1s = _segment_rows(A, S, eps, sure, plan)
    y0p, y1p = _segment_rows(A, S, -eps, poss, plan)
    cols_s, cols_p = sure.any(1), poss.any(1)  # (D, W)
    boxes = []
    for d in range(D):
        if not bool(cols_p[d].any()):
            boxes.append(False)  # empty mask: proven
            continue
        if not bool(cols_s[d].any()):
            boxes.append(None)
            continue
        xs_s, xs_p = cols_s[d].nonzero()[:, 0], cols_p[d].nonzero()[:, 0]
        x0s, x1s, x0p, x1p = int(xs_s[0]), int(xs_s[-1]), int(xs_p[0]), int(xs_p[-1])
        a, b, c, e = int(y0s[d]), int(y1s[d]), int(y0p[d]), int(y1p[d])
        if max(a - c, e - b, x0s - x0p, x1p - x1s) > _EDGE_LIMIT:
            boxes.append(None)
            continue

        def rows_pos(ys, d=d):
            return (_rows_exact(wide_d[d], plan, ys) > 0).any(1)

        def cols_pos(xs, d=d):
            col = wide_d[d][:, xs]  # (h, k)
            return (_rows_exact(col, plan, torch.arange(H)) > 0).any(0)

        y0 = _edge(list(range(c, a)), rows_pos)
        y1 = _edge(list(range(e, b, -1)), rows_pos)
        x0 = _edge([x for x in range(x0p, x0s) if cols_p[d, x]], cols_pos)
        x1 = _edge([x for x in range(x1p, x1s, -1) if cols_p[d, x]], cols_pos)
        boxes.append(
            (x0s if x0 is None else x0, a if y0 is None else y0, x1s if x1 is None else x1, b if y1 is None else y1)
        )
    return boxes


def _first_max(x: torch.Tensor, largest: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of the max (or min) over dim 0 of a few rows, the first row on ties; a row at a time, which
    is several times faster than torch's reduction over a leading dim."""
    best, index = x[0].clone(), torch.zeros(x.shape[1:], dtype=torch.int64)
    for i in range(1, len(x)):
        better = x[i] > best if largest else x[i] < best
        best = torch.where(better, x[i], best)
        index.masked_fill_(better, i)
    return best, index


def _envelope(A, S, t_first, t_last):
    """Upper envelope of L lines g_l(t) = A[l] + t S[l] (L, M) over [t_first, t_last] (M,), ties to the lower
    index: pieces (problem, t_start, t_end, line), t_end = inf for a problem's last piece. Approximate (float64);
    the caller proves or recomputes every row."""
    out_m, out_t0, out_t1, out_w = [], [], [], []
    act = torch.arange(A.shape[1])
    t = t_first
    Aa, Sa = A, S
    g = Aa + t * Sa
    c = _first_max(g)[1]
    while True:
        gc, sc = g.gather(0, c[None]), Sa.gather(0, c[None])
        ds = Sa - sc
        dt = torch.where(ds > 0, (gc - g).clamp_(min=0) / ds, torch.inf)
        step, nxt = _first_max(dt, largest=False)
        t_new = t + step
        more = t_new <= t_last[act]
        out_m.append(act)
        out_t0.append(t)
        out_t1.append(torch.where(more, t_new, torch.inf))
        out_w.append(c)
        if not bool(more.any()):
            break
        act, t, c = act[more], t_new[more], nxt[more]
        Aa, Sa = A[:, act], S[:, act]
        g = Aa + t * Sa
    return torch.cat(out_m), torch.cat(out_t0), torch.cat(out_t1), torch.cat(out_w)


def _line_labels(wide_d, ids_d, A, B, S, eps, plan: _RowPlan, size, limit: int):
    """The label image (H, W) uint16 from the distinct objects' lines (D, P, W), or None when more than `limit`
    pixels would need exact values."""
    H, W = size
    D, P, _ = A.shape
    zeros = A.new_zeros(1, P, W)
    AL, BL, SL = torch.cat([zeros, A]), torch.cat([zeros, B]), torch.cat([zeros, S])
    EL = torch.cat([zeros, eps])
    active = (AL > 0) | (BL > 0)  # a line with a <= 0 and b <= 0 never beats the background (monotone)
    active[0] = True
    live = (active[1:].any(0) & plan.nonempty.view(P, 1)).reshape(-1)
    idx = live.nonzero()[:, 0]  # problems (p, x) with a possibly positive object; the rest are background
    L = D + 1
    if len(idx) == 0:
        return np.zeros(size, np.uint16)
    flat = lambda v: v.reshape(L, -1)[:, idx]  # noqa: E731
    Ac, Bc, Sc, Ec, act_c = flat(AL), flat(BL), flat(SL), flat(EL), flat(active)
    p_of = idx // W
    x_of = idx % W
    m, t0, t1, w = _envelope(
        torch.where(act_c, Ac, -1e30), torch.where(act_c, Sc, 0.0), plan.t_first[p_of], plan.t_last[p_of]
    )
    p, x = p_of[m], x_of[m]
    s0, s1 = plan.seg_start[p], plan.seg_end[p]

    def rows_at(t, right):
        key = (p + t.clamp(-0.5, 1.5)).contiguous()
        return torch.searchsorted(plan.keys, key, right=right)

    ya = torch.maximum(torch.minimum(rows_at(t0, False), s1), s0)
    yb = torch.where(torch.isinf(t1), s1, torch.maximum(torch.minimum(rows_at(t1, False), s1), ya))
    keep = yb > ya
    m, w, p, x, ya, yb = m[keep], w[keep], p[keep], x[keep], ya[keep], yb[keep]
    # proof of a row: for every other live line n, winner - n > both margins there (linear in t, so the proven
    # rows are one interval [yl, yh)), unless the winner dominates n exactly at both ends and has the lower id
    Ap, Bp, Sp, Ep, actp = Ac[:, m], Bc[:, m], Sc[:, m], Ec[:, m], act_c[:, m]
    wi = w[None]
    dA = Ap.gather(0, wi) - Ap
    dS = Sp.gather(0, wi) - Sp
    E = Ep.gather(0, wi) + Ep
    n = torch.arange(L).view(L, 1)
    skip = ~actp | (n == wi) | ((n > wi) & (Ap.gather(0, wi) >= Ap) & (Bp.gather(0, wi) >= Bp))
    bound = (E - dA) / torch.where(dS == 0, 1.0, dS)
    lo = torch.where(skip | (dS <= 0), -torch.inf, bound).amax(0)
    hi = torch.where(skip | (dS >= 0), torch.inf, bound).amin(0)
    flat_bad = (~skip & (dS == 0) & (dA <= E)).any(0)
    lo = torch.where(flat_bad, torch.inf, lo)
    yl = torch.maximum(torch.minimum(rows_at(lo, True), yb), ya)  # first proven row
    yh = torch.maximum(torch.minimum(rows_at(hi, False), yb), yl)  # end of the proven rows
    starts = torch.cat([ya, yh])
    counts = torch.cat([yl - ya, yb - yh])
    total = int(counts.sum())
    if total > limit:
        return None
    # fill every piece with its winner, then recompute the unproven rows exactly
    lab = torch.cat([torch.zeros(1, dtype=torch.int32), ids_d])[w]
    steps = torch.zeros((H + 1) * W, dtype=torch.int32)
    steps.index_put_((ya * W + x,), lab, accumulate=True)
    steps.index_put_((yb * W + x,), -lab, accumulate=True)
    # running sum down the columns, modulo 2**16 (ids are uint16), one row at a time (numpy's and torch's cumsum
    # along rows are several times slower)
    labels = steps.numpy().astype(np.uint16).reshape(H + 1, W)[:H]
    for y in range(1, H):
        np.add(labels[y], labels[y - 1], out=labels[y])
    if total:
        # an unproven row's winner is the piece's or one of the lines the margins did not beat on the whole piece
        # (winner - n > margins at both end rows holds on every row): only those are computed, in line order
        ends = torch.stack([plan.l1[ya], plan.l1[yb - 1]]).double()  # (2, K)
        beaten = ((dA[None] + ends[:, None] * dS[None]) > E[None]).all(0)
        cand = (n == wi) | ~(skip | beaten)
        order = torch.where(cand, n, L + n).sort(0).values
        order = order[: int(cand.sum(0).max())]  # (C, K) candidate lines, ascending; >= L: none
        piece = torch.arange(len(ya)).repeat(2).repeat_interleave(counts)
        cols = torch.cat([x, x]).repeat_interleave(counts)
        offsets = torch.arange(total) - (counts.cumsum(0) - counts).repeat_interleave(counts)
        rows = starts.repeat_interleave(counts) + offsets
        line = order[:, piece]  # (C, k)
        obj = (line - 1).clamp(0, D - 1)
        a = wide_d[obj, plan.r0[rows], cols]
        b = wide_d[obj, plan.r1[rows], cols]
        vals = _height_values(a, b, plan.l0[rows], plan.l1[rows])
        vals = torch.where(line == 0, 0.0, torch.where(line < L, vals, -torch.inf))  # the background is 0
        best = line.gather(0, _first_max(vals)[1][None])[0]  # the first (lowest id) of equal values wins
        lab_of = torch.cat([torch.zeros(1, dtype=torch.int32), ids_d])
        labels[rows.numpy(), cols.numpy()] = lab_of[best].numpy().astype(np.uint16)
    return labels


def _lazy_window(low: torch.Tensor, size: tuple[int, int], box: tuple[int, int, int, int]):
    """The mask inside an exact box, made on first access by the window path (`_upsample_window`)."""

    def window():
        x0, y0, x1, y1 = box
        h, w = low.shape
        first, last = _source_span(h, size[0])
        rows = (y0, y1 + 1, int(first[y0]), int(last[y1]) + 1)
        cols = _column_window(x0, x1 + 1, size[1])
        values = _upsample_window(low, size, rows, cols)
        return (values[:, x0 - cols[0] : x1 + 1 - cols[0]] > 0).numpy()

    return window


def _compose_lines(low_res, obj_ids, scores, size):
    """`compose_sparse` by line segments (see above): frame-size work is one fill of the label image, whatever the
    number of overlapping objects; masks are made on access. None where too many pixels need exact values."""
    H, W = size
    N = low_res.shape[0]
    wide = _width_pass(low_res, W)  # (N, h, W)
    h = wide.shape[1]
    # an object whose logits equal an earlier (lower id) one's has the same values everywhere: it never wins a pixel
    _, group = torch.unique(low_res.reshape(N, -1), dim=0, return_inverse=True)
    rep, seen = [], {}
    for i, g in enumerate(group.tolist()):
        rep.append(seen.setdefault(g, i))
    distinct = sorted(set(rep))
    wide_d = wide[distinct]
    A = wide_d.double()
    B = A[:, (torch.arange(h) + 1).clamp(max=h - 1)]
    S = B - A
    eps = torch.maximum(A.abs(), B.abs()) * _MARGIN + _TINY
    plan = _row_plan(h, H)
    ids_d = torch.tensor([obj_ids[i] for i in distinct], dtype=torch.int32)
    labels = _line_labels(wide_d, ids_d, A, B, S, eps, plan, size, limit=H * W // 8)
    if labels is None:
        return None
    boxes = _line_boxes(wide_d, A, S, eps, plan, size)
    objects = {}
    low = low_res[:, 0]
    for i, obj_id in enumerate(obj_ids):
        box = boxes[distinct.index(rep[i])]
        window = None
        if box is None:  # the margins left a box edge open: the window path decides
            box, window, _ = _window_values(low[i], size)
        elif box is False:
            box = None
        else:
            window = _lazy_window(low[i], size, box)
        objects[obj_id] = ObjectResult(obj_id, scores[i], box, size, window, _logits_of(low_res[i : i + 1], size))
    return labels, objects


def _reach(positive: torch.Tensor, size: tuple[int, int]):
    """The output rows and columns an (h, w) map's positive cells reach, as `_window` gives them ((o0, o1, i0, i1)
    each), or None when no cell is positive."""
    rows_on = positive.any(1).nonzero()
    if not len(rows_on):
        return None
    cols_on = positive.any(0).nonzero()
    (h, w), (H, W) = positive.shape, size
    return _window(int(rows_on[0]), int(rows_on[-1]), h, H), _window(int(cols_on[0]), int(cols_on[-1]), w, W)


def _window_values(low: torch.Tensor, size: tuple[int, int]):
    """(box, window, values inside the box) of one (h, w) map, or (None, None, None) for an empty mask."""
    reach = _reach(low > 0, size)
    if reach is None:
        return None, None, None
    rows, cols = reach[0], _column_window(*reach[1][:2], size[1])
    values = _upsample_window(low, size, rows, cols)
    inside = values > 0
    flags = inside.view(torch.uint8)  # uint8 max is much faster than bool any on a CPU
    ys, xs = flags.amax(1).nonzero(), flags.amax(0).nonzero()
    if not len(ys):
        return None, None, None
    wy0, wy1, wx0, wx1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
    y0, x0 = rows[0] + wy0, cols[0] + wx0
    box = (x0, y0, x0 + wx1 - wx0 - 1, y0 + wy1 - wy0 - 1)
    return box, inside[wy0:wy1, wx0:wx1].numpy(), values[wy0:wy1, wx0:wx1]


def _lines_pay(low_res: torch.Tensor, size: tuple[int, int]) -> bool:
    """Is the line-segment way cheaper than upsampling each object over its window? (The window way costs about
    its windows' pixels; the line way a few frame passes plus work per low-res row, column and object.)"""
    H, W = size
    n, _, h, _ = low_res.shape
    windows = 0
    for i in range(n):
        reach = _reach(low_res[i, 0] > 0, size)
        if reach is not None:
            (y0, y1, _, _), (x0, x1, _, _) = reach
            windows += (y1 - y0) * (x1 - x0)
    return windows > _LINES_FRAMES * H * W + _LINES_PER_CELL * n * h * W


_LINES_FRAMES = 1.0  # frames of window pixels the line way costs as fixed work (measured, tiny model, 1080p)
_LINES_PER_CELL = 16.0  # window pixels per (object, low-res row, frame column) of line work (measured)


def compose_sparse(
    low_res: torch.Tensor, obj_ids: list[int], scores: list[float], size: tuple[int, int]
) -> tuple[np.ndarray, dict[int, ObjectResult]]:
    """(label image (H, W) uint16, {obj_id: ObjectResult}) from low-res logits (N, 1, h, w) on the CPU.

    Takes the line-segment way where it is exact for these sizes (`height_formula_is_exact`) and cheaper
    (many large overlapping masks), else the window way."""
    if list(obj_ids) != sorted(obj_ids):
        raise ValueError("compose_sparse needs object ids in ascending order")
    low_res = low_res.float()
    if (
        len(obj_ids)
        and _lines_pay(low_res, size)
        and height_formula_is_exact(tuple(low_res.shape[-2:]), tuple(size))
        and bool(torch.isfinite(low_res).all())
    ):
        out = _compose_lines(low_res, obj_ids, scores, size)
        if out is not None:
            return out
    return compose_windows(low_res, obj_ids, scores, size)


def compose_windows(
    low_res: torch.Tensor, obj_ids: list[int], scores: list[float], size: tuple[int, int]
) -> tuple[np.ndarray, dict[int, ObjectResult]]:
    """`compose_sparse` by upsampling each object over the window around its positive cells."""
    if list(obj_ids) != sorted(obj_ids):
        raise ValueError("compose_sparse needs object ids in ascending order")
    low_res = low_res.float()
    labels = torch.zeros(size, dtype=torch.int32)
    # the winning logit per pixel, 0 where no object is: a pixel goes to an object whose logit beats it, which is
    # "inside the mask and higher than any earlier object" in one comparison
    best = torch.zeros(size)
    objects = {}
    for i, obj_id in enumerate(obj_ids):
        box, window, values = _window_values(low_res[i, 0], size)
        if box is not None:
            x0, y0, x1, y1 = box
            region = (slice(y0, y1 + 1), slice(x0, x1 + 1))
            best_here, labels_here = best[region], labels[region]
            # strictly greater: on a tie the lower id (visited first) keeps the pixel, as argmax would
            wins = values > best_here
            torch.maximum(best_here, values, out=best_here)
            # ids come in ascending order, so a pixel's new winner always has the larger id
            labels_here.masked_fill_(wins, obj_id)
        objects[obj_id] = ObjectResult(obj_id, scores[i], box, size, window, _logits_of(low_res[i : i + 1], size))
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


__all__ = [
    "compose_dense",
    "compose_sparse",
    "compose_windows",
    "height_formula_is_exact",
    "separable_upsampling_is_exact",
    "upsample",
]
