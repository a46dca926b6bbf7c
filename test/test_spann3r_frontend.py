"""The spann3r frontend: model outputs -> intrinsics, poses, estimates, through the Reconstructor."""
from __future__ import annotations

import numpy as np
import pytest

from recon_ros.config import set_value
from recon_ros.geometry.camera import PixelMap, backproject_depth
from recon_ros.geometry.transforms import invert_T, rotation_angle_deg, transform_points
from recon_ros.io.synth import SynthConfig, iter_frames
from recon_ros.mapping.reconstructor import ReconConfig, Reconstructor
from recon_ros.mapping.spann3r import Spann3RFrontend
from recon_ros.model.stream import FrameOutput, StepResult


@pytest.fixture(scope="module")
def frames():
    cfg = SynthConfig(width=160, height=120, n_frames=8, loops=0.06)
    return list(iter_frames(cfg))


@pytest.fixture(scope="module")
def tiny_cfg(spann3r_fixtures):
    cfg = ReconConfig()
    set_value(cfg, "frontend.name", "spann3r")
    set_value(cfg, "model.checkpoint", str(spann3r_fixtures / "tiny_state_dict.pt"))
    set_value(cfg, "model.size", "tiny")
    set_value(cfg, "model.image_size", 64)
    set_value(cfg, "model.runtime.device", "cpu")
    return cfg


@pytest.mark.slow
def test_tiny_weights_run_every_stage(frames, tiny_cfg, spann3r_fixtures):
    """Random weights: meaningless geometry, but shapes, frames and bookkeeping must be right.
    The architecture is read from the fixture's summary.json, the weights loaded strictly."""
    import json

    from recon_ros.model.checkpoint import load_model
    from recon_ros.model.config import arch_from_dict
    arch = arch_from_dict(json.loads((spann3r_fixtures / "summary.json").read_text())["config"])
    recon = Reconstructor(tiny_cfg, model=load_model(tiny_cfg.model, arch=arch))
    got = []
    for f in frames:
        res = recon.process(f)
        assert res.skipped is None
        got += res.estimates
    assert len(got) == len(frames) - 1  # one frame of latency
    got += recon.flush().estimates
    assert [e.stamp_ns for e in got] == [f.stamp_ns for f in frames]
    for e in got:
        assert e.points.shape == (64, 64, 3) and e.confidence.shape == (64, 64)
        assert e.colors.shape == (64, 64, 3) and e.colors.dtype == np.uint8
        assert e.K_model[0, 0] > 0 and e.pixel_map.model_size == (64, 64)
        assert e.pixel_map.image_size == (160, 120)
        np.testing.assert_allclose(e.T_world_cam[3], [0, 0, 0, 1])
    np.testing.assert_allclose(got[0].T_world_cam, np.eye(4))  # the first camera is the world
    st = recon.stats()
    assert st["frames"] == len(frames) and st["frontend_memory_tokens"] > 0
    assert len(recon.trajectory()) == len(frames)


def test_missing_checkpoint_is_a_clear_error():
    from recon_ros.errors import UserInputError
    cfg = ReconConfig()
    with pytest.raises(UserInputError, match="checkpoint"):
        Reconstructor(cfg)
    set_value(cfg, "model.checkpoint", "/nonexistent/spann3r.pth")
    with pytest.raises(UserInputError, match="spann3r.pth"):
        Reconstructor(cfg)


class KnownCameraStream:
    """Test double for Spann3RStream: returns the true pointmap of each frame in the first
    camera's frame (from the synthetic depth and poses) with the same one-frame latency, so
    the frontend's camera recovery can be checked against the truth."""

    def __init__(self, frames, size=(64, 48)):
        self.frames = {f.stamp_ns: f for f in frames}
        self.order = [f.stamp_ns for f in frames]
        self.size = size
        self.reset()

    def reset(self):
        self.i = 0
        self.prev = None

    def stats(self):
        from recon_ros.model.stream import StreamStats
        return StreamStats(self.i, max(0, self.i - 1), 0, 0, 0, 0, 0, 0, 0)

    def _output(self, index, provisional):
        f = self.frames[self.order[index]]
        w, h = self.size
        s = w / f.width
        pm = PixelMap(s, s, 0.0, 0.0, (f.width, f.height), (w, h))
        K = pm.K_to_model(f.K)
        import cv2
        depth = cv2.resize(f.extras["depth_gt"], (w, h), interpolation=cv2.INTER_NEAREST)
        T0 = self.frames[self.order[0]].extras["T_world_cam_gt"]
        T = invert_T(T0) @ f.extras["T_world_cam_gt"]
        pts = transform_points(T, backproject_depth(depth, K))
        conf = np.full((h, w), 3.0, np.float32)
        rgb = cv2.resize(f.rgb, (w, h), interpolation=cv2.INTER_AREA)
        return FrameOutput(index, pts, conf, rgb, pm, provisional)

    def push(self, rgb):
        index = self.i
        self.i += 1
        if index == 0:
            return None
        return StepResult(final=self._output(index - 1, False), provisional=None, insert=None)

    def flush(self):
        return self._output(self.i - 1, False) if self.i > 1 else None


def test_camera_recovery_from_pointmaps_with_known_camera(frames):
    cfg = ReconConfig()
    set_value(cfg, "frontend.use_camera_info", False)  # estimate the focal from frame 0
    frontend = Spann3RFrontend(None, cfg.model, cfg.frontend, stream=KnownCameraStream(frames))
    ests = []
    for f in frames:
        ests += frontend.step(f)
    ests += frontend.flush()
    assert len(ests) == len(frames)
    K_true = PixelMap(64 / 160, 64 / 160, 0, 0, (160, 120), (64, 48)).K_to_model(frames[0].K)
    # focal by Weiszfeld with the principal point at the image centre
    assert ests[0].K_model[0, 0] == pytest.approx(K_true[0, 0], rel=0.02)
    T0_inv = invert_T(frames[0].extras["T_world_cam_gt"])
    for e, f in zip(ests, frames):
        G = T0_inv @ f.extras["T_world_cam_gt"]
        assert np.linalg.norm(e.T_world_cam[:3, 3] - G[:3, 3]) < 0.02
        assert rotation_angle_deg(e.T_world_cam[:3, :3].T @ G[:3, :3]) < 1.0
        assert e.tracking_ok
