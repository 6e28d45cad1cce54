"""PLY point clouds and triangle meshes: a small reader (ascii and binary little-endian) and a binary writer.

Enough for the scenes this project reads and writes: ScanNet's `*_vh_clean_2.ply`, ScanNet++'s `mesh_aligned_*.ply`
and the generated scenes' `points.ply`: one `vertex` element of scalar properties and an optional `face` element
whose one list property holds the vertex indices. Other elements after these are not read.
"""

from __future__ import annotations

import pathlib

import numpy as np

_TYPES = {
    "char": "i1",
    "int8": "i1",
    "uchar": "u1",
    "uint8": "u1",
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "uint16": "u2",
    "int": "i4",
    "int32": "i4",
    "uint": "u4",
    "uint32": "u4",
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
}
_NAMES = {
    "i1": "char",
    "u1": "uchar",
    "i2": "short",
    "u2": "ushort",
    "i4": "int",
    "u4": "uint",
    "f4": "float",
    "f8": "double",
}


def read_ply(path) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """-> ({vertex property name: (N,) array}, faces (M, K) int64 or None). Faces must all have K corners."""
    data = pathlib.Path(path).read_bytes()
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise ValueError(f"{path}: not a PLY file")
    body = data.index(b"\n", end) + 1
    fmt, elements = None, []  # [name, count, [(prop, dtype) | (prop, count dtype, index dtype)]]
    for line in data[:end].decode("ascii", "replace").splitlines():
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            fmt = words[1]
        elif words[0] == "element":
            elements.append([words[1], int(words[2]), []])
        elif words[0] == "property":
            if words[1] == "list":
                elements[-1][2].append((words[4], _TYPES[words[2]], _TYPES[words[3]]))
            else:
                elements[-1][2].append((words[2], _TYPES[words[1]]))
    if fmt not in ("ascii", "binary_little_endian"):
        raise ValueError(f"{path}: PLY format {fmt!r} is not supported (ascii or binary_little_endian)")
    vertices, faces = None, None
    if fmt == "ascii":
        tokens = data[body:].split()
        pos = 0
        for name, count, props in elements:
            if name == "vertex":
                table = np.array(tokens[pos : pos + count * len(props)], dtype=np.float64).reshape(count, len(props))
                vertices = {p[0]: table[:, i].astype(p[1]) for i, p in enumerate(props)}
                pos += count * len(props)
            elif name == "face":
                rows = []
                for _ in range(count):
                    k = int(tokens[pos])
                    rows.append([int(t) for t in tokens[pos + 1 : pos + 1 + k]])
                    pos += 1 + k
                faces = np.array(rows, dtype=np.int64)
            else:
                break
        return vertices or {}, faces
    pos = body
    for name, count, props in elements:
        if name == "vertex":
            dtype = np.dtype([(p[0], "<" + p[1]) for p in props])
            table = np.frombuffer(data, dtype=dtype, count=count, offset=pos)
            vertices = {p[0]: table[p[0]].copy() for p in props}
            pos += dtype.itemsize * count
        elif name == "face" and len(props) == 1 and len(props[0]) == 3:
            _, count_t, index_t = props[0]
            k = int(np.frombuffer(data, dtype=count_t, count=1, offset=pos)[0]) if count else 0
            dtype = np.dtype([("k", count_t), ("idx", "<" + index_t, (k,))])
            table = np.frombuffer(data, dtype=dtype, count=count, offset=pos)
            if (table["k"] != k).any():
                raise ValueError(f"{path}: faces with different corner counts are not supported")
            faces = table["idx"].astype(np.int64)
            pos += dtype.itemsize * count
        else:
            break
    return vertices or {}, faces


def write_ply(path, vertex: dict[str, np.ndarray], faces: np.ndarray | None = None) -> pathlib.Path:
    """Binary little-endian PLY: vertex properties in the given order (each (N,) array), faces (M, 3) optional."""
    path = pathlib.Path(path)
    cols = {k: np.asarray(v).reshape(-1) for k, v in vertex.items()}
    n = len(next(iter(cols.values())))
    dtype = np.dtype([(k, "<" + v.dtype.str[1:]) for k, v in cols.items()])
    table = np.empty(n, dtype=dtype)
    for k, v in cols.items():
        if len(v) != n:
            raise ValueError(f"vertex property {k} has {len(v)} values, expected {n}")
        table[k] = v
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property {_NAMES[v.dtype.str[1:]]} {k}" for k, v in cols.items()]
    face_bytes = b""
    if faces is not None:
        faces = np.asarray(faces, dtype=np.int32).reshape(-1, 3)
        header += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
        ftable = np.empty(len(faces), dtype=[("k", "u1"), ("idx", "<i4", (3,))])
        ftable["k"], ftable["idx"] = 3, faces
        face_bytes = ftable.tobytes()
    header.append("end_header")
    path.write_bytes(("\n".join(header) + "\n").encode("ascii") + table.tobytes() + face_bytes)
    return path


__all__ = ["read_ply", "write_ply"]
