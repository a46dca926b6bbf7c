"""The camera path: a smooth loop around the room centre, looking outwards at walls and objects."""
from __future__ import annotations

import numpy as np

from recon_ros.io.synth.config import SynthConfig
from recon_ros.io.synth.scene import path_radii


def look_rotation(forward: np.ndarray, roll: np.ndarray | None = None) -> np.ndarray:
    """R_world_cam (N, 3, 3) of optical cameras (x right, y down, z forward) in a z-up world."""
    f = forward / np.linalg.norm(forward, axis=-1, keepdims=True)
    right = np.cross(f, np.array([0.0, 0.0, 1.0]))
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    down = np.cross(f, right)
    if roll is not None:
        c, s = np.cos(roll)[:, None], np.sin(roll)[:, None]
        right, down = c * right + s * down, -s * right + c * down
    return np.stack([right, down, f], axis=-1)


def frame_times(cfg: SynthConfig) -> np.ndarray:
    """Seconds since the first frame."""
    return np.arange(cfg.n_frames) / cfg.fps


def frame_stamps_ns(cfg: SynthConfig) -> np.ndarray:
    return cfg.start_stamp_ns + np.round(np.arange(cfg.n_frames) * (1e9 / cfg.fps)).astype(np.int64)


def path_index(cfg: SynthConfig) -> np.ndarray:
    """Position of each frame along the path, in frames: its index, shifted back to
    ``kidnap_to_s`` from ``kidnap_at_s`` on (a kidnapped camera)."""
    idx = np.arange(cfg.n_frames, dtype=np.float64)
    if cfg.kidnap_at_s > 0:
        t = frame_times(cfg)
        idx = np.where(t >= cfg.kidnap_at_s, idx - (cfg.kidnap_at_s - cfg.kidnap_to_s) * cfg.fps, idx)
    return idx


def blacked_out(cfg: SynthConfig) -> np.ndarray:
    """True for the frames of the blackout."""
    t = frame_times(cfg)
    return (t >= cfg.blackout_start_s) & (t < cfg.blackout_start_s + cfg.blackout_s)


def trajectory(cfg: SynthConfig) -> np.ndarray:
    """Ground-truth camera poses T_world_cam (n_frames, 4, 4).

    The camera circles the room centre on an ellipse (``loops`` turns, ending one step short of
    the start for a full turn) while its height, pitch and yaw oscillate smoothly; a kidnap
    (:func:`path_index`) makes it jump along that path.
    """
    n = cfg.n_frames
    theta = 2.0 * np.pi * cfg.loops * path_index(cfg) / n
    rx, ry = path_radii(cfg)
    pos = np.stack([rx * np.cos(theta), ry * np.sin(theta),
                    cfg.camera_height_m + cfg.height_amplitude_m * np.sin(2.0 * theta)], axis=1)
    yaw = theta + np.deg2rad(cfg.yaw_amplitude_deg) * np.sin(3.0 * theta)
    pitch = np.deg2rad(cfg.pitch_deg + cfg.pitch_amplitude_deg * np.sin(2.0 * theta + 0.7))
    roll = np.deg2rad(2.0) * np.sin(theta)
    fwd = np.stack([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)], axis=1)
    T = np.tile(np.eye(4), (n, 1, 1))
    T[:, :3, :3] = look_rotation(fwd, roll)
    T[:, :3, 3] = pos
    return T
