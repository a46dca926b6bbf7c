"""A moving object through the whole pipeline: synth bag -> replay --refine (rgbd) -> the moving
box leaves the fused map (map.ply, from the TSDF volume) while the static surface stays complete.

The box's points are the points more than 5 cm from the static surface inside the region the
box sweeps; the keyframe point map the frontend built (map_before.ply) holds them all."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from recon_ros.cli import main
from recon_ros.geometry.transforms import invert_T, transform_points
from recon_ros.io.ply import read_ply
from recon_ros.io.synth import SynthConfig, make_scene
from recon_ros.io.trajectory import read_tum


def _swept_region(scene) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned bounds (lo, hi) of the space the moving box sweeps, 5 cm wider."""
    box, motion = scene.solids[scene.dynamic_index], scene.motion
    lo = box.center - box.half + np.minimum(motion.start, motion.end) - 0.05
    hi = box.center + box.half + np.maximum(motion.start, motion.end) + 0.05
    return lo, hi


@pytest.mark.slow
@pytest.mark.parametrize("seed, loops", [(0, 1.0), (2, 1.3)])
def test_moving_box_leaves_the_refined_map(tmp_path, seed, loops):
    scene_dir, out = tmp_path / "scene", tmp_path / "run"
    assert main(["-q", "synth", str(scene_dir), "--no-progress", "--synth.dynamic_object", "true",
                 "--synth.depth_noise_m", "0.005", "--synth.seed", str(seed),
                 "--synth.loops", str(loops)]) == 0
    assert main(["-q", "replay", str(scene_dir), "--frontend", "rgbd", "--refine", "--out", str(out), "--no-progress",
                 "--no-bag", "--schedule.align_period_s", "1", "--schedule.refine_period_s", "1"]) == 0
    scene = make_scene(SynthConfig(seed=seed, loops=loops, dynamic_object=True, depth_noise_m=0.005))
    lo, hi = _swept_region(scene)
    static = read_ply(scene_dir / "gt" / "gt_surface.ply").points  # the static surface only
    gt, est = read_tum(scene_dir / "gt" / "gt_trajectory.tum"), read_tum(out / "trajectory_before.tum")
    T_gt_recon = gt.poses[0] @ invert_T(est.poses[0])
    static_tree = cKDTree(static)

    def measure(name):
        pts = transform_points(T_gt_recon, read_ply(out / name).points)
        off_static = static_tree.query(pts)[0] > 0.05
        in_lane = np.all((pts >= lo) & (pts <= hi), axis=1)
        recall = float((cKDTree(pts).query(static)[0] < 0.05).mean())
        return int((off_static & in_lane).sum()), recall

    box_before, recall_before = measure("map_before.ply")
    box_after, recall_after = measure("map.ply")
    assert box_before > 1000  # the box was mapped by the frontend
    assert box_after < 0.05 * box_before
    assert recall_after > recall_before - 0.02
