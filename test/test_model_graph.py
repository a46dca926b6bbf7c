"""CUDA-only paths of the step modes: CUDA graphs, torch.compile on the GPU, pinned buffers and
side-stream copies, torch preprocessing on the device, flat GPU memory. All ``gpu``-marked."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from recon_ros.model.config import RuntimeConfig, memory_from_dict, tiny_arch
from recon_ros.model.network import build_random_model
from recon_ros.model.preprocess import crop_resize_geometry, preprocess_rgb_torch
from recon_ros.model.runtime import HostCopier, HostUploader
from recon_ros.model.stream import Spann3RStream
from tiny_spann3r import load_tiny_model

pytestmark = pytest.mark.gpu


def _need_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.fail("marked gpu but CUDA is not available")


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


@pytest.fixture(scope="module")
def setup(spann3r_fixtures: Path):
    _need_cuda()
    model, summary = load_tiny_model(spann3r_fixtures)
    ref = dict(np.load(spann3r_fixtures / "scenario_b.npz"))
    return model, memory_from_dict(summary["scenario_b"]["memory"]), ref


def _run(model, mem_cfg, frames, mode, precision="fp32", stream=None):
    if stream is None:
        h, w = frames[0].shape[-2:]
        stream = Spann3RStream(model, RuntimeConfig(device="cuda", precision=precision, tf32=False, mode=mode),
                               mem_cfg, target_wh=(w, h))
    stream.reset()
    pts, ins = [], []
    for f in frames:
        r = stream.push(f)
        if r is not None:
            pts.append(r.final.pts3d)
            ins.append((r.insert.inserted, r.insert.pruned, r.insert.tokens_after, r.insert.wm_after,
                        r.insert.lm_after))
    pts.append(stream.flush().pts3d)
    return np.stack(pts), ins, stream


def test_graph_mode_captures_once_and_replays_the_static_step(setup):
    model, mem_cfg, ref = setup
    frames = list(torch.from_numpy(ref["img"]))
    static_pts, static_ins, _ = _run(model, mem_cfg, frames, "static")
    eager_pts, eager_ins, _ = _run(model, mem_cfg, frames, "eager")
    pts, ins, stream = _run(model, mem_cfg, frames, "graph")
    assert stream.mode == "graph" and stream.stepper.captures == 1
    assert ins == static_ins == eager_ins == [tuple(x) for x in zip(
        ref["add_inserted"], ref["add_pruned"], ref["add_tokens_after"], ref["add_wm_after"], ref["add_lm_after"])]
    assert _rel(pts, static_pts) <= 1e-6
    assert _rel(pts, eager_pts) <= 1e-5
    assert _rel(pts, ref["pts3d"]) <= 1e-4  # fp32 without TF32: close to the CPU reference
    # same input size in a new sequence: the graphs are replayed, not re-captured
    pts2, _, _ = _run(model, mem_cfg, frames, "graph", stream=stream)
    assert stream.stepper.captures == 1 and _rel(pts2, pts) <= 1e-6
    # a new input size: re-captured once
    small = [torch.nn.functional.interpolate(f[None], size=(32, 48))[0] for f in frames[:8]]
    _run(model, mem_cfg, small, "graph", stream=stream)
    assert stream.stepper.captures == 2


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_graph_mode_half_precision_follows_eager(setup, precision):
    model, mem_cfg, ref = setup
    frames = list(torch.from_numpy(ref["img"]))
    eager_pts, _, _ = _run(model, mem_cfg, frames, "eager", precision)
    pts, _, stream = _run(model, mem_cfg, frames, "graph", precision)
    assert stream.mode == "graph" and np.isfinite(pts).all()
    err = np.linalg.norm(pts - eager_pts, axis=-1) / np.linalg.norm(eager_pts, axis=-1).clip(1e-6)
    assert np.median(err) < 0.05


def test_compile_mode_on_cuda(setup, caplog):
    model, mem_cfg, ref = setup
    frames = list(torch.from_numpy(ref["img"][:8]))
    eager_pts, _, _ = _run(model, mem_cfg, frames, "eager")
    with caplog.at_level(logging.WARNING, logger="recon_ros.model.runtime"):
        pts, _, stream = _run(model, mem_cfg, frames, "compile")
    assert stream.mode == "compile", caplog.text
    assert _rel(pts, eager_pts) <= 1e-4


def test_host_copier_uses_pinned_buffers_on_a_side_stream():
    _need_cuda()
    dev = torch.device("cuda")
    copier, upload = HostCopier(dev), HostUploader(dev)
    src = torch.randn(64, 48, 3)
    x = upload(src)
    assert x.device.type == "cuda" and torch.equal(x.cpu(), src)
    y = x * 2
    copier.start({"y": y})
    z = (y + 1).sum()  # queued after the copy started
    out = copier.finish()
    assert copier._bufs["y"].is_pinned()
    np.testing.assert_array_equal(out["y"], (src * 2).numpy())
    assert torch.isfinite(z)


def test_torch_preprocessing_on_cuda_matches_cpu(spann3r_fixtures: Path):
    _need_cuda()
    raw = np.load(spann3r_fixtures / "scenario_a.npz")["raw_rgb"][0]
    g = crop_resize_geometry(raw.shape[0], raw.shape[1], (224, 224))
    img_c, rgb_c = preprocess_rgb_torch(torch.from_numpy(raw), g)
    img_g, rgb_g = preprocess_rgb_torch(torch.from_numpy(raw).cuda(), g)
    assert np.abs(rgb_g.cpu().numpy().astype(int) - rgb_c.numpy().astype(int)).max() <= 1
    assert float((img_g.cpu() - img_c).abs().max()) <= 2 / 255 + 1e-6


def test_gpu_memory_stays_flat_in_graph_mode():
    _need_cuda()
    model = build_random_model(tiny_arch(), seed=0)
    stream = Spann3RStream(model, RuntimeConfig(device="cuda", mode="graph"), target_wh=(64, 64))
    frames = [torch.rand(3, 64, 64) * 2 - 1 for _ in range(16)]
    for i in range(40):
        stream.push(frames[i % 16])
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for i in range(400):
        stream.push(frames[i % 16])
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before
    assert stream.stats().prunes > 0 and stream.stepper.captures == 1
