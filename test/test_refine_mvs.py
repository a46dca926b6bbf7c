"""MVS depth refinement (plane sweep) and the MVSNet-compatible learned path."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recon_ros.errors import CheckpointError
from recon_ros.geometry.transforms import transform_points
from recon_ros.refine.mvs import DepthRefiner, select_sources, view_angle_weight
from recon_ros.refine.mvsnet import MVSNet, homography_warp, load_mvsnet
from recon_ros.refine.schema import MvsConfig

from refine_synth import BoxRoom, DriftingFrontendDouble, make_keyframes, strafe_poses


def _noisy(truth, seed=3):
    return DriftingFrontendDouble(rot_deg=0, trans_m=0, log_scale=0, noise_scale=0, depth_noise=0.08,
                                  pixel_noise=0.03, seed=seed).apply(truth)


def _absrel(depth, gt, sel):
    return float(np.mean(np.abs(depth[sel] - gt[sel]) / gt[sel]))


@pytest.fixture(scope="module")
def textured():
    truth = make_keyframes(BoxRoom(seed=1), strafe_poses(8))
    noisy = _noisy(truth)
    return truth, noisy, DepthRefiner(MvsConfig(device="cpu")).refine(noisy)


@pytest.mark.slow
def test_mvs_lowers_absrel_on_textured_surfaces(textured):
    truth, noisy, out = textured
    before, after, replaced = [], [], []
    for kt, kn in zip(truth, noisy):
        gt = kt.depth
        v = np.isfinite(gt)
        r = out[kn.id]
        before.append(_absrel(kn.depth, gt, v))
        after.append(_absrel(r.depth, gt, v))
        replaced.append(r.replaced[v].mean())
        if r.replaced.any():  # where replaced, the refined depth beats the prior on the same pixels
            assert _absrel(r.depth, gt, r.replaced) < 0.5 * _absrel(kn.depth, gt, r.replaced)
    assert np.mean(after) <= 0.8 * np.mean(before), (np.mean(before), np.mean(after))
    assert np.mean(replaced) > 0.2


@pytest.mark.slow
def test_replacement_only_where_checks_pass(textured):
    _, noisy, out = textured
    cfg = MvsConfig()
    for kn in noisy:
        r = out[kn.id]
        assert not np.any(r.replaced & ~r.sweep.photometric_ok)
        assert not np.any(r.replaced & (r.n_consistent < cfg.min_consistent))
        # outside the replaced set the pointmap is untouched
        keep = ~r.replaced & kn.valid
        np.testing.assert_array_equal(r.points_cam[keep], kn.points_cam[keep])
        z = r.points_cam[r.replaced][:, 2]
        np.testing.assert_allclose(z, r.depth[r.replaced], rtol=1e-5)


def test_the_sweep_in_passes_equals_the_sweep_at_once(textured):
    """Hypotheses swept a few at a time (bounded working memory) give the one-pass result."""
    _, noisy, _ = textured
    ref, srcs = noisy[3], [noisy[1], noisy[2], noisy[4], noisy[5]]
    poses = [kf.T_world_cam for kf in srcs]
    at_once = DepthRefiner(MvsConfig(device="cpu", hypotheses_per_pass=16)).sweep(ref, srcs, ref.T_world_cam, poses)
    for per_pass in (1, 3):
        passes = DepthRefiner(MvsConfig(device="cpu", hypotheses_per_pass=per_pass)).sweep(
            ref, srcs, ref.T_world_cam, poses)
        np.testing.assert_array_equal(passes.photometric_ok, at_once.photometric_ok)
        assert passes.photometric_ok.mean() > 0.2
        np.testing.assert_allclose(passes.depth, at_once.depth, rtol=1e-6, equal_nan=True)
        np.testing.assert_allclose(passes.confidence, at_once.confidence, atol=1e-6)


@pytest.mark.slow
def test_untextured_wall_is_never_replaced():
    room = BoxRoom(seed=4, flat_walls=(5,))
    room.add_box([-0.6, -0.4, 2.2], [0.6, 0.4, 2.5], texture=6)
    truth = make_keyframes(room, strafe_poses(6, step=0.2, target=[0.0, 0.0, 2.2]))
    noisy = _noisy(truth, seed=7)
    out = DepthRefiner(MvsConfig(device="cpu")).refine(noisy)
    n_flat = n_box_replaced = 0
    for kt, kn in zip(truth, noisy):
        Pw = transform_points(kt.T_world_cam, kt.points_cam)
        flat = np.abs(Pw[..., 2] - 3.0) < 1e-3  # the untextured z = +3 wall
        n_flat += flat.sum()
        r = out[kn.id]
        assert not np.any(r.replaced & flat)
        np.testing.assert_array_equal(r.depth[flat], kn.depth[flat])
        n_box_replaced += (r.replaced & (Pw[..., 2] < 2.51)).sum()
    assert n_flat > 1000  # the wall is really in view
    assert n_box_replaced > 500  # and the textured box in front of it is refined


def test_source_selection_prefers_useful_baselines():
    truth = make_keyframes(BoxRoom(seed=1), strafe_poses(5))
    twin = truth[2].__class__(**{**truth[2].__dict__, "id": 99})  # same pose: zero baseline
    kfs = truth + [twin]
    poses = [k.T_world_cam for k in kfs]
    src = select_sources(2, kfs, poses, MvsConfig(num_sources=3))
    assert 5 not in src and 2 not in src and len(src) == 3
    w = view_angle_weight(np.array([1.0, 5.0, 15.0, 40.0]))
    assert w[1] == 1.0 and w[0] < w[2] and w[3] < w[2]


@pytest.mark.slow
def test_mask_excludes_reference_pixels(textured):
    _, noisy, _ = textured
    masks = {k.id: np.zeros(k.rgb.shape[:2], bool) for k in noisy}
    for m in masks.values():
        m[:, 80:] = True
    out = DepthRefiner(MvsConfig(device="cpu")).refine(noisy[:4], masks=masks, only=[noisy[1].id])
    r = out[noisy[1].id]
    cols = np.flatnonzero(r.replaced.any(axis=0))
    u_img = noisy[1].pixel_map.to_image(np.stack([cols, np.zeros_like(cols)], -1).astype(float))[:, 0]
    assert len(cols) == 0 or u_img.max() < 80.5


# ------------------------------------------------------------------------------------ MVSNet
SPEC = {  # module names and shapes of the MVSNet_pytorch checkpoint (refine design, section 2.2)
    "feature.conv0.conv.weight": (8, 3, 3, 3), "feature.conv1.conv.weight": (8, 8, 3, 3),
    "feature.conv2.conv.weight": (16, 8, 5, 5), "feature.conv3.conv.weight": (16, 16, 3, 3),
    "feature.conv4.conv.weight": (16, 16, 3, 3), "feature.conv5.conv.weight": (32, 16, 5, 5),
    "feature.conv6.conv.weight": (32, 32, 3, 3), "feature.feature.weight": (32, 32, 3, 3),
    "feature.feature.bias": (32,),
    "cost_regularization.conv0.conv.weight": (8, 32, 3, 3, 3),
    "cost_regularization.conv1.conv.weight": (16, 8, 3, 3, 3),
    "cost_regularization.conv2.conv.weight": (16, 16, 3, 3, 3),
    "cost_regularization.conv3.conv.weight": (32, 16, 3, 3, 3),
    "cost_regularization.conv4.conv.weight": (32, 32, 3, 3, 3),
    "cost_regularization.conv5.conv.weight": (64, 32, 3, 3, 3),
    "cost_regularization.conv6.conv.weight": (64, 64, 3, 3, 3),
    "cost_regularization.conv7.0.weight": (64, 32, 3, 3, 3), "cost_regularization.conv7.1.weight": (32,),
    "cost_regularization.conv9.0.weight": (32, 16, 3, 3, 3), "cost_regularization.conv9.1.weight": (16,),
    "cost_regularization.conv11.0.weight": (16, 8, 3, 3, 3), "cost_regularization.conv11.1.weight": (8,),
    "cost_regularization.prob.weight": (1, 8, 3, 3, 3), "cost_regularization.prob.bias": (1,),
    "feature.conv0.bn.running_var": (8,), "cost_regularization.conv0.bn.num_batches_tracked": (),
}


def test_mvsnet_names_shapes_and_parameter_count():
    model = MVSNet()
    sd = model.state_dict()
    for k, shape in SPEC.items():
        assert k in sd, k
        assert tuple(sd[k].shape) == shape, k
    assert sum(p.numel() for p in model.feature.parameters()) == 40120
    assert sum(p.numel() for p in model.cost_regularization.parameters()) == 298009
    assert not any(k.startswith("refine") for k in sd)


def _save_checkpoint(path, model, prefix="module."):
    torch.save({"epoch": 3, "model": {prefix + k: v for k, v in model.state_dict().items()},
                "optimizer": {}}, str(path))


def test_mvsnet_loader_roundtrip_and_forward(tmp_path):
    torch.manual_seed(0)
    model = MVSNet()
    for m in model.modules():  # non-trivial running statistics
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "model_000015.ckpt"
    _save_checkpoint(path, model)
    loaded = load_mvsnet(path)
    assert not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    imgs = torch.rand(1, 3, 3, 64, 96)
    K = torch.tensor([[20.0, 0, 12], [0, 20.0, 8], [0, 0, 1]])
    projs = torch.eye(4).repeat(1, 3, 1, 1)
    projs[0, :, :3, :3] = K
    projs[0, 1, 0, 3] = 2.0
    projs[0, 2, 1, 3] = -2.0
    out = loaded(imgs, projs, torch.linspace(2.0, 4.0, 16)[None])
    assert out["depth"].shape == (1, 16, 24) and out["photometric_confidence"].shape == (1, 16, 24)
    assert torch.all(out["depth"] >= 2.0 - 1e-4) and torch.all(out["depth"] <= 4.0 + 1e-4)
    assert torch.all(out["photometric_confidence"] <= 1.0 + 1e-5)


def test_mvsnet_loader_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_mvsnet(tmp_path / "missing.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_mvsnet(bad)
    model = MVSNet()
    sd = {"module." + k: v for k, v in model.state_dict().items()}
    sd["module.feature.feature.weight"] = torch.zeros(16, 32, 3, 3)
    path = tmp_path / "shape.ckpt"
    torch.save({"model": sd}, str(path))
    with pytest.raises(CheckpointError, match="feature.feature.weight"):
        load_mvsnet(path)
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("cost_regularization.prob")}
    torch.save(sd, str(path))
    with pytest.raises(CheckpointError, match="missing"):
        load_mvsnet(path)


def test_homography_warp_matches_known_disparity():
    torch.manual_seed(1)
    fea = torch.rand(1, 4, 12, 20)
    K = torch.tensor([[10.0, 0, 10], [0, 10.0, 6], [0, 0, 1]])
    ref = torch.eye(4)[None]
    ref[0, :3, :3] = K
    src = ref.clone()
    src[0, 0, 3] = 10.0 * -0.4  # source camera 0.4 to the right: K [I | t], t = (-0.4, 0, 0)
    depths = torch.tensor([[2.0, 4.0]])
    warped = homography_warp(fea, src, ref, depths)  # disparity f b / d = 2 px and 1 px
    torch.testing.assert_close(warped[0, :, 0, :, 2:], fea[0, :, :, :-2])
    torch.testing.assert_close(warped[0, :, 1, :, 1:], fea[0, :, :, :-1])
    same = homography_warp(fea, ref, ref, depths)
    torch.testing.assert_close(same[0, :, 0], fea[0])


@pytest.mark.slow
def test_learned_path_through_the_depth_refiner(tmp_path):
    model = MVSNet()
    path = tmp_path / "rand.ckpt"
    _save_checkpoint(path, model)
    truth = make_keyframes(BoxRoom(seed=1), strafe_poses(3))
    out = DepthRefiner(MvsConfig(device="cpu", checkpoint=str(path), min_consistent=1)).refine(truth, only=[1])
    r = out[1]
    assert r.depth.shape == truth[1].depth.shape and r.points_cam.shape == truth[1].points_cam.shape
    assert r.sweep is not None and r.sweep.stats.get("learned") == 1.0
    assert r.replaced.dtype == bool
