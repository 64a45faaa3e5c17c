"""Objectives, written out by hand so they can be read next to the papers.

Self-supervised depth (Monodepth2, depth pre-training paper App. B.1-B.2): SSIM and the photometric error
(eq. 10), the camera geometry that warps source views into the target view (eq. 7-8), and the edge-aware
smoothness prior (eq. 11); pretrain.monodepth2_loss puts them together as eq. 9, with the per-pixel
minimum over source views and auto-masking. Optical flow (App. B.3): warping with a flow field and the
photometric term of eq. 13; its smoothness prior (eq. 14) is the same edge-aware function as eq. 11.
Depth from ground truth (pre-training from a sensor, fine-tuning for depth): masked L1 (eq. 15) and the
scale-invariant log loss (SILog, Sect. 2.3 of the minimal-transfer-learning paper), one of them chosen by
supervised_depth_loss. Semantic segmentation: the negative log-likelihood (eq. 12).

Geometry conventions: camera x right, y down, z forward; pixel centres at integer coordinates;
K and inv_K are [B,4,4] (or [4,4]); a pose T maps target-frame points to the source frame.
"""
from typing import NamedTuple

import torch
import torch.nn.functional as F

C1, C2 = 0.01 ** 2, 0.03 ** 2


def box_mean(x):
    """3x3 means [B,C,H,W] over the reflection-padded image: three shifted columns summed, then three
    shifted rows. Separable sums of slices cost less, forward and backward, than a depthwise convolution
    or avg_pool2d on CPU, where the loss's full-resolution images are memory-bound."""
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    rows = padded[..., :-2] + padded[..., 1:-1] + padded[..., 2:]
    return (rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]) / 9


class SsimStatistics(NamedTuple):
    """An image that several others are compared with, and its SSIM statistics (3x3 mean and variance)."""
    image: torch.Tensor
    mean: torch.Tensor
    variance: torch.Tensor


def ssim_statistics(y):
    """y [B,C,H,W] with its SSIM statistics, computed once however many images it is compared with."""
    if isinstance(y, SsimStatistics):
        return y
    mu_y, yy = box_mean(torch.cat([y, y * y], 1)).chunk(2, 1)
    return SsimStatistics(y, mu_y, yy - mu_y ** 2)


def ssim(x, y):
    """Per-pixel, per-channel dissimilarity (1 - SSIM) / 2 in [0, 1], same shape as x.

    Local statistics are 3x3 means (box_mean) over reflection-padded images; y is the image compared
    against, or its SsimStatistics, which do not depend on x.
    """
    y, mu_y, sigma_y = ssim_statistics(y)
    mu_x, xx, xy = box_mean(torch.cat([x, x * x, x * y], 1)).chunk(3, 1)
    mu_xx, mu_xy = mu_x ** 2, mu_x * mu_y
    sigma_x, sigma_xy = xx - mu_xx, xy - mu_xy
    num = (2 * mu_xy + C1) * (2 * sigma_xy + C2)
    den = (mu_xx + mu_y ** 2 + C1) * (sigma_x + sigma_y + C2)
    return ((1 - num / den) / 2).clamp(0, 1)


def photometric_error(pred, target, alpha=0.85):
    """Per-pixel photometric error of eq. 10: alpha * (1 - SSIM) / 2 + (1 - alpha) * |pred - target|, each a
    mean over channels, with Monodepth2's weighting (alpha on the SSIM term, which is halved; the paper's
    printed eq. 10 puts alpha on the L1 term). pred: one image [B,C,H,W] -> [B,1,H,W], or S views of the
    target [B,S,C,H,W] -> [B,S,H,W]; target: an image [B,C,H,W] or its SsimStatistics (computed once)."""
    views = pred if pred.dim() == 5 else pred[:, None]
    B, S, C, H, W = views.shape
    target = ssim_statistics(target)
    dissimilarity = ssim(views.flatten(1, 2), SsimStatistics(*(t.repeat(1, S, 1, 1) for t in target)))  # [B,S*C,H,W]
    l1 = (views - target.image[:, None]).abs().mean(2)
    return alpha * dissimilarity.view(B, S, C, H, W).mean(2) + (1 - alpha) * l1  # eq. 10


def pose_to_matrix(axisangle, translation, invert=False):
    """[B,3] axis-angle and [B,3] translation -> [B,4,4] rigid transform P -> R P + t.

    R comes from Rodrigues' formula (right-hand rule). With invert=True the inverse (R^T, -R^T t)
    is returned, e.g. to turn a PoseNet estimate of source->target into target->source.
    """
    angle = axisangle.norm(dim=1, keepdim=True)                      # [B,1]
    kx, ky, kz = (axisangle / (angle + 1e-7)).unbind(1)              # unit axis
    zero = torch.zeros_like(kx)
    k_cross = torch.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero], 1).view(-1, 3, 3)
    sin, cos = angle.sin()[..., None], angle.cos()[..., None]
    eye = torch.eye(3, dtype=axisangle.dtype, device=axisangle.device)
    R = eye + sin * k_cross + (1 - cos) * k_cross @ k_cross          # Rodrigues
    t = translation[..., None]                                        # [B,3,1]
    if invert:
        R = R.transpose(1, 2)
        t = -R @ t
    bottom = torch.tensor([0.0, 0, 0, 1], dtype=R.dtype, device=R.device).expand(len(R), 1, 4)
    return torch.cat([torch.cat([R, t], 2), bottom], 1)


def pixel_grid(height, width, like):
    """Pixel coordinates (u right, v down, centres at integers) of an image, as two [H, W] tensors."""
    v, u = torch.meshgrid(torch.arange(height, dtype=like.dtype, device=like.device),
                          torch.arange(width, dtype=like.dtype, device=like.device), indexing="ij")
    return u, v


def sampling_grid(u, v, height, width):
    """Pixel coordinates -> grid_sample's coordinates [..., 2] (align_corners=False): u -> (2u + 1) / W - 1."""
    return torch.stack([(2 * u + 1) / width - 1, (2 * v + 1) / height - 1], -1)


def backproject(depth, inv_K):
    """Depth [B,1,H,W] -> homogeneous camera points [B,4,H*W]: z(i,j) K^-1 [i, j, 1]^T (eq. 8)."""
    B, _, H, W = depth.shape
    u, v = pixel_grid(H, W, depth)
    pixels = torch.stack([u.flatten(), v.flatten(), torch.ones_like(u).flatten()])  # [3,N]
    points = (inv_K[..., :3, :3] @ pixels) * depth.reshape(B, 1, -1)                  # eq. 8
    return torch.cat([points, torch.ones_like(points[:, :1])], 1)


def view_rays(K, inv_K, T, height, width):
    """The part of eq. 8 that does not depend on depth, for S source views T [B,S,4,4] (target->source).

    K T [z K^-1 p; 1] = z (K R K^-1 p) + K t: the viewing ray of target pixel p turned into the source
    view, plus the translation. Returns rays [B,S,H*W,3] and shift [B,S,1,3]: a target pixel at depth z
    lands on source pixel c[:2] / c[2], with c = z * ray + shift (warp_views).
    """
    P = (K.unsqueeze(-3) @ T)[..., :3, :]                                           # [B,S,3,4]
    unit_depth = torch.ones(1, 1, height, width, dtype=T.dtype, device=T.device)
    rays = P[..., :3] @ backproject(unit_depth, inv_K)[..., :3, :].unsqueeze(-3)   # K R K^-1 p: [B,S,3,N]
    return rays.transpose(-1, -2).contiguous(), P[..., 3:].transpose(-1, -2)


def warp_views(sources, depth, rays, eps=1e-7):
    """Resample S sources [B,S,C,H,W] into the target view from target depth [B,1,H,W] and their
    view_rays (computed once for every depth map of a batch): [B,S,C,H,W].

    Depths are clamped to eps, so points on or behind the camera cannot divide by zero.
    """
    B, S, C, H, W = sources.shape
    rays, shift = rays
    cam = depth.view(B, 1, H * W, 1) * rays + shift
    pix = cam[..., :2] / cam[..., 2:].clamp(min=eps)                              # eq. 8: pi(P) = P[:2] / P[2]
    grid = sampling_grid(pix[..., 0], pix[..., 1], H, W)
    # eq. 7: x_hat = x o pi^-1
    return sample(sources.flatten(0, 1), grid.view(B * S, H, W, 2)).view(B, S, C, H, W)


def sample(source, grid):
    """Bilinear grid_sample of source [N,C,H,W] at grid [N,H,W,2] (align_corners=False, border padding),
    NaN wherever the grid is not finite: a diverged warp then makes the loss NaN, and a NaN loss is never
    back-propagated (grid_sample's backward can crash the process on such a grid)."""
    out = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return torch.where(torch.isfinite(grid).all(-1).unsqueeze(1), out, torch.nan)


def mean_normalised(disp, eps=1e-7):
    """disp / its per-image mean over (H, W): removes the scale before the smoothness term."""
    return disp / (disp.mean((2, 3), keepdim=True) + eps)


def smoothness_loss(disp, img):
    """Edge-aware first-order smoothness of a field ([B,1,H,W] disparity or [B,2,H,W] flow).

    Gradients of the field are down-weighted where the image has edges. The field is used as
    given: for disparity the caller passes mean_normalised(disp), as Monodepth2 does, so that
    the prior cannot be lowered by shrinking the disparity.
    """
    grad_x = (disp[..., :, 1:] - disp[..., :, :-1]).abs()
    grad_y = (disp[..., 1:, :] - disp[..., :-1, :]).abs()
    img_x = (img[..., :, 1:] - img[..., :, :-1]).abs().mean(1, keepdim=True)
    img_y = (img[..., 1:, :] - img[..., :-1, :]).abs().mean(1, keepdim=True)
    # eq. 11
    return (grad_x * torch.exp(-img_x)).mean() + (grad_y * torch.exp(-img_y)).mean()


def flow_warp(source, flow):
    """Resample source [B,C,H,W] at p + flow(p): frame t+1 seen through the flow t -> t+1 lands on frame t."""
    B, _, H, W = flow.shape
    u, v = pixel_grid(H, W, flow)
    return sample(source, sampling_grid(u + flow[:, 0], v + flow[:, 1], H, W))


def flow_photometric_error(pred, target, colour_weight=0.15, ssim_weight=0.15):
    """Per-pixel eq. 13 [B,1,H,W]: colour_weight * |target - pred| + ssim_weight * (1 - SSIM), channel means.

    The paper states x_hat_t = x_t o f(x_t, x_t+1) compared with x_t+1; with a flow defined on frame t's
    pixels, backward warping reconstructs frame t from frame t+1 (flow_warp), which is what we compare.
    Its weights (0.15 and 0.15, with 1 - SSIM not halved) differ from the 0.15 / 0.85 split of eq. 10 and
    sum to 0.3; against lambda_sm = 5 in eq. 14 the smoothness term dominates unless flow is small.
    """
    # eq. 13; ssim() returns (1 - SSIM) / 2
    return (colour_weight * (pred - target).abs().mean(1, keepdim=True)
            + ssim_weight * 2 * ssim(pred, target).mean(1, keepdim=True))


def l1_depth_loss(pred, target, mask=None):
    """Mean |pred - target| over measured pixels (mask; by default target > 0) (eq. 15)."""
    mask = target > 0 if mask is None else mask
    return (pred[mask] - target[mask]).abs().mean()


def silog_loss(pred, target, mask=None, lam=0.5):
    """Scale-invariant log loss per image [B,1,H,W] over measured pixels (mask; by default target > 0),
    averaged over images: with d = log pred - log target, mean(d^2) - lam * mean(d)^2 (minimal-transfer
    paper, Sect. 2.3, after Eigen et al.). lam = 1 ignores each image's global scale, lam = 0 is the
    squared log error."""
    mask = target > 0 if mask is None else mask
    d = torch.where(mask, pred.clamp(min=1e-6).log() - target.clamp(min=1e-6).log(), 0.0)
    n = mask.sum((1, 2, 3))
    has = n > 0  # images without any measurement do not count
    mean_d2, mean_d = (d ** 2).sum((1, 2, 3))[has] / n[has], d.sum((1, 2, 3))[has] / n[has]
    return (mean_d2 - lam * mean_d ** 2).mean()  # Sect. 2.3


def supervised_depth_loss(depth, gt, loss='l1', lam=0.5):
    """Depth [B,1,H,W] against a sensor's (or another) ground truth's measured pixels: masked L1 (eq. 15) or
    SILog with `lam`. One loss for pre-training from ground truth and for fine-tuning for depth."""
    return silog_loss(depth, gt, lam=lam) if loss == 'silog' else l1_depth_loss(depth, gt)


def nll_loss(logits, labels, ignore_index=255):
    """Pixel-wise negative log-likelihood of the labels under softmax(logits), ignoring 255."""
    # eq. 12
    return F.nll_loss(F.log_softmax(logits, 1), labels, ignore_index=ignore_index)
