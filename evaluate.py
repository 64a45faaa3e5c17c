"""Measuring: segmentation and depth metrics, and the CLI that turns run folders into a table and a figure.

- Segmentation: a confusion matrix over the 19 Cityscapes train ids, and from it per-class IoU, mIoU, pixel
  accuracy and mean class accuracy. Like the depth pre-training paper (App. B.2) we also report mIoU over 7
  representative classes, because rare classes score zero IoU with few training images and drown the mean.
- Depth: the standard KITTI error and accuracy measures (Eigen et al.), plus SILog and SI-RMSE from the
  minimal-transfer-learning paper (Sec. 2.3), optionally after per-image median scaling (monocular depth
  is only known up to scale), and the constant-depth baseline a depth network has to beat.
- Optical flow: end-point error and KITTI's Fl outlier rate, next to the zero-flow baseline.
- Runs: `read_run` reads `runs/<name>/` (args.json + metrics.jsonl) or a checkpoint; `results_table` and
  `plot_curves` turn runs into a Markdown table and a PNG like the paper's Fig. 2.

    python evaluate.py runs/* [--out-dir results]
"""
import argparse
import json
import os
from pathlib import Path

import torch

CITYSCAPES_CLASSES = ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light', 'traffic sign',
                      'vegetation', 'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train',
                      'motorcycle', 'bicycle')
REPRESENTATIVE_CLASSES = ('road', 'sidewalk', 'building', 'vegetation', 'terrain', 'sky', 'car')
REPRESENTATIVE_IDS = tuple(CITYSCAPES_CLASSES.index(name) for name in REPRESENTATIVE_CLASSES)
# Cityscapes' colours for the 19 train ids, and black for ignored pixels.
CITYSCAPES_PALETTE = ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
                      (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
                      (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
                      (0, 80, 100), (0, 0, 230), (119, 11, 32))
SILOG_LAMBDA = 0.5  # the paper's "typical" balance between scale invariance and scale awareness (Sec. 2.3)


# ---------------------------------------------------------------- segmentation

def confusion_matrix(pred, label, num_classes, ignore_index=255):
    """[K,K] int64 counts on the CPU, rows = ground truth, columns = prediction; `ignore_index` pixels skipped."""
    keep = label != ignore_index
    pred, label = pred[keep].long(), label[keep].long()
    if label.numel() and (min(label.min(), pred.min()) < 0 or max(label.max(), pred.max()) >= num_classes):
        raise ValueError(f'labels and predictions must lie in [0, {num_classes}) or equal {ignore_index}')
    counts = torch.bincount(label * num_classes + pred, minlength=num_classes ** 2)
    return counts.reshape(num_classes, num_classes).cpu()


def colourise(labels):
    """Train-id maps [..., H, W] -> RGB [..., H, W, 3] uint8 in the Cityscapes colours (ignore: black)."""
    palette = torch.zeros(256, 3, dtype=torch.uint8)
    palette[:len(CITYSCAPES_PALETTE)] = torch.tensor(CITYSCAPES_PALETTE, dtype=torch.uint8)
    return palette[labels.long().clamp(0, 255)]


def _nanmean(x):
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else float('nan')


def segmentation_metrics(confusion):
    """IoU per class (NaN where a class is in neither ground truth nor prediction), mIoU, mIoU over the 7
    representative classes (NaN unless K = 19), pixel accuracy and mean class accuracy (recall over classes
    present in gt). Plain floats, so the dict goes straight into metrics.jsonl."""
    confusion = torch.as_tensor(confusion).double()
    true_pos, gt_count, pred_count = confusion.diag(), confusion.sum(1), confusion.sum(0)
    union = gt_count + pred_count - true_pos
    iou = true_pos / union  # 0 / 0 = NaN for a class in neither ground truth nor prediction
    representative = iou[list(REPRESENTATIVE_IDS)] if len(iou) == len(CITYSCAPES_CLASSES) else iou[:0]
    present = gt_count > 0
    return {'per_class_iou': [float(v) for v in iou],
            'miou': _nanmean(iou),
            'miou7': _nanmean(representative),
            'pixel_acc': float(true_pos.sum() / confusion.sum()),
            'mean_acc': _nanmean(true_pos[present] / gt_count[present])}


# ---------------------------------------------------------------- depth

def _image_depth_metrics(pred, gt, min_depth, max_depth, median_scaling):
    """Metrics of one image (flat tensors), or None when it has no valid ground truth."""
    valid = (gt > min_depth) & (gt < max_depth)  # gt == 0 means the sensor had no measurement
    if not valid.any():
        return None
    pred, gt = pred[valid].double(), gt[valid].double()
    scale = float(gt.median() / pred.median()) if median_scaling else 1.0
    pred = (pred * scale).clamp(min_depth, max_depth)
    ratio = torch.maximum(pred / gt, gt / pred)
    d = pred.log() - gt.log()
    return {'abs_rel': ((pred - gt).abs() / gt).mean(),
            'sq_rel': ((pred - gt) ** 2 / gt).mean(),
            'rmse': ((pred - gt) ** 2).mean().sqrt(),
            'rmse_log': (d ** 2).mean().sqrt(),
            'log10': (pred.log10() - gt.log10()).abs().mean(),
            'a1': (ratio < 1.25).double().mean(),
            'a2': (ratio < 1.25 ** 2).double().mean(),
            'a3': (ratio < 1.25 ** 3).double().mean(),
            'silog': (d ** 2).mean() - SILOG_LAMBDA * d.mean() ** 2,  # SILog, Sec. 2.3 (unnumbered eq.), lambda = 0.5
            'si_rmse': ((d ** 2).mean() - d.mean() ** 2).clamp(min=0).sqrt(),  # sqrt of Sec. 2.3's SILog at lambda = 1
            'median_scale': scale}


def depth_metrics(pred, gt, min_depth=1e-3, max_depth=80.0, median_scaling=False):
    """Depth errors (abs_rel, sq_rel, rmse, rmse_log, log10, silog, si_rmse) and accuracies (a1-a3), fractions.

    pred and gt are metric depth of the same shape: [B,1,H,W] or [B,H,W] (a batch) or [H,W] (one image).
    Each metric is computed per image over its valid pixels (min_depth < gt < max_depth) and then averaged
    over images, as KITTI evaluation does. With `median_scaling` each image's prediction is first multiplied
    by median(gt) / median(pred); the returned `median_scale` is the mean factor (1.0 without scaling).
    """
    if pred.shape != gt.shape or gt.ndim not in (2, 3, 4):
        raise ValueError(f'expected pred and gt of one shape [B,1,H,W], [B,H,W] or [H,W], got '
                         f'{tuple(pred.shape)} and {tuple(gt.shape)}')
    batch = 1 if gt.ndim == 2 else gt.shape[0]
    per_image = [_image_depth_metrics(p, g, min_depth, max_depth, median_scaling)
                 for p, g in zip(pred.reshape(batch, -1), gt.reshape(batch, -1))]
    per_image = [m for m in per_image if m is not None]
    if not per_image:
        raise ValueError(f'no ground-truth depth between min_depth={min_depth} and max_depth={max_depth}')
    return {key: float(sum(m[key] for m in per_image) / len(per_image)) for key in per_image[0]}


def constant_depth_baseline(gt, min_depth=1e-3, max_depth=80.0):
    """Metrics of the best constant prediction under median scaling: each image predicted as its gt median."""
    return depth_metrics(torch.ones_like(gt), gt, min_depth, max_depth, median_scaling=True)


# ---------------------------------------------------------------- optical flow

def flow_metrics(pred, gt, valid):
    """End-point error (pixels) and KITTI's outlier rate Fl (EPE > 3 px and > 5% of the true flow's
    length), over each image's valid pixels, averaged over images. pred, gt [B,2,H,W]; valid [B,H,W]."""
    epe = (pred - gt).norm(dim=1)
    outlier = (epe > 3) & (epe > 0.05 * gt.norm(dim=1))
    per_image = [(e[v].mean(), o[v].double().mean()) for e, o, v in zip(epe, outlier, valid) if v.any()]
    if not per_image:
        raise ValueError('no valid ground-truth flow in these images')
    return {'epe': float(sum(p[0] for p in per_image) / len(per_image)),
            'fl': float(sum(p[1] for p in per_image) / len(per_image))}


# ---------------------------------------------------------------- runs

def _read_jsonl(path):
    """One dict per line; a torn last line (a run still writing) is skipped, a torn earlier line is an error."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise ValueError(f'{path} line {number} is not valid JSON') from None
    return records


def read_run(path):
    """{'name', 'args', 'metrics'} of a run folder (args.json + metrics.jsonl) or of a checkpoint file (.pt)."""
    path = Path(path)
    if path.is_dir() and (path / 'args.json').is_file():
        metrics_file = path / 'metrics.jsonl'
        metrics = _read_jsonl(metrics_file) if metrics_file.is_file() else []
        return {'name': path.name, 'args': json.loads((path / 'args.json').read_text()), 'metrics': metrics}
    if path.is_file() and path.suffix == '.pt':
        checkpoint = torch.load(path, map_location='cpu', weights_only=False)
        args = checkpoint.get('args') or {}
        args = dict(args if isinstance(args, dict) else vars(args))
        for key in ('task', 'arch', 'height', 'width'):
            if key in checkpoint:
                args.setdefault(key, checkpoint[key])
        metrics = [{'iter': checkpoint.get('iter'), 'split': 'eval', **(checkpoint.get('metrics') or {})}]
        return {'name': args.get('name') or path.stem, 'args': args, 'metrics': metrics}
    if not path.exists():
        raise FileNotFoundError(f'{path} does not exist; expected a run folder (runs/<name>/) or a checkpoint (.pt)')
    raise ValueError(f'{path} is not a run: expected a folder holding args.json or a checkpoint file ending in .pt')


def _last(run, split):
    """The last metrics line of a split ('train', 'eval', 'baseline'), or {} if there is none."""
    return next((m for m in reversed(run['metrics']) if m.get('split') == split), {})


def _task(run):
    """The run's task from its arguments, else guessed from what its evaluations measured."""
    return run['args'].get('task') or ('depth' if 'abs_rel' in _last(run, 'eval') else 'seg')


def _percent(value):
    return '–' if value is None else f'{100 * value:.2f}'


def _decimal(value):
    return '–' if value is None else f'{value:.3f}'


# (header, split of the metrics line, key, format) of the metric columns of each task's table
METRIC_COLUMNS = {
    'seg': [('mIoU (7 cls) %', 'eval', 'miou7', _percent), ('mIoU (19) %', 'eval', 'miou', _percent),
            ('pixel acc %', 'eval', 'pixel_acc', _percent)],
    'depth': [(key, 'eval', key, _decimal) for key in ('abs_rel', 'sq_rel', 'rmse', 'rmse_log', 'a1')]
             + [('baseline abs_rel', 'baseline', 'abs_rel', _decimal)],
    'flow': [('EPE px', 'eval', 'epe', _decimal), ('Fl %', 'eval', 'fl', _percent),
             ('zero-flow EPE px', 'baseline', 'epe', _decimal)],
}
OTHER_COLUMNS = [('train loss', 'train', 'loss', _decimal)]  # tasks without a table of their own


def _run_cells(run):
    """The columns every table shares: what was trained, how, and for how long."""
    args = run['args']
    frozen = '–' if args.get('freeze_encoder') is None else 'yes' if args['freeze_encoder'] else 'no'
    size = f"{args['height']}x{args['width']}" if 'height' in args and 'width' in args else '–'
    iters = _last(run, 'eval').get('iter', args.get('iters'))
    return [run['name'], _task(run), str(args.get('init', '–')), frozen, str(args.get('train_size', '–')),
            str(args.get('arch', '–')), size, '–' if iters is None else str(iters)]


def results_table(runs):
    """Markdown: one table per task (segmentation, depth, ...), one row per run, its final metrics."""
    shared = ['run', 'task', 'init', 'frozen encoder', 'train size', 'arch', 'resolution HxW', 'iterations']
    tables = []
    for task in dict.fromkeys(_task(run) for run in runs):
        columns = METRIC_COLUMNS.get(task, OTHER_COLUMNS)
        header = shared + [column[0] for column in columns]
        lines = [f'### {task}', '', '| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
        for run in (run for run in runs if _task(run) == task):
            metrics = [fmt(_last(run, split).get(key)) for _, split, key, fmt in columns]
            lines.append('| ' + ' | '.join(_run_cells(run) + metrics) + ' |')
        tables.append('\n'.join(lines))
    return '\n\n'.join(tables) + '\n'


def _curve(run, key):
    """(iterations, values) of `key` over the run's eval lines."""
    points = [(m['iter'], m[key]) for m in run['metrics'] if m.get('split') == 'eval' and m.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_curves(runs, path):
    """PNG like the paper's Fig. 2: mIoU (7 classes) vs iteration per segmentation run, abs_rel per depth run
    and end-point error per flow run, with their baselines (constant depth, zero flow) dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global figure state, nothing opens a window

    panels = [panel for panel in [('seg', 'miou7', 'Segmentation', 'mIoU (7 classes)'),
                                  ('depth', 'abs_rel', 'Depth', 'abs_rel (lower is better)'),
                                  ('flow', 'epe', 'Optical flow', 'end-point error, px (lower is better)')]
              if any(_task(run) == panel[0] for run in runs)] or [(None, None, 'No runs with evaluations', '')]
    fig = Figure(figsize=(6 * len(panels), 4.5), layout='constrained')
    FigureCanvasAgg(fig)
    for ax, (task, key, title, ylabel) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for run in (run for run in runs if _task(run) == task):
            iters, values = _curve(run, key)
            if iters:
                line, = ax.plot(iters, values, marker='.', label=run['name'])
                baseline = _last(run, 'baseline').get(key)
                if baseline is not None:
                    ax.axhline(baseline, ls='--', color=line.get_color(), label=f"{run['name']}: baseline")
        ax.set(title=title, xlabel='iteration', ylabel=ylabel)
        if ax.lines:
            ax.legend()
        else:
            ax.text(0.5, 0.5, 'no evaluations logged', ha='center', va='center', transform=ax.transAxes)
        ax.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    fig.savefig(tmp, format='png', dpi=100)
    os.replace(tmp, path)


def _write_text_atomic(path, text):
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description='Tabulate and plot run folders or checkpoints.')
    parser.add_argument('runs', nargs='+', help='run folders (runs/<name>/) or checkpoint files (.pt)')
    parser.add_argument('--out-dir', default='results', help='where results.md and curves.png go')
    args = parser.parse_args(argv)
    try:
        runs = [read_run(path) for path in args.runs]
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    table = results_table(runs)
    print(table)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_text_atomic(out_dir / 'results.md', table)
    plot_curves(runs, out_dir / 'curves.png')
    print(f'wrote {out_dir / "results.md"} and {out_dir / "curves.png"}')


if __name__ == '__main__':
    main()
