"""Speed and memory of the mapping core (no GPU needed).

1. rgbd frontend: frames/s at 320x240 and 640x480 on an analytic RGB-D loop with 1 cm depth
   noise, with the trajectory error (ATE RMSE, % of the path length) and the accuracy of the
   fused map (mean distance of fused points to the true surfaces).
2. fused map: a long run (default 5,000 small frames, each inserted as a keyframe, the worst
   case) under point and byte caps: insertion time, re-anchoring time, fused() time, memory.

The scene is the small ray-cast room of the test helper ``test/mapping_scene.py``.

    python3 benchmarks/bench_map.py [--frames 5000] [--rgbd-frames 60]
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "test"))

from mapping_scene import BoxRoom, camera, rgbd_sequence  # noqa: E402

from recon_ros.geometry.camera import PixelMap, backproject_depth  # noqa: E402
from recon_ros.geometry.transforms import make_T, rotvec_to_matrix  # noqa: E402
from recon_ros.mapping.frame import Keyframe  # noqa: E402
from recon_ros.mapping.frontend import final_estimates  # noqa: E402
from recon_ros.mapping.fused_map import KeyframeMap  # noqa: E402
from recon_ros.mapping.keyframes import KeyframeSelector  # noqa: E402
from recon_ros.mapping.rgbd import RGBDFrontend, depth_confidence  # noqa: E402
from recon_ros.mapping.schema import MappingConfig, MapConfig  # noqa: E402


def bench_rgbd(width: int, height: int, n: int, noise: float = 0.01) -> dict:
    room, traj, frames = rgbd_sequence(width, height, n, noise)
    cfg = MappingConfig()
    fe = RGBDFrontend(cfg)
    sel = KeyframeSelector(cfg.keyframe, depth_source="depth")
    kmap = KeyframeMap(cfg.map)
    t_front = 0.0
    t_rest = 0.0
    poses = {}
    for f in frames:
        t0 = time.perf_counter()
        out = fe.step(f)
        t1 = time.perf_counter()
        for e in final_estimates(out):
            kf = sel.consider(e, scale=1.0)
            if kf is not None:
                kmap.add_keyframe(kf)
        t_rest += time.perf_counter() - t1
        t_front += t1 - t0
        poses.update({e.index: e.T_world_cam for e in out})
    T0 = traj[0]
    err = np.array([np.linalg.norm((T0 @ T)[:3, 3] - traj[i][:3, 3]) for i, T in poses.items()])
    length = sum(np.linalg.norm(traj[i + 1][:3, 3] - traj[i][:3, 3]) for i in range(n - 1))
    xyz = kmap.fused()[0].astype(np.float64) @ T0[:3, :3].T + T0[:3, 3]
    dist = room.distance_to_surface(xyz)
    return dict(size=f"{width}x{height}", frames=n, fps_frontend=n / t_front,
                fps_total=n / (t_front + t_rest), ate_rmse_m=float(np.sqrt(np.mean(err ** 2))),
                ate_pct=100 * float(np.sqrt(np.mean(err ** 2))) / length, path_m=length,
                failures=fe.stats()["failures"], keyframes=len(kmap), fused_points=len(xyz),
                map_mean_err_m=float(dist.mean()), map_median_err_m=float(np.median(dist)))


def bench_map(n: int, max_points: int, max_bytes: int) -> dict:
    room = BoxRoom()
    w, h = 64, 48
    K = camera(w, h)
    rng = np.random.default_rng(1)
    cfg = MapConfig(voxel_size_m=0.02, max_points=max_points, max_bytes=max_bytes)
    kmap = KeyframeMap(cfg)
    add_ms, peak_bytes = [], 0
    t_render = 0.0
    for i in range(n):
        a = 2 * np.pi * i / 200.0
        pos = np.array([0.8 * np.cos(a) + rng.normal(0, 0.3), rng.normal(0, 0.2), 0.8 * np.sin(a)])
        T = make_T(rotvec_to_matrix(np.array([rng.normal(0, 0.2), -a - 0.9, 0.0])), pos)
        t0 = time.perf_counter()
        rgb, depth = room.render(K, T, w, h)
        t_render += time.perf_counter() - t0
        pts = backproject_depth(depth, K)
        kf = Keyframe(id=i, stamp_ns=i, rgb=rgb, points_cam=pts, confidence=depth_confidence(depth),
                      colors=rgb, K=K, K_image=K, pixel_map=PixelMap.identity(w, h), T_world_cam=T,
                      valid=np.isfinite(depth))
        t0 = time.perf_counter()
        kmap.add_keyframe(kf)
        add_ms.append(1000 * (time.perf_counter() - t0))
        peak_bytes = max(peak_bytes, kmap.nbytes)
    ids = kmap.keyframe_ids()
    t0 = time.perf_counter()
    for k in ids[-50:]:
        kmap.apply_correction(k, make_T(rotvec_to_matrix(np.array([0.0, 0.001, 0.0])), [0.001, 0, 0]))
    reanchor_ms = 1000 * (time.perf_counter() - t0) / min(50, len(ids))
    t0 = time.perf_counter()
    xyz, rgb, conf = kmap.fused()
    fused_ms = 1000 * (time.perf_counter() - t0)
    st = kmap.stats()
    add = np.array(add_ms)
    return dict(frames=n, add_ms_mean=float(add.mean()), add_ms_p95=float(np.percentile(add, 95)),
                add_ms_last100=float(add[-100:].mean()), reanchor_ms=reanchor_ms, fused_ms=fused_ms,
                fused_points=len(xyz), max_points=max_points, map_bytes=st.bytes, peak_map_bytes=peak_bytes,
                max_bytes=max_bytes, keyframes_kept=st.keyframes, evicted=st.evicted_keyframes,
                voxels=st.voxels, max_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=5000, help="frames of the long fused-map run")
    ap.add_argument("--rgbd-frames", type=int, default=60, help="frames of each rgbd run")
    ap.add_argument("--max-points", type=int, default=200_000)
    ap.add_argument("--max-bytes", type=int, default=32 * 1024 * 1024)
    args = ap.parse_args()
    r = bench_map(args.frames, args.max_points, args.max_bytes)  # first: max_rss is the map's
    print("map   " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    for w, h in ((320, 240), (640, 480)):
        r = bench_rgbd(w, h, args.rgbd_frames)
        print("rgbd  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
