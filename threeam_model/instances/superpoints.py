"""Superpoints: a graph segmentation of the scene's mesh or point cloud into small surface patches.

Felzenszwalb-Huttenlocher segmentation over the mesh's edges (or a k-nearest-neighbour graph of a point cloud),
with edge weights from the normals, as ScanNet's own segmentator makes the `*.segs.json` superpoints: weight
1 - n_a.n_b, squared (so smaller) where the surface is convex there, since convex creases rarely separate objects;
two segments join when the edge is no heavier than either one's internal weight plus threshold / size; segments
smaller than `min_size` are then joined to a neighbour along the lightest edges.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

KNN = 8  # neighbours of a point in the point-cloud graph
NORMAL_NEIGHBOURS = 16  # neighbours used to fit a point-cloud normal


def mesh_normals(points: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals of a triangle mesh (zero vectors for unused vertices)."""
    p = np.asarray(points, np.float64)
    tri = p[faces]
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # length = 2 x area
    normals = np.zeros_like(p)
    for k in range(3):
        np.add.at(normals, faces[:, k], face_n)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def point_normals(points: np.ndarray, k: int = NORMAL_NEIGHBOURS) -> np.ndarray:
    """Unoriented normals of a point cloud: the smallest principal axis of each point's k neighbours."""
    p = np.asarray(points, np.float64)
    _, nn = cKDTree(p).query(p, k=min(k, len(p)))
    nb = p[nn] - p[nn].mean(1, keepdims=True)
    cov = np.einsum("nki,nkj->nij", nb, nb)
    return np.linalg.eigh(cov)[1][:, :, 0]


def mesh_edges(faces: np.ndarray) -> np.ndarray:
    """(E, 2) unique undirected edges of a triangle mesh."""
    f = np.asarray(faces, np.int64)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    return np.unique(np.sort(e, axis=1), axis=0)


def knn_edges(points: np.ndarray, k: int = KNN) -> np.ndarray:
    """(E, 2) unique undirected edges joining each point to its k nearest neighbours."""
    _, nn = cKDTree(points).query(points, k=min(k + 1, len(points)))
    a = np.repeat(np.arange(len(points)), nn.shape[1] - 1)
    e = np.stack([a, nn[:, 1:].reshape(-1)], 1)
    return np.unique(np.sort(e, axis=1), axis=0)


def edge_weights(points: np.ndarray, normals: np.ndarray, edges: np.ndarray, oriented: bool = True) -> np.ndarray:
    """1 - n_a.n_b per edge, squared where the surface is convex across it; unoriented normals use |n_a.n_b|."""
    na, nb = normals[edges[:, 0]], normals[edges[:, 1]]
    dot = np.einsum("ij,ij->i", na, nb)
    if not oriented:
        return 1.0 - np.abs(dot)
    w = 1.0 - dot
    # convex where the normals turn away from each other along the edge direction
    convex = np.einsum("ij,ij->i", nb - na, points[edges[:, 1]] - points[edges[:, 0]]) > 0
    return np.where(convex, w * w, w)


def felzenszwalb(num_points: int, edges: np.ndarray, weights: np.ndarray, threshold: float, min_size: int):
    """Segment ids (N,) in 0..S-1 of a graph segmentation (module docstring)."""
    parent = np.arange(num_points)
    size = np.ones(num_points, np.int64)
    internal = np.zeros(num_points)
    order = np.argsort(weights, kind="stable")
    edges, weights = edges[order], weights[order]

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for (a, b), w in zip(edges.tolist(), weights.tolist()):
        ra, rb = find(a), find(b)
        if ra == rb:
            continue
        if w <= internal[ra] + threshold / size[ra] and w <= internal[rb] + threshold / size[rb]:
            if size[ra] < size[rb]:
                ra, rb = rb, ra
            parent[rb] = ra
            size[ra] += size[rb]
            internal[ra] = w
    for a, b in edges.tolist():
        ra, rb = find(a), find(b)
        if ra != rb and (size[ra] < min_size or size[rb] < min_size):
            if size[ra] < size[rb]:
                ra, rb = rb, ra
            parent[rb] = ra
            size[ra] += size[rb]
    roots = np.array([find(i) for i in range(num_points)])
    return np.unique(roots, return_inverse=True)[1]


def superpoints(
    points: np.ndarray,
    normals: np.ndarray | None = None,
    faces: np.ndarray | None = None,
    threshold: float = 0.01,
    min_size: int = 20,
) -> np.ndarray:
    """Superpoint id per point (N,): over the mesh when `faces` is given, else over a kNN graph of the points.

    Defaults are the ScanNet segmentator's (kThresh 0.01, segMinVerts 20). Normals are computed when not given
    (mesh normals, or unoriented point-cloud normals)."""
    points = np.asarray(points, np.float64)
    if faces is not None:
        edges = mesh_edges(faces)
        normals = mesh_normals(points, faces) if normals is None else np.asarray(normals, np.float64)
        oriented = True
    else:
        edges = knn_edges(points)
        oriented = normals is not None
        normals = point_normals(points) if normals is None else np.asarray(normals, np.float64)
    weights = edge_weights(points, normals, edges, oriented)
    return felzenszwalb(len(points), edges, weights, threshold, min_size)


__all__ = ["edge_weights", "felzenszwalb", "knn_edges", "mesh_edges", "mesh_normals", "point_normals", "superpoints"]
