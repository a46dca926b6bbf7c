"""A sparse-block truncated signed-distance (TSDF) volume in torch.

Voxels live in dense ``B^3`` blocks (``B = 8``) allocated only where depth was measured, so
memory follows the observed surface, not the bounding box of the room. Blocks are found by
their packed integer coordinates (a sorted key array searched with ``torch.searchsorted``).

Integration is projective and voxel-centric (Curless & Levoy 1996; KinectFusion; Niessner et
al. 2013 for the block hashing): every voxel of the blocks a frame can see is projected into
the depth image; its signed distance to the measured surface along the viewing direction,
``sdf = d(u, v) - z``, truncated to ``[-trunc, trunc]`` and divided by ``trunc``, enters a
weighted running average with the pixel's weight. Voxels farther than ``trunc`` behind the
surface are not updated (occluded). Voxels in front of the surface get the truncated value
``+1`` whatever their distance: this is free-space carving. Carving reaches every allocated
block in front of the measured surface (not only the blocks next to it), found by projecting
all block centres.

Carving alone does not remove a moving object: averaging ``+1`` readings into a voxel that was
seen as surface only moves its zero crossing back (to where the surface readings' TSDF equals
minus the ratio of free to surface readings), and the crossing disappears only once the free
readings outweigh the surface ones; the part of an object seen last is never seen through at
all. So every voxel also counts its *violations*: views whose nearest reading around the
voxel's projection (a window as wide as a voxel at the frame's nearest reading, so that a
voxel at a silhouette is not seen through by the background next to it) lies ``violation_truncations`` or more truncation distances behind it.
Occupied voxels (mean TSDF < 0) whose violations win the free-space vote
(:func:`recon_ros.mapping.transience.free_space_vote`, the vote of the refiner's transient
rejection) are transient, and the surface within ``radius`` voxels of them is left out of
extraction (:meth:`TSDFVolume.transient_voxels`): an object moves as a whole.

Every voxel stores the sums ``(w, w * tsdf, w * r, w * g, w * b, count, violations)``; the weighted mean
TSDF and colour are divided out when a surface is extracted (:attr:`TSDFVolume.tsdf`,
:attr:`TSDFVolume.color`). Every update is an addition to these sums that reads no voxel
state, and a frame integrated with weight ``-w`` is removed again (de-integration). The
loop-closure code relies on this (see :mod:`recon_ros.mapping.surface_map`). Weights are never
clamped, so removing a frame is exact up to floating point, in any order; a voxel whose weight
falls to (near) zero is reset to empty.

Cost per frame (docs/mapping.md, "Integration cost"): one projected point per block selects
the visible blocks; their voxels are projected onto the depth image padded by one empty pixel
(no bounds tests), read their reading from per-pixel planes with one gather, and each sum is
added to the blocks' rows with one ``index_add_``: a few passes over the voxels of the visible
blocks, all plain tensor operations, so the same code runs on CUDA.

Why hand-written instead of Open3D's ``VoxelBlockGrid``: it runs on the model's torch device
(CPU or CUDA) with no further dependency, supports de-integration and carving of free-space
blocks, and meets the project's fusion budget (docs/mapping.md has the numbers).

Surface products: zero-crossing points with TSDF-gradient normals and colours
(:meth:`TSDFVolume.extract_points`) and a triangle mesh (:meth:`TSDFVolume.extract_mesh`,
naive surface nets: one vertex per cell that the surface crosses, at the mean of its edge
crossings, and two triangles per crossed voxel edge - no lookup tables, watertight across
block borders).

Every voxel also keeps an observation count (readings weighted by confidence up to 1). Only
voxels whose count is at least ``min_weight`` take part in surface extraction (the
minimum-weight rule): a surface seen once or twice, by noisy frames, is not emitted. The count
is kept apart from the averaging weight because the noise-model weight of a far reading is
tiny (1 / sigma^2): a rule on the summed weight would hide far walls seen many times.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from recon_ros.geometry.transforms import sim3_decompose
from recon_ros.mapping.transience import free_space_vote

log = logging.getLogger(__name__)

BLOCK = 8  # voxels per block edge
VPB = BLOCK ** 3
_BITS = 21
_OFF = 1 << (_BITS - 1)
_LIMIT = _OFF - 1
_EMPTY_W = 1e-6  # weights below this count as "never observed"
_COLOR_SUMS = ("red_sum", "green_sum", "blue_sum")  # sums of w * channel, one plane each
_ARRAYS = ("keys", "coords", "tsdf_sum", "weight", "count", "free", "last_seen", "born") + _COLOR_SUMS
_TILE = 8  # occlusion culling: tile size (pixels) ...
_DIL = 2  # ... and dilation (tiles)
_NEAR_Z = 1e-6  # voxels nearer to the camera plane are not projected
_MAX_FOOTPRINT = 15  # pixels: largest window of the nearest-surface test of violations


def pack_keys(ijk: torch.Tensor) -> torch.Tensor:
    """int64 keys of integer coordinates (N, 3) in [-2^20, 2^20)."""
    ijk = ijk.to(torch.int64) + _OFF
    return (ijk[:, 0] << (2 * _BITS)) | (ijk[:, 1] << _BITS) | ijk[:, 2]


def unpack_keys(keys: torch.Tensor) -> torch.Tensor:
    mask = (1 << _BITS) - 1
    return torch.stack([(keys >> (2 * _BITS)) & mask, (keys >> _BITS) & mask, keys & mask], 1) - _OFF


def _nearest_surface(depth: torch.Tensor, radius: int) -> torch.Tensor:
    """(H, W) smallest valid depth around each pixel (0 where none is), over at least
    ``radius`` pixels on every side: the minimum over tiles of ``radius`` pixels, then over the
    3x3 tiles around the pixel's tile (at most 2 * radius + radius - 1 pixels away; a
    sliding-window minimum as wide costs several times more on the CPU)."""
    H, W = depth.shape
    d = depth.masked_fill(depth <= 0, math.inf)
    if radius > 1:
        d = -torch.nn.functional.max_pool2d(-d[None, None], radius, stride=radius, ceil_mode=True)[0, 0]
    # 3x3 minimum as two 1-D minima of shifted views (several times faster than a pooling)
    p = torch.nn.functional.pad(d[None], (1, 1, 1, 1), value=math.inf)[0]
    rows = torch.minimum(torch.minimum(p[:, :-2], p[:, 1:-1]), p[:, 2:])
    near = torch.minimum(torch.minimum(rows[:-2], rows[1:-1]), rows[2:])
    if radius > 1:
        near = near.repeat_interleave(radius, 0)[:H].repeat_interleave(radius, 1)[:, :W]
    return near.masked_fill_(torch.isinf(near), 0.0)


def _footprint_radius(depth: torch.Tensor, focal: float, voxel_cam: float) -> int:
    """Pixels that half a voxel diagonal covers at the frame's nearest reading (1 to
    _MAX_FOOTPRINT): the window in which a voxel's projection may fall."""
    sample = depth[::4, ::4]
    sample = sample[sample > 0]
    if sample.numel() == 0:
        return 1
    r = focal * voxel_cam * math.sqrt(3.0) / 2.0 / max(float(sample.min()), 1e-6)
    return int(min(_MAX_FOOTPRINT, max(1, math.ceil(r))))


def _mean(total: torch.Tensor, weight: torch.Tensor, empty: float) -> torch.Tensor:
    """Weighted mean ``total / weight``; ``empty`` where the weight is (near) zero."""
    ok = weight > _EMPTY_W
    return torch.where(ok, total / torch.where(ok, weight, torch.ones_like(weight)),
                       torch.full_like(total, empty))


@dataclass
class TransientRule:
    """Which voxels leave the surface as transient (see :func:`free_space_vote`): occupied
    voxels whose violations reach ``min_violations`` and exceed ``vote_ratio`` of their
    readings, grown by ``radius`` voxels (a cube)."""

    min_violations: float = 1.0
    vote_ratio: float = 0.1
    radius: int = 3


@dataclass
class VolumeStats:
    blocks: int
    voxels_observed: int
    bytes: int


class TSDFVolume:
    """Sparse-block TSDF with colour (see the module docstring)."""

    def __init__(self, voxel_size: float, device: str | torch.device = "cpu",
                 min_weight: float = 2.0, initial_blocks: int = 1024,
                 violation_truncations: float = 1.0,
                 transients: Optional[TransientRule] = TransientRule()) -> None:
        if not voxel_size > 0:
            raise ValueError(f"voxel size must be > 0, got {voxel_size}")
        if not violation_truncations >= 1.0:
            raise ValueError(f"violation_truncations must be >= 1, got {violation_truncations}")
        self.voxel = float(voxel_size)
        self.device = torch.device(device)
        self.min_weight = float(min_weight)
        self.violation_truncations = float(violation_truncations)
        self.transients = transients  # None: every surface is emitted
        self._initial = max(16, int(initial_blocks))
        self.clear()
        lz, ly, lx = torch.meshgrid(*(torch.arange(BLOCK, device=self.device),) * 3, indexing="ij")
        # local voxel offsets, x fastest: index = x + B*y + B*B*z
        self._local = torch.stack([lx.reshape(-1), ly.reshape(-1), lz.reshape(-1)], 1)

    # ------------------------------------------------------------------ storage
    def clear(self) -> None:
        cap, dev = self._initial, self.device
        self.n = 0
        self.keys = torch.empty(cap, dtype=torch.int64, device=dev)
        self.coords = torch.empty((cap, 3), dtype=torch.int64, device=dev)
        self.tsdf_sum = torch.empty((cap, VPB), dtype=torch.float32, device=dev)  # sum of w * tsdf
        self.weight = torch.empty((cap, VPB), dtype=torch.float32, device=dev)
        self.count = torch.empty((cap, VPB), dtype=torch.float32, device=dev)
        self.free = torch.empty((cap, VPB), dtype=torch.float32, device=dev)  # violations
        for name in _COLOR_SUMS:
            setattr(self, name, torch.empty((cap, VPB), dtype=torch.float32, device=dev))
        self.last_seen = torch.empty(cap, dtype=torch.int64, device=dev)
        self.born = torch.empty(cap, dtype=torch.int64, device=dev)
        self._sorted: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        self.tick = 0

    @property
    def nbytes(self) -> int:
        """Memory of the allocated blocks (not of the spare capacity)."""
        return int(self.n * (VPB * (4 + 4 + 4 + 4 + 12) + 8 * 6))

    @property
    def tsdf(self) -> torch.Tensor:
        """(n, 512) weighted mean TSDF of every voxel of the allocated blocks (1 = unobserved)."""
        return _mean(self.tsdf_sum[:self.n], self.weight[:self.n], 1.0)

    @property
    def color(self) -> torch.Tensor:
        """(n, 512, 3) weighted mean colour of every voxel (0 = unobserved)."""
        return self._color_of(torch.arange(self.n, device=self.device))

    def _color_of(self, idx: torch.Tensor) -> torch.Tensor:
        """(len(idx), 512, 3) weighted mean colour of the blocks ``idx``."""
        total = torch.stack([getattr(self, name)[idx] for name in _COLOR_SUMS], -1)
        return _mean(total, self.weight[idx][..., None], 0.0)

    def stats(self) -> VolumeStats:
        w = self.weight[:self.n]
        return VolumeStats(blocks=self.n, voxels_observed=int((w > _EMPTY_W).sum()), bytes=self.nbytes)

    def _grow(self, need: int) -> None:
        cap = self.keys.shape[0]
        if need <= cap:
            return
        new = max(need, cap * 2)
        for name in _ARRAYS:
            old = getattr(self, name)
            buf = torch.empty((new,) + tuple(old.shape[1:]), dtype=old.dtype, device=self.device)
            buf[:self.n] = old[:self.n]
            setattr(self, name, buf)

    def _index(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._sorted is None:
            sk, order = torch.sort(self.keys[:self.n])
            self._sorted = (sk, order)
        return self._sorted

    def lookup(self, keys: torch.Tensor) -> torch.Tensor:
        """Block indices of ``keys`` (-1 where not allocated)."""
        if self.n == 0 or keys.numel() == 0:
            return torch.full(keys.shape, -1, dtype=torch.int64, device=self.device)
        sk, order = self._index()
        pos = torch.searchsorted(sk, keys).clamp_(max=self.n - 1)
        hit = sk[pos] == keys
        return torch.where(hit, order[pos], torch.full_like(pos, -1))

    def allocate(self, block_ijk: torch.Tensor) -> torch.Tensor:
        """Indices of the blocks at integer block coordinates (N, 3), allocating missing ones."""
        ok = (block_ijk.abs() <= _LIMIT // BLOCK).all(1)
        block_ijk = block_ijk[ok]
        keys = torch.unique(pack_keys(block_ijk))
        idx = self.lookup(keys)
        new = keys[idx < 0]
        if new.numel():
            m = new.numel()
            self._grow(self.n + m)
            sl = slice(self.n, self.n + m)
            self.keys[sl] = new
            self.coords[sl] = unpack_keys(new)
            self.tsdf_sum[sl] = 0.0
            self.weight[sl] = 0.0
            self.count[sl] = 0.0
            self.free[sl] = 0.0
            for name in _COLOR_SUMS:
                getattr(self, name)[sl] = 0.0
            self.last_seen[sl] = self.tick
            self.born[sl] = self.tick
            idx[idx < 0] = torch.arange(self.n, self.n + m, device=self.device)
            self.n += m
            self._sorted = None
        return idx

    def snapshot(self) -> "TSDFVolume":
        """An independent copy of the allocated blocks (for extracting surfaces on another
        thread while this volume goes on fusing)."""
        out = TSDFVolume.__new__(TSDFVolume)
        out.__dict__.update({k: v for k, v in self.__dict__.items() if k not in _ARRAYS})
        for name in _ARRAYS:
            setattr(out, name, getattr(self, name)[:self.n].clone())
        out._sorted = None
        return out

    def block_arrays(self, idx: Optional[torch.Tensor] = None) -> dict[str, np.ndarray]:
        """The content of blocks ``idx`` (default: all) as numpy arrays: coords (M, 3), mean
        tsdf, weight, count and free-space violations (M, 512), mean colour (M, 512, 3) uint8,
        voxel size, block size. :meth:`insert_blocks` reads it back."""
        idx = torch.arange(self.n, device=self.device) if idx is None else idx.to(self.device)
        w = self.weight[idx]
        return {"coords": self.coords[idx].cpu().numpy(),
                "tsdf": _mean(self.tsdf_sum[idx], w, 1.0).cpu().numpy(),
                "weight": w.cpu().numpy(), "count": self.count[idx].cpu().numpy(),
                "free": self.free[idx].cpu().numpy(),
                "color": self._color_of(idx).round().clamp(0, 255).to(torch.uint8).cpu().numpy(),
                "voxel_size": np.float64(self.voxel), "block": np.int64(BLOCK)}

    def insert_blocks(self, arrays: dict[str, np.ndarray]) -> None:
        """Add blocks :meth:`block_arrays` returned (their voxels replace any there; blocks
        saved without ``free`` get no violations)."""
        coords = torch.as_tensor(np.asarray(arrays["coords"], dtype=np.int64), device=self.device)
        if coords.numel() == 0:
            return
        self.allocate(coords)
        idx = self.lookup(pack_keys(coords))
        f32 = lambda name: torch.as_tensor(np.asarray(arrays[name]), device=self.device).to(torch.float32)  # noqa: E731
        w = f32("weight")
        self.weight[idx] = w
        self.count[idx] = f32("count")
        self.free[idx] = f32("free") if "free" in arrays else 0.0
        self.tsdf_sum[idx] = f32("tsdf") * w
        color = f32("color")
        for c, name in enumerate(_COLOR_SUMS):
            getattr(self, name)[idx] = color[..., c] * w
        self.last_seen[idx] = self.tick

    def remove_blocks(self, idx: torch.Tensor) -> dict[str, np.ndarray]:
        """Drop blocks (by index) and return their content (:meth:`block_arrays`, for saving)."""
        idx = torch.unique(idx.to(self.device))
        out = self.block_arrays(idx)
        keep = torch.ones(self.n, dtype=torch.bool, device=self.device)
        keep[idx] = False
        kept = int(keep.sum())
        for name in _ARRAYS:
            arr = getattr(self, name)
            arr[:kept] = arr[:self.n][keep].clone()
        self.n = kept
        self._sorted = None
        return out

    # ------------------------------------------------------------------ integration
    def integrate(self, depth: torch.Tensor, K: np.ndarray, T_world_cam: np.ndarray,
                  trunc: torch.Tensor | float, colors: Optional[torch.Tensor] = None,
                  weights: Optional[torch.Tensor] = None, counts: Optional[torch.Tensor] = None,
                  noise_power: float = 0.0, sign: float = 1.0, fused_at: Optional[int] = None,
                  allocate: bool = True) -> int:
        """Fuse one depth image (H, W metres in camera units, <= 0 invalid) seen from
        ``T_world_cam`` (rigid or Sim(3): world = s R cam + t) with intrinsics ``K``.

        ``trunc`` is the truncation distance in camera units, per pixel (H, W) or one value;
        ``weights`` (H, W) are per-pixel confidences (0 = ignore); a reading updates a voxel at
        depth z with weight ``confidence / min(z, d)^(2 * noise_power)``, the inverse variance of
        a depth sensor whose noise grows as depth^noise_power, taken at the voxel (a free-space
        update in front of a far reading is as certain as a reading at the voxel's depth, not
        as uncertain as the far reading). ``counts`` (H, W)
        what each reading adds to the observation count that the minimum-weight rule reads
        (default 1), ``colors`` (H, W, 3) float or uint8.
        ``sign=-1`` removes a frame integrated before with the same arguments; ``fused_at`` is
        the tick that integration returned, so that blocks allocated after it (which never
        received the frame) are left alone - removal is then exact.
        Returns the volume's tick of this integration (the number of integrations so far).
        """
        dev = self.device
        s, R, t = sim3_decompose(np.asarray(T_world_cam, dtype=np.float64))
        if not torch.is_tensor(trunc):
            trunc = torch.full_like(depth, float(trunc))
        if weights is None:
            weights = (depth > 0).to(torch.float32)
        else:
            weights = torch.where(depth > 0, weights, torch.zeros_like(weights))
            depth = torch.where(weights > 0, depth, torch.zeros_like(depth))
        Rt = torch.as_tensor(R, dtype=torch.float32, device=dev)
        tt = torch.as_tensor(t, dtype=torch.float32, device=dev)
        fx, fy, cx, cy = (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
        if sign > 0:
            self.tick += 1
            if allocate:
                self._allocate_from_depth(depth, weights, trunc, fx, fy, cx, cy, s, Rt, tt)
        if self.n == 0:
            return self.tick
        blocks, near = self._visible_blocks(depth, trunc, fx, fy, cx, cy, s, Rt, tt,
                                            fused_at if sign < 0 else None)
        if blocks.numel() == 0:
            return self.tick
        pix, z = self._project(blocks, depth, fx, fy, cx, cy, s, Rt, tt, near)
        # --- the reading under every voxel, from per-pixel planes of the padded image (weight
        # and count are 0 on the border and where there is no reading: those voxels add 0)
        if counts is None:
            counts = (weights > 0).to(torch.float32)
        radius = _footprint_radius(depth, max(fx, fy), self.voxel / s)
        planes = [depth, trunc.reciprocal(), weights, counts, _nearest_surface(depth, radius)]
        if colors is not None:
            planes += [colors[..., 0], colors[..., 1], colors[..., 2]]
        rows = self._padded_planes(planes).index_select(1, pix).view(len(planes), -1, VPB)
        d, w_i, n_i = rows[0], rows[2], rows[3]
        if noise_power:
            zz = torch.minimum(z, d).clamp_(min=1e-3)
            zz = zz.mul_(zz).square_() if noise_power == 2.0 else zz.pow_(2.0 * noise_power)
            w_i.div_(zz)
        tsdf_i = d.sub_(z).mul_(rows[1])  # sdf / trunc
        # voxels farther than trunc behind the reading are occluded: not updated
        seen = torch.ge(tsdf_i, -1.0, out=torch.empty_like(tsdf_i))  # 1.0 / 0.0 (a float mask
        w_i.mul_(seen)  # multiplies at about twice the speed of a bool one)
        n_i.mul_(seen)
        # a view sees through the voxel (a violation, counted apart for the transient vote of
        # free_space_vote) when the nearest reading of the pixels around its projection (a
        # window at least as wide as a voxel at the frame's nearest reading, at least 3x3) lies
        # violation_truncations or more behind it: a voxel at an object's silhouette, whose
        # own pixel may show the background, is not seen through
        f_i = rows[4].sub_(z).mul_(rows[1])
        f_i = torch.ge(f_i, self.violation_truncations, out=torch.empty_like(f_i)).mul_(n_i)
        tsdf_i.clamp_(max=1.0)  # free space: +1
        if sign < 0:
            w_i.neg_()
            n_i.neg_()
            f_i.neg_()
        # --- every update is an addition to the voxel sums (dense rows of the visible blocks),
        # so a removal (negative weight) is exact and no voxel state is read
        sums = [(self.weight, w_i), (self.tsdf_sum, tsdf_i.mul_(w_i)), (self.count, n_i), (self.free, f_i)]
        if colors is not None:
            sums += [(getattr(self, name), rows[5 + c].mul_(w_i)) for c, name in enumerate(_COLOR_SUMS)]
        for arr, add in sums:
            arr.index_add_(0, blocks, add)
        if sign < 0 or self._min_weight(depth, weights, noise_power) <= _EMPTY_W:
            # a voxel whose weight falls to (near) zero is reset to empty
            empty = self.weight.index_select(0, blocks) <= _EMPTY_W
            for name in ("weight", "tsdf_sum", "count", "free") + _COLOR_SUMS:
                arr = getattr(self, name)
                arr.index_copy_(0, blocks, arr.index_select(0, blocks).masked_fill_(empty, 0.0))
        if sign > 0:
            self.last_seen[blocks] = self.tick
        return self.tick

    def _visible_blocks(self, depth, trunc, fx, fy, cx, cy, s, Rt, tt,
                        fused_at: Optional[int]) -> tuple[torch.Tensor, bool]:
        """Indices of the blocks the frame can update (one projected point per block), and
        whether one of them reaches the camera plane."""
        H, W = depth.shape
        bs = self.voxel * BLOCK
        centre_w = (self.coords[:self.n].to(torch.float32) + 0.5) * bs
        centre_c = ((centre_w - tt) @ Rt) / s
        zc = centre_c[:, 2]
        rad = bs * math.sqrt(3) / 2 / s
        zsafe = zc.clamp(min=1e-6)
        uc = fx * centre_c[:, 0] / zsafe + cx
        vc = fy * centre_c[:, 1] / zsafe + cy
        mu = fx * rad / zsafe
        mv = fy * rad / zsafe
        dmax = float(depth.max()) if depth.numel() else 0.0
        trunc_max = float(trunc.max())
        sel = ((zc + rad > 0) & (zc - rad < dmax + trunc_max) & (uc + mu >= 0) & (uc - mu <= W - 1)
               & (vc + mv >= 0) & (vc - mv <= H - 1))
        # occlusion culling: a block entirely farther than the deepest reading (plus the
        # truncation) around its projection cannot be updated. The deepest reading comes from
        # tiles of _TILE pixels dilated by _DIL tiles, so the test is exact for blocks whose
        # projection is at most _TILE * _DIL pixels in radius; larger ones are always kept.
        far = self._footprint_max(depth + trunc, uc, vc)
        small = (mu <= _TILE * _DIL) & (mv <= _TILE * _DIL)
        sel &= ~(small & (zc - rad > far))
        if fused_at is not None:
            sel &= self.born[:self.n] <= fused_at
        blocks = torch.nonzero(sel).reshape(-1)
        near = bool(((zc - rad <= _NEAR_Z) & sel).any()) if blocks.numel() else False
        return blocks, near

    @staticmethod
    def _footprint_max(img: torch.Tensor, uc: torch.Tensor, vc: torch.Tensor) -> torch.Tensor:
        """Max of ``img`` over the tiles within _DIL tiles of each pixel (uc, vc)."""
        tiles = torch.nn.functional.max_pool2d(img[None, None], _TILE, ceil_mode=True)
        tiles = torch.nn.functional.max_pool2d(tiles, 2 * _DIL + 1, stride=1, padding=_DIL)[0, 0]
        ti = (vc / _TILE).floor().clamp(0, tiles.shape[0] - 1).to(torch.int64)
        tj = (uc / _TILE).floor().clamp(0, tiles.shape[1] - 1).to(torch.int64)
        return tiles[ti, tj]

    def _project(self, blocks, depth, fx, fy, cx, cy, s, Rt, tt, near: bool
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every voxel of ``blocks`` projected into the depth image: (its pixel in the image
        padded by one pixel on every side (B * 512,) int32, its camera depth z (B, 512)).

        The projection is linear in the voxel's camera coordinates until the division by
        depth, so per-block and per-offset terms are added once; pixel coordinates are clamped
        onto the padding, so voxels projecting off the image (or at or behind the camera
        plane) land on a border pixel that holds no reading and need no bounds test.
        """
        H, W = depth.shape
        vs = self.voxel
        # [u', v', z] = A p_cam with u' / z the padded column + 0.5 (rounding by truncation)
        A = torch.tensor([[fx, 0.0, cx + 1.5], [0.0, fy, cy + 1.5], [0.0, 0.0, 1.0]],
                         dtype=torch.float32, device=self.device)
        M = (Rt / s) @ A.T  # world offset -> [u', v', z]
        origin = (self.coords[blocks].to(torch.float32) * (vs * BLOCK) - tt) @ M  # (B, 3)
        local = ((self._local.to(torch.float32) + 0.5) * vs) @ M  # (512, 3)
        z = origin[:, None, 2] + local[None, :, 2]  # (B, 512)
        iz = z.reciprocal()
        if near:
            iz.masked_fill_(z <= _NEAR_Z, 0.0)
        u = (origin[:, None, 0] + local[None, :, 0]).mul_(iz).clamp_(0.0, W + 1.0).to(torch.int32)
        v = (origin[:, None, 1] + local[None, :, 1]).mul_(iz).clamp_(0.0, H + 1.0).to(torch.int32)
        return u.add_(v, alpha=W + 2).view(-1), z  # truncation is the floor: non-negative

    @staticmethod
    def _min_weight(depth, weights, noise_power: float) -> float:
        """A lower bound of the weight any reading of the frame gives a voxel: the smallest
        confidence at the largest depth."""
        w = float(weights.masked_fill(weights <= 0, math.inf).min())
        return w / max(float(depth.max()), 1e-3) ** (2.0 * noise_power)

    def _padded_planes(self, planes: list[torch.Tensor]) -> torch.Tensor:
        """(H, W) images -> (C, (H + 2) * (W + 2)) float32, padded by 0 on every side."""
        H, W = planes[0].shape
        out = torch.zeros((len(planes), H + 2, W + 2), dtype=torch.float32, device=self.device)
        for i, p in enumerate(planes):
            out[i, 1:H + 1, 1:W + 1] = p
        return out.view(len(planes), -1)

    def _allocate_from_depth(self, depth, weights, trunc, fx, fy, cx, cy, s, Rt, tt) -> None:
        """Allocate the blocks within the truncation band around the measured surface."""
        H, W = depth.shape
        bs = self.voxel * BLOCK
        # sample pixels so that neighbouring samples are at most a quarter block apart at the
        # farthest depth (the band around each sample is walked in half-block steps)
        dmax = float(depth.max()) if depth.numel() else 0.0
        if dmax <= 0:
            return
        # (the median of a 1/16 sample: the step needs no more precision)
        sample = depth[::4, ::4]
        sample = sample[sample > 0]
        dmed = float((sample if sample.numel() else depth[depth > 0]).median())
        step = int(min(16, max(1, 0.5 * bs / s * fx / max(dmed, 1e-6))))
        d = depth[::step, ::step]
        w = weights[::step, ::step]
        tr = trunc[::step, ::step]
        vv, uu = torch.meshgrid(torch.arange(0, H, step, device=self.device, dtype=torch.float32),
                                torch.arange(0, W, step, device=self.device, dtype=torch.float32),
                                indexing="ij")
        ok = (d > 0) & (w > 0)
        d, uu, vv, tr = d[ok], uu[ok], vv[ok], tr[ok]
        if d.numel() == 0:
            return
        rays = torch.stack([(uu - cx) / fx, (vv - cy) / fy, torch.ones_like(uu)], 1)  # z = 1
        n = max(3, int(math.ceil(2 * float(tr.max()) * s / (0.5 * bs))) + 1)
        offs = torch.linspace(-1.0, 1.0, n, device=self.device)
        dd = (d[:, None] + offs[None, :] * tr[:, None]).clamp(min=1e-3)  # (P, n)
        pc = rays[:, None, :] * dd[..., None]  # camera coordinates
        pw = s * (pc.reshape(-1, 3) @ Rt.T) + tt
        self.allocate(torch.floor(pw / bs).to(torch.int64))

    # ------------------------------------------------------------------ surface
    def _neighbours(self, step: int = 1) -> torch.Tensor:
        """(n, 3) block index of the neighbour ``step`` blocks along x, y, z of every block
        (-1 = none)."""
        c = self.coords[:self.n]
        out = []
        for axis in range(3):
            off = torch.zeros(3, dtype=torch.int64, device=self.device)
            off[axis] = step
            out.append(self.lookup(pack_keys(c + off)))
        return torch.stack(out, 1)

    def transient_voxels(self) -> torch.Tensor:
        """(n, 512) bool: voxels left out of the surface as transient (all False without a
        rule): observed (at least ``min_weight`` readings), occupied (mean TSDF < 0) voxels
        that the free-space vote calls transient, grown by the rule's radius."""
        n = self.n
        rule = self.transients
        if rule is None or n == 0:
            return torch.zeros((n, VPB), dtype=torch.bool, device=self.device)
        count = self.count[:n]
        seed = (free_space_vote(self.free[:n], count, rule.min_violations, rule.vote_ratio)
                & (count >= self.min_weight) & (self.tsdf < 0))
        return self._dilate(seed, int(rule.radius))

    def _dilate(self, mask: torch.Tensor, radius: int) -> torch.Tensor:
        """(n, 512) bool grown by ``radius`` voxels along each axis in turn (a cube), across
        block borders."""
        n = self.n
        if radius <= 0 or not bool(mask.any()):
            return mask
        nbrs = (self._neighbours(1), self._neighbours(-1))
        a = mask.reshape(n, BLOCK, BLOCK, BLOCK)  # z, y, x
        for axis in range(3):
            dim = 3 - axis  # x -> dim 3, y -> dim 2, z -> dim 1
            plus, minus = nbrs[0][:, axis], nbrs[1][:, axis]
            has_p = (plus >= 0).view(n, 1, 1)
            has_m = (minus >= 0).view(n, 1, 1)
            for _ in range(radius):
                out = a.clone()
                out.narrow(dim, 0, BLOCK - 1).logical_or_(a.narrow(dim, 1, BLOCK - 1))
                out.narrow(dim, 1, BLOCK - 1).logical_or_(a.narrow(dim, 0, BLOCK - 1))
                out.select(dim, BLOCK - 1).logical_or_(a[plus.clamp(min=0)].select(dim, 0) & has_p)
                out.select(dim, 0).logical_or_(a[minus.clamp(min=0)].select(dim, BLOCK - 1) & has_m)
                a = out
        return a.reshape(n, VPB)

    def _surface_count(self) -> torch.Tensor:
        """(n, 512) reading count that the minimum-weight rule of surface extraction reads:
        0 for transient voxels (:meth:`transient_voxels`)."""
        return self.count[:self.n].masked_fill(self.transient_voxels(), 0.0)

    def _shifted(self, arr: torch.Tensor, nbr: torch.Tensor, axis: int, fill: float) -> torch.Tensor:
        """``arr`` (n, 512, ...) of the voxel one step along +axis (from the neighbour block at
        the block border; ``fill`` where there is none)."""
        n = self.n
        a = arr[:n].reshape((n, BLOCK, BLOCK, BLOCK) + tuple(arr.shape[2:]))  # z, y, x
        dim = 3 - axis  # x -> dim 3, y -> dim 2, z -> dim 1
        out = torch.empty_like(a)
        body = [slice(None)] * a.dim()
        body[dim] = slice(0, BLOCK - 1)
        src = [slice(None)] * a.dim()
        src[dim] = slice(1, BLOCK)
        out[tuple(body)] = a[tuple(src)]
        last = [slice(None)] * a.dim()
        last[dim] = BLOCK - 1
        first = [slice(None)] * a.dim()
        first[dim] = 0
        nb = nbr[:, axis]
        has = nb >= 0
        face = a[nb.clamp(min=0)][tuple(first)]
        face[~has] = fill
        out[tuple(last)] = face
        return out.reshape(arr[:n].shape)

    def voxel_centres(self) -> torch.Tensor:
        """(n, 512, 3) world coordinates of every voxel centre of the allocated blocks."""
        c = self.coords[:self.n].to(torch.float32) * BLOCK
        return (c[:, None, :] + self._local[None].to(torch.float32) + 0.5) * self.voxel

    def extract_points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Zero crossings of the TSDF between neighbouring voxels (both at least ``min_weight``,
        neither truncated): (xyz float32 (N, 3), normals float32 (N, 3), rgb uint8 (N, 3),
        weight float32 (N,))."""
        empty = (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32),
                 np.zeros((0, 3), np.uint8), np.zeros(0, np.float32))
        if self.n == 0:
            return empty
        nbr = self._neighbours()
        n = self.n
        t0 = self.tsdf
        w0 = self._surface_count()
        good0 = (w0 >= self.min_weight) & (t0.abs() < 1.0)
        grads = self._gradient(nbr, t0)
        color = self.color
        centres = self.voxel_centres()
        pts, nrm, col, wts = [], [], [], []
        for axis in range(3):
            t1 = self._shifted(t0, nbr, axis, 1.0)
            w1 = self._shifted(w0, nbr, axis, 0.0)
            good = good0 & (w1 >= self.min_weight) & (t1.abs() < 1.0) & ((t0 > 0) != (t1 > 0))
            idx = torch.nonzero(good.reshape(-1)).reshape(-1)
            if idx.numel() == 0:
                continue
            a = t0.reshape(-1)[idx]
            b = t1.reshape(-1)[idx]
            f = (a / (a - b)).clamp(0.0, 1.0)
            p = centres.reshape(-1, 3)[idx].clone()
            p[:, axis] += f * self.voxel
            g0 = grads.reshape(-1, 3)[idx]
            g1 = self._shifted(grads, nbr, axis, 0.0).reshape(-1, 3)[idx]
            g = g0 * (1 - f[:, None]) + g1 * f[:, None]
            c0 = color.reshape(-1, 3)[idx]
            c1 = self._shifted(color, nbr, axis, 0.0).reshape(-1, 3)[idx]
            pts.append(p)
            nrm.append(g)
            col.append(c0 * (1 - f[:, None]) + c1 * f[:, None])
            wts.append(torch.minimum(w0.reshape(-1)[idx], w1.reshape(-1)[idx]))
        if not pts:
            return empty
        p = torch.cat(pts)
        g = torch.cat(nrm)
        g = g / g.norm(dim=1, keepdim=True).clamp(min=1e-9)
        c = torch.cat(col).round().clamp(0, 255).to(torch.uint8)
        return (p.cpu().numpy().astype(np.float32), g.cpu().numpy().astype(np.float32),
                c.cpu().numpy(), torch.cat(wts).cpu().numpy().astype(np.float32))

    def _gradient(self, nbr: torch.Tensor, t0: torch.Tensor) -> torch.Tensor:
        """(n, 512, 3) forward-difference TSDF gradient (points out of the surface, towards
        free space); zero where a neighbour is unobserved."""
        n = self.n
        ok0 = self.weight[:n] > _EMPTY_W
        g = []
        for axis in range(3):
            t1 = self._shifted(t0, nbr, axis, 1.0)
            w1 = self._shifted(self.weight, nbr, axis, 0.0)
            g.append(torch.where(ok0 & (w1 > _EMPTY_W), t1 - t0, torch.zeros_like(t0)))
        return torch.stack(g, -1)

    def extract_mesh(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Naive surface nets: (vertices float32 (V, 3), triangles int64 (F, 3), rgb uint8
        (V, 3), normals float32 (V, 3)).

        A cell is the cube between 8 voxel centres (voxel (i, j, k) and its +x/+y/+z
        neighbours), all observed with at least ``min_weight``. A cell whose corners differ in
        sign gets one vertex at the mean of the zero crossings along its 12 edges. Every voxel
        edge with a sign change and four such cells around it gives one quad (two triangles),
        wound so that the normal points to the positive (free) side.
        """
        empty = (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64),
                 np.zeros((0, 3), np.uint8), np.zeros((0, 3), np.float32))
        if self.n == 0:
            return empty
        # gather the whole observed voxel set as flat arrays keyed by global voxel coords
        n = self.n
        w = self._surface_count().reshape(-1)
        obs = torch.nonzero(w >= self.min_weight).reshape(-1)
        if obs.numel() == 0:
            return empty
        vijk = (self.coords[:n][:, None, :] * BLOCK + self._local[None]).reshape(-1, 3)[obs]
        vkey = pack_keys(vijk)
        order = torch.argsort(vkey)
        vkey, obs, vijk = vkey[order], obs[order], vijk[order]
        tv = self.tsdf.reshape(-1)[obs]
        cv = self.color.reshape(-1, 3)[obs]

        def find(ijk: torch.Tensor) -> torch.Tensor:
            k = pack_keys(ijk)
            pos = torch.searchsorted(vkey, k).clamp_(max=vkey.numel() - 1)
            return torch.where(vkey[pos] == k, pos, torch.full_like(pos, -1))

        corners = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0],
                                [0, 0, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]], device=self.device)
        cidx = torch.stack([find(vijk + c) for c in corners], 1)  # (V, 8) cell corner voxels
        full = (cidx >= 0).all(1)
        ct = torch.where(cidx >= 0, tv[cidx.clamp(min=0)], torch.ones_like(cidx, dtype=torch.float32))
        pos_ = ct > 0
        crossed = full & pos_.any(1) & (~pos_).any(1)
        cells = torch.nonzero(crossed).reshape(-1)
        if cells.numel() == 0:
            return empty
        ct = ct[cells]
        cid = cidx[cells]
        edges = torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7], [0, 2], [1, 3], [4, 6], [5, 7],
                              [0, 4], [1, 5], [2, 6], [3, 7]], device=self.device)
        ta, tb = ct[:, edges[:, 0]], ct[:, edges[:, 1]]
        ecross = (ta > 0) != (tb > 0)
        f = torch.where(ecross, ta / torch.where(ecross, ta - tb, torch.ones_like(ta)), torch.zeros_like(ta))
        ca, cb = corners[edges[:, 0]].float(), corners[edges[:, 1]].float()
        ep = ca[None] + f[..., None] * (cb - ca)[None]  # (C, 12, 3) local cell coords
        cnt = ecross.sum(1, keepdim=True).clamp(min=1).float()
        local = (ep * ecross[..., None]).sum(1) / cnt
        verts = (vijk[cells].float() + 0.5 + local) * self.voxel
        ccol = cv[cid]  # (C, 8, 3)
        ea, eb = ccol[:, edges[:, 0]], ccol[:, edges[:, 1]]
        ecol = ea + f[..., None] * (eb - ea)
        vcol = (ecol * ecross[..., None]).sum(1) / cnt
        # vertex normals: gradient of the trilinear TSDF at the cell centre
        gx = (ct[:, [1, 3, 5, 7]] - ct[:, [0, 2, 4, 6]]).mean(1)
        gy = (ct[:, [2, 3, 6, 7]] - ct[:, [0, 1, 4, 5]]).mean(1)
        gz = (ct[:, [4, 5, 6, 7]] - ct[:, [0, 1, 2, 3]]).mean(1)
        vnrm = torch.stack([gx, gy, gz], 1)
        vnrm = vnrm / vnrm.norm(dim=1, keepdim=True).clamp(min=1e-9)
        # cell lookup: cell id by its min-corner voxel key
        ckey = vkey[cells]  # sorted because cells is increasing in the sorted voxel order

        def cell_of(ijk: torch.Tensor) -> torch.Tensor:
            k = pack_keys(ijk)
            p = torch.searchsorted(ckey, k).clamp_(max=ckey.numel() - 1)
            return torch.where(ckey[p] == k, p, torch.full_like(p, -1))

        tris = []
        # an edge from voxel v along axis a is shared by the 4 cells whose min corner is v minus
        # 0/1 along each of the two other axes
        for a in range(3):
            b, c = (a + 1) % 3, (a + 2) % 3
            e = torch.zeros(3, dtype=torch.int64, device=self.device)
            e[a] = 1
            j = find(vijk + e)
            has = j >= 0
            s0 = tv > 0
            s1 = torch.where(has, tv[j.clamp(min=0)] > 0, s0)
            ed = torch.nonzero(has & (s0 != s1)).reshape(-1)
            if ed.numel() == 0:
                continue
            base = vijk[ed]
            ob = torch.zeros(3, dtype=torch.int64, device=self.device)
            ob[b] = 1
            oc = torch.zeros(3, dtype=torch.int64, device=self.device)
            oc[c] = 1
            q = torch.stack([cell_of(base - ob - oc), cell_of(base - oc), cell_of(base),
                             cell_of(base - ob)], 1)  # around the edge, counter-clockwise about +a
            okq = (q >= 0).all(1)
            q = q[okq]
            inside_first = ~s0[ed][okq]  # the voxel at the edge start is inside (negative)
            # quad (q0, q1, q2, q3) is counter-clockwise seen from +a; the normal must point
            # to the positive side: along +a when the start voxel is negative
            t1 = torch.stack([q[:, 0], q[:, 1], q[:, 2]], 1)
            t2 = torch.stack([q[:, 0], q[:, 2], q[:, 3]], 1)
            flip = ~inside_first
            t1[flip] = t1[flip][:, [0, 2, 1]]
            t2[flip] = t2[flip][:, [0, 2, 1]]
            tris += [t1, t2]
        if not tris:
            return empty
        faces = torch.cat(tris)
        used, inv = torch.unique(faces, return_inverse=True)
        return (verts[used].cpu().numpy().astype(np.float32), inv.reshape(-1, 3).cpu().numpy().astype(np.int64),
                vcol[used].round().clamp(0, 255).to(torch.uint8).cpu().numpy(),
                vnrm[used].cpu().numpy().astype(np.float32))

    # ------------------------------------------------------------------ queries
    def observed_voxels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Centres (N, 3), TSDF (N,) and weight (N,) of the voxels with at least ``min_weight``."""
        if self.n == 0:
            return np.zeros((0, 3), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32)
        w = self._surface_count().reshape(-1)
        idx = torch.nonzero(w >= self.min_weight).reshape(-1)
        return (self.voxel_centres().reshape(-1, 3)[idx].cpu().numpy(),
                self.tsdf.reshape(-1)[idx].cpu().numpy(), w[idx].cpu().numpy())
