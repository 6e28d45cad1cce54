"""From raw head output to pointmaps, confidence, focal, camera pose and ray directions.

Raw channels: 0-2 pts3d (memory world frame), 3-5 pts3d_local (own camera frame), 6 confidence logit. Points use
the NORM_EXP activation p -> p/|p| * expm1(|p|); confidence is 1 + exp(logit).
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


def estimate_focal(pts3d_local: torch.Tensor, iters: int = 10) -> torch.Tensor:
    """Focal (pixels) of a camera with principal point (W/2, H/2) seeing pts3d_local (B, H, W, 3).

    Minimises sum |pixel - f * (x, y)/z| over pixels: closed-form L2 start, then iteratively re-weighted least
    squares (Weiszfeld). Matches the official estimator in 'weiszfeld' mode.
    """
    b, h, w, _ = pts3d_local.shape
    pixels = pixel_grid(h, w, pts3d_local.device).view(1, -1, 2) - torch.tensor(
        (w / 2, h / 2), device=pts3d_local.device
    )
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
    """
    w = weights / weights.sum(dim=-1, keepdim=True)
    src_mean = (w.unsqueeze(-1) * src).sum(dim=-2)
    dst_mean = (w.unsqueeze(-1) * dst).sum(dim=-2)
    src_c = src - src_mean.unsqueeze(-2)
    dst_c = dst - dst_mean.unsqueeze(-2)
    cov = torch.einsum("...n,...ni,...nj->...ij", w, dst_c, src_c)  # sum w dst src^T
    u, _, vh = torch.linalg.svd(cov)
    # flip the last singular direction when needed so that det(R) = +1
    d = torch.sign(torch.det(u @ vh))
    d = torch.where(d == 0, torch.ones_like(d), d)
    fix = torch.ones(*d.shape, 3, dtype=cov.dtype, device=cov.device)
    fix[..., -1] = d
    rot = u @ (fix.unsqueeze(-1) * vh)
    t = dst_mean - (rot @ src_mean.unsqueeze(-1)).squeeze(-1)
    return rot, t


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


def pinhole_rays(h: int, w: int, focal: float, device=None) -> torch.Tensor:
    """(h, w, 3) unit camera-frame ray directions of a pinhole camera, principal point (W/2, H/2).

    Uses the same pixel convention as ``estimate_focal`` (pixel (u, v) at integer coordinates).
    """
    grid = pixel_grid(h, w, device) - torch.tensor((w / 2, h / 2), device=device)
    d = torch.cat((grid / float(focal), torch.ones(h, w, 1, device=device)), dim=-1)
    return d / d.norm(dim=-1, keepdim=True)
