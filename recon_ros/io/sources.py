"""Frame sources: anything that yields :class:`~recon_ros.mapping.frame.Frame` objects.

``open_source(path, **opts)`` picks the reader from what ``path`` is:

- a rosbag2 directory (with ``metadata.yaml``), a ``.mcap`` or ``.db3`` file -> bag reader
- a ScanNet scene (``color/`` + ``depth/`` + ``pose/`` or ``sensor_data/frame-*``) -> ScanNet
- an ARKitScenes video folder (``lowres_wide/`` + ``lowres_wide.traj``) -> ARKitScenes
- a folder of images -> image folder; a video file -> video

Every source counts what it skipped (``source.skips``) and logs the first few of each reason.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import cv2
import numpy as np

from recon_ros.errors import UserInputError
from recon_ros.geometry.camera import scale_K
from recon_ros.mapping.frame import Frame

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
BAG_SUFFIXES = (".mcap", ".db3")
DEFAULT_EPOCH_NS = 1_700_000_000 * 1_000_000_000  # base for sources without wall-clock stamps


@dataclass
class SkipCounter:
    """Counts skipped inputs by reason; logs the first ``log_first`` of each reason as warnings."""

    source: str = ""
    log_first: int = 3
    counts: Counter = field(default_factory=Counter)

    def skip(self, reason: str, detail: str = "") -> None:
        self.counts[reason] += 1
        n = self.counts[reason]
        if n <= self.log_first:
            logger.warning("%s: skipped (%s)%s%s", self.source or "input", reason,
                           f": {detail}" if detail else "",
                           " (further ones are counted silently)" if n == self.log_first else "")
        else:
            logger.debug("%s: skipped (%s): %s", self.source, reason, detail)

    @property
    def total(self) -> int:
        return int(sum(self.counts.values()))

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts)

    def summary(self) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items())) or "none"


class FrameSource:
    """Base class: iterate to get Frames; ``skips`` counts what was dropped and why.

    ``stride`` keeps every n-th input frame, ``max_frames`` stops after that many output frames.
    Subclasses implement :meth:`_frames` and apply ``_keep(i)`` before decoding when they can.
    """

    kind = "source"

    def __init__(self, path: Union[str, os.PathLike], *, stride: int = 1,
                 max_frames: Optional[int] = None) -> None:
        if int(stride) < 1:
            raise UserInputError(f"stride must be >= 1, got {stride}")
        if max_frames is not None and int(max_frames) < 0:
            raise UserInputError(f"max_frames must be >= 0, got {max_frames}")
        self.path = Path(path)
        self.stride = int(stride)
        self.max_frames = None if max_frames is None else int(max_frames)
        self.skips = SkipCounter(source=f"{self.kind} {self.path.name}")

    def _frames(self) -> Iterator[Frame]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _keep(self, i: int) -> bool:
        return i % self.stride == 0

    def __len__(self) -> int:
        """Number of frames expected (before skips), or 0 when unknown."""
        n = self._count_inputs()
        if n is None:
            return 0
        n = (n + self.stride - 1) // self.stride
        return n if self.max_frames is None else min(n, self.max_frames)

    def _count_inputs(self) -> Optional[int]:
        return None

    def __iter__(self) -> Iterator[Frame]:
        produced = 0
        if self.max_frames == 0:
            return
        for frame in self._frames():
            frame.index = produced if frame.index < 0 else frame.index
            yield frame
            produced += 1
            if self.max_frames is not None and produced >= self.max_frames:
                break

    def close(self) -> None:
        pass

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def describe(self) -> str:
        return f"{self.kind} {self.path}"


# --------------------------------------------------------------------------- frame utilities

def parse_size(text: Union[str, tuple, None]) -> Optional[tuple[int, int]]:
    """'640x480' (or (640, 480)) -> (width, height)."""
    if text is None:
        return None
    if isinstance(text, (tuple, list)):
        w, h = text
    else:
        parts = str(text).lower().replace(",", "x").split("x")
        if len(parts) != 2:
            raise UserInputError(f"a size is WIDTHxHEIGHT such as 640x480, got {text!r}")
        try:
            w, h = int(parts[0]), int(parts[1])
        except ValueError:
            raise UserInputError(f"a size is WIDTHxHEIGHT such as 640x480, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise UserInputError(f"size must be positive, got {w}x{h}")
    return int(w), int(h)


def resize_frame(frame: Frame, size: tuple[int, int]) -> Frame:
    """Resize a frame to (width, height): colour with area/linear filtering, depth and mask with
    nearest neighbour, K rescaled (pixel-centre convention)."""
    w, h = size
    if (frame.width, frame.height) == (w, h):
        return frame
    sx, sy = w / frame.width, h / frame.height
    interp = cv2.INTER_AREA if sx < 1 and sy < 1 else cv2.INTER_LINEAR
    rgb = cv2.resize(frame.rgb, (w, h), interpolation=interp)
    depth = None if frame.depth is None else cv2.resize(frame.depth, (w, h), interpolation=cv2.INTER_NEAREST)
    mask = None if frame.mask is None else cv2.resize(frame.mask.astype(np.uint8), (w, h),
                                                      interpolation=cv2.INTER_NEAREST).astype(bool)
    K = None if frame.K is None else scale_K(frame.K, sx, sy)
    return Frame(stamp_ns=frame.stamp_ns, rgb=rgb, K=K, depth=depth, mask=mask,
                 T_odom_cam=frame.T_odom_cam, frame_id=frame.frame_id, index=frame.index,
                 extras=dict(frame.extras))


def read_color(path: Path) -> Optional[np.ndarray]:
    """An image file as H x W x 3 uint8 RGB, or None if it cannot be decoded."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        return None
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_depth_png(path: Path, scale: float = 1e-3) -> Optional[np.ndarray]:
    """A 16-bit depth PNG (millimetres by default) as float32 metres (0 = invalid)."""
    d = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if d is None or d.ndim != 2:
        return None
    return d.astype(np.float32) * np.float32(scale)


# --------------------------------------------------------------------------- detection

def detect_source_kind(path: Union[str, os.PathLike]) -> str:
    """'bag', 'scannet', 'arkitscenes', 'images' or 'video' for ``path``; UserInputError if none."""
    p = Path(path)
    if not p.exists():
        raise UserInputError(f"{p} does not exist")
    if p.is_file():
        suf = p.suffix.lower()
        if suf in BAG_SUFFIXES:
            return "bag"
        if suf in VIDEO_SUFFIXES:
            return "video"
        if suf == ".yaml" and p.name == "metadata.yaml":
            return "bag"
        raise UserInputError(f"{p} is neither a bag (.mcap, .db3) nor a video ({', '.join(VIDEO_SUFFIXES)})")
    if (p / "metadata.yaml").is_file() or any(p.glob("*.mcap")) or any(p.glob("*.db3")):
        return "bag"
    from recon_ros.io.arkitscenes import is_arkitscenes_dir
    from recon_ros.io.scannet import is_scannet_dir

    if is_scannet_dir(p):
        return "scannet"
    if is_arkitscenes_dir(p):
        return "arkitscenes"
    if any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.iterdir() if f.is_file()):
        return "images"
    raise UserInputError(
        f"cannot tell what {p} is: expected a rosbag2 (metadata.yaml / .mcap / .db3), a ScanNet scene "
        "(color/ depth/ pose/ or sensor_data/), an ARKitScenes folder (lowres_wide/ + lowres_wide.traj), "
        "a folder of images or a video file")


def open_source(path: Union[str, os.PathLike], kind: Optional[str] = None, **opts: Any) -> FrameSource:
    """Open a frame source; ``kind`` overrides detection. ``opts`` go to the reader's constructor."""
    kind = kind or detect_source_kind(path)
    if kind == "bag":
        from recon_ros.io.bag_reader import BagFrameSource
        return BagFrameSource(path, **opts)
    if kind == "scannet":
        from recon_ros.io.scannet import ScanNetSource
        return ScanNetSource(path, **opts)
    if kind == "arkitscenes":
        from recon_ros.io.arkitscenes import ARKitScenesSource
        return ARKitScenesSource(path, **opts)
    if kind == "images":
        from recon_ros.io.images import ImageFolderSource
        return ImageFolderSource(path, **opts)
    if kind == "video":
        from recon_ros.io.images import VideoSource
        return VideoSource(path, **opts)
    raise UserInputError(f"unknown source kind {kind!r}; choose bag, scannet, arkitscenes, images or video")
