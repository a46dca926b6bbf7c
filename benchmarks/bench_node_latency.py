"""Latency of recon_node's own work, without ROS: callback time, per-frame overhead, cloud packing.

Runs the node through the in-repo rclpy stand-in (test/rclpy_standin, a test double) with the
FakeReconstructor test double, so it measures the node's wiring and conversions only, never the
model or DDS:

* callback: time spent in the image + camera_info subscription callbacks per frame, while the
  (fake) model is busy -- what the executor thread pays; inference never runs there;
* frame overhead: worker time per frame minus the fake model's time (decode, poses, TF, messages);
* map cloud: packing N fused points into a PointCloud2 (x y z rgb confidence) for ~/map_cloud.

    python3 benchmarks/bench_node_latency.py [--frames 60] [--width 640 --height 480]
    python3 benchmarks/bench_node_latency.py --core rgbd --width 320 --height 240   # end to end
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "test"))
sys.path.insert(0, str(REPO))

from recon_ros.io import messages as M  # noqa: E402
from recon_ros.ros import convert  # noqa: E402
from rclpy_standin import installed  # noqa: E402
from rclpy_standin.doubles import FakeCoreConfig, FakeReconstructor  # noqa: E402


def bench_node(frames: int, width: int, height: int, model_ms: float) -> dict:
    T = M.rosbags_types()
    K = np.array([[500.0, 0, width / 2], [0, 500.0, height / 2], [0, 0, 1]])
    rgb = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    with installed():
        from rclpy.parameter import Parameter
        from recon_ros.ros.recon_node import ReconNode
        recon = {}

        def build(cfg):
            recon["r"] = FakeReconstructor(cfg, delay_s=model_ms / 1e3)
            return recon["r"]

        node = ReconNode(core_cls=FakeCoreConfig, reconstructor_factory=build,
                         parameter_overrides=[Parameter(name="save.on_shutdown", value=False)])
        node.trigger_configure()
        node.trigger_activate()
        img_cb = node.subscriptions["/image"].callback
        info_cb = node.subscriptions["/camera_info"].callback
        cb_ms = []
        for i in range(frames):
            s = 1_000_000_000 + i * 33_333_333
            node.get_clock().set_ns(s)
            info, img = M.make_camera_info(T, K, width, height, s, "cam"), M.make_image(T, rgb, "rgb8", s, "cam")
            t0 = time.perf_counter()
            info_cb(info)
            img_cb(img)
            cb_ms.append((time.perf_counter() - t0) * 1e3)
            time.sleep(0.0333)
        node._worker.wait_idle(30)
        node._map_worker.wait_idle(30)
        st = node._worker.stats()
        node.finish()
    return {"callback_ms_median": statistics.median(cb_ms), "callback_ms_max": max(cb_ms),
            "worker_ms_mean": st.mean_ms, "overhead_ms": st.mean_ms - model_ms,
            "processed": st.processed, "dropped": st.dropped}


def bench_end_to_end(frames: int, width: int, height: int) -> dict:
    """The real core (Reconstructor, rgbd frontend) behind the node, fed a synthetic RGB-D
    stream at 30 Hz: latency from a frame's arrival to its pose / map publication."""
    from recon_ros.io.synth import SynthConfig, iter_frames

    T = M.rosbags_types()
    synth = list(iter_frames(SynthConfig(width=width, height=height, n_frames=frames,
                                         loops=frames / 600.0, depth_noise_m=0.005)))
    arrival: dict[int, float] = {}
    published: dict[str, list] = {"pose": [], "map_cloud": []}
    with installed():
        from rclpy.parameter import Parameter
        from recon_ros.ros.recon_node import ReconNode
        node = ReconNode(parameter_overrides=[
            Parameter(name="save.on_shutdown", value=False), Parameter(name="frontend.name", value="rgbd"),
            Parameter(name="input.use_depth", value=True), Parameter(name="model.runtime.device", value="cpu")])
        node.trigger_configure()
        node.trigger_activate()
        for name in published:
            pub = node._pubs[name]
            orig = pub.publish

            def hook(msg, _orig=orig, _name=name):
                published[_name].append((time.perf_counter(), M.stamp_to_ns(msg.header.stamp)))
                _orig(msg)
            pub.publish = hook
        subs = node.subscriptions
        t_start = time.perf_counter()
        for f in synth:
            s = int(f.stamp_ns)
            node.get_clock().set_ns(s)
            arrival[s] = time.perf_counter()
            subs["/camera_info"].callback(M.make_camera_info(T, f.K, width, height, s, "cam"))
            subs["/depth"].callback(M.make_depth_image(T, f.depth, s, "cam"))
            subs["/image"].callback(M.make_image(T, f.rgb, "rgb8", s, "cam"))
            time.sleep(max(0.0, t_start + (len(arrival)) / 30.0 - time.perf_counter()))
        node._worker.wait_idle(60)
        node._map_worker.wait_idle(60)
        elapsed = time.perf_counter() - t_start
        st = node._worker.stats()
        node.finish()
    pose_lat = [(t - arrival[s]) * 1e3 for t, s in published["pose"] if s in arrival]
    # map publications carry the publish time; its latency is measured from the newest frame then
    map_lat = []
    for t, _ in published["map_cloud"]:
        newest = max((a for a in arrival.values() if a <= t), default=None)
        if newest is not None:
            map_lat.append((t - newest) * 1e3)
    return {"processed": st.processed, "dropped": st.dropped, "elapsed_s": elapsed,
            "throughput_fps": st.processed / elapsed,
            "pose_latency_ms_median": statistics.median(pose_lat) if pose_lat else float("nan"),
            "pose_latency_ms_p95": float(np.percentile(pose_lat, 95)) if pose_lat else float("nan"),
            "map_publications": len(published["map_cloud"]),
            "map_latency_ms_median": statistics.median(map_lat) if map_lat else float("nan")}


def bench_cloud(n: int, repeats: int = 5) -> float:
    T = M.rosbags_types()
    rng = np.random.default_rng(1)
    xyz = rng.normal(size=(n, 3)).astype(np.float32)
    rgb = rng.integers(0, 255, (n, 3), dtype=np.uint8)
    conf = rng.random(n).astype(np.float32)
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        convert.cloud(T, xyz, rgb, conf, 1, "map")
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--model-ms", type=float, default=100.0, help="time the fake model takes per frame")
    ap.add_argument("--core", choices=("fake", "rgbd"), default="fake",
                    help="fake: node overhead only; rgbd: the real core end to end on a synthetic RGB-D stream")
    a = ap.parse_args()
    if a.core == "rgbd":
        r = bench_end_to_end(a.frames, a.width, a.height)
        print(f"{a.frames} synthetic RGB-D frames {a.width}x{a.height} at 30 Hz, real core (rgbd frontend), CPU:")
        print(f"  processed {r['processed']}, dropped (latest frame wins) {r['dropped']}, "
              f"throughput {r['throughput_fps']:.1f} frames/s")
        print(f"  image arrival -> ~/pose published: median {r['pose_latency_ms_median']:.0f} ms, "
              f"p95 {r['pose_latency_ms_p95']:.0f} ms")
        print(f"  newest image -> ~/map_cloud published: median {r['map_latency_ms_median']:.0f} ms "
              f"({r['map_publications']} publications)")
        return
    r = bench_node(a.frames, a.width, a.height, a.model_ms)
    print(f"{a.frames} frames {a.width}x{a.height} at 30 Hz, fake model {a.model_ms:.0f} ms/frame:")
    print(f"  subscription callbacks per frame: median {r['callback_ms_median']:.3f} ms, max {r['callback_ms_max']:.3f} ms")
    print(f"  worker per frame: {r['worker_ms_mean']:.1f} ms (node overhead ~{r['overhead_ms']:.1f} ms)")
    print(f"  processed {r['processed']}, dropped (latest frame wins) {r['dropped']}")
    for n in (100_000, 500_000):
        print(f"  ~/map_cloud packing {n} points: {bench_cloud(n):.1f} ms")


if __name__ == "__main__":
    main()
