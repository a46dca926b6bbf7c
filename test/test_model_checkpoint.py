"""Full-size key layout (built on the meta device) and checkpoint loading with clear errors."""
from __future__ import annotations

import argparse
import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from fixture_compare import assert_matches_reference

from recon_ros.errors import CheckpointError
from recon_ros.model.checkpoint import (extract_state_dict, load_dust3r_weights, load_model,
                                        load_spann3r_weights, read_checkpoint)
from recon_ros.model.config import ModelConfig, arch_from_dict, full_arch
from recon_ros.model.network import build_model


@pytest.fixture(scope="module")
def tiny(spann3r_fixtures: Path):
    summary = json.loads((spann3r_fixtures / "summary.json").read_text())
    sd = torch.load(spann3r_fixtures / "tiny_state_dict.pt", map_location="cpu", weights_only=True)
    return arch_from_dict(summary["config"]), sd, summary


def test_full_model_keys_and_shapes_on_meta(spann3r_fixtures: Path):
    ref = json.loads((spann3r_fixtures / "full_model_keys.json").read_text())
    model = build_model(full_arch(), device="meta")
    sd = model.state_dict()
    assert all(t.is_meta for t in sd.values())
    got = [(k, list(v.shape)) for k, v in sd.items()]
    want = [(k, list(v)) for k, v in ref["keys"].items()]
    assert len(got) == ref["num_keys"]
    assert got == want  # same keys, shapes and order
    unique = sum(p.numel() for p in model.parameters())
    assert unique == ref["num_parameters_unique"]
    assert sum(v.numel() for v in sd.values()) == ref["state_dict_numel_with_aliases"]
    for alias, target in ref["aliased_keys"].items():
        assert model.get_parameter(alias) is model.get_parameter(target)


def test_tiny_keys_match_summary(tiny):
    arch, sd, summary = tiny
    model = build_model(arch, device="meta")
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == \
        [(k, list(v)) for k, v in summary["tiny_model"]["keys"].items()]
    assert sum(p.numel() for p in model.parameters()) == summary["tiny_model"]["num_parameters_unique"]


def _write(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def test_safe_loader_accepts_namespace_args(tmp_path, tiny):
    arch, sd, _ = tiny
    path = _write(tmp_path / "spann3r.pth", {"model": sd, "args": argparse.Namespace(lr=5e-5, model="Spann3R()"),
                                            "epoch": 3})
    model = build_model(arch)
    load_spann3r_weights(model, path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    # the aliased DPT convolutions are one tensor
    dpt = model.dust3r.downstream_head1.dpt
    assert dpt.scratch.layer_rn[0] is dpt.scratch.layer1_rn


def test_unsafe_objects_need_explicit_opt_in(tmp_path, tiny, caplog):
    arch, sd, _ = tiny
    path = _write(tmp_path / "odd.pth", {"model": sd, "extra": _NotAllowListed()})
    with pytest.raises(CheckpointError, match="allow_unsafe"):
        load_spann3r_weights(build_model(arch), path)
    model = build_model(arch)
    with caplog.at_level(logging.WARNING):
        load_spann3r_weights(model, path, allow_unsafe=True)
    assert "weights_only=False" in caplog.text


class _NotAllowListed:
    """A picklable object outside the safe allow-list."""


def test_missing_file(tmp_path, tiny):
    with pytest.raises(CheckpointError, match="not found"):
        load_spann3r_weights(build_model(tiny[0]), tmp_path / "nope.pth")


def test_truncated_and_garbage_files(tmp_path, tiny):
    arch, sd, _ = tiny
    full = _write(tmp_path / "full.pth", {"model": sd}).read_bytes()
    (tmp_path / "cut.pth").write_bytes(full[: len(full) // 2])
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all" * 10)
    (tmp_path / "pickle.pth").write_bytes(pickle.dumps({"model": 1}, protocol=2)[:-3])
    for name in ("cut.pth", "junk.pth", "pickle.pth"):
        with pytest.raises(CheckpointError, match="corrupt|truncated"):
            load_spann3r_weights(build_model(arch), tmp_path / name)


def test_wrong_keys_and_shapes_are_named(tmp_path, tiny):
    arch, sd, _ = tiny
    bad = dict(sd)
    del bad["norm_q.weight"]
    bad["extra.weight"] = torch.zeros(3)
    bad["value_out.bias"] = torch.zeros(7)
    path = _write(tmp_path / "bad.pth", {"model": bad})
    with pytest.raises(CheckpointError) as exc:
        load_spann3r_weights(build_model(arch), path)
    msg = str(exc.value)
    assert "norm_q.weight" in msg and "extra.weight" in msg and "value_out.bias" in msg
    assert "missing" in msg and "unexpected" in msg and "shape" in msg
    # a full-size checkpoint does not fit the tiny model
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_spann3r_weights(build_model(arch), _write(tmp_path / "big.pth", {"model": {
            k: torch.zeros(1) for k in sd}}))


def test_not_a_state_dict(tmp_path, tiny):
    with pytest.raises(CheckpointError, match="no state dict"):
        load_spann3r_weights(build_model(tiny[0]), _write(tmp_path / "list.pth", [1, 2, 3]))
    with pytest.raises(CheckpointError, match="not tensors"):
        extract_state_dict({"model": {"a": 1}})


def test_dust3r_trunk_checkpoint(tmp_path, tiny):
    """A DUSt3R file holds the trunk keys without the prefix; it fills only the trunk."""
    arch, sd, _ = tiny
    trunk = {k[len("dust3r."):]: v + 1.0 for k, v in sd.items() if k.startswith("dust3r.")}
    dpath = _write(tmp_path / "dust3r.pth", {"model": trunk, "args": argparse.Namespace(model="AsymmetricCroCo3DStereo()")})
    model = build_model(arch)
    before = model.value_out.weight.clone()
    load_dust3r_weights(model, dpath)
    assert torch.equal(model.dust3r.enc_norm.weight, trunk["enc_norm.weight"])
    assert torch.equal(model.value_out.weight, before)
    # the Spann3R file then overrides everything
    spath = _write(tmp_path / "spann3r.pth", {"model": sd})
    load_spann3r_weights(model, spath, dust3r_path=dpath)
    assert torch.equal(model.dust3r.enc_norm.weight, sd["dust3r.enc_norm.weight"])
    # a trunk checkpoint missing keys is refused
    del trunk["dec_norm.bias"]
    with pytest.raises(CheckpointError, match="dec_norm.bias"):
        load_dust3r_weights(model, _write(tmp_path / "d2.pth", {"model": trunk}))


def test_load_model_from_config_assigns_weights(tmp_path, tiny, spann3r_fixtures):
    arch, sd, _ = tiny
    path = _write(tmp_path / "spann3r.pth", {"model": sd})
    model = load_model(ModelConfig(checkpoint=str(path)), arch=arch)
    assert not any(t.is_meta for t in model.state_dict().values())
    ref = np.load(spann3r_fixtures / "scenario_a.npz")
    with torch.no_grad():
        enc, _ = model.encode(torch.from_numpy(ref["img"][:1]))
    assert_matches_reference("enc_feat[0]", enc[0].numpy(), ref["enc_feat"][0])
    with pytest.raises(CheckpointError, match="no Spann3R checkpoint"):
        load_model(ModelConfig(checkpoint=""), arch=arch)
    assert read_checkpoint(path)["model"].keys() == sd.keys()
