"""Reading and writing the files evaluation works on: TUM trajectories and PLY point clouds.

TUM lines are ``stamp tx ty tz qx qy qz qw`` (stamp in seconds, quaternion x, y, z, w) with
``#`` comments. PLY files may be ASCII or binary (either byte order) with a ``vertex`` element
(x, y, z and optionally nx, ny, nz and red, green, blue) and an optional triangle ``face``
element. Written files are binary little-endian PLY and TUM text, always atomically.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from recon_ros.errors import DataFormatError, UserInputError
from recon_ros.geometry.transforms import matrix_to_quat, quat_to_matrix
from recon_ros.io.atomic import write_bytes_atomic, write_text_atomic

def _require_file(path: "str | os.PathLike[str]", what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"{what} not found: {p}")
    return p


# ------------------------------------------------------------------ TUM
def stamp_to_ns(text: str) -> int:
    """Exact nanoseconds of a decimal stamp in seconds ("1700000000.033333333")."""
    text = text.strip()
    if "e" in text.lower():
        return int(round(float(text) * 1e9))
    neg = text.startswith("-")
    whole, _, frac = text.lstrip("+-").partition(".")
    ns = int(whole or "0") * 1_000_000_000 + int((frac + "000000000")[:9] or "0")
    return -ns if neg else ns


def ns_to_stamp(ns: int) -> str:
    ns = int(ns)
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    return f"{sign}{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def read_tum(path: "str | os.PathLike[str]") -> Tuple[np.ndarray, np.ndarray]:
    """(stamps_ns (N,) int64, poses T_world_cam (N, 4, 4)) of a TUM trajectory file."""
    p = _require_file(path, "trajectory file")
    stamps: List[int] = []
    rows: List[List[float]] = []
    for lineno, line in enumerate(p.read_text(errors="replace").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 8:
            raise DataFormatError(f"{p}:{lineno}: expected 8 values 'stamp tx ty tz qx qy qz qw', "
                                  f"got {len(parts)}")
        try:
            stamps.append(stamp_to_ns(parts[0]))
            rows.append([float(v) for v in parts[1:]])
        except ValueError:
            raise DataFormatError(f"{p}:{lineno}: not a number in {line!r}") from None
    if not rows:
        raise DataFormatError(f"{p}: no poses found (expected lines 'stamp tx ty tz qx qy qz qw')")
    vals = np.asarray(rows)
    if not np.all(np.isfinite(vals)):
        raise DataFormatError(f"{p}: non-finite values in the trajectory")
    qn = np.linalg.norm(vals[:, 3:], axis=1)
    if np.any(qn < 1e-9):
        raise DataFormatError(f"{p}: zero quaternion at pose {int(np.argmin(qn))}")
    poses = np.tile(np.eye(4), (len(vals), 1, 1))
    poses[:, :3, :3] = quat_to_matrix(vals[:, 3:])
    poses[:, :3, 3] = vals[:, :3]
    stamps_ns = np.asarray(stamps, dtype=np.int64)
    order = np.argsort(stamps_ns, kind="stable")
    return stamps_ns[order], poses[order]


def format_tum(stamps_ns: np.ndarray, poses: np.ndarray) -> str:
    poses = np.asarray(poses, dtype=np.float64)
    q = matrix_to_quat(poses[:, :3, :3])
    t = poses[:, :3, 3]
    lines = ["# stamp tx ty tz qx qy qz qw"]
    lines += [f"{ns_to_stamp(s)} " + " ".join(f"{v:.9f}" for v in (*ti, *qi))
              for s, ti, qi in zip(np.asarray(stamps_ns).tolist(), t, q)]
    return "\n".join(lines) + "\n"


def write_tum(path: "str | os.PathLike[str]", stamps_ns: np.ndarray, poses: np.ndarray) -> Path:
    if len(stamps_ns) != len(poses):
        raise ValueError(f"{len(stamps_ns)} stamps but {len(poses)} poses")
    return write_text_atomic(path, format_tum(stamps_ns, poses))


# ------------------------------------------------------------------ PLY
@dataclass
class PlyData:
    points: np.ndarray  # (N, 3) float64
    normals: Optional[np.ndarray] = None  # (N, 3) float64
    colors: Optional[np.ndarray] = None  # (N, 3) uint8
    faces: Optional[np.ndarray] = None  # (M, 3) int64 triangle vertex indices


_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


@dataclass
class _Element:
    name: str
    count: int
    props: List[Tuple[str, str]]  # (name, numpy type) for scalars
    list_props: List[Tuple[str, str, str]]  # (name, count type, item type)


def _parse_header(fh: io.BufferedReader, p: Path) -> Tuple[str, List[_Element]]:
    if fh.readline().strip() != b"ply":
        raise DataFormatError(f"{p} is not a PLY file (no 'ply' magic line)")
    fmt = ""
    elements: List[_Element] = []
    while True:
        raw = fh.readline()
        if not raw:
            raise DataFormatError(f"{p}: PLY header has no 'end_header'")
        words = raw.decode("ascii", errors="replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        try:
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                elements.append(_Element(words[1], int(words[2]), [], []))
            elif words[0] == "property" and words[1] == "list":
                elements[-1].list_props.append((words[4], _PLY_TYPES[words[2]], _PLY_TYPES[words[3]]))
            elif words[0] == "property":
                elements[-1].props.append((words[2], _PLY_TYPES[words[1]]))
            elif words[0] == "end_header":
                break
        except (IndexError, KeyError, ValueError):
            raise DataFormatError(f"{p}: malformed PLY header line {raw.strip()!r}") from None
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise DataFormatError(f"{p}: unsupported PLY format {fmt!r}")
    return fmt, elements


def read_ply(path: "str | os.PathLike[str]") -> PlyData:
    """Vertices (and triangles, if any) of a PLY file."""
    p = _require_file(path, "point cloud file")
    with open(p, "rb") as fh:
        fmt, elements = _parse_header(fh, p)
        body = fh.read()
    names = [e.name for e in elements]
    if "vertex" not in names:
        raise DataFormatError(f"{p}: PLY file has no 'vertex' element")
    try:
        if fmt == "ascii":
            data = _read_ascii(body, elements)
        else:
            data = _read_binary(body, elements, "<" if fmt == "binary_little_endian" else ">")
    except (ValueError, IndexError) as exc:
        raise DataFormatError(f"{p}: PLY data does not match its header ({exc})") from None
    vert = data["vertex"]
    if not all(k in vert for k in ("x", "y", "z")):
        raise DataFormatError(f"{p}: PLY vertices lack x, y, z properties")
    pts = np.stack([vert["x"], vert["y"], vert["z"]], axis=1).astype(np.float64)
    normals = colors = faces = None
    if all(k in vert for k in ("nx", "ny", "nz")):
        normals = np.stack([vert["nx"], vert["ny"], vert["nz"]], axis=1).astype(np.float64)
    for keys in (("red", "green", "blue"), ("r", "g", "b"), ("diffuse_red", "diffuse_green", "diffuse_blue")):
        if all(k in vert for k in keys):
            c = np.stack([vert[k] for k in keys], axis=1)
            if np.issubdtype(c.dtype, np.floating) and c.size and c.max() <= 1.0:
                c = c * 255.0
            colors = np.clip(np.round(c), 0, 255).astype(np.uint8)
            break
    if "face" in data and data["face"].get("_indices") is not None:
        faces = data["face"]["_indices"].astype(np.int64)
        if faces.size and (faces.min() < 0 or faces.max() >= len(pts)):
            raise DataFormatError(f"{p}: PLY faces index vertices that do not exist")
    return PlyData(pts, normals, colors, faces)


def _read_binary(body: bytes, elements: List[_Element], endian: str) -> dict:
    out: dict = {}
    offset = 0
    for el in elements:
        if el.list_props:
            if len(el.list_props) != 1 or el.props:
                raise ValueError(f"element '{el.name}' mixes list and scalar properties")
            _, ct, it = el.list_props[0]
            rec = np.dtype([("n", endian + ct), ("i", endian + it, (3,))])
            arr = np.frombuffer(body, dtype=rec, count=el.count, offset=offset)
            if el.count and np.any(arr["n"] != 3):
                raise ValueError(f"only triangle faces are supported in element '{el.name}'")
            out[el.name] = {"_indices": arr["i"].astype(np.int64)}
            offset += rec.itemsize * el.count
            continue
        rec = np.dtype([(n, endian + t) for n, t in el.props])
        arr = np.frombuffer(body, dtype=rec, count=el.count, offset=offset)
        out[el.name] = {n: arr[n] for n, _ in el.props}
        offset += rec.itemsize * el.count
    return out


def _read_ascii(body: bytes, elements: List[_Element]) -> dict:
    lines = body.decode("ascii", errors="replace").splitlines()
    lines = [ln for ln in lines if ln.strip()]
    out: dict = {}
    start = 0
    for el in elements:
        block = lines[start:start + el.count]
        if len(block) != el.count:
            raise ValueError(f"element '{el.name}' has {len(block)} of {el.count} rows")
        start += el.count
        if el.list_props:
            arr = np.array([ln.split() for ln in block], dtype=np.float64) if block else np.zeros((0, 4))
            if arr.ndim != 2 or arr.shape[1] != 4 or np.any(arr[:, 0] != 3):
                raise ValueError(f"only triangle faces are supported in element '{el.name}'")
            out[el.name] = {"_indices": arr[:, 1:].astype(np.int64)}
            continue
        arr = np.array([ln.split() for ln in block], dtype=np.float64).reshape(el.count, len(el.props))
        out[el.name] = {n: arr[:, k].astype(t) for k, (n, t) in enumerate(el.props)}
    return out


def ply_bytes(points: np.ndarray, normals: Optional[np.ndarray] = None,
              colors: Optional[np.ndarray] = None, faces: Optional[np.ndarray] = None) -> bytes:
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if normals is not None:
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    arr = np.empty(len(points), dtype=np.dtype(fields))
    arr["x"], arr["y"], arr["z"] = points.T
    if normals is not None:
        n = np.asarray(normals).reshape(-1, 3)
        arr["nx"], arr["ny"], arr["nz"] = n.T
    if colors is not None:
        c = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
        arr["red"], arr["green"], arr["blue"] = c.T
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(points)}"]
    names = {"<f4": "float", "u1": "uchar"}
    header += [f"property {names[t]} {n}" for n, t in fields]
    tail = b""
    if faces is not None:
        f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
        rec = np.empty(len(f), dtype=np.dtype([("n", "u1"), ("i", "<i4", (3,))]))
        rec["n"] = 3
        rec["i"] = f
        header += [f"element face {len(f)}", "property list uchar int vertex_indices"]
        tail = rec.tobytes()
    header.append("end_header")
    return ("\n".join(header) + "\n").encode("ascii") + arr.tobytes() + tail


def write_ply(path: "str | os.PathLike[str]", points: np.ndarray, normals: Optional[np.ndarray] = None,
              colors: Optional[np.ndarray] = None, faces: Optional[np.ndarray] = None) -> Path:
    return write_bytes_atomic(path, ply_bytes(points, normals, colors, faces))
