"""TSDF integration against its plain definition: the block culling, the projection onto the
padded image and the dense sum updates of ``TSDFVolume.integrate`` give the voxel sums that
projecting every voxel of every allocated block one by one (in float64, no culling) gives - also
for voxels at or behind the camera plane - and removing any frame, not only the last one,
leaves the sums of the other frames."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from mapping_scene import BoxRoom, camera, loop_trajectory

from recon_ros.geometry.transforms import make_T, rotvec_to_matrix, sim3_decompose
from recon_ros.mapping.tsdf import BLOCK, TSDFVolume

W, H = 96, 72
VOXEL = 0.05
NOISE_POWER = 2.0
SUMS = ("weight", "tsdf_sum", "count", "red_sum", "green_sum", "blue_sum")


@dataclass
class Frame:
    depth: np.ndarray
    rgb: np.ndarray
    weights: np.ndarray
    counts: np.ndarray
    trunc: np.ndarray
    K: np.ndarray
    T: np.ndarray
    tick: int = 0


def _frame(room: BoxRoom, T: np.ndarray, rng: np.random.Generator) -> Frame:
    K = camera(W, H)
    rgb, depth = room.render(K, T, W, H)
    depth = depth + rng.normal(0.0, 0.005, depth.shape).astype(np.float32)
    depth[rng.random(depth.shape) < 0.05] = 0.0  # holes
    conf = rng.uniform(0.2, 1.5, depth.shape).astype(np.float32)
    trunc = np.clip(3 * 0.01 * depth * depth, 2 * VOXEL, 8 * VOXEL).astype(np.float32)
    return Frame(depth, rgb, conf, np.minimum(conf, 1.0), trunc, K, T)


def _fuse(vol: TSDFVolume, f: Frame, sign: float = 1.0) -> int:
    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(vol.device)
    return vol.integrate(t(f.depth), f.K, f.T, t(f.trunc), colors=t(f.rgb), weights=t(f.weights),
                         counts=t(f.counts), noise_power=NOISE_POWER, sign=sign, fused_at=f.tick)


def reference_sums(vol: TSDFVolume, frames: list[Frame]) -> dict[str, np.ndarray]:
    """The voxel sums of ``frames`` over the volume's blocks by the definition: every voxel of
    every block that existed when the frame was fused, projected to its nearest pixel; a voxel
    in front of the reading or at most ``trunc`` behind it adds weight ``w / min(z, d)^4``,
    ``weight * min(sdf / trunc, 1)``, the count and ``weight * colour``."""
    coords = vol.coords[:vol.n].cpu().numpy().astype(np.float64)
    born = vol.born[:vol.n].cpu().numpy()
    r = np.arange(BLOCK)
    lz, ly, lx = np.meshgrid(r, r, r, indexing="ij")
    local = np.stack([lx.ravel(), ly.ravel(), lz.ravel()], 1)
    centres = (coords[:, None, :] * BLOCK + local[None] + 0.5) * VOXEL
    out = {name: np.zeros((vol.n, BLOCK ** 3)) for name in SUMS}
    for f in frames:
        s, R, t = sim3_decompose(f.T)
        cam = (centres - t) @ R / s
        z = cam[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = np.floor(f.K[0, 0] * cam[..., 0] / z + f.K[0, 2] + 0.5)
            v = np.floor(f.K[1, 1] * cam[..., 1] / z + f.K[1, 2] + 0.5)
        ok = (z > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H) & (born <= f.tick)[:, None]
        ui, vi = np.where(ok, u, 0).astype(int), np.where(ok, v, 0).astype(int)
        d, tr = f.depth[vi, ui].astype(np.float64), f.trunc[vi, ui].astype(np.float64)
        ok &= (d > 0) & (f.weights[vi, ui] > 0) & (d - z >= -tr)
        w = np.where(ok, f.weights[vi, ui] / np.maximum(np.minimum(z, d), 1e-3) ** (2 * NOISE_POWER), 0.0)
        out["weight"] += w
        out["tsdf_sum"] += w * np.minimum((d - z) / tr, 1.0)
        out["count"] += np.where(ok, f.counts[vi, ui], 0.0)
        for c, name in enumerate(("red_sum", "green_sum", "blue_sum")):
            out[name] += w * f.rgb[vi, ui, c]
    return out


def _mismatch(vol: TSDFVolume, ref: dict[str, np.ndarray]) -> dict[str, float]:
    """Per sum: the share of the updated voxels whose value differs from the reference (a voxel
    centre exactly on a pixel border may round to the other pixel in float32)."""
    updated = max(int((ref["weight"] != 0).sum()), 1)
    out = {}
    for name in SUMS:
        got = getattr(vol, name)[:vol.n].cpu().numpy().astype(np.float64)
        scale = np.abs(ref[name]).max()
        bad = ~np.isclose(got, ref[name], rtol=1e-4, atol=1e-6 * scale)
        out[name] = float(bad.sum()) / updated
    return out


def _loop_frames(n: int, seed: int = 0) -> list[Frame]:
    room, rng = BoxRoom(), np.random.default_rng(seed)
    frames = [_frame(room, T, rng) for T in loop_trajectory(n)]
    # one frame under a Sim(3) pose: the depth is in camera units, world = s R cam + t
    f = frames[-1]
    s = 2.0
    frames[-1] = Frame(f.depth / s, f.rgb, f.weights, f.counts, f.trunc / s, f.K,
                       make_T(f.T[:3, :3], f.T[:3, 3], s))
    return frames


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_integration_equals_the_per_voxel_definition(device):
    """Also on CUDA (``-m gpu``): the same tensor code is the GPU path."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.fail("marked gpu but CUDA is not available")
    frames = _loop_frames(8)
    vol = TSDFVolume(VOXEL, device=device)
    for f in frames:
        f.tick = _fuse(vol, f)
    ref = reference_sums(vol, frames)
    assert (ref["weight"] > 0).sum() > 50_000  # the frames updated a real part of the volume
    assert (ref["weight"] < 1e-3 * ref["weight"].max()).sum() > 0  # far readings: tiny weights
    bad = _mismatch(vol, ref)
    assert max(bad.values()) < 1e-3, bad


def test_voxels_at_and_behind_the_camera_plane():
    """A camera inside allocated blocks (close to a wall, then stepping into the blocks of the
    first views): voxels behind it or on its plane get nothing, the ones in front are carved."""
    room, rng = BoxRoom(), np.random.default_rng(1)
    # (slightly turned, off the voxel grid: no voxel centre projects exactly onto a pixel border)
    R = rotvec_to_matrix(np.array([0.031, -0.047, 0.013]))
    poses = [make_T(R, np.array([x, 0.2113, 2.4071])) for x in (-0.6037, -0.2011, 0.2093, 0.6029)]
    poses += [make_T(R, np.array([x, 0.2517, z])) for x, z in ((-0.5033, 2.9071), (0.1047, 2.8513), (0.4969, 2.9437))]
    frames = [_frame(room, T, rng) for T in poses]
    vol = TSDFVolume(VOXEL)
    for f in frames:
        f.tick = _fuse(vol, f)
    ref = reference_sums(vol, frames)
    centres_z = (vol.coords[:vol.n, 2].numpy()[:, None] * BLOCK + np.arange(BLOCK).repeat(64)[None] + 0.5) * VOXEL
    behind = centres_z < 2.85  # behind the cameras of the last frames (looking along +z)
    assert behind.sum() > 1000 and (ref["weight"][behind] > 0).sum() > 100
    bad = _mismatch(vol, ref)
    assert max(bad.values()) < 1e-3, bad


def test_removing_any_frame_leaves_the_sums_of_the_others():
    frames = _loop_frames(6, seed=2)
    vol = TSDFVolume(VOXEL)
    for f in frames:
        f.tick = _fuse(vol, f)
    _fuse(vol, frames[2], sign=-1.0)  # a frame fused before others, not the last one
    _fuse(vol, frames[4], sign=-1.0)
    rest = [f for i, f in enumerate(frames) if i not in (2, 4)]
    ref = reference_sums(vol, rest)
    bad = _mismatch(vol, ref)
    assert max(bad.values()) < 1e-3, bad
    # voxels only the removed frames reached are empty again
    only_removed = (ref["weight"] == 0) & (reference_sums(vol, [frames[2], frames[4]])["weight"] > 0)
    assert only_removed.sum() > 100
    assert np.all(vol.weight[:vol.n].numpy()[only_removed] == 0)
    assert np.all(vol.tsdf[:vol.n].numpy()[only_removed] == 1.0)
