"""More than one process: torchrun with two CPU processes (gloo) against one process with --grad-accum."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import models
import pretrain
from conftest import read_metrics

SCRIPTS = Path(__file__).resolve().parents[1]
TINY = ['--height', '64', '--width', '64', '--batch-size', '4', '--eval-every', '100', '--log-every', '1',
        '--workers', '0', '--name', 'r']


def flags(toy_root, runs, iters):
    return ['--data-root', str(toy_root), '--runs', str(runs), '--out', str(runs / 'depth.pt'), '--iters', str(iters)] + TINY


def parameters(run):
    """A run's checkpoint: {part: {name: tensor}} of its trained parameters (batch-norm buffers left out: their
    statistics are per micro-batch in both runs, and DistributedDataParallel broadcasts rank 0's)."""
    state = torch.load(run / 'r' / 'checkpoint.pt', weights_only=False)
    return {part: {k: v for k, v in state[part].items() if 'running_' not in k and 'num_batches' not in k}
            for part in ('model', 'pose_net')}


def max_difference(a, b):
    assert {p: a[p].keys() for p in a} == {p: b[p].keys() for p in b}  # no `module.` prefix
    return max((a[p][k] - b[p][k]).abs().max().item() for p in a for k in a[p])


@pytest.fixture(scope='module')
def two_and_one(toy_root, tmp_path_factory):
    """Two steps of batch 4 (video depth: a depth network and a PoseNet) by torchrun's two CPU processes, 2
    images each, and by one process in two micro-batches of 2 (--grad-accum 2)."""
    tmp = tmp_path_factory.mktemp('ddp')
    env = dict(os.environ, OMP_NUM_THREADS='1')
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2']
    done = subprocess.run(torchrun + [str(SCRIPTS / 'pretrain.py')] + flags(toy_root, tmp / 'two', 2), cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # one process in a subprocess too, with the same one thread: another thread count sums in another order
    done = subprocess.run([sys.executable, str(SCRIPTS / 'pretrain.py')] + flags(toy_root, tmp / 'one', 2)
                          + ['--grad-accum', '2'], cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / 'two', tmp / 'one'


def test_two_processes_train_as_one_process_with_two_micro_batches(two_and_one):
    two, one = two_and_one
    assert max_difference(parameters(two), parameters(one)) < 1e-5
    losses = [[m['loss'] for m in read_metrics(run / 'r') if m['split'] == 'train'] for run in (two, one)]
    assert len(losses[0]) == 2 and losses[0] == pytest.approx(losses[1], rel=1e-6)  # the global batch's mean
    assert parameters(two)['model'].keys() == dict(models.build_depth_net().named_parameters()).keys()


def test_a_two_process_checkpoint_resumes_in_one_process(two_and_one, toy_root, tmp_path):
    # the stream's position is the global batch: one process continues where two stopped
    two, one = (shutil.copytree(run, tmp_path / run.name) for run in two_and_one)
    for run in (two, one):
        pretrain.main(flags(toy_root, run, 3) + ['--grad-accum', '2', '--resume'])
    assert torch.load(two / 'r' / 'checkpoint.pt', weights_only=False)['iter'] == 3
    assert max_difference(parameters(two), parameters(one)) < 1e-5


def test_micro_batches_are_each_process_share_of_the_same_global_batch():
    import training
    pairs = [(item, 100 + item) for item in range(8)]
    assert training.micro_batches(pairs, 1, 2, 2) == [pairs[4:6], pairs[6:8]]
    assert [training.micro_batches(pairs, r, 2, 1)[0] for r in (0, 1)] == training.micro_batches(pairs, 0, 1, 2)


@pytest.mark.parametrize('world, argv, message', [
    ('2', ['--batch-size', '3'], r'--batch-size 3 does not split into 2 process\(es\) x --grad-accum 1 equal '
                                 r'micro-batches: pass a --batch-size that is a multiple of 2\.'),
    ('1', ['--batch-size', '4', '--grad-accum', '3'], r'multiple of 3\.'),
    ('1', ['--grad-accum', '0'], r'--grad-accum must be at least 1\.'),
    ('1', ['--sync-bn', '--device', 'cpu'], r'--sync-bn synchronises batch norm across GPUs \(NCCL\), and this run '
                                            r'is on the CPU: leave it out'),
])
def test_batches_that_do_not_split_and_sync_bn_on_the_cpu_stop_with_a_sentence(world, argv, message, toy_root,
                                                                               tmp_path, monkeypatch):
    monkeypatch.setenv('WORLD_SIZE', world)
    with pytest.raises(SystemExit, match=message):
        pretrain.main(['--data-root', str(toy_root), '--runs', str(tmp_path), '--iters', '1'] + argv)
    assert not any(tmp_path.iterdir())  # before anything is written


@pytest.mark.parametrize('argv, outputs', [(['--supervision', 'gt'], 1), (['--scales', '2'], 2), ([], 4)])
def test_every_parameter_left_trainable_gets_a_gradient(argv, outputs, toy_root, tmp_path, monkeypatch):
    # what DistributedDataParallel needs without find_unused_parameters (training.Distributed.wrap freezes what no
    # step reaches, `outputs` the scales the loss reads): no trainable parameter without a gradient
    seen = {}

    def one_backward(args, networks, loss_of, train_set, evaluation):
        import training
        for key, net in networks.items():
            models.freeze_untrained(net, outputs if key == 'model' else None)
        batch = next(training.training_batches(train_set, args, torch.device('cpu')))[0]
        loss_of(batch, networks).backward()
        seen.update({f'{key}.{name}': p for key, net in networks.items() for name, p in net.named_parameters()})
    monkeypatch.setattr(pretrain, 'train', one_backward)
    pretrain.main(['--data-root', str(toy_root), '--runs', str(tmp_path), '--workers', '0', '--batch-size', '2'] + argv)
    assert [name for name, p in seen.items() if p.requires_grad and p.grad is None] == []
    frozen = {name for name, p in seen.items() if not p.requires_grad}
    assert 'model.encoder.fc.weight' in frozen and ('model.head.convs.1.weight' in frozen) == (outputs < 2)
    assert sum(f'model.head.convs.{s}.weight' not in frozen for s in range(4)) == outputs
