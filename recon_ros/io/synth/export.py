"""Ground truth of a synthetic sequence on disk: surface PLY, TUM trajectory and meta.json."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Dict

import numpy as np

from recon_ros.config import to_dict
from recon_ros.io.ply import write_ply
from recon_ros.io.trajectory import write_tum
from recon_ros.io.atomic import write_text_atomic
from recon_ros.io.synth.config import SynthConfig
from recon_ros.io.synth.frames import FRAME_ID, intrinsics
from recon_ros.io.synth.scene import Scene, SurfaceSamples
from recon_ros.io.synth.trajectory import frame_stamps_ns, frame_times, trajectory

log = logging.getLogger(__name__)

SURFACE_FILE = "gt_surface.ply"
TRAJECTORY_FILE = "gt_trajectory.tum"
META_FILE = "meta.json"


def ground_truth_surface(scene: Scene, cfg: SynthConfig, spacing: float = 0.02,
                         visible_only: bool = True) -> SurfaceSamples:
    """The static surface sampled every ``spacing`` m; with ``visible_only`` only the points
    that some camera of the sequence sees (what a reconstruction can be asked to complete)."""
    surf = scene.sample_surface(spacing)
    if not visible_only:
        return surf
    keep = scene.visible_mask(surf.points, surf.normals, trajectory(cfg), intrinsics(cfg),
                              cfg.width, cfg.height, frame_times(cfg))
    log.info("ground-truth surface: %d of %d points seen by the cameras", int(keep.sum()), len(keep))
    return SurfaceSamples(surf.points[keep], surf.normals[keep], surf.colors[keep])


def export_ground_truth(scene: Scene, cfg: SynthConfig, out_dir: "str | os.PathLike[str]",
                        spacing: float = 0.02, visible_only: bool = True) -> Dict[str, Path]:
    """Write gt_surface.ply (xyz, normals, rgb), gt_trajectory.tum and meta.json into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    surf = ground_truth_surface(scene, cfg, spacing, visible_only)
    paths = {
        "surface": write_ply(out / SURFACE_FILE, surf.points, colors=surf.colors, normals=surf.normals),
        "trajectory": write_tum(out / TRAJECTORY_FILE, frame_stamps_ns(cfg), trajectory(cfg)),
    }
    K = intrinsics(cfg)
    meta = {
        "width": cfg.width, "height": cfg.height, "K": K.tolist(),
        "fx": K[0, 0], "fy": K[1, 1], "cx": K[0, 2], "cy": K[1, 2],
        "camera_frame_id": FRAME_ID, "camera_axes": "REP-103 optical (x right, y down, z forward)",
        "world_axes": "z up, floor at z = 0", "depth": "z-depth in metres, 0 = invalid",
        "n_frames": cfg.n_frames, "fps": cfg.fps,
        "first_stamp_ns": int(cfg.start_stamp_ns),
        "surface": {"file": SURFACE_FILE, "points": int(len(surf.points)), "spacing_m": spacing,
                    "visible_only": visible_only},
        "trajectory": {"file": TRAJECTORY_FILE, "format": "TUM: stamp tx ty tz qx qy qz qw (T_world_cam)"},
        "scene": scene.describe(),
        "config": to_dict(cfg),
    }
    paths["meta"] = write_text_atomic(out / META_FILE, json.dumps(meta, indent=2, default=_json_default) + "\n")
    return paths


def _json_default(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
