import numpy as np
import pytest

from recon_ros.geometry import transforms as tf
from recon_ros.geometry.camera import PixelMap, backproject_depth, make_K, project_points


def random_rotation(rng):
    q = rng.normal(size=4)
    return tf.quat_to_matrix(q / np.linalg.norm(q))


def test_quaternion_round_trip_and_convention():
    rng = np.random.default_rng(0)
    Rs = np.stack([random_rotation(rng) for _ in range(50)])
    q = tf.matrix_to_quat(Rs)
    assert np.all(q[:, 3] >= 0)
    np.testing.assert_allclose(tf.quat_to_matrix(q), Rs, atol=1e-12)
    # 90 degrees about z, (x, y, z, w) order
    Rz = tf.quat_to_matrix([0, 0, np.sin(np.pi / 4), np.cos(np.pi / 4)])
    np.testing.assert_allclose(Rz @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    # rotations near pi are handled (trace close to -1)
    Rpi = tf.rotvec_to_matrix([np.pi - 1e-9, 0, 0])
    np.testing.assert_allclose(tf.quat_to_matrix(tf.matrix_to_quat(Rpi)), Rpi, atol=1e-9)


def test_rotvec_round_trip():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(20, 3))
    v *= (rng.uniform(0, 3.0, size=20) / np.linalg.norm(v, axis=1))[:, None]
    np.testing.assert_allclose(tf.matrix_to_rotvec(tf.rotvec_to_matrix(v)), v, atol=1e-10)
    np.testing.assert_allclose(tf.rotvec_to_matrix(np.zeros(3)), np.eye(3))


def test_sim3_inverse_and_decompose():
    rng = np.random.default_rng(2)
    R = random_rotation(rng)
    T = tf.make_T(R, [1, 2, 3], scale=2.5)
    np.testing.assert_allclose(T @ tf.invert_T(T), np.eye(4), atol=1e-12)
    s, R2, t = tf.sim3_decompose(T)
    assert s == pytest.approx(2.5)
    np.testing.assert_allclose(R2, R, atol=1e-12)
    p = rng.normal(size=(7, 3)).astype(np.float32)
    out = tf.transform_points(T, p)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (2.5 * p @ R.T + [1, 2, 3]), rtol=1e-5)


def test_umeyama_recovers_similarity():
    rng = np.random.default_rng(3)
    T = tf.make_T(random_rotation(rng), rng.normal(size=3), scale=0.7)
    src = rng.normal(size=(100, 3))
    dst = tf.transform_points(T, src)
    np.testing.assert_allclose(tf.umeyama(src, dst), T, atol=1e-10)
    rigid = tf.umeyama(src, tf.transform_points(tf.make_T(T[:3, :3] / 0.7, [0, 0, 1]), src), with_scale=False)
    assert tf.sim3_scale(rigid) == pytest.approx(1.0)


def test_optical_to_body_axes():
    # camera looking forward: optical z -> body x, optical x (right) -> body -y, optical y (down) -> body -z
    np.testing.assert_allclose(tf.R_BODY_OPTICAL @ [0, 0, 1], [1, 0, 0])
    np.testing.assert_allclose(tf.R_BODY_OPTICAL @ [1, 0, 0], [0, -1, 0])
    np.testing.assert_allclose(tf.R_BODY_OPTICAL @ [0, 1, 0], [0, 0, -1])


def test_backproject_project_round_trip():
    K = make_K(300, 310, 160.5, 120.25)
    depth = np.full((240, 320), 2.0, np.float32)
    depth[0, 0] = 0
    depth[1, 1] = np.nan
    pts = backproject_depth(depth, K)
    assert np.isnan(pts[0, 0]).all() and np.isnan(pts[1, 1]).all()
    uv, z = project_points(pts[5:, 5:], K)
    grid_u, grid_v = np.meshgrid(np.arange(5, 320), np.arange(5, 240))
    np.testing.assert_allclose(uv[..., 0], grid_u, atol=1e-4)
    np.testing.assert_allclose(uv[..., 1], grid_v, atol=1e-4)
    np.testing.assert_allclose(z, 2.0)


def test_pixel_map_consistent_with_intrinsics():
    pm = PixelMap(sx=0.5, sy=0.5, tx=-10.0, ty=0.0, image_size=(640, 480), model_size=(300, 240))
    K = make_K(500, 500, 320, 240)
    Km = pm.K_to_model(K)
    np.testing.assert_allclose(pm.K_to_image(Km), K)
    # a 3D point projects to corresponding pixels in both images
    p = np.array([0.3, -0.2, 2.0])
    uv_img, _ = project_points(p, K)
    uv_model, _ = project_points(p, Km)
    np.testing.assert_allclose(pm.to_model(uv_img), uv_model, atol=1e-9)
    np.testing.assert_allclose(pm.to_image(uv_model), uv_img, atol=1e-9)
