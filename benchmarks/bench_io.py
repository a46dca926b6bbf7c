"""I/O speed: reading an RGB-D bag into Frames, packing and decoding PointCloud2.

    python3 benchmarks/bench_io.py [--frames 200] [--points 300000] [--storage sqlite3|mcap]

The bag (640x480 rgb8 + 16UC1 depth + CameraInfo + ground-truth TF) is generated in a temporary
directory and removed afterwards.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from recon_ros.geometry.camera import make_K
from recon_ros.io import messages as M
from recon_ros.io.bag_reader import BagFrameSource
from recon_ros.io.convert import write_camera_bag
from recon_ros.mapping.frame import Frame


def frames(n: int, w: int = 640, h: int = 480):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    depth = rng.uniform(0.3, 5.0, (h, w)).astype(np.float32)
    K = make_K(525.0, 525.0, w / 2 - 0.5, h / 2 - 0.5)
    for i in range(n):
        f = Frame(stamp_ns=1_700_000_000_000_000_000 + i * 33_333_333, rgb=rgb, K=K, depth=depth)
        f.extras["T_world_cam_gt"] = np.eye(4)
        yield f


def timeit(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--points", type=int, default=300_000)
    ap.add_argument("--storage", choices=["sqlite3", "mcap"], default="sqlite3")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "bag"
        t = time.perf_counter()
        write_camera_bag(out, frames(args.frames), storage=args.storage)
        t_write = time.perf_counter() - t
        size = sum(p.stat().st_size for p in out.iterdir()) / 1e6
        t = time.perf_counter()
        n = sum(1 for _ in BagFrameSource(out))
        t_read = time.perf_counter() - t
    print(f"bag ({args.storage}, {args.frames} x 640x480 RGB-D, {size:.0f} MB): "
          f"write {args.frames / t_write:.0f} frames/s, read -> Frame {n / t_read:.0f} frames/s")

    types = M.rosbags_types()
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(args.points, 3)).astype(np.float32)
    cols = rng.integers(0, 256, (args.points, 3)).astype(np.uint8)
    conf = rng.uniform(1, 10, args.points).astype(np.float32)
    msg = M.make_pointcloud2(types, pts, 0, "map", colors=cols, confidence=conf)
    t_pack = timeit(lambda: M.make_pointcloud2(types, pts, 0, "map", colors=cols, confidence=conf), 10)
    t_dec = timeit(lambda: M.pointcloud2_to_xyz(msg), 10)
    raw = bytes(types.typestore.serialize_cdr(msg, msg.__msgtype__))
    t_ser = timeit(lambda: types.typestore.serialize_cdr(msg, msg.__msgtype__), 10)
    t_deser = timeit(lambda: types.typestore.deserialize_cdr(raw, msg.__msgtype__), 10)
    print(f"PointCloud2 {args.points} points (xyz rgb confidence, {len(raw) / 1e6:.1f} MB): "
          f"pack {1 / t_pack:.0f} clouds/s ({t_pack * 1e3:.1f} ms), decode {1 / t_dec:.0f} clouds/s "
          f"({t_dec * 1e3:.1f} ms), CDR serialise {t_ser * 1e3:.1f} ms, deserialise {t_deser * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
