"""Speed and memory of TSDF fusion (recon_ros.mapping.tsdf), and Open3D's for comparison.

1. fusion: ms per 640x480 frame at 2 cm voxels on frames of the synthetic loop
   (``recon-ros synth`` scene, 0.5 % depth noise, ground-truth poses), for the default fusion
   width (320) and full resolution, on the CPU (and CUDA when available); surface point and
   mesh extraction times; the accuracy of the fused surface points (mean distance to the
   scene's static surface sampled every 5 mm, share within 2 cm), so that a faster fusion is
   seen not to cost accuracy.
2. open3d (when installed): the tensor VoxelBlockGrid on the same frames, and the flat
   synthetic depth image (a wall at 2 m) through VoxelBlockGrid and the legacy
   ScalableTSDFVolume (which returned no points with open3d-cpu 0.20.0).
3. memory: a camera sliding along an endless wall (every frame sees new surface) for
   ``--long`` frames under ``map.max_memory_mib``: resident memory stays flat once the cap is
   reached; evicted blocks are counted.

    python3 benchmarks/bench_fusion.py [--frames 40] [--long 5000] [--cap-mib 64] [--threads N]
                                       [--no-open3d]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recon_ros.geometry.transforms import invert_T, transform_points  # noqa: E402
from recon_ros.mapping.schema import MapConfig  # noqa: E402
from recon_ros.mapping.surface_map import SurfaceMap  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def synth_frames(n: int, width: int = 640, height: int = 480):
    """``n`` frames of the loop with their poses in the first camera's frame, and the static
    surface of the scene (sampled every 5 mm) in that frame."""
    from recon_ros.io.synth import iter_frames, make_scene
    from recon_ros.io.synth.config import SynthConfig

    cfg = SynthConfig(seed=1, width=width, height=height, n_frames=300, depth_noise_m=0.005,
                      depth_noise_model="quadratic")
    scene = make_scene(cfg)
    keep = set(np.linspace(0, 299, n).astype(int).tolist())
    out, T0 = [], None
    for i, f in enumerate(iter_frames(cfg, scene)):
        if T0 is None:
            T0 = f.extras["T_world_cam_gt"]
        if i in keep:
            out.append((f, invert_T(T0) @ f.extras["T_world_cam_gt"]))
        if i >= max(keep):
            break
    surface = transform_points(invert_T(T0), scene.sample_surface(0.005).points)
    return out, surface


def accuracy(points: np.ndarray, surface: np.ndarray) -> dict:
    """Mean distance (mm) of fused surface points to the true surface, and the share within 2 cm."""
    from scipy.spatial import cKDTree

    if len(points) == 0:
        return {"accuracy_mm": None, "within_2cm": None}
    d = cKDTree(surface).query(points.astype(np.float64))[0]
    return {"accuracy_mm": round(1e3 * float(d.mean()), 2), "within_2cm": round(float((d < 0.02).mean()), 4)}


def bench_ours(frames, surface, width: int, device: str) -> dict:
    cfg = MapConfig(fusion_max_width=width, device=device)
    m = SurfaceMap(cfg, device=device)
    ts, cpu = [], []
    for i, (f, T) in enumerate(frames):
        t0, c0 = time.perf_counter(), time.process_time()
        m.integrate_depth(f.stamp_ns, f.depth, f.rgb, (f.depth > 0).astype(np.float32), f.K, T)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        ts.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    t0 = time.perf_counter()
    pts = m.points()
    t_pts = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    mesh = m.mesh()
    t_mesh = (time.perf_counter() - t0) * 1e3
    warm = ts[3:] if len(ts) > 6 else ts
    return {"fusion_ms_median": round(float(np.median(warm)), 1),
            "fusion_cpu_ms_median": round(float(np.median(cpu[3:] if len(cpu) > 6 else cpu)), 1),
            "fusion_ms_p90": round(float(np.percentile(warm, 90)), 1),
            "points": len(pts[0]), "points_ms": round(t_pts, 1), "triangles": len(mesh[1]),
            "mesh_ms": round(t_mesh, 1), "blocks": m.volume.n,
            "volume_mib": round(m.volume.nbytes / 2**20, 1), **accuracy(pts[0], surface)}


def bench_open3d(frames) -> dict:
    import open3d as o3d
    import open3d.core as o3c

    dev = o3c.Device("CPU:0")
    vbg = o3d.t.geometry.VoxelBlockGrid(attr_names=("tsdf", "weight", "color"),
                                        attr_dtypes=(o3c.float32, o3c.float32, o3c.float32),
                                        attr_channels=((1), (1), (3)), voxel_size=0.02,
                                        block_resolution=8, block_count=100000, device=dev)
    ts, cpu = [], []
    for f, T in frames:
        t0, c0 = time.perf_counter(), time.process_time()
        depth = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(f.depth, dtype=np.float32)))
        color = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(f.rgb.astype(np.float32) / 255.0)))
        K = o3c.Tensor(f.K, o3c.float64)
        ext = o3c.Tensor(invert_T(T), o3c.float64)
        coords = vbg.compute_unique_block_coordinates(depth, K, ext, 1.0, 8.0, 0.08)
        vbg.integrate(coords, depth, color, K, ext, 1.0, 8.0, 0.08)
        ts.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    t0 = time.perf_counter()
    pcd = vbg.extract_point_cloud()
    t_pts = (time.perf_counter() - t0) * 1e3
    warm = ts[3:] if len(ts) > 6 else ts
    return {"version": o3d.__version__, "fusion_ms_median": round(float(np.median(warm)), 1),
            "fusion_cpu_ms_median": round(float(np.median(cpu[3:] if len(cpu) > 6 else cpu)), 1),
            "points": int(pcd.point.positions.shape[0]), "points_ms": round(t_pts, 1)}


def flat_wall_checks(with_open3d: bool = True) -> dict:
    """A 640x480 depth image of a wall at 2 m, fused three times."""
    K = np.array([[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]])
    depth = np.full((480, 640), 2.0, np.float32)
    rgb = np.full((480, 640, 3), 128, np.uint8)
    out = {}
    m = SurfaceMap(MapConfig(min_weight=1.0))
    for i in range(3):
        m.integrate_depth(i, depth, rgb, np.ones_like(depth), K, np.eye(4))
    xyz = m.points()[0]
    out["ours"] = {"points": len(xyz), "mean_z": round(float(xyz[:, 2].mean()), 4) if len(xyz) else None}
    if not with_open3d:
        return out
    try:
        import open3d as o3d
        import open3d.core as o3c
    except ImportError:
        return out
    vbg = o3d.t.geometry.VoxelBlockGrid(("tsdf", "weight", "color"), (o3c.float32,) * 3, ((1), (1), (3)),
                                        0.02, 8, 10000, o3c.Device("CPU:0"))
    col = o3d.t.geometry.Image(o3c.Tensor(np.full((480, 640, 3), 0.5, np.float32)))
    d = o3d.t.geometry.Image(o3c.Tensor(depth))
    Kt, E = o3c.Tensor(K, o3c.float64), o3c.Tensor(np.eye(4), o3c.float64)
    for _ in range(3):
        c = vbg.compute_unique_block_coordinates(d, Kt, E, 1.0, 8.0, 0.08)
        vbg.integrate(c, d, col, Kt, E, 1.0, 8.0, 0.08)
    try:
        p = vbg.extract_point_cloud().point.positions.numpy()
    except RuntimeError:  # 0.20.0 fails to build an empty cloud with colours
        p = np.zeros((0, 3))
    out["open3d_voxelblockgrid"] = {"points": len(p), "mean_z": round(float(p[:, 2].mean()), 4) if len(p) else None}
    vol = o3d.pipelines.integration.ScalableTSDFVolume(
        voxel_length=0.02, sdf_trunc=0.08, color_type=o3d.pipelines.integration.TSDFVolumeColorType.RGB8)
    intr = o3d.camera.PinholeCameraIntrinsic(640, 480, 525.0, 525.0, 319.5, 239.5)
    for _ in range(3):
        rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
            o3d.geometry.Image(rgb), o3d.geometry.Image(depth), depth_scale=1.0, depth_trunc=8.0,
            convert_rgb_to_intensity=False)
        vol.integrate(rgbd, intr, np.eye(4))
    p = np.asarray(vol.extract_point_cloud().points)
    out["open3d_legacy_scalable"] = {"points": len(p), "mean_z": round(float(p[:, 2].mean()), 4) if len(p) else None}
    return out


def bench_memory(n: int, cap_mib: float) -> dict:
    """A camera sliding along an endless textured wall 2 m away, 5 cm per frame."""
    K = np.array([[262.5, 0, 159.5], [0, 262.5, 119.5], [0, 0, 1]])
    depth = np.full((240, 320), 2.0, np.float32)
    rgb = np.full((240, 320, 3), 128, np.uint8)
    m = SurfaceMap(MapConfig(max_memory_mib=cap_mib, min_weight=1.0, frame_store_mib=16.0))
    rss = []
    for i in range(n):
        T = np.eye(4)
        T[0, 3] = 0.05 * i
        m.integrate_depth(i, depth, rgb, np.ones_like(depth), K, T)
        if i % max(1, n // 20) == 0 or i == n - 1:
            rss.append((i, round(rss_mib(), 1), round(m.volume.nbytes / 2**20, 1)))
    st = m.stats()
    return {"frames": n, "cap_mib": cap_mib, "rss_mib_by_frame": rss, "evicted_blocks": st.evicted_blocks,
            "frames_released": st.frames_released}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=40, help="frames of the loop to fuse")
    ap.add_argument("--long", type=int, default=5000, help="frames of the memory run (0: skip)")
    ap.add_argument("--cap-mib", type=float, default=64.0, help="map.max_memory_mib of the memory run")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--no-open3d", action="store_true", help="skip the Open3D comparison")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    res = {"torch_threads": torch.get_num_threads(), "load_avg_at_start": os.getloadavg()}
    frames, surface = synth_frames(a.frames)
    res["ours_cpu_320"] = bench_ours(frames, surface, 320, "cpu")
    res["ours_cpu_full"] = bench_ours(frames, surface, 0, "cpu")
    if torch.cuda.is_available():
        res["ours_cuda_320"] = bench_ours(frames, surface, 320, "cuda")
        res["ours_cuda_full"] = bench_ours(frames, surface, 0, "cuda")
    if a.no_open3d:
        res["open3d_cpu"] = "skipped"
    else:
        try:
            res["open3d_cpu"] = bench_open3d(frames)
        except ImportError:
            res["open3d_cpu"] = "not installed"
    res["flat_wall"] = flat_wall_checks(not a.no_open3d)
    if a.long:
        res["memory"] = bench_memory(a.long, a.cap_mib)
    res["load_avg_at_end"] = os.getloadavg()
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
