"""Plain image folders and video files as Frames (no depth, no ground truth).

Intrinsics are unknown unless given: pass ``K`` (3x3) or ``fov_deg`` (horizontal field of view,
principal point at the centre); otherwise ``Frame.K`` is None and the frontend estimates focal
length itself. Stamps are ``start_ns + i / fps`` for folders and the container's time for videos.
"""
from __future__ import annotations

import logging
import math
import os
import re
from typing import Iterator, Optional, Union

import cv2
import numpy as np

from recon_ros.errors import DataFormatError, UserInputError
from recon_ros.geometry.camera import make_K
from recon_ros.io.sources import (DEFAULT_EPOCH_NS, IMAGE_SUFFIXES, FrameSource, read_color)
from recon_ros.mapping.frame import Frame

logger = logging.getLogger(__name__)


def natural_key(name: str) -> list:
    """Sort key treating digit runs as numbers (img2 < img10)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _intrinsics(K: Optional[np.ndarray], fov_deg: Optional[float], w: int, h: int) -> Optional[np.ndarray]:
    if K is not None:
        return np.asarray(K, dtype=np.float64).reshape(3, 3).copy()
    if fov_deg is not None:
        if not 0 < fov_deg < 180:
            raise UserInputError(f"field of view must be in (0, 180) degrees, got {fov_deg}")
        f = 0.5 * w / math.tan(math.radians(fov_deg) / 2)
        return make_K(f, f, (w - 1) / 2.0, (h - 1) / 2.0)
    return None


class ImageFolderSource(FrameSource):
    """Frames from the images of one folder, in natural name order."""

    kind = "images"

    def __init__(self, path: Union[str, os.PathLike], *, fps: float = 30.0, K: Optional[np.ndarray] = None,
                 fov_deg: Optional[float] = None, start_ns: int = DEFAULT_EPOCH_NS, stride: int = 1,
                 max_frames: Optional[int] = None) -> None:
        super().__init__(path, stride=stride, max_frames=max_frames)
        if not self.path.is_dir():
            raise UserInputError(f"{self.path} is not a folder")
        if fps <= 0:
            raise UserInputError("fps must be positive")
        self.files = sorted((f for f in self.path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES),
                            key=lambda f: natural_key(f.name))
        if not self.files:
            raise UserInputError(f"{self.path} contains no images ({', '.join(IMAGE_SUFFIXES)})")
        self.period_ns = int(round(1e9 / fps))
        self.start_ns = int(start_ns)
        self.K, self.fov_deg = K, fov_deg

    def _count_inputs(self) -> Optional[int]:
        return len(self.files)

    def _frames(self) -> Iterator[Frame]:
        size = None
        for i, f in enumerate(self.files):
            if not self._keep(i):
                continue
            rgb = read_color(f)
            if rgb is None:
                self.skips.skip("unreadable_image", str(f))
                continue
            if size is None:
                size = rgb.shape[:2]
            elif rgb.shape[:2] != size:
                self.skips.skip("image_size_changed", f"{f.name} is {rgb.shape[1]}x{rgb.shape[0]}")
                continue
            frame = Frame(stamp_ns=self.start_ns + i * self.period_ns, rgb=rgb,
                          K=_intrinsics(self.K, self.fov_deg, rgb.shape[1], rgb.shape[0]),
                          frame_id="camera_color_optical_frame")
            frame.extras["source_id"] = f.name
            yield frame


class VideoSource(FrameSource):
    """Frames decoded from a video file with OpenCV."""

    kind = "video"

    def __init__(self, path: Union[str, os.PathLike], *, K: Optional[np.ndarray] = None,
                 fov_deg: Optional[float] = None, start_ns: int = DEFAULT_EPOCH_NS, stride: int = 1,
                 max_frames: Optional[int] = None) -> None:
        super().__init__(path, stride=stride, max_frames=max_frames)
        if not self.path.is_file():
            raise UserInputError(f"video {self.path} does not exist")
        cap = cv2.VideoCapture(str(self.path))
        ok = cap.isOpened()
        self._n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if ok else 0
        self.fps = float(cap.get(cv2.CAP_PROP_FPS)) if ok else 0.0
        cap.release()
        if not ok:
            raise DataFormatError(f"OpenCV cannot open the video {self.path}")
        self.start_ns = int(start_ns)
        self.K, self.fov_deg = K, fov_deg

    def _count_inputs(self) -> Optional[int]:
        return self._n or None

    def _frames(self) -> Iterator[Frame]:
        cap = cv2.VideoCapture(str(self.path))
        period = 1e9 / self.fps if self.fps > 0 else 1e9 / 30.0
        try:
            i = 0
            while True:
                if not self._keep(i):
                    if not cap.grab():
                        break
                    i += 1
                    continue
                ok, bgr = cap.read()
                if not ok:
                    break
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                frame = Frame(stamp_ns=self.start_ns + int(round(i * period)), rgb=rgb,
                              K=_intrinsics(self.K, self.fov_deg, rgb.shape[1], rgb.shape[0]),
                              frame_id="camera_color_optical_frame")
                frame.extras["source_id"] = i
                yield frame
                i += 1
        finally:
            cap.release()
