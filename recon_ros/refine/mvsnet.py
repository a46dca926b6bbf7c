"""Optional learned MVS path: the MVSNet architecture (Yao et al., ECCV 2018) with module names
that load checkpoints of the public PyTorch re-implementation (``MVSNet_pytorch``).

Implemented from the paper and the architecture notes of the refine design (sections 2.1-2.3):
a shared 2D feature network (32 channels at 1/4 resolution), differentiable homography warping
of source features onto fronto-parallel planes of the reference, a variance cost volume, a 3D
U-Net regulariser, soft-argmin depth regression and a 4-plane photometric confidence. Images are
RGB in [0, 1], sides multiples of 32, plane counts multiples of 8; ``grid_sample`` runs with
``align_corners=True`` and feature pixel i stands for image pixel 4i.

The checkpoint is user-supplied; nothing is downloaded. Its quality indoors is not established
(it was trained on DTU objects); the weight-free plane sweep stays the default.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence, Union

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from recon_ros.errors import CheckpointError
from recon_ros.geometry.transforms import invert_T
from recon_ros.mapping.frame import Keyframe

log = logging.getLogger(__name__)


class ConvBnReLU(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, pad: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class ConvBnReLU3D(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, pad: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, k, stride=stride, padding=pad, bias=False)
        self.bn = nn.BatchNorm3d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _up3d(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose3d(cin, cout, 3, stride=2, padding=1, output_padding=1, bias=False),
                         nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


class FeatureNet(nn.Module):
    """2D features: 32 channels at 1/4 resolution."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = ConvBnReLU(3, 8)
        self.conv1 = ConvBnReLU(8, 8)
        self.conv2 = ConvBnReLU(8, 16, 5, 2, 2)
        self.conv3 = ConvBnReLU(16, 16)
        self.conv4 = ConvBnReLU(16, 16)
        self.conv5 = ConvBnReLU(16, 32, 5, 2, 2)
        self.conv6 = ConvBnReLU(32, 32)
        self.feature = nn.Conv2d(32, 32, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.conv0(x))
        x = self.conv4(self.conv3(self.conv2(x)))
        return self.feature(self.conv6(self.conv5(x)))


class CostRegNet(nn.Module):
    """3D U-Net over the variance volume (three stride-2 levels with additive skips)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = ConvBnReLU3D(32, 8)
        self.conv1 = ConvBnReLU3D(8, 16, stride=2)
        self.conv2 = ConvBnReLU3D(16, 16)
        self.conv3 = ConvBnReLU3D(16, 32, stride=2)
        self.conv4 = ConvBnReLU3D(32, 32)
        self.conv5 = ConvBnReLU3D(32, 64, stride=2)
        self.conv6 = ConvBnReLU3D(64, 64)
        self.conv7 = _up3d(64, 32)
        self.conv9 = _up3d(32, 16)
        self.conv11 = _up3d(16, 8)
        self.prob = nn.Conv3d(8, 1, 3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c0 = self.conv0(x)
        c2 = self.conv2(self.conv1(c0))
        c4 = self.conv4(self.conv3(c2))
        x = self.conv6(self.conv5(c4))
        x = c4 + self.conv7(x)
        x = c2 + self.conv9(x)
        x = c0 + self.conv11(x)
        return self.prob(x)


def homography_warp(src_fea: torch.Tensor, src_proj: torch.Tensor, ref_proj: torch.Tensor,
                    depths: torch.Tensor) -> torch.Tensor:
    """Warp source features (B, C, H, W) onto the reference's planes ``depths`` (B, D): (B, C, D, H, W)."""
    B, C, H, W = src_fea.shape
    D = depths.shape[1]
    rel = src_proj @ torch.linalg.inv(ref_proj)
    R = rel[:, :3, :3]
    t = rel[:, :3, 3:4]
    y, x = torch.meshgrid(torch.arange(H, dtype=src_fea.dtype, device=src_fea.device),
                          torch.arange(W, dtype=src_fea.dtype, device=src_fea.device), indexing="ij")
    pix = torch.stack([x.reshape(-1), y.reshape(-1), torch.ones(H * W, dtype=src_fea.dtype,
                                                                 device=src_fea.device)], 0)  # (3, HW)
    rp = R @ pix[None]  # (B, 3, HW)
    pts = rp[:, :, None, :] * depths[:, None, :, None] + t[:, :, :, None]  # (B, 3, D, HW)
    z = pts[:, 2]
    z = torch.where(z.abs() < 1e-6, torch.full_like(z, 1e-6), z)
    gx = pts[:, 0] / z / ((W - 1) / 2.0) - 1.0
    gy = pts[:, 1] / z / ((H - 1) / 2.0) - 1.0
    grid = torch.stack([gx, gy], dim=-1).reshape(B, D * H, W, 2)
    out = F.grid_sample(src_fea, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.reshape(B, C, D, H, W)


class MVSNet(nn.Module):
    """Depth (B, H/4, W/4) and photometric confidence from images (B, V, 3, H, W), projection
    matrices (B, V, 4, 4) (top 3x4 = K/4 [R | t], world to camera) and plane depths (B, D)."""

    def __init__(self) -> None:
        super().__init__()
        self.feature = FeatureNet()
        self.cost_regularization = CostRegNet()

    def forward(self, imgs: torch.Tensor, projs: torch.Tensor, depths: torch.Tensor) -> dict:
        B, V, _, H, W = imgs.shape
        if H % 32 or W % 32:
            raise ValueError(f"MVSNet needs image sides that are multiples of 32, got {H} x {W}")
        D = depths.shape[1]
        if D % 8:
            raise ValueError(f"MVSNet needs a plane count that is a multiple of 8, got {D}")
        feats = [self.feature(imgs[:, v]) for v in range(V)]
        ref = feats[0][:, :, None].expand(-1, -1, D, -1, -1)
        vsum = ref.clone()
        vsq = ref ** 2
        for v in range(1, V):
            warped = homography_warp(feats[v], projs[:, v], projs[:, 0], depths)
            vsum = vsum + warped
            vsq = vsq + warped ** 2
        variance = vsq / V - (vsum / V) ** 2
        score = self.cost_regularization(variance)[:, 0]  # (B, D, h, w)
        prob = torch.softmax(score, dim=1)
        depth = torch.sum(prob * depths[:, :, None, None], dim=1)
        sum4 = 4.0 * F.avg_pool3d(F.pad(prob[:, None], (0, 0, 0, 0, 1, 2)), (4, 1, 1), stride=1)[:, 0]
        idx = torch.sum(prob * torch.arange(D, device=prob.device, dtype=prob.dtype)[None, :, None, None], dim=1)
        idx = idx.long().clamp(0, D - 1)
        conf = torch.gather(sum4, 1, idx[:, None])[:, 0]
        return {"depth": depth, "photometric_confidence": conf}


def load_mvsnet(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> MVSNet:
    """Build :class:`MVSNet` and load an ``MVSNet_pytorch`` checkpoint strictly (eval mode).

    Accepts the training format ``{"epoch", "model", "optimizer"}`` or a bare state dict, with or
    without the ``module.`` prefix of ``nn.DataParallel``. Raises CheckpointError naming what
    does not match.
    """
    from recon_ros.model.checkpoint import extract_state_dict, load_state_dict_strict, read_checkpoint

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"MVSNet checkpoint not found: {path} (set mvs.checkpoint to an MVSNet_pytorch .ckpt)")
    state = extract_state_dict(read_checkpoint(path), f"MVSNet checkpoint {path}")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    dropped = [k for k in state if k.startswith("refine_network.")]
    if dropped:
        log.info("ignoring %d refine_network parameters (the refinement network is not used)", len(dropped))
        state = {k: v for k, v in state.items() if not k.startswith("refine_network.")}
    model = MVSNet()
    load_state_dict_strict(model, state, f"{path} (MVSNet architecture)")
    return model.to(device).eval()


def projection_matrix(K_quarter: np.ndarray, T_world_cam: np.ndarray) -> np.ndarray:
    """4x4 projection: top 3x4 = K/4 [R | t] of the world-to-camera transform, bottom (0, 0, 0, 1)."""
    T_cw = invert_T(np.asarray(T_world_cam, np.float64))
    P = np.eye(4)
    P[:3, :4] = np.asarray(K_quarter, np.float64) @ T_cw[:3, :4]
    return P


def _resize32(kf: Keyframe, max_side: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    H, W = kf.rgb.shape[:2]
    s = min(1.0, max_side / max(H, W))
    Hn = max(32, int(H * s) // 32 * 32)
    Wn = max(32, int(W * s) // 32 * 32)
    img = cv2.resize(kf.rgb, (Wn, Hn), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    sx, sy = Wn / W, Hn / H
    K = np.asarray(kf.K_image, np.float64).copy()
    K[0] *= sx
    K[1] *= sy
    K[0, 2] = sx * (kf.K_image[0, 2] + 0.5) - 0.5
    K[1, 2] = sy * (kf.K_image[1, 2] + 0.5) - 0.5
    return img, K, sx, sy


def learned_sweep(model: MVSNet, ref: Keyframe, sources: Sequence[Keyframe], T_ref: np.ndarray,
                  T_src: Sequence[np.ndarray], device: torch.device, planes: int = 96, max_side: int = 640,
                  min_confidence: float = 0.8):
    """Run MVSNet for ``ref`` and return a :class:`~recon_ros.refine.mvs.SweepResult` on its pointmap grid.

    Planes: fronto-parallel, uniform in depth over the 2nd-98th percentile of the prior depth
    widened by 10 %. Photometric mask: confidence > ``min_confidence``.
    """
    from recon_ros.refine.mvs import SweepResult

    h, w = ref.points_cam.shape[:2]
    d0 = ref.depth
    ok = np.isfinite(d0) & (d0 > 0)
    if not ok.any() or not sources:
        nan = np.full((h, w), np.nan, np.float32)
        return SweepResult(nan, nan.copy(), np.zeros((h, w), bool), np.zeros((h, w), np.float32))
    lo, hi = np.percentile(d0[ok], [2, 98])
    lo, hi = lo / 1.1, hi * 1.1
    depths = torch.linspace(float(lo), float(hi), planes, device=device)[None]
    imgs, projs, scale = [], [], None
    shape = None
    for kf, T in zip([ref, *sources], [T_ref, *T_src]):
        img, K, sx, sy = _resize32(kf, max_side)
        if shape is None:
            shape, scale = img.shape[:2], (sx, sy)
        elif img.shape[:2] != shape:
            img = cv2.resize(img, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
            K = K.copy()
            K[0] *= shape[1] / img.shape[1]
            K[1] *= shape[0] / img.shape[0]
        Kq = K.copy()
        Kq[:2] /= 4.0
        imgs.append(torch.from_numpy(img).permute(2, 0, 1))
        projs.append(torch.from_numpy(projection_matrix(Kq, T)).float())
    with torch.no_grad():
        out = model(torch.stack(imgs)[None].to(device), torch.stack(projs)[None].to(device), depths)
    dq = out["depth"][0]
    cq = out["photometric_confidence"][0]
    # Reference pointmap grid -> image pixel -> resized pixel -> feature pixel (pixel 4i = feature i).
    uu, vv = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    uv = ref.pixel_map.to_image(np.stack([uu, vv], -1))
    fx = (scale[0] * (uv[..., 0] + 0.5) - 0.5) / 4.0
    fy = (scale[1] * (uv[..., 1] + 0.5) - 0.5) / 4.0
    hq, wq = dq.shape
    grid = torch.from_numpy(np.stack([fx / ((wq - 1) / 2.0) - 1.0, fy / ((hq - 1) / 2.0) - 1.0], -1)
                            ).float().to(device)[None]
    d = F.grid_sample(dq[None, None], grid, mode="bilinear", align_corners=True)[0, 0].cpu().numpy()
    c = F.grid_sample(cq[None, None], grid, mode="bilinear", align_corners=True)[0, 0].cpu().numpy()
    good = (c > min_confidence) & ok
    return SweepResult(np.where(good, d, np.nan).astype(np.float32), np.full((h, w), np.nan, np.float32),
                       good, c.astype(np.float32), {"learned": 1.0})
