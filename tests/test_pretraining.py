"""Every pre-training on a tiny toy world: each depth supervision, ImageNet initialisation, crops,
optical flow, and what fine-tuning takes from each."""
import inspect
import itertools
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import data
import evaluate
import finetune
import models
import pretrain
import training
from conftest import SMALL, kitti_test_frames, read_metrics


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every run in this file on one torch thread, torch's setting restored after: the short trainings below
    are checked on where their loss goes, which must not hang on the order of floating-point sums (60 stereo
    steps at lr 1e-3 lowered the loss by a fifth on two threads and not at all on one), and two OpenMP
    threads spin-wait for each other as soon as another process takes one of two cores (the same 60 steps:
    290 s on two threads, 17 s on one)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _pretrain(toy_root, tmp_path, name, *flags, iters=2):
    """A short pre-training run; returns (run folder, exported checkpoint contents)."""
    out = tmp_path / f'{name}.pt'
    pretrain.main(['--data-root', str(toy_root), '--runs', str(tmp_path), '--name', name, '--out', str(out),
                   '--iters', str(iters), '--eval-every', str(iters), '--log-every', '1'] + SMALL + list(flags))
    return tmp_path / name, torch.load(out, weights_only=False)


@pytest.mark.parametrize('flags, networks', [
    (['--supervision', 'stereo'], {'model'}),
    (['--supervision', 'mono+stereo'], {'model', 'pose_net'}),
    (['--supervision', 'gt'], {'model'}),
    (['--supervision', 'gt', '--depth-loss', 'silog', '--silog-lambda', '0.85'], {'model'}),
])
def test_every_depth_supervision_trains_and_evaluates(flags, networks, toy_root, tmp_path):
    run, checkpoint = _pretrain(toy_root, tmp_path, 'run', *flags)
    assert checkpoint['supervision'] == flags[1] and checkpoint['task'] == 'depth'
    assert networks == {k for k in ('model', 'pose_net') if k in checkpoint}  # a PoseNet only with video
    evals = [m for m in read_metrics(run) if m['split'] == 'eval']
    assert len(evals) == 1 and 0 < evals[0]['abs_rel'] < 10
    # metric supervisions are scored unscaled, by the Eigen protocol on every test frame, and say so
    assert (checkpoint['args']['eval_protocol'], checkpoint['args']['median_scaling']) == ('eigen', 'off')
    assert evals[0]['median_scale'] == 1.0 and evals[0]['scale_std'] == 0.0
    assert evals[0]['images'] == len(kitti_test_frames(toy_root, 64, 192, 'eigen')) > 0


def test_video_supervision_starts_at_its_own_scale(toy_root, tmp_path):
    # from 0.2 m (the sigmoid's midpoint) the median scale would be about 75 and the near road under the
    # 0.1 m floor; from 10 m (metric supervisions) about 1
    run, checkpoint = _pretrain(toy_root, tmp_path, 'mono', '--supervision', 'mono')
    evaluation = next(m for m in read_metrics(run) if m['split'] == 'eval')
    assert 5 < evaluation['median_scale'] < 40 and evaluation['scale_std'] > 0  # mono: median-scaled by default
    assert checkpoint['args']['median_scaling'] == 'on'
    # and the PoseNet started moving forward at 1/15 of the 1 m start per frame (two Adam steps of 1e-4 since)
    translation_bias = 0.1 * checkpoint['pose_net']['decoder.6.bias'][3:]
    assert torch.allclose(translation_bias, torch.tensor([0.0, 0.0, -1 / 15]), atol=1e-4)


def test_ground_truth_depth_loss_falls(toy_root, tmp_path):
    run, _ = _pretrain(toy_root, tmp_path, 'gt', '--supervision', 'gt', '--lr', '1e-3', iters=30)
    losses = [m['loss'] for m in read_metrics(run) if m['split'] == 'train']
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_stereo_loss_falls_and_depth_beats_the_constant_baseline(toy_root, tmp_path):
    # the metric baseline needs a sensible starting depth (models.start_at_depth), else no gradient flows:
    # started at 0.2 m (the sigmoid's midpoint) the loss stays flat and abs_rel is far above the baseline
    run, _ = _pretrain(toy_root, tmp_path, 'stereo', '--supervision', 'stereo', '--lr', '2e-4', '--width', '96',
                       iters=30)
    lines = read_metrics(run)
    losses = [m['loss'] for m in lines if m['split'] == 'train']
    assert len(losses) == 30 and sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
    baseline, evaluation = (next(m for m in lines if m['split'] == split) for split in ('baseline', 'eval'))
    assert evaluation['abs_rel'] < 0.96 * baseline['abs_rel'], (evaluation['abs_rel'], baseline['abs_rel'])


def test_mono_pretraining_learns_depth_from_video(toy_root, tmp_path):
    """30 seeded steps of the Monodepth2 loss (frames t-1 and t+1 through the PoseNet's motion) at 64x96: the
    loss falls by more than a fifth, and the median-scaled depth beats the constant depth the run logs as its
    baseline, which the network at iteration 0 scores (it predicts about one depth everywhere). Were the
    PoseNet's motion not used (identity poses), the warps would not depend on depth: the loss would stay flat
    and abs_rel at the baseline; were the PoseNet left out of the gradient, its bias would stay where it starts."""
    run, checkpoint = _pretrain(toy_root, tmp_path, 'mono', '--supervision', 'mono', '--lr', '2e-4', '--width', '96',
                                iters=30)
    lines = read_metrics(run)
    baseline = next(m for m in lines if m['split'] == 'baseline')
    evaluation = next(m for m in lines if m['split'] == 'eval')
    losses = [m['loss'] for m in lines if m['split'] == 'train']
    assert len(losses) == 30 and sum(losses[-5:]) < 0.8 * sum(losses[:5]), losses
    assert evaluation['abs_rel'] < 0.96 * baseline['abs_rel'], (evaluation['abs_rel'], baseline['abs_rel'])
    assert evaluation['scale_std'] > 0  # median-scaled, frame by frame
    # the PoseNet trains with the depth network: its translation bias has left where start_moving_forward put it
    start = torch.tensor([0.0, 0.0, -1 / 15]) / models.POSE_SCALE['translation']
    assert (checkpoint['pose_net']['decoder.6.bias'][3:] - start).abs().max() > 1e-4


@pytest.mark.parametrize('video_start, depth, forward, translation_scale', [
    ('forward', 1.0, 1 / 15, 0.1),        # the default: 1 m, moving forward 1/15 of it per frame
    ('rest', 1.0, 0.0, 0.1),              # the same depth, the PoseNet at rest
    ('monodepth2', 1 / 5.005, 0.0, 0.01),  # Monodepth2's: the sigmoid's midpoint (0.2 m), at rest, x 0.01
])
def test_video_start_sets_the_starting_depth_the_posenets_motion_and_its_translation_scale(video_start, depth, forward,
                                                                                          translation_scale):
    args = pretrain.parse_args(['--video-start', video_start])
    pretrain.check_pretraining_args(args)
    networks = pretrain.depth_networks(args, 'cpu')
    # every scale's sigmoid starts at the disparity of `depth`; Monodepth2's biases as torch draws them,
    # within 1/sqrt(16 x 3 x 3 inputs) of 0: 0.19 to 0.21 m
    rtol = 0.05 if video_start == 'monodepth2' else 1e-4
    for conv in networks['model'].head.convs:
        assert torch.allclose(models.disp_to_depth(torch.sigmoid(conv.bias)), torch.tensor([depth]), rtol=rtol)
    pose = networks['pose_net']
    assert pose.translation_scale == translation_scale
    translation = translation_scale * pose.decoder[-1].bias[3:]  # metres per frame before training
    if forward:
        assert torch.allclose(translation, torch.tensor([0.0, 0.0, -forward]), atol=1e-7)
    else:  # at rest: as torch draws a conv's bias, within 1/sqrt(256 inputs), scaled
        assert translation.abs().max() <= translation_scale / 16
    assert (video_start in pretrain.run_name(args)) == (video_start != 'forward')


@pytest.mark.parametrize('flags', [['--supervision', 'stereo'], ['--supervision', 'gt'], ['--task', 'flow']])
def test_video_start_other_than_forward_stops_without_video_supervision(flags):
    with pytest.raises(SystemExit, match='--video-start rest applies to depth from video alone'):
        pretrain.check_pretraining_args(pretrain.parse_args(flags + ['--video-start', 'rest']))


GARG = (0.40810811, 0.99189189, 0.03594771, 0.96405229)  # Garg et al.'s crop: rows top, bottom; columns left, right


def _scores_by_hand(checkpoint, frames, cap):
    """abs_rel and rmse of an unscaled depth checkpoint and of the median-scaled constant depth, on the Eigen
    frames, written apart from evaluate.py as Monodepth2 scores: disparity d -> depth 1 / (1/100 + (1/0.1 -
    1/100) d), upsampled bilinearly to the ground truth's size, clamped to [1e-3, cap]; ground truth in
    (1e-3, cap) inside the Garg crop; each image's mean, averaged over images."""
    net = models.build_depth_net(checkpoint['arch'], checkpoint['normalization'])
    net.load_state_dict(checkpoint['model'])
    net.eval()
    scores = {'abs_rel': [], 'rmse': [], 'baseline_abs_rel': []}
    for item in frames:
        gt = item['depth'][0].double()
        with torch.no_grad():
            disp = F.interpolate(net(item['frames'])[0], gt.shape, mode='bilinear', align_corners=False)[0, 0]
        depth = 1 / (1 / 100 + (1 / 0.1 - 1 / 100) * disp.double())
        h, w = gt.shape
        crop = torch.zeros(h, w, dtype=torch.bool)
        crop[int(GARG[0] * h):int(GARG[1] * h), int(GARG[2] * w):int(GARG[3] * w)] = True
        valid = (gt > 1e-3) & (gt < cap) & crop
        pred, g = depth[valid].clamp(1e-3, cap), gt[valid]
        scores['abs_rel'].append(((pred - g).abs() / g).mean().item())
        scores['rmse'].append(((pred - g) ** 2).mean().sqrt().item())
        constant = float(np.median(g.numpy()))  # the constant prediction, median-scaled: the median itself
        scores['baseline_abs_rel'].append(((constant - g).abs() / g).mean().item())
    return {key: sum(values) / len(values) for key, values in scores.items()}


@pytest.mark.parametrize('flags, cap', [([], 80.0), (['--eval-max-depth', '40'], 40.0)])
def test_depth_is_scored_up_to_the_evaluation_cap_from_1_mm(flags, cap, toy_root, tmp_path, monkeypatch):
    calls, average = [], evaluate.average_depth_metrics

    def spy(*args, **kwargs):
        bound = inspect.signature(average).bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append((bound.arguments['min_depth'], bound.arguments['max_depth'], bound.arguments['median_scaling']))
        return average(*args, **kwargs)
    monkeypatch.setattr(evaluate, 'average_depth_metrics', spy)
    run, checkpoint = _pretrain(toy_root, tmp_path, 'stereo', '--supervision', 'stereo', '--width', '96', *flags, iters=1)
    assert calls == [(1e-3, cap, True), (1e-3, cap, False)]  # the baseline (median-scaled), then the evaluation
    assert checkpoint['args']['eval_max_depth'] == cap
    lines = read_metrics(run)
    logged, baseline = (next(m for m in lines if m['split'] == split) for split in ('eval', 'baseline'))
    frames = kitti_test_frames(toy_root, 64, 96, 'eigen')
    by_hand = _scores_by_hand(checkpoint, frames, cap)
    assert logged['abs_rel'] == pytest.approx(by_hand['abs_rel'], rel=1e-6)
    assert logged['rmse'] == pytest.approx(by_hand['rmse'], rel=1e-6)
    assert baseline['abs_rel'] == pytest.approx(by_hand['baseline_abs_rel'], rel=1e-6)
    uncapped = _scores_by_hand(checkpoint, frames, 200.0)  # the toy world's scans reach 120 m: the cap matters
    assert abs(uncapped['abs_rel'] - by_hand['abs_rel']) > 1e-3 and abs(uncapped['rmse'] - by_hand['rmse']) > 0.1


def test_ground_truth_supervision_needs_depth_for_every_training_frame(toy_root, tmp_path):
    root = tmp_path / 'world'
    shutil.copytree(toy_root, root)
    next(root.rglob('proj_depth/groundtruth/image_02/0000000003.png')).unlink()
    with pytest.raises(SystemExit, match='no ground-truth depth'):
        _pretrain(root, tmp_path, 'gt', '--supervision', 'gt')
    assert not (tmp_path / 'gt').exists()


def test_imagenet_init_loads_the_cached_weights(imagenet_resnet18, toy_root, tmp_path):
    # lr 0: the weights after one step are still the ones loaded (BatchNorm statistics do move)
    _, checkpoint = _pretrain(toy_root, tmp_path, 'depth', '--init', 'imagenet', '--lr', '0', iters=1)
    assert checkpoint['normalization'] == 'imagenet' and checkpoint['init'] == 'imagenet'
    model, pose = checkpoint['model'], checkpoint['pose_net']
    weights = [k for k in imagenet_resnet18 if not k.startswith('fc.') and 'running' not in k and 'batches' not in k]
    assert all(torch.equal(model[f'encoder.{k}'], imagenet_resnet18[k]) for k in weights)
    assert torch.allclose(pose['encoder.conv1.weight'], imagenet_resnet18['conv1.weight'].repeat(1, 2, 1, 1) / 2)

    finetune.main(['--data-root', str(toy_root), '--runs', str(tmp_path), '--init', 'imagenet', '--freeze-encoder',
                   '--train-size', '4', '--iters', '1', '--eval-every', '1', '--name', 'seg'] + SMALL)
    seg = torch.load(tmp_path / 'seg' / 'checkpoint.pt', weights_only=False)
    assert seg['normalization'] == 'imagenet'
    assert all(torch.equal(seg['model'][f'encoder.{k}'], v) for k, v in imagenet_resnet18.items() if 'fc.' not in k)


def test_imagenet_init_without_the_file_stops_and_names_it(monkeypatch, toy_root, tmp_path):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'empty'))
    with pytest.raises(SystemExit, match=r'resnet18-f37072fd\.pth in .*empty.hub.checkpoints'):
        _pretrain(toy_root, tmp_path, 'depth', '--init', 'imagenet')
    with pytest.raises(SystemExit, match=r'resnet18-f37072fd\.pth'):
        finetune.main(['--data-root', str(toy_root), '--runs', str(tmp_path), '--init', 'imagenet',
                       '--train-size', '4'] + SMALL)
    assert not (tmp_path / 'depth').exists()


def test_pretraining_on_crops_evaluates_on_whole_images(toy_root, tmp_path):
    run, checkpoint = _pretrain(toy_root, tmp_path, 'crop', '--crop-size', '64', '96')
    assert checkpoint['args']['crop_size'] == [64, 96]
    assert [m['split'] for m in read_metrics(run)].count('eval') == 1
    with pytest.raises(SystemExit, match='--crop-size'):
        _pretrain(toy_root, tmp_path, 'bad', '--crop-size', '64', '100')


def test_flow_pretraining_and_finetuning_from_its_encoder(toy_root, tmp_path, capsys):
    run, checkpoint = _pretrain(toy_root, tmp_path, 'flow', '--task', 'flow', iters=20)
    lines = read_metrics(run)
    baseline = next(m for m in lines if m['split'] == 'baseline')
    evals = [m for m in lines if m['split'] == 'eval']
    assert baseline['epe'] > 0.5 and len(evals) == 1 and evals[0]['epe'] > 0 and 0 <= evals[0]['fl'] <= 1
    losses = [m['loss'] for m in lines if m['split'] == 'train']
    assert sum(losses[-5:]) < sum(losses[:5])  # the photometric loss of eq. 13 + 14 falls
    assert checkpoint['task'] == 'flow' and (run / 'sample_000020.png').is_file()

    finetune.main(['--data-root', str(toy_root), '--runs', str(tmp_path), '--init', str(tmp_path / 'flow.pt'),
                   '--freeze-encoder', '--train-size', '4', '--iters', '1', '--eval-every', '1', '--name', 'seg'] + SMALL)
    assert 'does not transfer' in capsys.readouterr().out
    seg = torch.load(tmp_path / 'seg' / 'checkpoint.pt', weights_only=False)['model']
    flow = checkpoint['model']
    assert all(torch.equal(seg[k], flow[k]) for k in seg if k.startswith('encoder.'))


def test_finetuning_at_another_resolution_than_pretraining(toy_root, tmp_path):
    _, checkpoint = _pretrain(toy_root, tmp_path, 'depth', iters=1)
    assert (checkpoint['height'], checkpoint['width']) == (64, 192)
    finetune.main(['--data-root', str(toy_root), '--runs', str(tmp_path), '--init', str(tmp_path / 'depth.pt'),
                   '--train-size', '4', '--iters', '1', '--eval-every', '1', '--name', 'seg']
                  + SMALL + ['--height', '96', '--width', '128'])
    seg = torch.load(tmp_path / 'seg' / 'checkpoint.pt', weights_only=False)
    assert (seg['height'], seg['width']) == (96, 128) and 0 <= seg['metrics']['miou7'] <= 1


def test_evaluating_the_checkpoint_reproduces_the_runs_logged_depth_metrics(toy_root, tmp_path):
    run, _ = _pretrain(toy_root, tmp_path, 'mono', '--supervision', 'mono', '--eval-every', '2')
    logged = [m for m in read_metrics(run) if m['split'] == 'eval'][-1]
    metrics = evaluate.main(['--checkpoint', str(run / 'checkpoint.pt'), '--data-root', str(toy_root)])
    assert metrics['abs_rel'] == pytest.approx(logged['abs_rel'], rel=1e-6)
    assert metrics['rmse'] == pytest.approx(logged['rmse'], rel=1e-6)


def test_eval_protocol_and_scaling_flags_are_recorded_and_named(toy_root, tmp_path, capsys):
    pretrain.main(['--data-root', str(toy_root), '--runs', str(tmp_path), '--out', str(tmp_path / 'd.pt'),
                   '--supervision', 'stereo', '--eval-protocol', 'benchmark', '--median-scaling', 'on',
                   '--iters', '1', '--eval-every', '1'] + SMALL)
    run = tmp_path / 'depth-stereo-benchmark-median-scaled-resnet18-64x192-s0'
    evaluation = next(m for m in read_metrics(run) if m['split'] == 'eval')
    assert evaluation['median_scale'] != 1.0 and evaluation['images'] > 0
    out = capsys.readouterr().out
    assert 'Depth is scored by the benchmark (annotated ground truth, no crop), median-scaled' in out
    assert 'scale ratios median' in out
    with pytest.raises(SystemExit, match='--eval-protocol applies to depth evaluation'):
        pretrain.parse_args(['--task', 'flow', '--eval-protocol', 'benchmark'])


def test_a_corrupt_training_frame_read_by_a_worker_stops_with_its_sentence(toy_root, tmp_path):
    root = tmp_path / 'world'
    shutil.copytree(toy_root, root)
    folder, frame, _ = (root / 'splits/train_files.txt').read_text().split('\n')[0].split()
    for f in range(int(frame) - 1, 8):  # every frame of the drive is corrupt: the first batch reads one
        path = root / folder / 'image_02/data' / f'{f:010d}.png'
        path.write_bytes(path.read_bytes()[:100])  # a truncated PNG
    with pytest.raises(SystemExit) as stop:
        pretrain.main(['--data-root', str(root), '--runs', str(tmp_path), '--out', str(tmp_path / 'd.pt'),
                       '--iters', '1'] + SMALL[:-2] + ['--workers', '1'])
    message = str(stop.value)
    assert 'is not a PNG or JPEG image that can be decoded' in message and 'DataLoader worker' not in message
    assert '\n' not in message


def test_a_diverging_run_stops_before_backward_with_its_last_checkpoint_untouched(toy_root, tmp_path):
    # at --lr 1e10 the second step's sampling grid is NaN: back-propagating through grid_sample would
    # crash the process (exit 139); in a child process, so that a crash fails this test, not the suite
    flags = ['--data-root', str(toy_root), '--runs', str(tmp_path), '--name', 'nan', '--out', str(tmp_path / 'nan.pt'),
             '--iters', '6', '--save-every', '1', '--lr', '1e10'] + SMALL
    done = subprocess.run([sys.executable, 'pretrain.py'] + flags, cwd=Path(pretrain.__file__).parent,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))  # one thread, as one_torch_thread
    assert done.returncode == 1, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r'the loss became nan at iteration (\d+): lower --lr \(now 1e\+10\).*was left as it was\.', last)
    stopped_at = int(re.search(r'iteration (\d+)', last).group(1))
    saved = torch.load(tmp_path / 'nan' / 'checkpoint.pt', weights_only=False)
    assert saved['iter'] == stopped_at - 1  # the last good iteration's checkpoint, as it was
    assert all(torch.isfinite(v).all() for v in saved['model'].values() if v.is_floating_point())


def test_the_training_stream_is_a_function_of_the_iteration():
    stream = list(itertools.islice(training.epoch_batches(7, 3, seed=5), 6))  # 2 batches per epoch: 1 item dropped
    assert list(itertools.islice(training.epoch_batches(7, 3, seed=5, start=4), 2)) == stream[4:]
    draws = [draw for batch in stream for _, draw in batch]
    assert draws == list(range(18))  # every draw numbered once, in order
    for epoch in range(3):
        items = [item for batch in stream[2 * epoch:2 * epoch + 2] for item, _ in batch]
        assert len(set(items)) == 6 and set(items) <= set(range(7))  # no item twice within an epoch
    assert [i for i, _ in stream[0] + stream[1]] != [i for i, _ in stream[2] + stream[3]]  # a new order each epoch
    small = list(itertools.islice(training.epoch_batches(2, 8, seed=0), 3))
    assert all(sorted(i for i, _ in batch) == [0, 1] for batch in small)  # smaller than a batch: the whole set


# ----------------------------------------------------------------------------------------------------
# Learning-rate schedules (--schedule step | linear) and where depth starts, per layout
# ----------------------------------------------------------------------------------------------------

def test_step_schedule_is_1_before_step_at_of_the_iterations_and_step_factor_from_there():
    args = pretrain.parse_args(['--iters', '100'])
    assert (args.schedule, args.step_at, args.step_factor) == ('step', 0.75, 0.1)  # Monodepth2's: tenfold down
    factor = training.lr_schedule(args.schedule, args.iters, args.warmup, args.step_at, args.step_factor)
    assert [factor(it) for it in (0, 50, 74, 75, 76, 99)] == [1.0, 1.0, 1.0, 0.1, 0.1, 0.1]
    factor = training.lr_schedule('step', 10, step_at=0.5, step_factor=0.5)
    assert [factor(it) for it in range(10)] == [1.0] * 5 + [0.5] * 5  # the NYU recipe: halved at half way


def _scheduled_rates(flags, iters):
    """The learning rate of each of `iters` iterations as pretrain.optimiser schedules it, read off its optimiser
    (a one-parameter network's optimiser and scheduler stepped as the loop steps them)."""
    rates = []
    args = pretrain.parse_args(['--iters', str(iters), '--lr', '2.0'] + flags)
    optimizer, scheduler = pretrain.optimiser(args, {'model': torch.nn.Linear(1, 1)})
    for _ in range(args.iters):
        rates.append(optimizer.param_groups[0]['lr'])
        optimizer.step()
        scheduler.step()
    return rates


def test_step_and_linear_schedules_set_the_optimisers_rate():
    assert _scheduled_rates([], 8) == pytest.approx([2.0] * 6 + [0.2] * 2)
    assert _scheduled_rates(['--step-at', '0.5', '--step-factor', '0.25'], 4) == pytest.approx(
        [2.0, 2.0, 0.5, 0.5])
    linear = _scheduled_rates(['--schedule', 'linear'], 8)
    assert linear == pytest.approx([2.0 * (1 - it / 8) for it in range(8)])  # 1 - it / iters: to 0 at the end
    assert pretrain.parse_args(['--schedule', 'linear']).name.split('-')[:4] == ['depth', 'mono', 'linear', 'resnet18']


def test_warm_up_rises_linearly_then_the_schedule_runs_over_the_rest():
    # (it + 1) / warmup for the first 2, then the step after 0.75 x (8 - 2) = 4.5 more iterations
    assert _scheduled_rates(['--warmup', '2'], 8) == pytest.approx([1.0] + [2.0] * 6 + [0.2])
    linear = _scheduled_rates(['--warmup', '4', '--schedule', 'linear'], 8)
    assert linear == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 1.5, 1.0, 0.5])  # 2 x (1 - (it - 4) / 4) after it
    with pytest.raises(SystemExit, match=r'--warmup must be between 0 and --iters - 1 \(7\); got 8\.'):
        pretrain.parse_args(['--iters', '8', '--warmup', '8'])


def test_adamw_weight_decay_and_a_slower_encoder_reach_every_networks_optimiser():
    args = pretrain.parse_args(['--optim', 'adamw', '--lr', '1e-4', '--weight-decay', '0.01', '--encoder-lr-mult', '0.1'])
    networks = {'model': models.build_depth_net(), 'pose_net': models.PoseNet()}
    optimizer, _ = pretrain.optimiser(args, networks)
    assert type(optimizer) is torch.optim.AdamW
    rest, encoders = optimizer.param_groups
    assert rest['weight_decay'] == encoders['weight_decay'] == 0.01
    assert rest['lr'] == 1e-4 and math.isclose(encoders['lr'], 1e-5)  # xNet, App. A: the encoder at 0.1 x
    encoder_ids = {id(p) for net in networks.values() for p in net.encoder.parameters()}
    assert {id(p) for p in encoders['params']} == encoder_ids  # the depth network's and the PoseNet's
    assert len(rest['params']) + len(encoders['params']) == sum(len(list(n.parameters())) for n in networks.values())
    defaults = pretrain.parse_args([])
    assert (defaults.optim, defaults.weight_decay, defaults.warmup, defaults.encoder_lr_mult) == ('adam', 0.0, 0, 1.0)


class _Stop(Exception):
    """Raised where pre-training would open the dataset: the networks are built and started by then."""


@pytest.mark.parametrize('flags, start, max_depth', [
    (['--data', 'nyu', '--supervision', 'gt'], 3.0, 10.0),          # 0.3 x NYU's 10 m: a room's depth
    (['--data', 'kitti', '--supervision', 'stereo'], 10.0, 100.0),  # a driving scene's; 0.3 x 100 m is more
    (['--data', 'cityscapes', '--supervision', 'mono+stereo'], 10.0, 100.0),
    (['--data', 'kitti', '--supervision', 'gt', '--max-depth', '20'], 6.0, 20.0),  # min(10, 0.3 x 20)
])
def test_metric_depth_starts_at_the_smaller_of_10_m_and_three_tenths_of_max_depth(flags, start, max_depth, monkeypatch,
                                                                                   tmp_path):
    built = []
    build = models.build_depth_net
    monkeypatch.setattr(models, 'build_depth_net', lambda *a, **k: built.append(build(*a, **k)) or built[-1])

    def stop(args):
        raise _Stop(args.max_depth)
    monkeypatch.setattr(data, 'open_layout', stop)
    with pytest.raises(_Stop) as stopped:
        pretrain.main(flags + ['--data-root', str(tmp_path), '--runs', str(tmp_path), '--device', 'cpu'])
    assert stopped.value.args == (max_depth,)  # the layout's default (NYU: 10 m), or --max-depth
    (net,) = built
    # every disparity bias is the logit of the start depth's scaled disparity (models.disp_to_depth inverted)
    scaled = (1 / start - 1 / max_depth) / (1 / 0.1 - 1 / max_depth)
    for conv in net.head.convs:
        assert torch.allclose(conv.bias, torch.logit(torch.tensor(scaled)))
    with torch.no_grad():
        depth = models.disp_to_depth(net.eval()(torch.rand(2, 3, 64, 192))[0], 0.1, max_depth)
    assert 0.6 * start < float(depth.median()) < 1.6 * start  # random weights spread it a little


@pytest.mark.parametrize('data_flag, max_depth, eval_max_depth', [
    ('nyu', 10.0, 10.0), ('kitti', 100.0, 80.0), ('toy', 100.0, 80.0), ('cityscapes', 100.0, 80.0),
    ('folder', 100.0, 80.0)])
def test_depth_range_and_cap_default_to_the_layouts(data_flag, max_depth, eval_max_depth):
    args = pretrain.parse_args(['--data', data_flag])
    assert (args.max_depth, args.eval_max_depth) == (max_depth, eval_max_depth)
    args = finetune.parse_args(['--data', data_flag, '--task', 'depth'])
    assert (args.max_depth, args.eval_max_depth) == (max_depth, eval_max_depth)
    args = pretrain.parse_args(['--data', data_flag, '--max-depth', '50', '--eval-max-depth', '40'])
    assert (args.max_depth, args.eval_max_depth) == (50.0, 40.0)  # given: kept
