"""Synthetic scenes with ground truth: a procedural textured room filmed along a loop.

    cfg = SynthConfig(n_frames=60)
    scene = make_scene(cfg)
    for frame in iter_frames(cfg, scene):       # Frame with K, noisy depth and ground truth
        frame.extras["T_world_cam_gt"], frame.extras["depth_gt"], frame.extras["dynamic_mask"]
    export_ground_truth(scene, cfg, "out/")     # gt_surface.ply, gt_trajectory.tum, meta.json
"""
from recon_ros.io.synth.config import SynthConfig
from recon_ros.io.synth.export import export_ground_truth, ground_truth_surface
from recon_ros.io.synth.frames import intrinsics, iter_frames, render_frame, sensor_depth
from recon_ros.io.synth.scene import RayHits, Scene, SurfaceSamples, cast_rays, make_scene
from recon_ros.io.synth.trajectory import frame_stamps_ns, frame_times, trajectory

__all__ = [
    "SynthConfig", "Scene", "RayHits", "SurfaceSamples", "cast_rays", "make_scene", "trajectory",
    "frame_times", "frame_stamps_ns", "intrinsics", "iter_frames", "render_frame",
    "sensor_depth", "export_ground_truth", "ground_truth_surface",
]
