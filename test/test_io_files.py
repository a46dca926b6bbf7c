"""PLY and TUM trajectory files."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from recon_ros.errors import DataFormatError
from recon_ros.geometry.transforms import make_T, rotvec_to_matrix
from recon_ros.io.ply import read_ply, write_ply
from recon_ros.io.trajectory import read_tum, text_to_ns, write_tum


def test_ply_binary_roundtrip_and_layout(tmp_path):
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(50, 3)).astype(np.float32)
    cols = rng.integers(0, 256, (50, 3)).astype(np.uint8)
    conf = rng.uniform(1, 9, 50).astype(np.float32)
    faces = rng.integers(0, 50, (7, 3))
    path = write_ply(tmp_path / "m.ply", pts, cols, conf, faces=faces)
    raw = path.read_bytes()
    header, _, body = raw.partition(b"end_header\n")
    text = header.decode()
    assert "format binary_little_endian 1.0" in text and "element vertex 50" in text
    assert "property float x" in text and "property uchar red" in text and "property float confidence" in text
    # independent decode of the first vertex: 3 floats, 3 bytes, 1 float
    x, y, z, r, g, b, c = struct.unpack_from("<fffBBBf", body, 0)
    np.testing.assert_array_equal([x, y, z], pts[0])
    assert (r, g, b) == tuple(cols[0]) and c == conf[0]
    back = read_ply(path)
    np.testing.assert_array_equal(back.points, pts)
    np.testing.assert_array_equal(back.colors, cols)
    np.testing.assert_array_equal(back.confidence, conf)
    np.testing.assert_array_equal(back.faces, faces)
    assert [p.name for p in tmp_path.iterdir()] == ["m.ply"]  # no temporary left


def test_ply_ascii_and_polygons_from_other_tools(tmp_path):
    text = """ply
format ascii 1.0
comment made by another tool
element vertex 5
property float x
property float y
property float z
property float nx
property float ny
property float nz
element face 2
property list uchar int vertex_indices
end_header
0 0 0 0 0 1
1 0 0 0 0 1
1 1 0 0 0 1
0 1 0 0 0 1
0.5 0.5 1 0 0 1
4 0 1 2 3
3 0 1 4
"""
    (tmp_path / "a.ply").write_text(text)
    d = read_ply(tmp_path / "a.ply")
    assert d.points.shape == (5, 3) and d.colors is None and d.normals.shape == (5, 3)
    np.testing.assert_array_equal(d.faces, [[0, 1, 2], [0, 2, 3], [0, 1, 4]])


def test_ply_big_endian_vertex_only(tmp_path):
    pts = np.arange(12, dtype=">f4").reshape(4, 3)
    head = b"ply\nformat binary_big_endian 1.0\nelement vertex 4\nproperty float x\nproperty float y\n" \
           b"property float z\nend_header\n"
    (tmp_path / "b.ply").write_bytes(head + pts.tobytes())
    d = read_ply(tmp_path / "b.ply")
    np.testing.assert_array_equal(d.points, np.arange(12).reshape(4, 3))
    assert d.faces is None
    (tmp_path / "t.ply").write_bytes(head + pts.tobytes()[:-4])
    with pytest.raises(DataFormatError, match="truncated"):
        read_ply(tmp_path / "t.ply")
    (tmp_path / "n.ply").write_bytes(b"solid stl\n")
    with pytest.raises(DataFormatError, match="not a PLY"):
        read_ply(tmp_path / "n.ply")


def test_tum_roundtrip_exact_stamps(tmp_path):
    stamps = [1_700_000_000_000_000_001, 1_700_000_000_033_196_961, 1_700_000_001_999_999_999]
    poses = np.stack([make_T(rotvec_to_matrix(np.array([0.3 * i, -0.2, 1.0])), [i, -i, 0.5]) for i in range(3)])
    path = write_tum(tmp_path / "t.tum", stamps, poses, header="camera in world")
    lines = path.read_text().splitlines()
    assert lines[0] == "# camera in world" and lines[2].startswith("1700000000.033196961 ")
    tr = read_tum(path)
    assert tr.stamps_ns.tolist() == stamps
    np.testing.assert_allclose(tr.poses, poses, atol=1e-8)
    assert tr.nearest(stamps[1] + 10, 100) == 1 and tr.nearest(stamps[1] + 10**6, 100) is None


def test_tum_bad_lines(tmp_path):
    (tmp_path / "x.tum").write_text("1.0 0 0 0 0 0 0\n")
    with pytest.raises(DataFormatError, match="8 numbers"):
        read_tum(tmp_path / "x.tum")
    (tmp_path / "y.tum").write_text("1.0 0 0 0 0 0 0 0\n")
    with pytest.raises(DataFormatError, match="zero quaternion"):
        read_tum(tmp_path / "y.tum")
    assert text_to_ns("12.5") == 12_500_000_000 and text_to_ns("-0.000000001") == -1


def test_write_npz_round_trip_and_compression_per_array(tmp_path):
    """numpy.load reads what write_npz writes, exactly; images are deflated, float
    pointmaps stored (unless compress_floats), and nothing needs pickles."""
    import zipfile

    from recon_ros.io.arrays import write_npz

    rng = np.random.default_rng(0)
    arrays = {"rgb": rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), "valid": rng.random((48, 64)) > 0.5,
              "points": rng.normal(size=(48, 64, 3)).astype(np.float32), "stamp": np.int64(7),
              "source": np.str_("depth"), "T": np.eye(4)}
    path = write_npz(tmp_path / "a.npz", arrays)
    with np.load(path, allow_pickle=False) as z:
        assert set(z.files) == set(arrays)
        for k, v in arrays.items():
            assert np.array_equal(z[k], v) and z[k].dtype == np.asarray(v).dtype, k
    with zipfile.ZipFile(path) as zf:
        kinds = {i.filename: i.compress_type for i in zf.infolist()}
    assert kinds["rgb.npy"] == zipfile.ZIP_DEFLATED and kinds["valid.npy"] == zipfile.ZIP_DEFLATED
    assert kinds["points.npy"] == zipfile.ZIP_STORED
    write_npz(tmp_path / "b.npz", arrays, compress_floats=True)
    with zipfile.ZipFile(tmp_path / "b.npz") as zf:
        assert zf.getinfo("points.npy").compress_type == zipfile.ZIP_DEFLATED
