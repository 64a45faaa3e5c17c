"""Shared fixtures: one tiny toy world, rendered once per test session."""
import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import toyworld  # noqa: E402

TINY = dict(height=64, width=192, drives=1, frames=8, test_frames=8, labelled=12, seed=0)
SMALL = ['--height', '64', '--width', '192', '--batch-size', '2', '--workers', '0']  # training flags for it


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same random state, whatever ran before it: the suite passes every run."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def kitti_snippets(root, split, height, width, frame_ids, stereo=False, with_depth=False, split_dir=None, **flags):
    """data.VideoSnippets of a KITTI-layout split (the toy world's too): data.Kitti(root).snippets with the
    frame offsets, stereo, ground truth and split folder asked for, made into a dataset at (height, width);
    `flags` (augment, crop, jitter) go to the dataset. Errors of either step propagate as they are."""
    import data
    snippets = data.Kitti(root).snippets(split, frame_ids, stereo=stereo, with_depth=with_depth, split_dir=split_dir)
    return data.VideoSnippets(snippets, height, width, **flags)


def kitti_test_frames(root, height, width, protocol, split_dir=None):
    """data.DepthTestFrames of a KITTI-layout test split by a protocol (eigen or benchmark), counting the
    frames skipped for want of its ground truth, as the scripts build it (evaluate.depth_test_set)."""
    import data
    items, skipped = data.Kitti(root).depth_test(protocol, split_dir)
    return data.DepthTestFrames(items, height, width, protocol, skipped)


def kitti_labelled(root, indices, height, width, augment=False):
    """data.LabelledImages of the KITTI data_semantics images at `indices` (sorted by id)."""
    import data
    pairs, _ = data.Kitti(root).labelled()
    return data.LabelledImages([pairs[i] for i in indices], height, width, augment)


def read_metrics(run):
    """The lines of a run folder's metrics.jsonl."""
    return [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]


@pytest.fixture(scope='session')
def toy_root(tmp_path_factory):
    """A tiny toy world (64x192, one training drive of 8 frames, 12 labelled images)."""
    root = tmp_path_factory.mktemp('toy') / 'world'
    toyworld.render_toy_world(root, **TINY)
    return root


@pytest.fixture
def imagenet_resnet18(monkeypatch, tmp_path):
    """A random ResNet-18 state dict cached where torchvision keeps its ImageNet weights, in a temporary
    TORCH_HOME: loading it proves the weights are read, not ignored. Returns the state dict."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    folder = tmp_path / 'torch' / 'hub' / 'checkpoints'
    folder.mkdir(parents=True)
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, folder / 'resnet18-f37072fd.pth')
    return state


@pytest.fixture
def imagenet_convnext_tiny(monkeypatch, tmp_path):
    """A random ConvNeXt-T state dict where torchvision keeps its ImageNet weights, in a temporary TORCH_HOME
    (as imagenet_resnet18). Returns the state dict."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    folder = tmp_path / 'torch' / 'hub' / 'checkpoints'
    folder.mkdir(parents=True, exist_ok=True)
    state = torchvision.models.convnext_tiny().state_dict()
    torch.save(state, folder / 'convnext_tiny-983f1562.pth')
    return state


@pytest.fixture(scope='session')
def two_size_root(tmp_path_factory):
    """A tiny toy world whose test split holds frames of two sizes, as KITTI's dates differ (375x1242,
    370x1224, ...): the held-out drive of a second world, rendered at 48x160, joins it as date 2011_09_28."""
    base = tmp_path_factory.mktemp('two_sizes')
    root, other = base / 'world', base / 'other'
    toyworld.render_toy_world(root, **TINY)
    toyworld.render_toy_world(other, **dict(TINY, height=48, width=160, seed=1))
    drive = f'{toyworld.TOY_DATE}_drive_{TINY["drives"] + 1:04d}_sync'
    (root / '2011_09_28').mkdir()
    for calib in (other / toyworld.TOY_DATE).glob('calib_*.txt'):
        shutil.copy(calib, root / '2011_09_28' / calib.name)
    shutil.copytree(other / toyworld.TOY_DATE / drive, root / '2011_09_28' / drive.replace(toyworld.TOY_DATE, '2011_09_28'))
    lines = (other / 'splits/test_files.txt').read_text().replace(toyworld.TOY_DATE, '2011_09_28')
    with open(root / 'splits/test_files.txt', 'a') as split:
        split.write(lines)
    return root


def project(points, K, T, height, width):
    """Eq. 8 written apart from losses.warp_views, as a test oracle: camera points [B,4,N] of the target
    frame -> grid_sample's grid [B,H,W,2] of their pixels K pi(T P) in the source view."""
    cam = (K @ T)[..., :3, :] @ points
    u, v = cam[:, 0] / cam[:, 2].clamp(min=1e-7), cam[:, 1] / cam[:, 2].clamp(min=1e-7)
    grid = torch.stack([(2 * u + 1) / width - 1, (2 * v + 1) / height - 1], -1)
    return grid.view(-1, height, width, 2)


def warp(source, depth, K, inv_K, T):
    """One source [B,C,H,W] resampled into the target view from target depth and T (target -> source), by
    losses.warp_views."""
    import losses
    rays = losses.view_rays(K, inv_K, T[:, None], *depth.shape[-2:])
    return losses.warp_views(source[:, None], depth, rays)[:, 0]
