"""Message conversions against the real rosbags message classes and CDR serialisation."""
from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from recon_ros.errors import DataFormatError
from recon_ros.geometry.transforms import make_T, rotvec_to_matrix
from recon_ros.io import messages as M

TYPES = M.rosbags_types("humble")
STORE = TYPES.typestore
STAMP = 1_700_000_123_456_789_012


def cdr_roundtrip(msg):
    """Serialise to CDR bytes (as ROS 2 would put on the wire) and decode again."""
    raw = bytes(STORE.serialize_cdr(msg, msg.__msgtype__))
    return STORE.deserialize_cdr(raw, msg.__msgtype__)


def random_image(encoding: str, h: int = 5, w: int = 7, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lay = M._ENCODINGS[encoding]
    dt = np.dtype(lay.dtype)
    shape = (h, w, lay.channels) if lay.channels else (h, w)
    if dt.kind == "f":
        return rng.normal(size=shape).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dt)


@pytest.mark.parametrize("encoding", M.SUPPORTED_ENCODINGS)
def test_image_roundtrip_is_bit_exact(encoding):
    arr = random_image(encoding)
    msg = cdr_roundtrip(M.make_image(TYPES, arr, encoding, STAMP, "cam"))
    assert msg.encoding == encoding and msg.header.frame_id == "cam"
    assert M.stamp_to_ns(msg.header.stamp) == STAMP
    back = M.image_to_numpy(msg)
    assert back.dtype == arr.dtype and back.shape == arr.shape
    assert back.tobytes() == arr.tobytes()


def _manual_image(arr: np.ndarray, encoding: str, pad: int, big: bool):
    """Build an Image by hand (padding bytes per row, chosen endianness), independent of make_image."""
    h, w = arr.shape[:2]
    raw = arr.astype(arr.dtype.newbyteorder(">" if big else "<")).reshape(h, -1).view(np.uint8)
    rows = np.concatenate([raw, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    Image = TYPES["sensor_msgs/msg/Image"]
    return Image(header=M.make_header(TYPES, STAMP, "cam"), height=h, width=w, encoding=encoding,
                 is_bigendian=int(big), step=rows.shape[1], data=rows.reshape(-1))


@pytest.mark.parametrize("encoding,big", [("rgb8", False), ("16UC1", True), ("32FC1", True),
                                          ("mono16", False), ("bgra8", False)])
def test_image_step_padding_and_endianness(encoding, big):
    arr = random_image(encoding, seed=3)
    msg = cdr_roundtrip(_manual_image(arr, encoding, pad=6, big=big))
    back = M.image_to_numpy(msg)
    np.testing.assert_array_equal(back, arr)


def test_colour_conversions_to_rgb():
    rgb = random_image("rgb8", seed=1)
    for enc, arr in [("rgb8", rgb), ("bgr8", rgb[..., ::-1]),
                     ("rgba8", np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])),
                     ("bgra8", np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 9, np.uint8)]))]:
        msg = cdr_roundtrip(M.make_image(TYPES, np.ascontiguousarray(arr), enc, STAMP, "c"))
        np.testing.assert_array_equal(M.image_to_rgb(msg), rgb, err_msg=enc)
    mono = random_image("mono8", seed=2)
    out = M.image_to_rgb(M.make_image(TYPES, mono, "mono8", STAMP, "c"))
    assert out.shape == mono.shape + (3,) and np.all(out == mono[..., None])


@pytest.mark.parametrize("encoding", ["yuv422", "uyvy", "yuv422_yuy2", "yuyv"])
def test_yuv422_to_rgb_matches_bt601(encoding):
    rng = np.random.default_rng(4)
    h, w = 4, 8
    Y = rng.integers(16, 236, (h, w)).astype(np.uint8)
    U = rng.integers(16, 241, (h, w // 2)).astype(np.uint8)
    V = rng.integers(16, 241, (h, w // 2)).astype(np.uint8)
    packed = np.zeros((h, w, 2), np.uint8)
    uyvy = encoding in ("yuv422", "uyvy")
    chroma = np.zeros((h, w), np.uint8)
    chroma[:, 0::2], chroma[:, 1::2] = U, V
    packed[..., 0 if uyvy else 1] = chroma
    packed[..., 1 if uyvy else 0] = Y
    msg = cdr_roundtrip(M.make_image(TYPES, packed, encoding, STAMP, "c"))
    got = M.image_to_rgb(msg).astype(float)
    y = 1.164 * (Y.astype(float) - 16)
    u = np.repeat(U, 2, axis=1).astype(float) - 128
    v = np.repeat(V, 2, axis=1).astype(float) - 128
    want = np.clip(np.stack([y + 1.596 * v, y - 0.392 * u - 0.813 * v, y + 2.017 * u], -1), 0, 255)
    assert np.abs(got - want).max() <= 2.5


def test_unknown_encoding_is_refused_clearly():
    msg = M.make_image(TYPES, np.zeros((2, 2, 3), np.uint8), "rgb8", STAMP, "c")
    msg.encoding = "bayer_rggb8"
    with pytest.raises(DataFormatError, match="unsupported image encoding 'bayer_rggb8'"):
        M.image_to_rgb(msg)


def test_truncated_image_data_is_refused():
    msg = M.make_image(TYPES, np.zeros((4, 4, 3), np.uint8), "rgb8", STAMP, "c")
    msg.data = msg.data[:-5]
    with pytest.raises(DataFormatError, match="truncated"):
        M.image_to_numpy(msg)


def test_depth_units():
    mm = np.array([[0, 1000, 65535], [1234, 1, 500]], np.uint16)
    d = M.image_to_depth(cdr_roundtrip(M.make_image(TYPES, mm, "16UC1", STAMP, "c")))
    assert d.dtype == np.float32
    np.testing.assert_allclose(d, mm.astype(np.float64) / 1000.0, rtol=1e-6)
    m = np.array([[np.nan, 1.5], [np.inf, 0.25]], np.float32)
    d2 = M.image_to_depth(M.make_image(TYPES, m, "32FC1", STAMP, "c"))
    np.testing.assert_array_equal(d2, [[0, 1.5], [0, 0.25]])
    back = M.image_to_numpy(M.make_depth_image(TYPES, np.array([[1.2344, 0.0], [np.nan, 70.0]]), STAMP, "c"))
    np.testing.assert_array_equal(back, [[1234, 0], [0, 0]])


def test_compressed_png_exact_and_jpeg_close():
    yy, xx = np.mgrid[0:48, 0:64]
    rgb = np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1).astype(np.uint8)
    png = cdr_roundtrip(M.make_compressed_image(TYPES, rgb, STAMP, "c", fmt="png"))
    assert "png" in png.format
    np.testing.assert_array_equal(M.compressed_to_rgb(png), rgb)
    jpg = cdr_roundtrip(M.make_compressed_image(TYPES, rgb, STAMP, "c", fmt="jpeg", jpeg_quality=95))
    assert "jpeg" in jpg.format
    out = M.compressed_to_rgb(jpg)
    assert out.shape == rgb.shape
    assert np.abs(out.astype(int) - rgb).mean() < 3.0
    # independent decoder: OpenCV on the raw payload gives BGR
    bgr = cv2.imdecode(np.frombuffer(bytes(jpg.data), np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(out, bgr[..., ::-1])


def test_compressed_depth_16uc1():
    depth = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 700)
    ok, png = cv2.imencode(".png", depth)
    payload = struct.pack("<iff", 0, 0.0, 0.0) + png.tobytes()
    msg = TYPES["sensor_msgs/msg/CompressedImage"](header=M.make_header(TYPES, STAMP, "c"),
                                                    format="16UC1; compressedDepth png",
                                                    data=np.frombuffer(payload, np.uint8))
    arr, enc = M.compressed_to_numpy(cdr_roundtrip(msg))
    assert enc == "16UC1"
    np.testing.assert_array_equal(arr, depth)


def test_camera_info_roundtrip():
    K = np.array([[525.0, 0, 319.5], [0, 526.0, 239.5], [0, 0, 1]])
    D = [0.1, -0.2, 0.001, 0.002, 0.05]
    msg = cdr_roundtrip(M.make_camera_info(TYPES, K, 640, 480, STAMP, "cam", D=D))
    model = M.camera_info_to_model(msg)
    np.testing.assert_array_equal(model.K, K)
    np.testing.assert_array_equal(model.D, D)
    assert (model.width, model.height) == (640, 480) and model.has_distortion
    np.testing.assert_array_equal(np.asarray(msg.p).reshape(3, 4)[:, :3], K)
    zero = M.make_camera_info(TYPES, np.zeros((3, 3)), 640, 480, STAMP, "cam")
    with pytest.raises(DataFormatError, match="not calibrated"):
        M.camera_info_to_model(zero)


def _decode_points_by_struct(msg) -> list[dict]:
    """Independent PointCloud2 reader: struct.unpack per field from the raw bytes."""
    data = bytes(msg.data)
    codes = {7: "f", 2: "B", 4: "H", 6: "I", 8: "d"}
    out = []
    for r in range(msg.height):
        for c in range(msg.width):
            base = r * msg.row_step + c * msg.point_step
            out.append({f.name: struct.unpack_from("<" + codes[f.datatype], data, base + f.offset)[0]
                        for f in msg.fields})
    return out


@pytest.mark.parametrize("organised", [False, True])
def test_pointcloud2_fields(organised):
    rng = np.random.default_rng(5)
    shape = (3, 4) if organised else (12,)
    pts = rng.normal(size=shape + (3,)).astype(np.float32)
    pts.reshape(-1, 3)[2] = np.nan
    cols = rng.integers(0, 256, shape + (3,)).astype(np.uint8)
    conf = rng.uniform(1, 5, shape).astype(np.float32)
    msg = cdr_roundtrip(M.make_pointcloud2(TYPES, pts, STAMP, "map", colors=cols, confidence=conf))
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("rgb", 12, 7, 1), ("confidence", 16, 7, 1)]
    assert msg.point_step == 20 and not msg.is_bigendian and msg.is_dense is False
    assert (msg.height, msg.width) == ((3, 4) if organised else (1, 12))
    rows = _decode_points_by_struct(msg)
    fp, fc, fk = pts.reshape(-1, 3), cols.reshape(-1, 3), conf.reshape(-1)
    for i, rec in enumerate(rows):
        np.testing.assert_array_equal([rec["x"], rec["y"], rec["z"]], fp[i])
        packed = struct.unpack("<I", struct.pack("<f", rec["rgb"]))[0]
        assert packed == (int(fc[i, 0]) << 16) | (int(fc[i, 1]) << 8) | int(fc[i, 2])
        assert rec["confidence"] == fk[i]
    back = M.pointcloud2_to_xyz(msg)
    np.testing.assert_array_equal(back["points"], pts)
    np.testing.assert_array_equal(back["colors"], cols)
    np.testing.assert_array_equal(back["confidence"], conf)


def test_pointcloud2_reads_foreign_layout():
    """A cloud laid out by someone else: padding, float64 intensity, uint16 ring, big-endian."""
    n = 5
    dt = np.dtype({"names": ["x", "y", "z", "intensity", "ring"],
                   "formats": [">f4", ">f4", ">f4", ">f8", ">u2"],
                   "offsets": [0, 4, 8, 16, 24], "itemsize": 32})
    arr = np.zeros(n, dt)
    arr["x"], arr["y"], arr["z"] = np.arange(n), -np.arange(n), 2.0
    arr["intensity"], arr["ring"] = np.linspace(0, 1, n), np.arange(n) * 3
    PF = TYPES["sensor_msgs/msg/PointField"]
    fields = [PF(name="x", offset=0, datatype=7, count=1), PF(name="y", offset=4, datatype=7, count=1),
              PF(name="z", offset=8, datatype=7, count=1), PF(name="intensity", offset=16, datatype=8, count=1),
              PF(name="ring", offset=24, datatype=4, count=1)]
    msg = TYPES["sensor_msgs/msg/PointCloud2"](
        header=M.make_header(TYPES, STAMP, "lidar"), height=1, width=n, fields=fields, is_bigendian=True,
        point_step=32, row_step=32 * n, data=np.frombuffer(arr.tobytes(), np.uint8), is_dense=True)
    out = M.pointcloud2_to_array(cdr_roundtrip(msg))
    for name in dt.names:
        np.testing.assert_array_equal(out[name], arr[name])


def test_transform_roundtrip():
    T = make_T(rotvec_to_matrix(np.array([0.3, -1.2, 2.0])), [1.0, -2.0, 0.5])
    ts = cdr_roundtrip(M.make_transform_stamped(TYPES, T, "odom", "base_link", STAMP))
    assert ts.header.frame_id == "odom" and ts.child_frame_id == "base_link"
    assert M.stamp_to_ns(ts.header.stamp) == STAMP
    np.testing.assert_allclose(M.transform_to_matrix(ts), T, atol=1e-12)
    tf = cdr_roundtrip(M.make_tf_message(TYPES, [ts, ts]))
    assert len(tf.transforms) == 2


def test_pose_path_odometry():
    Ts = [make_T(rotvec_to_matrix(np.array([0.1 * i, 0.2, -0.1 * i])), [i, 2 * i, 0.5]) for i in range(4)]
    ps = cdr_roundtrip(M.make_pose_stamped(TYPES, Ts[1], "map", STAMP))
    np.testing.assert_allclose(M.pose_to_matrix(ps), Ts[1], atol=1e-12)
    path = cdr_roundtrip(M.make_path(TYPES, [(STAMP + i, T) for i, T in enumerate(Ts)], "map", STAMP + 9))
    stamps, poses = M.path_to_arrays(path)
    np.testing.assert_array_equal(stamps, STAMP + np.arange(4))
    np.testing.assert_allclose(poses, np.stack(Ts), atol=1e-12)
    odom = cdr_roundtrip(M.make_odometry(TYPES, Ts[2], "map", "base_link", STAMP,
                                         twist=[1, 2, 3, 0.1, 0.2, 0.3]))
    assert odom.child_frame_id == "base_link"
    np.testing.assert_allclose(M.pose_to_matrix(odom.pose), Ts[2], atol=1e-12)
    assert odom.twist.twist.angular.z == pytest.approx(0.3)
    assert np.asarray(odom.pose.covariance).reshape(6, 6)[0, 0] > 0  # "unknown", never a false zero


def test_stamps():
    t = M.ns_to_stamp(TYPES, STAMP)
    assert (t.sec, t.nanosec) == (1_700_000_123, 456_789_012)
    assert M.stamp_to_ns(t) == STAMP
    with pytest.raises(DataFormatError):
        M.ns_to_stamp(TYPES, -1)


@pytest.mark.parametrize("distro", ["humble", "jazzy"])
@pytest.mark.parametrize("frame", ["map", "odom_frame"])  # string lengths move the offsets
@pytest.mark.parametrize("n_vertices,n_faces,coloured", [(0, 0, False), (5, 3, False), (50, 70, True)])
def test_mesh_marker_bytes_equal_the_serialized_message(distro, frame, n_vertices, n_faces, coloured):
    """The numpy-built CDR of the mesh Marker is byte for byte the serialization of the
    message make_mesh_marker builds, in each distribution's Marker layout."""
    rng = np.random.default_rng(n_faces)
    types = M.rosbags_types(distro)
    v = rng.normal(size=(n_vertices, 3))
    f = rng.integers(0, max(n_vertices, 1), (n_faces, 3))
    c = rng.integers(0, 256, (n_vertices, 3), dtype=np.uint8) if coloured else None
    msg = M.make_mesh_marker(types, v, f, 1_234_567_890_123, frame, colors=c)
    want = bytes(types.typestore.serialize_cdr(msg, "visualization_msgs/msg/Marker"))
    marker = types["visualization_msgs/msg/Marker"]
    got = M.mesh_marker_cdr(v, f, 1_234_567_890_123, frame, colors=c,
                            texture_fields=M.message_has_field(marker, "mesh_file"))
    assert got == want
    back = types.typestore.deserialize_cdr(got, "visualization_msgs/msg/Marker")
    assert len(back.points) == 3 * n_faces and back.type == 11


def test_mesh_marker_bytes_refuse_bad_faces():
    with pytest.raises(DataFormatError):
        M.mesh_marker_cdr(np.zeros((3, 3)), np.array([[0, 1, 3]]), 0, "map")
