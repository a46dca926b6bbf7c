"""Parameters of a synthetic scene and of the camera that films it."""
from __future__ import annotations

from dataclasses import dataclass

from recon_ros.config import param
from recon_ros.mapping.schema import NOISE_MODELS


@dataclass
class SynthConfig:
    """Synthetic textured room filmed along a loop (ground truth for tests and the demo)."""

    seed: int = param(0, "random seed of the scene layout, textures and sensor noise", min=0)
    width: int = param(320, "image width in pixels", min=16, max=4096)
    height: int = param(240, "image height in pixels", min=16, max=4096)
    n_frames: int = param(120, "number of frames along the loop", min=2, max=100000)
    fps: float = param(30.0, "frame rate (Hz) of the stamps", min=0.1, max=1000.0)
    start_stamp_ns: int = param(1_700_000_000_000_000_000, "stamp of the first frame (ns)", min=0)
    hfov_deg: float = param(70.0, "horizontal field of view (degrees) of the pinhole camera",
                            min=10.0, max=150.0)
    room_length_m: float = param(6.0, "room size along world x (m)", min=2.0, max=50.0)
    room_width_m: float = param(5.0, "room size along world y (m)", min=2.0, max=50.0)
    room_height_m: float = param(2.8, "room height (m)", min=1.5, max=20.0)
    n_objects: int = param(6, "number of static objects (boxes, cylinders, spheres)", min=0, max=8)
    path_radius_m: float = param(1.0, "radius of the camera loop along x (m); the y radius "
                                 "follows the room's aspect ratio", min=0.1, max=10.0)
    camera_height_m: float = param(1.4, "mean camera height above the floor (m)", min=0.2, max=10.0)
    height_amplitude_m: float = param(0.15, "amplitude of the camera height variation (m)",
                                      min=0.0, max=2.0)
    pitch_deg: float = param(-12.0, "mean camera pitch (degrees, positive looks up)",
                             min=-60.0, max=60.0)
    pitch_amplitude_deg: float = param(8.0, "amplitude of the pitch variation (degrees)",
                                       min=0.0, max=45.0)
    yaw_amplitude_deg: float = param(25.0, "amplitude of the yaw swing around the outward "
                                     "direction (degrees)", min=0.0, max=90.0)
    loops: float = param(1.0, "turns around the room; 1 ends one step short of the start",
                         min=0.05, max=10.0)
    texture_scale: float = param(1.0, "scale of the texture features (larger = coarser)",
                                 min=0.1, max=10.0)
    shading: bool = param(True, "Lambertian shading from a point light under the ceiling")
    image_noise_std: float = param(0.0, "std of Gaussian image noise (0..255 grey levels)",
                                   min=0.0, max=50.0)
    depth_noise_m: float = param(0.0, "depth noise std (m); with the linear and quadratic models "
                                 "the std at 1 m (0.01 = 1 % of the depth with linear)",
                                 min=0.0, max=1.0)
    depth_noise_model: str = param("constant", "how depth noise grows with depth",
                                   choices=NOISE_MODELS)
    depth_dropout: float = param(0.0, "fraction of depth pixels set invalid (0) at random",
                                 min=0.0, max=1.0)
    depth_max_m: float = param(0.0, "depth beyond this is invalid (0 = no limit)", min=0.0)
    dynamic_object: bool = param(False, "add a box that slides along a wall and back "
                                 "(ground-truth mask in Frame.extras['dynamic_mask'])")
    odometry_prior: bool = param(False, "set Frame.T_odom_cam to the ground-truth pose")
    blackout_start_s: float = param(0.0, "start of a blackout (seconds since the first frame): "
                                    "black images and no depth, as with a covered lens",
                                    min=0.0, max=1e6)
    blackout_s: float = param(0.0, "length of the blackout (seconds; 0 = none)", min=0.0, max=1e6)
    kidnap_at_s: float = param(0.0, "at this time (seconds; 0 = never) the camera is carried "
                               "to where it was at kidnap_to_s and continues from there",
                               min=0.0, max=1e6)
    kidnap_to_s: float = param(0.0, "the path time the kidnapped camera resumes at (seconds, "
                               "usually earlier: a part of the room already seen)", min=0.0, max=1e6)
