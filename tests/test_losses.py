"""Every formula of losses.py and of pretrain.py's losses, pinned on tiny tensors against values computed by
hand or by a formula written out here apart from the code under test (depth pre-training paper, App. B,
eq. 7-15; SILog from the minimal-transfer paper, Sect. 2.3)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import evaluate
import losses
import models
import pretrain
from conftest import project


def intrinsics(fx, fy, cx, cy):
    return torch.tensor([[fx, 0, cx, 0], [0, fy, cy, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------
# Oracles written apart from losses.py
# ----------------------------------------------------------------------------------------------------

def _ssim_by_hand(x, y):
    """(1 - SSIM) / 2 per pixel with 3x3 means over reflection-padded images, SSIM's constants written out
    (C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = 1), computed apart from losses.ssim."""
    mean = lambda t: F.avg_pool2d(F.pad(t, (1, 1, 1, 1), mode='reflect'), 3, 1)
    mu_x, mu_y = mean(x), mean(y)
    var_x, var_y, cov = mean(x * x) - mu_x ** 2, mean(y * y) - mu_y ** 2, mean(x * y) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = (2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return ((1 - s) / 2).clamp(0, 1)


def _photometric_by_hand(x, y):
    """Eq. 10 with Monodepth2's weighting: 0.85 (1 - SSIM) / 2 + 0.15 |x - y|, channel means: [B,1,H,W]."""
    return 0.85 * _ssim_by_hand(x, y).mean(1, keepdim=True) + 0.15 * (x - y).abs().mean(1, keepdim=True)


def _rodrigues_by_hand(axisangle):
    """[B,3] -> [B,3,3]: cos(a) I + sin(a) [k]x + (1 - cos(a)) k k^T, the outer-product form of Rodrigues'
    formula (losses.pose_to_matrix uses the [k]x^2 form)."""
    out = []
    for r in axisangle.double():
        a = r.norm()
        k = r / a
        cross = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], dtype=torch.float64)
        out.append(a.cos() * torch.eye(3, dtype=torch.float64) + a.sin() * cross
                   + (1 - a.cos()) * torch.outer(k, k))
    return torch.stack(out).float()


def _rigid(R, t):
    """[B,3,3], [B,3] -> [B,4,4] (P -> R P + t)."""
    T = torch.eye(4).repeat(len(R), 1, 1)
    T[:, :3, :3], T[:, :3, 3] = R, t
    return T


def _backproject_by_hand(depth, K):
    """Depth [B,1,H,W] -> [B,4,H*W] homogeneous points (z (u - cx) / fx, z (v - cy) / fy, z, 1), row-major."""
    B, _, H, W = depth.shape
    v, u = torch.meshgrid(torch.arange(H, dtype=depth.dtype), torch.arange(W, dtype=depth.dtype), indexing='ij')
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    z = depth.reshape(B, -1)
    x, y = (u.flatten() - cx) / fx * z, (v.flatten() - cy) / fy * z
    return torch.stack([x, y, z, torch.ones_like(z)], 1)


def _warp_by_hand(source, depth, K, T):
    """Eq. 7-8 apart from losses.py: back-project by hand, project with conftest's oracle, grid_sample."""
    H, W = depth.shape[-2:]
    grid = project(_backproject_by_hand(depth, K[0]), K, T, H, W)
    return F.grid_sample(source, grid, mode='bilinear', padding_mode='border', align_corners=False)


def _smoothness_by_hand(field, image):
    """Eq. 11 / 14: mean |dX f| e^{-mean_c |dX I|} + mean |dY f| e^{-mean_c |dY I|} (means over B, C, pixels)."""
    wx = torch.exp(-(image[..., 1:] - image[..., :-1]).abs().mean(1, keepdim=True))
    wy = torch.exp(-(image[..., 1:, :] - image[..., :-1, :]).abs().mean(1, keepdim=True))
    return (((field[..., 1:] - field[..., :-1]).abs() * wx).mean()
            + ((field[..., 1:, :] - field[..., :-1, :]).abs() * wy).mean())


# ----------------------------------------------------------------------------------------------------
# SSIM and the photometric error (eq. 10)
# ----------------------------------------------------------------------------------------------------

def test_ssim_of_image_with_itself_is_zero_and_stays_in_0_1():
    x = _rand(2, 3, 8, 10)
    assert losses.ssim(x, x).shape == x.shape
    assert torch.allclose(losses.ssim(x, x), torch.zeros_like(x), atol=1e-6)
    # nearly identical images: rounding pushes (1 - SSIM) / 2 a little below 0 at many pixels; it is clamped
    y = x + 1e-6 * _randn(2, 3, 8, 10, seed=1)
    assert losses.ssim(x, y).min() >= 0 and losses.ssim(x, 1 - x).max() <= 1


def test_ssim_matches_formula_at_interior_and_corner_pixel():
    x, y = _rand(1, 2, 6, 7, seed=1), _rand(1, 2, 6, 7, seed=2)
    for (i, j), c in [((3, 4), 0), ((3, 4), 1), ((0, 0), 0), ((5, 6), 1)]:
        # 3x3 neighbourhood of (i, j) in the reflection-padded channel
        a = np.pad(x[0, c].double().numpy(), 1, mode='reflect')[i:i + 3, j:j + 3]
        b = np.pad(y[0, c].double().numpy(), 1, mode='reflect')[i:i + 3, j:j + 3]
        mu_a, mu_b = a.mean(), b.mean()
        var_a, var_b = ((a - mu_a) ** 2).mean(), ((b - mu_b) ** 2).mean()
        cov = ((a - mu_a) * (b - mu_b)).mean()
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
        expected = np.clip((1 - s) / 2, 0, 1)
        assert abs(losses.ssim(x, y)[0, c, i, j].item() - expected) < 1e-5


def test_ssim_constants_c1_and_c2_on_dark_low_contrast_images():
    # dark, low-contrast images: C1 = 1e-4 and C2 = 9e-4 are of the order of the means and variances, so a
    # changed constant moves the value far beyond float error
    x = 0.02 + 0.01 * _rand(1, 1, 5, 6, seed=3)
    y = 0.01 + 0.03 * _rand(1, 1, 5, 6, seed=4)
    assert torch.allclose(losses.ssim(x, y), _ssim_by_hand(x, y), rtol=1e-4, atol=1e-7)
    # flat images: the contrast term is C2 / C2 = 1; SSIM = (2 * 0.01 * 0.02 + C1) / (0.01^2 + 0.02^2 + C1)
    flat = losses.ssim(torch.full((1, 1, 3, 3), 0.01), torch.full((1, 1, 3, 3), 0.02))
    s = (4e-4 + 1e-4) / (1e-4 + 4e-4 + 1e-4)
    assert torch.allclose(flat, torch.tensor((1 - s) / 2), rtol=1e-4, atol=0)
    # a 3x3 image whose centre window is the whole image: x has columns (0, d, 0), y has columns (d, 0, d)
    d = 0.03
    x = torch.tensor([[[[0.0, d, 0.0]] * 3]])
    y = torch.tensor([[[[d, 0.0, d]] * 3]])
    mx, my = d / 3, 2 * d / 3                       # 0.01, 0.02
    vx, vy = d * d / 3 - mx ** 2, 2 * d * d / 3 - my ** 2  # 2e-4 each: of the order of C2
    cov = 0 - mx * my                               # x y is 0 everywhere
    s = (2 * mx * my + 1e-4) * (2 * cov + 9e-4) / ((mx ** 2 + my ** 2 + 1e-4) * (vx + vy + 9e-4))
    assert losses.ssim(x, y)[0, 0, 1, 1].item() == pytest.approx((1 - s) / 2, rel=1e-4)


def test_box_mean_is_the_3x3_mean_of_the_reflection_padded_image():
    x = _rand(2, 3, 5, 7)
    expected = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode='reflect'), 3, stride=1)
    assert torch.allclose(losses.box_mean(x), expected, atol=1e-6)
    # corner (0, 0): reflection repeats row 1 and column 1 across the border
    rows, cols = [1, 0, 1], [1, 0, 1]
    assert torch.isclose(losses.box_mean(x)[0, 0, 0, 0], x[0, 0][rows][:, cols].mean())


def test_target_statistics_are_shared_and_change_nothing():
    x, y = _rand(2, 3, 6, 8, seed=1), _rand(2, 3, 6, 8, seed=2)
    target = losses.ssim_statistics(y)
    mean = F.avg_pool2d(F.pad(y, (1, 1, 1, 1), mode='reflect'), 3, stride=1)
    square = F.avg_pool2d(F.pad(y * y, (1, 1, 1, 1), mode='reflect'), 3, stride=1)
    assert torch.allclose(target.mean, mean, atol=1e-6) and torch.allclose(target.variance, square - mean ** 2, atol=1e-6)
    assert losses.ssim_statistics(target) is target
    assert torch.equal(losses.ssim(x, target), losses.ssim(x, y))
    assert torch.equal(losses.photometric_error(x, target), losses.photometric_error(x, y))


def test_photometric_error_is_monodepth2s_weighting_of_halved_ssim_and_l1():
    pred, target = _rand(1, 3, 6, 7, seed=1), _rand(1, 3, 6, 7, seed=2)
    assert torch.allclose(losses.ssim(pred, target), _ssim_by_hand(pred, target), atol=1e-6)
    # eq. 10 as Monodepth2 weighs it: 0.85 on (1 - SSIM) / 2, 0.15 on L1, each averaged over the channels
    assert torch.allclose(losses.photometric_error(pred, target), _photometric_by_hand(pred, target), atol=1e-6)
    # on flat images only the means count: SSIM = (2 * 0.3 * 0.5 + C1) / (0.3^2 + 0.5^2 + C1)
    flat = losses.photometric_error(torch.full((1, 3, 4, 4), 0.3), torch.full((1, 3, 4, 4), 0.5))
    s = (0.3 + 1e-4) / (0.34 + 1e-4)
    assert torch.allclose(flat, torch.tensor(0.85 * (1 - s) / 2 + 0.15 * 0.2), atol=1e-6)
    # alpha is the weight of the (halved) SSIM term
    expected = (0.4 * _ssim_by_hand(pred, target).mean(1, keepdim=True)
                + 0.6 * (pred - target).abs().mean(1, keepdim=True))
    assert torch.allclose(losses.photometric_error(pred, target, alpha=0.4), expected, atol=1e-6)


def test_photometric_error_of_several_views_at_once_is_eq_10_for_each_view():
    B, S, C, H, W = 2, 3, 3, 5, 6
    views, target = _rand(B, S, C, H, W, seed=1), _rand(B, C, H, W, seed=2)
    views[:, 1] = target  # the middle view is the target itself: zero error
    errors = losses.photometric_error(views, target)
    assert errors.shape == (B, S, H, W)
    for s in range(S):
        assert torch.allclose(errors[:, s:s + 1], _photometric_by_hand(views[:, s], target), atol=1e-6), s
    assert errors[:, 1].abs().max() < 1e-6
    assert torch.equal(losses.photometric_error(views, losses.ssim_statistics(target)), errors)


# ----------------------------------------------------------------------------------------------------
# Camera geometry (eq. 7-8): poses, back-projection, warping
# ----------------------------------------------------------------------------------------------------

def test_pose_to_matrix_rotation_about_z_and_translation_by_hand():
    a, t = 0.3, torch.tensor([[1.0, -2.0, 3.0]])
    T = losses.pose_to_matrix(torch.tensor([[0.0, 0.0, a]]), t)
    c, s = math.cos(a), math.sin(a)
    expected = torch.tensor([[c, -s, 0, 1.0], [s, c, 0, -2.0], [0, 0, 1, 3.0], [0, 0, 0, 1]])
    assert torch.allclose(T[0], expected, atol=1e-6)
    # no rotation: the identity and the translation, bottom row (0, 0, 0, 1)
    T0 = losses.pose_to_matrix(torch.zeros(1, 3), t)
    assert torch.allclose(T0[0], torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, -2], [0, 0, 1, 3], [0, 0, 0, 1]]))
    # right-hand rule: +pi/2 about y turns x (right) into -z (towards the viewer)
    R = losses.pose_to_matrix(torch.tensor([[0, math.pi / 2, 0]]), torch.zeros(1, 3))[0, :3, :3]
    assert torch.allclose(R @ torch.tensor([1.0, 0, 0]), torch.tensor([0, 0, -1.0]), atol=1e-6)


def test_pose_to_matrix_about_a_general_axis_is_rodrigues():
    # 120 degrees about (1, 1, 1) permutes the axes: x -> y -> z -> x
    axisangle = torch.tensor([[1.0, 1.0, 1.0]]) / math.sqrt(3) * (2 * math.pi / 3)
    R = losses.pose_to_matrix(axisangle, torch.zeros(1, 3))[0, :3, :3]
    assert torch.allclose(R, torch.tensor([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]]), atol=1e-6)
    # random axes and angles against the outer-product form of Rodrigues' formula
    axisangle = torch.tensor([[0.3, -0.2, 0.5], [-0.05, 0.02, 0.01], [1.0, 2.0, -0.5]])
    translation = _randn(3, 3)
    T = losses.pose_to_matrix(axisangle, translation)
    assert torch.allclose(T, _rigid(_rodrigues_by_hand(axisangle), translation), atol=1e-6)


def test_pose_to_matrix_invert_is_transposed_rotation_and_minus_rotated_translation():
    axisangle, translation = torch.tensor([[0.3, -0.2, 0.5], [1.0, 2.0, -0.5]]), torch.tensor([[1.0, 2, 3], [-1, 0.5, 2]])
    R = _rodrigues_by_hand(axisangle)
    R_t = R.transpose(1, 2)
    expected = _rigid(R_t, -(R_t @ translation[..., None])[..., 0])
    T_inv = losses.pose_to_matrix(axisangle, translation, invert=True)
    assert torch.allclose(T_inv, expected, atol=1e-6)
    T = losses.pose_to_matrix(axisangle, translation)
    assert torch.allclose(T @ T_inv, torch.eye(4).expand(2, 4, 4), atol=1e-5)
    assert torch.allclose(T_inv @ T, torch.eye(4).expand(2, 4, 4), atol=1e-5)


def test_composed_poses_map_points_as_chained():
    a1, t1 = torch.tensor([[0.0, 0.0, math.pi / 2]]), torch.tensor([[1.0, 0.0, 0.0]])
    a2, t2 = torch.tensor([[math.pi / 2, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 2.0]])
    T_ab, T_bc = losses.pose_to_matrix(a1, t1), losses.pose_to_matrix(a2, t2)
    P = torch.tensor([1.0, 2.0, 3.0, 1.0])
    # T_bc: 90 deg about x: (x, y, z) -> (x, -z, y), then + (0, 0, 2): (1, -3, 4)
    # T_ab: 90 deg about z: (x, y, z) -> (-y, x, z), then + (1, 0, 0): (3 + 1, 1, 4)
    assert torch.allclose((T_bc @ P)[0], torch.tensor([1.0, -3.0, 4.0, 1.0]), atol=1e-6)
    assert torch.allclose((T_ab @ T_bc @ P)[0], torch.tensor([4.0, 1.0, 4.0, 1.0]), atol=1e-6)


def test_pixel_grid_and_sampling_grid_by_hand():
    u, v = losses.pixel_grid(2, 3, torch.zeros(1))
    assert torch.equal(u, torch.tensor([[0.0, 1, 2], [0, 1, 2]]))
    assert torch.equal(v, torch.tensor([[0.0, 0, 0], [1, 1, 1]]))
    # align_corners=False: pixel centre u sits at (2u + 1) / W - 1; the image spans [-1, 1]
    grid = losses.sampling_grid(torch.tensor([0.0, 7.0, 3.5, -0.5]), torch.tensor([0.0, 3.0, 1.5, 3.5]), 4, 8)
    expected = torch.tensor([[-0.875, -0.75], [0.875, 0.75], [0.0, 0.0], [-1.0, 1.0]])
    assert torch.allclose(grid, expected)


def test_backproject_is_depth_times_inverse_intrinsics_of_the_pixel():
    K = intrinsics(2.0, 4.0, 1.0, 0.5)
    depth = torch.tensor([[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]]])
    points = losses.backproject(depth, torch.inverse(K)[None])
    assert points.shape == (1, 4, 6)
    # pixel (u, v) = (2, 1) at depth 6: x = 6 (2 - 1) / 2 = 3, y = 6 (1 - 0.5) / 4 = 0.75
    assert torch.allclose(points[0, :, 5], torch.tensor([3.0, 0.75, 6.0, 1.0]))
    # pixel (0, 0) at depth 1: x = (0 - 1) / 2, y = (0 - 0.5) / 4
    assert torch.allclose(points[0, :, 0], torch.tensor([-0.5, -0.125, 1.0, 1.0]))
    # pixel (1, 0) at depth 2: x = 0, y = 2 (0 - 0.5) / 4 = -0.25
    assert torch.allclose(points[0, :, 1], torch.tensor([0.0, -0.25, 2.0, 1.0]))
    assert torch.allclose(points, _backproject_by_hand(depth, K))


def test_view_rays_are_K_R_K_inverse_of_the_pixel_and_the_shift_is_K_t():
    K = intrinsics(2.0, 4.0, 1.0, 0.5)
    c, s = math.cos(0.2), math.sin(0.2)
    T = _rigid(torch.tensor([[[c, -s, 0], [s, c, 0], [0, 0, 1.0]]]), torch.tensor([[0.5, -1.0, 2.0]]))
    rays, shift = losses.view_rays(K[None], torch.inverse(K)[None], T[:, None], 2, 3)
    assert rays.shape == (1, 1, 6, 3) and shift.shape == (1, 1, 1, 3)
    # K t = (fx tx + cx tz, fy ty + cy tz, tz)
    assert torch.allclose(shift[0, 0, 0], torch.tensor([2 * 0.5 + 1 * 2.0, 4 * -1.0 + 0.5 * 2.0, 2.0]))
    # pixel (u, v) = (2, 1): K^-1 p = (0.5, 0.125, 1), turned by 0.2 rad about z, then K
    x, y = c * 0.5 - s * 0.125, s * 0.5 + c * 0.125
    assert torch.allclose(rays[0, 0, 5], torch.tensor([2 * x + 1, 4 * y + 0.5, 1.0]), atol=1e-6)
    # the identity pose: rays are the homogeneous pixels themselves, in row-major order
    rays, shift = losses.view_rays(K[None], torch.inverse(K)[None], torch.eye(4)[None, None], 2, 3)
    pixels = torch.tensor([[u, v, 1.0] for v in range(2) for u in range(3)])
    assert torch.allclose(rays[0, 0], pixels, atol=1e-6) and torch.equal(shift, torch.zeros(1, 1, 1, 3))


def test_warp_with_identity_pose_reproduces_image():
    K = intrinsics(5.0, 6.0, 4.5, 3.5).expand(2, 4, 4)
    source, depth = _rand(2, 3, 7, 9, seed=1), 0.5 + 10 * _rand(2, 1, 7, 9, seed=2)
    rays = losses.view_rays(K, torch.inverse(K), torch.eye(4).expand(2, 1, 4, 4), 7, 9)
    assert torch.allclose(losses.warp_views(source[:, None], depth, rays)[:, 0], source, atol=1e-5)


def test_warp_translation_shifts_by_fx_tx_over_z():
    H, W, fx, z, tx = 6, 16, 8.0, 2.0, 0.5
    shift = int(fx * tx / z)                                      # 2 pixels
    K = intrinsics(fx, fx, 7.5, 2.5)[None]
    T = losses.pose_to_matrix(torch.zeros(1, 3), torch.tensor([[tx, 0, 0]]))
    source = _rand(1, 3, H, W)
    rays = losses.view_rays(K, torch.inverse(K), T[:, None], H, W)
    warped = losses.warp_views(source[:, None], torch.full((1, 1, H, W), z), rays)[:, 0]
    # P_source = P_target + (tx, 0, 0), so u_source = u_target + fx*tx/z: target pixel u reads
    # source pixel u + shift (the content moves left by `shift` pixels in the warped image).
    assert torch.allclose(warped[..., :W - shift], source[..., shift:], atol=1e-5)
    assert torch.allclose(warped[..., W - shift:], source[..., W - 1:].expand(-1, -1, -1, shift), atol=1e-5)  # border
    # the shift is inversely proportional to the depth: at depth 2 z the same translation moves one pixel
    warped = losses.warp_views(source[:, None], torch.full((1, 1, H, W), 2 * z), rays)[:, 0]
    assert torch.allclose(warped[..., :W - 1], source[..., 1:], atol=1e-5)


def test_warp_rotation_about_the_optical_axis_turns_the_image():
    # a square image, principal point at its centre, fx = fy: a quarter turn about z maps the pixel offset
    # (du, dv) from the centre to (-dv, du) whatever the depth, so target pixel (u, v) reads source pixel
    # (u', v') = (N - 1 - v, u)
    N = 5
    K = intrinsics(3.0, 3.0, 2.0, 2.0)[None]
    T = losses.pose_to_matrix(torch.tensor([[0.0, 0.0, math.pi / 2]]), torch.zeros(1, 3))
    source, depth = _rand(1, 2, N, N, seed=1), 1 + _rand(1, 1, N, N, seed=2)
    warped = losses.warp_views(source[:, None], depth, losses.view_rays(K, torch.inverse(K), T[:, None], N, N))[:, 0]
    v, u = torch.meshgrid(torch.arange(N), torch.arange(N), indexing='ij')
    expected = source[:, :, u, N - 1 - v]
    assert torch.allclose(warped, expected, atol=1e-5)
    assert torch.allclose(warped, _warp_by_hand(source, depth, K, T), atol=1e-5)


def test_warp_views_is_eq_8_step_by_step_for_each_source():
    B, S, H, W = 2, 3, 6, 10
    K = intrinsics(8.0, 7.0, 4.5, 2.5).expand(B, 4, 4)
    inv_K = torch.inverse(K)
    depth, sources = 1 + 5 * _rand(B, 1, H, W, seed=1), _rand(B, S, 3, H, W, seed=2)
    T = torch.stack([losses.pose_to_matrix(0.05 * _randn(B, 3, seed=3 + s), 0.2 * _randn(B, 3, seed=9 + s))
                     for s in range(S)], 1)
    rays, shift = losses.view_rays(K, inv_K, T, H, W)
    assert rays.shape == (B, S, H * W, 3) and shift.shape == (B, S, 1, 3)
    warped = losses.warp_views(sources, depth, (rays, shift))
    for s in range(S):
        assert torch.allclose(warped[:, s], _warp_by_hand(sources[:, s], depth, K, T[:, s]), atol=1e-5)


def test_warp_of_points_on_the_camera_plane_stays_finite():
    # depth 0 with no translation: the projected point is 0 / 0 without the eps clamp
    K = intrinsics(4.0, 4.0, 1.5, 1.5)[None]
    rays = losses.view_rays(K, torch.inverse(K), torch.eye(4)[None, None], 4, 4)
    warped = losses.warp_views(_rand(1, 1, 3, 4, 4), torch.zeros(1, 1, 4, 4), rays)
    assert torch.isfinite(warped).all()


def test_sampling_at_a_non_finite_grid_point_gives_nan_there_and_grid_sample_elsewhere():
    source = _rand(1, 3, 4, 5, seed=1)
    grid = _rand(1, 4, 5, 2, seed=2) * 2 - 1
    grid[0, 1, 2, 0], grid[0, 3, 4, 1] = float('nan'), float('inf')
    out = losses.sample(source, grid)
    bad = torch.zeros(4, 5, dtype=torch.bool)
    bad[1, 2] = bad[3, 4] = True
    assert out[0][:, bad].isnan().all()  # so the loss is NaN, and never back-propagated
    expected = F.grid_sample(source, grid, mode='bilinear', padding_mode='border', align_corners=False)
    assert torch.equal(out[0][:, ~bad], expected[0][:, ~bad])


# ----------------------------------------------------------------------------------------------------
# Smoothness (eq. 11, eq. 14) and mean normalisation
# ----------------------------------------------------------------------------------------------------

def test_mean_normalised_divides_each_image_by_its_own_mean():
    disp = torch.tensor([[[[1.0, 3.0]]], [[[2.0, 6.0]]], [[[0.5, 0.5]]]])
    expected = torch.tensor([[[[0.5, 1.5]]], [[[0.5, 1.5]]], [[[1.0, 1.0]]]])
    assert torch.allclose(losses.mean_normalised(disp), expected, rtol=1e-6, atol=0)
    disp = 0.1 + _rand(2, 1, 5, 6)
    assert torch.allclose(losses.mean_normalised(disp).mean((2, 3)), torch.ones(2, 1))
    assert torch.allclose(losses.mean_normalised(3 * disp), losses.mean_normalised(disp), atol=1e-6)


def test_smoothness_weighs_each_disparity_step_by_exp_of_minus_the_image_step():
    disp = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    grey = torch.tensor([[0.0, 0.5], [0.25, 0.25]])
    img = torch.stack([grey, -grey, grey])[None]  # steps of opposite signs: the mean of |step| over channels
    # x: steps 1 (image step 0.5) and 2 (image step 0); y: steps 2 and 3 (image steps 0.25 and 0.25)
    expected = (1 * math.exp(-0.5) + 2 * math.exp(0)) / 2 + (2 * math.exp(-0.25) + 3 * math.exp(-0.25)) / 2
    assert losses.smoothness_loss(disp, img).item() == pytest.approx(expected)


def test_smoothness_of_a_two_channel_flow_averages_over_both_channels():
    flow = torch.tensor([[[[0.0, 2.0], [0.0, 2.0]], [[1.0, 1.0], [-3.0, 1.0]]]])  # [1,2,2,2]: u, v
    img = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]]])                               # one channel
    # x steps: u (2, 2), v (0, 4) with image steps (1, 0); y steps: u (0, 0), v (4, 0) with image steps (0.5, 0.5)
    expected = (2 * math.exp(-1) + 2 * 1 + 0 * math.exp(-1) + 4 * 1) / 4 + (4 * math.exp(-0.5)) / 4
    assert losses.smoothness_loss(flow, img).item() == pytest.approx(expected)
    assert losses.smoothness_loss(torch.full((1, 2, 8, 8), 4.0), _rand(1, 3, 8, 8)) == 0
    field, image = _randn(2, 2, 5, 6, seed=1), _rand(2, 3, 5, 6, seed=2)
    assert torch.isclose(losses.smoothness_loss(field, image), _smoothness_by_hand(field, image))


# ----------------------------------------------------------------------------------------------------
# Optical flow: warping and the photometric term (eq. 13)
# ----------------------------------------------------------------------------------------------------

def test_flow_warp_reproduces_a_known_shift():
    source = _rand(1, 3, 6, 12)
    flow = torch.zeros(1, 2, 6, 12)
    flow[:, 0], flow[:, 1] = 3.0, 1.0  # every pixel of frame t moved 3 right and 1 down in frame t+1
    warped = losses.flow_warp(source, flow)
    assert torch.allclose(warped[..., :-1, :-3], source[..., 1:, 3:], atol=1e-5)
    assert torch.allclose(losses.flow_warp(source, torch.zeros_like(flow)), source, atol=1e-6)
    # half a pixel to the right: the mean of a pixel and its right neighbour
    half = torch.zeros(1, 2, 6, 12)
    half[:, 0] = 0.5
    assert torch.allclose(losses.flow_warp(source, half)[..., :-1], (source[..., :-1] + source[..., 1:]) / 2, atol=1e-5)


def test_flow_photometric_error_is_eq_13_with_unhalved_ssim():
    x, y = _rand(2, 3, 8, 8, seed=1), _rand(2, 3, 8, 8, seed=2)
    assert losses.flow_photometric_error(x, x).abs().max() < 1e-6
    # defaults lambda_co = lambda_st = 0.15, and 1 - SSIM, twice what ssim() returns
    expected = 0.15 * (x - y).abs().mean(1, keepdim=True) + 0.15 * 2 * _ssim_by_hand(x, y).mean(1, keepdim=True)
    error = losses.flow_photometric_error(x, y)
    assert error.shape == (2, 1, 8, 8) and torch.allclose(error, expected, atol=1e-6)
    expected = 0.3 * (x - y).abs().mean(1, keepdim=True) + 0.7 * 2 * _ssim_by_hand(x, y).mean(1, keepdim=True)
    assert torch.allclose(losses.flow_photometric_error(x, y, colour_weight=0.3, ssim_weight=0.7), expected, atol=1e-6)
    # flat images: 0.15 |0.3 - 0.5| + 0.15 (1 - SSIM), SSIM = (2 * 0.3 * 0.5 + C1) / (0.3^2 + 0.5^2 + C1)
    flat = losses.flow_photometric_error(torch.full((1, 3, 4, 4), 0.3), torch.full((1, 3, 4, 4), 0.5))
    s = (0.3 + 1e-4) / (0.34 + 1e-4)
    assert torch.allclose(flat, torch.tensor(0.15 * 0.2 + 0.15 * (1 - s)), atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Depth from ground truth (eq. 15, SILog) and segmentation (eq. 12)
# ----------------------------------------------------------------------------------------------------

def test_l1_depth_loss_is_the_mean_over_measured_pixels():
    gt = torch.tensor([[[[0.0, 2.0], [4.0, 0.0]]]])
    assert losses.l1_depth_loss(torch.tensor([[[[9.0, 2.0], [4.0, 9.0]]]]), gt) == 0
    # |3 - 2| + |2 - 4| over the two measured pixels
    assert torch.isclose(losses.l1_depth_loss(torch.tensor([[[[9.0, 3.0], [2.0, 9.0]]]]), gt), torch.tensor(1.5))
    only_first = torch.tensor([[[[False, True], [False, False]]]])
    assert losses.l1_depth_loss(torch.tensor([[[[9.0, 3.0], [2.0, 9.0]]]]), gt, only_first) == 1


def test_silog_by_hand_per_image_then_averaged_without_unmeasured_images():
    # d = log pred - log gt: image 0 measures d = 0.2 and 0.4, image 1 measures d = 0.6, image 2 nothing
    gt = torch.tensor([[[[2.0, 3.0, 0.0]]], [[[0.0, 5.0, 0.0]]], [[[0.0, 0.0, 0.0]]]])
    d = torch.tensor([[[[0.2, 0.4, 1.0]]], [[[7.0, 0.6, -3.0]]], [[[0.3, 0.3, 0.3]]]])
    pred = torch.where(gt > 0, gt, torch.ones_like(gt)) * d.exp()
    # per image mean(d^2) - lam mean(d)^2: (0.04 + 0.16) / 2 - lam 0.3^2 and 0.36 - lam 0.36
    for lam in (0.5, 0.0, 1.0, 0.85):
        expected = ((0.1 - lam * 0.09) + (0.36 - lam * 0.36)) / 2
        assert losses.silog_loss(pred, gt, lam=lam).item() == pytest.approx(expected, rel=1e-5, abs=1e-7), lam
    assert losses.silog_loss(pred, gt).item() == pytest.approx(((0.1 - 0.045) + 0.18) / 2, rel=1e-5)  # lam = 0.5
    # an explicit mask replaces target > 0: only the first pixel of image 0
    mask = torch.zeros_like(gt, dtype=torch.bool)
    mask[0, 0, 0, 0] = True
    assert losses.silog_loss(pred, gt, mask=mask, lam=0.25).item() == pytest.approx(0.04 - 0.25 * 0.04, rel=1e-5)


def test_silog_scale_invariance_and_squared_log_error():
    gt = _rand(2, 1, 5, 6, seed=1) * 50 + 1
    gt[0, 0, 0, 0] = 0  # no measurement
    pred = gt * torch.exp(0.3 * _randn(2, 1, 5, 6, seed=2))
    valid = gt > 0
    assert torch.isclose(losses.silog_loss(pred * 3.7, gt, lam=1), losses.silog_loss(pred, gt, lam=1), atol=1e-5)
    assert losses.silog_loss(gt * 3.7, gt, lam=1).abs() < 1e-5
    squared_log = torch.stack([((p[v].log() - g[v].log()) ** 2).mean() for p, g, v in zip(pred, gt, valid)]).mean()
    assert torch.isclose(losses.silog_loss(pred, gt, lam=0), squared_log)
    # a prediction right up to a scale eta costs (1 - lambda) (log eta)^2 (Sect. 2.3)
    assert torch.isclose(losses.silog_loss(gt * 3.7, gt, lam=0.5), torch.tensor(0.5 * math.log(3.7) ** 2))


def test_nll_loss_by_hand_on_two_classes_with_an_ignored_pixel():
    # [1, 2 classes, 1, 2]: pixel 0 logits (0, ln 3), label 1: p = 3/4; pixel 1 logits (2, 2), label 0: p = 1/2
    logits = torch.tensor([[[[0.0, 2.0]], [[math.log(3), 2.0]]]])
    assert losses.nll_loss(logits, torch.tensor([[[1, 0]]])).item() == pytest.approx((math.log(4 / 3) + math.log(2)) / 2)
    # label 255 is ignored, and the mean runs over the other pixels only
    assert losses.nll_loss(logits, torch.tensor([[[1, 255]]])).item() == pytest.approx(math.log(4 / 3))
    assert losses.nll_loss(logits, torch.tensor([[[255, 0]]])).item() == pytest.approx(math.log(2))
    # another ignore index
    assert losses.nll_loss(logits, torch.tensor([[[1, 0]]]), ignore_index=0).item() == pytest.approx(math.log(4 / 3))


def test_nll_loss_equals_cross_entropy():
    logits = _randn(2, 19, 4, 5)
    labels = torch.randint(0, 19, (2, 4, 5), generator=torch.Generator().manual_seed(1))
    labels[0, :2] = 255
    assert torch.allclose(losses.nll_loss(logits, labels), F.cross_entropy(logits, labels, ignore_index=255))


# ----------------------------------------------------------------------------------------------------
# pretrain.py: Monodepth2's loss (eq. 9) and its source views
# ----------------------------------------------------------------------------------------------------

def _reprojection_term(monkeypatch, target, sources, warped, automask=True):
    """pretrain.monodepth2_loss at one scale with a constant disparity (no smoothness cost) and the warp
    replaced by `warped` [B,S,3,H,W]: the reprojection term of eq. 9 alone."""
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
    identity = _photometric_by_hand(unwarped[:, 0], target)
    reprojection = _photometric_by_hand(warped[:, 0], target)
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


def _reference_depth_loss(disps, sources, poses, target, K, smoothness=1e-3, min_depth=0.1, max_depth=100.0):
    """Eq. 9 written out as Monodepth2 does it, with its default constants: SSIM from avg_pool2d, every
    source warped on its own (by hand, through conftest's projection), every scale's disparity upsampled to
    full resolution, auto-masking with ties to the unwarped source."""
    identity = torch.cat([_photometric_by_hand(s, target) for s in sources.unbind(1)], 1).min(1, keepdim=True).values
    total = 0
    for scale, disp in enumerate(disps):
        up = F.interpolate(disp, target.shape[-2:], mode='bilinear', align_corners=False)
        depth = 1 / (1 / max_depth + (1 / min_depth - 1 / max_depth) * up)
        warped = [_warp_by_hand(s, depth, K, T) for s, T in zip(sources.unbind(1), poses.unbind(1))]
        best = torch.cat([_photometric_by_hand(w, target) for w in warped], 1).min(1, keepdim=True).values
        image = F.interpolate(target, disp.shape[-2:], mode='area')
        smooth = _smoothness_by_hand(disp / (disp.mean((2, 3), keepdim=True) + 1e-7), image)
        total = total + torch.where(best < identity, best, identity).mean() + smoothness * smooth / 2 ** scale
    return total / len(disps)


def test_monodepth2_loss_is_monodepth2s_recipe_value_and_gradients():
    # in float64, so that the two computations agree to ~1e-15 and the smallest change of a formula shows
    B, H, W = 2, 32, 64
    K = intrinsics(40.0, 40.0, 31.5, 15.5).expand(B, 4, 4).double()
    frames = _rand(B, 3, 3, H, W, seed=1).double()
    batch = dict(frames=frames, K=K, inv_K=torch.inverse(K))
    disps = [_rand(B, 1, H // 2 ** s, W // 2 ** s, seed=2 + s).double().requires_grad_() for s in range(4)]
    poses = torch.stack([losses.pose_to_matrix(0.05 * _randn(B, 3, seed=10 + s), 0.3 * _randn(B, 3, seed=20 + s))
                         for s in range(2)], 1).double().requires_grad_()
    args = pretrain.parse_args([])
    assert (args.smoothness, args.min_depth, args.max_depth, args.scales) == (1e-3, 0.1, 100.0, 4)
    loss = pretrain.monodepth2_loss(disps, frames[:, 1:], poses, batch, args)
    expected = _reference_depth_loss(disps, frames[:, 1:], poses, frames[:, 0], K)
    assert torch.isclose(loss, expected, rtol=1e-10, atol=0)
    grads = torch.autograd.grad(loss, disps + [poses])
    expected_grads = torch.autograd.grad(expected, disps + [poses])
    for g, e in zip(grads, expected_grads):
        assert torch.allclose(g, e, rtol=1e-8, atol=1e-10 * e.abs().max())
    # other depth range, smoothness weight and number of scales: the flags reach the formula
    args = pretrain.parse_args(['--smoothness', '0.05', '--min-depth', '0.5', '--max-depth', '20', '--scales', '2'])
    loss = pretrain.monodepth2_loss(disps, frames[:, 1:], poses, batch, args)
    expected = _reference_depth_loss(disps[:2], frames[:, 1:], poses, frames[:, 0], K, 0.05, 0.5, 20.0)
    assert torch.isclose(loss, expected, rtol=1e-10, atol=0)


def test_monodepth2_smoothness_term_alone_is_weighted_by_w_sm_over_2_to_the_scale():
    # sources equal to a flat target and identity poses: every warp reproduces the target, the reprojection
    # term is 0, and on a flat image the edge weights are 1. Disparity at scale s: a ramp along x of slope
    # a_s plus a ramp along y of slope b_s, mean-normalised (divided by its mean m_s)
    B, H, W = 1, 16, 32
    K = intrinsics(20.0, 20.0, 15.5, 7.5)[None]
    frames = torch.full((B, 3, 3, H, W), 0.5)
    batch = dict(frames=frames, K=K, inv_K=torch.inverse(K))
    slopes = [(0.1, 0.0), (0.05, 0.1), (0.0, 0.2), (0.1, 0.1)]
    disps, expected = [], 0.0
    for s, (a, b) in enumerate(slopes):
        h, w = H >> s, W >> s
        v, u = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing='ij')
        disps.append((0.1 + a * u + b * v)[None, None])
        mean = 0.1 + a * (w - 1) / 2 + b * (h - 1) / 2
        expected += 0.5 * (a + b) / mean / 2 ** s
    args = pretrain.parse_args(['--smoothness', '0.5'])
    loss = pretrain.monodepth2_loss(disps, frames[:, 1:], torch.eye(4).expand(B, 2, 4, 4), batch, args)
    assert loss.item() == pytest.approx(expected / 4, rel=1e-4)


class _StubPoseNet:
    """A PoseNet whose estimate is a known function of its two inputs' means a and b (so their order shows):
    axis-angle (a, -b, a + 2 b) / 2, translation (a, 2 b, -a - b)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, frame_a, frame_b):
        self.calls += 1
        a, b = frame_a.mean((1, 2, 3)), frame_b.mean((1, 2, 3))
        return torch.stack([a, -b, a + 2 * b], 1) / 2, torch.stack([a, 2 * b, -a - b], 1)

    @staticmethod
    def pose(a, b):
        return torch.tensor([[a, -b, a + 2 * b]]) / 2, torch.tensor([[a, 2 * b, -a - b]])


def _video_batch(B=2, H=4, W=6):
    """Frames t, t-1, t+1 of constant values (t: 0.1, t-1: 0.2, t+1: 0.3, plus 0.05 per batch item) as the
    PoseNet's jittered input, and different images as the loss's frames."""
    values = torch.tensor([0.1, 0.2, 0.3])[None] + 0.05 * torch.arange(B)[:, None]
    frames_aug = values[..., None, None, None].expand(B, 3, 3, H, W).clone()
    return dict(frames_aug=frames_aug, frames=_rand(B, 3, 3, H, W, seed=5))


def test_source_views_from_video_invert_the_first_pair_and_keep_temporal_order():
    batch, stub = _video_batch(), _StubPoseNet()
    images, poses = pretrain.source_views(batch, stub, 'mono')
    assert stub.calls == 1  # both pairs in one batched call
    assert torch.equal(images, batch['frames'][:, 1:])  # t-1, t+1, unjittered
    assert poses.shape == (2, 2, 4, 4)
    for i in range(2):
        t, previous, following = 0.1 + 0.05 * i, 0.2 + 0.05 * i, 0.3 + 0.05 * i
        # pair (t-1, t): the motion t-1 -> t, inverted by hand (R^T, -R^T t) to map frame t into frame t-1
        axisangle, translation = _StubPoseNet.pose(previous, t)
        R = _rodrigues_by_hand(axisangle)[0]
        backward = _rigid(R.T[None], -(R.T @ translation[0])[None])[0]
        # pair (t, t+1): the motion t -> t+1 as it is
        axisangle, translation = _StubPoseNet.pose(t, following)
        forward = _rigid(_rodrigues_by_hand(axisangle), translation)[0]
        assert torch.allclose(poses[i, 0], backward, atol=1e-6), i
        assert torch.allclose(poses[i, 1], forward, atol=1e-6), i


def test_source_views_from_stereo_and_from_both():
    B, H, W = 2, 4, 6
    batch = _video_batch(B, H, W)
    batch['stereo'] = _rand(B, 3, H, W, seed=6)
    batch['stereo_T'] = torch.eye(4).repeat(B, 1, 1)
    batch['stereo_T'][:, 0, 3] = torch.tensor([0.54, -0.54])
    images, poses = pretrain.source_views(batch, None, 'stereo')
    assert torch.equal(images, batch['stereo'][:, None]) and torch.equal(poses, batch['stereo_T'][:, None])
    images, poses = pretrain.source_views(batch, _StubPoseNet(), 'mono+stereo')
    mono_images, mono_poses = pretrain.source_views(batch, _StubPoseNet(), 'mono')
    assert images.shape == (B, 3, 3, H, W) and poses.shape == (B, 3, 4, 4)
    assert torch.equal(images[:, :2], mono_images) and torch.equal(images[:, 2], batch['stereo'])
    assert torch.equal(poses[:, :2], mono_poses) and torch.equal(poses[:, 2], batch['stereo_T'])


# ----------------------------------------------------------------------------------------------------
# Depth from ground truth, optical flow
# ----------------------------------------------------------------------------------------------------

def test_supervised_depth_loss_on_the_finest_disparity_upsampled_to_the_ground_truth():
    disp = _rand(2, 1, 2, 3, seed=1)
    gt = 1 + 10 * _rand(2, 1, 4, 6, seed=2)
    gt[0, 0, 1, 2] = gt[1, 0, 3, 0] = gt[1, 0, 0, 0] = 0  # unmeasured
    up = F.interpolate(disp, (4, 6), mode='bilinear', align_corners=False)
    depth = 1 / (1 / 20.0 + (1 / 0.5 - 1 / 20.0) * up)  # min 0.5, max 20
    valid = gt > 0
    l1 = (depth[valid] - gt[valid]).abs().mean()
    loss = losses.supervised_depth_loss(models.depth_at(disp, gt.shape[-2:], 0.5, 20.0), gt, 'l1', 0.5)
    assert torch.isclose(loss, l1, rtol=1e-6)
    d = [(p[v].log() - g[v].log()) for p, g, v in zip(depth, gt, valid)]
    silog = torch.stack([(e ** 2).mean() - 0.3 * e.mean() ** 2 for e in d]).mean()
    loss = losses.supervised_depth_loss(models.depth_at(disp, gt.shape[-2:], 0.5, 20.0), gt, 'silog', 0.3)
    assert torch.isclose(loss, silog, rtol=1e-5)


def _reference_flow_loss(flows, frames, colour=0.15, structure=0.15, smoothness=5.0):
    """Eq. 13 + eq. 14 per scale written out: the flow upsampled to full resolution (its values unchanged),
    frame t+1 sampled at p + flow(p), the smoothness at the flow's own scale weighted lambda_sm / 2^scale."""
    target, source = frames[:, 0], frames[:, 1]
    H, W = target.shape[-2:]
    v, u = torch.meshgrid(torch.arange(H, dtype=target.dtype), torch.arange(W, dtype=target.dtype), indexing='ij')
    total = 0
    for scale, flow in enumerate(flows):
        full = F.interpolate(flow, (H, W), mode='bilinear', align_corners=False)
        x, y = u + full[:, 0], v + full[:, 1]
        grid = torch.stack([(2 * x + 1) / W - 1, (2 * y + 1) / H - 1], -1)
        warped = F.grid_sample(source, grid, mode='bilinear', padding_mode='border', align_corners=False)
        photometric = (colour * (warped - target).abs().mean(1) + structure * 2 * _ssim_by_hand(warped, target).mean(1)).mean()
        image = F.interpolate(target, flow.shape[-2:], mode='area')
        total = total + photometric + smoothness * _smoothness_by_hand(flow, image) / 2 ** scale
    return total / len(flows)


def test_flow_loss_is_eq_13_plus_eq_14_averaged_over_scales():
    B, H, W = 2, 16, 32  # float64: the two computations agree to ~1e-15
    frames = _rand(B, 2, 3, H, W, seed=1).double()
    frames[:, 1] = 0.5 * frames[:, 1] + 0.5 * torch.roll(frames[:, 0], 2, -1)  # related frames
    flows = [(2 * _randn(B, 2, H >> s, W >> s, seed=2 + s)).double().requires_grad_() for s in range(4)]
    args = pretrain.parse_args(['--task', 'flow'])
    assert (args.flow_colour_weight, args.flow_ssim_weight, args.flow_smoothness, args.scales) == (0.15, 0.15, 5.0, 4)
    loss = pretrain.flow_loss(flows, dict(frames=frames), args)
    expected = _reference_flow_loss(flows, frames)
    assert torch.isclose(loss, expected, rtol=1e-10, atol=0)
    for g, e in zip(torch.autograd.grad(loss, flows), torch.autograd.grad(expected, flows)):
        assert torch.allclose(g, e, rtol=1e-8, atol=1e-10 * e.abs().max())
    args = pretrain.parse_args(['--task', 'flow', '--scales', '2', '--flow-colour-weight', '0.4',
                                '--flow-ssim-weight', '0.2', '--flow-smoothness', '3'])
    loss = pretrain.flow_loss(flows, dict(frames=frames), args)
    assert torch.isclose(loss, _reference_flow_loss(flows[:2], frames, 0.4, 0.2, 3.0), rtol=1e-10, atol=0)


def test_flow_smoothness_alone_is_lambda_sm_5_over_2_to_the_scale():
    # flat, equal frames: every warp reproduces frame t (eq. 13 is 0) and the edge weights are 1. At scale s
    # the flow's u is a ramp along x of slope a_s, its v a ramp along y of slope b_s: mean |dX f| over both
    # channels is a_s / 2, mean |dY f| is b_s / 2
    B, H, W = 1, 16, 32
    frames = torch.full((B, 2, 3, H, W), 0.5)
    slopes = [(1.0, 0.5), (2.0, 0.5), (3.0, 1.0), (4.0, 1.0)]
    flows = []
    for s, (a, b) in enumerate(slopes):
        v, u = torch.meshgrid(torch.arange(H >> s, dtype=torch.float32), torch.arange(W >> s, dtype=torch.float32),
                              indexing='ij')
        flows.append(torch.stack([a * u, b * v])[None])
    loss = pretrain.flow_loss(flows, dict(frames=frames), pretrain.parse_args(['--task', 'flow']))
    # (0.75 + 1.25 / 2 + 2 / 4 + 2.5 / 8) * 5 / 4
    assert loss.item() == pytest.approx(5 * (0.75 + 0.625 + 0.5 + 0.3125) / 4, rel=1e-5)


def test_flow_loss_upsamples_a_coarse_flow_without_rescaling_it():
    # frame t is frame t+1 moved by 2 pixels: a constant flow of 2 (full-resolution pixels) at every scale
    # explains it; the interior pixels then cost nothing at every scale
    B, H, W = 1, 8, 32
    source = _rand(B, 3, H, W, seed=1)
    target = torch.cat([source[..., 2:], source[..., -1:].expand(-1, -1, -1, 2)], -1)  # border padding
    flows = [torch.cat([torch.full((B, 1, H >> s, W >> s), 2.0), torch.zeros(B, 1, H >> s, W >> s)], 1)
             for s in range(2)]
    args = pretrain.parse_args(['--task', 'flow', '--scales', '2'])
    batch = dict(frames=torch.stack([target, source], 1))
    assert pretrain.flow_loss(flows, batch, args) < 1e-5
    # the coarse flow scaled by its 2x upsampling would move 4 pixels and cost
    assert pretrain.flow_loss([flows[0], 2 * flows[1]], batch, args) > 1e-2


def test_resize_flow_scales_u_with_the_width_and_v_with_the_height():
    flow = torch.cat([torch.ones(1, 1, 2, 3), -torch.ones(1, 1, 2, 3)], 1)
    resized = evaluate.resize_flow(flow, (4, 9))
    assert resized.shape == (1, 2, 4, 9)
    assert torch.allclose(resized[:, 0], torch.full((1, 4, 9), 3.0)) and torch.allclose(resized[:, 1], torch.full((1, 4, 9), -2.0))
    flow = _randn(2, 2, 3, 4)
    expected = F.interpolate(flow, (6, 6), mode='bilinear', align_corners=False) * torch.tensor([1.5, 2.0]).view(1, 2, 1, 1)
    assert torch.allclose(evaluate.resize_flow(flow, (6, 6)), expected, atol=1e-6)
