"""Every benchmark script runs one tiny step, so an interface change in the project cannot break it silently.

The reference implementation each one times against (Monodepth2, transformers' SegFormer) is installed for the
benchmark only: where it is missing the script says so and times the project's side alone, and so does this test.
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / 'benchmarks').glob('*_step.py'))  # side_by_side.py is their shared timing
TINY = ['--steps', '1', '--height', '64', '--width', '64', '--batch-size', '1', '--threads', '1']


def test_there_are_benchmarks():
    assert [p.name for p in SCRIPTS if p.name == 'monodepth2_step.py']


@pytest.mark.parametrize('script', SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_benchmark_runs_one_tiny_step(script):
    run = subprocess.run([sys.executable, str(script), *TINY], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    summary = lines[-1]
    assert 'project' in summary and 'images/s' in summary, run.stdout
    skipped = [line for line in lines if ': skipped: ' in line]
    if skipped:  # the reference side is not installed: its reason is printed and no ratio is claimed
        assert 'not installed' in skipped[0] and 'x' not in summary.rsplit('images/s', 1)[-1], run.stdout
    else:  # both sides ran: the ratio of their speeds is printed
        assert re.search(r'project / \w+ = \d+\.\d\dx', summary), run.stdout


def test_runs_killed_at_random_moments_resume_to_the_uninterrupted_runs_weights_and_losses():
    # seed 0 kills both runs after their third of four iterations: both resume from a checkpoint
    run = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'resume_kills.py'), '--kills', '2', '--iters', '4',
                          '--seed', '0'], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    expected = '2 kills, 2 resumed from a checkpoint, 0 started again, 0 failed to continue, 2 of 2 ended identical'
    assert run.stdout.splitlines()[-1].endswith(expected + ' to the uninterrupted run'), run.stdout
