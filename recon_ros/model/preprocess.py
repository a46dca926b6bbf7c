"""Image preprocessing of Spann3R's inference pipeline, and validation of model inputs.

Raw RGB (H x W x 3 uint8) -> centred crop to even size -> Lanczos resize so the image covers
the target -> centred crop to the target -> CHW float32 in [-1, 1]. The crop offsets come from
float32 principal-point arithmetic with round-half-to-even, as in the reference. The returned
:class:`~recon_ros.geometry.camera.PixelMap` maps model pixels back to image pixels using the
same bookkeeping (uniform scale about the image centre) the reference applies to intrinsics.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from recon_ros.errors import UserInputError
from recon_ros.geometry.camera import PixelMap


@dataclass
class Preprocessed:
    img: torch.Tensor  # [1, 3, H, W] float32 in [-1, 1]
    rgb: np.ndarray  # H x W x 3 uint8: the model-resolution colours
    pixel_map: PixelMap  # image pixels <-> model pixels
    true_shape: Tuple[int, int]  # (H, W) of the model input


def check_target_size(target_wh: Tuple[int, int], patch: int = 16) -> Tuple[int, int]:
    w, h = int(target_wh[0]), int(target_wh[1])
    if w <= 0 or h <= 0 or w % patch or h % patch:
        raise UserInputError(f"model input size {w}x{h} must be positive multiples of {patch}")
    if h > w:
        raise UserInputError(f"model input size {w}x{h} is portrait; Spann3R needs landscape or square inputs")
    return w, h


def validate_rgb(rgb: np.ndarray) -> np.ndarray:
    """Check a raw H x W x 3 uint8 RGB array; raise UserInputError saying what is wrong."""
    if not isinstance(rgb, np.ndarray):
        raise UserInputError(f"raw image must be a numpy array, got {type(rgb).__name__}")
    if rgb.ndim != 3:
        raise UserInputError(f"raw image must be H x W x 3 (RGB), got shape {rgb.shape}")
    if rgb.shape[2] != 3:
        hint = " (channel-first? pass H x W x 3)" if rgb.shape[0] == 3 else ""
        hint = hint or (" (RGBA? drop the alpha channel)" if rgb.shape[2] == 4 else "")
        raise UserInputError(f"raw image must have 3 channels in the last axis, got shape {rgb.shape}{hint}")
    if rgb.dtype != np.uint8:
        raise UserInputError(f"raw image must be uint8 RGB, got dtype {rgb.dtype}")
    if rgb.shape[0] < 2 or rgb.shape[1] < 2:
        raise UserInputError(f"raw image of shape {rgb.shape} is too small")
    return rgb


def _shift_principal(K: np.ndarray, scaling: float, offset: np.ndarray) -> np.ndarray:
    """Intrinsics of a resize by ``scaling`` followed by a crop starting at ``offset`` (float32 maths)."""
    out = K.copy()
    out[:2, 2] += 0.5
    out[:2, :] *= scaling
    out[:2, 2] -= offset
    out[:2, 2] -= 0.5
    return out


@dataclass(frozen=True)
class CropResize:
    """The reference's crop/resize geometry for one raw image size and target size."""

    left: int  # first crop (to an even size, centred on (W//2, H//2))
    top: int
    w1: int
    h1: int
    w2: int  # resized size (covers the target)
    h2: int
    l2: int  # second crop (to the target)
    t2: int
    tw: int
    th: int
    pixel_map: PixelMap


def crop_resize_geometry(h0: int, w0: int, target_wh: Tuple[int, int]) -> CropResize:
    """Crop/resize geometry of :func:`preprocess_rgb` (see module docstring), shared by the PIL
    and the torch paths."""
    tw, th = check_target_size(target_wh)
    # 1. crop centred on (W//2, H//2): drops the last row/column of odd sizes
    cx, cy = w0 // 2, h0 // 2
    hw, hh = min(cx, w0 - cx), min(cy, h0 - cy)
    left, top = cx - hw, cy - hh
    K = np.array([[1, 0, cx - left], [0, 1, cy - top], [0, 0, 1]], dtype=np.float32)
    w1, h1 = 2 * hw, 2 * hh
    # 2. resize so that the image covers the target
    res_in = np.array([w1, h1])
    scale = float(np.max(np.array([tw, th]) / res_in)) + 1e-8
    w2, h2 = (int(v) for v in np.floor(res_in * scale).astype(int))
    if w2 < tw or h2 < th:
        raise UserInputError(f"image {w0}x{h0} cannot be resized to cover {tw}x{th}")
    margin = res_in * scale - np.array([w2, h2])
    K = _shift_principal(K, scale, 0.5 * margin)
    # 3. centred crop to the target, offsets from float32 principal points, round half to even
    K_crop = _shift_principal(K, 1, 0.5 * (np.array([w2, h2]) - np.array([tw, th])))
    l2, t2 = (int(v) for v in np.round(K[:2, 2] - K_crop[:2, 2]).astype(np.int32))
    pm = PixelMap(sx=scale, sy=scale,
                  tx=-0.5 * (w1 * scale - w2) - l2 - left * scale,
                  ty=-0.5 * (h1 * scale - h2) - t2 - top * scale,
                  image_size=(w0, h0), model_size=(tw, th))
    return CropResize(left, top, w1, h1, w2, h2, l2, t2, tw, th, pm)


def _normalise(rgb_chw: torch.Tensor) -> torch.Tensor:
    """uint8-valued CHW colours -> float32 in [-1, 1], as the reference: (x / 255 - 0.5) / 0.5."""
    return (rgb_chw.float().div(255) - 0.5) / 0.5


def preprocess_rgb(rgb: np.ndarray, target_wh: Tuple[int, int] = (224, 224)) -> Preprocessed:
    """Preprocess one raw RGB frame for the model (see module docstring)."""
    rgb = validate_rgb(rgb)
    g = crop_resize_geometry(rgb.shape[0], rgb.shape[1], target_wh)
    img = Image.fromarray(np.ascontiguousarray(rgb[g.top:g.top + g.h1, g.left:g.left + g.w1]))
    img = img.resize((g.w2, g.h2), resample=Image.Resampling.LANCZOS)
    img = img.crop((g.l2, g.t2, g.l2 + g.tw, g.t2 + g.th))
    out_rgb = np.asarray(img, dtype=np.uint8).copy()
    tensor = _normalise(torch.from_numpy(out_rgb).permute(2, 0, 1))
    return Preprocessed(img=tensor[None].contiguous(), rgb=out_rgb, pixel_map=g.pixel_map, true_shape=(g.th, g.tw))


def preprocess_rgb_torch(rgb: torch.Tensor, g: CropResize) -> Tuple[torch.Tensor, torch.Tensor]:
    """The same crop/resize on a raw H x W x 3 uint8 tensor on any device, with torch.

    Resampling is antialiased bicubic (``F.interpolate(..., antialias=True)``), not PIL's
    Lanczos, so the model input differs by a few grey levels at edges (measured in
    docs/model.md); the colours are rounded to uint8 like PIL's output. Returns the model input
    [1,3,H,W] float32 in [-1, 1] and the uint8 colours [H,W,3], both on ``rgb.device``.
    """
    x = rgb[g.top:g.top + g.h1, g.left:g.left + g.w1].permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(g.h2, g.w2), mode="bicubic", align_corners=False, antialias=True)
    x = x[:, :, g.t2:g.t2 + g.th, g.l2:g.l2 + g.tw].round().clamp(0, 255)
    return _normalise(x), x[0].permute(1, 2, 0).to(torch.uint8)


def img_to_rgb(img: torch.Tensor) -> np.ndarray:
    """[1,3,H,W] or [3,H,W] model input in [-1,1] -> H x W x 3 uint8 colours."""
    x = img.detach().float().reshape(-1, *img.shape[-3:])[0]
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 0).cpu().numpy()


def validate_model_input(img, expected_hw: Tuple[int, int] | None = None, patch: int = 16) -> torch.Tensor:
    """Check a preprocessed input (torch or numpy, [3,H,W] or [1,3,H,W] float32 in [-1,1]).

    Returns a [1,3,H,W] float32 tensor; raises UserInputError naming what is wrong.
    """
    if isinstance(img, np.ndarray):
        if img.dtype != np.float32:
            raise UserInputError(f"model input must be float32, got {img.dtype} "
                                 "(raw uint8 images must be H x W x 3 RGB)")
        img = torch.from_numpy(img)
    if not isinstance(img, torch.Tensor):
        raise UserInputError(f"model input must be a torch tensor or numpy array, got {type(img).__name__}")
    if img.dtype != torch.float32:
        raise UserInputError(f"model input must be float32 in [-1, 1], got {img.dtype}")
    if img.ndim == 3:
        img = img[None]
    if img.ndim != 4 or img.shape[0] != 1:
        raise UserInputError(f"model input must be [3,H,W] or [1,3,H,W], got shape {tuple(img.shape)}")
    if img.shape[1] != 3:
        hint = " (channels last? permute to [3,H,W])" if img.shape[-1] == 3 else ""
        raise UserInputError(f"model input must have 3 channels first, got shape {tuple(img.shape)}{hint}")
    h, w = int(img.shape[2]), int(img.shape[3])
    if h % patch or w % patch or h == 0 or w == 0:
        raise UserInputError(f"model input size {w}x{h} must be multiples of {patch}; "
                             "preprocess raw images with preprocess_rgb")
    if h > w:
        raise UserInputError(f"model input {w}x{h} is portrait; Spann3R needs landscape or square inputs")
    if expected_hw is not None and (h, w) != tuple(expected_hw):
        raise UserInputError(f"model input size changed from {expected_hw[1]}x{expected_hw[0]} to {w}x{h} "
                             "within one sequence; call reset() to start a new sequence")
    if img.device.type == "cpu":
        lo_t, hi_t = torch.aminmax(img)
        lo, hi = float(lo_t), float(hi_t)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise UserInputError("model input contains NaN or infinite values")
        if lo < -1.001 or hi > 1.001:
            raise UserInputError(f"model input values span [{lo:.3g}, {hi:.3g}] but must lie in [-1, 1] "
                                 "(use preprocess_rgb on raw uint8 images)")
    return img
