import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import losses
from conftest import project, warp


def intrinsics(fx, fy, cx, cy):
    return torch.tensor([[fx, 0, cx, 0], [0, fy, cy, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])


def test_ssim_of_image_with_itself_is_zero():
    x = torch.rand(2, 3, 8, 10)
    assert losses.ssim(x, x).shape == x.shape
    assert torch.allclose(losses.ssim(x, x), torch.zeros_like(x), atol=1e-6)


def test_ssim_matches_formula_at_interior_and_corner_pixel():
    torch.manual_seed(0)
    x, y = torch.rand(1, 2, 6, 7), torch.rand(1, 2, 6, 7)
    for (i, j), c in [((3, 4), 0), ((3, 4), 1), ((0, 0), 0)]:
        # 3x3 neighbourhood of (i, j) in the reflection-padded channel
        a = np.pad(x[0, c].double().numpy(), 1, mode="reflect")[i:i + 3, j:j + 3]
        b = np.pad(y[0, c].double().numpy(), 1, mode="reflect")[i:i + 3, j:j + 3]
        mu_a, mu_b = a.mean(), b.mean()
        var_a, var_b = ((a - mu_a) ** 2).mean(), ((b - mu_b) ** 2).mean()
        cov = ((a - mu_a) * (b - mu_b)).mean()
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
        expected = np.clip((1 - s) / 2, 0, 1)
        assert abs(losses.ssim(x, y)[0, c, i, j].item() - expected) < 1e-5


def test_photometric_error():
    x, y = torch.rand(2, 3, 8, 10), torch.rand(2, 3, 8, 10)
    assert torch.allclose(losses.photometric_error(x, x), torch.zeros(2, 1, 8, 10), atol=1e-6)
    err = losses.photometric_error(x, y)
    assert err.shape == (2, 1, 8, 10) and (err > 0).all()


def test_box_mean_is_the_3x3_mean_of_the_reflection_padded_image():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 5, 7)
    expected = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
    assert torch.allclose(losses.box_mean(x), expected, atol=1e-6)
    # corner (0, 0): reflection repeats row 1 and column 1 across the border
    rows, cols = [1, 0, 1], [1, 0, 1]
    assert torch.isclose(losses.box_mean(x)[0, 0, 0, 0], x[0, 0][rows][:, cols].mean())


def test_target_statistics_are_shared_and_change_nothing():
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 6, 8), torch.rand(2, 3, 6, 8)
    target = losses.as_target(y)
    mean = F.avg_pool2d(F.pad(y, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
    square = F.avg_pool2d(F.pad(y * y, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
    assert torch.allclose(target.mean, mean, atol=1e-6) and torch.allclose(target.variance, square - mean ** 2, atol=1e-6)
    assert losses.as_target(target) is target
    assert torch.equal(losses.ssim(x, target), losses.ssim(x, y))
    assert torch.equal(losses.photometric_error(x, target), losses.photometric_error(x, y))
    errors = losses.photometric_error(torch.stack([x, y], 1), target)  # two views of one target at once
    assert errors.shape == (2, 2, 6, 8) and torch.allclose(errors[:, :1], losses.photometric_error(x, y), atol=1e-7)
    assert errors[:, 1].abs().max() < 1e-6


def test_pose_to_matrix():
    t = torch.tensor([[1.0, 2.0, 3.0]])
    T = losses.pose_to_matrix(torch.zeros(1, 3), t)
    assert torch.allclose(T[0, :3, :3], torch.eye(3)) and torch.allclose(T[0, :3, 3], t[0])
    assert torch.equal(T[0, 3], torch.tensor([0.0, 0, 0, 1]))
    # right-hand rule: +pi/2 about y turns x (right) into -z (towards the viewer)
    R = losses.pose_to_matrix(torch.tensor([[0, math.pi / 2, 0]]), torch.zeros(1, 3))[0, :3, :3]
    assert torch.allclose(R @ torch.tensor([1.0, 0, 0]), torch.tensor([0, 0, -1.0]), atol=1e-6)


def test_pose_inverse_composes_to_identity():
    torch.manual_seed(0)
    axisangle, translation = torch.randn(4, 3), torch.randn(4, 3)
    T = losses.pose_to_matrix(axisangle, translation)
    T_inv = losses.pose_to_matrix(axisangle, translation, invert=True)
    assert torch.allclose(T @ T_inv, torch.eye(4).expand(4, 4, 4), atol=1e-5)
    assert torch.allclose(T_inv @ T, torch.eye(4).expand(4, 4, 4), atol=1e-5)


def test_warp_with_identity_pose_reproduces_image():
    K = intrinsics(5.0, 6.0, 4.5, 3.5).expand(2, 4, 4)
    source, depth = torch.rand(2, 3, 7, 9), 0.5 + 10 * torch.rand(2, 1, 7, 9)
    warped = warp(source, depth, K, torch.inverse(K), torch.eye(4).expand(2, 4, 4))
    assert torch.allclose(warped, source, atol=1e-5)


def test_warp_translation_shifts_by_fx_tx_over_z():
    H, W, fx, z, tx = 6, 16, 8.0, 2.0, 0.5
    shift = int(fx * tx / z)                                      # 2 pixels
    K = intrinsics(fx, fx, 7.5, 2.5)[None]
    T = losses.pose_to_matrix(torch.zeros(1, 3), torch.tensor([[tx, 0, 0]]))
    source = torch.rand(1, 3, H, W)
    warped = warp(source, torch.full((1, 1, H, W), z), K, torch.inverse(K), T)
    # P_source = P_target + (tx, 0, 0), so u_source = u_target + fx*tx/z: target pixel u reads
    # source pixel u + shift (the content moves left by `shift` pixels in the warped image).
    assert torch.allclose(warped[..., :W - shift], source[..., shift:], atol=1e-5)
    assert not torch.allclose(warped[..., shift:], source[..., :W - shift], atol=1e-2)


def test_warp_views_is_eq_8_step_by_step_for_each_source():
    torch.manual_seed(0)
    B, S, H, W = 2, 3, 6, 10
    K = intrinsics(8.0, 7.0, 4.5, 2.5).expand(B, 4, 4)
    inv_K = torch.inverse(K)
    depth, sources = 1 + 5 * torch.rand(B, 1, H, W), torch.rand(B, S, 3, H, W)
    T = torch.stack([losses.pose_to_matrix(0.05 * torch.randn(B, 3), 0.2 * torch.randn(B, 3)) for _ in range(S)], 1)
    rays, shift = losses.view_rays(K, inv_K, T, H, W)
    assert rays.shape == (B, S, H * W, 3) and shift.shape == (B, S, 1, 3)
    warped = losses.warp_views(sources, depth, (rays, shift))
    for s in range(S):
        grid = project(losses.backproject(depth, inv_K), K, T[:, s], H, W)
        expected = F.grid_sample(sources[:, s], grid, padding_mode="border", align_corners=False)
        assert torch.allclose(warped[:, s], expected, atol=1e-5)


def _reprojection_term(monkeypatch, target, sources, warped, automask=True):
    """pretrain.monodepth2_loss at one scale with a constant disparity (no smoothness cost) and the warp
    replaced by `warped` [B,S,3,H,W]: the reprojection term of eq. 9 alone."""
    import pretrain
    monkeypatch.setattr(losses, 'warp_views', lambda sources, depth, rays: warped)
    B, _, _, H, W = sources.shape
    K = intrinsics(10.0, 10.0, W / 2, H / 2).expand(B, 4, 4)
    batch = dict(frames=target[:, None], K=K, inv_K=torch.inverse(K))
    args = pretrain.parse_args(['--scales', '1'] + ([] if automask else ['--no-automask']))
    poses = torch.eye(4).expand(B, sources.shape[1], 4, 4)
    return pretrain.monodepth2_loss([torch.full((B, 1, H, W), 0.5)], sources, poses, batch, args)


def test_the_reprojection_term_keeps_each_pixels_best_source(monkeypatch):
    g = torch.Generator().manual_seed(0)
    H, W = 6, 12
    target = torch.rand(1, 3, H, W, generator=g)
    cols = torch.arange(W)
    # the halves overlap by two columns so every pixel has a source matching its whole 3x3 window
    left = torch.where(cols <= W // 2, target, torch.rand(1, 3, H, W, generator=g))
    right = torch.where(cols >= W // 2 - 1, target, torch.rand(1, 3, H, W, generator=g))
    both, one = torch.stack([left, right], 1), left[:, None]
    assert _reprojection_term(monkeypatch, target, both, both, automask=False) < 1e-6  # a mean over sources is not
    assert _reprojection_term(monkeypatch, target, one, one, automask=False) > 0.01


def test_auto_masking_keeps_a_pixel_only_where_warping_beats_every_unwarped_source(monkeypatch):
    g = torch.Generator().manual_seed(0)
    H, W = 6, 12
    target = torch.rand(1, 3, H, W, generator=g)
    cols = torch.arange(W)
    unwarped = torch.where(cols < W // 2, target, torch.rand(1, 3, H, W, generator=g))[:, None]  # static on the left
    warped = (target + 0.02).clamp(0, 1)[:, None].requires_grad_()                               # slightly off everywhere
    loss = _reprojection_term(monkeypatch, target, unwarped, warped)
    identity = losses.photometric_error(unwarped, target)
    reprojection = losses.photometric_error(warped, target)
    assert torch.allclose(loss, torch.minimum(reprojection, identity).mean())
    # the left half (where the unwarped source wins; its last column's 3x3 window sees the right half, and a
    # pixel's error reaches its neighbours through SSIM) sends no gradient to the warp; the right half does
    grad = torch.autograd.grad(loss, warped)[0].abs().sum((1, 2))[0]
    assert (grad[:, :W // 2 - 2] == 0).all() and (grad[:, W // 2 + 1:] > 0).all()
    # without auto-masking every pixel is the warp's, the static ones too
    plain = _reprojection_term(monkeypatch, target, unwarped, warped, automask=False)
    assert torch.allclose(plain, reprojection.mean()) and plain > loss
    # ties (warped exactly as good as unwarped) go to the unwarped source: no gradient at all
    tie = unwarped.clone().requires_grad_()
    assert torch.autograd.grad(_reprojection_term(monkeypatch, target, unwarped, tie), tie)[0].abs().max() == 0


def test_smoothness_loss():
    img = torch.rand(1, 3, 8, 8)
    assert losses.smoothness_loss(torch.full((1, 1, 8, 8), 0.3), img) == 0
    ramp = torch.linspace(0, 1, 8).expand(1, 1, 8, 8)
    assert losses.smoothness_loss(ramp, img) > 0
    edge = (torch.arange(8) >= 4).float().expand(1, 1, 8, 8)
    flat = torch.full((1, 3, 8, 8), 0.5)
    assert losses.smoothness_loss(edge, edge.expand(1, 3, 8, 8)) < losses.smoothness_loss(edge, flat)
    flow = torch.stack([ramp[:, 0], ramp[:, 0].transpose(1, 2)], 1)
    assert losses.smoothness_loss(flow, img) > 0


def test_mean_normalised():
    disp = torch.rand(2, 1, 5, 6) + 0.1
    assert torch.allclose(losses.mean_normalised(disp).mean((2, 3)), torch.ones(2, 1))
    assert torch.allclose(losses.mean_normalised(3 * disp), losses.mean_normalised(disp), atol=1e-6)


def test_nll_loss_equals_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 19, 4, 5)
    labels = torch.randint(0, 19, (2, 4, 5))
    labels[0, :2] = 255
    expected = F.cross_entropy(logits, labels, ignore_index=255)
    assert torch.allclose(losses.nll_loss(logits, labels), expected)


def test_flow_warp_reproduces_a_known_shift():
    source = torch.rand(1, 3, 6, 12)
    flow = torch.zeros(1, 2, 6, 12)
    flow[:, 0], flow[:, 1] = 3.0, 1.0  # every pixel of frame t moved 3 right and 1 down in frame t+1
    warped = losses.flow_warp(source, flow)
    assert torch.allclose(warped[..., :-1, :-3], source[..., 1:, 3:], atol=1e-5)
    assert torch.allclose(losses.flow_warp(source, torch.zeros_like(flow)), source, atol=1e-6)


def test_flow_photometric_error_is_eq_13():
    x, y = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    assert losses.flow_photometric_error(x, x).abs().max() < 1e-6
    error = losses.flow_photometric_error(x, y, colour_weight=0.15, ssim_weight=0.15)
    one_minus_ssim = 2 * losses.ssim(x, y).mean(1, keepdim=True)
    expected = 0.15 * (x - y).abs().mean(1, keepdim=True) + 0.15 * one_minus_ssim
    assert torch.allclose(error, expected) and (error > 0).all()


def test_smoothness_of_a_constant_flow_is_zero():
    image = torch.rand(1, 3, 8, 8)
    assert losses.smoothness_loss(torch.full((1, 2, 8, 8), 4.0), image) == 0
    assert losses.smoothness_loss(torch.rand(1, 2, 8, 8), image) > 0


def test_l1_depth_loss_counts_only_measured_pixels():
    gt = torch.tensor([[[[0.0, 2.0], [4.0, 0.0]]]])
    assert losses.l1_depth_loss(torch.tensor([[[[9.0, 2.0], [4.0, 9.0]]]]), gt) == 0
    assert torch.isclose(losses.l1_depth_loss(torch.tensor([[[[9.0, 3.0], [2.0, 9.0]]]]), gt), torch.tensor(1.5))
    only_first = torch.tensor([[[[False, True], [False, False]]]])
    assert losses.l1_depth_loss(torch.tensor([[[[9.0, 3.0], [2.0, 9.0]]]]), gt, only_first) == 1


def test_silog_scale_invariance_and_squared_log_error():
    gt = torch.rand(2, 1, 5, 6) * 50 + 1
    gt[0, 0, 0, 0] = 0  # no measurement
    pred = gt * torch.exp(0.3 * torch.randn_like(gt))
    valid = gt > 0
    assert torch.isclose(losses.silog_loss(pred * 3.7, gt, lam=1), losses.silog_loss(pred, gt, lam=1), atol=1e-5)
    assert losses.silog_loss(gt * 3.7, gt, lam=1).abs() < 1e-5
    squared_log = torch.stack([((p[v].log() - g[v].log()) ** 2).mean() for p, g, v in zip(pred, gt, valid)]).mean()
    assert torch.isclose(losses.silog_loss(pred, gt, lam=0), squared_log)
    # a prediction right up to a scale eta costs (1 - lambda) (log eta)^2 (Sect. 2.3)
    assert torch.isclose(losses.silog_loss(gt * 3.7, gt, lam=0.5), torch.tensor(0.5 * math.log(3.7) ** 2))


def _reference_depth_loss(disps, sources, poses, target, K, inv_K):
    """Eq. 9 written out as Monodepth2 does it, with its default constants: SSIM from avg_pool2d, every
    source warped on its own, every scale's disparity upsampled to full resolution."""
    pool = lambda t: F.avg_pool2d(F.pad(t, (1, 1, 1, 1), mode="reflect"), 3, stride=1)

    def error(x, y):
        mu_x, mu_y = pool(x), pool(y)
        sigma_x, sigma_y, sigma_xy = pool(x * x) - mu_x ** 2, pool(y * y) - mu_y ** 2, pool(x * y) - mu_x * mu_y
        ssim = ((2 * mu_x * mu_y + 0.01 ** 2) * (2 * sigma_xy + 0.03 ** 2)
                / ((mu_x ** 2 + mu_y ** 2 + 0.01 ** 2) * (sigma_x + sigma_y + 0.03 ** 2)))
        return (0.85 * ((1 - ssim) / 2).clamp(0, 1).mean(1, keepdim=True)
                + 0.15 * (x - y).abs().mean(1, keepdim=True))

    identity = torch.cat([error(s, target) for s in sources.unbind(1)], 1).min(1, keepdim=True).values
    total = 0
    for scale, disp in enumerate(disps):
        up = F.interpolate(disp, target.shape[-2:], mode="bilinear", align_corners=False)
        depth = 1 / (1 / 100 + (1 / 0.1 - 1 / 100) * up)
        warped = [warp(s, depth, K, inv_K, T) for s, T in zip(sources.unbind(1), poses.unbind(1))]
        best = torch.cat([error(w, target) for w in warped], 1).min(1, keepdim=True).values
        image = F.interpolate(target, disp.shape[-2:], mode="area")
        d = disp / (disp.mean((2, 3), keepdim=True) + 1e-7)
        smooth = ((d[..., 1:] - d[..., :-1]).abs()
                  * torch.exp(-(image[..., 1:] - image[..., :-1]).abs().mean(1, keepdim=True))).mean() + \
                 ((d[..., 1:, :] - d[..., :-1, :]).abs()
                  * torch.exp(-(image[..., 1:, :] - image[..., :-1, :]).abs().mean(1, keepdim=True))).mean()
        total = total + torch.where(best < identity, best, identity).mean() + 1e-3 * smooth / 2 ** scale
    return total / len(disps)


def test_monodepth2_loss_is_monodepth2s_recipe_value_and_gradients():
    import pretrain
    torch.manual_seed(0)
    B, H, W = 2, 32, 64
    K = intrinsics(40.0, 40.0, 31.5, 15.5).expand(B, 4, 4)
    frames = torch.rand(B, 3, 3, H, W)
    batch = dict(frames=frames, K=K, inv_K=torch.inverse(K))
    disps = [torch.rand(B, 1, H // 2 ** s, W // 2 ** s, requires_grad=True) for s in range(4)]
    poses = torch.stack([losses.pose_to_matrix(0.05 * torch.randn(B, 3), 0.3 * torch.randn(B, 3))
                         for _ in range(2)], 1).requires_grad_()
    loss = pretrain.monodepth2_loss(disps, frames[:, 1:], poses, batch, pretrain.parse_args([]))
    expected = _reference_depth_loss(disps, frames[:, 1:], poses, frames[:, 0], K, torch.inverse(K))
    assert torch.isclose(loss, expected, rtol=1e-5, atol=0)
    grads = torch.autograd.grad(loss, disps + [poses])
    expected_grads = torch.autograd.grad(expected, disps + [poses])
    for g, e in zip(grads, expected_grads):
        assert torch.allclose(g, e, rtol=1e-4, atol=1e-5 * e.abs().max())


def test_sampling_at_a_non_finite_grid_point_gives_nan_there_and_grid_sample_elsewhere():
    source = torch.rand(1, 3, 4, 5)
    grid = torch.rand(1, 4, 5, 2) * 2 - 1
    grid[0, 1, 2, 0], grid[0, 3, 4, 1] = float('nan'), float('inf')
    out = losses.sample(source, grid)
    bad = torch.zeros(4, 5, dtype=torch.bool)
    bad[1, 2] = bad[3, 4] = True
    assert out[0][:, bad].isnan().all()  # so the loss is NaN, and never back-propagated
    expected = torch.nn.functional.grid_sample(source, grid, mode='bilinear', padding_mode='border', align_corners=False)
    assert torch.equal(out[0][:, ~bad], expected[0][:, ~bad])


def _ssim_by_hand(x, y):
    """(1 - SSIM) / 2 per pixel with 3x3 means over reflection-padded images, SSIM's constants written out
    (C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = 1), computed apart from losses.ssim."""
    mean = lambda t: torch.nn.functional.avg_pool2d(torch.nn.functional.pad(t, (1, 1, 1, 1), mode='reflect'), 3, 1)
    mu_x, mu_y = mean(x), mean(y)
    var_x, var_y, cov = mean(x * x) - mu_x ** 2, mean(y * y) - mu_y ** 2, mean(x * y) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = (2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return ((1 - s) / 2).clamp(0, 1)


def test_photometric_error_is_monodepth2s_weighting_of_halved_ssim_and_l1():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(1, 3, 6, 7, generator=g), torch.rand(1, 3, 6, 7, generator=g)
    assert torch.allclose(losses.ssim(pred, target), _ssim_by_hand(pred, target), atol=1e-6)
    # eq. 10 as Monodepth2 weighs it: 0.85 on (1 - SSIM) / 2, 0.15 on L1, each averaged over the channels
    expected = (0.85 * _ssim_by_hand(pred, target).mean(1, keepdim=True)
                + 0.15 * (pred - target).abs().mean(1, keepdim=True))
    assert torch.allclose(losses.photometric_error(pred, target), expected, atol=1e-6)
    # on flat images only the means count: SSIM = (2 * 0.3 * 0.5 + C1) / (0.3^2 + 0.5^2 + C1)
    flat = losses.photometric_error(torch.full((1, 3, 4, 4), 0.3), torch.full((1, 3, 4, 4), 0.5))
    s = (0.3 + 1e-4) / (0.34 + 1e-4)
    assert torch.allclose(flat, torch.tensor(0.85 * (1 - s) / 2 + 0.15 * 0.2), atol=1e-6)


def test_smoothness_weighs_each_disparity_step_by_exp_of_minus_the_image_step():
    disp = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    grey = torch.tensor([[0.0, 0.5], [0.25, 0.25]])
    img = torch.stack([grey, -grey, grey])[None]  # steps of opposite signs: the mean of |step| over channels
    # x: steps 1 (image step 0.5) and 2 (image step 0); y: steps 2 and 3 (image steps 0.25 and 0.25)
    expected = (1 * math.exp(-0.5) + 2 * math.exp(0)) / 2 + (2 * math.exp(-0.25) + 3 * math.exp(-0.25)) / 2
    assert losses.smoothness_loss(disp, img).item() == pytest.approx(expected)
