"""Measuring, and the tables and figures of runs. Top to bottom:

- Segmentation: a confusion matrix over a class set's train ids (data.CLASS_SETS: Cityscapes' 19, NYU's 40), and from it per-class IoU, mIoU, pixel
  accuracy and mean class accuracy. Like the depth pre-training paper (App. B.2) we also report mIoU over the 7
  representative classes (Cityscapes' train ids only), because rare classes score zero IoU with few training
  images and drown the mean.
- Depth: the standard error and accuracy measures (Eigen et al.), plus SILog and SI-RMSE from the
  minimal-transfer-learning paper (Sec. 2.3), optionally after per-image median scaling (monocular depth
  is only known up to scale), and the constant-depth baseline a depth network has to beat; each dataset's
  protocol (PROTOCOLS: KITTI's eigen and benchmark as Monodepth2's evaluate_depth.py scores them, cityscapes,
  nyu, and pairs for a folder of your own).
- Networks on held-out data: a segmentation network's confusion over batches, optionally a multi-scale (and
  mirrored) test with class probabilities averaged, as xNet reports (App. B); a depth network's measures on
  a test set of frames, each at its own size.
- Optical flow: end-point error and KITTI's Fl outlier rate, next to the zero-flow baseline.
- Evaluations during training: what pretrain.py's and finetune.py's loops call every --eval-every
  iterations (DepthEvaluation, FlowEvaluation, SegmentationEvaluation: a PNG sample, then the metrics, and
  the trivial baseline they are printed beside).
- Runs: `read_run` reads `runs/<name>/` (args.json + metrics.jsonl) or a checkpoint; `results_table` (a row
  per run), `grouped_table` (a row per configuration, mean ± std over seeds), `headlines` (the one-line
  answer: depth pre-training against random weights) and the `plot_*` figures like the paper's (Fig. 2-4).
  Runs are grouped by their args.json (`configuration`), never by their names, and labelled by the default
  name they share without its seed, else by the flags in which they differ (`label_series`).
- Checkpoints on held-out images: the metrics of one checkpoint, qualitative grids and Grad-CAM (Fig. 6).
- Your own images: `predict` runs a segmentation or depth checkpoint on any image at its own size.
- The command line:

    python evaluate.py runs/* [--out-dir results] [--images [--grad-cam-layer NAME]]
    python evaluate.py --checkpoint CKPT [--eval-protocol PROTOCOL] [--median-scaling on|off]
    python evaluate.py --checkpoint CKPT --predict IMAGE_OR_FOLDER [--out-dir predictions]
"""
import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torchvision.io import write_png
from torchvision.utils import flow_to_image

import data
import models
import training


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


def colourise(labels, colours=data.CITYSCAPES_PALETTE):
    """Train-id maps [..., H, W] -> RGB [..., H, W, 3] uint8 in a class set's colours (ignore: black)."""
    palette = torch.zeros(256, 3, dtype=torch.uint8)
    palette[:len(colours)] = torch.tensor(colours, dtype=torch.uint8)
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
    representative = iou[list(data.REPRESENTATIVE_IDS)] if len(iou) == len(data.CITYSCAPES_CLASSES) else iou[:0]
    present = gt_count > 0
    return {'per_class_iou': [float(v) for v in iou],
            'miou': _nanmean(iou),
            'miou7': _nanmean(representative),
            'pixel_acc': float(true_pos.sum() / confusion.sum()),
            'mean_acc': _nanmean(true_pos[present] / gt_count[present])}


# ---------------------------------------------------------------- depth

# The depth protocols, one per way the field scores a dataset. KITTI's two as Monodepth2's
# evaluate_depth.py scores them: eigen scores velodyne depth with 1e-3 < gt < 80 m inside Garg et al.'s crop;
# benchmark scores every annotated pixel (gt > 0, no crop). cityscapes as ManyDepth (Watson et al., 2021):
# depth from disparity in the top 3/4 of the frame (data.CITYSCAPES_KEEP_ROWS: the ego vehicle out), of
# that rows 256-767 and columns 192-1855 of 2048 x 768, 1e-3 < gt < 80 m. nyu as Eigen et al. and BTS:
# rows 45-470 and columns 41-600 of 480 x 640, 1e-3 < gt < 10 m. pairs (a folder of your own): every
# measured pixel under the cap. Predictions are clamped to [1e-3, cap] m.
GARG_CROP = (0.40810811, 0.99189189, 0.03594771, 0.96405229)  # rows top, bottom; columns left, right (fractions)
CROPS = {'garg': (GARG_CROP, int),  # bounds truncated to whole pixels, as Monodepth2 does
         'cityscapes': ((256 / 768, 1.0, 192 / 2048, 1856 / 2048), round),
         'nyu': ((45 / 480, 471 / 480, 41 / 640, 601 / 640), round)}
PROTOCOLS = {'eigen': dict(crop='garg', cap_gt=True), 'benchmark': dict(crop=None, cap_gt=False),
             'cityscapes': dict(crop='cityscapes', cap_gt=True), 'nyu': dict(crop='nyu', cap_gt=True),
             'pairs': dict(crop=None, cap_gt=True)}


def crop_mask(shape, crop):
    """Bool [H, W]: the pixels scored, inside a crop of CROPS given as fractions of the ground truth's
    size (its bounds rounded as the protocol's reference code does); None: every pixel."""
    if crop is None:
        return torch.ones(shape, dtype=torch.bool)
    if crop not in CROPS:
        raise ValueError(f'unknown crop {crop}: use one of {", ".join(CROPS)} or None.')
    (h, w), ((top, bottom, left, right), to_pixel) = shape, CROPS[crop]
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[to_pixel(top * h):to_pixel(bottom * h), to_pixel(left * w):to_pixel(right * w)] = True
    return mask


def _median(x):
    """The median as NumPy takes it (the mean of the two middle values of an even count)."""
    return torch.quantile(x, 0.5)


def _image_depth_metrics(pred, gt, min_depth, max_depth, median_scaling, crop, cap_gt):
    """Metrics of one image ([H, W] maps), or None when it has no valid ground truth."""
    # gt == 0 means the sensor had no measurement
    valid = (gt > min_depth) & (gt < max_depth) if cap_gt else gt > 0
    valid &= crop_mask(gt.shape, crop).to(gt.device)
    if not valid.any():
        return None
    pred, gt = pred[valid].double(), gt[valid].double()
    scale = float(_median(gt) / _median(pred)) if median_scaling else 1.0
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


def average_depth_metrics(pairs, min_depth=1e-3, max_depth=80.0, median_scaling=False, crop=None, cap_gt=True):
    """Depth errors and accuracies averaged over images, from (pred, gt) pairs of [H, W] metric depth
    maps taken one at a time: running sums, so memory does not grow with the number of images (only the
    list of scale ratios does, a float each). Each image is scored over its valid pixels (min_depth < gt
    < max_depth, or with cap_gt=False every gt > 0; inside `crop`), predictions clamped to [min_depth,
    max_depth], as KITTI evaluation does; `images` counts those scored, `skipped` those without a valid pixel. With `median_scaling` each prediction is first multiplied by median(gt) /
    median(pred); `median_scale` and `scale_std` are the median of those ratios and the standard deviation
    of ratio / median, as Monodepth2 prints them (1 and 0 without scaling)."""
    sums, ratios, skipped = {}, [], 0
    for pred, gt in pairs:
        metrics = _image_depth_metrics(pred, gt, min_depth, max_depth, median_scaling, crop, cap_gt)
        if metrics is None:
            skipped += 1
            continue
        ratios.append(metrics.pop('median_scale'))
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + float(value)
    if not ratios:
        window = f'between min_depth={min_depth} and max_depth={max_depth}' if cap_gt else 'above 0'
        raise ValueError(f'no ground-truth depth {window}' + (f' inside the {crop} crop' if crop else ''))
    ratios = torch.tensor(ratios, dtype=torch.float64)
    median = _median(ratios)
    return dict({key: total / len(ratios) for key, total in sums.items()}, median_scale=float(median),
                scale_std=float((ratios / median).std(correction=0)), images=len(ratios), skipped=skipped)


def depth_metrics(pred, gt, min_depth=1e-3, max_depth=80.0, median_scaling=False, crop=None, cap_gt=True):
    """Depth errors (abs_rel, sq_rel, rmse, rmse_log, log10, silog, si_rmse) and accuracies (a1-a3), fractions.

    pred and gt are metric depth of the same shape: [B,1,H,W] or [B,H,W] (a batch) or [H,W] (one image).
    Each metric is computed per image over its valid pixels and averaged over images (average_depth_metrics,
    which says what `median_scaling`, `crop` and `cap_gt` do).
    """
    if pred.shape != gt.shape or gt.ndim not in (2, 3, 4):
        raise ValueError(f'expected pred and gt of one shape [B,1,H,W], [B,H,W] or [H,W], got '
                         f'{tuple(pred.shape)} and {tuple(gt.shape)}')
    images = lambda x: x.reshape(-1, *x.shape[-2:])
    return average_depth_metrics(zip(images(pred), images(gt)), min_depth, max_depth, median_scaling, crop, cap_gt)


def constant_depth_baseline(gts, min_depth=1e-3, max_depth=80.0, crop=None, cap_gt=True):
    """Metrics of the best constant prediction under median scaling, each image's [H, W] ground truth in
    `gts` predicted as its own median."""
    return average_depth_metrics(((torch.ones_like(gt), gt) for gt in gts), min_depth, max_depth, True, crop, cap_gt)


# ---------------------------------------------------------------- networks on held-out data

@torch.no_grad()
def evaluate_segmentation(net, batches, device, num_classes=len(data.CITYSCAPES_CLASSES), scales=(1.0,), flip=False):
    """Segmentation metrics of a network over batches of {'image', 'label'}, from one confusion matrix; with
    several `scales` (or `flip`) a multi-scale test (segmentation_scores)."""
    net.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for batch in batches:
        pred = segmentation_scores(net, batch['image'].to(device), scales, flip).argmax(1)
        confusion += confusion_matrix(pred, batch['label'].to(device), num_classes).cpu()
    return segmentation_metrics(confusion)


NETWORK_MULTIPLE = 32  # the encoders halve the resolution five times


def scaled_size(size, scale):
    """(H, W) times `scale`, each rounded to the nearest multiple of NETWORK_MULTIPLE (halves up); scale 1:
    (H, W) as it is."""
    if scale == 1:
        return tuple(size)
    return tuple(int(n * scale / NETWORK_MULTIPLE + 0.5) * NETWORK_MULTIPLE for n in size)


def check_eval_scales(scales, size):
    """Every scale must be above 0 and give images the network can read (models.check_resolution); a
    ValueError says which does not."""
    for scale in scales:
        if not scale > 0:
            raise ValueError(f'every scale must be above 0 (e.g. 0.5 0.75 1.0 1.25 1.5 1.75); got {scale:g}.')
        scaled = scaled_size(size, scale)
        try:
            models.check_resolution(*scaled)
        except ValueError:
            raise ValueError(f'{scale:g} turns the {size[0]}x{size[1]} images into {scaled[0]}x{scaled[1]} '
                             f'(multiples of {NETWORK_MULTIPLE}), smaller than the network\'s smallest input, '
                             f'64x64: use larger scales or a larger --height/--width.') from None


def segmentation_scores(net, images, scales=(1.0,), flip=False):
    """Class scores [B, K, H, W] of images [B, 3, H, W], whose argmax is the prediction. One view (the
    default: scale 1, no flip): the network's logits. Several: mmsegmentation's multi-scale test, which xNet
    reports (App. B): the network runs on the images resized by each scale (scaled_size), and mirrored with
    `flip`; each view's logits are mirrored back, resized (bilinear) to (H, W) and turned into class
    probabilities (softmax), and the probabilities are averaged."""
    size = images.shape[-2:]
    views = []
    for scale in scales:
        scaled = data.resize(images, scaled_size(size, scale))
        for mirrored in (False, True) if flip else (False,):
            logits = net(scaled.flip(-1) if mirrored else scaled).float()
            logits = logits.flip(-1) if mirrored else logits
            if logits.shape[-2:] != size:
                logits = torch.nn.functional.interpolate(logits, size, mode='bilinear', align_corners=False)
            views.append(logits)
    if len(views) == 1:
        return views[0]
    return torch.stack([v.softmax(1) for v in views]).mean(0)


def one_at_a_time(frames, workers=0):
    """A test set's items one at a time (a data.DepthTestFrames' frames differ in size), in order, read
    anew at each pass, by `workers` processes (0: this one), which leave SIGTERM and Ctrl-C to a training run."""
    return torch.utils.data.DataLoader(frames, batch_size=1, num_workers=workers,
                                       worker_init_fn=training.leave_stop_signals_to_the_main_process)


@torch.no_grad()
def evaluate_depth(net, frames, device, min_depth=0.1, max_depth=100.0, eval_max_depth=80.0, median_scaling=True,
                   workers=0):
    """Depth metrics of a disparity network on a data.DepthTestFrames, by its protocol: the prediction is
    upsampled to each ground truth's native size (Monodepth2's protocol), capped at eval_max_depth,
    optionally median-scaled; `skipped` counts the split's frames without ground truth. The network's
    sigmoid disparity maps to depth in [min_depth, max_depth]; `workers` processes read the frames."""
    net.eval()

    def pairs():
        for batch in one_at_a_time(frames, workers):
            gt = batch['depth'][0, 0].to(device)
            disp = net(batch['frames'][:, 0].to(device))[0].float()
            disp = torch.nn.functional.interpolate(disp, gt.shape, mode='bilinear', align_corners=False)
            yield models.disp_to_depth(disp[0, 0], min_depth, max_depth), gt
    metrics = average_depth_metrics(pairs(), max_depth=eval_max_depth, median_scaling=median_scaling,
                                    **PROTOCOLS[frames.protocol])
    return dict(metrics, skipped=metrics['skipped'] + frames.skipped)


def depth_test_set(args, layout):
    """The test frames of --data's layout with the ground truth of --eval-protocol, said in one line; None
    where the layout has none (a folder without a val split)."""
    items, skipped = data.open_dataset(layout.depth_test, args.eval_protocol, args.eval_split or args.split)
    if items is None:
        return None
    frames = data.DepthTestFrames(items, args.height, args.width, args.eval_protocol, skipped)
    how = describe_depth_evaluation(args.eval_protocol, args.median_scaling == 'on')
    print(f'Depth is scored by the {how}: {len(frames)} test frames'
          + (f', {frames.skipped} skipped (no ground truth).' if frames.skipped else '.'))
    return frames


def constant_baseline_on(frames, eval_max_depth=80.0, workers=0):
    """What predicting one depth everywhere (median-scaled) scores on a data.DepthTestFrames."""
    gts = (batch['depth'][0, 0] for batch in one_at_a_time(frames, workers))
    return constant_depth_baseline(gts, max_depth=eval_max_depth, **PROTOCOLS[frames.protocol])


# ---------------------------------------------------------------- optical flow

def flow_metrics(batches):
    """End-point error (pixels) and KITTI's outlier rate Fl over (pred, gt, valid) batches (pred, gt [B,2,H,W];
    valid [B,H,W]). EPE is each image's mean over its valid pixels, averaged over images (as RAFT reports
    KITTI's EPE); Fl is the share of outliers (EPE > 3 px and > 5% of the true flow's length) among the valid
    pixels of all images together, as KITTI's devkit counts it. Images without a valid pixel do not count."""
    epe_sum = images = outliers = pixels = 0
    for pred, gt, valid in batches:
        epe = (pred - gt).norm(dim=1)
        outlier = (epe > 3) & (epe > 0.05 * gt.norm(dim=1))
        for e, o, v in zip(epe, outlier, valid):
            if v.any():
                epe_sum, images = epe_sum + e[v].double().mean().item(), images + 1
                outliers, pixels = outliers + int(o[v].sum()), pixels + int(v.sum())
    if not images:
        raise ValueError('no valid ground-truth flow in these images')
    return {'epe': epe_sum / images, 'fl': outliers / pixels}


# ---------------------------------------------------------------- evaluations during training

# Each is what pretrain.py's or finetune.py's loop calls every --eval-every iterations: `evaluation(net,
# sample_path)` writes a PNG sample and returns the metrics (the network is left in eval mode: the loop puts
# it back in training mode), and `baseline()` scores a trivial prediction, logged once beside them.

class DepthEvaluation:
    """Depth on --data's test frames (depth_test_set) by --eval-protocol, in metres within --eval-max-depth,
    median-scaled with --median-scaling on; the baseline is a constant depth."""

    def __init__(self, test_set, args, device):
        self.test_set, self.args, self.device = test_set, args, device
        self.sample = sample_frames(test_set, device)

    def baseline(self):
        return constant_baseline_on(self.test_set, self.args.eval_max_depth, self.args.workers)

    def __call__(self, depth_net, sample_path):
        a = self.args
        save_depth_sample(depth_net, self.sample, sample_path)
        return evaluate_depth(depth_net, self.test_set, self.device, a.min_depth, a.max_depth, a.eval_max_depth,
                              a.median_scaling == 'on', a.workers)


def depth_evaluation(args, layout, device):
    """The DepthEvaluation of --data's layout, or None where it has no test frames with ground truth (a folder
    of video). The test frames are read anew at each evaluation: memory stays flat."""
    test_set = depth_test_set(args, layout)
    return None if test_set is None else DepthEvaluation(test_set, args, device)


class FlowEvaluation:
    """Optical flow on KITTI's scene-flow pairs (data.FlowPairs): end-point error and Fl; the baseline
    predicts no motion."""

    def __init__(self, pair_set, device):
        self.pairs, self.sample, self.device = one_at_a_time(pair_set), sample_frames(pair_set, device), device

    def baseline(self):
        return flow_metrics((torch.zeros_like(b['flow']), b['flow'], b['valid']) for b in self.pairs)

    def __call__(self, flow_net, sample_path):
        save_flow_sample(flow_net, self.sample, sample_path)
        return evaluate_flow(flow_net, self.pairs, self.device)


class SegmentationEvaluation:
    """Few-shot segmentation on the held-out labelled images (a multi-scale test with --eval-scales and
    --eval-flip); the baseline labels every pixel with the training labels' most frequent class."""

    def __init__(self, eval_set, train_pairs, class_set, args, device):
        self.batches = list(torch.utils.data.DataLoader(eval_set, batch_size=args.batch_size))
        self.sample = {k: v[:4] for k, v in self.batches[0].items()}
        self.train_pairs, self.colours, self.classes = train_pairs, data.CLASS_SETS[class_set][1], data.num_classes(class_set)
        self.scales, self.flip, self.device = args.eval_scales, args.eval_flip, device

    def baseline(self):
        return majority_baseline(self.train_pairs, self.batches, self.classes)

    def __call__(self, net, sample_path):
        save_seg_sample(net, self.sample, sample_path, self.device, self.colours)
        return evaluate_segmentation(net, self.batches, self.device, self.classes, self.scales, self.flip)


@data.reads_files
def majority_baseline(train_pairs, eval_batches, classes):
    """What labelling every pixel with the training labels' most frequent class scores on the evaluation set."""
    counts = sum(torch.bincount(read(label).flatten(), minlength=256)[:classes] for _, label, read in train_pairs)
    majority = int(counts.argmax())
    confusion = sum(confusion_matrix(torch.full_like(b['label'], majority), b['label'], classes)
                    for b in eval_batches)
    return segmentation_metrics(confusion)


def resize_flow(flow, size):
    """Flow [B,2,h,w] in pixels -> [B,2,H,W]: resampled, and each component scaled with its axis."""
    h, w = flow.shape[-2:]
    scale = torch.tensor([size[1] / w, size[0] / h], device=flow.device).view(1, 2, 1, 1)
    return torch.nn.functional.interpolate(flow, size, mode='bilinear', align_corners=False) * scale


@torch.no_grad()
def evaluate_flow(flow_net, pairs, device):
    """End-point error and Fl on the ground-truth flow pairs, at the ground truth's resolution."""
    flow_net.eval()

    def predictions():
        for batch in pairs:
            frames, gt = batch['frames'].to(device), batch['flow'].to(device)
            flow = resize_flow(flow_net(frames[:, 0], frames[:, 1])[0].float(), gt.shape[-2:])
            yield flow, gt, batch['valid'].to(device)
    return flow_metrics(predictions())


def sample_frames(dataset, device, count=4):
    """The frames of `count` evenly spaced items of a dataset, [count, S, 3, H, W]: the PNG samples' inputs."""
    return torch.stack([dataset[i]['frames'] for i in data.evenly_spaced(len(dataset), count)]).to(device)


@torch.no_grad()
def save_depth_sample(depth_net, frames, path):
    """A PNG: test images above their predicted disparities (Monodepth2's magma colour map)."""
    disp = depth_net.eval()(frames[:, 0])[0].float().cpu()
    save_image_grid([frames[:, 0].permute(0, 2, 3, 1).cpu(), disp[:, 0]], path, cmaps=[None, 'magma'])


@torch.no_grad()
def save_flow_sample(flow_net, frames, path):
    """A PNG: first frames above their predicted flow in the usual colour wheel (torchvision's flow_to_image)."""
    flow = flow_net.eval()(frames[:, 0], frames[:, 1])[0].float().cpu()
    save_image_grid([frames[:, 0].permute(0, 2, 3, 1).cpu(), flow_to_image(flow).permute(0, 2, 3, 1)], path)


@torch.no_grad()
def save_seg_sample(net, batch, path, device, colours):
    """A PNG: images, ground truth and predictions, in the class set's colours."""
    pred = net.eval()(batch['image'].to(device)).argmax(1).cpu()
    save_image_grid([batch['image'].permute(0, 2, 3, 1), colourise(batch['label'], colours), colourise(pred, colours)],
                    path)


# ---------------------------------------------------------------- runs

def read_run(path):
    """{'name', 'path', 'args', 'metrics', 'checkpoint'} of a run folder (args.json + metrics.jsonl) or of a
    checkpoint file (.pt)."""
    path = Path(path)
    if path.is_dir() and (path / 'args.json').is_file():
        metrics_file = path / 'metrics.jsonl'
        metrics = training.read_jsonl(metrics_file) if metrics_file.is_file() else []
        if not metrics:
            print(f'warning: {path} has no metrics yet (no metrics.jsonl, or an empty one): its row stays empty.',
                  file=sys.stderr)
        try:
            args = training.read_args(path / 'args.json')
        except ValueError as error:
            raise ValueError(f'{error}: restore it from a copy, or leave the run out.') from None
        return {'name': path.name, 'path': path, 'args': args, 'metrics': metrics, 'checkpoint': path / 'checkpoint.pt'}
    if path.is_file() and path.suffix == '.pt':
        checkpoint = models.read_checkpoint(path)
        args = checkpoint.get('args') or {}
        args = dict(args if isinstance(args, dict) else vars(args))
        for key in ('task', 'arch', 'height', 'width'):
            if key in checkpoint:
                args.setdefault(key, checkpoint[key])
        metrics = [{'iter': checkpoint.get('iter'), 'split': 'eval', **(checkpoint.get('metrics') or {})}]
        return {'name': args.get('name') or path.stem, 'path': path, 'args': args, 'metrics': metrics,
                'checkpoint': path}
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
    return '–' if value is None or value != value else f'{100 * value:.2f}'  # None or NaN (mIoU(7) on NYU)


def _decimal(value):
    return '–' if value is None or value != value else f'{value:.3f}'


DEPTH_KEYS = ('abs_rel', 'sq_rel', 'rmse', 'rmse_log', 'log10', 'a1', 'a2', 'a3', 'silog', 'si_rmse')
# (header, split of the metrics line, key, format) of the metric columns of each task's table
METRIC_COLUMNS = {
    'seg': [('mIoU (7 cls) %', 'eval', 'miou7', _percent), ('mIoU (all classes) %', 'eval', 'miou', _percent),
            ('pixel acc %', 'eval', 'pixel_acc', _percent)],
    'depth': [(key, 'eval', key, _decimal) for key in DEPTH_KEYS]
             + [('baseline abs_rel', 'baseline', 'abs_rel', _decimal)],
    'flow': [('EPE px', 'eval', 'epe', _decimal), ('Fl %', 'eval', 'fl', _percent),
             ('zero-flow EPE px', 'baseline', 'epe', _decimal)],
}
OTHER_COLUMNS = [('train loss', 'train', 'loss', _decimal)]  # tasks without a table of their own
SHARED_HEADER = ['task', 'init', 'decoder', 'frozen encoder', 'train size', 'arch', 'resolution HxW', 'iterations']


def _config_cells(run):
    """The columns every table shares: what was trained, how, and for how long."""
    args = run['args']
    frozen = '–' if args.get('freeze_encoder') is None else 'yes' if args['freeze_encoder'] else 'no'
    decoder = '–' if 'decoder' not in args else models.describe_decoder(
        args['decoder'], models.xnet_options(args), args.get('decoder_init', 'none'), args.get('reset_decoder', False))
    size = f"{args['height']}x{args['width']}" if 'height' in args and 'width' in args else '–'
    iters = args.get('iters', _last(run, 'eval').get('iter'))
    stopped = stopped_at(run)
    iters = f'{stopped} of {iters}, stopped' if stopped is not None else '–' if iters is None else str(iters)
    return [_task(run), str(args.get('init', '–')), decoder, frozen, str(args.get('train_size', '–')),
            str(args.get('arch', '–')), size, iters]


def _evaluation_cells(task, run):
    """The column that says how a depth run was scored (protocol and scaling); none for other tasks. Without
    a run: the column's header."""
    if task != 'depth':
        return []
    if run is None:
        return ['evaluation']
    args = run['args']
    return [describe_depth_evaluation(args.get('eval_protocol', '–'), median_scaling_of(args))]


def _markdown(title, header, rows):
    return '\n'.join([f'### {title}', '', '| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
                     + ['| ' + ' | '.join(row) + ' |' for row in rows])


def results_table(runs):
    """Markdown: one table per task (segmentation, depth, ...), one row per run, its final metrics."""
    tables = []
    for task in dict.fromkeys(_task(run) for run in runs):
        columns = METRIC_COLUMNS.get(task, OTHER_COLUMNS)
        rows = [[run['name']] + _config_cells(run) + _evaluation_cells(task, run)
                + [fmt(_last(run, split).get(key)) for _, split, key, fmt in columns]
                for run in runs if _task(run) == task]
        header = ['run'] + SHARED_HEADER + _evaluation_cells(task, None) + [c[0] for c in columns]
        tables.append(_markdown(task, header, rows))
    return '\n\n'.join(tables) + '\n'


# arguments that do not change what a run measures: runs differing only in these are one configuration
NOT_CONFIGURATION = {'seed', 'name', 'runs', 'resume', 'device', 'workers', 'out', 'overwrite', 'bench', 'log_every',
                     'save_every', 'eval_every', 'changes'}


def stopped_at(run):
    """The last iteration a run logged where that is short of its --iters (it was stopped, or crashed, before
    the end: its numbers are not those of its configuration), else None. A run always logs its last iteration."""
    reached = max((m.get('iter') or 0 for m in run['metrics']), default=0)
    iters = run['args'].get('iters')
    return reached if iters is not None and reached < iters else None


def counted_runs(runs):
    """(the runs that count towards means over seeds, a sentence on each left out): a run stopped before its
    --iters is left out, and a run found twice (the same flags and seed: a copied folder, or a run folder and
    its exported checkpoint) counts once."""
    counted, seen, notes = [], {}, []
    for run in runs:
        stopped = stopped_at(run)
        if stopped is not None:
            notes.append(f'{run["path"]} stopped before its end (its last logged iteration is {stopped} of '
                         f'{run["args"]["iters"]}; `--resume` continues it): left out of the means.')
            continue
        key = json.dumps({k: v for k, v in run['args'].items() if k not in NOT_CONFIGURATION - {'seed'}},
                         sort_keys=True, default=str)
        if key in seen:
            notes.append(f'{run["path"]} is the run {seen[key]["path"]} again (the same flags and seed): counted once.')
            continue
        seen[key] = run
        counted.append(run)
    return counted, notes


def init_run(init):
    """The run whose checkpoint an --init names (runs/<name>/checkpoint.pt), as {'name', 'args'} from the
    args.json next to it; None for anything else (none, imagenet, depth, an exported checkpoint) or where that
    run's folder is gone."""
    path = Path(str(init))
    flags = path.parent / 'args.json'
    if path.suffix != '.pt' or not flags.is_file():
        return None
    try:
        return {'name': path.parent.name, 'args': training.read_args(flags)}
    except ValueError as error:
        raise ValueError(f'{error}: it says what --init {init} was; restore it from a copy, or leave out the runs '
                         f'fine-tuned from it.') from None


def configuration(args):
    """What a run measures: its flags but NOT_CONFIGURATION, where an --init of a run's checkpoint stands for
    that run's configuration (runs fine-tuned from the seeds of one pre-training are one configuration)."""
    config = {k: v for k, v in args.items() if k not in NOT_CONFIGURATION}
    source = init_run(args.get('init'))
    if source is not None:
        config['init'] = configuration(source['args'])
    return config


def _key(config):
    return json.dumps(config, sort_keys=True, default=str)


# The parts of pretrain.py's and finetune.py's default run names that a train size and the frozen or
# fine-tuned encoder write (their seed writes the last part, s<seed>).
NAME_PARTS = {'train_size': lambda args: f"n{args.get('train_size') or 'all'}",
              'freeze_encoder': lambda args: 'frozen' if args.get('freeze_encoder') else 'full'}


def _default_name(run, settings=()):
    """A default run name without the parts its seed and `settings` wrote, each found from its args.json (the
    last such part: a name begins with its --init's); None for a name without them (one given with --name)."""
    parts = run['name'].split('-')
    if parts[-1] != f"s{run['args'].get('seed')}":
        return None
    parts = parts[:-1]
    for setting in settings:
        part = NAME_PARTS[setting](run['args'])
        if part not in parts:
            return None
        del parts[len(parts) - 1 - parts[::-1].index(part)]
    return '-'.join(parts)


def _shown(key, args):
    """A flag's value as a label shows it: an --init by init_name."""
    return init_name(args.get('init')) if key == 'init' else str(args.get(key, '–'))


def label_series(series, settings=()):
    """[(label, runs)] for lists of runs that each share a configuration but for `settings` (and seed): the
    default name their runs share without those parts (the name's own text), else the flags of args.json in
    which the series of its task differ ('init=none, freeze_encoder=True'; the init alone where none differ)."""
    configs = [configuration(runs[0]['args']) for runs in series]
    for config in configs:
        for setting in settings:
            config.pop(setting, None)
    labels = []
    for runs, config in zip(series, configs):
        names = {_default_name(run, settings) for run in runs} - {None}
        if len(names) == 1:
            labels.append(names.pop())
            continue
        others = [other for other, members in zip(configs, series) if _task(members[0]) == _task(runs[0])]
        keys = sorted({k for other in others for k in set(other) | set(config)
                       if len({_key(o.get(k)) for o in others}) > 1}) or ['init']
        labels.append(', '.join(f'{key}={_shown(key, runs[0]["args"])}' for key in keys))
    return list(zip(labels, series))


def group_runs(runs):
    """Runs of one configuration (their args.json but NOT_CONFIGURATION and the init's seed: `configuration`),
    as [(label, [runs])] in first-seen order, of the runs that count (counted_runs: finished, each once),
    labelled by label_series: the default name their runs share without the seed, else by their flags."""
    groups = {}
    for run in counted_runs(runs)[0]:
        groups.setdefault(_key(configuration(run['args'])), []).append(run)
    return label_series(list(groups.values()))


def _mean_std(values):
    """Mean and sample standard deviation (0 for a single value) of the values that exist."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def grouped_table(runs):
    """Markdown like the paper's tables: one row per configuration, each metric as mean ± std over its
    seeds (sample standard deviation), with the number of seeds; a single seed's value stands alone. Below
    them, a line for each run left out (counted_runs: stopped early, or found twice)."""
    groups = group_runs(runs)
    tables = []
    for task in dict.fromkeys(_task(run) for run in runs):
        columns = METRIC_COLUMNS.get(task, OTHER_COLUMNS)
        rows = []
        for label, members in (g for g in groups if _task(g[1][0]) == task):
            cells = []
            for _, split, key, fmt in columns:
                mean, std = _mean_std([_last(run, split).get(key) for run in members])
                cells.append('–' if mean is None else fmt(mean) if len(members) == 1 else f'{fmt(mean)} ± {fmt(std)}')
            rows.append([label] + _config_cells(members[0]) + _evaluation_cells(task, members[0])
                        + [str(len(members))] + cells)
        header = ['configuration'] + SHARED_HEADER + _evaluation_cells(task, None) + ['seeds'] + [c[0] for c in columns]
        tables.append(_markdown(f'{task}, mean ± std over seeds', header, rows))
    notes = counted_runs(runs)[1]
    return '\n\n'.join(tables + (['\n'.join(f'- {note}' for note in notes)] if notes else [])) + '\n'


def _final_miou7(members):
    """Mean and std over seeds of the runs' last mIoU (7 classes), fractions."""
    return _mean_std([_last(run, 'eval').get('miou7') for run in members])


def init_name(init):
    """An --init as a headline names it: the run whose checkpoint it is (init_run) by its name without its seed,
    an exported checkpoint by its file's name (depth-stereo for checkpoints/depth-stereo.pt), anything else as
    given (none, imagenet, depth, flow, the path of a run checkpoint whose folder is gone)."""
    source = init_run(init)
    if source is not None:
        return _default_name(source) or source['name']
    path = Path(str(init))
    return path.stem if path.suffix == '.pt' and path.stem != 'checkpoint' else str(init)


def depth_init(init):
    """Whether an --init is depth pre-training: the depth checkpoint (depth), or a run or exported checkpoint
    whose flags say --task depth (its args.json; an exported checkpoint records its run's flags)."""
    if init == 'depth':
        return True
    source = init_run(init)
    if source is not None:
        return source['args'].get('task') == 'depth'
    path = Path(str(init))
    if path.suffix != '.pt' or not path.is_file():
        return False
    try:
        return models.read_checkpoint(path).get('task') == 'depth'
    except ValueError:  # weights of another kind (torchvision's, ...): no task recorded, so not a depth run's
        return False


def _seeds(count):
    return 'one seed' if count == 1 else f'mean of {count} seeds'


def _headline(depth, random, setting):
    """'mIoU (7 classes), frozen encoder: depth 64.0 vs random 29.0 (+35.0), mean of 3 seeds', or None
    when either side has no final mIoU."""
    (depth_mean, _), (random_mean, _) = _final_miou7(depth), _final_miou7(random)
    if depth_mean is None or random_mean is None:
        return None
    name = init_name(depth[0]['args']['init'])
    if len(depth) != len(random):
        seeds = f', {name} {_seeds(len(depth))}, random {_seeds(len(random))}'
    else:
        seeds = f', {_seeds(len(depth))}' if len(depth) > 1 else ''
    return (f'mIoU (7 classes), {setting}: {name} {100 * depth_mean:.1f} vs random {100 * random_mean:.1f} '
            f'({100 * (depth_mean - random_mean):+.1f}){seeds}')


def headlines(runs):
    """The main result in one line per pair of segmentation configurations that differ only in --init, a
    depth checkpoint against none (random weights): frozen-encoder pairs first, then fine-tuned ones. A
    setting with several pairs (other train sizes, decoders, ...) names the depth configuration."""
    settings = {}
    for label, members in group_runs([run for run in runs if _task(run) == 'seg']):
        config = configuration(members[0]['args'])
        config.pop('init', None)
        settings.setdefault(_key(config), []).append((label, members))
    pairs = []
    for groups in settings.values():
        inits = [(members[0]['args'].get('init'), label, members) for label, members in groups]
        pairs += [(label, depth, random) for init, label, depth in inits if depth_init(init)
                  for other, _, random in inits if other == 'none']
    pairs.sort(key=lambda pair: not pair[1][0]['args'].get('freeze_encoder'))  # stable: frozen first
    lines = []
    for label, depth, random in pairs:
        frozen = bool(depth[0]['args'].get('freeze_encoder'))
        setting = 'frozen encoder' if frozen else 'fine-tuned encoder'
        if sum(bool(p[1][0]['args'].get('freeze_encoder')) == frozen for p in pairs) > 1:
            setting += f' ({label})'
        lines.append(_headline(depth, random, setting))
    return [line for line in lines if line]


def _curve(run, key):
    """(iterations, values) of `key` over the run's eval lines that measured it (not None, not NaN)."""
    points = [(m['iter'], m[key]) for m in run['metrics']
              if m.get('split') == 'eval' and m.get(key) is not None and not math.isnan(m[key])]
    return [p[0] for p in points], [p[1] for p in points]


def _seg_key(members):
    """The segmentation curve's metric: mIoU over the 7 representative classes (miou7), or, for runs on a
    dataset without them (NYU's 40 classes log miou7 as NaN), mIoU over all classes (miou)."""
    return 'miou7' if any(_curve(run, 'miou7')[0] for run in members) else 'miou'


def _figure(columns, rows=1, width=6, height=4.5):
    """A matplotlib Figure without pyplot (no global state, no window) and its axes grid."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width * columns, height * rows), layout='constrained')
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, columns, squeeze=False)


def _save_figure(fig, path):
    """Write a figure as a PNG, atomically (training.write_atomic)."""
    training.write_atomic(path, lambda tmp: fig.savefig(tmp, format='png', dpi=100))


def save_image_grid(rows, path, cmaps=None):
    """A PNG of image rows (each a batch of [H, W] or [H, W, 3] tensors), one colour map per row: the samples
    a run writes at each evaluation."""
    cmaps = cmaps or [None] * len(rows)
    fig, axes = _figure(len(rows[0]), len(rows), width=4, height=1.5)
    for r, (row, cmap) in enumerate(zip(rows, cmaps)):
        for i, image in enumerate(row):
            image = image.float().cpu().numpy()
            axes[r, i].imshow(image if cmap else image.clip(0, 1), cmap=cmap)  # jittered colours overshoot
            axes[r, i].axis('off')
    training.write_atomic(path, lambda tmp: fig.savefig(tmp, format='png', dpi=80))


def plot_curves(runs, path):
    """PNG like the paper's Fig. 2: mIoU (7 classes, %) vs iteration per configuration (mean over its seeds,
    ± std shaded), abs_rel for depth and end-point error for flow runs, baselines dashed. Returns the figure."""
    # (task, key, title, y label, factor from the logged value to the plotted one)
    panels = [panel for panel in [('seg', 'miou7', 'Segmentation', 'mIoU (7 classes) %', 100),
                                  ('depth', 'abs_rel', 'Depth', 'abs_rel (lower is better)', 1),
                                  ('flow', 'epe', 'Optical flow', 'end-point error, px (lower is better)', 1)]
              if any(_task(run) == panel[0] for run in runs)] or [(None, None, 'No runs with evaluations', '', 1)]
    fig, axes = _figure(len(panels))
    for ax, (task, key, title, ylabel, factor) in zip(axes[0], panels):
        for label, members in (g for g in group_runs(runs) if _task(g[1][0]) == task):
            series_key = _seg_key(members) if task == 'seg' else key
            curves = [dict(zip(*_curve(run, series_key))) for run in members]
            iters = sorted(set.intersection(*(set(c) for c in curves)))
            if not iters:
                continue
            stats = [_mean_std([factor * c[i] for c in curves]) for i in iters]
            mean = [m for m, _ in stats]
            every_class = ', mIoU over all classes' if series_key != key else ''
            line, = ax.plot(iters, mean, marker='.', label=f'{label} (n={len(members)}){every_class}')
            ax.fill_between(iters, [m - s for m, s in stats], [m + s for m, s in stats], color=line.get_color(), alpha=0.2)
            baseline = _last(members[0], 'baseline').get(series_key)
            if baseline is not None:
                ax.axhline(factor * baseline, ls='--', color=line.get_color(), label=f'{label}: baseline')
        ax.set(title=title, xlabel='iteration', ylabel=ylabel)
        if ax.lines:
            ax.legend(fontsize='small')
        else:
            ax.text(0.5, 0.5, 'no evaluations logged', ha='center', va='center', transform=ax.transAxes)
        ax.grid(alpha=0.3)
    _save_figure(fig, path)
    return fig


def plot_train_size(runs, path):
    """PNG like the paper's Fig. 3: final mIoU (7 classes) vs the number of labelled training images, one
    line per configuration (everything but --train-size) measured at two sizes or more, mean ± std over
    seeds as error bars. Returns the figure, or None (and writes nothing) when no configuration has two."""
    series = {}
    for _, members in group_runs([run for run in runs if _task(run) == 'seg']):
        config = configuration(members[0]['args'])
        point = (config.pop('train_size', None), *_final_miou7(members))  # the x axis, not part of the series
        if point[0] is not None and point[1] is not None:
            series.setdefault(_key(config), []).append((point, members))
    series = [points for points in series.values() if len(points) > 1]
    if not series:
        return None
    fig, axes = _figure(1)
    ax = axes[0, 0]
    labelled = label_series([[run for _, members in points for run in members] for points in series], ['train_size'])
    for (name, _), points in zip(labelled, series):
        points = sorted(point for point, _ in points)
        ax.errorbar([p[0] for p in points], [100 * p[1] for p in points], yerr=[100 * p[2] for p in points],
                    marker='o', capsize=3, label=name)
    ax.set(title='Final mIoU vs training-set size', xlabel='labelled training images', ylabel='mIoU (7 classes) %')
    ax.set_xscale('log', base=2)
    ax.legend(fontsize='small')
    ax.grid(alpha=0.3)
    _save_figure(fig, path)
    return fig


def plot_frozen(runs, path):
    """PNG like the paper's Fig. 4: final mIoU (7 classes) per initialisation, frozen encoder next to
    fine-tuned, mean ± std over seeds; a setting without runs leaves its slot empty. Returns the figure."""
    slots = {}  # configurations but for --freeze-encoder: {'frozen': runs, 'full': runs}
    for _, members in group_runs([run for run in runs if _task(run) == 'seg']):
        config = configuration(members[0]['args'])
        mode = 'frozen' if config.pop('freeze_encoder', None) else 'full'
        slots.setdefault(_key(config), {})[mode] = members
    slots = list(slots.values())
    labelled = label_series([[run for members in slot.values() for run in members] for slot in slots],
                            ['freeze_encoder'])
    bars = [(name, {mode: _final_miou7(members) for mode, members in slot.items()})
            for (name, _), slot in zip(labelled, slots)]
    fig, axes = _figure(1, width=max(6, 1.5 * len(bars)))
    ax = axes[0, 0]
    for offset, mode in ((-0.2, 'frozen'), (0.2, 'full')):
        drawn = [(i, *means[mode]) for i, (_, means) in enumerate(bars) if means.get(mode, (None,))[0] is not None]
        if drawn:
            ax.bar([i + offset for i, _, _ in drawn], [100 * m for _, m, _ in drawn], width=0.4,
                   yerr=[100 * s for _, _, s in drawn], capsize=3 if any(s for _, _, s in drawn) else 0,
                   label=f'{mode} encoder')  # no caps on the zero spread of single seeds
    ax.set_xticks(range(len(bars)), [name for name, _ in bars], rotation=20, ha='right', fontsize='small')
    ax.set(title='Frozen vs fine-tuned encoder', ylabel='mIoU (7 classes) %')
    if ax.containers:
        ax.legend()
    ax.grid(alpha=0.3, axis='y')
    _save_figure(fig, path)
    return fig


# ---------------------------------------------------------------- checkpoints on held-out images

def load_network(checkpoint, source='checkpoint'):
    """The segmentation or depth network a checkpoint holds, with its weights, in eval mode."""
    task, decoder = checkpoint.get('task'), checkpoint.get('decoder', 'unet')
    if task not in ('seg', 'depth') or decoder not in models.DECODERS:
        raise ValueError(f'{source} holds a {task} network with a {decoder} decoder; only segmentation and depth '
                         f'networks are evaluated on images.')
    arch, normalization = checkpoint['arch'], checkpoint['normalization']
    xnet = checkpoint.get('xnet')
    net = (models.build_seg_net(arch, checkpoint.get('num_classes') or len(data.CITYSCAPES_CLASSES), normalization, decoder, xnet)
           if task == 'seg' else models.build_depth_net(arch, normalization, decoder, xnet))
    try:
        net.load_state_dict(checkpoint['model'])
    except RuntimeError as error:
        raise ValueError(f'{source} does not fit a {arch} {decoder} {task} network: '
                         f'{str(error).splitlines()[-1].strip()}') from None
    return net.eval()


def held_out_set(checkpoint, root, protocol=None, split_dir=None):
    """The images a checkpoint was not trained on, at its resolution, in the layout of its --data: the
    labelled images outside its few-shot pick (segmentation), or the test frames with the ground truth of
    its depth protocol (depth; `protocol` and `split_dir` override the run's --eval-protocol and --eval-split).
    Images the checkpoint records as its training images are left out, and counted (not_trained_on)."""
    args = checkpoint.get('args') or {}
    size = (checkpoint['height'], checkpoint['width'])
    layout = data.LAYOUTS[args.get('data', 'toy')](root, depth_scale=args.get('depth_scale'))
    if checkpoint['task'] == 'seg':
        _, held_out = data.few_shot_sets(layout, args.get('train_size', 16), args.get('seed', 0), args.get('split'))
        return data.LabelledImages(not_trained_on(checkpoint, root, held_out, lambda pair: pair[0]), *size)
    protocol = protocol or args.get('eval_protocol') or layout.protocols[0]
    items, skipped = layout.depth_test(protocol, split_dir or args.get('eval_split') or args.get('split'))
    if items is None:
        raise ValueError(f'{root} holds no test frames with ground truth (a folder needs a val split with RGB-D pairs).')
    return data.DepthTestFrames(not_trained_on(checkpoint, root, items, lambda item: item.frames[0]), *size,
                                protocol, skipped)


def not_trained_on(checkpoint, root, items, image):
    """The items whose image (`image(item)`) is none of the checkpoint's training images (its 'train_images',
    names relative to the data root), saying how many were left out: a labelled pool that grew since training
    draws another few-shot pick, and a split edited since may list training frames. None left stops."""
    trained = set(checkpoint.get('train_images') or ())
    kept = [item for item in items if Path(image(item)).relative_to(root).as_posix() not in trained]
    if len(kept) < len(items):
        print(f'{len(items) - len(kept)} of the {len(items)} held-out images under {root} are among the '
              f'{len(trained)} this checkpoint was trained on (the data changed since): they are left out, '
              f'{len(kept)} are scored.')
    if not kept:
        raise ValueError(f'every held-out image under {root} is one this checkpoint was trained on: score it on '
                         f'the data it was trained with.')
    return kept


def median_scaling_of(args):
    """Whether a depth run's evaluation median-scales: its --median-scaling, which defaults to on for
    --supervision mono (video fixes no scale) and off for every metric supervision and for fine-tuning."""
    if args.get('median_scaling') in ('on', 'off'):
        return args['median_scaling'] == 'on'
    return args.get('supervision') == 'mono'


def depth_settings(checkpoint):
    """(min_depth, max_depth, median_scaling) of a depth checkpoint: the depths its sigmoid disparity maps
    to, and whether its evaluation median-scales (median_scaling_of)."""
    args = checkpoint.get('args') or {}
    return args.get('min_depth', 0.1), args.get('max_depth', 100.0), median_scaling_of(args)


PROTOCOL_WORDS = {'eigen': 'velodyne ground truth, Garg crop', 'benchmark': 'annotated ground truth, no crop',
                  'cityscapes': 'depth from disparity, ego vehicle out, ManyDepth crop',
                  'nyu': 'sensor depth, Eigen crop, 10 m cap', 'pairs': 'every measured pixel, no crop'}


def describe_depth_evaluation(protocol, median_scaling):
    """How depth was scored, in words, for tables and logs."""
    truth = PROTOCOL_WORDS.get(protocol, 'protocol not recorded')
    return f'{protocol} ({truth}), {"median-scaled" if median_scaling else "metric"}'


def evaluate_checkpoint(path, root, device=torch.device('cpu'), protocol=None, median_scaling=None, split_dir=None,
                        scales=(1.0,), flip=False):
    """Metrics of one checkpoint on its held-out images, and how they were scored (a sentence): segmentation
    metrics (a multi-scale test with `scales` or `flip`), or the depth table by the run's protocol and scaling
    unless `protocol` ('eigen'/'benchmark'), `median_scaling` (True/False) or `split_dir` (the folder of
    test_files.txt) say otherwise."""
    checkpoint = models.read_checkpoint(path)
    multi_scale = tuple(scales) != (1.0,) or flip
    if multi_scale and checkpoint.get('task') != 'seg':
        raise ValueError(f'--eval-scales and --eval-flip apply to segmentation; {path} holds a '
                         f'{checkpoint.get("task")} network.')
    net = load_network(checkpoint, str(path)).to(device)
    held_out = held_out_set(checkpoint, root, protocol, split_dir)
    if checkpoint['task'] == 'seg':
        check_eval_scales(scales, (checkpoint['height'], checkpoint['width']))
        batches = torch.utils.data.DataLoader(held_out, batch_size=1)
        how = f'{len(held_out)} images'
        if multi_scale:
            how += f', scales {" ".join(f"{s:g}" for s in scales)}' + (' and mirrored' if flip else '') + ', averaged'
        return evaluate_segmentation(net, batches, device, net.head.conv.out_channels, scales, flip), how
    min_depth, max_depth, scaling = depth_settings(checkpoint)
    scaling = scaling if median_scaling is None else median_scaling
    eval_max_depth = (checkpoint.get('args') or {}).get('eval_max_depth', 80.0)
    metrics = evaluate_depth(net, held_out, device, min_depth, max_depth, eval_max_depth, scaling)
    how = (f'{describe_depth_evaluation(held_out.protocol, scaling)}: {metrics["images"]} frames scored, '
           f'{metrics["skipped"]} skipped (no ground truth)')
    return metrics, how


def _common_held_out(runs, root, count):
    """Up to `count` items held out by every run (their few-shot picks differ with the seed), a list: depth
    ground truth keeps each frame's own size."""
    sets = [held_out_set(models.read_checkpoint(run['checkpoint']), root) for run in runs]
    if isinstance(sets[0], data.LabelledImages):
        common = set.intersection(*({str(pair[0]) for pair in s.pairs} for s in sets))
        indices = [i for i, pair in enumerate(sets[0].pairs) if str(pair[0]) in common][:count]
    else:
        indices = data.evenly_spaced(len(sets[0]), count)
    if not indices:
        raise ValueError('the runs share no held-out image: compare runs with overlapping evaluation sets.')
    items = [sets[0][i] for i in indices]
    for item in items:  # resampling overshoots [0, 1] a little; the figures draw these as RGB
        for key in ('image', 'frames'):
            if key in item:
                item[key] = item[key].clamp(0, 1)
    return items


def _predicted_maps(run, images, gt_depths):
    """One run's prediction on the images [B, 3, H, W]: train ids [B, H, W], or a list of inverse depth
    maps in 1/m, each at its ground truth's size (median-scaled where the evaluation median-scales)."""
    checkpoint = models.read_checkpoint(run['checkpoint'])
    out = load_network(checkpoint, run['name'])(images)
    if checkpoint['task'] == 'seg':
        return out.argmax(1)
    min_depth, max_depth, median_scaling = depth_settings(checkpoint)
    maps = []
    for disp, gt in zip(out[0], gt_depths):
        disp = torch.nn.functional.interpolate(disp[None], gt.shape, mode='bilinear', align_corners=False)[0, 0]
        depth = models.disp_to_depth(disp, min_depth, max_depth)
        if median_scaling and (gt > 0).any():  # as the evaluation of self-supervised depth does
            depth = depth * _median(gt[gt > 0]) / _median(depth[gt > 0])
        maps.append(1 / depth)
    return maps


def class_set(run):
    """(class names, colours) of a run's (or a checkpoint's) labels: those of its --data's layout."""
    return data.CLASS_SETS[data.LAYOUTS[(run.get('args') or {}).get('data', 'toy')].classes or 'cityscapes']


def _class_legend(fig, label_maps, classes):
    """A legend of the classes (names, colours) that appear in the label maps, in their palette colours."""
    from matplotlib.patches import Patch
    (names, colours), present = classes, torch.unique(torch.cat([m.flatten() for m in label_maps])).tolist()
    handles = [Patch(color=[c / 255 for c in colours[i]], label=names[i]) for i in present if i < len(names)]
    fig.legend(handles=handles, loc='outside right upper', fontsize='small', title='classes')


@torch.no_grad()
def plot_qualitative(runs, root, path, count=4):
    """PNG grid, one row per held-out image: the image, its ground truth, then each run's prediction.
    Segmentation in its class set's palette with a legend of the classes shown; depth as inverse depth
    (1/m, ground truth and predictions on one magma scale with its colour bar; predictions median-scaled
    where the evaluation median-scales, pixels without ground truth black). Returns the figure."""
    seg = _task(runs[0]) == 'seg'
    items = _common_held_out(runs, root, count)
    images = torch.stack([item['image'] if seg else item['frames'][0] for item in items])
    gt_depths = None if seg else [item['depth'][0] for item in items]
    truth = (torch.stack([item['label'] for item in items]) if seg
             else [torch.where(gt > 0, 1 / gt.clamp(min=1e-3), 0.0) for gt in gt_depths])
    maps = [truth] + [_predicted_maps(run, images, gt_depths) for run in runs]
    titles = ['ground truth'] + [run['name'] for run in runs]
    fig, axes = _figure(len(maps) + 1, len(images), width=3, height=1.2)
    vmax = None if seg else float(np.percentile(torch.cat([m.flatten() for row in maps for m in row]).numpy(), 99))
    for c, (title, pictures) in enumerate([('image', images.permute(0, 2, 3, 1))] + list(zip(titles, maps))):
        axes[0, c].set_title(title, fontsize='small')
        for r, picture in enumerate(pictures):
            if c == 0:
                axes[r, c].imshow(picture.numpy())
            elif seg:
                axes[r, c].imshow(colourise(picture, class_set(runs[0])[1]).numpy())
            else:
                shown = axes[r, c].imshow(picture.numpy(), cmap='magma', vmin=0, vmax=vmax)
            axes[r, c].axis('off')
    if seg:
        _class_legend(fig, maps, class_set(runs[0]))
    else:
        fig.colorbar(shown, ax=axes[:, 1:], label='inverse depth, 1/m', shrink=0.8)
    _save_figure(fig, path)
    return fig


def grad_cam(net, images, layer):
    """Fig. 6: where a layer's activations drive the prediction. The gradient of the summed scores of each
    pixel's predicted class, averaged over space, weighs the layer's channels; their weighted sum, ReLU'd and
    scaled to [0, 1] per image, is the map [B, h, w] at the layer's own resolution (Grad-CAM). The layer must
    output one [B, C, h, w] map in the forward pass; otherwise a ValueError lists the layers that do."""
    captured = []
    hook = layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        logits = net(images)
    finally:
        hook.remove()
    if len(captured) != 1 or not (torch.is_tensor(captured[0]) and captured[0].dim() == 4):
        name = next(name for name, module in net.named_modules() if module is layer)
        what = ('outputs no [B, C, h, w] map' if len(captured) == 1 else
                f'runs {len(captured)} times' if captured else 'never runs')
        raise ValueError(f'Grad-CAM reads a layer that outputs one [B, C, h, w] map in a forward pass, and {name} '
                         f'{what}: choose one such as {", ".join(map_layers(net, images))}.')
    activation, = captured
    score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
    gradient, = torch.autograd.grad(score, activation)
    cam = torch.relu((gradient.mean((2, 3), keepdim=True) * activation).sum(1))
    return (cam / cam.amax((1, 2), keepdim=True).clamp(min=1e-12)).detach()


def map_layers(net, images, count=8):
    """The first `count` encoder layers Grad-CAM can read (each outputs one [B, C, h, w] map in a forward
    pass), by their names in the network, the least nested first and each nesting in the order they run:
    the choices a bad --grad-cam-layer is told of."""
    outputs = {}

    def record(name):
        return lambda module, inputs, output: outputs.setdefault(name, []).append(torch.is_tensor(output)
                                                                                  and output.dim() == 4)
    hooks = [module.register_forward_hook(record(name)) for name, module in net.named_modules()
             if name.startswith('encoder.')]
    try:
        with torch.no_grad():
            net(images)
    finally:
        for hook in hooks:
            hook.remove()
    return sorted((name for name, maps in outputs.items() if maps == [True]), key=lambda name: name.count('.'))[:count]


# The layer of Fig. 6 by encoder: the shallowest map, before any pooling, "for high spatial resolution"
# (Sect. 4.1). A ResNet's is its stem's output, the ReLU after conv1 and bn1, at 1/2 of the image (layer1
# comes after the max-pool, at 1/4). ConvNeXt has no pooling: its stem, the 4x4 patchify convolution with its
# LayerNorm, gives its first and finest map (1/4). A Mix Transformer's stem is its first overlapped patch
# merging, whose 7x7 convolution gives its first map (1/4; the LayerNorm after it works on tokens).
GRAD_CAM_LAYERS = {models.ResnetEncoder: 'encoder.relu', models.ConvNextEncoder: 'encoder.features.0',
                   models.MixTransformer: 'encoder.patch_embed1.proj'}


def grad_cam_layer(net, images, name=None):
    """(name, module) of the layer Grad-CAM reads: `name`, a module of the network as --grad-cam-layer gives
    it (encoder.relu, encoder.layer1, ...), else the encoder's default (GRAD_CAM_LAYERS)."""
    name = name or GRAD_CAM_LAYERS[type(net.encoder)]
    try:
        return name, net.get_submodule(name)
    except AttributeError:
        raise ValueError(f'--grad-cam-layer {name} is not a module of this {net.encoder.arch} network: give one such '
                         f'as {", ".join(map_layers(net, images))}.') from None


def plot_grad_cam(runs, root, path, count=4, layer=None):
    """PNG like the paper's Fig. 6: Grad-CAM of a shallow layer (`layer`, else the encoder's GRAD_CAM_LAYERS)
    for each segmentation run (rows) on the same held-out images (columns), upsampled over the images."""
    images = torch.stack([item['image'] for item in _common_held_out(runs, root, count)])
    fig, axes = _figure(len(images), len(runs), width=3, height=1.3)
    for r, run in enumerate(runs):
        net = load_network(models.read_checkpoint(run['checkpoint']), run['name'])
        name, module = grad_cam_layer(net, images, layer)
        cam = grad_cam(net, images, module)
        heats = torch.nn.functional.interpolate(cam[:, None], images.shape[-2:], mode='bilinear', align_corners=False)
        for c, (image, heat) in enumerate(zip(images, heats[:, 0])):
            axes[r, c].imshow(image.permute(1, 2, 0).numpy())
            axes[r, c].imshow(heat.numpy(), cmap='jet', alpha=0.5)
            axes[r, c].axis('off')
        axes[r, 0].set_title(f'{run["name"]}: Grad-CAM of {name} ({cam.shape[1]}x{cam.shape[2]})', fontsize='small',
                             loc='left')
    _save_figure(fig, path)


# ---------------------------------------------------------------- predictions on your own images

def image_files(path):
    """The images to predict on: the file itself, or a folder's PNG and JPEG files, sorted by name."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f'{path} does not exist; give an image (.png, .jpg) or a folder of them.')
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in data.IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f'{path} holds no .png or .jpg images.')
        return files
    if path.suffix.lower() not in data.IMAGE_SUFFIXES:
        raise ValueError(f'{path} is not an image: give a .png or .jpg file, or a folder of them.')
    return [path]


@torch.no_grad()
def predict(net, checkpoint, image):
    """A network's prediction for one image [3, H, W] as read (uint8, or uint16 from a 16-bit PNG) at the
    image's own size: depth in metres [H, W] float32, or train ids [H, W] uint8. The network sees the image
    scaled by its bit depth and resized to the checkpoint's resolution; its disparity, or its logits before
    the argmax, are upsampled back bilinearly."""
    size = image.shape[-2:]
    out = net(data.resize(data.unit_range(image)[None], (checkpoint['height'], checkpoint['width'])))
    if checkpoint['task'] == 'seg':
        logits = torch.nn.functional.interpolate(out, size, mode='bilinear', align_corners=False)
        return logits.argmax(1)[0].to(torch.uint8)
    disp = torch.nn.functional.interpolate(out[0], size, mode='bilinear', align_corners=False)
    min_depth, max_depth, _ = depth_settings(checkpoint)
    return models.disp_to_depth(disp[0, 0], min_depth, max_depth).float()


def _magma(disp):
    """Disparity [H, W] as an RGB picture [H, W, 3] uint8 in magma, its 95th percentile brightest
    (Monodepth2's test_simple.py)."""
    from matplotlib import colormaps
    disp = disp.numpy()
    low, high = disp.min(), np.percentile(disp, 95)
    rgba = colormaps['magma'](np.clip((disp - low) / max(high - low, 1e-12), 0, 1))
    return torch.from_numpy((rgba[..., :3] * 255).round().astype(np.uint8))


def write_prediction(prediction, task, out_dir, stem, colours=data.CITYSCAPES_PALETTE):
    """<stem>_depth.png (magma of disparity) and <stem>_depth.npy (metres, float32), or <stem>_seg.png
    (in `colours`, its class set's palette) and <stem>_seg.npy (train ids, uint8), all [H, W]."""
    picture = colourise(prediction, colours) if task == 'seg' else _magma(1 / prediction)
    write_png(picture.permute(2, 0, 1).contiguous(), str(out_dir / f'{stem}_{task}.png'))
    np.save(out_dir / f'{stem}_{task}.npy', prediction.numpy())


def prediction_names(files):
    """The name each image's predictions are written under: its stem (x for x.png), or, where two images share
    a stem (x.png and x.jpg), every image's whole file name (x.png), so that no prediction replaces another."""
    stems = [file.stem for file in files]
    if len(set(stems)) == len(stems):
        return stems
    twins = [file.name for file in files if stems.count(file.stem) > 1]
    print(f'{" and ".join(twins[:2])} share the name {Path(twins[0]).stem}: each prediction is named after its '
          f'image\'s whole file name ({twins[0]}_<task>.png ...).')
    return [file.name for file in files]


def predict_images(checkpoint_path, source, out_dir):
    """Run a segmentation or depth checkpoint on an image or a folder of images and write each
    prediction into out_dir (prediction_names); returns the number of images."""
    checkpoint = models.read_checkpoint(checkpoint_path)
    net = load_network(checkpoint, str(checkpoint_path))
    files = image_files(source)
    out_dir.mkdir(parents=True, exist_ok=True)
    for file, name in zip(files, prediction_names(files)):  # data.read_image says when a file cannot be decoded
        write_prediction(predict(net, checkpoint, data.read_image(file)), checkpoint['task'], out_dir, name,
                         class_set(checkpoint)[1])
    return len(files)


def _data_root(args, runs):
    """--data-root, else where the first run's data came from (the toy world by default)."""
    return args.data_root or next((r['args'].get('data_root') for r in runs if r['args'].get('data_root')), 'data/toy')


def write_figures(runs, out_dir, images, root, grad_cam_layer=None):
    """The figures: training curves (Fig. 2), frozen vs fine-tuned (Fig. 4) and, where some configuration
    was trained on two train sizes or more, mIoU vs train size (Fig. 3) from the metrics; with `images`,
    qualitative grids and Grad-CAM (Fig. 6, of `grad_cam_layer` or each encoder's default) from the runs'
    checkpoints. Returns the paths written."""
    written = [out_dir / 'curves.png']
    plot_curves(runs, written[0])
    seg = [run for run in runs if _task(run) == 'seg']
    if seg:
        written.append(out_dir / 'frozen.png')
        plot_frozen(seg, written[-1])
        if plot_train_size(seg, out_dir / 'train_size.png'):
            written.append(out_dir / 'train_size.png')
        else:
            print('train_size.png not written: every configuration has a single --train-size.')
    if images:
        for task in ('seg', 'depth'):
            chosen = [run for run in runs if _task(run) == task and Path(run['checkpoint']).is_file()]
            if chosen:
                written.append(out_dir / f'qualitative_{task}.png')
                plot_qualitative(chosen, root, written[-1])
        if any(_task(run) == 'seg' for run in runs):
            written.append(out_dir / 'grad_cam.png')
            plot_grad_cam([run for run in seg if Path(run['checkpoint']).is_file()], root, written[-1],
                          layer=grad_cam_layer)
    return written


def add_multi_scale_args(parser, when):
    """--eval-scales and --eval-flip, the multi-scale test of segmentation_scores (finetune.py's and ours)."""
    parser.add_argument('--eval-scales', type=float, nargs='+', default=[1.0], metavar='S',
                        help=f'{when}: evaluate on the images resized by each factor, class probabilities averaged '
                             f'(xNet\'s multi-scale test: 0.5 0.75 1.0 1.25 1.5 1.75)')
    parser.add_argument('--eval-flip', action='store_true',
                        help=f'{when}: also evaluate each scale mirrored, its probabilities in the average')


def main(argv=None):
    """The three uses of this script: --predict, --checkpoint, or tables and figures of run folders."""
    parser = argparse.ArgumentParser(description='Tabulate and plot run folders, evaluate one checkpoint, '
                                                 'or predict with it on your own images.')
    parser.add_argument('runs', nargs='*', help='run folders (runs/<name>/) or checkpoint files (.pt)')
    parser.add_argument('--out-dir', default=None, help='where results.md and the figures go (default: results), '
                                                        'or the predictions (default: predictions)')
    parser.add_argument('--images', action='store_true',
                        help='also draw qualitative grids and Grad-CAM maps from the runs\' checkpoints (reads the data)')
    parser.add_argument('--grad-cam-layer', metavar='NAME', default=None,
                        help='with --images: the module of the networks whose Grad-CAM is drawn, e.g. encoder.layer1 '
                             '(default: the shallowest map, before pooling, as in the paper\'s Fig. 6: encoder.relu '
                             'for a ResNet, encoder.features.0 for a ConvNeXt, encoder.patch_embed1.proj for a MiT)')
    parser.add_argument('--checkpoint', help='evaluate this one checkpoint on its held-out images and print the metrics')
    parser.add_argument('--predict', metavar='IMAGE_OR_FOLDER',
                        help='with --checkpoint: predict depth or segmentation for this image or every .png/.jpg '
                             'in this folder, at their own size')
    parser.add_argument('--data-root', default=None, help='dataset folder (default: the runs\' own, else data/toy)')
    parser.add_argument('--eval-protocol', choices=data.EVAL_PROTOCOLS, default=None,
                        help='with --checkpoint, depth: eigen (velodyne ground truth, Garg crop) or benchmark '
                             '(annotated ground truth, no crop); default: the run\'s own')
    parser.add_argument('--median-scaling', choices=['on', 'off'], default=None,
                        help='with --checkpoint, depth: scale each prediction by median(gt) / median(prediction); '
                             'default: the run\'s own (on for --supervision mono, off otherwise)')
    parser.add_argument('--eval-split', default=None,
                        help='with --checkpoint, depth: folder holding test_files.txt (e.g. Monodepth2\'s '
                             'splits/eigen); default: the run\'s own, else <data-root>/splits')
    add_multi_scale_args(parser, 'with --checkpoint, segmentation')
    args = parser.parse_args(argv)
    try:
        if args.predict:
            return predict_command(args, parser)
        if args.checkpoint:
            return checkpoint_command(args)
        if args.grad_cam_layer and not args.images:
            parser.error('--grad-cam-layer chooses the layer of the Grad-CAM maps that --images draws: add --images')
        if not args.runs:
            parser.error('give run folders or checkpoints to tabulate, or --checkpoint PATH to evaluate one')
        tables_command(args)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))


def output_folder(out_dir):
    """--out-dir, checked before any work: a folder files can be written into (data.unwritable)."""
    why = data.unwritable(out_dir)
    if why:
        raise ValueError(f'--out-dir {out_dir}: cannot write there ({why}): pass a folder you can write.')
    return Path(out_dir)


def predict_command(args, parser):
    """--checkpoint CKPT --predict IMAGE_OR_FOLDER: predictions written next to each other in --out-dir."""
    if not args.checkpoint:
        parser.error('--predict needs --checkpoint PATH, the network to predict with')
    out_dir = output_folder(args.out_dir or 'predictions')
    count = predict_images(args.checkpoint, args.predict, out_dir)
    print(f'wrote the predictions for {count} image{"s" if count > 1 else ""} to {out_dir}')


def checkpoint_command(args):
    """--checkpoint CKPT: its metrics on its held-out images, the depth table titled with how it was scored."""
    checkpoint_args = models.read_checkpoint(args.checkpoint).get('args') or {}
    root = args.data_root or checkpoint_args.get('data_root') or 'data/toy'
    scaling = None if args.median_scaling is None else args.median_scaling == 'on'
    metrics, how = evaluate_checkpoint(args.checkpoint, root, protocol=args.eval_protocol, median_scaling=scaling,
                                       split_dir=args.eval_split, scales=args.eval_scales, flip=args.eval_flip)
    if 'abs_rel' in metrics:  # the table's title says how depth was scored
        print(f'{args.checkpoint} on {root}\n' + _markdown(how, list(DEPTH_KEYS), [[_decimal(metrics[key]) for key in DEPTH_KEYS]]))
    else:
        print(f'{args.checkpoint} on {root}, {how}')
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, list)}, indent=1))
    return metrics


def tables_command(args):
    """Run folders: results.md (headline, tables) and the figures in --out-dir."""
    out_dir = output_folder(args.out_dir or 'results')
    runs = [read_run(path) for path in args.runs]
    headline = '\n'.join(headlines(runs))
    tables = ('## Configurations (mean ± std over seeds)\n\n' + grouped_table(runs)
              + '\n## Every run\n\n' + results_table(runs))
    print(tables)
    out_dir.mkdir(parents=True, exist_ok=True)
    training.write_text_atomic(out_dir / 'results.md', (headline + '\n\n' if headline else '') + tables)
    written = write_figures(runs, out_dir, args.images, _data_root(args, runs), args.grad_cam_layer)
    print('wrote ' + ', '.join(str(p) for p in [out_dir / 'results.md'] + written))
    if headline:
        print(headline)


if __name__ == '__main__':
    main()
