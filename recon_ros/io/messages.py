"""Conversions between ROS 2 messages and numpy, shared by the bag tools and the ROS nodes.

Readers (``image_to_numpy``, ``camera_info_to_model``, ``pointcloud2_to_array`` ...) only read
attributes, so they accept rclpy messages and rosbags messages alike. Builders (``make_image``,
``make_pointcloud2`` ...) take a :class:`MessageTypes` that resolves a type name such as
``"sensor_msgs/msg/Image"`` to its class: :func:`rosbags_types` for the ``rosbags`` typestore
(tests, bags) and :func:`rclpy_types` inside a ROS process. The two differ only in how array
fields are stored (numpy arrays for rosbags, ``array.array`` / numpy for rclpy), which
``MessageTypes`` adapts. Every conversion is vectorised.
"""
from __future__ import annotations

import array
import importlib
import struct
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import cv2
import numpy as np

from recon_ros.errors import DataFormatError
from recon_ros.geometry.transforms import make_T, matrix_to_quat, quat_to_matrix

# --------------------------------------------------------------------------- types


class MessageTypes:
    """Resolves ``pkg/msg/Name`` to a message class and adapts array fields to the library.

    ``numpy_arrays`` is True for rosbags (every array field is a numpy array) and False for
    rclpy (unbounded sequences are ``array.array``; fixed-size float arrays are numpy).
    """

    def __init__(self, resolve: Callable[[str], type], numpy_arrays: bool, name: str = "") -> None:
        self._resolve = resolve
        self.numpy_arrays = numpy_arrays
        self.name = name

    def __getitem__(self, msgtype: str) -> type:
        return self._resolve(msgtype)

    def bytes_seq(self, buf: np.ndarray) -> Any:
        """A uint8[] field value from a contiguous array (copy-free for rosbags)."""
        flat = np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
        if self.numpy_arrays:
            return flat
        return array.array("B", flat.tobytes())

    def float64_seq(self, values: Iterable[float]) -> Any:
        """A float64[] (unbounded) field value."""
        arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values,
                         dtype=np.float64).reshape(-1)
        return arr if self.numpy_arrays else array.array("d", arr.tobytes())

    def float64_fixed(self, values: Any) -> np.ndarray:
        """A float64[N] (fixed-size) field value: numpy in both libraries."""
        return np.asarray(values, dtype=np.float64).reshape(-1).copy()


def rosbags_types(distro: str = "humble") -> MessageTypes:
    """Message classes of the ``rosbags`` typestore for ``distro`` ('humble' or 'jazzy')."""
    from rosbags.typesys import Stores, get_typestore

    stores = {"humble": Stores.ROS2_HUMBLE, "jazzy": Stores.ROS2_JAZZY}
    if distro not in stores:
        raise ValueError(f"unknown ROS distribution {distro!r}; choose one of {sorted(stores)}")
    store = get_typestore(stores[distro])
    return typestore_types(store, name=f"rosbags-{distro}")


def typestore_types(store: Any, name: str = "rosbags") -> MessageTypes:
    """Wrap a rosbags ``Typestore``."""

    def resolve(msgtype: str) -> type:
        try:
            return store.types[msgtype]
        except KeyError:
            raise DataFormatError(f"message type {msgtype} is not in the rosbags typestore") from None

    mt = MessageTypes(resolve, numpy_arrays=True, name=name)
    mt.typestore = store  # type: ignore[attr-defined]
    return mt


def rclpy_types() -> MessageTypes:
    """Message classes of the ROS 2 Python packages (only inside a sourced ROS environment)."""

    def resolve(msgtype: str) -> type:
        pkg, kind, cls = msgtype.split("/")
        return getattr(importlib.import_module(f"{pkg}.{kind}"), cls)

    return MessageTypes(resolve, numpy_arrays=False, name="rclpy")


def as_types(types: Union[MessageTypes, Any, None]) -> MessageTypes:
    """Accept a MessageTypes, a rosbags Typestore, or None (rosbags Humble)."""
    if types is None:
        return rosbags_types()
    if isinstance(types, MessageTypes):
        return types
    if hasattr(types, "types") and hasattr(types, "serialize_cdr"):
        return typestore_types(types)
    raise TypeError(f"expected MessageTypes or a rosbags Typestore, got {type(types).__name__}")


# --------------------------------------------------------------------------- stamps, headers

NS_PER_S = 1_000_000_000


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (or a message with a header) to integer nanoseconds."""
    if hasattr(stamp, "header"):
        stamp = stamp.header.stamp
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def ns_to_stamp(types: MessageTypes, ns: int) -> Any:
    ns = int(ns)
    if ns < 0:
        raise DataFormatError(f"negative time stamp {ns} ns cannot be written into a ROS message")
    return types["builtin_interfaces/msg/Time"](sec=ns // NS_PER_S, nanosec=ns % NS_PER_S)


def make_header(types: MessageTypes, stamp_ns: int, frame_id: str) -> Any:
    return types["std_msgs/msg/Header"](stamp=ns_to_stamp(types, stamp_ns), frame_id=str(frame_id))


# --------------------------------------------------------------------------- Image

@dataclass(frozen=True)
class _Enc:
    dtype: str      # numpy base type
    channels: int   # last-axis size (0 = 2-D array)


# encoding -> layout of the numpy array it maps to
_ENCODINGS: dict[str, _Enc] = {
    "rgb8": _Enc("u1", 3), "bgr8": _Enc("u1", 3), "rgba8": _Enc("u1", 4), "bgra8": _Enc("u1", 4),
    "rgb16": _Enc("u2", 3), "bgr16": _Enc("u2", 3),
    "mono8": _Enc("u1", 0), "8UC1": _Enc("u1", 0), "mono16": _Enc("u2", 0), "16UC1": _Enc("u2", 0),
    "16SC1": _Enc("i2", 0), "32SC1": _Enc("i4", 0), "32FC1": _Enc("f4", 0), "64FC1": _Enc("f8", 0),
    "8UC3": _Enc("u1", 3), "8UC4": _Enc("u1", 4),
    # packed 4:2:2, two bytes per pixel; ROS 'yuv422' is UYVY, 'yuv422_yuy2' is YUYV
    "yuv422": _Enc("u1", 2), "uyvy": _Enc("u1", 2), "yuv422_yuy2": _Enc("u1", 2), "yuyv": _Enc("u1", 2),
}
_UYVY = {"yuv422", "uyvy"}
_YUYV = {"yuv422_yuy2", "yuyv"}

SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_ENCODINGS)


def _encoding_layout(encoding: str) -> _Enc:
    try:
        return _ENCODINGS[encoding]
    except KeyError:
        raise DataFormatError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}"
        ) from None


def image_to_numpy(msg: Any) -> np.ndarray:
    """sensor_msgs/Image -> array in the message's own layout (H x W or H x W x C, native order).

    Handles row padding (``step`` larger than ``width * bytes_per_pixel``) and big-endian data.
    The result may be a read-only view of the message buffer; copy it before writing.
    """
    enc = _encoding_layout(str(msg.encoding))
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    itemsize = np.dtype(enc.dtype).itemsize
    ch = max(enc.channels, 1)
    row_bytes = w * ch * itemsize
    buf = np.frombuffer(msg.data, dtype=np.uint8) if not isinstance(msg.data, np.ndarray) \
        else msg.data.reshape(-1).view(np.uint8)
    if h <= 0 or w <= 0:
        raise DataFormatError(f"image has an empty size {w} x {h}")
    if step < row_bytes:
        raise DataFormatError(f"image step {step} is smaller than width * pixel size = {row_bytes}"
                              f" for {msg.encoding} {w} x {h}")
    if buf.size < h * step:
        raise DataFormatError(f"image data holds {buf.size} bytes but {h} rows of step {step} need "
                              f"{h * step}: the message is truncated")
    rows = buf[: h * step].reshape(h, step)[:, :row_bytes]
    order = ">" if bool(msg.is_bigendian) and itemsize > 1 else "<"
    dt = np.dtype(order + enc.dtype)
    arr = np.ascontiguousarray(rows).view(dt)
    arr = arr.reshape((h, w, enc.channels) if enc.channels else (h, w))
    if order == ">":
        arr = arr.astype(dt.newbyteorder("="))
    return arr


def numpy_to_image_fields(arr: np.ndarray, encoding: str) -> tuple[int, int, int, np.ndarray]:
    """(height, width, step, bytes as uint8) for ``arr`` in ``encoding`` (little-endian)."""
    enc = _encoding_layout(encoding)
    arr = np.asarray(arr)
    want_ndim = 3 if enc.channels else 2
    if arr.ndim != want_ndim or (enc.channels and arr.shape[2] != enc.channels):
        raise DataFormatError(f"an array of shape {arr.shape} cannot be encoded as {encoding}")
    if arr.dtype.kind != np.dtype(enc.dtype).kind or arr.dtype.itemsize != np.dtype(enc.dtype).itemsize:
        raise DataFormatError(f"{encoding} needs dtype {np.dtype(enc.dtype)}, got {arr.dtype}")
    data = np.ascontiguousarray(arr, dtype=np.dtype("<" + enc.dtype))
    h, w = arr.shape[:2]
    step = w * max(enc.channels, 1) * data.dtype.itemsize
    return h, w, step, data.reshape(-1).view(np.uint8)


def make_image(types: MessageTypes, arr: np.ndarray, encoding: str, stamp_ns: int,
               frame_id: str) -> Any:
    """numpy -> sensor_msgs/Image (little-endian, no padding)."""
    types = as_types(types)
    h, w, step, data = numpy_to_image_fields(arr, encoding)
    return types["sensor_msgs/msg/Image"](
        header=make_header(types, stamp_ns, frame_id), height=h, width=w, encoding=encoding,
        is_bigendian=0, step=step, data=types.bytes_seq(data))


def to_rgb8(arr: np.ndarray, encoding: str) -> np.ndarray:
    """Convert an array in ``encoding`` (as from :func:`image_to_numpy`) to H x W x 3 uint8 RGB."""
    enc = _encoding_layout(encoding)
    if encoding in ("rgb8", "8UC3"):
        return np.ascontiguousarray(arr)
    if encoding == "bgr8":
        return np.ascontiguousarray(arr[..., ::-1])
    if encoding in ("rgba8", "8UC4"):
        return np.ascontiguousarray(arr[..., :3])
    if encoding == "bgra8":
        return np.ascontiguousarray(arr[..., 2::-1])
    if encoding in ("rgb16", "bgr16"):
        rgb = (arr >> 8).astype(np.uint8)
        return np.ascontiguousarray(rgb if encoding == "rgb16" else rgb[..., ::-1])
    if encoding in _UYVY:
        return cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_YUV2RGB_UYVY)
    if encoding in _YUYV:
        return cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_YUV2RGB_YUYV)
    if enc.channels == 0:
        if arr.dtype == np.uint8:
            g = arr
        elif arr.dtype == np.uint16:
            g = (arr >> 8).astype(np.uint8)
        else:
            a = arr.astype(np.float32)
            finite = np.isfinite(a)
            lo, hi = (float(a[finite].min()), float(a[finite].max())) if finite.any() else (0.0, 1.0)
            g = np.clip((np.where(finite, a, lo) - lo) / max(hi - lo, 1e-12) * 255, 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    raise DataFormatError(f"cannot convert {encoding} to RGB")


def image_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/Image -> H x W x 3 uint8 RGB (a fresh array)."""
    rgb = to_rgb8(image_to_numpy(msg), str(msg.encoding))
    return rgb if rgb.flags.writeable and rgb.flags.owndata else rgb.copy()


def depth_to_metres(arr: np.ndarray, encoding: str) -> np.ndarray:
    """16UC1/mono16 millimetres or 32FC1 metres -> float32 metres, 0 -> NaN-free 0 (invalid)."""
    if encoding in ("16UC1", "mono16"):
        return arr.astype(np.float32) * np.float32(1e-3)
    if encoding in ("32FC1",):
        d = arr.astype(np.float32, copy=True)
        d[~np.isfinite(d)] = 0.0
        return d
    if encoding == "64FC1":
        d = arr.astype(np.float32)
        d[~np.isfinite(d)] = 0.0
        return d
    raise DataFormatError(f"depth images must be 16UC1 (mm) or 32FC1 (m), got {encoding!r}")


def image_to_depth(msg: Any) -> np.ndarray:
    """Depth sensor_msgs/Image -> H x W float32 metres (0 = invalid)."""
    return depth_to_metres(image_to_numpy(msg), str(msg.encoding))


def make_depth_image(types: MessageTypes, depth_m: np.ndarray, stamp_ns: int, frame_id: str,
                     encoding: str = "16UC1") -> Any:
    """float metres -> 16UC1 millimetres (rounded, 0 = invalid or out of range) or 32FC1 metres."""
    d = np.asarray(depth_m, dtype=np.float32)
    if encoding == "16UC1":
        ok = np.isfinite(d) & (d > 0) & (d * 1000.0 < 65535.5)
        mm = np.zeros(d.shape, dtype=np.uint16)
        mm[ok] = np.rint(d[ok] * 1000.0).astype(np.uint16)
        return make_image(types, mm, "16UC1", stamp_ns, frame_id)
    if encoding == "32FC1":
        return make_image(types, d, "32FC1", stamp_ns, frame_id)
    raise DataFormatError(f"depth can be written as 16UC1 or 32FC1, not {encoding!r}")


# --------------------------------------------------------------------------- CompressedImage

def _compressed_kind(fmt: str) -> str:
    f = fmt.lower()
    if "compresseddepth" in f:
        return "compressedDepth"
    if "png" in f:
        return "png"
    if "jpeg" in f or "jpg" in f:
        return "jpeg"
    return f.strip()


def compressed_to_numpy(msg: Any) -> tuple[np.ndarray, str]:
    """sensor_msgs/CompressedImage -> (array, encoding of that array).

    Colour images come back as ``rgb8`` (H x W x 3), grey ones as ``mono8`` / ``mono16``,
    ``compressedDepth`` streams as ``16UC1`` or ``32FC1``.
    """
    fmt = str(msg.format)
    data = np.frombuffer(msg.data, dtype=np.uint8) if not isinstance(msg.data, np.ndarray) \
        else msg.data.reshape(-1).view(np.uint8)
    kind = _compressed_kind(fmt)
    if kind == "compressedDepth":
        if data.size < 12:
            raise DataFormatError("compressedDepth message is shorter than its 12-byte header")
        _, qa, qb = struct.unpack("<iff", data[:12].tobytes())
        img = cv2.imdecode(data[12:], cv2.IMREAD_UNCHANGED)
        if img is None:
            raise DataFormatError(f"cannot decode compressedDepth payload (format {fmt!r})")
        if fmt.split(";")[0].strip() == "32FC1":
            inv = img.astype(np.float32)
            depth = np.zeros(img.shape, dtype=np.float32)
            ok = inv > 0
            depth[ok] = qa / (inv[ok] - qb)
            return depth, "32FC1"
        return img.astype(np.uint16), "16UC1"
    if kind not in ("png", "jpeg"):
        raise DataFormatError(f"unsupported CompressedImage format {fmt!r}; expected jpeg, png or "
                              "compressedDepth")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataFormatError(f"cannot decode the {kind} data of a CompressedImage ({data.size} bytes)")
    if img.ndim == 2:
        return img, ("mono16" if img.dtype == np.uint16 else "mono8")
    if img.shape[2] == 4:
        img = img[..., :3]
    rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if rgb.dtype == np.uint16:
        rgb = (rgb >> 8).astype(np.uint8)
    return rgb, "rgb8"


def compressed_to_rgb(msg: Any) -> np.ndarray:
    arr, enc = compressed_to_numpy(msg)
    return to_rgb8(arr, enc)


def encode_compressed(arr: np.ndarray, encoding: str = "rgb8", fmt: str = "jpeg",
                      jpeg_quality: int = 90) -> tuple[bytes, str]:
    """Encode an image with OpenCV; returns (payload, image_transport format string)."""
    kind = fmt.lower()
    if kind not in ("jpeg", "jpg", "png"):
        raise DataFormatError(f"compressed format must be jpeg or png, not {fmt!r}")
    kind = "jpeg" if kind in ("jpeg", "jpg") else "png"
    arr = np.asarray(arr)
    if encoding in ("rgb8", "bgr8"):
        bgr = arr[..., ::-1] if encoding == "rgb8" else arr
        out_enc = "bgr8"
    elif encoding in ("mono8", "mono16"):
        bgr, out_enc = arr, encoding
    else:
        bgr, out_enc = to_rgb8(arr, encoding)[..., ::-1], "bgr8"
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if kind == "jpeg" else []
    ok, buf = cv2.imencode("." + ("jpg" if kind == "jpeg" else "png"), np.ascontiguousarray(bgr), params)
    if not ok:
        raise DataFormatError(f"OpenCV could not encode a {arr.shape} {arr.dtype} image as {kind}")
    return buf.tobytes(), f"{encoding}; {kind} compressed {out_enc}"


def make_compressed_image(types: MessageTypes, arr: np.ndarray, stamp_ns: int, frame_id: str,
                          encoding: str = "rgb8", fmt: str = "jpeg", jpeg_quality: int = 90) -> Any:
    types = as_types(types)
    payload, fmt_str = encode_compressed(arr, encoding, fmt, jpeg_quality)
    return types["sensor_msgs/msg/CompressedImage"](
        header=make_header(types, stamp_ns, frame_id), format=fmt_str,
        data=types.bytes_seq(np.frombuffer(payload, dtype=np.uint8)))


# --------------------------------------------------------------------------- CameraInfo

@dataclass
class CameraModel:
    """What a CameraInfo carries that the pipeline uses."""

    K: np.ndarray            # 3x3
    D: np.ndarray            # distortion coefficients (may be empty)
    width: int
    height: int
    distortion_model: str = "plumb_bob"

    @property
    def has_distortion(self) -> bool:
        return bool(self.D.size and np.any(self.D != 0))


def camera_info_to_model(msg: Any) -> CameraModel:
    """sensor_msgs/CameraInfo -> CameraModel; refuses an all-zero (uncalibrated) K."""
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise DataFormatError("CameraInfo has no valid intrinsics (K is zero or not finite): the camera "
                              "is not calibrated; calibrate it or pass K explicitly")
    D = np.asarray(msg.d, dtype=np.float64).reshape(-1)
    return CameraModel(K=K, D=D, width=int(msg.width), height=int(msg.height),
                       distortion_model=str(msg.distortion_model))


def make_camera_info(types: MessageTypes, K: np.ndarray, width: int, height: int, stamp_ns: int,
                     frame_id: str, D: Optional[Sequence[float]] = None,
                     distortion_model: str = "plumb_bob") -> Any:
    """Build a CameraInfo for an unrectified pinhole camera (R = I, P = [K | 0])."""
    types = as_types(types)
    K = np.asarray(K, dtype=np.float64).reshape(3, 3)
    D = np.zeros(5) if D is None else np.asarray(D, dtype=np.float64).reshape(-1)
    P = np.zeros((3, 4))
    P[:, :3] = K
    roi = types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                     do_rectify=False)
    return types["sensor_msgs/msg/CameraInfo"](
        header=make_header(types, stamp_ns, frame_id), height=int(height), width=int(width),
        distortion_model=distortion_model, d=types.float64_seq(D), k=types.float64_fixed(K),
        r=types.float64_fixed(np.eye(3)), p=types.float64_fixed(P), binning_x=0, binning_y=0, roi=roi)


# --------------------------------------------------------------------------- PointCloud2

# sensor_msgs/PointField datatypes
_PF_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}
_PF_CODES = {v: k for k, v in _PF_DTYPES.items()}


def pack_rgb(colors: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (...) float32 whose bits are 0x00RRGGBB (the RViz/PCL convention)."""
    c = np.asarray(colors, dtype=np.uint8)
    u = (c[..., 0].astype(np.uint32) << 16) | (c[..., 1].astype(np.uint32) << 8) | c[..., 2].astype(np.uint32)
    return u.view(np.float32)


def unpack_rgb(rgb: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_rgb`: packed float32 (or uint32) -> (..., 3) uint8."""
    u = np.ascontiguousarray(rgb).view(np.uint32)
    return np.stack([(u >> 16) & 0xFF, (u >> 8) & 0xFF, u & 0xFF], axis=-1).astype(np.uint8)


def cloud_dtype(with_rgb: bool = True, with_confidence: bool = True) -> np.dtype:
    """The project's point layout: x y z float32, rgb float32 (packed), confidence float32."""
    names = ["x", "y", "z"] + (["rgb"] if with_rgb else []) + (["confidence"] if with_confidence else [])
    return np.dtype({"names": names, "formats": ["<f4"] * len(names),
                     "offsets": [4 * i for i in range(len(names))], "itemsize": 4 * len(names)})


def points_to_structured(points: np.ndarray, colors: Optional[np.ndarray] = None,
                         confidence: Optional[np.ndarray] = None) -> np.ndarray:
    """Points (..., 3) [+ colours (..., 3) uint8] [+ confidence (...)] -> structured array (...)."""
    pts = np.asarray(points)
    if pts.shape[-1] != 3:
        raise DataFormatError(f"points must have shape (..., 3), got {pts.shape}")
    shape = pts.shape[:-1]
    if colors is not None and np.shape(colors) != shape + (3,):
        raise DataFormatError(f"colors must have shape {shape + (3,)}, got {np.shape(colors)}")
    if confidence is not None and np.shape(confidence) != shape:
        raise DataFormatError(f"confidence must have shape {shape}, got {np.shape(confidence)}")
    dt = cloud_dtype(colors is not None, confidence is not None)
    out = np.empty(shape, dtype=dt)
    flat = out.reshape(-1).view(np.float32).reshape(-1, len(dt.names))
    flat[:, :3] = pts.reshape(-1, 3)
    col = 3
    if colors is not None:
        flat[:, col] = pack_rgb(np.asarray(colors).reshape(-1, 3))
        col += 1
    if confidence is not None:
        flat[:, col] = np.asarray(confidence, dtype=np.float32).reshape(-1)
    return out


def make_pointcloud2(types: MessageTypes, points: np.ndarray, stamp_ns: int, frame_id: str,
                     colors: Optional[np.ndarray] = None, confidence: Optional[np.ndarray] = None,
                     is_dense: Optional[bool] = None) -> Any:
    """Pack points into a PointCloud2.

    ``points`` of shape (N, 3) gives an unorganised cloud (height 1); (H, W, 3) an organised one.
    ``is_dense`` defaults to "every point is finite".
    """
    types = as_types(types)
    pts = np.asarray(points)
    if pts.ndim == 2:
        h, w = 1, pts.shape[0]
    elif pts.ndim == 3:
        h, w = pts.shape[:2]
    else:
        raise DataFormatError(f"points must be (N, 3) or (H, W, 3), got {pts.shape}")
    arr = points_to_structured(pts, colors, confidence)
    return structured_to_pointcloud2(types, arr.reshape(h, w), stamp_ns, frame_id, is_dense=is_dense)


def structured_to_pointcloud2(types: MessageTypes, arr: np.ndarray, stamp_ns: int, frame_id: str,
                              is_dense: Optional[bool] = None) -> Any:
    """A structured array (N,) or (H, W) of numeric scalar fields -> PointCloud2."""
    types = as_types(types)
    arr = np.asarray(arr)
    h, w = (1, arr.shape[0]) if arr.ndim == 1 else arr.shape[:2]
    PointField = types["sensor_msgs/msg/PointField"]
    fields = []
    for name in arr.dtype.names:
        ft, off = arr.dtype.fields[name][:2]
        code = _PF_CODES.get(ft.base.str[1:])
        if code is None:
            raise DataFormatError(f"field {name!r} of dtype {ft} has no PointField datatype")
        fields.append(PointField(name=name, offset=int(off), datatype=code,
                                 count=int(np.prod(ft.shape)) if ft.shape else 1))
    le = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<")))
    if is_dense is None:
        is_dense = bool(all(np.all(np.isfinite(le[n])) for n in ("x", "y", "z") if n in arr.dtype.names))
    return types["sensor_msgs/msg/PointCloud2"](
        header=make_header(types, stamp_ns, frame_id), height=int(h), width=int(w), fields=fields,
        is_bigendian=False, point_step=int(arr.dtype.itemsize), row_step=int(arr.dtype.itemsize * w),
        data=types.bytes_seq(le.reshape(-1).view(np.uint8)), is_dense=bool(is_dense))


def pointcloud2_to_array(msg: Any, organised: bool = True) -> np.ndarray:
    """PointCloud2 -> structured numpy array, (H, W) when organised and ``organised`` else (N,)."""
    order = ">" if bool(msg.is_bigendian) else "<"
    names, formats, offsets = [], [], []
    for f in msg.fields:
        base = _PF_DTYPES.get(int(f.datatype))
        if base is None:
            raise DataFormatError(f"PointField {f.name!r} has unknown datatype {f.datatype}")
        count = int(f.count) if int(f.count) > 0 else 1
        names.append(str(f.name))
        formats.append((order + base, (count,)) if count > 1 else order + base)
        offsets.append(int(f.offset))
    step = int(msg.point_step)
    dt = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": step})
    h, w = int(msg.height), int(msg.width)
    row_step = int(msg.row_step) if int(msg.row_step) else w * step
    buf = np.frombuffer(msg.data, dtype=np.uint8) if not isinstance(msg.data, np.ndarray) \
        else msg.data.reshape(-1).view(np.uint8)
    if buf.size < h * row_step or row_step < w * step:
        raise DataFormatError(f"PointCloud2 data holds {buf.size} bytes but {h} rows of {row_step} "
                              f"bytes ({w} points of {step} bytes) are declared")
    rows = buf[: h * row_step].reshape(h, row_step)[:, : w * step]
    out = np.ascontiguousarray(rows).view(dt).reshape(h, w)
    if order == ">":
        out = out.astype(dt.newbyteorder("="))
    return out if (organised and h > 1) else out.reshape(-1)


def pointcloud2_to_xyz(msg: Any) -> dict[str, np.ndarray]:
    """PointCloud2 -> {'points': (..., 3) float32, 'colors': (..., 3) uint8, 'confidence': (...)}.

    Only the keys present in the message are returned; the shape is (H, W) for organised clouds.
    """
    arr = pointcloud2_to_array(msg)
    out: dict[str, np.ndarray] = {
        "points": np.stack([arr["x"], arr["y"], arr["z"]], axis=-1).astype(np.float32)}
    if "rgb" in arr.dtype.names:
        out["colors"] = unpack_rgb(arr["rgb"].astype(np.float32))
    elif "rgba" in arr.dtype.names:
        out["colors"] = unpack_rgb(arr["rgba"].astype(np.float32))
    if "confidence" in arr.dtype.names:
        out["confidence"] = arr["confidence"].astype(np.float32)
    return out


# --------------------------------------------------------------------------- transforms, poses

def transform_to_matrix(tf: Any) -> np.ndarray:
    """geometry_msgs/Transform or TransformStamped -> 4x4."""
    if hasattr(tf, "transform"):
        tf = tf.transform
    t, q = tf.translation, tf.rotation
    return make_T(quat_to_matrix(np.array([q.x, q.y, q.z, q.w])), np.array([t.x, t.y, t.z]))


def pose_to_matrix(pose: Any) -> np.ndarray:
    """geometry_msgs/Pose (or PoseStamped / PoseWithCovariance) -> 4x4."""
    while hasattr(pose, "pose"):
        pose = pose.pose
    p, q = pose.position, pose.orientation
    return make_T(quat_to_matrix(np.array([q.x, q.y, q.z, q.w])), np.array([p.x, p.y, p.z]))


def _rigid_parts(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise DataFormatError(f"a pose must be a finite 4x4 matrix, got shape {T.shape}")
    R = T[:3, :3]
    s = np.cbrt(np.linalg.det(R))
    if not s > 0:
        raise DataFormatError("a pose's rotation block has a non-positive determinant")
    return matrix_to_quat(R / s), T[:3, 3].copy()


def make_transform(types: MessageTypes, T: np.ndarray) -> Any:
    types = as_types(types)
    q, t = _rigid_parts(T)
    return types["geometry_msgs/msg/Transform"](
        translation=types["geometry_msgs/msg/Vector3"](x=float(t[0]), y=float(t[1]), z=float(t[2])),
        rotation=types["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]),
                                                      w=float(q[3])))


def make_transform_stamped(types: MessageTypes, T_parent_child: np.ndarray, parent: str, child: str,
                           stamp_ns: int) -> Any:
    types = as_types(types)
    return types["geometry_msgs/msg/TransformStamped"](
        header=make_header(types, stamp_ns, parent), child_frame_id=str(child),
        transform=make_transform(types, T_parent_child))


def make_tf_message(types: MessageTypes, transforms: Sequence[Any]) -> Any:
    types = as_types(types)
    return types["tf2_msgs/msg/TFMessage"](transforms=list(transforms))


def make_pose(types: MessageTypes, T: np.ndarray) -> Any:
    types = as_types(types)
    q, t = _rigid_parts(T)
    return types["geometry_msgs/msg/Pose"](
        position=types["geometry_msgs/msg/Point"](x=float(t[0]), y=float(t[1]), z=float(t[2])),
        orientation=types["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]),
                                                         w=float(q[3])))


def make_pose_stamped(types: MessageTypes, T: np.ndarray, frame_id: str, stamp_ns: int) -> Any:
    types = as_types(types)
    return types["geometry_msgs/msg/PoseStamped"](header=make_header(types, stamp_ns, frame_id),
                                                  pose=make_pose(types, T))


def make_path(types: MessageTypes, poses: Iterable[tuple[int, np.ndarray]], frame_id: str,
              stamp_ns: int, pose_msg: Optional[Callable[[int, np.ndarray], Any]] = None) -> Any:
    """nav_msgs/Path from (stamp_ns, T_frame_pose) pairs. ``pose_msg(stamp_ns, T)`` builds each
    PoseStamped when given (a cache of unchanged poses, say)."""
    types = as_types(types)
    if pose_msg is None:
        def pose_msg(s: int, T: np.ndarray) -> Any:
            return make_pose_stamped(types, T, frame_id, s)
    return types["nav_msgs/msg/Path"](header=make_header(types, stamp_ns, frame_id),
                                      poses=[pose_msg(s, T) for s, T in poses])


def path_to_arrays(msg: Any) -> tuple[np.ndarray, np.ndarray]:
    """nav_msgs/Path -> (stamps_ns (N,), poses (N, 4, 4))."""
    stamps = np.array([stamp_to_ns(p.header.stamp) for p in msg.poses], dtype=np.int64)
    poses = np.stack([pose_to_matrix(p) for p in msg.poses]) if len(msg.poses) else np.zeros((0, 4, 4))
    return stamps, poses


def make_odometry(types: MessageTypes, T: np.ndarray, frame_id: str, child_frame_id: str,
                  stamp_ns: int, pose_covariance: Optional[np.ndarray] = None,
                  twist: Optional[np.ndarray] = None,
                  twist_covariance: Optional[np.ndarray] = None) -> Any:
    """nav_msgs/Odometry. ``twist`` is (vx, vy, vz, wx, wy, wz) in the child frame.

    Covariances (6x6) default to a large diagonal (1e3): "not known", never a false zero.
    """
    types = as_types(types)
    unknown = np.eye(6) * 1e3
    pc = unknown if pose_covariance is None else np.asarray(pose_covariance, dtype=np.float64)
    tc = unknown if twist_covariance is None else np.asarray(twist_covariance, dtype=np.float64)
    tw = np.zeros(6) if twist is None else np.asarray(twist, dtype=np.float64).reshape(6)
    V3 = types["geometry_msgs/msg/Vector3"]
    twist_msg = types["geometry_msgs/msg/Twist"](linear=V3(x=float(tw[0]), y=float(tw[1]), z=float(tw[2])),
                                                 angular=V3(x=float(tw[3]), y=float(tw[4]), z=float(tw[5])))
    return types["nav_msgs/msg/Odometry"](
        header=make_header(types, stamp_ns, frame_id), child_frame_id=str(child_frame_id),
        pose=types["geometry_msgs/msg/PoseWithCovariance"](pose=make_pose(types, T),
                                                           covariance=types.float64_fixed(pc)),
        twist=types["geometry_msgs/msg/TwistWithCovariance"](twist=twist_msg,
                                                             covariance=types.float64_fixed(tc)))


# --------------------------------------------------------------------------- map products

def make_occupancy_grid(types: MessageTypes, data: np.ndarray, resolution: float,
                        origin_xy_yaw: Sequence[float], stamp_ns: int, frame_id: str) -> Any:
    """nav_msgs/OccupancyGrid from ``data`` (rows, cols) int8 (100 occupied, 0 free, -1
    unknown; row 0 at the origin, rows along +y), the cell size and the pose (x, y, yaw) of
    the lower-left corner of cell (0, 0) in ``frame_id``."""
    types = as_types(types)
    grid = np.asarray(data)
    if grid.ndim != 2:
        raise DataFormatError(f"occupancy data must be 2-D (rows, cols), got shape {grid.shape}")
    flat = np.ascontiguousarray(grid, dtype=np.int8).reshape(-1)
    x, y, yaw = (float(v) for v in origin_xy_yaw)
    T = make_T(np.array([[np.cos(yaw), -np.sin(yaw), 0.0], [np.sin(yaw), np.cos(yaw), 0.0],
                         [0.0, 0.0, 1.0]]), np.array([x, y, 0.0]))
    info = types["nav_msgs/msg/MapMetaData"](
        map_load_time=ns_to_stamp(types, stamp_ns), resolution=float(resolution),
        width=int(grid.shape[1]), height=int(grid.shape[0]), origin=make_pose(types, T))
    values = flat if types.numpy_arrays else array.array("b", flat.tobytes())
    return types["nav_msgs/msg/OccupancyGrid"](header=make_header(types, stamp_ns, frame_id),
                                               info=info, data=values)


def occupancy_grid_to_numpy(msg: Any) -> tuple[np.ndarray, float, np.ndarray]:
    """nav_msgs/OccupancyGrid -> (data (rows, cols) int8, resolution, T_frame_origin 4x4)."""
    info = msg.info
    data = np.asarray(msg.data, dtype=np.int8).reshape(int(info.height), int(info.width))
    return data, float(info.resolution), pose_to_matrix(info.origin)


def message_has_field(cls: type, name: str) -> bool:
    """Whether a message class (rclpy or rosbags) has the field ``name`` (layouts differ
    between ROS distributions)."""
    fields = getattr(cls, "get_fields_and_field_types", None)
    if fields is not None:
        return name in fields()
    return name in getattr(cls, "__dataclass_fields__", {})


class _CdrWriter:
    """Little-endian CDR (XCDR1, the ROS 2 wire format) with the 4-byte encapsulation header;
    alignment counts from after the header."""

    def __init__(self) -> None:
        self.parts: list[bytes] = [b"\x00\x01\x00\x00"]
        self.size = 0

    def _put(self, data: bytes, align: int) -> None:
        pad = -self.size % align
        if pad:
            self.parts.append(b"\x00" * pad)
        self.parts.append(data)
        self.size += pad + len(data)

    def fmt(self, fmt: str, *values: Any) -> None:
        self._put(struct.pack("<" + fmt, *values), struct.calcsize(fmt[0]))

    def string(self, text: str) -> None:
        data = text.encode() + b"\x00"
        self.fmt("I", len(data))
        self._put(data, 1)

    def array(self, values: np.ndarray, align: int) -> None:
        """A sequence's elements (the count is written separately); nothing when empty."""
        if values.size:
            self._put(values.tobytes(), align)

    def header(self, stamp_ns: int, frame_id: str) -> None:
        sec, nsec = divmod(int(stamp_ns), NS_PER_S)
        self.fmt("iI", sec, nsec)
        self.string(frame_id)

    def bytes(self) -> bytes:
        return b"".join(self.parts)


def mesh_marker_cdr(vertices: np.ndarray, faces: np.ndarray, stamp_ns: int, frame_id: str,
                    colors: Optional[np.ndarray] = None, ns: str = "map_mesh", marker_id: int = 0,
                    texture_fields: bool = True) -> bytes:
    """The serialized (CDR) form of :func:`make_mesh_marker`'s Marker, built with numpy.

    A TRIANGLE_LIST of a room has hundreds of thousands of corners; building one Python Point
    object per corner takes seconds and holds the interpreter lock the whole time (a node's
    other threads stall). ROS 2 publishers and bag writers take these bytes as they are.
    ``texture_fields``: the Marker of Iron and later (texture, uv_coordinates, mesh_file);
    False for Humble's."""
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise DataFormatError("mesh face indices out of range of the vertices")
    corners = np.ascontiguousarray(v[f.reshape(-1)], dtype="<f8")
    cols = np.zeros((0, 4), "<f4")
    if colors is not None:
        c = np.asarray(colors).reshape(-1, 3)
        if len(c) != len(v):
            raise DataFormatError(f"{len(c)} colours for {len(v)} vertices")
        cols = np.ones((len(corners), 4), "<f4")
        cols[:, :3] = (c[f.reshape(-1)].astype(np.float64) / 255.0).astype("<f4")
    w = _CdrWriter()
    w.header(stamp_ns, frame_id)
    w.string(str(ns))
    w.fmt("iii", int(marker_id), 11, 0)  # TRIANGLE_LIST, ADD
    w.fmt("ddddddd", 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # identity pose
    w.fmt("ddd", 1.0, 1.0, 1.0)  # scale
    w.fmt("ffff", 0.8, 0.8, 0.8, 1.0)  # colour
    w.fmt("iI", 0, 0)  # lifetime
    w.fmt("?", False)  # frame_locked
    w.fmt("I", len(corners))
    w.array(corners, 8)
    w.fmt("I", len(cols))
    w.array(cols, 4)
    if texture_fields:
        w.string("")  # texture_resource
        w.header(0, "")  # texture: CompressedImage
        w.string("")
        w.fmt("I", 0)
        w.fmt("I", 0)  # uv_coordinates
    w.string("")  # text
    w.string("")  # mesh_resource
    if texture_fields:
        w.string("")  # mesh_file
        w.fmt("I", 0)
    w.fmt("?", False)  # mesh_use_embedded_materials
    return w.bytes()


def make_mesh_marker(types: MessageTypes, vertices: np.ndarray, faces: np.ndarray,
                     stamp_ns: int, frame_id: str, colors: Optional[np.ndarray] = None,
                     ns: str = "map_mesh", marker_id: int = 0) -> Any:
    """visualization_msgs/Marker TRIANGLE_LIST of a triangle mesh (RViz shows it with the
    stock Marker display). ``vertices`` (V, 3), ``faces`` (F, 3) indices, optional per-vertex
    ``colors`` (V, 3) uint8; each triangle corner becomes one point (and colour)."""
    types = as_types(types)
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise DataFormatError("mesh face indices out of range of the vertices")
    Point = types["geometry_msgs/msg/Point"]
    Color = types["std_msgs/msg/ColorRGBA"]
    corners = v[f.reshape(-1)]
    points = [Point(x=float(a), y=float(b), z=float(c)) for a, b, c in corners.tolist()]
    cols = []
    if colors is not None:
        c = np.asarray(colors).reshape(-1, 3)
        if len(c) != len(v):
            raise DataFormatError(f"{len(c)} colours for {len(v)} vertices")
        cc = (c[f.reshape(-1)].astype(np.float64) / 255.0).tolist()
        cols = [Color(r=float(r), g=float(g), b=float(b), a=1.0) for r, g, b in cc]
    Marker = types["visualization_msgs/msg/Marker"]
    kwargs = dict(header=make_header(types, stamp_ns, frame_id), ns=str(ns), id=int(marker_id),
                  type=11, action=0, pose=make_pose(types, np.eye(4)),  # TRIANGLE_LIST, ADD
                  scale=types["geometry_msgs/msg/Vector3"](x=1.0, y=1.0, z=1.0),
                  color=Color(r=0.8, g=0.8, b=0.8, a=1.0),
                  lifetime=types["builtin_interfaces/msg/Duration"](sec=0, nanosec=0),
                  frame_locked=False, points=points, colors=cols, text="", mesh_resource="",
                  mesh_use_embedded_materials=False)
    if message_has_field(Marker, "mesh_file") and hasattr(Marker, "__dataclass_fields__"):
        # rosbags' (Jazzy) classes need every field; rclpy's fill the rest themselves
        kwargs.update(
            texture_resource="",
            texture=types["sensor_msgs/msg/CompressedImage"](
                header=make_header(types, 0, ""), format="", data=np.zeros(0, np.uint8)),
            uv_coordinates=[],
            mesh_file=types["visualization_msgs/msg/MeshFile"](filename="", data=np.zeros(0, np.uint8)))
    return Marker(**kwargs)
