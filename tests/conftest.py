"""Shared fixtures: one tiny toy world, rendered once per test session."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import data  # noqa: E402

TINY = dict(height=64, width=192, drives=1, frames=8, test_frames=8, labelled=12, seed=0)


@pytest.fixture(scope='session')
def toy_root(tmp_path_factory):
    """A tiny toy world (64x192, one training drive of 8 frames, 12 labelled images)."""
    root = tmp_path_factory.mktemp('toy') / 'world'
    data.render_toy_world(root, **TINY)
    return root
