"""Pinhole cameras: intrinsics, back-projection, projection, and crop/resize bookkeeping.

Pixel convention: pixel (u, v) = (column, row), integer coordinates at pixel centres,
as in OpenCV. Camera frames follow REP-103 optical axes (x right, y down, z forward).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def make_K(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class PixelMap:
    """An axis-aligned crop + resize from an image to a model input.

    Pixel-centre coordinates are related by ``u_model + 0.5 = sx * (u_image + 0.5) + tx`` and
    ``v_model + 0.5 = sy * (v_image + 0.5) + ty``. ``image_size`` and ``model_size`` are (W, H).
    """

    sx: float
    sy: float
    tx: float
    ty: float
    image_size: tuple[int, int]
    model_size: tuple[int, int]

    @staticmethod
    def identity(width: int, height: int) -> "PixelMap":
        return PixelMap(1.0, 1.0, 0.0, 0.0, (width, height), (width, height))

    def to_model(self, uv: np.ndarray) -> np.ndarray:
        uv = np.asarray(uv, dtype=np.float64)
        return np.stack([self.sx * (uv[..., 0] + 0.5) + self.tx - 0.5,
                         self.sy * (uv[..., 1] + 0.5) + self.ty - 0.5], axis=-1)

    def to_image(self, uv: np.ndarray) -> np.ndarray:
        uv = np.asarray(uv, dtype=np.float64)
        return np.stack([(uv[..., 0] + 0.5 - self.tx) / self.sx - 0.5,
                         (uv[..., 1] + 0.5 - self.ty) / self.sy - 0.5], axis=-1)

    def K_to_model(self, K: np.ndarray) -> np.ndarray:
        """Intrinsics of the model input given the image intrinsics."""
        K = np.asarray(K, dtype=np.float64)
        out = K.copy()
        out[0, 0] = K[0, 0] * self.sx
        out[1, 1] = K[1, 1] * self.sy
        out[0, 1] = K[0, 1] * self.sx
        out[0, 2] = self.sx * (K[0, 2] + 0.5) + self.tx - 0.5
        out[1, 2] = self.sy * (K[1, 2] + 0.5) + self.ty - 0.5
        return out

    def K_to_image(self, K_model: np.ndarray) -> np.ndarray:
        """Intrinsics of the image given the model-input intrinsics."""
        K = np.asarray(K_model, dtype=np.float64)
        out = K.copy()
        out[0, 0] = K[0, 0] / self.sx
        out[1, 1] = K[1, 1] / self.sy
        out[0, 1] = K[0, 1] / self.sx
        out[0, 2] = (K[0, 2] + 0.5 - self.tx) / self.sx - 0.5
        out[1, 2] = (K[1, 2] + 0.5 - self.ty) / self.sy - 0.5
        return out


def scale_K(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Intrinsics after resizing an image by (sx, sy) (pixel-centre convention)."""
    return PixelMap(sx, sy, 0.0, 0.0, (0, 0), (0, 0)).K_to_model(K)


def pixel_grid(width: int, height: int) -> np.ndarray:
    """(H, W, 2) array of (u, v) pixel coordinates."""
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    return np.stack([u, v], axis=-1)


def backproject_depth(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pointmap (H, W, 3) float32 in the camera frame from a depth map (metres, z-depth).

    Invalid depth (0, negative or non-finite) gives NaN points.
    """
    depth = np.asarray(depth, dtype=np.float32)
    h, w = depth.shape
    K = np.asarray(K, dtype=np.float64)
    u = (np.arange(w, dtype=np.float32) - np.float32(K[0, 2])) / np.float32(K[0, 0])
    v = (np.arange(h, dtype=np.float32) - np.float32(K[1, 2])) / np.float32(K[1, 1])
    z = np.where(np.isfinite(depth) & (depth > 0), depth, np.nan).astype(np.float32)
    pts = np.empty((h, w, 3), dtype=np.float32)
    pts[..., 0] = u[None, :] * z
    pts[..., 1] = v[:, None] * z
    pts[..., 2] = z
    return pts


def project_points(pts_cam: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project camera-frame points (..., 3): returns (uv (..., 2), z (...))."""
    pts = np.asarray(pts_cam, dtype=np.float64)
    z = pts[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        x = pts[..., 0] / z
        y = pts[..., 1] / z
    K = np.asarray(K, dtype=np.float64)
    u = K[0, 0] * x + K[0, 1] * y + K[0, 2]
    v = K[1, 1] * y + K[1, 2]
    return np.stack([u, v], axis=-1), z
