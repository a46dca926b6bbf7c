"""The Refiner facade end to end, its configuration and its input checks."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from recon_ros.config import dump_yaml, from_dict, iter_params, load_yaml
from recon_ros.errors import DataFormatError, UserInputError
from recon_ros.refine.schema import RefineConfig
from recon_ros.refine.stages import Refiner

from refine_synth import BoxRoom, DriftingFrontendDouble, ate_rmse, circle_poses, make_keyframes


@pytest.fixture(scope="module")
def sequence():
    truth = make_keyframes(BoxRoom(seed=1), circle_poses(16, turns=0.7))
    drifted = DriftingFrontendDouble(rot_deg=0.5, trans_m=0.01, log_scale=0.005, depth_noise=0.06,
                                     pixel_noise=0.02, seed=2).apply(truth)
    return truth, drifted


@pytest.mark.slow
def test_refiner_align_refine_transients(sequence):
    truth, drifted = sequence
    refiner = Refiner()
    res = refiner.align(drifted)
    gt = [k.T_world_cam for k in truth]
    assert res.changed, res.reason
    assert ate_rmse([res.poses[k.id] for k in drifted], gt) < ate_rmse([k.T_world_cam for k in drifted], gt)
    # corrected poses are what the later stages use
    cp = refiner.corrected_poses(drifted)
    for kf in drifted:
        np.testing.assert_allclose(cp[kf.id], res.poses[kf.id], atol=1e-12)
    depths = refiner.refine(drifted)
    assert set(depths) == {k.id for k in drifted}
    gains = []
    for kt, kn in zip(truth, drifted):
        r = depths[kn.id]
        if r.replaced.sum() < 50:
            continue
        s = np.nanmedian(kn.depth / kt.depth)  # the keyframe's own (drifted) scale
        sel = r.replaced
        prior = np.mean(np.abs(kn.depth[sel] / s - kt.depth[sel]) / kt.depth[sel])
        refined = np.mean(np.abs(r.depth[sel] / s - kt.depth[sel]) / kt.depth[sel])
        gains.append(refined / prior)
    assert len(gains) >= len(drifted) // 2
    assert np.median(gains) < 0.7
    drop = refiner.transients(drifted)
    for kf in drifted:
        assert drop[kf.id].shape == kf.valid.shape and drop[kf.id].dtype == bool
    assert np.mean([d.mean() for d in drop.values()]) < 0.05


@pytest.mark.slow
def test_new_keyframes_start_from_the_parent_correction(sequence):
    _, drifted = sequence
    refiner = Refiner()
    refiner.align(drifted[:10])
    init = refiner.initial_corrections(drifted)
    for kf in drifted[10:]:
        np.testing.assert_array_equal(init[kf.id], refiner.corrections[drifted[9].id])
    refiner.forget([k.id for k in drifted[:5]])
    assert set(refiner.corrections) == {k.id for k in drifted[:5]}


def test_bad_inputs_are_reported(sequence):
    _, drifted = sequence
    refiner = Refiner()
    dup = dataclasses.replace(drifted[1], id=drifted[0].id)
    with pytest.raises(UserInputError, match="unique"):
        refiner.align([drifted[0], dup])
    small = dataclasses.replace(drifted[1], points_cam=drifted[1].points_cam[:50, :50],
                                valid=drifted[1].valid[:50, :50])
    with pytest.raises(DataFormatError, match="one size"):
        refiner.transients([drifted[0], small])
    bad_pose = dataclasses.replace(drifted[1], T_world_cam=np.full((4, 4), np.nan))
    with pytest.raises(DataFormatError, match="T_world_cam"):
        refiner.refine([drifted[0], bad_pose])
    with pytest.raises(DataFormatError, match="mask"):
        refiner.transients(drifted[:3], masks={drifted[0].id: np.zeros((5, 5), bool)})
    one = refiner.align(drifted[:1])
    assert not one.changed and one.reason


def test_config_schema_roundtrip(tmp_path):
    text = dump_yaml(RefineConfig)
    path = tmp_path / "refine.yaml"
    path.write_text(text)
    cfg = load_yaml(RefineConfig, path)
    assert cfg == RefineConfig()
    names = [p.name for p in iter_params(RefineConfig)]
    assert "align.window" in names and "mvs.num_hypotheses" in names and "transients.percentile" in names
    cfg = from_dict(RefineConfig, {"align": {"window": 20}, "mvs": {"device": "cpu"}})
    assert cfg.align.window == 20
    with pytest.raises(UserInputError):
        from_dict(RefineConfig, {"mvs": {"num_hypotheses": 1}})
    with pytest.raises(UserInputError):
        from_dict(RefineConfig, {"align": {"windw": 3}})
