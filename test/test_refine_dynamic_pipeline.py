"""A moving object through the whole pipeline: synth bag -> replay --refine (rgbd) -> the moving
box leaves the map while the static surface stays complete."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from recon_ros.cli import main
from recon_ros.geometry.transforms import invert_T, transform_points
from recon_ros.io.ply import read_ply
from recon_ros.io.trajectory import read_tum


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "known gap: map.ply now comes from the TSDF volume, where free-space carving is the only "
    "transient mechanism, and it leaves about 1,900 of the 2,229 off-surface points of this "
    "scene (the refiner's transient rejection acts on the keyframe map only); strict, so the "
    "test reports as soon as the volume removes the box"))
def test_moving_box_leaves_the_refined_map(tmp_path):
    scene, out = tmp_path / "scene", tmp_path / "run"
    assert main(["-q", "synth", str(scene), "--no-progress", "--synth.dynamic_object", "true",
                 "--synth.depth_noise_m", "0.005"]) == 0
    assert main(["-q", "replay", str(scene), "--frontend", "rgbd", "--refine", "--out", str(out), "--no-progress",
                 "--no-bag", "--schedule.align_period_s", "1", "--schedule.refine_period_s", "1"]) == 0
    static = read_ply(scene / "gt" / "gt_surface.ply").points  # the static surface only
    gt, est = read_tum(scene / "gt" / "gt_trajectory.tum"), read_tum(out / "trajectory_before.tum")
    T_gt_recon = gt.poses[0] @ invert_T(est.poses[0])
    static_tree = cKDTree(static)

    def measure(name):
        pts = transform_points(T_gt_recon, read_ply(out / name).points)
        off_static = int((static_tree.query(pts)[0] > 0.05).sum())  # the moving box (and outliers)
        recall = float((cKDTree(pts).query(static)[0] < 0.05).mean())
        return off_static, recall

    off_before, recall_before = measure("map_before.ply")
    off_after, recall_after = measure("map.ply")
    assert off_before > 1000  # the box was mapped by the frontend
    assert off_after < 0.10 * off_before
    assert recall_after > recall_before - 0.02
