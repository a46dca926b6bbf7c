"""Focal (Weiszfeld) and pose (PnP-RANSAC) from pointmaps against the reference fixture and truth."""
from __future__ import annotations

import numpy as np
import pytest
from fixture_compare import assert_matches_reference

from recon_ros.errors import UserInputError
from recon_ros.geometry.camera import backproject_depth, make_K
from recon_ros.geometry.pointmap import (confidence_mask, estimate_focal, estimate_pose_pnp,
                                         intrinsics_from_focal)
from recon_ros.geometry.transforms import invert_T, rotation_angle_deg, transform_points


@pytest.fixture(scope="module")
def cam(spann3r_fixtures):
    return dict(np.load(spann3r_fixtures / "camera_estimation.npz"))


def test_focal_matches_reference(cam):
    pts = cam["cam_pts3d"][0]
    f = estimate_focal(pts)
    assert_matches_reference("focal", f, cam["cam_focal_est"], rtol=1e-5)
    np.testing.assert_allclose(f, cam["cam_focal_true"], rtol=1e-3)
    h, w = pts.shape[:2]
    assert_matches_reference("K", intrinsics_from_focal(f, w, h), cam["cam_K_est"], rtol=1e-5)


def test_poses_match_reference(cam):
    K = cam["cam_K_est"].astype(np.float64)
    for pts, want, truth in zip(cam["cam_pts3d"], cam["cam_c2w_est"], cam["cam_c2w_true"]):
        res = estimate_pose_pnp(pts, K)
        assert res.success and res.num_points == pts.shape[0] * pts.shape[1]
        assert_matches_reference("T_world_cam", res.T_world_cam, want, rtol=1e-4)
        assert np.linalg.norm(res.T_world_cam[:3, 3] - truth[:3, 3]) < 1e-3
        assert rotation_angle_deg(res.T_world_cam[:3, :3].T @ truth[:3, :3]) < 0.05


def test_masked_estimates_use_only_chosen_pixels():
    """Synthetic camera: a corrupted region is ignored when masked out."""
    h, w, f = 48, 64, 55.0
    K = make_K(f, f, w / 2, h / 2)
    yy, xx = np.mgrid[0:h, 0:w]
    depth = (2.0 + 0.3 * np.sin(xx / 7.0) + 0.2 * np.cos(yy / 5.0)).astype(np.float32)
    pts_cam = backproject_depth(depth, K)
    T_world_cam = np.eye(4)
    T_world_cam[:3, 3] = [0.3, -0.1, 0.5]
    pts_world = transform_points(T_world_cam, pts_cam)
    good = np.ones((h, w), bool)
    good[:, : w // 3] = False
    bad_cam = pts_cam.copy()
    bad_cam[~good] *= np.array([3.0, 0.2, 1.0], np.float32)
    assert abs(estimate_focal(bad_cam, mask=good) - f) < 1e-3 * f
    assert abs(estimate_focal(bad_cam) - f) > 1e-2 * f
    bad_world = pts_world.copy()
    bad_world[~good] += 5.0
    res = estimate_pose_pnp(bad_world, K, mask=good)
    assert res.success and res.num_points == good.sum()
    np.testing.assert_allclose(res.T_world_cam, T_world_cam, atol=1e-3)
    np.testing.assert_allclose(invert_T(res.T_world_cam) @ T_world_cam, np.eye(4), atol=1e-3)


def test_confidence_mask_and_degenerate_inputs():
    conf = np.array([[1.0, 1.0005, 2.0], [np.nan, 10.0, 1.002]])
    np.testing.assert_array_equal(confidence_mask(conf, 1e-3), [[False, False, True], [False, True, True]])
    pts = np.ones((4, 5, 3), np.float32)
    res = estimate_pose_pnp(pts, make_K(5, 5, 2.5, 2), mask=np.zeros((4, 5), bool))
    assert not res.success and res.T_world_cam is None
    with pytest.raises(UserInputError, match="H x W x 3"):
        estimate_focal(np.ones((4, 5)))
    with pytest.raises(UserInputError, match="mask"):
        estimate_focal(pts, mask=np.ones((3, 3), bool))
    with pytest.raises(UserInputError, match="no pixels"):
        estimate_focal(pts, mask=np.zeros((4, 5), bool))
    with pytest.raises(UserInputError, match="3x3"):
        estimate_pose_pnp(pts, np.eye(2))
