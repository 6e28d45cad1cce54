"""Nearest memory point per direction bin, exact, in torch on the stream's device, without host reads or rebuilds.

MUSt3R's keyframe test (keyframes.py) needs, for each confident point of a frame, the distance to the nearest point
of the memory frames in the same viewing-direction bin. The official code keeps one scipy KD-tree per bin and
rebuilds them from every memory point whenever a keyframe is added. `GridIndex` answers the same queries exactly
from one sorted array instead:

- Every point gets a key: its direction bin in the high bits, then the Morton code of its cell on a fixed grid
  (cells of size `cell` at level 0, 2^L times larger at level L). A cell of any level is then one contiguous run
  of the sorted keys, found by binary search. Invalid (low-confidence) points get a bin past the last one, so the
  arrays keep a fixed size per image and nothing depends on a count read from the device.
- Adding and evicting images merges the new keys into the sorted array and compacts the evicted ones away:
  linear in the points, no tree is rebuilt. The index is immutable (each update returns a new one), so the stream
  can prepare the update of a frame before it knows whether the frame becomes a keyframe.
- A query starts from an upper bound, the nearest of the points next to it in key order (Morton order keeps them
  close), and then visits exactly the cells that the ball of that radius reaches: the cells of the level whose size
  is at least twice the radius (the ball then lies inside the 2x2x2 block of cells around the point), each split
  into its eight children while it holds more points than it is worth reading, a child kept only if the ball
  (shrunk by what was found so far) still reaches it.

Two strategies follow the splits. `windowed` (for CUDA) reads a fixed window of points per cell and a fixed number
of split cells per round, so every size is known on the host and nothing synchronises; a query that needs more is
reported unresolved, and `nearest_exact` finishes those the `ragged` way, with data-dependent sizes.
Distances are float32 differences of the stored float32 points (relative error ~1e-7, no |a|^2 + |b|^2 - 2ab).
Points outside the grid (2^19 cells a side, 128 times the first image's extent) are clamped into the border
cells, which count as reaching to infinity: still exact, only slower.

On a CPU this is slower than scipy's compiled KD-tree queries (keyframes.KDTreeIndex), which the stream uses there.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

SPLIT_AT = 48  # ragged: a visited cell holding more points than this is split into its children (if it has any)
WINDOW = 128  # windowed: the most points read per cell; a cell holding more is split
LEVEL0_PER_EXTENT = 4096  # the first image's extent spans this many level-0 cells
_NEIGHBOURS = 2  # key-order neighbours on each side that give the first upper bound
WINDOWS = (8, 16, 32, 64, WINDOW)  # the window sizes a budget chooses from (8 * 2^k, see _windows_on)


@dataclasses.dataclass
class WindowBudget:
    """How much the windowed strategy reads: `window` points per cell (a cell holding more is split), `rounds` of
    splits, at most `splits` cells a round.

    Sized from what the previous query needed (`learn`), so that a steady stream needs no second read and reads no
    more than it uses; a query that needs more than the budget is left unresolved (and answered the ragged way)."""

    window: int = WINDOW
    rounds: int = 4
    splits: int = 1024
    max_rounds: int = 12

    def learn(self, needed: list[float]) -> None:
        """needed (from `GridIndex.nearest`): rounds that had crowded cells, the most crowded cells in a round,
        how many first-round cells held more than each of WINDOWS points, and how many first-round cells there were."""
        rounds_needed, peak = int(needed[0]), int(needed[1])
        over, cells = [int(v) for v in needed[2 : 2 + len(WINDOWS)]], int(needed[2 + len(WINDOWS)])
        allowed = max(32, cells // 100)  # the smallest window that leaves at most 1% of the cells to be split
        self.window = next((w for w, n in zip(WINDOWS, over) if n <= allowed), WINDOW)
        crowded = over[WINDOWS.index(self.window)]
        # headroom: the next frame may well need twice as many splits, or one round more
        self.rounds = min(self.max_rounds, max(rounds_needed, 1 if crowded else 0) + 2)
        self.splits = max(256, 4 * max(peak, crowded))


def direction_bin(rays: np.ndarray, q: int, eps: float = 1e-5) -> np.ndarray:
    """Bin index in [0, 2q^2) of each direction (N, 3): theta = acos(z) in q bins, phi = atan2(y, x) in 2q bins."""
    rays = rays / np.linalg.norm(rays, axis=-1, keepdims=True).clip(eps)
    theta = (np.arccos(rays[:, 2]) / np.pi).clip(eps, 1 - eps)
    phi = (np.arctan2(rays[:, 1], rays[:, 0]) / np.pi).clip(-1 + eps, 1 - eps)
    return (np.floor(theta * q).astype(int) + (np.floor(phi * q).astype(int) + q) * q).astype(int)


def direction_bins(rays: torch.Tensor, q: int, eps: float = 1e-5) -> torch.Tensor:
    """Bin index in [0, 2q^2) of each direction (N, 3): theta = acos(z) in q bins, phi = atan2(y, x) in 2q bins.

    The official `get_quadrant_id` in float32 torch (numpy there): the same clipping and the same floor.
    """
    rays = rays / rays.norm(dim=-1, keepdim=True).clamp(min=eps)
    theta = (torch.acos(rays[:, 2]) / math.pi).clamp(eps, 1 - eps)
    phi = (torch.atan2(rays[:, 1], rays[:, 0]) / math.pi).clamp(-1 + eps, 1 - eps)
    return torch.floor(theta * q).long() + (torch.floor(phi * q).long() + q) * q


def key_axis_bits(num_bins: int) -> int:
    """Bits per axis of the Morton code in a 63-bit key whose high bits hold the bin (num_bins marks invalid)."""
    axis_bits = min(19, (63 - num_bins.bit_length()) // 3)
    if axis_bits < 8:
        raise ValueError(f"{num_bins} direction bins leave too few key bits for the grid")
    return axis_bits


def _spread_bits(x: torch.Tensor) -> torch.Tensor:
    """Insert two zero bits between the low 21 bits of x (int64): one axis of a 3D Morton code."""
    x = x & 0x1FFFFF
    x = (x | (x << 32)) & 0x1F00000000FFFF
    x = (x | (x << 16)) & 0x1F0000FF0000FF
    x = (x | (x << 8)) & 0x100F00F00F00F00F
    x = (x | (x << 4)) & 0x10C30C30C30C30C3
    return (x | (x << 2)) & 0x1249249249249249


def _morton(cells: torch.Tensor) -> torch.Tensor:
    return _spread_bits(cells[..., 0]) | (_spread_bits(cells[..., 1]) << 1) | (_spread_bits(cells[..., 2]) << 2)


def _windows_on(device) -> torch.Tensor:
    """WINDOWS as a tensor made on the device (a host constant would be a blocking copy)."""
    return 8 * (2 ** torch.arange(len(WINDOWS), device=device))


def _octant_offsets(device) -> torch.Tensor:
    """(8, 3) int64 corners of the unit cube, made on the device (a host constant would be a blocking copy)."""
    i = torch.arange(8, device=device)
    return torch.stack((i & 1, (i >> 1) & 1, (i >> 2) & 1), dim=-1)


class GridIndex:
    """The points of the memory images, sorted by (direction bin, Morton code); see the module docstring.

    Immutable: `updated` returns a new index. `images` maps image id -> number of slots (points, valid or not).
    """

    def __init__(self, num_bins: int, device=None, _state=None):
        self.num_bins = num_bins
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.axis_bits = key_axis_bits(num_bins)
        self.max_cell = (1 << self.axis_bits) - 1
        if _state is None:
            self.keys = torch.zeros(0, dtype=torch.int64, device=self.device)
            self.xyz = torch.zeros(3, 0, dtype=torch.float32, device=self.device)  # x, y, z rows: gathers stay compact
            self.owners = torch.zeros(0, dtype=torch.int64, device=self.device)
            self.images: dict[int, int] = {}
            self.grid: tuple[torch.Tensor, torch.Tensor] | None = None  # (origin (3,), level-0 cell size ()) float64
        else:
            self.keys, self.xyz, self.owners, self.images, self.grid = _state

    def __len__(self) -> int:
        return len(self.images)

    @property
    def size(self) -> int:
        return int(self.keys.shape[0])

    def num_valid(self) -> int:
        """Indexed valid points (reads from the device: for tests and diagnostics)."""
        return int((self.keys < (self.num_bins << (3 * self.axis_bits))).sum())

    # ------------------------------------------------------------------------------------------------- keys
    def _make_grid(self, pts: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Origin and level-0 cell from the first image: its extent spans LEVEL0_PER_EXTENT cells, centred."""
        p = pts.double()
        lo = torch.where(valid[:, None], p, torch.inf).amin(0) if len(p) else p.new_full((3,), torch.inf)
        hi = torch.where(valid[:, None], p, -torch.inf).amax(0) if len(p) else p.new_full((3,), -torch.inf)
        extent = (hi - lo).amax()
        ok = torch.isfinite(extent) & (extent > 0)
        cell = torch.where(ok, extent, torch.ones_like(extent)) / LEVEL0_PER_EXTENT
        centre = torch.where(torch.isfinite(lo) & torch.isfinite(hi), (lo + hi) / 2, torch.zeros_like(lo))
        return centre - cell * (1 << (self.axis_bits - 1)), cell

    def _coords(self, pts: torch.Tensor) -> torch.Tensor:
        """Continuous level-0 cell coordinates (N, 3) float64."""
        origin, cell = self.grid
        return (pts.double() - origin) / cell

    def _key(self, bins: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        return (bins << (3 * self.axis_bits)) + _morton(cells)

    def _cells(self, coords: torch.Tensor) -> torch.Tensor:
        return coords.floor().clamp(0, self.max_cell).long()

    # ----------------------------------------------------------------------------------------------- update
    def updated(self, add=(), drop=()) -> GridIndex:
        """A new index with the images of `drop` (ids) removed and those of `add` inserted.

        add: (image_id, points (M, 3), bins (M,) int64 with num_bins for invalid points). One merge pass over the
        sorted arrays: the kept points move up by the number of new points sorted before them."""
        drop = [i for i in drop if i in self.images]
        add = list(add)
        images = {k: v for k, v in self.images.items() if k not in drop}
        grid = self.grid
        if not add and not drop:
            return self
        if grid is None and add:
            first_pts, first_bins = add[0][1], add[0][2]
            grid = self._make_grid(first_pts, first_bins < self.num_bins)
        keys, xyz, owners = self.keys, self.xyz, self.owners
        keep = None
        for image in drop:
            keep = (owners != image) if keep is None else keep & (owners != image)
        kept = self.size - sum(self.images[i] for i in drop)
        for image, _, b in add:
            if image in images:
                raise ValueError(f"image {image} is already indexed")
            images[image] = int(b.shape[0])
        state = (keys, xyz, owners, images, grid)
        index = GridIndex(self.num_bins, self.device, state)
        if add:
            pts = torch.cat([p.float().reshape(-1, 3) for _, p, _ in add])
            bins = torch.cat([b.reshape(-1) for _, _, b in add])
            ids = torch.cat([torch.full((b.numel(),), i, dtype=torch.int64, device=self.device) for i, _, b in add])
            new_keys = index._key(bins, index._cells(index._coords(pts)))
            new_keys, order = new_keys.sort()
            new = (new_keys, pts[order].T, ids[order])
        else:
            new = None
        index.keys, index.xyz, index.owners = _merge((keys, xyz, owners), keep, kept, new)
        return index

    # ----------------------------------------------------------------------------------------------- queries
    def nearest(self, pts: torch.Tensor, bins: torch.Tensor, strategy: str = "windowed", budget=None):
        """Distance (Q,) float32 of each point to the nearest indexed point of its bin (inf where that bin is empty),
        a (Q,) bool mask of the queries left unresolved (None when all are exact), and what the query needed, an
        int64 tensor for `WindowBudget.learn` (None for 'ragged').

        strategy: 'windowed' (fixed sizes, no host reads; may leave queries unresolved) or 'ragged' (always exact,
        reads sizes from the device); see the module docstring. Queries with bin >= num_bins get inf."""
        if strategy not in ("ragged", "windowed"):
            raise ValueError(f"strategy must be 'ragged' or 'windowed', got {strategy!r}")
        pts = pts.float().reshape(-1, 3)
        bins = bins.reshape(-1)
        if self.size == 0 or self.grid is None or len(pts) == 0:
            return torch.full((len(pts),), torch.inf, device=pts.device), None, None
        coords = self._coords(pts)
        cells = self._cells(coords)
        qkeys = self._key(bins.clamp(max=self.num_bins), cells)
        if strategy == "windowed":
            best2 = self._neighbour_bound(pts, bins, qkeys)
            best2, unresolved, needed = self._windowed(pts, bins, coords, cells, best2, budget or WindowBudget())
            return best2.sqrt(), unresolved, needed
        # in key order, neighbouring queries read neighbouring keys: the binary searches stay in cache
        qkeys, order = qkeys.sort()
        pts, bins, coords, cells = pts[order], bins[order], coords[order], cells[order]
        best2 = self._neighbour_bound(pts, bins, qkeys)
        best2 = self._descend(pts, bins, coords, cells, best2)
        return torch.empty_like(best2).index_copy_(0, order, best2).sqrt(), None, None

    def nearest_exact(self, pts: torch.Tensor, bins: torch.Tensor, distances: torch.Tensor, unresolved: torch.Tensor):
        """Finish the queries that `nearest(..., 'windowed')` left unresolved (ragged, so it reads sizes)."""
        pts = pts.float().reshape(-1, 3)
        rows = unresolved.nonzero().squeeze(1)
        if len(rows) == 0:
            return distances
        sub_pts, sub_bins = pts[rows], bins.reshape(-1)[rows]
        coords = self._coords(sub_pts)
        cells = self._cells(coords)
        best2 = distances[rows].square()
        out = distances.clone()
        out[rows] = self._descend(sub_pts, sub_bins, coords, cells, best2).sqrt()
        return out

    def _neighbour_bound(self, pts, bins, qkeys) -> torch.Tensor:
        """Squared distance to the nearest of the key-order neighbours in the same bin (inf if the bin is empty).

        The insertion position of a key lies inside or at an end of its bin's run, so a non-empty bin always has a
        point among the neighbours."""
        n = self.size
        pos = torch.searchsorted(self.keys, qkeys)
        offsets = torch.arange(-_NEIGHBOURS, _NEIGHBOURS, device=pts.device)
        idx = (pos[:, None] + offsets).clamp(0, n - 1)
        same_bin = ((self.keys[idx] >> (3 * self.axis_bits)) == bins[:, None]) & (bins < self.num_bins)[:, None]
        d2 = self._d2(idx, pts.T[:, :, None])
        return torch.where(same_bin, d2, torch.inf).amin(1)

    def _first_level(self, best2: torch.Tensor) -> torch.Tensor:
        """Level whose cells are at least twice the bound: the ball then lies in the 2x2x2 block around the point."""
        _, cell = self.grid
        radius = best2.double().sqrt() * (1 + 1e-6)
        level = torch.ceil(torch.log2((2 * radius / cell).clamp(min=1e-300)))
        return level.nan_to_num(0.0, posinf=self.axis_bits).clamp(0, self.axis_bits).long()

    def _octant(self, coords, cells, level):
        """(Q, 8, 3) cells of the 2x2x2 block at `level` around each point (own cell + the nearer neighbours), and
        (Q, 8) whether each exists (a neighbour past the grid's border does not)."""
        cl = cells >> level[:, None]
        frac = coords / (2.0 ** level[:, None]).double() - cl
        step = torch.where(frac >= 0.5, 1, -1)
        top = self.max_cell >> level[:, None]
        cand = cl[:, None] + _octant_offsets(coords.device)[None] * step[:, None]
        exists = ((cand >= 0) & (cand <= top[:, None])).all(-1)
        return cand.clamp(min=0), exists

    def _box_d2(self, coords, cand, level) -> torch.Tensor:
        """Squared distance (float64, metres^2) from points to cells of `level`; border cells reach to infinity."""
        _, cell = self.grid
        size = (2.0**level).double()[..., None]
        lo = cand.double() * size
        hi = lo + size
        top = (self.max_cell >> level)[..., None]
        lo = torch.where(cand == 0, -torch.inf, lo)
        hi = torch.where(cand == top, torch.inf, hi)
        gap = torch.maximum(lo - coords, coords - hi).clamp(min=0)
        return (gap.square().sum(-1)) * cell.square()

    def _ranges(self, bins, cand, level):
        base = bins << (3 * self.axis_bits)
        m = _morton(cand)
        shift = 3 * level
        lo = torch.searchsorted(self.keys, base + (m << shift))
        hi = torch.searchsorted(self.keys, base + ((m + 1) << shift))
        return lo, hi

    def _windowed(self, pts, bins, coords, cells, best2, budget: WindowBudget):
        """Fixed sizes only: 8 cells per query, then `budget.rounds` rounds of at most `budget.splits` splits, every
        cell read through a window of `budget.window` points."""
        q, dev = len(pts), pts.device
        best2 = best2.clone()
        level = self._first_level(best2)
        cand, exists = self._octant(coords, cells, level)
        rows = torch.arange(q, device=dev).repeat_interleave(8)
        cand, lv = cand.reshape(-1, 3), level.repeat_interleave(8)
        live = (exists & torch.isfinite(best2)[:, None]).reshape(-1)
        live &= self._box_d2(coords[rows], cand, lv) <= best2[rows].double() * (1 + 1e-6)
        left_over = torch.zeros(q, dtype=torch.int64, device=dev)
        rounds_needed = torch.zeros((), dtype=torch.int64, device=dev)
        peak = torch.zeros((), dtype=torch.int64, device=dev)
        splits, window = budget.splits, budget.window
        children = _octant_offsets(dev)
        for round_ in range(budget.rounds + 1):
            lo, hi = self._ranges(bins[rows], cand, lv)
            count = torch.where(live, hi - lo, 0)
            fits = count <= window
            self._scan_window(pts, rows, lo, torch.where(fits, count, 0), best2, window)
            crowded = ~fits
            rounds_needed = torch.where(crowded.any(), round_ + 1, rounds_needed)
            peak = torch.maximum(peak, crowded.sum())
            if round_ == 0:  # how many cells hold more than each window size, and how many there are
                over = torch.cat(((count[:, None] > _windows_on(dev)).sum(0), live.sum().view(1)))
            if round_ == budget.rounds:
                left_over.index_add_(0, rows, crowded.long())
                break
            slot = torch.cumsum(crowded & (lv > 0), 0) - 1
            taken = crowded & (lv > 0) & (slot < splits)
            left_over.index_add_(0, rows, (crowded & ~taken).long())  # crowded level-0 cells, or no room left
            dst = torch.where(taken, slot, splits)  # the ones not taken land in a spare slot, cut off below
            rows = _compact(rows, dst, splits).repeat_interleave(8)
            lv = (_compact(lv, dst, splits) - 1).clamp(min=0).repeat_interleave(8)
            cand = (2 * _compact(cand, dst, splits)[:, None] + children[None]).reshape(-1, 3)
            live = _compact(taken, dst, splits).repeat_interleave(8)
            live &= self._box_d2(coords[rows], cand, lv) <= best2[rows].double() * (1 + 1e-6)
        return best2, left_over > 0, torch.cat((torch.stack((rounds_needed, peak)), over))

    def _scan_window(self, pts, rows, lo, count, best2, window: int) -> None:
        """best2[r] = min(best2[r], squared distances to the points [lo, lo + count)), count <= window."""
        slot = torch.arange(window, device=pts.device)
        idx = (lo[:, None] + slot).clamp(max=self.size - 1)
        d2 = self._d2(idx, pts.T.index_select(1, rows)[:, :, None])
        found = torch.where(slot < count[:, None], d2, torch.inf).amin(1)
        best2.scatter_reduce_(0, rows, found, "amin")

    def _descend(self, pts, bins, coords, cells, best2):
        """Exact: visit every cell that the ball of the current bound reaches, splitting crowded cells."""
        best2 = best2.clone()
        level = self._first_level(best2)
        cand, exists = self._octant(coords, cells, level)
        q = len(pts)
        rows = torch.arange(q, device=pts.device)[:, None].expand(q, 8)
        lv = level[:, None].expand(q, 8)
        keep = exists & torch.isfinite(best2)[:, None]
        keep &= self._box_d2(coords[:, None], cand, lv) <= best2.double()[:, None] * (1 + 1e-6)
        rows, cand, lv = rows[keep], cand[keep], lv[keep]
        children = _octant_offsets(pts.device)
        while len(rows):
            lo, hi = self._ranges(bins[rows], cand, lv)
            count = hi - lo
            scan = (count <= SPLIT_AT) | (lv == 0)
            self._scan(pts, rows[scan], lo[scan], count[scan], best2)
            split = ~scan
            if not bool(split.any()):
                break
            rows = rows[split].repeat_interleave(8)
            lv = (lv[split] - 1).repeat_interleave(8)
            cand = (2 * cand[split])[:, None].add(children[None]).reshape(-1, 3)
            reach = self._box_d2(coords[rows], cand, lv) <= best2[rows].double() * (1 + 1e-6)
            rows, cand, lv = rows[reach], cand[reach], lv[reach]
        return best2

    def _d2(self, idx: torch.Tensor, q_xyz: torch.Tensor) -> torch.Tensor:
        """Squared distances (idx.shape) from the indexed points idx to query coordinates (3, ...) broadcast to it."""
        diff = self.xyz.index_select(1, idx.reshape(-1)).view(3, *idx.shape) - q_xyz
        return diff.mul_(diff).sum(0)

    def _scan(self, pts, rows, lo, count, best2) -> None:
        """best2[r] = min(best2[r], squared distances to the points in [lo, lo + count)) for each (r, lo, count)."""
        total = int(count.sum())
        if total == 0:
            return
        starts = torch.repeat_interleave(lo - (torch.cumsum(count, 0) - count), count, output_size=total)
        idx = starts + torch.arange(total, device=pts.device)
        who = torch.repeat_interleave(rows, count, output_size=total)
        d2 = self._d2(idx, pts.T.index_select(1, who))
        best2.scatter_reduce_(0, who, d2, "amin")


def _compact(values: torch.Tensor, dst: torch.Tensor, size: int) -> torch.Tensor:
    """The first `size` slots after writing values[i] to slot dst[i] (dst == size: dropped); unset slots are 0."""
    out = values.new_zeros((size + 1, *values.shape[1:]))
    return out.index_copy_(0, dst, values)[:size]


def _merge(old, keep, kept: int, new):
    """Sorted (keys, xyz (3, N), owners) without the entries where `keep` is False (`kept` remain), with the sorted
    `new` entries merged in (new before old on equal keys). Fixed sizes throughout: nothing reads the device."""
    keys = old[0]
    n = int(keys.shape[0])
    if keep is None:
        keep = torch.ones(n, dtype=torch.bool, device=keys.device)
    m = 0 if new is None else int(new[0].shape[0])
    total = kept + m
    kept_upto = torch.cumsum(keep, 0)  # kept entries among old[: i + 1]
    if new is not None:
        pos = torch.searchsorted(keys, new[0])  # new j goes before old pos_j
        kept_before = torch.cat((kept_upto.new_zeros(1), kept_upto))[pos]
        new_dst = kept_before + torch.arange(m, device=keys.device)
        inserted = torch.zeros(n + 1, dtype=torch.int64, device=keys.device).index_add_(0, pos, torch.ones_like(pos))
        old_dst = kept_upto - 1 + torch.cumsum(inserted, 0)[:n]
    else:
        old_dst = kept_upto - 1
    old_dst = torch.where(keep, old_dst, total)  # dropped entries land in one spare slot, cut off below
    out = []
    for i, a in enumerate(old):
        dim = a.dim() - 1  # xyz is (3, N)
        buf = a.new_empty((*a.shape[:dim], total + 1))
        buf.index_copy_(dim, old_dst, a)
        if new is not None:
            buf.index_copy_(dim, new_dst, new[i])
        out.append(buf[..., :total])
    return tuple(out)
