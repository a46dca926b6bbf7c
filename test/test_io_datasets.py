"""Dataset readers and the convert command on tiny folders written here following the datasets'
published layouts (ScanNet SensReader export and sensor_data; ARKitScenes raw)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from recon_ros.cli import main as cli_main
from recon_ros.geometry.transforms import invert_T, make_T, matrix_to_rotvec, rotvec_to_matrix
from recon_ros.io.bag_reader import BagFrameSource
from recon_ros.io.sources import detect_source_kind, open_source

N = 5


def _poses(n=N):
    return [make_T(rotvec_to_matrix(np.array([0.05 * i, -0.1, 0.02 * i])), [0.1 * i, 1.0, 1.5]) for i in range(n)]


def _save_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _save_mat(path: Path, M: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(" ".join(f"{v:.9g}" for v in row) for row in M) + "\n")


def _K4(fx, fy, cx, cy):
    K = np.eye(4)
    K[0, 0], K[1, 1], K[0, 2], K[1, 2] = fx, fy, cx, cy
    return K


def write_scannet(root: Path, layout: str, bad_pose: int = -1, missing_depth: int = -1) -> dict:
    """Colour 96x72 (flat colours per frame), depth 48x36 uint16 mm; depth intrinsics are the colour
    ones at half size (pixel-centre convention), as in ScanNet where both share the field of view."""
    Kc = _K4(80.0, 80.0, 47.5, 35.5)
    Kd = _K4(40.0, 40.0, 23.5, 17.5)
    poses = _poses()
    for i, T in enumerate(poses):
        rgb = np.zeros((72, 96, 3), np.uint8)
        rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10 * i, 100, 200
        depth = np.full((36, 48), 1000 + 100 * i, np.uint16)
        if i == bad_pose:
            T = np.full((4, 4), -np.inf)
        if layout == "export":
            cpath, dpath, ppath = root / "color" / f"{i}.jpg", root / "depth" / f"{i}.png", root / "pose" / f"{i}.txt"
        else:
            sd = root / "sensor_data"
            cpath, dpath, ppath = (sd / f"frame-{i:06d}.color.jpg", sd / f"frame-{i:06d}.depth.png",
                                   sd / f"frame-{i:06d}.pose.txt")
        _save_rgb(cpath, rgb)
        if i != missing_depth:
            dpath.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(dpath), depth)
        _save_mat(ppath, T)
    _save_mat(root / "intrinsic" / "intrinsic_color.txt", Kc)
    _save_mat(root / "intrinsic" / "intrinsic_depth.txt", Kd)
    return {"poses": poses, "Kc": Kc[:3, :3], "Kd": Kd[:3, :3]}


@pytest.mark.parametrize("layout", ["export", "sensor_data"])
def test_scannet_to_bag(tmp_path, layout):
    scene = tmp_path / "scene0000_00"
    truth = write_scannet(scene, layout)
    assert detect_source_kind(scene) == "scannet"
    out = tmp_path / "bag"
    assert cli_main(["-q", "convert", "scannet", str(scene), str(out), "--no-progress"]) == 0
    frames = list(BagFrameSource(out))
    assert len(frames) == N
    for i, f in enumerate(frames):
        # default alignment: colour resampled onto the 48x36 depth grid, K = depth intrinsics
        assert f.rgb.shape == (36, 48, 3)
        np.testing.assert_allclose(f.K, truth["Kd"])
        assert abs(int(f.rgb[18, 24, 0]) - 10 * i) <= 3 and abs(int(f.rgb[18, 24, 2]) - 200) <= 3
        np.testing.assert_allclose(f.depth, (1000 + 100 * i) / 1000.0, atol=1e-6)
        np.testing.assert_allclose(f.extras["T_world_cam_gt"], truth["poses"][i], atol=1e-6)
    assert frames[1].stamp_ns - frames[0].stamp_ns == pytest.approx(1e9 / 30, abs=1)


def test_scannet_align_color_keeps_colour_grid(tmp_path):
    scene = tmp_path / "s"
    truth = write_scannet(scene, "export")
    src = open_source(scene, align="color")
    f = next(iter(src))
    assert f.rgb.shape == (72, 96, 3) and f.depth.shape == (72, 96)
    np.testing.assert_allclose(f.K, truth["Kc"])
    # nearest-neighbour depth: only the original value (no interpolated mixtures), covering the image
    assert set(np.unique(f.depth).tolist()) <= {1.0, 0.0}
    assert np.mean(f.depth == 1.0) > 0.95


def test_scannet_invalid_pose_and_missing_depth_are_counted(tmp_path, caplog):
    scene = tmp_path / "s"
    write_scannet(scene, "export", bad_pose=1, missing_depth=3)
    src = open_source(scene)
    frames = list(src)
    assert [f.extras["source_id"] for f in frames] == ["0", "2", "4"]
    assert src.skips.counts["invalid_pose"] == 1 and src.skips.counts["missing_depth"] == 1
    assert "invalid_pose" in caplog.text


def write_arkit(root: Path, n=N, offset_s=0.004, far_frame=-1) -> dict:
    vid = "41069025"
    poses = _poses(n)
    K = (60.0, 61.0, 31.5, 23.5)
    lines = []
    for i, T in enumerate(poses):
        ts = 6845.100 + 0.1 * i
        img_ts = ts + (0.5 if i == far_frame else offset_s)
        name = f"{vid}_{img_ts:.3f}"
        rgb = np.full((48, 64, 3), (20 * i, 50, 90), np.uint8)
        _save_rgb(root / "lowres_wide" / f"{name}.png", rgb)
        (root / "lowres_depth").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "lowres_depth" / f"{name}.png"), np.full((48, 64), 700 + i, np.uint16))
        (root / "lowres_wide_intrinsics").mkdir(parents=True, exist_ok=True)
        (root / "lowres_wide_intrinsics" / f"{name}.pincam").write_text("64 48 %g %g %g %g\n" % K)
        # the trajectory stores the world-to-camera transform as axis-angle + translation
        T_cw = invert_T(T)
        rv = matrix_to_rotvec(T_cw[:3, :3])
        lines.append(f"{ts:.5f} {rv[0]:.12f} {rv[1]:.12f} {rv[2]:.12f} "
                     f"{T_cw[0, 3]:.12f} {T_cw[1, 3]:.12f} {T_cw[2, 3]:.12f}")
    (root / "lowres_wide.traj").write_text("\n".join(lines) + "\n")
    return {"poses": poses, "K": K}


def test_arkitscenes_to_bag(tmp_path):
    root = tmp_path / "41069025"
    truth = write_arkit(root)
    assert detect_source_kind(root) == "arkitscenes"
    out = tmp_path / "bag"
    assert cli_main(["-q", "convert", "arkitscenes", str(root), str(out), "--storage", "mcap",
                     "--version", "9", "--no-progress"]) == 0
    frames = list(BagFrameSource(out))
    assert len(frames) == N
    fx, fy, cx, cy = truth["K"]
    for i, f in enumerate(frames):
        np.testing.assert_allclose(f.K, [[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
        np.testing.assert_allclose(f.extras["T_world_cam_gt"], truth["poses"][i], atol=1e-6)
        np.testing.assert_allclose(f.depth, (700 + i) / 1000.0, atol=1e-6)
        assert f.rgb[0, 0, 0] == 20 * i


def test_arkitscenes_image_without_nearby_pose_is_skipped(tmp_path):
    root = tmp_path / "v"
    write_arkit(root, far_frame=2)
    src = open_source(root, traj_tolerance_s=0.05)
    frames = list(src)
    assert len(frames) == N - 1 and src.skips.counts["no_pose_near_image"] == 1


def test_convert_options_and_image_folder(tmp_path):
    folder = tmp_path / "imgs"
    for i in range(6):
        _save_rgb(folder / f"img{i}.png", np.full((40, 60, 3), 30 * i, np.uint8))
    out = tmp_path / "bag"
    rc = cli_main(["-q", "convert", "images", str(folder), str(out), "--stride", "2", "--max-frames", "2",
                   "--resize", "30x20", "--fov", "90", "--compress", "--no-progress"])
    assert rc == 0
    frames = list(BagFrameSource(out))
    assert len(frames) == 2 and frames[0].rgb.shape == (20, 30, 3)
    assert [int(round(f.rgb.mean())) for f in frames] == [0, 60]  # images 0 and 2
    # 90 degree horizontal field of view at width 30 -> fx = 15
    assert frames[0].K[0, 0] == pytest.approx(15.0, rel=1e-6)


def test_video_source(tmp_path):
    path = tmp_path / "v.avi"
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (32, 24))
    if not wr.isOpened():
        pytest.fail("OpenCV cannot write MJPG video here")
    for i in range(4):
        wr.write(np.full((24, 32, 3), 60 * i, np.uint8))
    wr.release()
    src = open_source(path)
    frames = list(src)
    assert len(frames) == 4 and frames[2].rgb.shape == (24, 32, 3)
    assert frames[1].stamp_ns - frames[0].stamp_ns == pytest.approx(1e8, abs=1e3)
    assert abs(float(frames[3].rgb.mean()) - 180) < 6


def test_cli_errors_are_one_line_and_leave_no_output(tmp_path, capsys):
    scene = tmp_path / "s"
    write_scannet(scene, "export")
    for i in range(N):  # every depth file missing -> nothing to write
        (scene / "depth" / f"{i}.png").unlink()
    out = tmp_path / "bag"
    rc = cli_main(["convert", "scannet", str(scene), str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "no frames" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    rc = cli_main(["convert", "arkitscenes", str(tmp_path / "nope"), str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "does not exist" in err and "Traceback" not in err
    rc = cli_main(["convert", "scannet", str(tmp_path), str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "not a ScanNet scene" in err
