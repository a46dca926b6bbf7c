"""ARKitScenes raw video folders as Frames (ground truth in ``Frame.extras['T_world_cam_gt']``).

Layout of one video folder ``<video_id>/``:

- ``lowres_wide/<video_id>_<ts>.png``: RGB, 256x192;
- ``lowres_depth/<video_id>_<ts>.png``: uint16 millimetres, registered to ``lowres_wide``;
- ``lowres_wide_intrinsics/<video_id>_<ts>.pincam``: one line ``w h fx fy cx cy``;
- ``lowres_wide.traj``: one line per pose ``ts rx ry rz tx ty tz`` (axis-angle in radians,
  metres).

The trajectory gives the **world-to-camera** transform (the dataset's own loader names the
rotation ``r_w_to_p`` and inverts the matrix to obtain the camera pose), so it is inverted here to
get ``T_world_cam`` (camera-to-world). Its camera axes are those of the image (x right, y down,
z forward), the REP-103 optical convention. Each image is matched to the trajectory sample nearest
in time; an image with none within ``traj_tolerance_s`` is skipped and counted.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

from recon_ros.errors import DataFormatError, UserInputError
from recon_ros.geometry.camera import make_K
from recon_ros.geometry.transforms import invert_T, make_T, rotvec_to_matrix
from recon_ros.io.sources import DEFAULT_EPOCH_NS, FrameSource, read_color, read_depth_png
from recon_ros.io.trajectory import text_to_ns
from recon_ros.mapping.frame import Frame

logger = logging.getLogger(__name__)


def is_arkitscenes_dir(path: Union[str, os.PathLike]) -> bool:
    p = Path(path)
    return (p / "lowres_wide").is_dir() and (p / "lowres_wide.traj").is_file()


def read_traj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``lowres_wide.traj`` -> (stamps_ns (N,), T_world_cam (N, 4, 4))."""
    stamps, vals = [], []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        tok = line.split()
        if not tok or tok[0].startswith("#"):
            continue
        if len(tok) != 7:
            raise DataFormatError(f"{path}:{lineno}: expected 7 numbers (ts rx ry rz tx ty tz), got {len(tok)}")
        try:
            stamps.append(text_to_ns(tok[0]))
            vals.append([float(x) for x in tok[1:]])
        except ValueError:
            raise DataFormatError(f"{path}:{lineno}: not a number in {line.strip()!r}") from None
    if not vals:
        raise DataFormatError(f"{path} contains no poses")
    v = np.asarray(vals)
    R = rotvec_to_matrix(v[:, :3])
    T_cam_world = np.stack([make_T(R[i], v[i, 3:]) for i in range(len(v))])
    order = np.argsort(np.asarray(stamps), kind="stable")
    return np.asarray(stamps, dtype=np.int64)[order], invert_T(T_cam_world)[order]


def read_pincam(path: Path) -> tuple[int, int, np.ndarray]:
    """``w h fx fy cx cy`` -> (w, h, K)."""
    try:
        v = [float(x) for x in path.read_text().split()]
    except (OSError, ValueError) as exc:
        raise DataFormatError(f"cannot read intrinsics {path}: {exc}") from None
    if len(v) != 6 or v[2] <= 0 or v[3] <= 0:
        raise DataFormatError(f"{path}: expected 'w h fx fy cx cy' with positive focal lengths")
    return int(v[0]), int(v[1]), make_K(v[2], v[3], v[4], v[5])


class ARKitScenesSource(FrameSource):
    """Frames of one ARKitScenes raw video folder (see the module docstring)."""

    kind = "arkitscenes"

    def __init__(self, path: Union[str, os.PathLike], *, traj_tolerance_s: float = 0.05,
                 require_depth: bool = True, epoch_ns: int = DEFAULT_EPOCH_NS, stride: int = 1,
                 max_frames: Optional[int] = None) -> None:
        super().__init__(path, stride=stride, max_frames=max_frames)
        if not is_arkitscenes_dir(self.path):
            raise UserInputError(f"{self.path} is not an ARKitScenes video folder: expected lowres_wide/ "
                                 "and lowres_wide.traj")
        self.tol_ns = int(round(traj_tolerance_s * 1e9))
        self.require_depth = require_depth
        self.epoch_ns = int(epoch_ns)
        self.traj_stamps, self.traj_poses = read_traj(self.path / "lowres_wide.traj")
        self.images = self._list_images()
        if not self.images:
            raise DataFormatError(f"{self.path / 'lowres_wide'} contains no <video>_<timestamp>.png images")

    def _list_images(self) -> list[tuple[int, str, Path]]:
        out = []
        for f in (self.path / "lowres_wide").glob("*.png"):
            ts = f.stem.rpartition("_")[2]
            try:
                out.append((text_to_ns(ts), f.stem, f))
            except ValueError:
                self.skips.skip("unparsable_name", f.name)
        out.sort(key=lambda x: x[0])
        return out

    def _count_inputs(self) -> Optional[int]:
        return len(self.images)

    def _pose_at(self, stamp_ns: int) -> Optional[np.ndarray]:
        s = self.traj_stamps
        j = int(np.searchsorted(s, stamp_ns))
        cands = [k for k in (j - 1, j) if 0 <= k < len(s)]
        k = min(cands, key=lambda k: abs(int(s[k]) - stamp_ns))
        return self.traj_poses[k] if abs(int(s[k]) - stamp_ns) <= self.tol_ns else None

    def _frames(self) -> Iterator[Frame]:
        for i, (ts, stem, cpath) in enumerate(self.images):
            if not self._keep(i):
                continue
            T = self._pose_at(ts)
            if T is None:
                self.skips.skip("no_pose_near_image", f"{cpath.name}: no trajectory sample within "
                                f"{self.tol_ns * 1e-9:.3f} s")
                continue
            ipath = self.path / "lowres_wide_intrinsics" / f"{stem}.pincam"
            if not ipath.is_file():
                self.skips.skip("missing_intrinsics", str(ipath))
                continue
            try:
                w, h, K = read_pincam(ipath)
            except DataFormatError as exc:
                self.skips.skip("bad_intrinsics", str(exc))
                continue
            rgb = read_color(cpath)
            if rgb is None:
                self.skips.skip("unreadable_color", str(cpath))
                continue
            if (rgb.shape[1], rgb.shape[0]) != (w, h):
                self.skips.skip("intrinsics_size_mismatch", f"{cpath.name} is {rgb.shape[1]}x{rgb.shape[0]}, "
                                f"its intrinsics say {w}x{h}")
                continue
            dpath = self.path / "lowres_depth" / f"{stem}.png"
            depth = read_depth_png(dpath) if dpath.is_file() else None
            if depth is None and self.require_depth:
                self.skips.skip("missing_depth", str(dpath))
                continue
            if depth is not None and depth.shape != rgb.shape[:2]:
                self.skips.skip("depth_size_mismatch", f"{dpath.name} is {depth.shape[1]}x{depth.shape[0]}")
                continue
            frame = Frame(stamp_ns=self.epoch_ns + ts, rgb=rgb, K=K, depth=depth,
                          frame_id="camera_color_optical_frame")
            frame.extras["T_world_cam_gt"] = T.copy()
            frame.extras["source_id"] = stem
            yield frame
