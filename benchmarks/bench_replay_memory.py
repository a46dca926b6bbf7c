"""Memory of a long replay: does the map stay under its caps?

Runs the whole online pipeline (Reconstructor with the rgbd frontend: tracking, keyframes, the
TSDF volume, the keyframe point blocks) over a long synthetic sequence of small images that
circles the room many times, with deliberately small caps, and samples the sizes and the
process memory as it goes: the volume (``map.max_memory_mib``), the frames kept for re-fusion
(``map.frame_store_mib``) and the keyframe point blocks (``map.max_points``, ``map.max_bytes``).

    python3 benchmarks/bench_replay_memory.py [--frames 5000] [--size 80x60] [--volume-mib 8]
        [--frame-store-mib 8] [--max-points 50000] [--max-mb 8] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon_ros.config import set_value  # noqa: E402
from recon_ros.io.sources import parse_size  # noqa: E402
from recon_ros.io.synth import SynthConfig, iter_frames  # noqa: E402
from recon_ros.mapping.reconstructor import ReconConfig, Reconstructor  # noqa: E402


def rss_mb() -> float:
    """Current resident memory (Linux /proc), MB."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=5000)
    ap.add_argument("--size", default="80x60")
    ap.add_argument("--loops", type=float, default=10.0, help="turns around the room")
    ap.add_argument("--max-points", type=int, default=50_000)
    ap.add_argument("--max-mb", type=float, default=8.0)
    ap.add_argument("--volume-mib", type=float, default=8.0, help="map.max_memory_mib")
    ap.add_argument("--frame-store-mib", type=float, default=8.0, help="map.frame_store_mib")
    ap.add_argument("--voxel", type=float, default=0.02, help="map.voxel_size_m")
    ap.add_argument("--json", help="write the samples here")
    a = ap.parse_args()
    w, h = parse_size(a.size)
    synth = SynthConfig(width=w, height=h, n_frames=a.frames, loops=a.loops, depth_noise_m=0.005)
    cfg = ReconConfig()
    set_value(cfg, "frontend.name", "rgbd")
    set_value(cfg, "map.max_points", a.max_points)
    set_value(cfg, "map.max_bytes", int(a.max_mb * 2**20))
    set_value(cfg, "keyframe.min_interval_s", 0.0)
    set_value(cfg, "map.max_memory_mib", a.volume_mib)
    set_value(cfg, "map.frame_store_mib", a.frame_store_mib)
    set_value(cfg, "map.voxel_size_m", a.voxel)
    recon = Reconstructor(cfg)
    samples = []
    t0 = time.perf_counter()
    peak_bytes = peak_volume = 0
    for i, frame in enumerate(iter_frames(synth)):
        recon.process(frame)
        st = recon.stats()
        peak_bytes = max(peak_bytes, st["map_bytes"])
        peak_volume = max(peak_volume, recon.surface.volume.nbytes)
        if i % 250 == 0 or i == a.frames - 1:
            samples.append(dict(frame=i, keyframes=st["keyframes"], keyframe_bytes=st["map_bytes"],
                                volume_blocks=st["surface_blocks"], volume_mib=round(recon.surface.volume.nbytes / 2**20, 2),
                                evicted_blocks=st["surface_evicted_blocks"],
                                frames_released=st["surface_frames_released"],
                                reloc_keyframes=st.get("frontend_reloc_keyframes", 0),
                                reloc_mib=round(st.get("frontend_reloc_bytes", 0) / 2**20, 2),
                                trajectory=len(recon.trajectory(corrected=False)), rss_mb=round(rss_mb(), 1),
                                seconds=round(time.perf_counter() - t0, 1)))
            print(samples[-1], flush=True)
    recon.flush()
    ms = recon.map.stats()
    result = dict(frames=a.frames, size=a.size, max_points=a.max_points, max_bytes=int(a.max_mb * 2**20),
                  volume_cap_mib=a.volume_mib, peak_volume_mib=round(peak_volume / 2**20, 3),
                  peak_keyframe_bytes=peak_bytes, evicted_keyframes=ms.evicted_keyframes,
                  peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  fps=round(a.frames / (time.perf_counter() - t0), 1), samples=samples)
    print(f"{a.frames} frames {a.size}: volume peak {peak_volume / 2**20:.2f} MiB (cap {a.volume_mib} MiB), "
          f"keyframe blocks peak {peak_bytes / 2**20:.2f} MiB (cap {a.max_mb} MiB), {ms.evicted_keyframes} keyframes evicted, "
          f"peak RSS {result['peak_rss_mb']} MB, {result['fps']} frames/s")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
