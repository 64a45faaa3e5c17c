"""Tests for evaluate.py: metrics on hand-computed examples, run folders -> table, figure and CLI."""
import json
import logging
import math
import sys
import warnings
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import evaluate  # noqa: E402
import training  # noqa: E402

# 2x4 image, 3 classes present (K = 4, class 3 absent); the last column is ignored.
LABEL = torch.tensor([[0, 0, 1, 255], [1, 2, 2, 255]])
PRED = torch.tensor([[0, 1, 1, 2], [1, 2, 0, 0]])


def test_confusion_matrix_by_hand():
    # kept (gt, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,2) (2,0)
    expected = torch.tensor([[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    confusion = evaluate.confusion_matrix(PRED, LABEL, num_classes=4)
    assert confusion.dtype == torch.int64 and confusion.device.type == 'cpu'
    assert torch.equal(confusion, expected)
    assert torch.equal(evaluate.confusion_matrix(PRED[None], LABEL[None], 4), expected)  # any shape


def test_confusion_matrix_rejects_out_of_range_labels():
    with pytest.raises(ValueError):
        evaluate.confusion_matrix(PRED, torch.full_like(LABEL, 7), num_classes=4)


def test_segmentation_metrics_by_hand():
    metrics = evaluate.segmentation_metrics(evaluate.confusion_matrix(PRED, LABEL, 4))
    iou = metrics['per_class_iou']
    assert iou[:3] == pytest.approx([1 / 3, 2 / 3, 1 / 2]) and math.isnan(iou[3])  # class 3 absent -> NaN
    assert metrics['miou'] == pytest.approx(0.5)  # the absent class does not count
    assert metrics['pixel_acc'] == pytest.approx(4 / 6)
    assert metrics['mean_acc'] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert all(type(v) is float for v in iou + [metrics['miou'], metrics['pixel_acc'], metrics['mean_acc']])
    json.dumps(metrics)  # serialisable (NaN written as NaN)


def test_perfect_prediction():
    label = torch.randint(0, 19, (2, 8, 8))
    metrics = evaluate.segmentation_metrics(evaluate.confusion_matrix(label, label, 19))
    assert metrics['miou'] == 1.0 and metrics['pixel_acc'] == 1.0 and metrics['mean_acc'] == 1.0


def test_representative_classes_and_miou7():
    assert evaluate.REPRESENTATIVE_IDS == (0, 1, 2, 8, 9, 10, 13)
    label = torch.arange(19)  # one pixel of every class
    person, rider, car, truck = (evaluate.CITYSCAPES_CLASSES.index(n) for n in ('person', 'rider', 'car', 'truck'))
    person_as_rider = evaluate.segmentation_metrics(
        evaluate.confusion_matrix(torch.where(label == person, rider, label), label, 19))
    car_as_truck = evaluate.segmentation_metrics(
        evaluate.confusion_matrix(torch.where(label == car, truck, label), label, 19))
    # both mistakes cost the same over 19 classes (one IoU 0, one IoU 1/2) ...
    assert person_as_rider['miou'] == pytest.approx(17.5 / 19) == car_as_truck['miou']
    # ... but only the car is one of the 7 representative classes
    assert person_as_rider['miou7'] == 1.0
    assert car_as_truck['miou7'] == pytest.approx(6 / 7)


def _depth(shape=(2, 1, 4, 5)):
    return 1 + 29 * torch.rand(shape, generator=torch.Generator().manual_seed(0))  # 1..30 m, no clamping at 2x


def test_depth_metrics_perfect_prediction():
    gt = _depth()
    metrics = evaluate.depth_metrics(gt.clone(), gt)
    assert metrics['abs_rel'] == pytest.approx(0, abs=1e-9) and metrics['rmse'] == pytest.approx(0, abs=1e-6)
    assert metrics['a1'] == 1.0 and metrics['a3'] == 1.0
    assert metrics['silog'] == pytest.approx(0, abs=1e-9) and metrics['si_rmse'] == pytest.approx(0, abs=1e-6)
    assert metrics['median_scale'] == 1.0
    assert evaluate.depth_metrics(gt[0, 0], gt[0, 0])['abs_rel'] == pytest.approx(0, abs=1e-9)  # one [H,W] image


def test_depth_metrics_scale():
    gt = _depth()
    unscaled = evaluate.depth_metrics(2 * gt, gt)
    assert unscaled['abs_rel'] == pytest.approx(1)
    assert unscaled['a1'] == 0.0
    assert unscaled['silog'] == pytest.approx(0.5 * math.log(2) ** 2)  # (1 - lambda) (log 2)^2 with lambda = 0.5
    assert unscaled['si_rmse'] == pytest.approx(0, abs=1e-6)  # scale invariant
    scaled = evaluate.depth_metrics(2 * gt, gt, median_scaling=True)
    assert scaled['abs_rel'] == pytest.approx(0, abs=1e-9) and scaled['median_scale'] == pytest.approx(0.5)


def test_median_scaling_is_per_image():
    gt = _depth()
    pred = gt * torch.tensor([2.0, 3.0]).view(2, 1, 1, 1)
    metrics = evaluate.depth_metrics(pred, gt, median_scaling=True)
    assert metrics['abs_rel'] == pytest.approx(0, abs=1e-6)
    assert metrics['median_scale'] == pytest.approx((1 / 2 + 1 / 3) / 2)


def test_depth_metrics_average_per_image_and_ignore_missing_gt():
    gt = torch.tensor([[[10.0, 0.0, 0.0, 0.0]], [[10.0, 20.0, 30.0, 40.0]]])  # [B=2, H=1, W=4]
    pred = torch.tensor([[[20.0, 99.0, 0.5, 7.0]], [[10.0, 20.0, 30.0, 40.0]]])
    # image 0: one valid pixel, abs_rel 1 (gt == 0 pixels ignored); image 1: perfect -> mean over images 0.5
    assert evaluate.depth_metrics(pred, gt)['abs_rel'] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        evaluate.depth_metrics(pred, torch.zeros_like(gt))


def test_constant_depth_baseline():
    gt = _depth()
    baseline = evaluate.constant_depth_baseline(gt)
    assert baseline['abs_rel'] > 0.05
    constant = evaluate.depth_metrics(torch.full_like(gt, 7.0), gt, median_scaling=True)
    for key in ('abs_rel', 'sq_rel', 'rmse', 'rmse_log', 'a1', 'silog', 'si_rmse'):
        assert baseline[key] == pytest.approx(constant[key])


def test_garg_crop_bounds_follow_the_protocol_fractions():
    # rows 0.40810811 H .. 0.99189189 H, columns 0.03594771 W .. 0.96405229 W, truncated to whole pixels:
    # at 375 x 1242, 153.04 -> 153, 371.96 -> 371, 44.65 -> 44, 1197.35 -> 1197 (end rows/columns excluded)
    mask = evaluate.crop_mask((375, 1242), 'garg')
    rows, columns = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
    assert (rows[0], rows[-1] + 1, columns[0], columns[-1] + 1) == (153, 371, 44, 1197)
    assert mask.sum() == (371 - 153) * (1197 - 44)  # a rectangle
    assert evaluate.crop_mask((375, 1242), None).all()


def test_garg_crop_scores_only_the_pixels_inside_it():
    gt = _depth((1, 1, 40, 100))
    pred = gt.clone()
    outside = ~evaluate.crop_mask((40, 100), 'garg')
    pred[0, 0][outside] *= 3  # wrong outside the crop only
    assert evaluate.depth_metrics(pred, gt, crop='garg')['abs_rel'] == pytest.approx(0, abs=1e-9)
    assert evaluate.depth_metrics(pred, gt)['abs_rel'] > 0.1


def test_median_scaling_takes_numpys_median_and_reports_the_ratios_spread():
    gt = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    # an even count: the median is the mean of the middle two (2.5), as np.median and Monodepth2 take it
    assert evaluate.depth_metrics(torch.ones_like(gt), gt, median_scaling=True)['median_scale'] == pytest.approx(2.5)
    gt = _depth((3, 1, 4, 5))
    pred = gt / torch.tensor([2.0, 4.0, 3.0]).view(3, 1, 1, 1)  # per-image ratios gt / pred: 2, 4, 3
    metrics = evaluate.depth_metrics(pred, gt, median_scaling=True)
    assert metrics['median_scale'] == pytest.approx(3.0)
    assert metrics['scale_std'] == pytest.approx(math.sqrt(((2 / 3 - 1) ** 2 + (4 / 3 - 1) ** 2) / 3))  # np.std of r / med
    metric = evaluate.depth_metrics(pred, gt)
    assert metric['median_scale'] == 1.0 and metric['scale_std'] == 0.0 and metric['images'] == 3


def test_depth_metrics_stream_images_of_different_sizes_and_count_those_without_ground_truth():
    small, large = _depth((1, 1, 4, 5))[0, 0], _depth((1, 1, 6, 9))[0, 0]
    pairs = [(small * 2, small), (large, large), (large, torch.zeros_like(large))]
    metrics = evaluate.average_depth_metrics(iter(pairs))  # a generator: nothing is held but running sums
    assert metrics['abs_rel'] == pytest.approx(0.5)  # (1 + 0) / 2 images: an average over images, not pixels
    assert metrics['images'] == 2 and metrics['skipped'] == 1


def test_constant_baseline_uses_the_protocols_crop():
    gt = _depth((1, 1, 40, 100))
    gt[0, 0][~evaluate.crop_mask((40, 100), 'garg')] = 60.0  # far outside the crop: the constant's worst pixels
    cropped = evaluate.constant_depth_baseline(gt[:, 0], crop='garg')
    assert cropped['abs_rel'] < evaluate.constant_depth_baseline(gt[:, 0])['abs_rel']
    inside = gt[0, 0][evaluate.crop_mask((40, 100), 'garg')]
    constant = torch.quantile(inside, 0.5).expand_as(inside)  # the median, as the baseline's scaling takes it
    assert cropped['abs_rel'] == pytest.approx(evaluate.depth_metrics(constant[None], inside[None])['abs_rel'])


def _write_run(folder, args, lines):
    folder.mkdir()
    (folder / 'args.json').write_text(json.dumps(args))
    (folder / 'metrics.jsonl').write_text(''.join(json.dumps(line) + '\n' for line in lines))
    return folder


@pytest.fixture
def runs(tmp_path):
    common = dict(arch='resnet18', height=96, width=320, iters=200, seed=0)
    seg = _write_run(tmp_path / 'seg_depth_frozen', dict(common, task='seg', init='depth', freeze_encoder=True,
                                                           train_size=16, name='seg_depth_frozen'), [
        {'iter': 50, 'split': 'train', 'loss': 2.1, 'lr': 1e-3, 'images_per_s': 30.0},
        {'iter': 100, 'split': 'eval', 'miou7': 0.3, 'miou': 0.2, 'pixel_acc': 0.7, 'mean_acc': 0.3},
        {'iter': 200, 'split': 'eval', 'miou7': 0.63214, 'miou': 0.41, 'pixel_acc': 0.85, 'mean_acc': 0.5,
         'per_class_iou': [0.5] * 19}])
    depth = _write_run(tmp_path / 'depth_mono', dict(common, task='depth', name='depth_mono'), [
        {'iter': 50, 'split': 'train', 'loss': 0.2, 'lr': 1e-4, 'images_per_s': 12.0},
        {'iter': 0, 'split': 'baseline', 'abs_rel': 0.35, 'rmse': 9.0},
        {'iter': 100, 'split': 'eval', 'abs_rel': 0.2, 'sq_rel': 2.0, 'rmse': 7.0, 'rmse_log': 0.3, 'a1': 0.7},
        {'iter': 200, 'split': 'eval', 'abs_rel': 0.1234, 'sq_rel': 1.5, 'rmse': 6.25, 'rmse_log': 0.2, 'a1': 0.875}])
    return seg, depth


def test_read_run_folder_and_checkpoint(runs, tmp_path):
    run = evaluate.read_run(runs[0])
    assert run['name'] == 'seg_depth_frozen' and run['args']['init'] == 'depth' and len(run['metrics']) == 3
    with open(runs[0] / 'metrics.jsonl', 'a') as f:
        f.write('{"iter": 250, "spl')  # a run still writing its last line
    assert len(evaluate.read_run(runs[0])['metrics']) == 3
    checkpoint = tmp_path / 'seg.pt'
    torch.save({'model': {}, 'task': 'seg', 'arch': 'resnet18', 'iter': 300, 'metrics': {'miou7': 0.5},
                'args': {'name': 'from_ckpt', 'init': 'imagenet'}}, checkpoint)
    run = evaluate.read_run(checkpoint)
    assert run['name'] == 'from_ckpt' and run['args']['task'] == 'seg'
    assert run['metrics'] == [{'iter': 300, 'split': 'eval', 'miou7': 0.5}]


def test_read_run_rejects_other_paths(tmp_path):
    stray = tmp_path / 'notes.txt'
    stray.write_text('hello')
    with pytest.raises(ValueError, match='not a run'):
        evaluate.read_run(stray)
    with pytest.raises(ValueError, match='not a run'):
        evaluate.read_run(tmp_path)  # a folder without args.json
    with pytest.raises(FileNotFoundError):
        evaluate.read_run(tmp_path / 'missing')


def test_results_table(runs):
    table = evaluate.results_table([evaluate.read_run(path) for path in runs])
    seg_part, depth_part = table.split('### depth')
    assert 'seg_depth_frozen' in seg_part and 'depth_mono' in depth_part
    row = next(line for line in seg_part.splitlines() if line.startswith('| seg_depth_frozen'))
    cells = [cell.strip() for cell in row.strip('|').split('|')]
    assert cells == ['seg_depth_frozen', 'seg', 'depth', '–', 'yes', '16', 'resnet18', '96x320', '200',
                     '63.21', '41.00', '85.00']
    row = next(line for line in depth_part.splitlines() if line.startswith('| depth_mono'))
    cells = [cell.strip() for cell in row.strip('|').split('|')]
    assert cells[-11:] == ['0.123', '1.500', '6.250', '0.200', '–', '0.875', '–', '–', '–', '–', '0.350']


def test_plot_curves(runs, tmp_path):
    path = tmp_path / 'figs' / 'curves.png'
    evaluate.plot_curves([evaluate.read_run(p) for p in runs], path)
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 500  # two panels side by side
    assert image.std() > 0.01  # something was drawn


def test_cli(runs, tmp_path, capsys):
    out_dir = tmp_path / 'results'
    evaluate.main([str(runs[0]), str(runs[1]), '--out-dir', str(out_dir)])
    printed = capsys.readouterr().out
    table = (out_dir / 'results.md').read_text()
    assert table in printed and '63.21' in table and 'curves.png' in printed
    assert matplotlib.image.imread(out_dir / 'curves.png').shape[0] > 100
    # one train size: no Fig. 3, and one line saying so; no temp files left
    assert sorted(p.name for p in out_dir.iterdir()) == ['curves.png', 'frozen.png', 'results.md']
    assert 'train_size.png not written' in printed


def test_cli_bad_path(runs, tmp_path, capsys):
    stray = tmp_path / 'stray.log'
    stray.write_text('not a run')
    with pytest.raises(SystemExit):
        evaluate.main([str(runs[0]), str(stray), '--out-dir', str(tmp_path / 'results')])
    error = capsys.readouterr().err
    assert 'stray.log is not a run' in error
    assert not (tmp_path / 'results').exists()


def _seg_runs(tmp_path, init, frozen, miou7s, train_size=16):
    """Hand-made segmentation run folders, one per seed, ending at the given mIoU (7 classes)."""
    folders = []
    for seed, miou7 in enumerate(miou7s):
        name = f"seg-{init}-unet-{'frozen' if frozen else 'full'}-n{train_size}-resnet18-64x192-s{seed}"
        args = dict(task='seg', init=init, decoder='unet', freeze_encoder=frozen, train_size=train_size,
                    arch='resnet18', height=64, width=192, iters=100, seed=seed, name=name, runs=str(tmp_path))
        folders.append(_write_run(tmp_path / name, args, [
            {'iter': 50, 'split': 'eval', 'miou7': miou7 / 2, 'miou': 0.1, 'pixel_acc': 0.5},
            {'iter': 100, 'split': 'eval', 'miou7': miou7, 'miou': 0.2, 'pixel_acc': 0.8}]))
    return folders


def test_runs_differing_only_in_seed_are_grouped_with_mean_and_std(tmp_path):
    paths = (_seg_runs(tmp_path, 'depth', False, [0.60, 0.70, 0.80]) + _seg_runs(tmp_path, 'none', False, [0.5, 0.5])
             + _seg_runs(tmp_path, 'depth', True, [0.4]))
    runs = [evaluate.read_run(p) for p in paths]
    groups = evaluate.group_runs(runs)
    assert [(label, len(members)) for label, members in groups] == [
        ('seg-depth-unet-full-n16-resnet18-64x192', 3), ('seg-none-unet-full-n16-resnet18-64x192', 2),
        ('seg-depth-unet-frozen-n16-resnet18-64x192', 1)]
    table = evaluate.grouped_table(runs)
    row = next(line for line in table.splitlines() if line.startswith('| seg-depth-unet-full'))
    cells = [cell.strip() for cell in row.strip('|').split('|')]
    assert cells[9] == '3' and cells[10] == '70.00 ± 10.00'  # sample std of 0.6, 0.7, 0.8
    assert '50.00 ± 0.00' in table  # two seeds that agree
    row = next(line for line in table.splitlines() if line.startswith('| seg-depth-unet-frozen'))
    cells = [cell.strip() for cell in row.strip('|').split('|')]
    assert cells[9:12] == ['1', '40.00', '20.00'] and '±' not in row  # one seed: its values alone


def test_curves_plot_segmentation_in_percent(runs, tmp_path):
    fig = evaluate.plot_curves([evaluate.read_run(p) for p in runs], tmp_path / 'curves.png')
    seg_axes = fig.axes[0]
    assert seg_axes.get_ylabel() == 'mIoU (7 classes) %'
    assert list(seg_axes.lines[0].get_ydata()) == pytest.approx([30.0, 63.214])
    assert list(fig.axes[1].lines[0].get_ydata()) == pytest.approx([0.2, 0.1234])  # depth stays as logged


def test_frozen_figure_draws_only_the_bars_that_exist(tmp_path):
    paths = (_seg_runs(tmp_path, 'depth', True, [0.6, 0.7]) + _seg_runs(tmp_path, 'depth', False, [0.8])
             + _seg_runs(tmp_path, 'none', True, [0.3]))  # no fine-tuned run from random weights
    fig = evaluate.plot_frozen([evaluate.read_run(p) for p in paths], tmp_path / 'frozen.png')
    ax = fig.axes[0]
    assert sorted(bar.get_height() for bar in ax.patches) == pytest.approx([30.0, 65.0, 80.0])
    assert [t.get_text() for t in ax.get_xticklabels()] == ['seg-depth-unet-n16-resnet18-64x192',
                                                            'seg-none-unet-n16-resnet18-64x192']


def test_train_size_figure_needs_two_sizes_of_one_configuration(tmp_path):
    one_size = _seg_runs(tmp_path, 'depth', False, [0.5]) + _seg_runs(tmp_path, 'none', False, [0.3], train_size=4)
    assert evaluate.plot_train_size([evaluate.read_run(p) for p in one_size], tmp_path / 'fig3.png') is None
    assert not (tmp_path / 'fig3.png').exists()
    two_sizes = one_size + _seg_runs(tmp_path, 'depth', False, [0.7], train_size=64)
    fig = evaluate.plot_train_size([evaluate.read_run(p) for p in two_sizes], tmp_path / 'fig3.png')
    assert (tmp_path / 'fig3.png').is_file()
    series, = fig.axes[0].containers  # only the depth configuration has two sizes
    line = series.lines[0]
    assert list(line.get_xdata()) == [16, 64] and list(line.get_ydata()) == pytest.approx([50.0, 70.0])


def test_init_name():
    assert evaluate.init_name('none') == 'none' and evaluate.init_name('depth') == 'depth'
    assert evaluate.init_name('checkpoints/depth-stereo.pt') == 'depth-stereo'
    assert evaluate.init_name('runs/depth-mono-s2/checkpoint.pt') == 'depth-mono'


def test_headline_compares_depth_with_random_init_in_the_same_setting(tmp_path, capsys):
    paths = (_seg_runs(tmp_path, 'depth', False, [0.75]) + _seg_runs(tmp_path, 'none', False, [0.5, 0.4])
             + _seg_runs(tmp_path, 'depth', True, [0.6, 0.7, 0.8]) + _seg_runs(tmp_path, 'none', True, [0.3, 0.28, 0.26])
             + _seg_runs(tmp_path, 'imagenet', True, [0.9])  # not part of the comparison
             + _seg_runs(tmp_path, 'depth', True, [0.5], train_size=4))  # no random-init partner
    expected = ['mIoU (7 classes), frozen encoder: depth 70.0 vs random 28.0 (+42.0), mean of 3 seeds',
                'mIoU (7 classes), fine-tuned encoder: depth 75.0 vs random 45.0 (+30.0), '
                'depth one seed, random mean of 2 seeds']
    assert evaluate.headlines([evaluate.read_run(p) for p in paths]) == expected
    out_dir = tmp_path / 'results'
    evaluate.main([str(p) for p in paths] + ['--out-dir', str(out_dir)])
    assert capsys.readouterr().out.strip().splitlines()[-2:] == expected  # the last thing printed
    assert (out_dir / 'results.md').read_text().startswith('\n'.join(expected) + '\n\n## Configurations')


def test_headline_names_the_configuration_when_a_setting_has_several_pairs(tmp_path):
    paths = []
    for size in (4, 16):
        paths += _seg_runs(tmp_path, 'depth', True, [0.5], size) + _seg_runs(tmp_path, 'none', True, [0.25], size)
    lines = evaluate.headlines([evaluate.read_run(p) for p in paths])
    assert lines == [f'mIoU (7 classes), frozen encoder (seg-depth-unet-frozen-n{size}-resnet18-64x192): '
                     f'depth 50.0 vs random 25.0 (+25.0)' for size in (4, 16)]


def test_no_headline_without_a_pair(runs, tmp_path, capsys):
    loaded = [evaluate.read_run(p) for p in runs]
    assert evaluate.headlines(loaded) == []
    evaluate.main([str(p) for p in runs] + ['--out-dir', str(tmp_path / 'results')])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith('wrote ')
    assert (tmp_path / 'results' / 'results.md').read_text().startswith('## Configurations')


def test_train_size_and_frozen_figures_are_readable_pngs(tmp_path):
    paths = []
    for size, base in ((4, 0.3), (16, 0.5), (64, 0.7)):
        for init, bonus in (('depth', 0.1), ('none', 0.0)):
            paths += _seg_runs(tmp_path, init, False, [base + bonus, base + bonus + 0.02], train_size=size)
    paths += _seg_runs(tmp_path, 'depth', True, [0.55, 0.57]) + _seg_runs(tmp_path, 'none', True, [0.2, 0.25])
    runs = [evaluate.read_run(p) for p in paths]
    for plot, name in ((evaluate.plot_train_size, 'fig3.png'), (evaluate.plot_frozen, 'fig4.png'),
                       (evaluate.plot_curves, 'fig2.png')):
        plot(runs, tmp_path / name)
        image = matplotlib.image.imread(tmp_path / name)
        assert image.ndim == 3 and image.shape[0] > 200 and image.std() > 0.01


@pytest.fixture
def trained_runs(toy_root, tmp_path):
    """Two hand-made segmentation runs and one depth run, with checkpoints of (random) networks."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import models
    folders = []
    for name, task, seed in (('seg-a-s0', 'seg', 0), ('seg-b-s1', 'seg', 1), ('depth-c-s0', 'depth', 0)):
        torch.manual_seed(seed)
        net = models.build_seg_net() if task == 'seg' else models.build_depth_net()
        args = dict(task=task, init='none', arch='resnet18', height=64, width=192, seed=seed, train_size=4,
                    name=name, data_root=str(toy_root))
        folder = _write_run(tmp_path / name, args, [{'iter': 1, 'split': 'eval', 'miou7': 0.1}])
        torch.save(dict(model=net.state_dict(), task=task, arch='resnet18', decoder='unet', normalization='unit',
                        num_classes=19 if task == 'seg' else None, height=64, width=192, args=args), folder / 'checkpoint.pt')
        folders.append(folder)
    return folders


def _overexposed(get_item, key):
    """A dataset's __getitem__ whose images (under `key`) overshoot [0, 1], as resampled real photos can."""
    def overexposed(self, index):
        item = get_item(self, index)
        return dict(item, **{key: item[key] * 1.2 - 0.1})
    return overexposed


def test_qualitative_grids_and_grad_cam_from_run_checkpoints_quietly(trained_runs, tmp_path, caplog, monkeypatch):
    import data
    monkeypatch.setattr(data.LabelledImages, '__getitem__', _overexposed(data.LabelledImages.__getitem__, 'image'))
    monkeypatch.setattr(data.VideoSnippets, '__getitem__', _overexposed(data.VideoSnippets.__getitem__, 'frames'))
    out_dir = tmp_path / 'results'
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        warnings.filterwarnings('ignore', message='The image decoding and encoding capabilities of TorchVision')
        evaluate.main([str(p) for p in trained_runs] + ['--out-dir', str(out_dir), '--images'])
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []  # matplotlib logs
    for name in ('qualitative_seg.png', 'qualitative_depth.png', 'grad_cam.png'):
        image = matplotlib.image.imread(out_dir / name)
        assert image.ndim == 3 and image.shape[0] > 150 and image.std() > 0.01, name


def test_segmentation_grid_has_a_legend_of_the_classes_shown(trained_runs, toy_root, tmp_path):
    runs = [evaluate.read_run(p) for p in trained_runs[:2]]
    fig = evaluate.plot_qualitative(runs, toy_root, tmp_path / 'seg.png')
    items = evaluate._common_held_out(runs, toy_root, 4)
    images, labels = torch.stack([i['image'] for i in items]), torch.stack([i['label'] for i in items])
    with torch.no_grad():
        predictions = [evaluate.load_network(torch.load(run['checkpoint'], weights_only=False))(images)
                       for run in runs]
    shown = set(labels.unique().tolist()) | {i for p in predictions for i in p.argmax(1).unique().tolist()}
    legend, = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [evaluate.CITYSCAPES_CLASSES[i] for i in sorted(shown)
                                                          if i < 19]
    colours = [tuple(round(255 * c) for c in patch.get_facecolor()[:3]) for patch in legend.get_patches()]
    assert colours == [evaluate.CITYSCAPES_PALETTE[i] for i in sorted(shown) if i < 19]


def test_depth_grid_has_a_colour_bar_in_inverse_metres(trained_runs, toy_root, tmp_path):
    fig = evaluate.plot_qualitative([evaluate.read_run(trained_runs[2])], toy_root, tmp_path / 'depth.png')
    colour_bar = fig.axes[-1]
    assert colour_bar.get_ylabel() == 'inverse depth, 1/m'
    truth, prediction = (fig.axes[i].images[0] for i in (1, 2))  # first row: image, ground truth, prediction
    assert truth.get_clim() == prediction.get_clim() and truth.get_clim()[0] == 0  # one shared scale


def test_grad_cam_highlights_where_the_prediction_comes_from():
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import models
    net = models.build_seg_net(num_classes=3).eval()
    images = torch.rand(2, 3, 64, 64)
    cam = evaluate.grad_cam(net, images, net.encoder.layer1)
    assert cam.shape == (2, 64, 64) and cam.min() >= 0 and torch.allclose(cam.amax((1, 2)), torch.ones(2))


def test_evaluate_one_checkpoint(trained_runs, capsys):
    metrics = evaluate.main(['--checkpoint', str(trained_runs[0] / 'checkpoint.pt')])
    checkpoint = training.load_checkpoint(trained_runs[0] / 'checkpoint.pt')
    held_out = evaluate.held_out_set(checkpoint, checkpoint['args']['data_root'])
    assert len(held_out) == 12 - 4  # every labelled image outside the run's 4-image pick
    batches = torch.utils.data.DataLoader(held_out, batch_size=3)
    expected = evaluate.evaluate_segmentation(evaluate.load_network(checkpoint), batches, torch.device('cpu'))
    assert metrics['miou7'] == pytest.approx(expected['miou7']) and '"pixel_acc"' in capsys.readouterr().out
    depth = evaluate.main(['--checkpoint', str(trained_runs[2] / 'checkpoint.pt')])
    assert depth['abs_rel'] > 0 and depth['median_scale'] == 1.0  # fine-tuned depth is scored in metres
    with pytest.raises(SystemExit):
        evaluate.main(['--checkpoint', str(trained_runs[0] / 'missing.pt')])


def test_an_xnet_checkpoint_is_rebuilt_as_the_variant_it_holds():
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import models
    xnet = dict(mix='image', pfp=False, pyramid=True)
    net = models.build_seg_net(num_classes=19, decoder='xnet', xnet=xnet).eval()
    checkpoint = dict(model=net.state_dict(), task='seg', arch='resnet18', decoder='xnet', xnet=xnet,
                      normalization='unit', num_classes=19)
    rebuilt = evaluate.load_network(checkpoint)
    x = torch.rand(1, 3, 64, 96)
    assert torch.equal(rebuilt(x), net(x))
    with pytest.raises(ValueError, match='does not fit'):  # the same weights read as another variant
        evaluate.load_network(dict(checkpoint, xnet=dict(xnet, pfp=True)))


@pytest.fixture
def own_images(tmp_path):
    """A folder of two seeded images of different sizes (one PNG, one JPEG) and a stray text file."""
    folder = tmp_path / 'photos'
    folder.mkdir()
    generator = torch.Generator().manual_seed(0)
    torchvision.io.write_png(torch.randint(0, 256, (3, 48, 80), dtype=torch.uint8, generator=generator),
                             str(folder / 'b_wide.png'))
    torchvision.io.write_jpeg(torch.randint(0, 256, (3, 100, 36), dtype=torch.uint8, generator=generator),
                              str(folder / 'a_tall.jpg'))
    (folder / 'notes.txt').write_text('not an image')
    return folder


def _checkpoint(tmp_path, task, normalization='unit', **args):
    """A checkpoint of a seeded random 64x64 network, in the format pretrain.py and finetune.py write."""
    import models
    torch.manual_seed(0)
    net = (models.build_seg_net(normalization=normalization) if task == 'seg'
           else models.build_depth_net(normalization=normalization))
    path = tmp_path / f'{task}.pt'
    torch.save(dict(model=net.state_dict(), task=task, arch='resnet18', decoder='unet', normalization=normalization,
                    num_classes=19 if task == 'seg' else None, height=64, width=64, args=args), path)
    return path, net.eval()


def _network_output(net, image):
    """Computed here, apart from evaluate.py: the image at 64x64 through the network, back at its own size."""
    small = torch.nn.functional.interpolate(image[None].float() / 255, (64, 64), mode='bilinear',
                                            align_corners=False, antialias=True)
    with torch.no_grad():
        out = net(small)
    out = out if isinstance(out, torch.Tensor) else out[0]
    return torch.nn.functional.interpolate(out, image.shape[-2:], mode='bilinear', align_corners=False)[0]


def test_predict_depth_on_a_folder_of_own_images(own_images, tmp_path, capsys):
    import data
    checkpoint, net = _checkpoint(tmp_path, 'depth', min_depth=0.5, max_depth=50.0)
    out_dir = tmp_path / 'predictions'
    evaluate.main(['--checkpoint', str(checkpoint), '--predict', str(own_images), '--out-dir', str(out_dir)])
    assert sorted(p.name for p in out_dir.iterdir()) == ['a_tall_depth.npy', 'a_tall_depth.png',
                                                         'b_wide_depth.npy', 'b_wide_depth.png']
    assert 'for 2 images' in capsys.readouterr().out
    for stem in ('a_tall', 'b_wide'):
        image = data.read_image(next(own_images.glob(stem + '.*')))
        depth = np.load(out_dir / f'{stem}_depth.npy')
        assert depth.dtype == np.float32 and depth.shape == tuple(image.shape[1:])
        disp = _network_output(net, image)[0]
        expected = 1 / (1 / 50.0 + (1 / 0.5 - 1 / 50.0) * disp)  # the checkpoint's own depth range
        torch.testing.assert_close(torch.from_numpy(depth), expected, rtol=1e-5, atol=1e-5)
        picture = data.read_image(out_dir / f'{stem}_depth.png')
        assert picture.shape == image.shape
        nearest = np.unravel_index(depth.argmin(), depth.shape)  # largest disparity: magma's brightest colour
        assert picture[:, nearest[0], nearest[1]].tolist() == [252, 253, 191]


def test_predict_segmentation_on_one_image(own_images, tmp_path):
    import data
    checkpoint, net = _checkpoint(tmp_path, 'seg', normalization='imagenet')
    out_dir = tmp_path / 'mine'
    evaluate.main(['--checkpoint', str(checkpoint), '--predict', str(own_images / 'b_wide.png'), '--out-dir', str(out_dir)])
    assert sorted(p.name for p in out_dir.iterdir()) == ['b_wide_seg.npy', 'b_wide_seg.png']
    ids = np.load(out_dir / 'b_wide_seg.npy')
    expected = _network_output(net, data.read_image(own_images / 'b_wide.png')).argmax(0)
    assert ids.dtype == np.uint8 and ids.shape == (48, 80) and ids.max() < 19
    assert torch.equal(torch.from_numpy(ids).long(), expected)
    picture = data.read_image(out_dir / 'b_wide_seg.png')
    palette = torch.tensor(evaluate.CITYSCAPES_PALETTE, dtype=torch.uint8)
    assert torch.equal(picture.permute(1, 2, 0), palette[expected])


def test_predict_stops_with_one_sentence_on_bad_input(own_images, tmp_path, capsys):
    depth, _ = _checkpoint(tmp_path, 'depth')
    flow = tmp_path / 'flow.pt'
    torch.save(dict(model={}, task='flow', arch='resnet18', normalization='unit'), flow)
    (tmp_path / 'empty').mkdir()
    corrupt = tmp_path / 'corrupt.png'
    corrupt.write_bytes(b'not a png')
    cases = [(['--checkpoint', str(depth), '--predict', str(tmp_path / 'missing.png')], 'missing.png does not exist'),
             (['--checkpoint', str(depth), '--predict', str(tmp_path / 'empty')], 'holds no .png or .jpg images'),
             (['--checkpoint', str(depth), '--predict', str(own_images / 'notes.txt')], 'notes.txt is not an image'),
             (['--checkpoint', str(depth), '--predict', str(corrupt)], 'corrupt.png is not a PNG or JPEG image'),
             (['--checkpoint', str(flow), '--predict', str(own_images)], 'holds a flow network'),
             (['--checkpoint', str(tmp_path / 'none.pt'), '--predict', str(own_images)], 'none.pt does not exist'),
             (['--predict', str(own_images)], '--predict needs --checkpoint')]
    for argv, message in cases:
        with pytest.raises(SystemExit):
            evaluate.main(argv + ['--out-dir', str(tmp_path / 'out')])
        error = capsys.readouterr().err
        assert message in error and 'Traceback' not in error, argv


def _depth_checkpoint(path, **args):
    """A depth checkpoint at 64x192, with random weights, as pretrain.py writes one."""
    import data
    import models
    net = models.build_depth_net()
    models.start_at_depth(net, 10.0, 0.1, 100.0)
    torch.save(dict(model=net.state_dict(), task='depth', arch='resnet18', decoder='unet', xnet=None,
                    normalization='unit', height=64, width=192, args=dict(args, min_depth=0.1, max_depth=100.0)), path)
    return data, models, net.eval()


@pytest.mark.parametrize('protocol', ['eigen', 'benchmark'])
def test_a_test_split_of_two_image_sizes_is_scored_image_by_image_at_native_size(two_size_root, tmp_path, protocol):
    data, models, net = _depth_checkpoint(tmp_path / 'depth.pt', supervision='stereo', eval_protocol=protocol)
    frames = data.DepthTestFrames(two_size_root, 'test', 64, 192, protocol)
    sizes = {tuple(frames[i]['depth'].shape[-2:]) for i in range(len(frames))}
    assert sizes == {(64, 192), (48, 160)}  # each ground truth at its own size; the inputs at the network's
    metrics = evaluate.evaluate_depth(net, frames, torch.device('cpu'), median_scaling=False)
    # the same as scoring each frame alone, at its own size, then averaging over frames
    per_frame = []
    for i in range(len(frames)):
        item = frames[i]
        with torch.no_grad():
            disp = torch.nn.functional.interpolate(net(item['frames'])[0], item['depth'].shape[-2:], mode='bilinear')
        pred = models.disp_to_depth(disp, 0.1, 100.0)[0, 0]
        per_frame.append(evaluate.depth_metrics(pred, item['depth'][0], crop=evaluate.PROTOCOL_CROP[protocol]))
    assert metrics['images'] == len(frames) == len(per_frame)
    for key in ('abs_rel', 'rmse', 'a1'):
        assert metrics[key] == pytest.approx(sum(m[key] for m in per_frame) / len(per_frame), rel=1e-9)
    printed = evaluate.main(['--checkpoint', str(tmp_path / 'depth.pt'), '--data-root', str(two_size_root)])
    assert printed['rmse'] == pytest.approx(metrics['rmse'], rel=1e-9)
    if protocol == 'eigen':  # frames read by a worker process score the same
        by_worker = evaluate.evaluate_depth(net, frames, torch.device('cpu'), median_scaling=False, workers=1)
        assert by_worker['rmse'] == pytest.approx(metrics['rmse'], rel=1e-9)


def test_checkpoint_evaluation_says_and_overrides_protocol_and_scaling(two_size_root, tmp_path, capsys):
    _depth_checkpoint(tmp_path / 'mono.pt', supervision='mono')  # recorded before the flags existed: mono scales
    root = ['--data-root', str(two_size_root)]
    default = evaluate.main(['--checkpoint', str(tmp_path / 'mono.pt')] + root)
    out = capsys.readouterr().out
    assert 'eigen (velodyne ground truth, Garg crop), median-scaled' in out and '| abs_rel |' in out
    assert default['scale_std'] > 0
    metric = evaluate.main(['--checkpoint', str(tmp_path / 'mono.pt'), '--median-scaling', 'off',
                            '--eval-protocol', 'benchmark'] + root)
    assert 'benchmark (annotated ground truth, no crop), metric' in capsys.readouterr().out
    assert metric['median_scale'] == 1.0 and metric['scale_std'] == 0.0 and metric['abs_rel'] != default['abs_rel']


def test_qualitative_depth_grid_draws_frames_of_two_sizes(two_size_root, tmp_path):
    _depth_checkpoint(tmp_path / 'depth.pt', supervision='stereo', data_root=str(two_size_root))
    run = evaluate.read_run(tmp_path / 'depth.pt')
    evaluate.plot_qualitative([run], two_size_root, tmp_path / 'grid.png', count=20)
    assert (tmp_path / 'grid.png').stat().st_size > 0


def test_a_file_that_is_not_a_checkpoint_stops_with_a_sentence(tmp_path, capsys):
    torch.save([1, 2, 3], tmp_path / 'list.pt')
    with pytest.raises(SystemExit) as stop:
        evaluate.main(['--checkpoint', str(tmp_path / 'list.pt')])
    assert stop.value.code == 2
    assert 'list.pt is not a checkpoint written by pretrain.py or finetune.py' in capsys.readouterr().err
