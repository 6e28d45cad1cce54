"""Procedural test scenes: textured primitives in a room, seen by a camera that circles and pans around them.

No external data: everything is drawn from a seed, so the same seed gives the same pixels on every machine.
Rendering is analytic ray casting in numpy (one ray per pixel centre, nearest hit wins), so a 160x120 x 40-frame
scene renders in well under a second on one CPU core.

Stable API (others build on it; extend, don't change):

- ``render_scene(seed=0, num_frames=40, width=160, height=120, num_objects=4, lookalike=False) -> dict`` renders
  in memory and returns::

      rgb       (T, H, W, 3) uint8
      depth     (T, H, W) float32, metres along the camera z axis (not ray length); every pixel hits something
      instance  (T, H, W) uint16, object id per pixel, 0 = room (floor, walls, ceiling)
      K         (3, 3) float64 pinhole intrinsics (shared by all frames)
      poses     (T, 4, 4) float64 camera-to-world transforms
      objects   list of dicts, one per object: id, shape, center, size, yaw, texture, lookalike_of (see below)
      meta      dict: seed, width, height, num_frames, room size, conventions

- ``generate_scene(out_dir, seed=0, ...same arguments...) -> pathlib.Path`` renders and writes the folder layout
  below, returning ``out_dir``.
- ``scene_points(scene, spacing=0.04) -> dict`` samples the rendered scene's surfaces into a point cloud with
  instance ids (points, normals, colors, instance; see its docstring), keeping what some frame sees, like a mesh
  reconstructed from the frames; ``generate_scene(..., with_points=True)`` writes it as ``points.ply``.
- ``SyntheticScene(path)`` (in threeam_model.data.readers) reads that folder back; ``export_davis(scene_dir,
  out_root, name)`` writes it in the DAVIS-2017 / MOSE layout (``JPEGImages/<name>/00000.jpg`` and
  ``Annotations/<name>/00000.png`` palette PNGs).

Folder layout written by ``generate_scene`` (frame i is zero-padded to 5 digits)::

    out_dir/
      rgb/00000.png        8-bit RGB PNG (lossless, so a reader gets the rendered pixels exactly)
      depth/00000.png      16-bit PNG, depth in millimetres (value / 1000 = metres; 0 would mean "no depth")
      instance/00000.png   16-bit PNG, object id per pixel, 0 = background/room
      intrinsics.txt       3 rows x 3 columns, the matrix K
      poses.txt            one row per frame: the 16 entries of the 4x4 camera-to-world matrix, row-major
      scene.json           {"format": "threeam-synthetic-v1", seed, width, height, num_frames, depth_scale: 1000,
                            room: {half_extent, height}, objects: [...], conventions}
      points.ply           only with with_points=True: binary PLY, per point x y z (float, world), nx ny nz,
                           red green blue (uchar), instance (int, object id, 0 = room)

Conventions: world frame z-up, floor at z = 0, room centred on the origin. Camera frame as OpenCV: x right,
y down, z forward. Pixel (column u, row v) has its centre at image coordinate (u, v), i.e. a pixel centre is
back-projected as ``K^-1 [u, v, 1]``; ``cx = (W - 1) / 2``, ``cy = (H - 1) / 2``.

Objects (ids 1..N): ``shape`` in {"box", "cylinder", "sphere"}, ``center`` = world (x, y, z) of the object's
centre, ``size`` = full extents (x, y, z) in the object's own frame (a cylinder's x = y = diameter), ``yaw`` =
rotation about z in radians (boxes only), ``texture`` = the procedural texture parameters, ``lookalike_of`` = id
of the object it copies (same shape, size and texture; a distractor for identity tests) or null.

The camera circles the room centre once (a large viewpoint change every few frames) while panning left and right
by up to ``pan_deg`` degrees, so most objects leave the view and come back; a few may stay in view throughout
when ``num_objects`` is small.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from threeam_model.data.readers.synthetic import FORMAT, SyntheticScene

DEPTH_SCALE = 1000.0  # depth PNG units per metre
POINTS_FILE = "points.ply"  # written by generate_scene(with_points=True)
SHAPES = ("box", "cylinder", "sphere")
MAX_SPACIOUS_OBJECTS = 12  # up to this many objects the layout is the original one; up to MAX_OBJECTS it is denser
MAX_OBJECTS = 24
PATTERNS = ("checker", "stripes", "blocks", "rings")
_LIGHT = np.array([0.4, 0.3, 0.87]) / np.linalg.norm([0.4, 0.3, 0.87])


# --------------------------------------------------------------------------------------------- scene layout


def _random_texture(rng: np.random.Generator) -> dict:
    """A procedural texture: pattern kind, 3 colours, cell size in metres, and a 8x8 table of colour indices."""
    return {
        "pattern": str(rng.choice(PATTERNS)),
        "colors": rng.integers(20, 236, size=(3, 3)).tolist(),
        "scale": float(rng.uniform(0.06, 0.16)),
        "table": rng.integers(0, 3, size=(8, 8)).tolist(),
    }


def _layout(rng: np.random.Generator, num_objects: int, lookalike: bool, half_extent: float) -> list[dict]:
    """Place objects on the floor inside a disc around the room centre, without overlaps."""
    objects: list[dict] = []
    crowded = num_objects > MAX_SPACIOUS_OBJECTS  # more objects: a wider disc and 0.7x sizes, so they fit
    radius = (0.55 if crowded else 0.45) * half_extent
    for i in range(num_objects):
        copy_of = objects[0] if (lookalike and i == num_objects - 1 and objects) else None
        if copy_of is not None:
            shape, size, yaw, texture = copy_of["shape"], list(copy_of["size"]), copy_of["yaw"], copy_of["texture"]
        else:
            shape = SHAPES[i % len(SHAPES)] if i < len(SHAPES) else str(rng.choice(SHAPES))
            if shape == "box":
                size = [float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.9))]
            elif shape == "cylinder":
                d = float(rng.uniform(0.3, 0.6))
                size = [d, d, float(rng.uniform(0.4, 1.0))]
            else:
                d = float(rng.uniform(0.35, 0.7))
                size = [d, d, d]
            yaw = float(rng.uniform(0, np.pi)) if shape == "box" else 0.0
            texture = _random_texture(rng)
            if crowded:
                size = [0.7 * x for x in size]
        footprint = 0.5 * float(np.hypot(size[0], size[1]))
        for _ in range(1000):
            r, a = radius * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
            xy = np.array([r * np.cos(a), r * np.sin(a)])
            if all(np.linalg.norm(xy - o["center"][:2]) > footprint + o["_footprint"] + 0.15 for o in objects):
                break
        else:
            raise ValueError(f"cannot place {num_objects} objects without overlap; use fewer objects")
        objects.append(
            {
                "id": i + 1,
                "shape": shape,
                "center": [float(xy[0]), float(xy[1]), size[2] / 2],
                "size": size,
                "yaw": yaw,
                "texture": texture,
                "lookalike_of": copy_of["id"] if copy_of is not None else None,
                "_footprint": footprint,
            }
        )
    for o in objects:
        del o["_footprint"]
    return objects


def look_at(position: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Camera-to-world 4x4 for an OpenCV camera at `position` looking at `target`, world z up."""
    forward = target - position
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, down, forward], axis=1)
    pose[:3, 3] = position
    return pose


def camera_path(num_frames: int, half_extent: float, phase: float, pan_deg: float = 60.0) -> np.ndarray:
    """(T, 4, 4) poses: one orbit around the centre with a side-to-side pan twice per orbit."""
    poses = []
    for t in np.arange(num_frames) / max(num_frames, 1):
        theta = phase + 2 * np.pi * t
        radius = half_extent * (0.72 + 0.08 * np.sin(6 * np.pi * t))
        position = np.array([radius * np.cos(theta), radius * np.sin(theta), 1.3 + 0.25 * np.sin(4 * np.pi * t)])
        pan = np.deg2rad(pan_deg) * np.sin(4 * np.pi * t + 0.5)
        to_centre = -position[:2] / np.linalg.norm(position[:2])
        c, s = np.cos(pan), np.sin(pan)
        direction = np.array([c * to_centre[0] - s * to_centre[1], s * to_centre[0] + c * to_centre[1]])
        target = np.array([*(position[:2] + direction * radius), 0.35])
        poses.append(look_at(position, target))
    return np.stack(poses)


def intrinsics(width: int, height: int, hfov_deg: float = 70.0) -> np.ndarray:
    f = 0.5 * width / np.tan(np.deg2rad(hfov_deg) / 2)
    return np.array([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]])


# ---------------------------------------------------------------------------------------- ray intersections


def _hit_room(o, d, half, height):
    """Ray from inside the room box: exit distance, normal (pointing inwards) and texture (u, v), face index."""
    lo = np.array([-half, -half, 0.0])
    hi = np.array([half, half, height])
    with np.errstate(divide="ignore", invalid="ignore"):
        t_axis = np.where(d > 0, (hi - o) / d, np.where(d < 0, (lo - o) / d, np.inf))
    axis = np.argmin(t_axis, axis=1)
    t = t_axis[np.arange(len(d)), axis]
    return t, axis


def _hit_box(o, d, obj):
    c, (sx, sy, sz), yaw = np.asarray(obj["center"]), obj["size"], obj["yaw"]
    cy_, sy_ = np.cos(-yaw), np.sin(-yaw)
    rot = np.array([[cy_, -sy_, 0], [sy_, cy_, 0], [0, 0, 1]])  # world -> local
    ol, dl = rot @ (o - c), d @ rot.T
    e = np.array([sx, sy, sz]) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (-e - ol) / dl, (e - ol) / dl
    t1 = np.where(np.isnan(t1), -np.inf, t1)
    t2 = np.where(np.isnan(t2), np.inf, t2)
    tnear = np.max(np.minimum(t1, t2), axis=1)
    tfar = np.min(np.maximum(t1, t2), axis=1)
    return np.where((tnear <= tfar) & (tnear > 1e-6), tnear, np.inf)


def _hit_cylinder(o, d, obj):
    c, r, h = np.asarray(obj["center"]), obj["size"][0] / 2, obj["size"][2]
    ox, oy = o[0] - c[0], o[1] - c[1]
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = 2 * (ox * d[:, 0] + oy * d[:, 1])
    cc = ox**2 + oy**2 - r**2
    disc = b**2 - 4 * a * cc
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
        z = o[2] + t_side * d[:, 2]
        t_side = np.where((disc >= 0) & (a > 0) & (t_side > 1e-6) & (z >= 0) & (z <= h), t_side, np.inf)
        t_top = (h - o[2]) / d[:, 2]
        px, py = ox + t_top * d[:, 0], oy + t_top * d[:, 1]
        t_top = np.where((t_top > 1e-6) & (px**2 + py**2 <= r**2), t_top, np.inf)
    return np.minimum(t_side, t_top)


def _hit_sphere(o, d, obj):
    c, r = np.asarray(obj["center"]), obj["size"][0] / 2
    oc = o - c
    a = np.einsum("ij,ij->i", d, d)
    b = 2 * d @ oc
    cc = oc @ oc - r**2
    disc = b**2 - 4 * a * cc
    t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    return np.where((disc >= 0) & (t > 1e-6), t, np.inf)


_HIT = {"box": _hit_box, "cylinder": _hit_cylinder, "sphere": _hit_sphere}


# ------------------------------------------------------------------------------------------------- shading


def _pattern(texture: dict, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    colors = np.asarray(texture["colors"], dtype=np.float64)
    iu, iv = np.floor(u / texture["scale"]).astype(np.int64), np.floor(v / texture["scale"]).astype(np.int64)
    kind = texture["pattern"]
    if kind == "checker":
        idx = (iu + iv) % 2
    elif kind == "stripes":
        idx = iv % 3
    elif kind == "rings":
        idx = np.floor(np.hypot(u % 0.6 - 0.3, v % 0.6 - 0.3) / (0.5 * texture["scale"])).astype(np.int64) % 3
    else:
        idx = np.asarray(texture["table"])[iu % 8, iv % 8]
    return colors[idx]


def _object_surface(p: np.ndarray, obj: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normal and texture coordinates at world points `p` on the object's surface."""
    c = np.asarray(obj["center"])
    q = p - c
    if obj["shape"] == "box":
        cy_, sy_ = np.cos(-obj["yaw"]), np.sin(-obj["yaw"])
        rot = np.array([[cy_, -sy_, 0], [sy_, cy_, 0], [0, 0, 1]])
        ql = q @ rot.T
        rel = np.abs(ql) / (np.asarray(obj["size"]) / 2)
        axis = np.argmax(rel, axis=1)
        n_local = np.zeros_like(ql)
        n_local[np.arange(len(ql)), axis] = np.sign(ql[np.arange(len(ql)), axis])
        normal = n_local @ rot  # local -> world
        other = np.array([[1, 2], [0, 2], [0, 1]])[axis]
        u = ql[np.arange(len(ql)), other[:, 0]] + 5.0
        v = ql[np.arange(len(ql)), other[:, 1]] + 5.0
        return normal, u, v
    if obj["shape"] == "cylinder":
        r, h = obj["size"][0] / 2, obj["size"][2]
        top = q[:, 2] >= h / 2 - 1e-6
        normal = np.where(top[:, None], [0.0, 0.0, 1.0], np.stack([q[:, 0], q[:, 1], 0 * q[:, 0]], 1) / r)
        u = np.where(top, q[:, 0] + 5, (np.arctan2(q[:, 1], q[:, 0]) + np.pi) * r)
        v = np.where(top, q[:, 1] + 5, q[:, 2] + h / 2)
        return normal, u, v
    r = obj["size"][0] / 2
    normal = q / r
    u = (np.arctan2(q[:, 1], q[:, 0]) + np.pi) * r
    v = (np.arccos(np.clip(q[:, 2] / r, -1, 1))) * r
    return normal, u, v


def _room_textures(rng: np.random.Generator) -> list[dict]:
    """Textures for floor, ceiling and the four walls (-x, +x, -y, +y)."""
    floor = {"pattern": "checker", "colors": rng.integers(60, 200, size=(3, 3)).tolist(), "scale": 0.5}
    ceiling = {"pattern": "checker", "colors": [[200, 200, 195]] * 3, "scale": 1.0}
    walls = []
    for _ in range(4):
        base = rng.integers(90, 230, size=3)
        walls.append(
            {
                "pattern": str(rng.choice(("stripes", "blocks"))),
                "colors": [base.tolist(), (base * 0.8).astype(int).tolist(), (base * 0.65).astype(int).tolist()],
                "scale": float(rng.uniform(0.2, 0.4)),
                "table": rng.integers(0, 3, size=(8, 8)).tolist(),
            }
        )
    return [floor, ceiling, *walls]


def _shade(color: np.ndarray, normal: np.ndarray, dist: np.ndarray) -> np.ndarray:
    lambert = np.abs(normal @ _LIGHT)  # two-sided: room walls face inwards
    falloff = 1.0 / (1.0 + 0.03 * dist**2)
    return color * (0.45 + 0.55 * lambert)[:, None] * (0.75 + 0.25 * falloff)[:, None]


# ------------------------------------------------------------------------------------------------- render


def render_frame(pose: np.ndarray, K: np.ndarray, width: int, height: int, objects: list[dict], room: dict):
    """Render one view: (rgb uint8 (H,W,3), depth float32 (H,W) metres, instance uint16 (H,W))."""
    us, vs = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    pix = np.stack([us.ravel(), vs.ravel(), np.ones(us.size)], axis=1)
    d = (pix @ np.linalg.inv(K).T) @ pose[:3, :3].T  # camera z = 1, so ray parameter t == depth
    o = pose[:3, 3]
    half, room_h = room["half_extent"], room["height"]
    t_best, face = _hit_room(o, d, half, room_h)
    ids = np.zeros(len(d), dtype=np.int64)
    for obj in objects:
        t = _HIT[obj["shape"]](o, d, obj)
        closer = t < t_best
        t_best = np.where(closer, t, t_best)
        ids[closer] = obj["id"]
    p = o + t_best[:, None] * d
    rgb = np.zeros((len(d), 3))
    dist = np.linalg.norm(p - o, axis=1)

    bg = ids == 0
    # room: axis 0 -> wall x, axis 1 -> wall y, axis 2 -> floor or ceiling
    pb, fb, db = p[bg], face[bg], d[bg]
    for k, texture in enumerate(room["textures"]):
        if k == 0:
            sel, u, v, n = (fb == 2) & (db[:, 2] < 0), pb[:, 0] + 10, pb[:, 1] + 10, [0, 0, 1.0]
        elif k == 1:
            sel, u, v, n = (fb == 2) & (db[:, 2] > 0), pb[:, 0] + 10, pb[:, 1] + 10, [0, 0, 1.0]
        else:
            axis, sign = (k - 2) // 2, -1 if (k - 2) % 2 == 0 else 1
            sel = (fb == axis) & (np.sign(db[:, axis]) == sign)
            u, v, n = pb[:, 1 - axis] + 10, pb[:, 2] + 10, np.eye(3)[axis]
        if sel.any():
            col = _pattern(texture, u[sel], v[sel])
            idx = np.flatnonzero(bg)[sel]
            rgb[idx] = _shade(col, np.broadcast_to(n, (len(idx), 3)), dist[idx])
    for obj in objects:
        sel = ids == obj["id"]
        if sel.any():
            normal, u, v = _object_surface(p[sel], obj)
            rgb[sel] = _shade(_pattern(obj["texture"], u, v), normal, dist[sel])
    shape = (height, width)
    return (
        np.clip(np.round(rgb), 0, 255).astype(np.uint8).reshape(*shape, 3),
        t_best.astype(np.float32).reshape(shape),
        ids.astype(np.uint16).reshape(shape),
    )


def render_scene(
    seed: int = 0,
    num_frames: int = 40,
    width: int = 160,
    height: int = 120,
    num_objects: int = 4,
    lookalike: bool = False,
    hfov_deg: float = 70.0,
    pan_deg: float = 60.0,
) -> dict:
    """Render a whole scene in memory (see the module docstring for the returned keys)."""
    if num_frames < 1 or width < 8 or height < 8:
        raise ValueError(f"need num_frames >= 1 and an image of at least 8x8, got {num_frames}, {width}x{height}")
    if not 1 <= num_objects <= MAX_OBJECTS:
        raise ValueError(f"num_objects must be in 1..{MAX_OBJECTS}, got {num_objects}")
    if lookalike and num_objects < 2:
        raise ValueError("lookalike=True needs num_objects >= 2 (the last object copies the first)")
    rng = np.random.default_rng(seed)
    half_extent = float(rng.uniform(3.0, 4.0))
    room = {"half_extent": half_extent, "height": 2.8, "textures": _room_textures(rng)}
    objects = _layout(rng, num_objects, lookalike, half_extent)
    K = intrinsics(width, height, hfov_deg)
    poses = camera_path(num_frames, half_extent, phase=float(rng.uniform(0, 2 * np.pi)), pan_deg=pan_deg)
    frames = [render_frame(pose, K, width, height, objects, room) for pose in poses]
    rgb, depth, instance = (np.stack(x) for x in zip(*frames))
    meta = {
        "format": FORMAT,
        "seed": seed,
        "width": width,
        "height": height,
        "num_frames": num_frames,
        "depth_scale": DEPTH_SCALE,
        "room": {"half_extent": half_extent, "height": room["height"]},
        "conventions": "world z-up, floor z=0; camera OpenCV (x right, y down, z forward); poses camera-to-world; "
        "pixel centre (u, v) back-projects as K^-1 [u, v, 1]",
    }
    return {"rgb": rgb, "depth": depth, "instance": instance, "K": K, "poses": poses, "objects": objects, "meta": meta}


# ------------------------------------------------------------------------------------------ scene points


def _grid(lo: float, hi: float, spacing: float) -> np.ndarray:
    """Cell centres of a regular grid over [lo, hi] (at least one)."""
    n = max(int(np.ceil((hi - lo) / spacing)), 1)
    return lo + (np.arange(n) + 0.5) * (hi - lo) / n


def _plane(u: np.ndarray, v: np.ndarray, origin, axis_u, axis_v, normal) -> tuple[np.ndarray, np.ndarray]:
    uu, vv = (g.ravel() for g in np.meshgrid(u, v))
    pts = np.asarray(origin) + uu[:, None] * np.asarray(axis_u) + vv[:, None] * np.asarray(axis_v)
    return pts, np.broadcast_to(np.asarray(normal, dtype=np.float64), pts.shape)


def _surface_samples(obj: dict, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Points and outward normals on an object's surface, about `spacing` apart (no bottom: it rests on the floor)."""
    c = np.asarray(obj["center"], dtype=np.float64)
    sx, sy, sz = obj["size"]
    parts = []
    if obj["shape"] == "box":
        ex, ey, ez = sx / 2, sy / 2, sz / 2
        gx, gy, gz = _grid(-ex, ex, spacing), _grid(-ey, ey, spacing), _grid(-ez, ez, spacing)
        for sign in (-1.0, 1.0):
            parts.append(_plane(gy, gz, [sign * ex, 0, 0], [0, 1, 0], [0, 0, 1], [sign, 0, 0]))
            parts.append(_plane(gx, gz, [0, sign * ey, 0], [1, 0, 0], [0, 0, 1], [0, sign, 0]))
        parts.append(_plane(gx, gy, [0, 0, ez], [1, 0, 0], [0, 1, 0], [0, 0, 1]))
        pts, nrm = (np.concatenate(x) for x in zip(*parts))
        c_, s_ = np.cos(obj["yaw"]), np.sin(obj["yaw"])
        rot = np.array([[c_, -s_, 0], [s_, c_, 0], [0, 0, 1]])  # local -> world
        return c + pts @ rot.T, nrm @ rot.T
    if obj["shape"] == "cylinder":
        r = sx / 2
        angles = _grid(0, 2 * np.pi, spacing / r)
        a, z = (g.ravel() for g in np.meshgrid(angles, _grid(-sz / 2, sz / 2, spacing)))
        side_n = np.stack([np.cos(a), np.sin(a), np.zeros_like(a)], 1)
        side = np.stack([r * np.cos(a), r * np.sin(a), z], 1)
        top, top_n = _plane(
            _grid(-r, r, spacing), _grid(-r, r, spacing), [0, 0, sz / 2], [1, 0, 0], [0, 1, 0], [0, 0, 1]
        )
        inside = np.hypot(top[:, 0], top[:, 1]) <= r
        return c + np.concatenate([side, top[inside]]), np.concatenate([side_n, top_n[inside]])
    r = sx / 2  # sphere: a Fibonacci lattice, evenly spread without a random draw
    n = max(int(np.ceil(4 * np.pi * r * r / spacing**2)), 8)
    k = np.arange(n) + 0.5
    z = 1 - 2 * k / n
    phi = np.pi * (1 + 5**0.5) * k
    rho = np.sqrt(1 - z * z)
    nrm = np.stack([rho * np.cos(phi), rho * np.sin(phi), z], 1)
    return c + r * nrm, nrm


def _room_samples(room: dict, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Floor, ceiling and the four walls, normals pointing into the room."""
    half, height = room["half_extent"], room["height"]
    g, gz = _grid(-half, half, spacing), _grid(0, height, spacing)
    parts = [
        _plane(g, g, [0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]),
        _plane(g, g, [0, 0, height], [1, 0, 0], [0, 1, 0], [0, 0, -1]),
    ]
    for sign in (-1.0, 1.0):
        parts.append(_plane(g, gz, [sign * half, 0, 0], [0, 1, 0], [0, 0, 1], [-sign, 0, 0]))
        parts.append(_plane(g, gz, [0, sign * half, 0], [1, 0, 0], [0, 0, 1], [0, -sign, 0]))
    return tuple(np.concatenate(x) for x in zip(*parts))


def scene_points(scene: dict, spacing: float = 0.04, depth_tolerance: float = 0.03) -> dict:
    """The scene's surfaces as a point cloud with instance ids, keeping only what some frame of `scene` sees.

    `scene` is what `render_scene` returns. Surfaces are sampled on regular grids about `spacing` metres apart (no
    random draw: the same scene gives the same points); a point is kept when it projects into a frame with a depth
    within `depth_tolerance` (+1 % of the depth) of the rendered depth there, as a reconstruction from these frames
    would keep it (so the floor under an object and most of the ceiling are absent). Returns::

        points   (N, 3) float32 world coordinates
        normals  (N, 3) float32 unit normals (outwards from objects, into the room for walls and floor)
        colors   (N, 3) uint8, the pixel of the first frame that sees the point
        instance (N,) int64 object id, 0 = room (floor, walls, ceiling)
    """
    if spacing <= 0:
        raise ValueError(f"spacing must be > 0 metres, got {spacing}")
    pts, nrm = _room_samples(scene["meta"]["room"], spacing)
    chunks, ids = [(pts, nrm)], [np.zeros(len(pts), np.int64)]
    for obj in scene["objects"]:
        p, n = _surface_samples(obj, spacing)
        chunks.append((p, n))
        ids.append(np.full(len(p), obj["id"], np.int64))
    pts, nrm = (np.concatenate(x) for x in zip(*chunks))
    ids = np.concatenate(ids)
    K, (h, w) = scene["K"], scene["depth"].shape[1:]
    colors = np.zeros((len(pts), 3), np.uint8)
    seen = np.zeros(len(pts), bool)
    for t, pose in enumerate(scene["poses"]):
        cam = (pts - pose[:3, 3]) @ pose[:3, :3]
        z = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = np.round(K[0, 0] * cam[:, 0] / z + K[0, 2])
            v = np.round(K[1, 1] * cam[:, 1] / z + K[1, 2])
        ok = (z > 1e-3) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        idx = np.flatnonzero(ok)
        ui, vi = u[idx].astype(np.int64), v[idx].astype(np.int64)
        agree = np.abs(z[idx] - scene["depth"][t][vi, ui]) <= depth_tolerance + 0.01 * z[idx]
        new = idx[agree & ~seen[idx]]
        colors[new] = scene["rgb"][t][v[new].astype(np.int64), u[new].astype(np.int64)]
        seen[idx[agree]] = True
    return {
        "points": pts[seen].astype(np.float32),
        "normals": nrm[seen].astype(np.float32),
        "colors": colors[seen],
        "instance": ids[seen],
    }


def write_scene_points(path, points: dict) -> pathlib.Path:
    """`scene_points` output as a binary PLY: x y z nx ny nz red green blue instance."""
    from threeam_model.data.ply import write_ply

    p, n, c = points["points"], points["normals"], points["colors"]
    return write_ply(
        path,
        {
            "x": p[:, 0],
            "y": p[:, 1],
            "z": p[:, 2],
            "nx": n[:, 0],
            "ny": n[:, 1],
            "nz": n[:, 2],
            "red": c[:, 0],
            "green": c[:, 1],
            "blue": c[:, 2],
            "instance": points["instance"].astype(np.int32),
        },
    )


def generate_scene(
    out_dir,
    seed: int = 0,
    num_frames: int = 40,
    width: int = 160,
    height: int = 120,
    num_objects: int = 4,
    lookalike: bool = False,
    hfov_deg: float = 70.0,
    pan_deg: float = 60.0,
    with_points: bool = False,
    point_spacing: float = 0.04,
) -> pathlib.Path:
    """Render a scene and write it to `out_dir` in the layout of the module docstring; returns the path.

    with_points: also write `points.ply`, the scene's surface points with instance ids (`scene_points`)."""
    import cv2

    scene = render_scene(seed, num_frames, width, height, num_objects, lookalike, hfov_deg, pan_deg)
    out = pathlib.Path(out_dir)
    for sub in ("rgb", "depth", "instance"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for i in range(num_frames):
        name = f"{i:05d}.png"
        cv2.imwrite(str(out / "rgb" / name), scene["rgb"][i][:, :, ::-1])
        depth_mm = np.clip(np.round(scene["depth"][i] * DEPTH_SCALE), 0, 65535).astype(np.uint16)
        cv2.imwrite(str(out / "depth" / name), depth_mm)
        cv2.imwrite(str(out / "instance" / name), scene["instance"][i])
    np.savetxt(out / "intrinsics.txt", scene["K"], fmt="%.10f")
    np.savetxt(out / "poses.txt", scene["poses"].reshape(num_frames, 16), fmt="%.10f")
    meta = dict(scene["meta"], objects=scene["objects"])
    (out / "scene.json").write_text(json.dumps(meta, indent=1))
    if with_points:
        write_scene_points(out / POINTS_FILE, scene_points(scene, point_spacing))
    return out


def export_davis(scene_dir, out_root, name: str | None = None) -> pathlib.Path:
    """Write a generated scene as a DAVIS-2017 / MOSE style video: JPEGImages/<name>/*.jpg, Annotations/<name>/*.png.

    Annotations are 8-bit palette PNGs whose pixel value is the object id (ids must be < 256). Returns out_root.
    """
    from PIL import Image

    from threeam_model.data.labels_io import write_annotation

    scene = SyntheticScene(scene_dir)
    name = name or pathlib.Path(scene_dir).name
    root = pathlib.Path(out_root)
    (root / "JPEGImages" / name).mkdir(parents=True, exist_ok=True)
    (root / "Annotations" / name).mkdir(parents=True, exist_ok=True)
    if max(scene.object_ids, default=0) > 255:
        raise ValueError("DAVIS palette annotations hold ids up to 255")
    for i in range(len(scene)):
        frame = scene.frame(i)
        Image.fromarray(frame.rgb).save(root / "JPEGImages" / name / f"{i:05d}.jpg", quality=95, subsampling=0)
        write_annotation(root / "Annotations" / name / f"{i:05d}.png", frame.instance)
    return root
