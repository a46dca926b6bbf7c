"""Unit checks of RoPE-2D, the spatial memory and the DPT head against independent computations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from recon_ros.model.config import MemoryConfig, tiny_arch
from recon_ros.model.dpt import postprocess
from recon_ros.model.memory import SpatialMemory
from recon_ros.model.network import build_model
from recon_ros.model.rope import apply_rope, patch_positions, rope_table


def _rope_reference(x: np.ndarray, pos: np.ndarray, base: float) -> np.ndarray:
    """Explicit 2x2 rotations: channel j pairs with j + h/2 inside each half (y half first)."""
    d = x.shape[-1]
    h = d // 2
    out = np.empty_like(x)
    for half, coord in ((0, pos[:, 0]), (1, pos[:, 1])):
        for j in range(h // 2):
            a, b = half * h + j, half * h + j + h // 2
            ang = coord * base ** (-2.0 * j / h)
            out[..., a] = x[..., a] * np.cos(ang) - x[..., b] * np.sin(ang)
            out[..., b] = x[..., b] * np.cos(ang) + x[..., a] * np.sin(ang)
    return out


@pytest.mark.parametrize("head_dim", [16, 64])
def test_rope_matches_explicit_rotation(head_dim):
    pos = patch_positions(3, 5)
    assert pos.tolist()[:6] == [[0, 0], [0, 1], [0, 2], [0, 3], [0, 4], [1, 0]]
    x = torch.randn(2, 3, 15, head_dim, dtype=torch.float64).float()
    got = apply_rope(x, rope_table(pos, head_dim, 100.0)).numpy()
    want = _rope_reference(x.double().numpy(), pos.numpy().astype(np.float64), 100.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_rope_scores_depend_on_relative_position_only():
    pos = torch.tensor([[2, 3], [5, 7], [0, 0], [3, 4]])
    table = rope_table(pos, 32, 100.0)
    q = torch.randn(1, 1, 1, 32).expand(1, 1, 4, 32)
    k = torch.randn(1, 1, 1, 32).expand(1, 1, 4, 32)
    rq, rk = apply_rope(q, table)[0, 0], apply_rope(k, table)[0, 0]
    # offset (3, 4) between tokens 1 and 0 equals the offset between tokens 3 and 2
    assert torch.allclose(rq[1] @ rk[0], rq[3] @ rk[2], atol=1e-4)


def _identity_norms(c: int):
    return nn.LayerNorm(c), nn.LayerNorm(c), nn.LayerNorm(c)


def test_memory_read_thresholds_renormalises_and_accumulates():
    torch.manual_seed(0)
    c, p = 8, 5
    mem = SpatialMemory(MemoryConfig(attn_thresh=0.08, long_mem_size=100, work_mem_size=5))
    for _ in range(3):
        k = torch.randn(1, p, c)
        mem.insert(k, torch.randn(1, p, c) + k)
    q = torch.randn(1, p, c)
    nq, nk, nv = _identity_norms(c)
    with torch.no_grad():
        res = mem.read(q, nq, nk, nv)

    def ln(x):
        x = x.double().numpy()
        return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    logits = ln(q)[0] @ ln(mem.K)[0].T / math.sqrt(c)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    assert (w < 0.08).any()
    w = np.where(w < 0.08, 0.0, w)
    w /= w.sum(-1, keepdims=True)
    np.testing.assert_allclose(res.weights[0].numpy(), w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.out[0].numpy(), w @ ln(mem.V)[0] + q[0].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mem.A[0, :, 0].numpy(), w.sum(0), rtol=1e-5, atol=1e-6)
    assert res.mem_tokens == 3 * p


def test_memory_read_guards_rows_below_threshold():
    mem = SpatialMemory(MemoryConfig(attn_thresh=0.5))
    mem.insert(torch.ones(1, 4, 8), torch.ones(1, 4, 8))  # identical keys: uniform attention 0.25
    with torch.no_grad():
        res = mem.read(torch.randn(1, 4, 8), *_identity_norms(8))
    assert torch.isfinite(res.out).all() and mem.nan_rows_guarded == 4
    np.testing.assert_allclose(res.weights.numpy(), 0.25)


def test_similarity_skip_is_strict():
    k = torch.zeros(1, 3, 4)
    k[0, :, 0] = 1.0  # cosine similarity with itself is exactly 1
    at_threshold = SpatialMemory(MemoryConfig(sim_thresh=1.0))
    at_threshold.insert(k, k)
    assert at_threshold.insert(k.clone(), k).inserted  # 1.0 is not > 1.0
    below = SpatialMemory(MemoryConfig(sim_thresh=0.999))
    below.insert(k, k)
    res = below.insert(k.clone(), k)
    assert not res.inserted and below.skips == 1 and below.num_tokens == 3
    assert float(below.N.sum()) == 0  # a skip changes nothing, not even the ages


def test_prune_keeps_protected_then_best_attention_per_age():
    p, wmax, budget = 2, 1, 13
    mem = SpatialMemory(MemoryConfig(long_mem_size=budget, work_mem_size=wmax, sim_thresh=2.0))
    keys = [torch.randn(1, p, 6) for _ in range(8)]
    for f in range(7):
        r = mem.insert(keys[f], keys[f])
        assert not r.pruned
    assert mem.num_tokens == 14 and mem.lm == 12 and mem.wm == 1
    # accumulated attention: frame 0 (age 7 after the next insert) has the largest A,
    # frame 1 (age 6) the largest A / age
    A = torch.zeros(1, 14, 1)
    A[0, 0, 0], A[0, 2, 0], A[0, 4, 0] = 7.0, 6.6, 100.0
    mem.A = A
    r = mem.insert(keys[7], keys[7])
    assert r.pruned and r.tokens_before_prune == 16 and r.tokens_after == budget
    assert mem.lm == budget - wmax * p
    ages = mem.N[0, :, 0]
    # the 12 protected tokens (ages < wmax + 5) come first, then frame 1's token 0
    assert (ages[:12] < wmax + 5).all()
    assert float(ages[12]) == 6 and torch.equal(mem.K[0, 12], keys[1][0, 0])
    assert torch.equal(r.counts_after_prune, mem.N)


def test_postprocess_depth_and_confidence_mapping():
    out = torch.randn(2, 4, 5, 6, dtype=torch.float64).float()
    res = postprocess(out)
    xyz = out[:, :3].permute(0, 2, 3, 1).double()
    d = xyz.norm(dim=-1, keepdim=True)
    np.testing.assert_allclose(res["pts3d"].double().norm(dim=-1).numpy(), torch.expm1(d)[..., 0].numpy(), rtol=1e-5)
    np.testing.assert_allclose((res["pts3d"].double() / res["pts3d"].double().norm(dim=-1, keepdim=True)).numpy(),
                               (xyz / d).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(res["conf"].numpy(), 1 + np.exp(out[:, 3].double().numpy()), rtol=1e-5)


def test_decoder_lists_and_dpt_aliases():
    arch = tiny_arch()
    model = build_model(arch)
    dpt = model.dust3r.downstream_head2.dpt
    for i, name in enumerate(["layer1_rn", "layer2_rn", "layer3_rn", "layer4_rn"]):
        assert getattr(dpt.scratch, name) is dpt.scratch.layer_rn[i]
    assert arch.dpt_hooks == (0, 3, 4, 6)
    with torch.no_grad():
        img = torch.rand(1, 3, 32, 48) * 2 - 1
        enc, grid = model.encode(img)
        assert grid == (2, 3) and enc.shape == (1, 6, arch.enc_embed_dim)
        d1, d2 = model.dust3r.decode(enc, enc.flip(1), grid)
        assert len(d1) == len(d2) == arch.dec_depth + 1
        assert d1[0] is enc and d1[1].shape[-1] == arch.dec_embed_dim
        # the last entry went through dec_norm: undoing its affine part leaves zero-mean, unit-variance tokens
        norm = model.dust3r.dec_norm
        z = (d1[-1] - norm.bias) / norm.weight
        assert torch.allclose(z.mean(-1), torch.zeros(1, 6), atol=1e-4)
        assert torch.allclose(z.var(-1, unbiased=False), torch.ones(1, 6), atol=1e-3)
        res = model.dust3r.downstream_head1(d1, (32, 48))
        assert res["pts3d"].shape == (1, 32, 48, 3) and res["pts3d"].dtype == torch.float32
        assert (res["conf"] >= 1).all()
