"""Exact resume, measured: kill -9 a short depth pre-training at random moments, continue it with --resume, and
compare where it ends with a run that was never interrupted.

Each run saves every iteration (--save-every 1) on a tiny toy world rendered into a temporary folder. Each kill
lands at a random moment of training: once the run has logged a random number of iterations (0 to --iters - 1),
after a random further wait of up to half a second, so also while a checkpoint is being written. A run killed
before its first save has no checkpoint: it is started again in the same folder, as a user would. A
resumed run counts as identical when every weight of its depth network and PoseNet, and every training loss it
logged, equals the uninterrupted run's bit for bit.

    python benchmarks/resume_kills.py                      # 20 kills, --workers 0
    python benchmarks/resume_kills.py --workers 1 --kills 20 --seed 1
"""
import argparse
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import toyworld  # noqa: E402
import training  # noqa: E402

WORLD = dict(height=64, width=192, drives=1, frames=8, test_frames=8, labelled=12)


def command(folder, name, args, *extra):
    """pretrain.py's command for run `name`: one training thread, a checkpoint every iteration."""
    return [sys.executable, str(ROOT / 'pretrain.py'), '--task', 'depth', '--data-root', str(folder / 'world'),
            '--runs', str(folder), '--name', name, '--out', str(folder / f'{name}.pt'), '--overwrite',
            '--iters', str(args.iters), '--save-every', '1', '--eval-every', str(args.iters), '--log-every', '1',
            '--height', '64', '--width', '192', '--batch-size', '2', '--workers', str(args.workers), *extra]


def ending(run):
    """(weights {checkpoint key: state dict}, training losses) where the run folder `run` ended."""
    state = torch.load(run / 'checkpoint.pt', weights_only=False)
    losses = [record['loss'] for record in training.read_jsonl(run / 'metrics.jsonl') if record['split'] == 'train']
    return {key: state[key] for key in ('model', 'pose_net')}, losses


def identical(a, b):
    (weights_a, losses_a), (weights_b, losses_b) = a, b
    return losses_a == losses_b and all(torch.equal(weights_a[key][name], weights_b[key][name])
                                        for key in weights_a for name in weights_a[key])


def logged_iterations(run):
    metrics = run / 'metrics.jsonl'
    return metrics.read_text().count('"train"') if metrics.exists() else 0


def kill_and_resume(folder, name, args, logged, wait):
    """Start run `name`, kill -9 it (with its loader workers) `wait` seconds after it has logged `logged`
    iterations, then continue it; returns whether it had a checkpoint to resume from and, where continuing it
    failed, the last line the run printed."""
    run = subprocess.Popen(command(folder, name, args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    while logged_iterations(folder / name) < logged and run.poll() is None:
        time.sleep(0.01)
    time.sleep(wait)
    with contextlib.suppress(ProcessLookupError):  # it may have ended first: resuming it must then change nothing
        os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    resumable = (folder / name / 'checkpoint.pt').exists()
    again = subprocess.run(command(folder, name, args, *(['--resume'] if resumable else [])), capture_output=True,
                           text=True)
    return resumable, again.returncode and (again.stderr.strip().splitlines() or ['(nothing)'])[-1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--kills', type=int, default=20, help='interrupted runs')
    parser.add_argument('--iters', type=int, default=12, help='each run\'s length')
    parser.add_argument('--workers', type=int, default=0, help='pretrain.py --workers (loader processes)')
    parser.add_argument('--seed', type=int, default=0, help='draws the moments of the kills')
    args = parser.parse_args(argv)
    os.environ['OMP_NUM_THREADS'] = '1'  # the runs' own: one thread each, as the tests train
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        toyworld.render_toy_world(folder / 'world', **WORLD)
        subprocess.run(command(folder, 'uninterrupted', args), check=True, capture_output=True)
        reference = ending(folder / 'uninterrupted')
        draw = random.Random(args.seed)
        resumed = same = failed = 0
        for k in range(args.kills):
            moment = draw.randrange(args.iters), draw.uniform(0, 0.5)
            had_checkpoint, failure = kill_and_resume(folder, f'killed{k}', args, *moment)
            resumed += had_checkpoint
            if failure:
                failed += 1
                print(f'killed{k} (after {moment[0]} iterations and {moment[1]:.2f} s) did not continue: {failure}')
            else:
                same += identical(ending(folder / f'killed{k}'), reference)
            shutil.rmtree(folder / f'killed{k}')  # a checkpoint is hundreds of MB
    print(f'--workers {args.workers}, {args.iters} iterations: {args.kills} kills, {resumed} resumed from a '
          f'checkpoint, {args.kills - resumed} started again, {failed} failed to continue, {same} of {args.kills} '
          f'ended identical to the uninterrupted run')


if __name__ == '__main__':
    main()
