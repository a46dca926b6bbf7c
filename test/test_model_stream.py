"""The streaming API of Spann3R: raw and preprocessed input, flush, reset, stats, input errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixture_compare import assert_matches_reference

from recon_ros.errors import UserInputError
from recon_ros.model.checkpoint import extract_state_dict, load_state_dict_strict, read_checkpoint
from recon_ros.model.config import RuntimeConfig, arch_from_dict, memory_from_dict
from recon_ros.model.network import build_model
from recon_ros.model.stream import Spann3RStream, run_sequence


@pytest.fixture(scope="module")
def setup(spann3r_fixtures: Path):
    """Scenario B (the one with skips and prunes) and a tiny model with the fixture weights."""
    summary = json.loads((spann3r_fixtures / "summary.json").read_text())
    model = build_model(arch_from_dict(summary["config"]))
    load_state_dict_strict(model, extract_state_dict(read_checkpoint(spann3r_fixtures / "tiny_state_dict.pt")),
                           "tiny state dict")
    ref = dict(np.load(spann3r_fixtures / "scenario_b.npz"))
    return model, summary["scenario_b"], ref


def make_stream(setup, **kw) -> Spann3RStream:
    model, summary, ref = setup
    h, w = ref["img"].shape[-2:]
    return Spann3RStream(model, RuntimeConfig(device="cpu"), memory_from_dict(summary["memory"]),
                         target_wh=(w, h), **kw)


@pytest.mark.slow
def test_raw_rgb_frames_match_fixture(setup):
    _, _, ref = setup
    outs = run_sequence(make_stream(setup), list(ref["raw_rgb"]))
    pts = np.stack([o.pts3d for o in outs])
    assert_matches_reference("pts3d", pts, ref["pts3d"])
    assert_matches_reference("conf", np.stack([o.conf for o in outs]), ref["conf"])
    # the pixel map describes the reference crop/resize
    K = outs[0].pixel_map.K_to_model(np.array([[1, 0, ref["raw_rgb"].shape[2] // 2],
                                               [0, 1, ref["raw_rgb"].shape[1] // 2], [0, 0, 1.0]]))
    assert_matches_reference("K", K, ref["intrinsics_after_preprocess"][0], rtol=1e-6)
    # the colours are the model input mapped back to uint8
    np.testing.assert_array_equal(outs[3].rgb, np.round((ref["img"][3].transpose(1, 2, 0) + 1) * 127.5))


@pytest.mark.slow
def test_stats_follow_memory_traces(setup):
    _, summary, ref = setup
    stream = make_stream(setup)
    assert stream.push(torch.from_numpy(ref["img"][0])) is None
    st = stream.stats()
    assert (st.frames_processed, st.steps, st.memory_tokens) == (1, 0, 0)
    for t in range(1, ref["img"].shape[0]):
        res = stream.push(torch.from_numpy(ref["img"][t]))
        j = t - 1
        st = stream.stats()
        assert res.final.index == j and res.provisional.index == t
        assert res.insert.inserted == bool(ref["add_inserted"][j])
        assert st.frames_processed == t + 1 and st.steps == t
        assert st.memory_tokens == ref["add_tokens_after"][j]
        assert st.working_memory_frames == ref["add_wm_after"][j]
        assert st.long_term_tokens == ref["add_lm_after"][j]
        assert st.skips == int((~ref["add_inserted"][: j + 1]).sum())
        assert st.inserts == int(ref["add_inserted"][: j + 1].sum())
        assert st.prunes == int(ref["add_pruned"][: j + 1].sum())
        assert st.reads == j
    assert summary["frames"] == ref["img"].shape[0]


@pytest.mark.slow
def test_flush_reset_and_new_sequence(setup):
    _, _, ref = setup
    stream = make_stream(setup, provisional=False)
    imgs = [torch.from_numpy(x) for x in ref["img"]]
    results = [stream.push(x) for x in imgs[:5]]
    # the first frame alone gives nothing; each later frame finalises the one before it, and
    # without provisional outputs no head-2 result is returned
    assert results[0] is None and all(r is not None for r in results[1:])
    assert all(r.provisional is None for r in results[1:])
    finals = [r.final for r in results[1:]]
    assert [f.index for f in finals] == [0, 1, 2, 3] and not any(f.provisional for f in finals)
    last = stream.flush()
    assert last.index == 4 and not last.provisional
    np.testing.assert_array_equal(stream.flush().pts3d, last.pts3d)  # idempotent
    # frames 0..4 alone: frame 4's final output is head 2 of the step (3, 4), which the fixture
    # does not store for a 5-frame sequence, but frames 0..3 must equal the long run's outputs
    assert_matches_reference("pts3d[:4]", np.stack([f.pts3d for f in finals]), ref["pts3d"][:4])
    assert_matches_reference("head2_pts3d[3]", last.pts3d, ref["head2_pts3d"][3])
    # pushing after flush starts a new sequence with a fresh memory
    assert stream.push(imgs[0]) is None
    assert stream.stats().memory_tokens == 0 and stream.stats().frames_processed == 1
    r = stream.push(imgs[1])
    assert r.provisional is None and r.final.index == 0
    assert_matches_reference("pts3d[0]", r.final.pts3d, ref["pts3d"][0])
    # reset mid-sequence forgets everything
    stream.push(imgs[2])
    stream.reset()
    assert stream.stats().memory_tokens == 0 and stream.stats().frames_processed == 0
    outs = run_sequence(stream, imgs)
    assert_matches_reference("pts3d after reset", np.stack([o.pts3d for o in outs]), ref["pts3d"])


def test_single_frame_flush_gives_nothing(setup):
    _, _, ref = setup
    stream = make_stream(setup)
    assert stream.push(ref["raw_rgb"][0]) is None
    assert stream.flush() is None


@pytest.mark.parametrize("bad, fragment", [
    (torch.zeros(3, 64, 96, dtype=torch.float64), "float32"),
    (torch.zeros(4, 64, 96), "3 channels"),
    (torch.zeros(64, 96, 3), "channels last"),
    (torch.zeros(2, 3, 64, 96), "[3,H,W]"),
    (torch.zeros(3, 64, 90), "multiples of 16"),
    (torch.zeros(3, 96, 64), "portrait"),
    (torch.full((3, 64, 96), 255.0), "[-1, 1]"),
    (torch.full((3, 64, 96), float("nan")), "NaN"),
    (np.zeros((64, 96, 3), np.float64), "float32"),
    (np.zeros((64, 96, 4), np.uint8), "3 channels"),
    (np.zeros((3, 64, 96), np.uint8), "channel-first"),
    (np.zeros((64, 96), np.uint8), "H x W x 3"),
    (torch.zeros(3, 64, 96, dtype=torch.uint8), "ambiguous"),
    ([[0.0]], "torch tensor or numpy array"),
])
def test_bad_inputs_are_user_errors(setup, bad, fragment):
    stream = make_stream(setup)
    with pytest.raises(UserInputError) as exc:
        stream.push(bad)
    assert fragment in str(exc.value)
    assert stream.stats().frames_processed == 0


def test_size_change_mid_stream(setup):
    _, _, ref = setup
    stream = make_stream(setup)
    stream.push(torch.from_numpy(ref["img"][0]))
    with pytest.raises(UserInputError, match="changed"):
        stream.push(torch.zeros(3, 64, 128))
    raw = make_stream(setup)
    raw.push(ref["raw_rgb"][0])
    with pytest.raises(UserInputError, match="changed"):
        raw.push(np.zeros((120, 180, 3), np.uint8))
    assert raw.stats().frames_processed == 1
