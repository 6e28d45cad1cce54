"""From raw head output to pointmaps, confidence, focal, camera pose and ray directions.

Raw channels: 0-2 pts3d (memory world frame), 3-5 pts3d_local (own camera frame), 6 confidence logit. Points use
the NORM_EXP activation p -> p/|p| * expm1(|p|); confidence is 1 + exp(logit).

Everything here runs where its inputs are and never waits for the device: no host constants are copied in, and
the pose is solved without an SVD (on CUDA, torch's linear-algebra solvers check their status on the host).
"""

from __future__ import annotations

import math

import torch


def norm_exp(xyz: torch.Tensor) -> torch.Tensor:
    d = xyz.norm(dim=-1, keepdim=True)
    return xyz / d.clip(min=1e-8) * torch.expm1(d)


def pixel_grid(h: int, w: int, device=None) -> torch.Tensor:
    """(h, w, 2) float pixel coordinates (x = column index, y = row index), pixel centres at integers."""
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack((xs, ys), dim=-1)


def centred_pixel_grid(h: int, w: int, device=None) -> torch.Tensor:
    """`pixel_grid` relative to the principal point (W/2, H/2)."""
    grid = pixel_grid(h, w, device)
    return torch.stack((grid[..., 0] - w / 2, grid[..., 1] - h / 2), dim=-1)


def estimate_focal(pts3d_local: torch.Tensor, iters: int = 10) -> torch.Tensor:
    """Focal (pixels) of a camera with principal point (W/2, H/2) seeing pts3d_local (B, H, W, 3).

    Minimises sum |pixel - f * (x, y)/z| over pixels: closed-form L2 start, then iteratively re-weighted least
    squares (Weiszfeld). Matches the official estimator in 'weiszfeld' mode.
    """
    b, h, w, _ = pts3d_local.shape
    pixels = centred_pixel_grid(h, w, pts3d_local.device).view(1, -1, 2)
    pts = pts3d_local.reshape(b, -1, 3)
    xy_over_z = (pts[..., :2] / pts[..., 2:3]).nan_to_num(posinf=0, neginf=0)
    dot_xy_px = (xy_over_z * pixels).sum(dim=-1)
    dot_xy_xy = xy_over_z.square().sum(dim=-1)
    focal = dot_xy_px.mean(dim=1) / dot_xy_xy.mean(dim=1)
    for _ in range(iters):
        residual = (pixels - focal.view(-1, 1, 1) * xy_over_z).norm(dim=-1)
        weight = residual.clip(min=1e-8).reciprocal()
        focal = (weight * dot_xy_px).mean(dim=1) / (weight * dot_xy_xy).mean(dim=1)
    return focal


def rigid_registration(src: torch.Tensor, dst: torch.Tensor, weights: torch.Tensor):
    """Weighted Procrustes without scale: R, t minimising sum w |R src + t - dst|^2.

    src, dst (..., N, 3), weights (..., N). Returns R (..., 3, 3) (a proper rotation) and t (..., 3).
    The rotation is Horn's closed form: the unit quaternion of R is the dominant eigenvector of a symmetric 4x4
    matrix of the weighted cross-covariance. That is the same optimum over proper rotations as the SVD with a
    reflection fix (Kabsch / Umeyama), found with matrix products only.
    """
    w = weights / weights.sum(dim=-1, keepdim=True)
    src_mean = (w.unsqueeze(-1) * src).sum(dim=-2)
    dst_mean = (w.unsqueeze(-1) * dst).sum(dim=-2)
    src_c = src - src_mean.unsqueeze(-2)
    dst_c = dst - dst_mean.unsqueeze(-2)
    cov = torch.einsum("...n,...ni,...nj->...ij", w, src_c, dst_c)  # sum w src dst^T
    rot = _rotation_from_quaternion(_dominant_eigenvector(_horn_matrix(cov.double()))).to(src.dtype)
    t = dst_mean - (rot @ src_mean.unsqueeze(-1)).squeeze(-1)
    return rot, t


def _horn_matrix(s: torch.Tensor) -> torch.Tensor:
    """Horn's symmetric 4x4 matrix of S = sum w src dst^T (..., 3, 3); quaternions are (w, x, y, z)."""
    xx, xy, xz = s[..., 0, 0], s[..., 0, 1], s[..., 0, 2]
    yx, yy, yz = s[..., 1, 0], s[..., 1, 1], s[..., 1, 2]
    zx, zy, zz = s[..., 2, 0], s[..., 2, 1], s[..., 2, 2]
    rows = [
        [xx + yy + zz, yz - zy, zx - xz, xy - yx],
        [yz - zy, xx - yy - zz, xy + yx, zx + xz],
        [zx - xz, xy + yx, yy - xx - zz, yz + zy],
        [xy - yx, zx + xz, yz + zy, zz - xx - yy],
    ]
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def _dominant_eigenvector(n: torch.Tensor, squarings: int = 40) -> torch.Tensor:
    """Unit eigenvector (..., 4) of the largest eigenvalue of symmetric n (..., 4, 4), by repeated squaring.

    Shifted by its Frobenius norm, n has eigenvalues in [0, 2|n|] with the largest one first; each squaring doubles
    the power, so 40 of them separate eigenvalues that differ by one part in 1e11. A fixed count keeps it free of
    data-dependent control flow.
    """
    eye = torch.eye(4, dtype=n.dtype, device=n.device)
    a = n + n.norm(dim=(-2, -1), keepdim=True) * eye
    for _ in range(squarings):
        a = a / a.norm(dim=(-2, -1), keepdim=True).clamp(min=torch.finfo(a.dtype).tiny)
        a = a @ a
    # a ~ v v^T: its column with the largest diagonal entry is the best-conditioned multiple of v
    col = a.diagonal(dim1=-2, dim2=-1).argmax(dim=-1, keepdim=True)
    v = torch.gather(a, -1, col.unsqueeze(-2).expand(*a.shape[:-1], 1)).squeeze(-1)
    return v / v.norm(dim=-1, keepdim=True)


def _rotation_from_quaternion(q: torch.Tensor) -> torch.Tensor:
    w, x, y, z = q.unbind(-1)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def postprocess(raw: torch.Tensor, compute_cam: bool = False) -> dict[str, torch.Tensor]:
    """raw (..., H, W, 7) -> pts3d, pts3d_local (..., H, W, 3), conf (..., H, W) [+ focal (...), c2w (..., 4, 4)]."""
    raw = raw.float()
    out = {
        "pts3d": norm_exp(raw[..., 0:3]),
        "pts3d_local": norm_exp(raw[..., 3:6]),
        "conf": 1.0 + raw[..., 6].exp(),
    }
    if compute_cam:
        batch = out["pts3d"].shape[:-3]
        h, w = out["conf"].shape[-2:]
        n = math.prod(batch)
        focal = estimate_focal(out["pts3d_local"].reshape(n, h, w, 3))
        out["focal"] = focal.reshape(batch)
        rot, t = rigid_registration(
            out["pts3d_local"].reshape(*batch, -1, 3),
            out["pts3d"].reshape(*batch, -1, 3),
            out["conf"].reshape(*batch, -1) - 1.0,
        )
        out["c2w"] = pose_matrix(rot, t)
    return out


def pose_matrix(rot: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    c2w = torch.eye(4, dtype=rot.dtype, device=rot.device).expand(*rot.shape[:-2], 4, 4).clone()
    c2w[..., :3, :3] = rot
    c2w[..., :3, 3] = t
    return c2w


def pinhole_rays(h: int, w: int, focal, device=None) -> torch.Tensor:
    """(h, w, 3) unit camera-frame ray directions of a pinhole camera, principal point (W/2, H/2).

    focal: a float or a 0-dim tensor on `device` (pixels).

    Uses the same pixel convention as ``estimate_focal`` (pixel (u, v) at integer coordinates).
    """
    grid = centred_pixel_grid(h, w, device)
    d = torch.cat((grid / focal, torch.ones(h, w, 1, device=device)), dim=-1)
    return d / d.norm(dim=-1, keepdim=True)
