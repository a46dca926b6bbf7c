"""The frame path around the network on CPU: torch preprocessing against the PIL path, and the
host copy/upload helpers (no-ops without CUDA). The CUDA side is in test_model_graph.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recon_ros.model.config import RuntimeConfig, memory_from_dict
from recon_ros.model.preprocess import crop_resize_geometry, preprocess_rgb, preprocess_rgb_torch
from recon_ros.model.runtime import HostCopier, HostUploader
from recon_ros.model.stream import Spann3RStream, run_sequence
from tiny_spann3r import load_tiny_model


@pytest.mark.parametrize("name", ["scenario_a", "scenario_b", "preprocess_odd"])
def test_torch_preprocessing_follows_pil(spann3r_fixtures: Path, name):
    ref = np.load(spann3r_fixtures / f"{name}.npz")
    h, w = ref["img"].shape[-2:]
    for raw in ref["raw_rgb"][:2]:
        pil = preprocess_rgb(raw, (w, h))
        g = crop_resize_geometry(raw.shape[0], raw.shape[1], (w, h))
        img, rgb = preprocess_rgb_torch(torch.from_numpy(raw), g)
        assert img.shape == pil.img.shape and rgb.shape == pil.rgb.shape and rgb.dtype == torch.uint8
        assert g.pixel_map == pil.pixel_map
        diff = np.abs(rgb.numpy().astype(int) - pil.rgb.astype(int))
        # antialiased bicubic vs Lanczos: under one grey level on average, a few at edges
        assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 6
        # the model input is the rounded colours, normalised as in the reference
        np.testing.assert_allclose(img[0].permute(1, 2, 0).numpy(), rgb.numpy() / 127.5 - 1, atol=1e-6)


def test_torch_preprocessing_a_shifted_crop_is_detected(spann3r_fixtures: Path):
    """The comparison above is sensitive: a one-pixel shift of the crop breaks it."""
    raw = np.load(spann3r_fixtures / "scenario_a.npz")["raw_rgb"][0]
    pil = preprocess_rgb(raw, (224, 224))
    g = crop_resize_geometry(raw.shape[0], raw.shape[1], (224, 224))
    shifted = type(g)(**{**g.__dict__, "l2": g.l2 + 1})
    _, rgb = preprocess_rgb_torch(torch.from_numpy(raw), shifted)
    diff = np.abs(rgb.numpy().astype(int) - pil.rgb.astype(int))
    assert not (diff.mean() < 1.0 and np.percentile(diff, 99) <= 6)


def test_stream_with_torch_preprocessing(spann3r_fixtures: Path):
    model, summary = load_tiny_model(spann3r_fixtures)
    ref = np.load(spann3r_fixtures / "scenario_b.npz")
    h, w = ref["img"].shape[-2:]
    outs = {}
    for pre in ("pil", "torch"):
        stream = Spann3RStream(model, RuntimeConfig(device="cpu", preprocess=pre, mode="static"),
                               memory_from_dict(summary["scenario_b"]["memory"]), target_wh=(w, h))
        outs[pre] = run_sequence(stream, list(ref["raw_rgb"][:8]))
    a = np.stack([o.pts3d for o in outs["pil"]])
    b = np.stack([o.pts3d for o in outs["torch"]])
    err = np.linalg.norm(a - b, axis=-1) / np.linalg.norm(a, axis=-1).clip(1e-9)
    assert 0 < np.median(err) < 2e-2  # different resampling, same geometry
    assert all(x.pixel_map == y.pixel_map for x, y in zip(outs["pil"], outs["torch"]))
    assert all(x.rgb.shape == (h, w, 3) and x.rgb.dtype == np.uint8 for x in outs["torch"])


def test_host_helpers_on_cpu_copy_and_pass_through():
    dev = torch.device("cpu")
    copier, upload = HostCopier(dev), HostUploader(dev)
    t = torch.arange(6.0).reshape(2, 3)
    assert upload(t) is t or torch.equal(upload(t), t)
    copier.start({"a": t})
    copier.start({"b": t + 1})
    out = copier.finish()
    t.zero_()  # the host copies do not alias the device tensors
    np.testing.assert_array_equal(out["a"], np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(out["b"], np.arange(6.0).reshape(2, 3) + 1)
    assert copier.finish() == {}
