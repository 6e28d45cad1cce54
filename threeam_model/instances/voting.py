"""Final instances: each superpoint goes to the instance that observed it most often (supplement D).

An instance's votes at a point are the summed (reprojection-weighted) hits of its tracks; a superpoint's votes are
those of its points. The instance with the most votes wins the whole superpoint, provided it covers enough of what
it saw of it: at least `min_coverage` of the superpoint's points seen near the winner (in its masks' boxes) must be
its fragment points (inside its masks in at least `support_ratio` of those views). A superpoint the winner saw only
in part (an object's far side) is filled in; one it only grazed (the floor around an object's base) is not. So
where two instances claim the same surface (a duplicate, or a fragment that bled onto a neighbour) every point
ends up in one of them, the one seen there more; instances left with fewer than `min_points` points are dropped.

Defaults (here, in merging.py and lifting.py) were set on the generated 160 x 120 scenes with an oracle tracker.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp

from threeam_model.instances.merging import reciprocal_of_nonzeros


@dataclasses.dataclass
class VoteParams:
    min_coverage: float = 0.25
    min_points: int = 50  # smaller instances are dropped (the ScanNet evaluator ignores predictions under 100)


@dataclasses.dataclass
class VoteResult:
    labels: np.ndarray  # (N,) instance index + 1 per point, 0 = none (instance indices as in the groups given)
    point_scores: np.ndarray  # (N,) float32: how consistently the winner saw the point inside its masks, in [0, 1]
    sizes: np.ndarray  # (G,) points each group kept (0 for dropped groups)
    consistency: np.ndarray  # (G,) mean point score over the points kept (0 for dropped groups)


def group_matrix(groups: list[list[int]], num_tracks: int) -> sp.csr_matrix:
    rows = np.concatenate([np.full(len(g), i) for i, g in enumerate(groups)]) if groups else np.zeros(0, int)
    cols = np.concatenate([np.asarray(g) for g in groups]) if groups else np.zeros(0, int)
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(groups), num_tracks))


def vote(
    groups: list[list[int]],
    hits: sp.csr_matrix,
    seen: sp.csr_matrix,
    superpoints: np.ndarray,
    support_ratio: float,
    params: VoteParams,
) -> VoteResult:
    """Assign every superpoint to at most one group of tracks (module docstring)."""
    num_points = hits.shape[1]
    superpoints = np.unique(np.asarray(superpoints).reshape(-1), return_inverse=True)[1]
    if len(superpoints) != num_points:
        raise ValueError(f"{len(superpoints)} superpoint ids for {num_points} points")
    labels = np.zeros(num_points, np.int64)
    scores = np.zeros(num_points, np.float32)
    if not groups:
        return VoteResult(labels, scores, np.zeros(0, np.int64), np.zeros(0))
    g = group_matrix(groups, hits.shape[0])
    votes, near = (g @ hits).tocsr(), (g @ seen).tocsr()
    ratio = votes.multiply(reciprocal_of_nonzeros(near)).tocsr()  # (G, N) in [0, 1]: near >= votes wherever votes > 0
    supported = ratio.copy()
    supported.data = (supported.data >= support_ratio).astype(np.float32)
    num_sp = int(superpoints.max()) + 1
    member = sp.csr_matrix(
        (np.ones(num_points, np.float32), (np.arange(num_points), superpoints)), shape=(num_points, num_sp)
    )
    sp_votes = (votes @ member).toarray()  # (G, S)
    sp_covered = (supported @ member).toarray()
    observed = near.copy()
    observed.data = np.ones_like(observed.data)
    sp_observed = (observed @ member).toarray()
    winner = sp_votes.argmax(0)
    cols = np.arange(num_sp)
    won = (sp_votes[winner, cols] > 0) & (sp_covered[winner, cols] >= params.min_coverage * sp_observed[winner, cols])
    point_winner = np.where(won[superpoints], winner[superpoints], -1)
    sizes = np.bincount(point_winner[point_winner >= 0], minlength=len(groups))
    keep = sizes >= params.min_points
    point_winner[(point_winner >= 0) & ~keep[np.maximum(point_winner, 0)]] = -1
    sizes = np.where(keep, sizes, 0)
    assigned = np.flatnonzero(point_winner >= 0)
    labels[assigned] = point_winner[assigned] + 1
    entries = ratio.tocoo()
    own = point_winner[entries.col] == entries.row  # the winner's ratio at each of its points (0 where never in a mask)
    scores[entries.col[own]] = entries.data[own]
    consistency = np.zeros(len(groups))
    if len(assigned):
        sums = np.bincount(point_winner[assigned], weights=scores[assigned], minlength=len(groups))
        consistency = np.where(sizes > 0, sums / np.maximum(sizes, 1), 0.0)
    return VoteResult(labels, scores, sizes, consistency)


__all__ = ["VoteParams", "VoteResult", "group_matrix", "vote"]
