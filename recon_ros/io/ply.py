"""PLY point clouds and meshes.

Writing: binary little-endian, vertex properties ``x y z`` (float), ``red green blue`` (uchar),
optional ``confidence`` (float), optional triangle faces; written atomically.
Reading: binary (little or big endian) and ASCII files with any vertex properties, and faces
given as ``list uchar/int int/uint vertex_indices`` (triangles; polygons are fan-triangulated),
enough to read a ground-truth mesh from other tools. Vectorised for triangle-only meshes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from recon_ros.errors import DataFormatError, UserInputError
from recon_ros.io.atomic import atomic_path

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


@dataclass
class PlyData:
    """``points`` (N, 3) float; ``colors`` (N, 3) uint8 or None; ``confidence`` (N,) or None;
    ``faces`` (F, 3) int64 or None; ``vertex`` is the full structured vertex array."""

    points: np.ndarray
    colors: Optional[np.ndarray] = None
    confidence: Optional[np.ndarray] = None
    faces: Optional[np.ndarray] = None
    normals: Optional[np.ndarray] = None
    vertex: Optional[np.ndarray] = None


def write_ply(path: Union[str, os.PathLike], points: np.ndarray, colors: Optional[np.ndarray] = None,
              confidence: Optional[np.ndarray] = None, faces: Optional[np.ndarray] = None,
              normals: Optional[np.ndarray] = None) -> Path:
    """Write a binary little-endian PLY atomically (x y z [nx ny nz] [red green blue]
    [confidence] and optional triangles); returns the path."""
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    n = pts.shape[0]
    names, formats = ["x", "y", "z"], ["<f4"] * 3
    if normals is not None:
        normals = np.asarray(normals, dtype=np.float32).reshape(-1, 3)
        if normals.shape[0] != n:
            raise UserInputError(f"{normals.shape[0]} normals for {n} points")
        names += ["nx", "ny", "nz"]
        formats += ["<f4"] * 3
    if colors is not None:
        colors = np.asarray(colors).reshape(-1, 3)
        if colors.shape[0] != n:
            raise UserInputError(f"{colors.shape[0]} colours for {n} points")
        if colors.dtype != np.uint8:
            colors = np.clip(np.rint(colors * (255.0 if colors.max(initial=0) <= 1.0 else 1.0)), 0, 255)
        names += ["red", "green", "blue"]
        formats += ["u1"] * 3
    if confidence is not None:
        confidence = np.asarray(confidence, dtype=np.float32).reshape(-1)
        if confidence.shape[0] != n:
            raise UserInputError(f"{confidence.shape[0]} confidences for {n} points")
        names.append("confidence")
        formats.append("<f4")
    dt = np.dtype({"names": names, "formats": formats})
    v = np.empty(n, dtype=dt)
    v["x"], v["y"], v["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
    if normals is not None:
        v["nx"], v["ny"], v["nz"] = normals[:, 0], normals[:, 1], normals[:, 2]
    if colors is not None:
        c = colors.astype(np.uint8)
        v["red"], v["green"], v["blue"] = c[:, 0], c[:, 1], c[:, 2]
    if confidence is not None:
        v["confidence"] = confidence
    header = ["ply", "format binary_little_endian 1.0", "comment written by recon_ros",
              f"element vertex {n}"]
    ply_names = {"<f4": "float", "u1": "uchar"}
    header += [f"property {ply_names[f]} {nm}" for nm, f in zip(names, formats)]
    face_bytes = b""
    if faces is not None:
        f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
        if f.size and (f.min() < 0 or f.max() >= n):
            raise UserInputError("face indices out of range of the vertices")
        header += [f"element face {f.shape[0]}", "property list uchar int vertex_indices"]
        fd = np.empty(f.shape[0], dtype=np.dtype([("n", "u1"), ("i", "<i4", (3,))]))
        fd["n"] = 3
        fd["i"] = f
        face_bytes = fd.tobytes()
    header.append("end_header")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(("\n".join(header) + "\n").encode("ascii"))
            fh.write(v.tobytes())
            fh.write(face_bytes)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def _parse_header(fh) -> tuple[str, list[dict]]:
    first = fh.readline()
    if first.strip() != b"ply":
        raise DataFormatError("not a PLY file (it does not start with 'ply')")
    fmt = None
    elements: list[dict] = []
    while True:
        line = fh.readline()
        if not line:
            raise DataFormatError("PLY header has no end_header line")
        tok = line.decode("ascii", errors="replace").split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        if tok[0] == "end_header":
            break
        if tok[0] == "format":
            fmt = tok[1]
        elif tok[0] == "element":
            elements.append({"name": tok[1], "count": int(tok[2]), "props": []})
        elif tok[0] == "property":
            if not elements:
                raise DataFormatError("PLY property before any element")
            if tok[1] == "list":
                elements[-1]["props"].append(("list", tok[4], tok[2], tok[3]))
            else:
                if tok[1] not in _PLY_TYPES:
                    raise DataFormatError(f"unknown PLY property type {tok[1]!r}")
                elements[-1]["props"].append(("scalar", tok[2], tok[1]))
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise DataFormatError(f"unsupported PLY format {fmt!r}")
    return fmt, elements


def _read_binary_element(buf: memoryview, pos: int, el: dict, order: str) -> tuple[np.ndarray, int]:
    props = el["props"]
    n = el["count"]
    if all(p[0] == "scalar" for p in props):
        dt = np.dtype([(p[1], order + _PLY_TYPES[p[2]]) for p in props])
        end = pos + n * dt.itemsize
        if end > len(buf):
            raise DataFormatError(f"PLY file is truncated in element {el['name']}")
        return np.frombuffer(buf[pos:end], dtype=dt).copy(), end
    if len(props) == 1 and props[0][0] == "list":
        _, name, ctype, itype = props[0]
        cdt = np.dtype(order + _PLY_TYPES[ctype])
        idt = np.dtype(order + _PLY_TYPES[itype])
        if pos + cdt.itemsize > len(buf) and n:
            raise DataFormatError("PLY file is truncated in the faces")
        k = int(np.frombuffer(buf[pos:pos + cdt.itemsize], dtype=cdt)[0]) if n else 3
        dt = np.dtype([("n", cdt), (name, idt, (k,))])
        end = pos + n * dt.itemsize
        if end <= len(buf):
            arr = np.frombuffer(buf[pos:end], dtype=dt)
            if np.all(arr["n"] == k):  # fast path: all polygons have the same size
                return _fan(arr[name].astype(np.int64)), end
        # mixed polygon sizes: walk the records (one pass over faces, not points)
        out, p = [], pos
        for _ in range(n):
            c = int(np.frombuffer(buf[p:p + cdt.itemsize], dtype=cdt)[0])
            p += cdt.itemsize
            idx = np.frombuffer(buf[p:p + c * idt.itemsize], dtype=idt).astype(np.int64)
            p += c * idt.itemsize
            out.append(_fan(idx[None]))
        return (np.concatenate(out) if out else np.zeros((0, 3), np.int64)), p
    raise DataFormatError(f"PLY element {el['name']} mixes list and scalar properties; not supported")


def _fan(poly: np.ndarray) -> np.ndarray:
    """Triangulate (F, k) polygons as fans -> (F*(k-2), 3)."""
    k = poly.shape[1]
    if k < 3:
        return np.zeros((0, 3), dtype=np.int64)
    tris = [np.stack([poly[:, 0], poly[:, j], poly[:, j + 1]], axis=1) for j in range(1, k - 1)]
    return np.stack(tris, axis=1).reshape(-1, 3)


def read_ply(path: Union[str, os.PathLike]) -> PlyData:
    """Read vertices (and faces if any) of a PLY file."""
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"PLY file {p} does not exist")
    with open(p, "rb") as fh:
        fmt, elements = _parse_header(fh)
        body = fh.read()
    vertex, faces = None, None
    if fmt == "ascii":
        tokens = body.split()
        pos = 0
        for el in elements:
            if all(pr[0] == "scalar" for pr in el["props"]):
                k = len(el["props"])
                vals = np.array(tokens[pos:pos + k * el["count"]], dtype=np.float64)
                if vals.size != k * el["count"]:
                    raise DataFormatError(f"PLY file is truncated in element {el['name']}")
                vals = vals.reshape(el["count"], k)
                pos += k * el["count"]
                arr = np.empty(el["count"], dtype=[(pr[1], _PLY_TYPES[pr[2]]) for pr in el["props"]])
                for j, pr in enumerate(el["props"]):
                    arr[pr[1]] = vals[:, j]
            else:
                polys = []
                for _ in range(el["count"]):
                    c = int(tokens[pos])
                    polys.append(_fan(np.array(tokens[pos + 1:pos + 1 + c], dtype=np.int64)[None]))
                    pos += 1 + c
                arr = np.concatenate(polys) if polys else np.zeros((0, 3), np.int64)
            if el["name"] == "vertex":
                vertex = arr
            elif el["name"] == "face":
                faces = arr
    else:
        order = "<" if fmt == "binary_little_endian" else ">"
        buf = memoryview(body)
        pos = 0
        for el in elements:
            arr, pos = _read_binary_element(buf, pos, el, order)
            if el["name"] == "vertex":
                vertex = arr
            elif el["name"] == "face":
                faces = arr
    if vertex is None:
        raise DataFormatError(f"{p} has no vertex element")
    names = vertex.dtype.names
    if not all(c in names for c in ("x", "y", "z")):
        raise DataFormatError(f"{p}: vertices have no x y z properties")
    pts = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float64)
    colors = None
    for r, g, b in (("red", "green", "blue"), ("r", "g", "b"), ("diffuse_red", "diffuse_green", "diffuse_blue")):
        if all(c in names for c in (r, g, b)):
            colors = np.stack([vertex[r], vertex[g], vertex[b]], axis=1)
            if colors.dtype.kind == "f":
                colors = np.clip(np.rint(colors * 255.0), 0, 255)
            colors = colors.astype(np.uint8)
            break
    conf = vertex["confidence"].astype(np.float32) if "confidence" in names else None
    normals = (np.stack([vertex["nx"], vertex["ny"], vertex["nz"]], axis=1).astype(np.float64)
               if all(c in names for c in ("nx", "ny", "nz")) else None)
    if faces is not None and faces.size and (faces.min() < 0 or faces.max() >= len(pts)):
        raise DataFormatError(f"{p}: face indices refer to missing vertices")
    return PlyData(points=pts, colors=colors, confidence=conf, faces=faces, normals=normals, vertex=vertex)
