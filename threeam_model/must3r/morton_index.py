"""The keyframe coverage test's index on a CPU: memory points sorted by (direction bin, Morton code), compiled loops.

The same keys and the same exact search as `coverage.GridIndex` (read its docstring), here as numba loops over host
arrays instead of batched torch ops, plus one thing the score allows: it reads one percentile of the distances
divided by depth, so only the queries that can decide that percentile need an exact nearest point.

- Update: the new image's points are keyed and sorted, then merged into the sorted arrays in one pass that also
  drops the evicted images (linear in the points; no tree is rebuilt). Versions are immutable, like the other
  indexes: each update writes new arrays.
- Query, exact: queries run in key order (each search starts near the last one's answer); a first bound from the
  key-order neighbours of the query's position and from the previous query's nearest point, then depth first
  through the cells the ball of the bound reaches, nearest child first, a cell split while it holds more than
  SPLIT_AT points. Distances in float64 from the stored float32 points, as scipy computes them: bit for bit.
- Query, ranked (`keyframes.Ranked`: the scale each distance is divided by, and the percentile): the bound of
  every query first (cheap), then exact answers for the largest bounds until the top (100 - percentile)% of the
  exact values is known to hold every query left out (each has a bound below the smallest of them). Those keep
  their bound, an upper bound that ranks below the percentile, so the two order statistics the score interpolates,
  and hence the score, are those of the exact distances. (Measured at 512x384, 32 memory images: about a third of
  the queries need the exact search.)

numba compiles the loops on first use (about 5 s) and caches them on disk.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .coverage import LEVEL0_PER_EXTENT, direction_bin, key_axis_bits

try:
    import numba
except ImportError:  # the index is then unavailable; keyframes.coverage_index falls back to the KD-tree
    numba = None

SPLIT_AT = 64  # a visited cell holding more points than this is split into its children (measured: 16-128 similar)
NEIGHBOURS = 16  # key-order neighbours on each side that give the first bound
SLACK = 1 + 1e-6  # a cell is skipped only when its box is farther than this times the bound (rounding of the box)
FIRST_ROUND = 1.25  # ranked queries: the first round answers this times the needed count, by largest bound


def available() -> bool:
    """Whether numba (and so this index) can be used."""
    return numba is not None


def _jit(fn):
    return numba.njit(cache=True, nogil=True)(fn) if numba is not None else fn


def _inline(fn):
    return numba.njit(inline="always", nogil=True)(fn) if numba is not None else fn


# ----------------------------------------------------------------------------------------------------- kernels
@_inline
def _spread(v):
    v &= 0x1FFFFF
    v = (v | (v << 32)) & 0x1F00000000FFFF
    v = (v | (v << 16)) & 0x1F0000FF0000FF
    v = (v | (v << 8)) & 0x100F00F00F00F00F
    v = (v | (v << 4)) & 0x10C30C30C30C30C3
    return (v | (v << 2)) & 0x1249249249249249


@_inline
def _morton(x, y, z):
    return _spread(x) | (_spread(y) << 1) | (_spread(z) << 2)


@_inline
def _lower(keys, t, lo, hi):
    """First index in [lo, hi) whose key is >= t (hi if none)."""
    while lo < hi:
        m = (lo + hi) >> 1
        if keys[m] < t:
            lo = m + 1
        else:
            hi = m
    return lo


@_inline
def _gallop(keys, t, start, lo, hi):
    """`_lower(keys, t, lo, hi)` searched outward from `start`: a few steps when the answer is near."""
    start = min(max(start, lo), hi)
    if start < hi and keys[start] < t:
        a, step = start + 1, 1
        while True:
            b = start + step
            if b >= hi:
                b = hi
                break
            if keys[b] >= t:
                break
            a = b + 1
            step <<= 1
        return _lower(keys, t, a, b)
    b, step = start, 1
    while True:
        a = start - step
        if a < lo:
            a = lo
            break
        if keys[a] < t:
            a += 1
            break
        b = a
        step <<= 1
    return _lower(keys, t, a, b)


@_inline
def _box_d2(cx, cy, cz, level, qc, top):
    """Squared distance, in level-0 cells, from coordinates qc to a cell of `level` (border cells reach to
    infinity: the points clamped into them may lie anywhere beyond)."""
    size = float(1 << level)
    d2 = 0.0
    for ax in range(3):
        c = cx if ax == 0 else (cy if ax == 1 else cz)
        lo = c * size
        gap = 0.0
        if c > 0 and qc[ax] < lo:
            gap = lo - qc[ax]
        elif c < top and qc[ax] > lo + size:
            gap = qc[ax] - lo - size
        d2 += gap * gap
    return d2


@_inline
def _d2(xyz, j, q, i):
    d = 0.0
    for ax in range(3):
        t = np.float64(xyz[j, ax]) - np.float64(q[i, ax])
        d += t * t
    return d


@_jit
def _cell_keys(xyz, bins, origin, cell, axis_bits):
    """Key of each point: its bin in the high bits, the Morton code of its level-0 cell (clamped) below."""
    max_cell = (1 << axis_bits) - 1
    out = np.empty(xyz.shape[0], np.int64)
    for i in range(xyz.shape[0]):
        c0 = min(max(math.floor((np.float64(xyz[i, 0]) - origin[0]) / cell), 0), max_cell)
        c1 = min(max(math.floor((np.float64(xyz[i, 1]) - origin[1]) / cell), 0), max_cell)
        c2 = min(max(math.floor((np.float64(xyz[i, 2]) - origin[2]) / cell), 0), max_cell)
        out[i] = (np.int64(bins[i]) << (3 * axis_bits)) + _morton(np.int64(c0), np.int64(c1), np.int64(c2))
    return out


@_jit
def _merge(keys, xyz, slots, dropped, kept, new_keys, new_xyz, new_slot):
    """The sorted arrays without the points of the `dropped` slots (`kept` remain), with the sorted new points
    merged in (before the old ones on equal keys). Branch-free copies: a dropped point is written and then
    overwritten, so the arrays have one spare entry."""
    n, m = keys.shape[0], new_keys.shape[0]
    out_keys = np.empty(kept + m + 1, np.int64)
    out_xyz = np.empty((kept + m + 1, 3), np.float32)
    out_slots = np.empty(kept + m + 1, np.int16)
    i = w = 0
    for j in range(m + 1):
        stop = _gallop(keys, new_keys[j], i, i, n) if j < m else n
        for t in range(i, stop):
            s = slots[t]
            out_keys[w] = keys[t]
            out_xyz[w, 0] = xyz[t, 0]
            out_xyz[w, 1] = xyz[t, 1]
            out_xyz[w, 2] = xyz[t, 2]
            out_slots[w] = s
            w += 1 - dropped[s]
        i = stop
        if j < m:
            out_keys[w] = new_keys[j]
            out_xyz[w, 0] = new_xyz[j, 0]
            out_xyz[w, 1] = new_xyz[j, 1]
            out_xyz[w, 2] = new_xyz[j, 2]
            out_slots[w] = new_slot
            w += 1
    return out_keys[:w], out_xyz[:w], out_slots[:w]


@_jit
def _nearest(keys, xyz, q, qbins, qkeys, rows, origin, cell, axis_bits, num_bins, exact, split_at, out):
    """out[r] = squared distance from query r to the nearest point of its bin, for r in `rows` (in that order);
    inf where the bin is empty. With exact False, the first bound only (an upper bound)."""
    shift = 3 * axis_bits
    max_cell = (1 << axis_bits) - 1
    n = keys.shape[0]
    bin_lo = np.empty(num_bins + 1, np.int64)
    for b in range(num_bins + 1):
        bin_lo[b] = _lower(keys, np.int64(b) << shift, 0, n)
    depth = 8 * (axis_bits + 2)  # the stack: at most 8 cells pending per level, plus the first block
    s_lv = np.empty(depth, np.int64)
    s_c = np.empty((depth, 3), np.int64)
    s_lo = np.empty(depth, np.int64)
    s_hi = np.empty(depth, np.int64)
    qc = np.empty(3)
    ch_d = np.empty(8)
    ch_k = np.empty(8, np.int64)
    ch_lo = np.empty(9, np.int64)
    cl = np.empty(3, np.int64)
    step = np.empty(3, np.int64)
    pos = 0
    prev = -1
    c2 = cell * cell
    for r in rows:
        b = qbins[r]
        if b < 0 or b >= num_bins or bin_lo[b] == bin_lo[b + 1]:
            out[r] = np.inf
            continue
        blo, bhi = bin_lo[b], bin_lo[b + 1]
        base = np.int64(b) << shift
        pos = _gallop(keys, qkeys[r], pos, blo, bhi)
        best, found = np.inf, -1
        for j in range(max(blo, pos - NEIGHBOURS), min(bhi, pos + NEIGHBOURS)):
            d = _d2(xyz, j, q, r)
            if d < best:
                best, found = d, j
        if blo <= prev < bhi:  # the previous query's nearest point and its key-order neighbours
            for j in range(max(blo, prev - 2), min(bhi, prev + 3)):
                d = _d2(xyz, j, q, r)
                if d < best:
                    best, found = d, j
        if exact:
            for ax in range(3):
                qc[ax] = (np.float64(q[r, ax]) - origin[ax]) / cell
            # the level whose cells are at least twice the bound: the ball lies in the 2x2x2 block around q
            radius = math.sqrt(best) * SLACK / cell
            level = 0
            while level < axis_bits and float(1 << level) < 2.0 * radius:
                level += 1
            top = max_cell >> level
            for ax in range(3):
                c = min(max(math.floor(qc[ax]), 0), max_cell) >> level
                cl[ax] = c
                step[ax] = 1 if qc[ax] / float(1 << level) - c >= 0.5 else -1
            sp = 0
            for o in range(8):
                cx = cl[0] + (step[0] if o & 1 else 0)
                cy = cl[1] + (step[1] if o & 2 else 0)
                cz = cl[2] + (step[2] if o & 4 else 0)
                if min(cx, cy, cz) < 0 or max(cx, cy, cz) > top:
                    continue
                if _box_d2(cx, cy, cz, level, qc, top) * c2 > best * SLACK:
                    continue
                lo_key = base + (_morton(cx, cy, cz) << (3 * level))
                lo = _gallop(keys, lo_key, pos, blo, bhi)
                hi = _gallop(keys, lo_key + (np.int64(1) << (3 * level)), lo, blo, bhi)
                if hi > lo:
                    s_lv[sp], s_lo[sp], s_hi[sp] = level, lo, hi
                    s_c[sp, 0], s_c[sp, 1], s_c[sp, 2] = cx, cy, cz
                    sp += 1
            while sp > 0:
                sp -= 1
                lv, lo, hi = s_lv[sp], s_lo[sp], s_hi[sp]
                cx, cy, cz = s_c[sp, 0], s_c[sp, 1], s_c[sp, 2]
                if _box_d2(cx, cy, cz, lv, qc, max_cell >> lv) * c2 > best * SLACK:
                    continue  # the bound shrank since this cell was pushed
                if hi - lo <= split_at or lv == 0:
                    for j in range(lo, hi):
                        d = _d2(xyz, j, q, r)
                        if d < best:
                            best, found = d, j
                    continue
                # the eight children partition [lo, hi) in key order
                first = base + (_morton(cx, cy, cz) << (3 * lv))
                child = np.int64(1) << (3 * (lv - 1))
                ch_lo[0], ch_lo[8] = lo, hi
                for k in range(1, 8):
                    ch_lo[k] = _lower(keys, first + k * child, ch_lo[k - 1], hi)
                top = max_cell >> (lv - 1)
                count = 0
                for k in range(8):
                    if ch_lo[k + 1] > ch_lo[k]:
                        dd = _box_d2(2 * cx + (k & 1), 2 * cy + ((k >> 1) & 1), 2 * cz + (k >> 2), lv - 1, qc, top)
                        if dd * c2 <= best * SLACK:
                            # keep them sorted by decreasing distance: the nearest is pushed last, popped first
                            a = count
                            while a > 0 and ch_d[a - 1] < dd:
                                ch_d[a], ch_k[a] = ch_d[a - 1], ch_k[a - 1]
                                a -= 1
                            ch_d[a], ch_k[a] = dd, k
                            count += 1
                for a in range(count):
                    k = ch_k[a]
                    s_lv[sp], s_lo[sp], s_hi[sp] = lv - 1, ch_lo[k], ch_lo[k + 1]
                    s_c[sp, 0], s_c[sp, 1], s_c[sp, 2] = 2 * cx + (k & 1), 2 * cy + ((k >> 1) & 1), 2 * cz + (k >> 2)
                    sp += 1
        out[r] = best
        prev = found


# ------------------------------------------------------------------------------------------------------- index
class MortonIndex:
    """The CoverageIndex of a CPU stream (see the module docstring); answers equal to `keyframes.KDTreeIndex`.

    Immutable: `updated` returns a new index. Images get small slots (reused after eviction), so the arrays'
    slot ids stay bounded on a stream of any length."""

    on_host = True

    def __init__(self, quadrant_divider: int = 2, _state=None):
        if numba is None:
            raise ImportError("the Morton coverage index needs numba (pip install numba); or use coverage='kdtree'")
        self.q = quadrant_divider
        self.num_bins = 2 * quadrant_divider**2
        self.axis_bits = key_axis_bits(self.num_bins)
        if _state is None:
            _state = (np.zeros(0, np.int64), np.zeros((0, 3), np.float32), np.zeros(0, np.int16), {}, None)
        # sorted keys, their points and slots; image id -> (slot, points); (origin (3,), level-0 cell) float64
        self.keys, self.xyz, self.slots, self.images, self.grid = _state
        self._last = None  # see _prepared

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_points(self) -> int:
        return int(self.keys.shape[0])

    def _bins(self, pts: np.ndarray, cam_center: torch.Tensor) -> np.ndarray:
        return direction_bin(pts - cam_center.detach().float().cpu().numpy()[None], self.q)

    def _make_grid(self, pts: np.ndarray) -> tuple[np.ndarray, float]:
        lo, hi = pts.min(0).astype(np.float64), pts.max(0).astype(np.float64)
        extent = float((hi - lo).max())
        cell = (extent if math.isfinite(extent) and extent > 0 else 1.0) / LEVEL0_PER_EXTENT
        return (lo + hi) / 2 - cell * (1 << (self.axis_bits - 1)), cell

    def updated(self, add=(), drop=()) -> MortonIndex:
        drop = [i for i in drop if i in self.images]
        images = {k: v for k, v in self.images.items() if k not in drop}
        keys, xyz, slots, grid = self.keys, self.xyz, self.slots, self.grid
        size = max((s for s, _ in self.images.values()), default=-1) + 1 + len(add)  # slots stay below this
        free = sorted(set(range(size)) - {s for s, _ in images.values()})
        dropped = np.zeros(size, np.bool_)
        for image in drop:
            dropped[self.images[image][0]] = True
        kept = len(keys) - sum(self.images[i][1] for i in drop)  # what the first merge keeps
        for image, pts, valid, cam_center in add:
            if image in images:
                raise ValueError(f"image {image} is already indexed")
            if grid is None:
                first = pts.detach().float().cpu().numpy().reshape(-1, 3)[valid.detach().cpu().numpy().reshape(-1)]
                grid = self._make_grid(first) if len(first) else None
            slot = free.pop(0)
            if grid is None:
                images[image] = (slot, 0)
                continue
            pts_np, _, pts_keys, rows = self._prepared(pts, valid, cam_center, grid)
            images[image] = (slot, len(rows))
            keys, xyz, slots = _merge(keys, xyz, slots, dropped, kept, pts_keys[rows], pts_np[rows], slot)
            dropped[:] = False  # dropped once
            kept = len(keys)
        if dropped.any():
            keys, xyz, slots = _merge(keys, xyz, slots, dropped, kept, keys[:0], xyz[:0], 0)
        return MortonIndex(self.q, (keys, xyz, slots, images, grid))

    def _prepared(self, pts, valid, cam_center, grid):
        """Points (M, 3) float32, bins (-1 where not valid), keys, and the valid rows in key order.

        A frame's points are queried and then added: the last query's are kept and reused when the same tensors
        come to `updated` (a cache of a pure function of them, on an index whose arrays never change)."""
        last = self._last
        if last is not None and last[0] is pts and last[1] is valid and last[2] is cam_center and last[3] is grid:
            return last[4]
        pts_np = np.ascontiguousarray(pts.detach().float().cpu().numpy().reshape(-1, 3))
        rows = np.flatnonzero(valid.detach().cpu().numpy().reshape(-1))
        bins = np.full(len(pts_np), -1, np.int64)
        bins[rows] = self._bins(pts_np[rows], cam_center)
        keys = _cell_keys(pts_np, np.maximum(bins, 0), grid[0], grid[1], self.axis_bits)
        prepared = (pts_np, bins, keys, rows[np.argsort(keys[rows])])
        self._last = (pts, valid, cam_center, grid, prepared)
        return prepared

    def nearest(self, pts: torch.Tensor, valid: torch.Tensor, cam_center: torch.Tensor, ranked=None):
        d2 = np.full(pts.reshape(-1, 3).shape[0], np.inf)
        if self.grid is not None and self.num_points:
            # in key order, each search starts near the last one's answer
            pts_np, bins, qkeys, rows = self._prepared(pts, valid, cam_center, self.grid)
            args = (self.keys, self.xyz, pts_np, bins, qkeys)
            grid = (self.grid[0], self.grid[1], self.axis_bits, self.num_bins)
            if ranked is None:
                _nearest(*args, rows, *grid, True, SPLIT_AT, d2)
            elif len(rows):
                self._ranked(args, grid, rows, d2, ranked)
        return torch.from_numpy(np.sqrt(d2)).to(pts.device), None, None

    @staticmethod
    def _ranked(args, grid, rows, d2, ranked) -> None:
        """d2 exact where the percentile of sqrt(d2) / scale over `rows` depends on it, an upper bound elsewhere."""
        _nearest(*args, rows, *grid, False, SPLIT_AT, d2)  # bounds of all
        scale = ranked.scale.detach().double().cpu().numpy().reshape(-1)[rows]
        n = len(rows)
        top = n - int(math.floor((n - 1) * (ranked.percentile / 100.0)))  # the top-th, (top-1)-th largest are read
        norm = np.sqrt(d2[rows]) / scale
        # a bound on the distance bounds the ratio only where the scale is positive: the others are answered
        key = np.where((scale > 0) & np.isfinite(scale), norm, np.inf)
        done = max(min(n, int(math.ceil(top * FIRST_ROUND)) + 16), int((key == np.inf).sum()))
        order = np.argpartition(-key, done - 1) if done < n else np.arange(n)  # the `done` largest first
        first = np.sort(order[:done])  # positions in `rows`, which is in key order
        _nearest(*args, rows[first], *grid, True, SPLIT_AT, d2)
        exact = np.sqrt(d2[rows[order[:done]]]) / scale[order[:done]]
        # the top-th largest exact value: a query left out whose bound ranks below it ranks below it
        floor = np.partition(exact, done - top)[done - top]
        more = order[done:][~(key[order[done:]] < floor)]  # (all of them if floor is nan)
        if len(more):  # their bounds reach the top: answer them too (every bound left is then below the top)
            _nearest(*args, rows[np.sort(more)], *grid, True, SPLIT_AT, d2)

    def nearest_exact(self, pts, valid, cam_center, distances, unresolved) -> torch.Tensor:
        return distances

    def learn(self, needed: list[float]) -> None:
        pass
