"""The eval command and the TUM / PLY files it reads."""
from __future__ import annotations

import json

import numpy as np
import pytest

from recon_ros.cli import main
from recon_ros.errors import DataFormatError
from recon_ros.io.ply import read_ply, write_ply
from recon_ros.io.trajectory import ns_to_text as ns_to_stamp
from recon_ros.io.trajectory import read_tum as _read_tum
from recon_ros.io.trajectory import text_to_ns as stamp_to_ns
from recon_ros.io.trajectory import write_tum


def read_tum(path):
    t = _read_tum(path)
    return t.stamps_ns, t.poses
from recon_ros.geometry.transforms import make_T, rotvec_to_matrix, transform_points


def loop_poses(n: int = 40) -> np.ndarray:
    s = np.linspace(0, 2 * np.pi, n, endpoint=False)
    T = np.tile(np.eye(4), (n, 1, 1))
    T[:, :3, 3] = np.stack([np.cos(s), 0.8 * np.sin(s), 0.1 * np.sin(2 * s)], axis=1)
    T[:, :3, :3] = rotvec_to_matrix(np.outer(s, [0, 0, 1]) + [0.05, 0.0, 0.0])
    return T


STAMPS = 1_700_000_000_000_000_000 + np.arange(40, dtype=np.int64) * 33_333_333


def test_tum_round_trip_keeps_nanosecond_stamps(tmp_path):
    T = loop_poses()
    write_tum(tmp_path / "a.tum", STAMPS, T)
    stamps, poses = read_tum(tmp_path / "a.tum")
    np.testing.assert_array_equal(stamps, STAMPS)
    np.testing.assert_allclose(poses, T, atol=1e-8)
    assert stamp_to_ns("12.5") == 12_500_000_000
    assert stamp_to_ns("1.0000000019") == 1_000_000_001  # beyond ns is cut
    assert stamp_to_ns("1e3") == 1_000_000_000_000
    assert ns_to_stamp(-1_500_000_000) == "-1.500000000"
    text = "# comment\n\n1.0 0 0 0 0 0 0 1\n0.5, 1, 2, 3, 0, 0, 0, 2\n"
    (tmp_path / "b.tum").write_text(text)
    stamps, poses = read_tum(tmp_path / "b.tum")
    assert list(stamps) == [500_000_000, 1_000_000_000]  # sorted by stamp
    np.testing.assert_allclose(poses[0, :3, 3], [1, 2, 3])
    np.testing.assert_allclose(poses[0, :3, :3], np.eye(3))  # quaternion normalised


@pytest.mark.parametrize("text, match", [
    ("1 2 3\n", "has 8 numbers"),
    ("1 0 0 0 0 0 0 x\n", "not a number"),
    ("1 0 0 0 0 0 0 0\n", "zero quaternion"),
])
def test_malformed_tum_files(tmp_path, text, match):
    p = tmp_path / "bad.tum"
    p.write_text(text)
    with pytest.raises(DataFormatError, match=match):
        read_tum(p)


def test_ply_round_trip_binary_ascii_and_mesh(tmp_path):
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(100, 3))
    nrm = rng.normal(size=(100, 3))
    col = rng.integers(0, 256, size=(100, 3), dtype=np.uint8)
    faces = rng.integers(0, 100, size=(30, 3))
    write_ply(tmp_path / "a.ply", pts, colors=col, faces=faces, normals=nrm)
    ply = read_ply(tmp_path / "a.ply")
    np.testing.assert_allclose(ply.points, pts, atol=1e-6)
    np.testing.assert_allclose(ply.normals, nrm, atol=1e-6)
    np.testing.assert_array_equal(ply.colors, col)
    np.testing.assert_array_equal(ply.faces, faces)
    # ASCII with a double-typed vertex, an extra property, and float colours
    ascii_ply = ("ply\nformat ascii 1.0\ncomment made by hand\nelement vertex 3\n"
                 "property double x\nproperty double y\nproperty double z\nproperty float quality\n"
                 "property float red\nproperty float green\nproperty float blue\n"
                 "element face 1\nproperty list uchar int vertex_indices\nend_header\n"
                 "0 0 0 5 1 0 0\n1 0 0 5 0 1 0\n0 1 0 5 0 0 1\n3 0 1 2\n")
    (tmp_path / "b.ply").write_text(ascii_ply)
    ply = read_ply(tmp_path / "b.ply")
    np.testing.assert_allclose(ply.points, [[0, 0, 0], [1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(ply.colors, [[255, 0, 0], [0, 255, 0], [0, 0, 255]])
    np.testing.assert_array_equal(ply.faces, [[0, 1, 2]])
    assert ply.normals is None
    # big-endian binary
    data = np.array([(1.0, 2.0, 3.0), (4.0, 5.0, 6.0)], dtype=[("x", ">f4"), ("y", ">f4"), ("z", ">f4")])
    header = b"ply\nformat binary_big_endian 1.0\nelement vertex 2\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
    (tmp_path / "c.ply").write_bytes(header + data.tobytes())
    np.testing.assert_allclose(read_ply(tmp_path / "c.ply").points, [[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize("content, match", [
    (b"not a ply\n", "not a PLY"),
    (b"ply\nformat binary_little_endian 1.0\nelement vertex 10\nproperty float x\nproperty float y\n"
     b"property float z\nend_header\n" + b"\0" * 12, "truncated"),
    (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n1\n", "no x y z"),
    (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\n", "end_header"),
])
def test_malformed_ply_files(tmp_path, content, match):
    p = tmp_path / "bad.ply"
    p.write_bytes(content)
    with pytest.raises(DataFormatError, match=match):
        read_ply(p)


def test_eval_command_end_to_end(tmp_path, capsys):
    gt = loop_poses()
    S = make_T(rotvec_to_matrix([0.2, 0.1, -0.4]), [1.0, -2.0, 0.5], scale=2.5)
    est = gt.copy()
    est[:, :3, :3] = S[:3, :3] / 2.5 @ gt[:, :3, :3]
    est[:, :3, 3] = transform_points(S, gt[:, :3, 3])
    write_tum(tmp_path / "gt.tum", STAMPS, gt)
    write_tum(tmp_path / "est.tum", STAMPS + 3_000_000, est)  # 3 ms clock offset
    rng = np.random.default_rng(1)
    cloud = rng.uniform(-1, 1, size=(4000, 3)) * [3, 2.5, 1.4] + [0, 0, 1.4]
    write_ply(tmp_path / "gt.ply", cloud)
    # the map is in the estimate's world: the same points mapped by S, plus 1 cm along z
    write_ply(tmp_path / "map.ply", transform_points(S, cloud + [0, 0, 0.01]))
    out = tmp_path / "eval"
    rc = main(["eval", "--gt-traj", str(tmp_path / "gt.tum"), "--traj", str(tmp_path / "est.tum"),
               "--gt-cloud", str(tmp_path / "gt.ply"), "--cloud", str(tmp_path / "map.ply"),
               "--rpe-distance", "0.5", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "ATE" in printed and "F@0.05" in printed
    report = json.loads((out / "report.json").read_text())
    tr = report["trajectory"]
    assert tr["n_matched"] == 40
    assert tr["ate_trans_m"]["rmse"] < 1e-6
    assert tr["scale"] == pytest.approx(1 / 2.5, rel=1e-6)
    sf = report["surface"]
    # float32 storage of coordinates several metres from the origin: ~1e-6 m
    assert sf["accuracy_mean_m"] == pytest.approx(0.01, abs=1e-4)
    assert sf["fscore"] == 1.0
    for name in report["plots"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"trajectory_top.png", "ate_over_time.png", "ate_histogram.png",
            "accuracy_histogram.png", "completion_histogram.png"} == set(report["plots"])
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_eval_command_se3_without_plots(tmp_path):
    gt = loop_poses()
    write_tum(tmp_path / "gt.tum", STAMPS, gt)
    est = gt.copy()
    est[:, :3, 3] *= 0.5
    write_tum(tmp_path / "est.tum", STAMPS, est)
    out = tmp_path / "o"
    assert main(["eval", "--gt-traj", str(tmp_path / "gt.tum"), "--traj", str(tmp_path / "est.tum"),
                 "--align", "se3", "--no-plots", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    x = gt[:, :3, 3]
    expected = 0.5 * np.sqrt(np.mean(np.sum((x - x.mean(axis=0)) ** 2, axis=1)))
    assert report["trajectory"]["ate_trans_m"]["rmse"] == pytest.approx(expected, rel=1e-6)
    assert report["plots"] == [] and sorted(p.name for p in out.iterdir()) == ["report.json"]


def test_eval_command_errors_exit_2(tmp_path, capsys):
    write_tum(tmp_path / "gt.tum", STAMPS, loop_poses())
    (tmp_path / "bad.tum").write_text("1 2 3\n")
    (tmp_path / "empty.tum").write_text("# only a comment\n")
    cases = [
        (["--gt-traj", str(tmp_path / "missing.tum"), "--traj", str(tmp_path / "gt.tum")], "not found"),
        (["--gt-traj", str(tmp_path / "gt.tum")], "both --gt-traj and --traj"),
        (["--gt-cloud", str(tmp_path / "gt.ply"), "--cloud", str(tmp_path / "x.ply")], "not found"),
        ([], "nothing to evaluate"),
        (["--gt-traj", str(tmp_path / "gt.tum"), "--traj", str(tmp_path / "bad.tum")], "has 8 numbers"),
        (["--gt-traj", str(tmp_path / "gt.tum"), "--traj", str(tmp_path / "empty.tum")], "no poses"),
        (["--gt-traj", str(tmp_path / "gt.tum"), "--traj", str(tmp_path / "gt.tum"), "--max-dt", "0"], "--max-dt"),
    ]
    for extra, match in cases:
        out = tmp_path / "o"
        rc = main(["eval", *extra, "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2, extra
        assert match in err and "Traceback" not in err
        assert err.count("\n") == 1  # one line
        assert not (out / "report.json").exists()


def test_mesh_ground_truth_is_sampled(tmp_path):
    # a 2 x 2 m floor as two triangles; the prediction is a grid on it, 2 cm above
    v = np.array([[0, 0, 0], [2, 0, 0], [2, 2, 0], [0, 2, 0]], dtype=float)
    write_ply(tmp_path / "gt.ply", v, faces=np.array([[0, 1, 2], [0, 2, 3]]))
    u, w = np.meshgrid(np.linspace(0.05, 1.95, 40), np.linspace(0.05, 1.95, 40))
    pred = np.stack([u.ravel(), w.ravel(), np.full(u.size, 0.02)], axis=1)
    write_ply(tmp_path / "map.ply", pred)
    out = tmp_path / "o"
    assert main(["eval", "--gt-cloud", str(tmp_path / "gt.ply"), "--cloud", str(tmp_path / "map.ply"),
                 "--mesh-samples", "40000", "--no-plots", "--out", str(out)]) == 0
    sf = json.loads((out / "report.json").read_text())["surface"]
    assert sf["n_gt"] == 40000
    assert sf["accuracy_mean_m"] == pytest.approx(0.02, abs=0.002)
    assert sf["normal_consistency"] > 0.95
