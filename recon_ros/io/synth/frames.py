"""Camera frames of a synthetic scene: images, noisy depth and ground truth in Frame.extras."""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np

from recon_ros.geometry.camera import make_K
from recon_ros.io.synth.config import SynthConfig
from recon_ros.io.synth.scene import Scene, make_scene
from recon_ros.io.synth.trajectory import blacked_out, frame_stamps_ns, frame_times, trajectory
from recon_ros.io.topics import CAMERA_OPTICAL_FRAME
from recon_ros.mapping.frame import Frame
from recon_ros.mapping.schema import NOISE_POWER

# the child of the static chain base_link -> camera_link -> optical frame that bags carry
FRAME_ID = CAMERA_OPTICAL_FRAME


def intrinsics(cfg: SynthConfig) -> np.ndarray:
    """Pinhole K with square pixels and the principal point at the image centre."""
    f = (cfg.width / 2.0) / np.tan(np.deg2rad(cfg.hfov_deg) / 2.0)
    return make_K(f, f, (cfg.width - 1) / 2.0, (cfg.height - 1) / 2.0)


def depth_noise_std(depth: np.ndarray, cfg: SynthConfig) -> np.ndarray:
    """Per-pixel std (m) of the simulated depth noise."""
    return cfg.depth_noise_m * depth.astype(np.float64) ** NOISE_POWER[cfg.depth_noise_model]


def sensor_depth(depth_gt: np.ndarray, cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Noisy depth as a sensor would give it: Gaussian noise, dropouts, range limit; 0 = invalid."""
    valid = depth_gt > 0
    depth = depth_gt.astype(np.float64)
    if cfg.depth_noise_m > 0:
        depth = depth + rng.standard_normal(depth.shape) * depth_noise_std(depth_gt, cfg)
    if cfg.depth_dropout > 0:
        valid &= rng.random(depth.shape) >= cfg.depth_dropout
    if cfg.depth_max_m > 0:
        valid &= depth_gt <= cfg.depth_max_m
    valid &= depth > 0
    return np.where(valid, depth, 0.0).astype(np.float32)


def render_frame(scene: Scene, cfg: SynthConfig, index: int,
                 poses: Optional[np.ndarray] = None) -> Frame:
    """Frame ``index`` of the sequence; its noise depends only on (seed, index)."""
    poses = trajectory(cfg) if poses is None else poses
    K = intrinsics(cfg)
    t = float(frame_times(cfg)[index])
    T = poses[index]
    rgb, depth_gt, dyn = scene.render(T, K, cfg.width, cfg.height, t)
    rng = np.random.default_rng([cfg.seed, 1, index])
    depth = sensor_depth(depth_gt, cfg, rng)
    if cfg.image_noise_std > 0:
        noisy = rgb.astype(np.float32) + rng.standard_normal(rgb.shape).astype(np.float32) * cfg.image_noise_std
        rgb = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
    if cfg.blackout_s > 0 and blacked_out(cfg)[index]:
        rgb, depth = np.zeros_like(rgb), np.zeros_like(depth)  # a covered lens
    return Frame(
        stamp_ns=int(frame_stamps_ns(cfg)[index]), rgb=rgb, K=K, depth=depth,
        T_odom_cam=T.copy() if cfg.odometry_prior else None, frame_id=FRAME_ID, index=index,
        extras={"T_world_cam_gt": T.copy(), "depth_gt": depth_gt, "dynamic_mask": dyn,
                "time_s": t})


def iter_frames(cfg: SynthConfig, scene: Optional[Scene] = None) -> Iterator[Frame]:
    """The frames of the sequence in order (stamps at ``cfg.fps``).

    Each Frame has ``K``, the noisy sensor ``depth`` (0 = invalid) and in ``extras``:
    ``T_world_cam_gt`` (4x4), ``depth_gt`` (noise-free z-depth, float32), ``dynamic_mask``
    (bool, True on the moving object) and ``time_s`` (seconds since the first frame).
    """
    scene = make_scene(cfg) if scene is None else scene
    poses = trajectory(cfg)
    for i in range(cfg.n_frames):
        yield render_frame(scene, cfg, i, poses)
