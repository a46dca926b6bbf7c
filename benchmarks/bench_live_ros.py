"""recon_node + recon_refiner under a real ROS 2, fed by a live camera at 15 Hz (wall-clock stamps).

Needs a sourced ROS 2 with the package built and sourced (``colcon build --symlink-install;
source install/setup.bash``). A camera node in this process publishes a ``recon-ros synth``
sequence (colour, aligned depth, camera_info, /tf_static) at ``--rate`` Hz, stamped with the
wall clock and looping over the sequence (a closed loop, so the motion is continuous), while
``ros2 launch recon_ros live.launch.py refiner:=true`` runs the rgbd frontend. Along the run
(seconds after the first pose):

    save at 15 s, align at 30 s, deactivate at 45 s, activate at 48 s, refine at 60 s,
    align at 75 s, Ctrl-C at --seconds (default 90 s)

Measured: pose latency (arrival of ``~/pose`` minus its stamp, which is the image's wall-clock
stamp) overall and in the 15 s after each event; the longest gap between poses; frames that
were not tracked (``~/tracking_state``); position error of every pose against the ground truth
after one rigid alignment of the whole run (a failure streak shows as a run of large errors);
frames processed per second; the resident memory of recon_refiner (sampled every second, and
the peak the node measured around each stage, from its log) against its cap
``input.max_memory_mb`` (``--refiner-cap-mb``); a clean exit (both nodes exit 0, a complete shutdown save). The 15 s
after recon_node applied a refiner correction (from its log) are reported like the events.

    python3 benchmarks/bench_live_ros.py [--seconds 90] [--rate 15] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "test"))
sys.path.insert(0, str(REPO))

EVENTS = [(15.0, "save_map"), (30.0, "align"), (45.0, "deactivate"), (48.0, "activate"),
          (60.0, "refine"), (75.0, "align")]
WINDOW_S = 15.0


def make_sequence(path: Path, frames: int, rate: float, width: int, height: int) -> None:
    from recon_ros.cli import main
    assert main(["-q", "synth", str(path), "--no-progress", "--synth.n_frames", str(frames),
                 "--synth.fps", str(rate), "--synth.width", str(width), "--synth.height", str(height)]) == 0


class LiveCamera(threading.Thread):
    """Publishes the frames of a bag at ``rate`` Hz with wall-clock stamps, cycling over them."""

    def __init__(self, context, bag: Path, rate: float) -> None:
        super().__init__(name="live_camera", daemon=True)
        import rclpy
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from rclpy.serialization import deserialize_message
        from rosidl_runtime_py.utilities import get_message

        from recon_ros.io.bag_reader import open_bag_reader
        self.rate = rate
        self.stop = threading.Event()
        self.node = rclpy.create_node("live_camera", context=context)
        self.frames: dict[int, list] = {}  # bag stamp -> [(publisher, message)]
        self.tf_static = None
        self.pubs: dict = {}
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        reader = open_bag_reader(bag)
        try:
            for conn, stamp, raw in reader.messages():
                if conn.topic == "/tf":
                    continue  # a bare camera: no odometry
                cls = get_message(conn.msgtype)
                if conn.topic not in self.pubs:
                    self.pubs[conn.topic] = self.node.create_publisher(
                        cls, conn.topic, latched if conn.topic == "/tf_static" else 10)
                msg = deserialize_message(bytes(raw), cls)
                if conn.topic == "/tf_static":
                    self.tf_static = msg
                else:
                    self.frames.setdefault(int(stamp), []).append((self.pubs[conn.topic], msg))
        finally:
            reader.close()
        self.order = sorted(self.frames)
        self.sent: dict[int, int] = {}  # wall-clock stamp -> sequence index

    def run(self) -> None:
        self.pubs["/tf_static"].publish(self.tf_static)
        period = 1.0 / self.rate
        next_t = time.monotonic()
        i = 0
        while not self.stop.is_set():
            now_ns = time.time_ns()
            index = i % len(self.order)
            for pub, msg in self.frames[self.order[index]]:
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now_ns, 1_000_000_000)
                pub.publish(msg)
            self.sent[now_ns] = index
            i += 1
            next_t += period
            self.stop.wait(max(0.0, next_t - time.monotonic()))


def rss_mb(name: str) -> float:
    """Resident memory (MB) of the process whose command line runs ``name`` (0 if none)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if any(part.endswith(name.encode()) for part in cmd[:3]) and b"launch" not in cmd[0]:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            continue
    return 0.0


def percentiles(values: list) -> dict:
    if not values:
        return {"n": 0}
    a = np.asarray(values) * 1e3
    return {"n": len(a), "p50_ms": round(float(np.percentile(a, 50)), 1),
            "p95_ms": round(float(np.percentile(a, 95)), 1), "max_ms": round(float(a.max()), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=90.0, help="run length after the first pose")
    ap.add_argument("--rate", type=float, default=15.0, help="camera rate (Hz)")
    ap.add_argument("--frames", type=int, default=450, help="frames of the looped sequence")
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--refiner-cap-mb", type=float, default=768.0,
                    help="recon_refiner's input.max_memory_mb (resident memory cap)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    import rclpy
    from geometry_msgs.msg import PoseStamped
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    from recon_ros.geometry.transforms import transform_points, umeyama
    from recon_ros.io.messages import stamp_to_ns
    from recon_ros.io.trajectory import read_tum
    from ros_harness import Launch, assert_clean_exit, call, complete_maps, spin_until, start_stage

    tmp = Path(tempfile.mkdtemp(prefix="bench_live_"))
    bag = tmp / "scene"
    make_sequence(bag, args.frames, args.rate, args.width, args.height)
    gt = read_tum(bag / "gt" / "gt_trajectory.tum").poses
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("bench_live", context=context)
    camera = LiveCamera(context, bag, args.rate)
    cam_exec = rclpy.executors.SingleThreadedExecutor(context=context)
    cam_exec.add_node(camera.node)
    threading.Thread(target=cam_exec.spin, daemon=True).start()

    poses, states = [], []  # (arrival wall ns, msg)

    def on_pose(msg):
        poses.append((time.time_ns(), msg))

    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    node.create_subscription(PoseStamped, "/recon_node/pose", on_pose, 50)
    node.create_subscription(String, "/recon_node/tracking_state",
                             lambda m: states.append((time.time_ns(), m.data)), latched)
    save_dir = tmp / "maps"
    extra = f"    input:\n      max_memory_mb: {args.refiner_cap_mb}\n"
    run = Launch(node, None, tmp, save_dir, refiner="true", extra_params=extra)
    results: dict = {"rate_hz": args.rate, "size": f"{args.width}x{args.height}", "events": []}
    rss: list = []
    try:
        camera.start()
        assert spin_until(node, lambda: len(poses) > 0, 120), f"no pose\n{run.log()[-3000:]}"
        t0 = time.monotonic()
        pending = list(EVENTS)
        transitions = {"deactivate": Transition.TRANSITION_DEACTIVATE, "activate": Transition.TRANSITION_ACTIVATE}
        while time.monotonic() - t0 < args.seconds:
            spin_until(node, lambda: False, 1.0)
            rss.append(rss_mb("recon_refiner"))
            while pending and time.monotonic() - t0 >= pending[0][0]:
                _, what = pending.pop(0)
                t_event = time.time_ns()
                if what == "save_map":
                    res, dt = call(node, Trigger, "/recon_node/save_map", timeout=60)
                    answer = f"{res.success} {res.message} ({dt:.1f} s)"
                elif what in transitions:
                    req = ChangeState.Request()
                    req.transition.id = transitions[what]
                    res, dt = call(node, ChangeState, "/recon_node/change_state", req)
                    answer = f"{res.success} ({dt:.2f} s)"
                else:
                    res = start_stage(node, what)
                    answer = f"{res.success} {res.message}"
                results["events"].append({"event": what, "at_s": round(time.monotonic() - t0, 1),
                                          "wall_ns": t_event, "answer": answer})
                print(f"{time.monotonic() - t0:6.1f} s  {what}: {answer}", flush=True)
        camera.stop.set()
        code = run.interrupt(timeout=120)
        log = run.log()
        results["exit_code"] = code
        try:
            assert_clean_exit(log, ("recon_node", "recon_refiner"))
            results["clean_exit"] = True
        except AssertionError as exc:
            results["clean_exit"] = str(exc)[:300]
        maps = complete_maps(save_dir)
        results["complete_maps"] = len(maps)
    finally:
        camera.stop.set()
        run.kill()

    # --- analysis -----------------------------------------------------------------------------
    arrival = np.array([a for a, _ in poses], np.int64)
    stamps = np.array([stamp_to_ns(m.header.stamp) for _, m in poses], np.int64)
    latency = (arrival - stamps) * 1e-9
    results["poses"] = len(poses)
    results["frames_sent"] = len(camera.sent)
    span = (stamps[-1] - stamps[0]) * 1e-9
    results["processed_fps"] = round(len(poses) / span, 2) if span > 0 else 0.0
    results["latency_all"] = percentiles(list(latency))
    gaps = np.diff(arrival) * 1e-9
    results["longest_pose_gap_s"] = round(float(gaps.max()), 2) if len(gaps) else None
    # position error after one rigid alignment of the whole run
    idx = np.array([camera.sent.get(int(s), -1) for s in stamps])
    keep = idx >= 0
    est = np.array([[m.pose.position.x, m.pose.position.y, m.pose.position.z] for _, m in poses])[keep]
    ref = np.stack([gt[i][:3, 3] for i in idx[keep]])
    T = umeyama(est, ref, with_scale=False)
    err = np.linalg.norm(transform_points(T, est) - ref, axis=1)
    results["position_error_cm"] = {"median": round(float(np.median(err)) * 100, 2),
                                    "p95": round(float(np.percentile(err, 95)) * 100, 2),
                                    "max": round(float(err.max()) * 100, 2)}
    # every pose: seconds after the first, sequence index, position error (cm), estimated and true position
    t_rel = (arrival[keep] - arrival[0]) * 1e-9
    results["pose_trace"] = [[round(float(t), 2), int(i), round(float(e) * 100, 2),
                              [round(float(v), 4) for v in p], [round(float(v), 4) for v in q]]
                             for t, i, e, p, q in zip(t_rel, idx[keep], err, est, ref)]
    a_keep = arrival[keep]
    # the moments recon_node applied a refiner correction (its log line carries the wall-clock stamp)
    for line in log.splitlines():
        m = re.search(r"\[(\d+)\.(\d+)\] \[recon_node\]: re-anchored (\d+) keyframe", line)
        if m:
            results["events"].append({"event": f"correction applied ({m.group(3)} keyframes)",
                                      "wall_ns": int(m.group(1)) * 1_000_000_000 + int(m.group(2)[:9].ljust(9, "0"))})
    for ev in results["events"]:
        w = (a_keep >= ev["wall_ns"]) & (a_keep < ev["wall_ns"] + WINDOW_S * 1e9)
        wl = (arrival >= ev["wall_ns"]) & (arrival < ev["wall_ns"] + WINDOW_S * 1e9)
        ev["latency_next_15s"] = percentiles(list(latency[wl]))
        ev["error_next_15s_cm_max"] = round(float(err[w].max()) * 100, 2) if w.any() else None
        ev["poses_next_15s"] = int(wl.sum())
    results["tracking_states"] = [s for _, s in states]
    results["losses"] = sum(1 for _, s in states if s == "lost")
    stage_peaks = [int(m) for m in re.findall(r"resident \d+ -> peak (\d+) MiB", log)]
    results["refiner_rss_mb"] = {"first": round(rss[0], 1) if rss else None,
                                 "max_sampled": round(max(rss), 1) if rss else None,
                                 "stage_peaks_mib": stage_peaks, "cap_mb": args.refiner_cap_mb,
                                 "stages": re.findall(r"(?:align|refine): [^\n]*resident \d+ -> peak \d+ MiB\)", log),
                                 "memory_cap_log": re.findall(r"memory cap: [^\n]*|skipped: [^\n]*", log)}
    text = json.dumps(results, indent=2, default=str)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
