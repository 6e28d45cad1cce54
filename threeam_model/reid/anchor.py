"""One object's 3D anchor: where in the world its surface has been seen, as a capped set of voxels.

Each voxel keeps the mean of the world points that fell into it, how many did, and the last frame that saw it.
The voxel size is fixed when the first points arrive, relative to their depth (MUSt3R's world has no metric scale,
so a size in metres would mean nothing there). When the cap is reached the least recently seen voxels make room,
so the anchor follows the object and its memory stays bounded by construction.
"""

from __future__ import annotations

import numpy as np

_BITS = 21  # voxel index bits per axis in the packed int64 key
_OFFSET = 1 << (_BITS - 1)


class ObjectAnchor:
    def __init__(self, max_voxels: int = 4096, voxel_rel: float = 0.01):
        """max_voxels: the cap; voxel_rel: voxel edge as a fraction of the median depth of the first points."""
        if max_voxels < 1:
            raise ValueError(f"max_voxels must be >= 1, got {max_voxels}")
        if not voxel_rel > 0:
            raise ValueError(f"voxel_rel must be > 0, got {voxel_rel}")
        self.max_voxels = int(max_voxels)
        self.voxel_rel = float(voxel_rel)
        self.voxel_size: float | None = None
        self._keys = np.zeros(max_voxels, np.int64)
        self._means = np.zeros((max_voxels, 3), np.float32)
        self._counts = np.zeros(max_voxels, np.int64)
        self._last_seen = np.zeros(max_voxels, np.int64)
        self._n = 0
        self.last_seen_frame = -1
        self._extent: float | None = None
        self._centre = np.zeros(3)

    def __len__(self) -> int:
        return self._n

    @property
    def points(self) -> np.ndarray:
        """(N, 3) float32 voxel means."""
        return self._means[: self._n]

    @property
    def counts(self) -> np.ndarray:
        return self._counts[: self._n]

    @property
    def last_seen(self) -> np.ndarray:
        return self._last_seen[: self._n]

    @property
    def centre(self) -> np.ndarray:
        """(3,) count-weighted mean of the voxels (zeros when empty)."""
        self._shape()
        return self._centre

    @property
    def extent(self) -> float:
        """Size of the object: twice the 95th percentile distance of its voxels from their centre."""
        self._shape()
        return self._extent

    def _shape(self) -> None:
        if self._extent is not None:
            return
        if self._n == 0:
            self._centre, self._extent = np.zeros(3), 0.0
            return
        pts, w = self.points.astype(np.float64), self.counts.astype(np.float64)
        self._centre = (pts * w[:, None]).sum(0) / w.sum()
        self._extent = 2.0 * float(np.percentile(np.linalg.norm(pts - self._centre, axis=1), 95))

    def clear(self) -> None:
        self._n = 0
        self.voxel_size = None
        self.last_seen_frame = -1
        self._extent = None

    def add(self, points: np.ndarray, depths: np.ndarray, frame_index: int) -> None:
        """Add world points (N, 3) seen on `frame_index` at camera depths (N,) (used only to size the voxels)."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        if len(points) == 0:
            return
        if self.voxel_size is None:
            self.voxel_size = max(self.voxel_rel * float(np.median(depths)), 1e-9)
        cells = np.floor(points / self.voxel_size).astype(np.int64) + _OFFSET
        inside = ((cells >= 0) & (cells < (1 << _BITS))).all(axis=1)
        cells, points = cells[inside], points[inside]
        if len(points) == 0:
            return
        keys = (cells[:, 0] << (2 * _BITS)) | (cells[:, 1] << _BITS) | cells[:, 2]
        ukeys, inverse, ucounts = np.unique(keys, return_inverse=True, return_counts=True)
        sums = np.zeros((len(ukeys), 3))
        np.add.at(sums, inverse, points)

        n = self._n
        order = np.argsort(self._keys[:n], kind="stable")
        sorted_keys = self._keys[:n][order]
        pos = np.searchsorted(sorted_keys, ukeys)
        hit = pos < n
        hit[hit] = sorted_keys[pos[hit]] == ukeys[hit]
        # existing voxels: running mean
        slots = order[pos[hit]]
        old = self._counts[slots]
        new = ucounts[hit]
        self._means[slots] = (self._means[slots] * old[:, None] + sums[hit]) / (old + new)[:, None]
        self._counts[slots] = old + new
        self._last_seen[slots] = frame_index
        # new voxels: append, evicting the least recently seen (then least observed) ones past the cap
        fresh = ~hit
        nk = ukeys[fresh]
        nmeans = sums[fresh] / ucounts[fresh][:, None]
        ncounts = ucounts[fresh]
        if n + len(nk) > self.max_voxels:
            keep_new = min(len(nk), self.max_voxels)
            if keep_new < len(nk):  # more new voxels than the cap: keep the most observed
                best = np.argsort(-ncounts, kind="stable")[:keep_new]
                nk, nmeans, ncounts = nk[best], nmeans[best], ncounts[best]
            keep_old = self.max_voxels - keep_new
            if keep_old < n:
                rank = np.lexsort((-self._counts[:n], -self._last_seen[:n]))[:keep_old]
                rank.sort()
                for arr in (self._keys, self._means, self._counts, self._last_seen):
                    arr[:keep_old] = arr[rank]
                n = keep_old
        m = len(nk)
        self._keys[n : n + m] = nk
        self._means[n : n + m] = nmeans
        self._counts[n : n + m] = ncounts
        self._last_seen[n : n + m] = frame_index
        self._n = n + m
        self.last_seen_frame = max(self.last_seen_frame, int(frame_index))
        self._extent = None
