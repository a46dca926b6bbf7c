"""ScanNet scenes as Frames, with ground-truth poses in ``Frame.extras['T_world_cam_gt']``.

Two layouts are recognised:

- the SensReader export: ``color/<i>.jpg``, ``depth/<i>.png``, ``pose/<i>.txt`` and
  ``intrinsic/intrinsic_color.txt`` + ``intrinsic/intrinsic_depth.txt``;
- ``sensor_data/frame-XXXXXX.color.jpg|.depth.png|.pose.txt`` with the same ``intrinsic/`` files
  (next to ``sensor_data/`` or inside it).

Intrinsics are 4x4 matrices whose top-left 3x3 is K; poses are 4x4 camera-to-world matrices
(some are ``-inf``/``nan`` where tracking failed: those frames are skipped and counted). Depth
PNGs are uint16 millimetres.

Colour (1296x968) and depth (640x480) differ in size. ``align='depth'`` (the default) resamples
the colour image onto the depth camera's pixel grid, so depth keeps its measured values and the
Frame's K is the depth intrinsics; ``align='color'`` resamples depth (nearest neighbour) onto the
colour grid and K is the colour intrinsics. Both use the two intrinsic matrices (the cameras share
their optical centre in the export), which reduces to a plain resize when the fields of view
agree.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator, Optional, Union

import cv2
import numpy as np

from recon_ros.errors import DataFormatError, UserInputError
from recon_ros.geometry.camera import scale_K
from recon_ros.io.sources import DEFAULT_EPOCH_NS, FrameSource, read_color, read_depth_png
from recon_ros.mapping.frame import Frame

logger = logging.getLogger(__name__)



def _scene_layout(p: Path) -> Optional[str]:
    if (p / "color").is_dir() and (p / "pose").is_dir():
        return "export"
    if (p / "sensor_data").is_dir() and any((p / "sensor_data").glob("frame-*.color.jpg")):
        return "sensor_data"
    return None


def is_scannet_dir(path: Union[str, os.PathLike]) -> bool:
    return _scene_layout(Path(path)) is not None


def read_matrix(path: Path, shape: tuple[int, int] = (4, 4)) -> np.ndarray:
    """A whitespace-separated matrix file (may contain inf / nan)."""
    try:
        vals = np.array(path.read_text().split(), dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise DataFormatError(f"cannot read a matrix from {path}: {exc}") from None
    if vals.size != shape[0] * shape[1]:
        raise DataFormatError(f"{path} holds {vals.size} numbers, expected a {shape[0]}x{shape[1]} matrix")
    return vals.reshape(shape)


def warp_to_grid(src: np.ndarray, K_src: np.ndarray, K_dst: np.ndarray, size_dst: tuple[int, int],
                 nearest: bool) -> np.ndarray:
    """Resample ``src`` (camera K_src) onto the pixel grid of a camera K_dst with the same centre.

    Pixel (u, v) of the destination looks along K_dst^-1 [u, v, 1], which is K_src K_dst^-1 [u, v, 1]
    in the source: an affine map for zero-skew intrinsics. Colour is area-filtered first when
    it shrinks by more than 1.5x; depth uses nearest neighbour (no mixing across edges).
    """
    K_src = np.asarray(K_src, dtype=np.float64)
    w, h = size_dst
    if not nearest:
        sx = w / src.shape[1]
        sy = h / src.shape[0]
        if sx < 1 / 1.5 and sy < 1 / 1.5:
            src = cv2.resize(src, (w, h), interpolation=cv2.INTER_AREA)
            K_src = scale_K(K_src, sx, sy)
    A = K_src @ np.linalg.inv(np.asarray(K_dst, dtype=np.float64))
    flags = (cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR) | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(src, A[:2, :], (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)


class ScanNetSource(FrameSource):
    """Frames of a ScanNet scene (see the module docstring for layouts and alignment)."""

    kind = "scannet"

    def __init__(self, path: Union[str, os.PathLike], *, align: str = "depth", fps: float = 30.0,
                 start_ns: int = DEFAULT_EPOCH_NS, require_depth: bool = True,
                 depth_scale: float = 1e-3, stride: int = 1, max_frames: Optional[int] = None) -> None:
        super().__init__(path, stride=stride, max_frames=max_frames)
        self.layout = _scene_layout(self.path)
        if self.layout is None:
            raise UserInputError(f"{self.path} is not a ScanNet scene: expected color/ depth/ pose/ "
                                 "intrinsic/ or sensor_data/frame-*.color.jpg")
        if align not in ("depth", "color"):
            raise UserInputError(f"align must be 'depth' or 'color', not {align!r}")
        if fps <= 0:
            raise UserInputError("fps must be positive")
        self.align = align
        self.period_ns = int(round(1e9 / fps))
        self.start_ns = int(start_ns)
        self.require_depth = require_depth
        self.depth_scale = depth_scale
        self.K_color, self.K_depth = self._intrinsics()
        self.ids = self._frame_ids()
        if not self.ids:
            raise DataFormatError(f"{self.path} contains no colour frames")

    def _intrinsics(self) -> tuple[np.ndarray, np.ndarray]:
        for d in (self.path / "intrinsic", self.path / "sensor_data" / "intrinsic", self.path / "sensor_data",
                  self.path):
            c, dep = d / "intrinsic_color.txt", d / "intrinsic_depth.txt"
            if c.is_file():
                Kc = read_matrix(c)[:3, :3]
                Kd = read_matrix(dep)[:3, :3] if dep.is_file() else None
                if Kd is None:
                    logger.warning("%s: no intrinsic_depth.txt; assuming depth uses the colour "
                                   "intrinsics scaled to its size", self.path)
                for K, name in ((Kc, "colour"), (Kd, "depth")):
                    if K is not None and (not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0):
                        raise DataFormatError(f"{d}: the {name} intrinsics are invalid")
                return Kc, Kd
        raise DataFormatError(f"{self.path}: missing intrinsic/intrinsic_color.txt (4x4 matrix)")

    def _paths(self, fid: str) -> tuple[Path, Path, Path]:
        if self.layout == "export":
            return (self.path / "color" / f"{fid}.jpg", self.path / "depth" / f"{fid}.png",
                    self.path / "pose" / f"{fid}.txt")
        d = self.path / "sensor_data"
        return d / f"frame-{fid}.color.jpg", d / f"frame-{fid}.depth.png", d / f"frame-{fid}.pose.txt"

    def _frame_ids(self) -> list[str]:
        if self.layout == "export":
            files = [f for f in (self.path / "color").iterdir() if f.suffix.lower() in (".jpg", ".png")]
            ids = [f.stem for f in files if f.stem.isdigit()]
        else:
            ids = [f.name[len("frame-"):-len(".color.jpg")]
                   for f in (self.path / "sensor_data").glob("frame-*.color.jpg")]
            ids = [i for i in ids if i.isdigit()]
        return sorted(ids, key=int)

    def _count_inputs(self) -> Optional[int]:
        return len(self.ids)

    def _frames(self) -> Iterator[Frame]:
        for i, fid in enumerate(self.ids):
            if not self._keep(i):
                continue
            cpath, dpath, ppath = self._paths(fid)
            if self.layout == "export" and not cpath.is_file():
                cpath = cpath.with_suffix(".png")
            if not ppath.is_file():
                self.skips.skip("missing_pose", str(ppath))
                continue
            try:
                T = read_matrix(ppath)
            except DataFormatError as exc:
                self.skips.skip("unreadable_pose", str(exc))
                continue
            if not np.all(np.isfinite(T)):
                self.skips.skip("invalid_pose", f"frame {fid} has a non-finite pose")
                continue
            rgb = read_color(cpath)
            if rgb is None:
                self.skips.skip("unreadable_color", str(cpath))
                continue
            depth = read_depth_png(dpath, self.depth_scale) if dpath.is_file() else None
            if depth is None and self.require_depth:
                self.skips.skip("missing_depth", str(dpath))
                continue
            rgb, depth, K = self._align(rgb, depth)
            frame = Frame(stamp_ns=self.start_ns + int(fid) * self.period_ns, rgb=rgb, K=K, depth=depth,
                          frame_id="camera_color_optical_frame")
            frame.extras["T_world_cam_gt"] = T
            frame.extras["source_id"] = fid
            yield frame

    def _align(self, rgb: np.ndarray, depth: Optional[np.ndarray]
               ) -> tuple[np.ndarray, Optional[np.ndarray], np.ndarray]:
        hc, wc = rgb.shape[:2]
        if depth is None:
            return rgb, None, self.K_color.copy()
        hd, wd = depth.shape
        Kd = self.K_depth if self.K_depth is not None else scale_K(self.K_color, wd / wc, hd / hc)
        if (hc, wc) == (hd, wd) and np.allclose(Kd, self.K_color):
            return rgb, depth, self.K_color.copy()
        if self.align == "depth":
            rgb = warp_to_grid(rgb, self.K_color, Kd, (wd, hd), nearest=False)
            return rgb, depth, Kd.copy()
        depth = warp_to_grid(depth, Kd, self.K_color, (wc, hc), nearest=True)
        return rgb, depth, self.K_color.copy()
