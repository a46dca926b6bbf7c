"""Periodic refinement through the Reconstructor (the ``replay --refine`` wiring), end to end on
a short synthetic loop: global alignment must undo frontend drift and leave a drift-free
trajectory alone."""
from __future__ import annotations

import numpy as np
import pytest

from recon_ros.config import set_value
from recon_ros.geometry.transforms import invert_T, make_T, rotvec_to_matrix, transform_points, umeyama
from recon_ros.geometry.camera import PixelMap, backproject_depth
from recon_ros.io.synth import SynthConfig, iter_frames
from recon_ros.mapping.frame import Frame, FrameEstimate
from recon_ros.mapping.frontend import Frontend
from recon_ros.mapping.reconstructor import ReconConfig, Reconstructor
from recon_ros.refine.periodic import PeriodicRefinement
from recon_ros.refine.schema import RefineConfig, ScheduleConfig

from refine_synth import smooth_field


class DriftingGroundTruthFrontend(Frontend):
    """Test double of a metric odometry frontend (not a reconstruction): the ground-truth pose
    of every frame composed with an accumulating drift of the world frame (per frame a rotation
    of ``rot_deg`` about a fixed random axis and a translation of ``trans_m`` in a fixed random
    direction, plus noise), and the frame's sensor depth as its pointmap. ``depth_noise`` adds a
    smooth multiplicative depth error (amplitude, per frame) and ``pixel_noise`` a per-pixel one
    (relative std), the errors of a learned or low-quality depth prior."""

    name = "drifting_ground_truth"
    metric = True

    def __init__(self, rot_deg: float = 0.0, trans_m: float = 0.0, seed: int = 0, depth_noise: float = 0.0,
                 pixel_noise: float = 0.0) -> None:
        self.rot_deg, self.trans_m, self.seed = rot_deg, trans_m, seed
        self.depth_noise, self.pixel_noise = depth_noise, pixel_noise
        self.reset()

    def reset(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.rng = rng
        self.axis = rng.standard_normal(3)
        self.axis /= np.linalg.norm(self.axis)
        self.tdir = rng.standard_normal(3)
        self.tdir /= np.linalg.norm(self.tdir)
        self.W = np.eye(4)
        self.T0_inv = None
        self.n = 0

    def stats(self) -> dict:
        return {"frames": self.n}

    def step(self, frame: Frame) -> list[FrameEstimate]:
        T_gt = np.asarray(frame.extras["T_world_cam_gt"], np.float64)
        if self.T0_inv is None:
            self.T0_inv = invert_T(T_gt)
        else:
            rv = np.radians(self.rot_deg) * (self.axis + 0.3 * self.rng.standard_normal(3))
            tv = self.trans_m * (self.tdir + 0.3 * self.rng.standard_normal(3))
            self.W = self.W @ make_T(rotvec_to_matrix(rv), tv)
        T = self.W @ self.T0_inv @ T_gt
        depth = np.where(frame.depth > 0, frame.depth, np.nan).astype(np.float32)
        if self.depth_noise > 0 or self.pixel_noise > 0:
            h, w = depth.shape
            noise_rng = np.random.default_rng((self.seed, self.n))
            depth = depth * np.exp(smooth_field(noise_rng, h, w, self.depth_noise)
                                   + self.pixel_noise * noise_rng.standard_normal((h, w))).astype(np.float32)
        pts = transform_points(T, backproject_depth(depth, frame.K))
        self.n += 1
        h, w = depth.shape
        return [FrameEstimate(stamp_ns=frame.stamp_ns, index=frame.index, points=pts.astype(np.float32),
                              confidence=np.full((h, w), 5.0, np.float32), colors=frame.rgb, T_world_cam=T,
                              K_model=np.asarray(frame.K), pixel_map=PixelMap.identity(w, h),
                              valid=np.isfinite(pts[..., 2]), frame=frame)]


@pytest.fixture(scope="module")
def loop_frames() -> list[Frame]:
    """One turn around the synthetic room at 160x120, 40 frames (5 frames/s of stream time)."""
    cfg = SynthConfig(width=160, height=120, n_frames=40, fps=5.0, loops=1.0, depth_noise_m=0.005, seed=3)
    return list(iter_frames(cfg))


def _no_transients() -> RefineConfig:
    cfg = RefineConfig()
    set_value(cfg, "transients.enabled", False)
    return cfg


def _run(frames: list[Frame], frontend: Frontend) -> tuple[Reconstructor, PeriodicRefinement]:
    cfg = ReconConfig()
    set_value(cfg, "frontend.name", "rgbd")
    recon = Reconstructor(cfg, frontend=frontend)
    schedule = ScheduleConfig(align_period_s=2.0, refine_period_s=0.0, min_keyframes=3)
    refinement = PeriodicRefinement(_no_transients(), schedule, map_cfg=cfg.map)
    for frame in frames:
        step = recon.process(frame)
        refinement.add_keyframes(step.new_keyframes)
        refinement.step(recon, frame.stamp_ns)
    refinement.add_keyframes(recon.flush().new_keyframes)
    refinement.step(recon, frames[-1].stamp_ns, force=True)
    return recon, refinement


def _ate(traj: list, frames: list[Frame]) -> float:
    """ATE RMSE of camera centres after a rigid (SE(3)) fit onto the ground truth."""
    gt = {f.stamp_ns: np.asarray(f.extras["T_world_cam_gt"]) for f in frames}
    est = np.stack([T[:3, 3] for _, T in traj])
    ref = np.stack([gt[s][:3, 3] for s, _ in traj])
    S = umeyama(est, ref, with_scale=False)
    return float(np.sqrt(np.mean(np.sum((transform_points(S, est) - ref) ** 2, axis=1))))


def _loop_gap(traj: list, frames: list[Frame]) -> float:
    """Error of the last frame's position relative to the first one (the loop-closure gap)."""
    gt = {f.stamp_ns: np.asarray(f.extras["T_world_cam_gt"]) for f in frames}
    (s0, T0), (s1, T1) = traj[0], traj[-1]
    rel_est = invert_T(T0) @ T1
    rel_gt = invert_T(gt[s0]) @ gt[s1]
    return float(np.linalg.norm(rel_est[:3, 3] - rel_gt[:3, 3]))


@pytest.mark.slow
def test_periodic_alignment_removes_frontend_drift(loop_frames):
    recon, refinement = _run(loop_frames, DriftingGroundTruthFrontend(rot_deg=0.25, trans_m=0.006, seed=1))
    before = _ate(recon.trajectory(corrected=False), loop_frames)
    after = _ate(recon.trajectory(corrected=True), loop_frames)
    runs = [r for r in refinement.runs if r.stage == "align"]
    assert runs and any(r.changed for r in runs), refinement.summary()
    assert before > 0.05, before  # the double really drifts
    assert after <= 0.7 * before, (before, after, refinement.summary())
    # the loop is closed: a verified edge joins the last keyframes to the first ones ...
    kfs = recon.keyframes()
    head, tail = [k.id for k in kfs[:3]], [k.id for k in kfs[-3:]]
    closing = [e for (a, b), e in refinement.refiner.graph.edges.items() if a in head and b in tail and e is not None]
    assert closing, refinement.summary()
    # ... and the gap between the last and first frames shrinks to a fraction of the drifted one
    gap_before = _loop_gap(recon.trajectory(corrected=False), loop_frames)
    gap_after = _loop_gap(recon.trajectory(corrected=True), loop_frames)
    assert gap_before > 0.15, gap_before
    assert gap_after < 0.25 * gap_before, (gap_before, gap_after)
    # a metric frontend keeps metric keyframes: the corrections are rigid
    for kf in recon.keyframes():
        assert abs(np.linalg.det(kf.T_world_cam[:3, :3]) - 1.0) < 1e-6


@pytest.mark.slow
def test_periodic_alignment_leaves_a_good_trajectory_alone(loop_frames):
    recon, refinement = _run(loop_frames, DriftingGroundTruthFrontend(seed=1))
    before = _ate(recon.trajectory(corrected=False), loop_frames)
    after = _ate(recon.trajectory(corrected=True), loop_frames)
    assert before < 1e-6
    # the poses may only move by the sensor's depth noise (5 mm)
    assert after < 0.005, (before, after, refinement.summary())


def _abs_rel(kfs: list, frames: dict) -> np.ndarray:
    """Depth AbsRel of every keyframe against the synthetic ground-truth depth."""
    out = []
    for kf in kfs:
        gt = frames[kf.stamp_ns].extras["depth_gt"]
        ok = kf.valid & np.isfinite(kf.depth) & (gt > 0)
        out.append(np.mean(np.abs(kf.depth[ok] - gt[ok]) / gt[ok]))
    return np.array(out)


@pytest.mark.slow
def test_periodic_mvs_improves_a_noisy_depth_prior_and_leaves_untextured_pixels_alone():
    cfg = SynthConfig(width=160, height=120, n_frames=12, fps=5.0, loops=0.15, seed=3)
    frames = list(iter_frames(cfg))
    flat = (slice(40, 80), slice(60, 110))  # an untextured patch: no photo-consistency to be found there
    for f in frames:
        f.rgb[flat] = 128
    recon_cfg = ReconConfig()
    set_value(recon_cfg, "frontend.name", "rgbd")
    recon = Reconstructor(recon_cfg, frontend=DriftingGroundTruthFrontend(seed=1, depth_noise=0.06, pixel_noise=0.03))
    schedule = ScheduleConfig(align_period_s=0.0, refine_period_s=1000.0, min_keyframes=3)
    refinement = PeriodicRefinement(_no_transients(), schedule, map_cfg=recon_cfg.map)
    for frame in frames:
        refinement.add_keyframes(recon.process(frame).new_keyframes)
        refinement.step(recon, frame.stamp_ns)
    refinement.add_keyframes(recon.flush().new_keyframes)
    prior = {kf.id: kf.depth.copy() for kf in recon.keyframes()}
    by_stamp = {f.stamp_ns: f for f in frames}
    before = _abs_rel(recon.keyframes(), by_stamp)
    runs = refinement.step(recon, frames[-1].stamp_ns, force=True)
    assert [r.stage for r in runs] == ["refine"] and runs[0].changed > 0, refinement.summary()
    after = _abs_rel(recon.keyframes(), by_stamp)
    assert len(before) >= 6
    assert after.mean() <= 0.8 * before.mean(), (before, after)
    assert np.all(after < before), (before, after)
    inner = (slice(flat[0].start + 4, flat[0].stop - 4), slice(flat[1].start + 4, flat[1].stop - 4))
    for kf in recon.keyframes():
        np.testing.assert_array_equal(kf.depth[inner], prior[kf.id][inner])


@pytest.mark.slow
def test_user_masks_reach_every_refine_stage(loop_frames):
    """Frame masks are kept on the keyframes and handed to alignment, MVS and transient
    rejection (so masked pixels give no matches, no depth and no votes)."""
    frames = []
    for f in loop_frames[:12]:
        mask = np.zeros(f.rgb.shape[:2], bool)
        mask[:, :20] = True  # e.g. the robot's own arm at the image border
        frames.append(Frame(stamp_ns=f.stamp_ns, rgb=f.rgb, K=f.K, depth=f.depth, mask=mask, index=f.index,
                            extras=f.extras))
    cfg = ReconConfig()
    recon = Reconstructor(cfg, frontend=DriftingGroundTruthFrontend(0.0, 0.0))
    refinement = PeriodicRefinement(RefineConfig(), ScheduleConfig(min_keyframes=2), map_cfg=cfg.map)
    seen = {}
    for stage in ("align", "refine", "transients"):
        orig = getattr(refinement.refiner, stage)

        def spy(kfs, *a, _orig=orig, _stage=stage, **kw):
            seen[_stage] = kw.get("masks")
            return _orig(kfs, *a, **kw)
        setattr(refinement.refiner, stage, spy)
    for f in frames:
        refinement.add_keyframes(recon.process(f).new_keyframes)
    refinement.step(recon, frames[-1].stamp_ns, force=True)
    kfs = recon.keyframes()
    assert kfs and all(kf.mask is not None and kf.mask[:, :20].all() for kf in kfs)
    for stage in ("align", "refine", "transients"):
        assert seen.get(stage) is not None, stage
        assert set(seen[stage]) == {kf.id for kf in kfs}
        assert all(m[:, :20].all() and not m[:, 20:].any() for m in seen[stage].values())


def test_stage_schedule_periods_retries_and_clock_restarts():
    """One schedule for replay and recon_refiner: the first period starts at the first tick, a
    stage that ran (or could not start) waits a whole period, period 0 never runs, and a clock
    going backwards starts the periods anew."""
    from types import SimpleNamespace

    from recon_ros.refine.schedule import StageSchedule

    s = 1_000_000_000
    cfg = SimpleNamespace(align_period_s=2.0, refine_period_s=0.0)
    sched = StageSchedule(cfg)
    assert sched.due(10 * s) == []  # the first tick starts the periods
    assert sched.due(11 * s) == []
    assert sched.due(12 * s) == ["align"]
    assert sched.due(13 * s) == ["align"]  # still due until it is started (or tried)
    sched.ran("align", 13 * s)
    assert sched.due(14 * s) == [] and sched.due(15 * s) == ["align"]
    cfg.refine_period_s = 1.0  # dynamic: read at every call
    assert sched.due(16 * s) == ["align", "refine"]
    assert sched.due(3 * s) == []  # a bag restarted: new periods from here
    assert sched.due(4 * s) == ["refine"] and sched.due(5 * s) == ["align", "refine"]
