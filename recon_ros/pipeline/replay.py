"""Run the Reconstructor over a recorded source and write everything it produced.

This is the engine of ``recon-ros replay`` (and of the demo): frames are processed one by one
exactly as the ROS node processes them, and the output bag gets the messages the node would
publish (one :class:`~recon_ros.pipeline.outputs.ResultPublisher` builds both). Interrupting it
(Ctrl-C) stops reading; the frames processed so far are flushed and every output is still
written completely.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from recon_ros.config import dump_yaml
from recon_ros.io.atomic import write_text_atomic
from recon_ros.mapping.reconstructor import Reconstructor

log = logging.getLogger(__name__)


@dataclass
class ReplayResult:
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    frames_in: int = 0
    estimates: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    stats: dict = field(default_factory=dict)
    tracking_states: dict = field(default_factory=dict)  # frames per tracking state
    losses: list = field(default_factory=list)  # [first lost stamp, relocalized stamp or None]

    @property
    def fps(self) -> float:
        return self.frames_in / self.seconds if self.seconds > 0 else 0.0


def _as_dict(counter: Any) -> dict:
    if counter is None:
        return {}
    return dict(counter.as_dict() if hasattr(counter, "as_dict") else counter)


def _write_before(recon: Reconstructor, refinement: Any, out_dir: Path) -> dict[str, Path]:
    """The frontend-only trajectory and map, to compare with the refined ones."""
    from recon_ros.io.ply import write_ply
    from recon_ros.io.trajectory import write_tum

    poses = recon.trajectory(corrected=False)
    files = {"trajectory_before": write_tum(out_dir / "trajectory_before.tum", [s for s, _ in poses],
                                            np.stack([T for _, T in poses]) if poses else np.zeros((0, 4, 4)),
                                            header="frontend camera poses before refinement")}
    if refinement.before is not None:
        xyz, rgb, conf = refinement.before.fused()
        files["map_before"] = write_ply(out_dir / "map_before.ply", xyz, rgb, conf)
    return files


def run_replay(recon: Reconstructor, frames: Iterable[Any], out_dir: Path, *, total: Optional[int] = None,
               bag: bool = True, bag_storage: str = "sqlite3", progress: bool = True,
               source_skips: Any = None, refinement: Any = None, tf_frames: Any = None) -> ReplayResult:
    """Process ``frames`` with ``recon`` and write map, trajectories, keyframes, output bag,
    effective config and a summary under ``out_dir``. ``source_skips`` is the source's skip
    counter (read once the frames are consumed). ``refinement`` (a
    :class:`recon_ros.refine.periodic.PeriodicRefinement`) runs the background stages on
    their schedule and adds before/after outputs. ``tf_frames`` (an OutputFramesConfig) names the
    output bag's TF frames, as recon_node's ``frames.*``."""
    from tqdm import tqdm

    from recon_ros.io.bag_writer import BagWriter
    from recon_ros.io.outputs import BagSink
    from recon_ros.io.trajectory import write_tum
    from recon_ros.pipeline.outputs import NullSink, ResultPublisher, publish_map_job
    from recon_ros.ros.schema import OutputFramesConfig

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = ReplayResult(out_dir=out_dir)
    writer = None
    sink: Any = NullSink()
    if bag:
        writer = BagWriter(out_dir / "recon_bag", storage=bag_storage, overwrite=True).open()
        sink = BagSink(writer, frame_clouds=recon.cfg.output.frame_clouds)
    pub = ResultPublisher(sink, tf_frames if tf_frames is not None else OutputFramesConfig())
    gt: list[tuple[int, np.ndarray]] = []
    bar = tqdm(total=total, unit="frame", disable=not progress, dynamic_ncols=True, desc="replay")
    t0 = time.perf_counter()
    every = recon.cfg.output.map_every_n
    last_stamp: Optional[int] = None

    def publish_map(stamp_ns: int, products: bool = False) -> None:
        # nothing runs beside this loop: the reconstructor itself is the map job's source
        publish_map_job(pub.map_job(recon, stamp_ns, cloud=True, products=products), sink)

    def consume(step, stamp_ns: Optional[int] = None, final: bool = False) -> None:
        before = result.estimates
        pub.publish_result(recon, recon.finish(step), stamp_ns)
        result.estimates += len(step.estimates)
        if refinement is not None:
            refinement.add_keyframes(step.new_keyframes)
            if stamp_ns is not None and refinement.step(recon, stamp_ns, force=final):
                pub.publish_path(recon)  # the corrected keyframe poses
                publish_map(stamp_ns)
                return
        if result.estimates // every > before // every:
            publish_map(pub.last_stamp)

    try:
        try:
            for frame in frames:
                result.frames_in += 1
                T_gt = frame.extras.get("T_world_cam_gt") if frame.extras else None
                if T_gt is not None:
                    gt.append((frame.stamp_ns, np.asarray(T_gt, dtype=np.float64)))
                pub.observe_input(frame)
                step = recon.estimate(frame)
                pub.publish_pose(step, frame.stamp_ns)  # as recon_node: the pose before the map work
                consume(step, frame.stamp_ns)
                last_stamp = frame.stamp_ns
                bar.update(1)
                if progress and result.frames_in % 5 == 0:
                    st = recon.stats()
                    bar.set_postfix(kf=st["keyframes"], blocks=st["surface_blocks"],
                                    fps=f"{result.frames_in / (time.perf_counter() - t0):.1f}")
        except KeyboardInterrupt:
            result.interrupted = True
            log.warning("interrupted: writing what was processed (%d frames)", result.frames_in)
        consume(recon.flush(), last_stamp, final=True)
        result.seconds = time.perf_counter() - t0
        bar.close()
        if result.estimates:
            publish_map(pub.last_stamp, products=True)
    finally:
        if writer is not None:
            if result.estimates:
                result.files["bag"] = writer.close()
            else:
                writer.abort()
    result.tracking_states = dict(pub.tracking.frames)
    result.losses = [list(loss) for loss in pub.tracking.losses]
    result.files.update(recon.save(out_dir))
    if refinement is not None:
        result.files.update(_write_before(recon, refinement, out_dir))
    if gt:
        stamps = [s for s, _ in gt]
        result.files["gt_trajectory"] = write_tum(out_dir / "gt_trajectory.tum", stamps,
                                                  np.stack([T for _, T in gt]),
                                                  header="ground-truth camera poses from the input")
    result.files["config"] = write_text_atomic(out_dir / "config.yaml", dump_yaml(recon.cfg))
    result.stats = recon.stats()
    summary = {
        "frames_in": result.frames_in, "estimates": result.estimates, "seconds": round(result.seconds, 3),
        "fps": round(result.fps, 3), "interrupted": result.interrupted,
        "source_skips": _as_dict(source_skips), "reconstructor": result.stats,
        "tracking": {"frames": result.tracking_states, "losses": result.losses},
        "refinement": refinement.summary() if refinement is not None else None,
        "files": {k: str(v) for k, v in result.files.items()},
    }
    result.files["summary"] = write_text_atomic(out_dir / "summary.json",
                                                json.dumps(summary, indent=2, default=str) + "\n")
    return result
