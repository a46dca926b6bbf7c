"""Matched camera messages -> a Frame: one decoder for recon_node's subscriptions and the bag
reader of ``recon-ros replay``, so that a recording replayed offline is read as the node reads
it live.

:class:`FrameDecoder` decodes the colour image (raw in any ROS colour encoding, or compressed),
depth registered to it (raw or compressed; resized when only its resolution differs), and the
intrinsics of the camera model: scaled when the CameraInfo describes another resolution of the
same aspect, the images undistorted when it carries distortion. A session keeps one image size.
What cannot become a frame raises :class:`FrameSkip`, whose ``reason`` names the skip counter.
"""
from __future__ import annotations

from typing import Any, Optional

import cv2
import numpy as np

from recon_ros.errors import DataFormatError, UserInputError
from recon_ros.geometry.camera import scale_K
from recon_ros.io import messages as M
from recon_ros.mapping.frame import Frame

DEPTH_LIKE_ENCODINGS = ("16UC1", "32FC1", "64FC1")
ASPECT_TOLERANCE = 0.01  # relative: a CameraInfo or depth image of another resolution, same aspect


class FrameSkip(DataFormatError):
    """Messages that give no frame; ``reason`` is the skip counter's name."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _same_aspect(w: int, h: int, w2: int, h2: int) -> bool:
    return h > 0 and h2 > 0 and abs((w2 / h2) / (w / h) - 1.0) <= ASPECT_TOLERANCE


class FrameDecoder:
    """See the module docstring. ``undistort``: remove plumb_bob / rational-polynomial
    distortion (K then describes the undistorted image); ``K``: intrinsics that replace the
    CameraInfo's. One owner (the node's worker, the bag reader's iterator): it keeps the
    session's image size and the undistortion maps."""

    def __init__(self, undistort: bool = True, K: Optional[np.ndarray] = None) -> None:
        self.undistort = undistort
        self.K_override = None if K is None else np.asarray(K, dtype=np.float64).reshape(3, 3)
        self.size: Optional[tuple[int, int]] = None
        self._maps: dict = {}

    def reset(self) -> None:
        """A new session: the next frame may have another size."""
        self.size = None

    def decode(self, image: Any, model: Optional[M.CameraModel] = None, depth: Any = None,
               index: int = -1) -> Frame:
        """A validated Frame of an image message (Image or CompressedImage), its camera model
        (from CameraInfo, or None) and a registered depth message (or None)."""
        rgb = self._colour(image)
        h, w = rgb.shape[:2]
        if self.size is None:
            self.size = (w, h)
        elif self.size != (w, h):
            raise FrameSkip("image_size_changed", f"image size changed from {self.size[0]}x{self.size[1]} "
                            f"to {w}x{h} mid-stream (a map has one image size: reset it to go on)")
        d = self._depth(depth, w, h) if depth is not None else None
        K = self.K_override
        if K is None and model is not None:
            K = model.K
            if model.width and model.height and (model.width, model.height) != (w, h):
                if not _same_aspect(w, h, model.width, model.height):
                    raise FrameSkip("camera_info_size_mismatch",
                                    f"camera_info is for {model.width}x{model.height} but the image is {w}x{h}; "
                                    f"remap the camera_info of this image stream")
                K = scale_K(K, w / model.width, h / model.height)
            elif self.undistort and model.has_distortion:
                rgb, d = self._undistorted(rgb, d, model)
        frame = Frame(stamp_ns=M.stamp_to_ns(image.header.stamp), rgb=rgb, K=None if K is None else K.copy(),
                      depth=d, frame_id=str(image.header.frame_id), index=index)
        try:
            return frame.validate()
        except UserInputError as exc:
            raise FrameSkip("invalid_frame", str(exc)) from None

    def _colour(self, msg: Any) -> np.ndarray:
        try:
            if hasattr(msg, "format"):  # sensor_msgs/CompressedImage
                return M.compressed_to_rgb(msg)
            if str(msg.encoding) in DEPTH_LIKE_ENCODINGS:
                raise DataFormatError(f"the colour image has encoding {msg.encoding}, which is a depth encoding: "
                                      f"remap 'image' to the colour topic and 'depth' to the depth topic")
            return M.image_to_rgb(msg)
        except DataFormatError as exc:
            raise FrameSkip("undecodable_image", str(exc)) from None

    def _depth(self, msg: Any, w: int, h: int) -> np.ndarray:
        try:
            if hasattr(msg, "format"):
                arr, enc = M.compressed_to_numpy(msg)
                depth = M.depth_to_metres(arr, enc)
            else:
                depth = M.image_to_depth(msg)
        except DataFormatError as exc:
            raise FrameSkip("undecodable_depth", str(exc)) from None
        if depth.shape != (h, w):
            dh, dw = depth.shape[:2]
            if not _same_aspect(w, h, dw, dh):
                raise FrameSkip("depth_size_mismatch", f"depth {dw}x{dh} for image {w}x{h}: depth must be "
                                f"registered to the colour image")
            depth = cv2.resize(depth, (w, h), interpolation=cv2.INTER_NEAREST)
        return depth

    def _undistorted(self, rgb: np.ndarray, depth: Optional[np.ndarray], model: M.CameraModel
                     ) -> tuple[np.ndarray, Optional[np.ndarray]]:
        h, w = rgb.shape[:2]
        key = (w, h, model.K.tobytes(), model.D.tobytes())
        if key not in self._maps:
            self._maps[key] = cv2.initUndistortRectifyMap(model.K, model.D, None, model.K, (w, h), cv2.CV_32FC1)
        m1, m2 = self._maps[key]
        rgb = cv2.remap(rgb, m1, m2, cv2.INTER_LINEAR)
        if depth is not None:
            depth = cv2.remap(depth, m1, m2, cv2.INTER_NEAREST)
        return rgb, depth
