"""The records that flow through the pipeline: a camera Frame in, FrameEstimates out."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from recon_ros.errors import UserInputError
from recon_ros.geometry.camera import PixelMap


@dataclass
class Frame:
    """One synchronised camera sample.

    ``rgb`` is H x W x 3 uint8 in RGB order. ``K`` is the 3x3 intrinsic matrix of ``rgb``
    when known. ``depth`` (H x W float32 metres, 0 or NaN = invalid) is registered to ``rgb``.
    ``mask`` (H x W bool) is True where pixels must be ignored (e.g. the robot's own body or
    people). ``T_odom_cam`` is an odometry prior for the camera at ``stamp_ns`` if one exists.
    """

    stamp_ns: int
    rgb: np.ndarray
    K: Optional[np.ndarray] = None
    depth: Optional[np.ndarray] = None
    mask: Optional[np.ndarray] = None
    T_odom_cam: Optional[np.ndarray] = None
    frame_id: str = "camera"
    index: int = -1  # position in the input stream, set by readers when known
    extras: dict = field(default_factory=dict)  # e.g. ground truth carried by test sources

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    def validate(self) -> "Frame":
        """Check shapes and dtypes; raise UserInputError naming what is wrong."""
        rgb = self.rgb
        if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise UserInputError(
                f"Frame.rgb must be an H x W x 3 array, got shape {getattr(rgb, 'shape', None)}")
        if rgb.dtype != np.uint8:
            raise UserInputError(f"Frame.rgb must be uint8, got {rgb.dtype}")
        h, w = rgb.shape[:2]
        if self.depth is not None:
            if self.depth.shape != (h, w):
                raise UserInputError(
                    f"Frame.depth has shape {self.depth.shape} but the image is {h} x {w}; "
                    "depth must be registered to the colour image")
            if not np.issubdtype(self.depth.dtype, np.floating):
                raise UserInputError(f"Frame.depth must be float metres, got {self.depth.dtype}")
        if self.mask is not None and self.mask.shape != (h, w):
            raise UserInputError(f"Frame.mask has shape {self.mask.shape} but the image is {h} x {w}")
        if self.K is not None:
            K = np.asarray(self.K)
            if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
                raise UserInputError(f"Frame.K must be a finite 3x3 matrix with positive focal lengths, got {K!r}")
        if self.T_odom_cam is not None:
            T = np.asarray(self.T_odom_cam)
            if T.shape != (4, 4) or not np.all(np.isfinite(T)):
                raise UserInputError("Frame.T_odom_cam must be a finite 4x4 matrix")
        return self


@dataclass
class FrameEstimate:
    """What a frontend reports about one frame.

    ``points`` (h x w x 3 float32) are in the frontend's world frame at model resolution;
    ``confidence`` (h x w float32, larger is better; Spann3R's are >= 1); ``colors``
    (h x w x 3 uint8). ``T_world_cam`` (4x4 float64) is the camera pose in that world and
    ``K_model`` the intrinsics at model resolution; ``pixel_map`` maps model pixels back to
    image pixels. ``valid`` (h x w bool) marks pixels that may enter the map (finite, not
    masked). ``provisional`` is True for Spann3R's low-latency head-2 output of the newest
    frame, which is superseded by the final estimate one frame later. ``tracking_ok`` is
    False when the frontend could not estimate the pose (it then holds the last good pose);
    such estimates must not enter the map.
    """

    stamp_ns: int
    index: int
    points: np.ndarray
    confidence: np.ndarray
    colors: np.ndarray
    T_world_cam: np.ndarray
    K_model: np.ndarray
    pixel_map: PixelMap
    valid: Optional[np.ndarray] = None
    provisional: bool = False
    frame: Optional[Frame] = None  # the input frame this estimate belongs to
    tracking_ok: bool = True  # False: the pose could not be estimated (last good pose held)

    def valid_mask(self) -> np.ndarray:
        ok = np.all(np.isfinite(self.points), axis=-1) & np.isfinite(self.confidence)
        if self.valid is not None:
            ok &= self.valid
        return ok


@dataclass
class Keyframe:
    """A frame kept for the map and for background refinement.

    ``points_cam`` (h x w x 3 float32) is the pointmap in the keyframe's own camera frame
    (metric when a scale is known), at the resolution of ``K`` (the model resolution for
    Spann3R, the depth resolution for RGB-D). ``rgb`` is the full-resolution image with
    intrinsics ``K_image``; ``pixel_map`` relates the two pixel grids. ``T_world_cam`` is the
    current pose in the map's world frame, a rigid transform or a Sim(3) after correction.
    ``valid`` marks pixels that may enter the map.
    """

    id: int
    stamp_ns: int
    rgb: np.ndarray
    points_cam: np.ndarray
    confidence: np.ndarray
    colors: np.ndarray
    K: np.ndarray
    K_image: np.ndarray
    pixel_map: PixelMap
    T_world_cam: np.ndarray
    valid: np.ndarray
    depth_source: str = "frontend"  # "frontend" | "depth" | "mvs"
    mask: Optional[np.ndarray] = None  # the user's image mask (H x W of rgb, True = ignore)

    @property
    def depth(self) -> np.ndarray:
        """z-depth of ``points_cam`` (NaN where invalid)."""
        z = self.points_cam[..., 2].astype(np.float32, copy=True)
        z[~self.valid] = np.nan
        return z
