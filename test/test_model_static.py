"""The fixed-capacity memory and the static step modes reproduce the dynamic (eager) memory loop.

Compared against :class:`SpatialMemory` (itself checked against the reference fixtures in
test_model_parity.py): on every fixture scenario through the whole network, and on random
sequences with small budgets (many skips and prunes) at the memory level. Tolerances are
relative to the scale of each tensor (max |value|); the static memory is designed to be bit
for bit identical on CPU, 1e-6 of scale leaves room for other BLAS builds.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from torch import nn

from recon_ros.model.config import MemoryConfig, RuntimeConfig, memory_from_dict
from recon_ros.model.memory import SpatialMemory
from recon_ros.model.network import PairOutput
from recon_ros.model.static_memory import StaticMemory, prune_sizes, static_capacity
from recon_ros.model.stream import Spann3RStream
from tiny_spann3r import load_tiny_model

REL = 1e-6  # of each tensor's scale


def assert_rel(name: str, got, want, rel: float = REL) -> None:
    got = torch.as_tensor(np.asarray(got, dtype=np.float64))
    want = torch.as_tensor(np.asarray(want, dtype=np.float64))
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    scale = float(want.abs().max()) if want.numel() else 0.0
    err = float((got - want).abs().max()) if want.numel() else 0.0
    assert err <= rel * max(scale, 1e-30), f"{name}: max error {err:.3g} > {rel:g} x scale {scale:.3g}"


# ----------------------------------------------------------------------------- fixtures
def _scenarios(fixture_dir: Path) -> List[str]:
    summary = json.loads((fixture_dir / "summary.json").read_text())
    return sorted(k for k in summary if k.startswith("scenario_") and (fixture_dir / f"{k}.npz").is_file())


def _run(model, summary: dict, img: torch.Tensor, mode: str) -> Dict:
    steps: List[PairOutput] = []
    stream = Spann3RStream(model, RuntimeConfig(device="cpu", mode=mode), memory_from_dict(summary["memory"]),
                           target_wh=(img.shape[-1], img.shape[-2]), on_step=lambda i, o: steps.append(o))
    finals, stats = [], []
    for t in range(img.shape[0]):
        res = stream.push(img[t])
        if res is not None:
            finals.append(res.final)
            stats.append(stream.stats())
    finals.append(stream.flush())
    return dict(steps=steps, finals=finals, stats=stats, state=[t.clone() for t in stream.memory.state()],
                mode=stream.mode)


@pytest.fixture(scope="module")
def fixture_runs(spann3r_fixtures: Path):
    """Eager and static runs of every fixture scenario with the fixture's tiny model."""
    model, summary = load_tiny_model(spann3r_fixtures)
    names = _scenarios(spann3r_fixtures)
    assert {"scenario_a", "scenario_b"} <= set(names)
    runs = {}
    for name in names:
        img = torch.from_numpy(np.load(spann3r_fixtures / f"{name}.npz")["img"])
        runs[name] = {mode: _run(model, summary[name], img, mode) for mode in ("eager", "static")}
    return runs


def test_static_mode_reproduces_eager_on_every_fixture(fixture_runs):
    for name, runs in fixture_runs.items():
        e, s = runs["eager"], runs["static"]
        assert s["mode"] == "static"
        assert len(e["steps"]) == len(s["steps"]) > 0
        for j, (a, b) in enumerate(zip(s["steps"], e["steps"])):
            ia, ib = a.insert, b.insert
            assert (ia.inserted, ia.pruned, ia.tokens_before_prune, ia.tokens_after, ia.wm_after, ia.lm_after) == \
                (ib.inserted, ib.pruned, ib.tokens_before_prune, ib.tokens_after, ib.wm_after, ib.lm_after), \
                f"{name} step {j}: memory trace differs: {ia} vs {ib}"
            if j == 0:
                assert np.isnan(ia.sim_max) and np.isnan(ib.sim_max)
            else:
                assert abs(ia.sim_max - ib.sim_max) <= REL, f"{name} step {j}: similarity"
            if ib.pruned:  # ages right after the prune, in bank order
                np.testing.assert_array_equal(ia.counts_after_prune.numpy(), ib.counts_after_prune.numpy())
            assert (a.read is None) == (b.read is None)
            if b.read is not None:
                assert a.read.mem_tokens == b.read.mem_tokens
                assert_rel(f"{name} step {j} read", a.read.out, b.read.out)
                assert_rel(f"{name} step {j} weights", a.read.weights, b.read.weights)
                assert_rel(f"{name} step {j} accumulated", a.read.accumulated, b.read.accumulated)
            for attr in ("dec_in1", "feat_k1", "feat_k2", "cur_v"):
                assert_rel(f"{name} step {j} {attr}", getattr(a, attr), getattr(b, attr))
        assert_rel(f"{name} pts3d", np.stack([f.pts3d for f in s["finals"]]), np.stack([f.pts3d for f in e["finals"]]))
        assert_rel(f"{name} conf", np.stack([f.conf for f in s["finals"]]), np.stack([f.conf for f in e["finals"]]))
        assert s["stats"] == e["stats"]
        for got, want, what in zip(s["state"], e["state"], "KVAN"):
            assert_rel(f"{name} final memory {what}", got, want)


def test_fixture_runs_exercise_skips_and_prunes(fixture_runs):
    """The equivalence above covers skips and prunes (scenario_b has both)."""
    ins = [s.insert for s in fixture_runs["scenario_b"]["static"]["steps"]]
    assert sum(not i.inserted for i in ins) >= 1 and sum(i.pruned for i in ins) >= 2


# ----------------------------------------------------------------------------- random sequences
def _norms(dim: int, seed: int) -> List[nn.LayerNorm]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(3):
        ln = nn.LayerNorm(dim)
        with torch.no_grad():
            ln.weight.copy_(1 + 0.3 * torch.randn(dim, generator=gen))
            ln.bias.copy_(0.3 * torch.randn(dim, generator=gen))
        out.append(ln)
    return out


CASES = [  # long_mem_size, work_mem_size, tokens per frame, attention threshold
    (20, 2, 4, 5e-4),
    (24, 2, 4, 0.05),  # budget a multiple of P: both prunes at the capacity
    (9, 1, 3, 0.2),
    (40, 3, 5, 0.0),
    (12, 2, 5, 0.6),  # large threshold: rows fall entirely below it
]


@pytest.mark.parametrize("budget,wmax,p,thr", CASES)
def test_random_sequences_match_dynamic_memory(budget, wmax, p, thr):
    cfg = MemoryConfig(long_mem_size=budget, work_mem_size=wmax, attn_thresh=thr, sim_thresh=0.95)
    c = 8
    gen = torch.Generator().manual_seed(budget * 100 + p)
    norms = _norms(c, budget)
    dyn, sta = SpatialMemory(cfg), StaticMemory(cfg, p, c)
    assert sta.capacity == static_capacity(cfg, p) == budget + (wmax + 1) * p
    keys = []
    with torch.no_grad():
        for t in range(80):
            if t > 0:  # read, as the loop does before every insert but the first
                q = torch.randn(1, p, c, generator=gen)
                rd, rs = dyn.read(q, *norms), sta.read(q, *norms)
                n = rd.mem_tokens
                assert int(rs.num_tokens) == n
                assert_rel(f"read {t}", rs.out, rd.out)
                assert_rel(f"weights {t}", rs.weights[..., :n], rd.weights)
                assert float(rs.weights[..., n:].abs().sum()) == 0.0
                assert_rel(f"accumulated {t}", rs.accumulated[:, :n], rd.accumulated)
            if keys and t % 5 in (2, 3):  # an exact repeat (skipped) or a near repeat of a recent frame
                k = keys[-1] + (0 if t % 5 == 2 else 0.3) * torch.randn(1, p, c, generator=gen)
            else:
                k = torch.randn(1, p, c, generator=gen)
            keys.append(k)
            v = torch.randn(1, p, c, generator=gen)
            want = dyn.insert(k, v)
            sta.insert(k, v)
            got = sta.insert_result()
            assert (got.inserted, got.pruned, got.tokens_before_prune, got.tokens_after, got.wm_after,
                    got.lm_after) == (want.inserted, want.pruned, want.tokens_before_prune, want.tokens_after,
                                      want.wm_after, want.lm_after), f"insert {t}: {got} vs {want}"
            assert (np.isnan(got.sim_max) and np.isnan(want.sim_max)) or abs(got.sim_max - want.sim_max) <= REL
            for g, w, what in zip(sta.state(), dyn.state(), "KVAN"):  # same bank, same order
                assert_rel(f"insert {t} bank {what}", g, w)
    counts = sta.counts()
    assert counts["skips"] == dyn.skips >= 5 and counts["prunes"] == dyn.prunes >= 5
    assert counts["inserts"] == dyn.inserts and counts["reads"] == dyn.reads
    assert counts["nan_rows_guarded"] == dyn.nan_rows_guarded
    if thr >= 0.5:
        assert dyn.nan_rows_guarded > 0  # the guard was exercised


def test_prune_sizes_are_where_the_dynamic_memory_prunes():
    cfg = MemoryConfig(long_mem_size=4000, work_mem_size=5)
    assert prune_sizes(cfg, 196) == (5096, 5176)
    cfg_b = MemoryConfig(long_mem_size=192, work_mem_size=2)
    assert prune_sizes(cfg_b, 24) == (264, 264)


# ----------------------------------------------------------------------------- no host synchronisation
class _HostSyncError(AssertionError):
    pass


@contextlib.contextmanager
def forbid_host_reads():
    """Make every tensor-to-Python conversion raise (the static step must not need any)."""
    names = ["__bool__", "item", "__int__", "__float__", "__index__", "tolist", "numpy"]
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def boom(self, *a, **k):
        raise _HostSyncError("host read of a tensor inside the static step")
    try:
        for n in names:
            setattr(torch.Tensor, n, boom)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)


def test_static_memory_ops_never_read_tensors_on_the_host():
    cfg = MemoryConfig(long_mem_size=10, work_mem_size=2, attn_thresh=0.05)
    mem = StaticMemory(cfg, 3, 8)
    norms = _norms(8, 0)
    with torch.no_grad(), forbid_host_reads():
        for t in range(12):
            k = torch.randn(1, 3, 8)
            if t:
                mem.read(torch.randn(1, 3, 8), *norms)
            mem.insert(k, k)
            mem.insert(k, k)  # a skip
    assert mem.counts()["prunes"] > 0 and mem.counts()["skips"] > 0
    # the check itself works: the dynamic memory does read the device
    with torch.no_grad(), forbid_host_reads(), pytest.raises(_HostSyncError):
        dyn = SpatialMemory(cfg)
        dyn.insert(torch.randn(1, 3, 8), torch.randn(1, 3, 8))
        dyn.insert(torch.randn(1, 3, 8), torch.randn(1, 3, 8))


def test_static_pair_step_never_reads_tensors_on_the_host():
    from recon_ros.model.config import tiny_arch
    from recon_ros.model.network import build_random_model
    from recon_ros.model.precision import resolve_precision
    from recon_ros.model.runtime import StaticStepper
    model = build_random_model(tiny_arch(), seed=3)
    st = StaticStepper(model, MemoryConfig(long_mem_size=12, work_mem_size=1), resolve_precision(
        RuntimeConfig(device="cpu")), "static")
    frames = [torch.rand(1, 3, 32, 32) * 2 - 1 for _ in range(8)]
    with torch.no_grad():
        st.start(frames[0])
        for img in frames[1:]:
            st.set_input(img)
            with forbid_host_reads():
                front = st.front()
                st.back()
                st.carry(front)
    assert st.memory.counts()["prunes"] > 0


# ----------------------------------------------------------------------------- modes and fallbacks
@pytest.fixture(scope="module")
def tiny_setup(spann3r_fixtures: Path):
    model, summary = load_tiny_model(spann3r_fixtures)
    ref = dict(np.load(spann3r_fixtures / "scenario_b.npz"))
    return model, memory_from_dict(summary["scenario_b"]["memory"]), ref


def _pts(model, mem_cfg, frames, **runtime) -> np.ndarray:
    from recon_ros.model.stream import run_sequence
    h, w = frames[0].shape[-2:]
    stream = Spann3RStream(model, RuntimeConfig(device="cpu", **runtime), mem_cfg, target_wh=(w, h))
    return np.stack([o.pts3d for o in run_sequence(stream, frames)]), stream


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback without CUDA")
def test_graph_mode_without_cuda_falls_back_to_static(tiny_setup, caplog):
    model, mem_cfg, ref = tiny_setup
    frames = list(torch.from_numpy(ref["img"][:6]))
    with caplog.at_level(logging.INFO, logger="recon_ros.model.runtime"):
        pts, stream = _pts(model, mem_cfg, frames, mode="graph")
    assert stream.mode == "static" and "needs CUDA" in caplog.text
    eager, _ = _pts(model, mem_cfg, frames, mode="eager")
    assert_rel("graph->static pts3d", pts, eager)


def test_compile_failure_falls_back_to_static(tiny_setup, caplog, monkeypatch):
    """A compiler that fails (test double: torch.compile replaced by a wrapper that raises)."""
    model, mem_cfg, ref = tiny_setup

    def failing_compile(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("no C++ compiler found")
        return run
    monkeypatch.setattr(torch, "compile", failing_compile)
    frames = list(torch.from_numpy(ref["img"][:5]))
    with caplog.at_level(logging.WARNING, logger="recon_ros.model.runtime"):
        pts, stream = _pts(model, mem_cfg, frames, mode="compile")
    assert stream.mode == "static" and "torch.compile failed" in caplog.text and "C++ compiler" in caplog.text
    eager, _ = _pts(model, mem_cfg, frames, mode="eager")
    assert_rel("compile->static pts3d", pts, eager)


def test_static_stream_reuses_buffers_across_sequences_and_resizes(tiny_setup):
    model, mem_cfg, ref = tiny_setup
    frames = list(torch.from_numpy(ref["img"][:7]))
    eager, _ = _pts(model, mem_cfg, frames, mode="eager")
    h, w = frames[0].shape[-2:]
    stream = Spann3RStream(model, RuntimeConfig(device="cpu", mode="static"), mem_cfg, target_wh=(w, h))
    from recon_ros.model.stream import run_sequence
    run_sequence(stream, frames)
    mem = stream.memory
    second = np.stack([o.pts3d for o in run_sequence(stream, frames)])  # same size: same buffers, fresh state
    assert stream.memory is mem
    assert_rel("second sequence", second, eager)
    small = [torch.nn.functional.interpolate(f[None], size=(32, 48))[0] for f in frames[:4]]
    stream.reset()
    run_sequence(stream, small)
    assert stream.memory is not mem and stream.memory.tokens_per_frame == 2 * 3
    small_eager, _ = _pts(model, mem_cfg, small, mode="eager")
    assert_rel("resized sequence", np.stack([o.pts3d for o in run_sequence(stream, small)]), small_eager)


def test_static_stats_follow_the_trace(tiny_setup):
    model, mem_cfg, ref = tiny_setup
    frames = list(torch.from_numpy(ref["img"]))
    h, w = frames[0].shape[-2:]
    streams = {m: Spann3RStream(model, RuntimeConfig(device="cpu", mode=m), mem_cfg, target_wh=(w, h))
               for m in ("eager", "static")}
    for f in frames:
        results = {m: s.push(f) for m, s in streams.items()}
        assert streams["eager"].stats() == streams["static"].stats()
        if results["eager"] is not None:
            assert results["eager"].insert.inserted == results["static"].insert.inserted
    assert streams["static"].stats().prunes == 2


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("RECON_TEST_COMPILE"),
                    reason="compiles C++ for several minutes; run with RECON_TEST_COMPILE=1")
def test_compile_mode_reproduces_eager_through_prunes(tiny_setup):
    """torch.compile on CPU: same traces as eager through skips and prunes, outputs within float
    rounding (an earlier compiled insert corrupted the bank at prunes)."""
    model, mem_cfg, ref = tiny_setup
    frames = list(torch.from_numpy(ref["img"]))
    eager, e_stream = _pts(model, mem_cfg, frames, mode="eager")
    pts, stream = _pts(model, mem_cfg, frames, mode="compile")
    assert stream.mode == "compile"
    assert stream.stats() == e_stream.stats() and stream.stats().prunes == 2
    assert_rel("compile pts3d", pts, eager, rel=1e-4)
