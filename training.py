"""Run bookkeeping shared by pretrain.py and finetune.py, called from inside their loops; each script writes its
own loop (batch, loss, backward, step, log, evaluate, checkpoint), this file what the loop calls.

Nothing here is in the papers; it is what makes a run trustworthy and repeatable. Top to bottom:
  - the flags both scripts spell the same, and their one-sentence checks;
  - the optimiser and learning-rate schedule both scripts build from those flags (the papers' recipes:
    Adam, AdamW or SGD; warm-up, then cosine, polynomial, linear or step decay; a slower encoder);
  - where a run computes (--device, bfloat16 autocast on GPUs), and its starting points (--init and
    --decoder-init checkpoints, ImageNet weights);
  - the training stream: epoch after epoch, every augmentation seeded by the draw's number, so a resumed
    run continues exactly where it stopped;
  - what the loops call: a stop asked for by SIGTERM or Ctrl-C (StopOnSignal: the step under way finishes, a
    checkpoint is saved), a loss that is not finite (check_finite), --bench's timing, the evaluation line;
  - run folders (Run: args.json, metrics.jsonl, samples, checkpoint.pt, a lock; --resume restores the
    networks, optimiser, schedule and random generators) and files written atomically (a temporary file,
    then a rename), so no crash leaves a half-written result. A checkpoint's keys are models.checkpoint_state's.
"""
import atexit
import contextlib
import itertools
import json
import math
import multiprocessing
import os
import random
import resource
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

import data
import models


# ----------------------------------------------------------------------------------------------------
# Flags both scripts spell the same
# ----------------------------------------------------------------------------------------------------

def add_common_args(parser, iters, lr, batch_size, eval_every):
    """The flags spelled the same in both scripts, with the defaults each script gives (`iters`: the training
    length without --iters or --epochs, which check_length fills in)."""
    parser.add_argument('--data', choices=list(data.LAYOUTS), default='toy',
                        help='toy: the bundled toy world (rendered into --data-root on first use); kitti, '
                             'cityscapes, nyu: that dataset\'s tree at --data-root, in its official layout; folder: '
                             'your own video and RGB-D pairs (DATASETS.md says each layout)')
    parser.add_argument('--data-root', default=None, help=f'dataset folder (default for toy: {data.TOY_ROOT})')
    parser.add_argument('--depth-scale', type=float, default=None, metavar='S',
                        help='folder: metres per unit of <name>_depth.png maps (0.001 for millimetres)')
    parser.add_argument('--arch', choices=models.ARCHS, default='resnet18',
                        help='encoder: torchvision\'s ResNet or ConvNeXt (the xNet paper\'s; its maps start at 1/4), '
                             'or SegFormer\'s Mix Transformer mit_b0 ... mit_b5 (with --decoder segformer)')
    parser.add_argument('--height', type=int, default=64, help='network input height (multiple of 32)')
    parser.add_argument('--width', type=int, default=192, help='network input width (multiple of 32)')
    parser.add_argument('--batch-size', type=int, default=batch_size)
    parser.add_argument('--iters', type=int, default=None, help=f'training iterations (default {iters})')
    parser.add_argument('--epochs', type=int, default=None, metavar='N',
                        help='train N epochs of the training set instead of --iters (the papers\' flow and NYU '
                             'recipes, App. B.3 and B.5): N x its batches per epoch, recorded as --iters once the '
                             'set is known')
    parser.add_argument('--lr', type=float, default=lr, help='initial learning rate (Adam)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--device', default='auto', help='auto (CUDA when present), cpu, cuda, cuda:1 ...')
    parser.add_argument('--workers', type=int, default=2, help='data-loading processes')
    parser.add_argument('--name', default=None, help='run folder name under --runs (default: from the flags)')
    parser.add_argument('--runs', default='runs', help='where run folders go')
    parser.add_argument('--resume', action='store_true', help='continue the run folder\'s last checkpoint')
    parser.add_argument('--eval-every', type=int, default=eval_every, help='evaluate every N iterations')
    parser.add_argument('--save-every', type=int, default=100, help='checkpoint every N iterations')
    parser.add_argument('--log-every', type=int, default=10, help='log the training loss every N iterations')
    parser.add_argument('--crop-size', type=int, nargs=2, metavar=('H', 'W'), default=None,
                        help='train on random HxW crops of the --height x --width images (depth: intrinsics shifted '
                             'with each crop, the paper\'s Depth-cropped, App. D.1; segmentation: DeepLab\'s '
                             'crops, App. B.4); evaluation uses whole images')
    parser.add_argument('--bench', type=int, default=0, metavar='N',
                        help='run N timed training steps, print images/s, ms/step, data-wait share and '
                             'peak memory, and exit (no run folder is written)')
    parser.add_argument('--grad-accum', type=int, default=1, metavar='M',
                        help='split each process\'s share of a --batch-size batch into M micro-batches whose '
                             'gradients add up before the step (a paper\'s batch on a small card)')
    parser.add_argument('--sync-bn', action='store_true',
                        help='under torchrun on GPUs: batch-norm statistics over the whole global batch '
                             '(SyncBatchNorm) instead of each process\'s share')


def add_optimizer_args(parser):
    """The optimiser flags of both scripts (each script adds its own --schedule choices)."""
    parser.add_argument('--optim', choices=['adam', 'adamw', 'sgd'], default='adam', help='the optimiser')
    parser.add_argument('--weight-decay', type=float, default=0.0, help='weight decay (decoupled for adamw)')
    parser.add_argument('--momentum', type=float, default=0.9, help='momentum of sgd')
    parser.add_argument('--warmup', type=int, default=0,
                        help='iterations of linear warm-up before the --schedule decay (xNet: 1,600 for depth, 1,500 '
                             'for segmentation)')
    parser.add_argument('--encoder-lr-mult', type=float, default=1.0,
                        help='the encoder\'s learning rate is --lr times this (xNet: 0.1 for a Swin-L encoder, 0.01 '
                             'for DINOv2-L)')


def add_decoder_args(parser):
    """The decoder flags of both scripts: which decoder, and xNet's options (enough for its Table 1 ablation)."""
    parser.add_argument('--decoder', choices=models.DECODERS, default='unet',
                        help='unet: Monodepth2\'s U-Net (the paper, Fig. 1b); deeplab: torchvision\'s DeepLabV3 '
                             'head on the dilated encoder (Fig. 1a/1c); xnet: a second --arch network, reversed, '
                             'as the decoder; segformer: SegFormer\'s all-MLP head on the last four maps (the '
                             'minimal-transfer paper)')
    parser.add_argument('--decoder-init', default='none',
                        help='xnet: the reversed decoder\'s network (--arch): none (random), imagenet (torchvision\'s '
                             'weights), depth or flow (the encoder of checkpoints/<name>.pt), or a weight file (a '
                             'checkpoint, torchvision\'s state dict, an official ConvNeXt checkpoint)')
    parser.add_argument('--xnet-mix', choices=models.XNET_MIXES, default='stem',
                        help='xnet: multiply the re-shaped encoder output into the stem\'s output (xNet), into '
                             'the RGB image (image: xNet-I), or feed it alone to the first stage (none)')
    parser.add_argument('--xnet-pyramid', action='store_true',
                        help='xnet: add pyramid connections, encoder maps into the decoder stages (eq. 2)')
    parser.add_argument('--no-pfp', action='store_true',
                        help='xnet: predict from the last stage instead of the Post Feature Pyramid')


def add_depth_eval_args(parser, median_scaling_default):
    """Where the depth data's splits are, and how depth is scored (KITTI's two protocols; the script says
    when it median-scales by default)."""
    parser.add_argument('--split', default=None, metavar='DIR',
                        help='folder holding train_files.txt and val_files.txt (and test_files.txt): default '
                             '<data-root>/splits; Monodepth2\'s splits/eigen_zhou works as it is')
    parser.add_argument('--eval-split', default=None, metavar='DIR',
                        help='depth: folder holding test_files.txt (default: --split), e.g. Monodepth2\'s '
                             'splits/eigen (697 frames) or splits/eigen_benchmark (652)')
    parser.add_argument('--eval-protocol', choices=data.EVAL_PROTOCOLS, default=None,
                        help='depth: KITTI: eigen (default; velodyne ground truth, Garg crop, 1e-3 < gt < 80 m) or '
                             'benchmark (KITTI\'s annotated depth, no crop); cityscapes, nyu and folder have one each '
                             '(DATASETS.md says each); test frames without that ground truth are skipped '
                             'and counted')
    parser.add_argument('--eval-max-depth', type=float, default=None,
                        help='depth: evaluation cap (metres; default 80, nyu 10)')
    parser.add_argument('--median-scaling', choices=['on', 'off'], default=None,
                        help='depth: scale each prediction by median(gt) / median(prediction) before scoring; '
                             + median_scaling_default)


def add_depth_range_args(parser):
    """The depth network's output range: its sigmoid disparity maps to depths in [--min-depth, --max-depth]
    (models.disp_to_depth), in the losses, the evaluations and the exported network alike."""
    parser.add_argument('--min-depth', type=float, default=0.1, help='depth: depth of disparity 1 (metres)')
    parser.add_argument('--max-depth', type=float, default=None,
                        help='depth: depth of disparity 0 (metres; default 100, nyu 10)')


def resolve_depth_eval_args(args, task, median_scaling):
    """Fill in the depth evaluation's defaults, those of --data's layout (recorded in args.json, so tables say
    what was used); the flags stop with a sentence where nothing is scored by them or the layout has no such
    protocol."""
    if task != 'depth':
        given = [f for f in ('eval_split', 'eval_protocol', 'median_scaling') if getattr(args, f) is not None]
        if given:
            raise SystemExit(f'--{given[0].replace("_", "-")} applies to depth evaluation; --task {task} does '
                             f'not score depth.')
        return
    layout = data.LAYOUTS[args.data]
    if args.eval_protocol not in (None,) + layout.protocols:
        raise SystemExit(f'--eval-protocol {args.eval_protocol} is not a protocol of --data {args.data}: choose '
                         f'{" or ".join(layout.protocols)}.')
    args.eval_protocol = args.eval_protocol or layout.protocols[0]
    args.median_scaling = args.median_scaling or ('on' if median_scaling else 'off')
    args.max_depth = layout.max_depth if args.max_depth is None else args.max_depth
    args.eval_max_depth = layout.eval_max_depth if args.eval_max_depth is None else args.eval_max_depth


def depth_eval_name(args, median_scaling):
    """The run-name parts of a depth evaluation that is not the default (median_scaling: the default)."""
    parts = ['benchmark'] if args.eval_protocol == 'benchmark' else []
    if args.median_scaling != ('on' if median_scaling else 'off'):
        parts.append('median-scaled' if args.median_scaling == 'on' else 'metric')
    return parts


def check_args(args):
    """Stop early, with one sentence, on flags that cannot work."""
    try:
        models.check_resolution(args.height, args.width)
    except ValueError as error:
        raise SystemExit(f'--height/--width: {error}') from None
    for flag in ('batch_size', 'iters', 'eval_every', 'save_every', 'log_every', 'grad_accum'):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:  # --iters is None until --epochs resolves
            raise SystemExit(f'--{flag.replace("_", "-")} must be at least 1.')
    if args.iters is not None:
        check_warmup(args)
    for flag, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise SystemExit(f'--{flag.replace("_", "-")} must be a finite number; got {value}.')
    if args.bench < 0:
        raise SystemExit(f'--bench must be 0 (train) or the number of steps to time; got {args.bench}.')
    if args.max_depth is not None:  # depth: the sigmoid's disparity maps to depths in [--min-depth, --max-depth]
        if not 0 < args.min_depth < args.max_depth:
            raise SystemExit(f'--min-depth and --max-depth (the depths of disparity 1 and 0) must satisfy 0 < '
                             f'--min-depth < --max-depth; got {args.min_depth} and {args.max_depth}.')
        if not args.eval_max_depth > 0:
            raise SystemExit(f'--eval-max-depth must be above 0 metres; got {args.eval_max_depth}.')
    if not args.lr >= 0:
        raise SystemExit(f'--lr must be a learning rate of 0 or more (e.g. 1e-4); got {args.lr}.')
    if not args.encoder_lr_mult >= 0:
        raise SystemExit(f'--encoder-lr-mult must be 0 or more (e.g. 0.1 for a pre-trained encoder); got '
                         f'{args.encoder_lr_mult}: a negative rate would train the encoder by gradient ascent.')
    if args.crop_size:
        try:
            models.check_resolution(*args.crop_size)
        except ValueError as error:
            raise SystemExit(f'--crop-size: {error}') from None
        if args.crop_size[0] > args.height or args.crop_size[1] > args.width:
            raise SystemExit(f'--crop-size {args.crop_size[0]} {args.crop_size[1]} must fit in --height '
                             f'{args.height} x --width {args.width}.')
    if args.depth_scale is not None and not (args.data == 'folder' and args.depth_scale > 0):
        raise SystemExit('--depth-scale applies to --data folder\'s PNG depth maps and must be above 0 (e.g. 0.001).')
    if args.workers < 0:
        raise SystemExit(f'--workers must be 0 (read data in this process) or more; got {args.workers}.')
    try:
        models.check_encoder_decoder(args.arch, args.decoder)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    xnet_flags = args.decoder_init != 'none' or args.xnet_mix != 'stem' or args.xnet_pyramid or args.no_pfp
    if args.decoder != 'xnet' and xnet_flags:
        raise SystemExit('--decoder-init, --xnet-mix, --xnet-pyramid and --no-pfp apply to --decoder xnet only.')


def check_length(args, default_iters):
    """--iters or --epochs says how long to train, not both; neither: `default_iters` iterations."""
    if args.epochs is not None and args.iters is not None:
        raise SystemExit(f'--epochs {args.epochs} and --iters {args.iters} both say how long to train: give one.')
    if args.epochs is not None and args.epochs < 1:
        raise SystemExit(f'--epochs must be at least 1; got {args.epochs}.')
    if args.epochs is None and args.iters is None:
        args.iters = default_iters


def resolve_epochs(args, train_set):
    """With --epochs: --iters becomes that many epochs of the training set (epoch_batches's epochs, which drop
    the last incomplete batch), recorded in args.json like a given --iters."""
    if args.epochs is None:
        return
    check_not_empty(train_set)
    count = len(train_set)
    args.iters = args.epochs * batches_per_epoch(count, args.batch_size)
    print(f'--epochs {args.epochs}: {args.iters} iterations of batch {min(args.batch_size, count)} over {count} '
          f'training items.')
    check_warmup(args)


def check_warmup(args):
    """--warmup must leave iterations to decay over."""
    if not 0 <= args.warmup < args.iters:
        raise SystemExit(f'--warmup must be between 0 and --iters - 1 ({args.iters - 1}); got {args.warmup}.')


# ----------------------------------------------------------------------------------------------------
# Where a run computes, what it reads, where it starts from
# ----------------------------------------------------------------------------------------------------

def pick_device(name):
    """The torch device; CUDA-only speedups (cudnn autotuning) are switched on only there."""
    try:
        device = torch.device('cuda' if name == 'auto' and torch.cuda.is_available() else
                              'cpu' if name == 'auto' else name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ('cpu', 'cuda'):
        raise SystemExit(f'--device {name} is not a device this code runs on: pass auto, cpu, cuda or cuda:N.')
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise SystemExit(f'--device {name} was asked for but no CUDA GPU is visible; use --device cpu.')
        if (device.index or 0) >= torch.cuda.device_count():
            raise SystemExit(f'--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), cuda:0 '
                             f'to cuda:{torch.cuda.device_count() - 1}.')
        torch.backends.cudnn.benchmark = True
    return device


def autocast(device):
    """bfloat16 autocast for the networks on GPUs that support it; a no-op on CPU."""
    enabled = device.type == 'cuda' and torch.cuda.is_bf16_supported()
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def dataset_name(args):
    """The run-name part naming the dataset: none for KITTI's layout (the toy world's and real KITTI's)."""
    return [] if data.LAYOUTS[args.data] is data.Kitti else [args.data]


def init_encoders(args, *encoders):
    """Start encoders from ImageNet weights with --init imagenet, each its own architecture's (a ConvNeXt
    depth network's PoseNet is a ResNet-18; PoseNet's conv1 repeated and halved)."""
    if args.init == 'none':
        return
    try:
        for encoder in encoders:
            models.load_imagenet_weights(encoder, encoder.arch)
    except FileNotFoundError as error:
        raise SystemExit(f'--init imagenet: {error}') from None
    archs = ' and '.join(dict.fromkeys(encoder.arch for encoder in encoders))
    print(f'Initialised {len(encoders)} encoder(s) from torchvision\'s ImageNet {archs} weights; the rest is new.')


def init_weights(init, flag='--init'):
    """The weights a flag names, as (path, models.Weights): an existing file or Hugging Face folder, or a name
    (depth, flow) of checkpoints/<name>.pt; what models.read_weights cannot read stops with one sentence."""
    path = Path(init) if Path(init).exists() or init.endswith('.pt') else Path(f'checkpoints/{init}.pt')
    if not path.exists():
        hint = (f'run `python pretrain.py --task {init}` first' if path.parent == Path('checkpoints')
                and init in ('depth', 'flow') else 'check the path')
        raise SystemExit(f'{flag} {init}: {path} does not exist; {hint}.')
    try:
        return path, models.read_weights(path)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f'{flag} {init}: {error}') from None


def load_weights(net, weights, parts, flag):
    """models.load_pretrained, its one-sentence refusals made the run's exit."""
    try:
        return models.load_pretrained(net, weights, parts, quiet=flag == '--decoder-init')
    except ValueError as error:
        raise SystemExit(f'{flag}: {error}') from None


def init_decoder_backbone(net, args):
    """--decoder-init: start xNet's reversed decoder (a ResNet or ConvNeXt of --arch) from pre-trained weights,
    independently of the encoder's: torchvision's ImageNet weights, or the encoder of a weight file (`depth`:
    a depth-pretrained network used as the decoder, where the two papers meet). The backbone's keys are
    torchvision's, so it loads strictly."""
    if args.decoder_init == 'none':
        return
    backbone = net.decoder.backbone
    if args.decoder_init == 'imagenet':
        try:
            models.load_imagenet_weights(backbone, args.arch)
        except FileNotFoundError as error:
            raise SystemExit(f'--decoder-init imagenet: {error}') from None
        print(f'Initialised the reversed decoder from torchvision\'s ImageNet {args.arch} weights.')
        return
    path, weights = init_weights(args.decoder_init, '--decoder-init')
    holder = torch.nn.Module()  # the weights' encoder tensors go to the backbone, under the holder's 'encoder.'
    holder.encoder = backbone
    load_weights(holder, weights, ('encoder.',), '--decoder-init')
    print(f'Initialised the reversed decoder from the encoder of {weights.source}.')


# ----------------------------------------------------------------------------------------------------
# Optimisers and learning-rate schedules, the same in both scripts
# ----------------------------------------------------------------------------------------------------

def make_optimizer(networks, args):
    """--optim over the trainable parameters of `networks` (a list of modules), their encoders' at
    --lr x --encoder-lr-mult (xNet, App. A: a pre-trained encoder learns more slowly than the rest)."""
    named = [(name, p) for net in networks for name, p in net.named_parameters() if p.requires_grad]
    encoder = [p for name, p in named if name.startswith('encoder.')]
    rest = [p for name, p in named if not name.startswith('encoder.')]
    groups = [dict(params=rest)] + ([dict(params=encoder, lr=args.lr * args.encoder_lr_mult)] if encoder else [])
    if args.optim == 'sgd':
        return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    optimizer = torch.optim.AdamW if args.optim == 'adamw' else torch.optim.Adam
    return optimizer(groups, lr=args.lr, weight_decay=args.weight_decay)


def lr_schedule(name, iters, warmup=0, step_at=0.75, step_factor=0.1):
    """The learning-rate factor at each iteration: linear warm-up over `warmup` iterations, then, over the
    rest, cosine (App. B.2), polynomial with power 0.9 (DeepLab, App. B.4), linear decay towards 0 (App. B.4,
    xNet), constant, or a step to `step_factor` after `step_at` of them (Monodepth2; the NYU recipe, App. B.5)."""
    def factor(it):
        if it < warmup:
            return (it + 1) / warmup
        if name == 'step':
            return 1.0 if it - warmup < step_at * (iters - warmup) else step_factor
        t = min(it - warmup, iters - warmup) / (iters - warmup)
        return {'cosine': 0.5 * (1 + math.cos(math.pi * t)), 'poly': (1 - t) ** 0.9, 'linear': 1 - t,
                'constant': 1.0}[name]
    return factor


# ----------------------------------------------------------------------------------------------------
# The training stream: seeded, resumable
# ----------------------------------------------------------------------------------------------------

def batches_per_epoch(count, batch_size):
    """The batches of one epoch of `count` items (epoch_batches drops an epoch's last incomplete batch)."""
    return count // min(batch_size, count)


def epoch_batches(count, batch_size, seed, start=0):
    """Batches of (item, draw) pairs of a set of `count` items, epoch after epoch, without end: epoch e
    visits the items in the order of randperm(count) seeded with seed + e, drops its last incomplete
    batch (unless the set is smaller than one batch: then each batch is the whole set) and `draw` numbers
    the items drawn since the start. Batch k depends on nothing but k, so a resumed run continues the
    stream exactly where it stopped (start = the iterations done)."""
    size, per_epoch = min(batch_size, count), batches_per_epoch(count, batch_size)
    order, epoch = None, None
    for k in itertools.count(start):
        if k // per_epoch != epoch:
            epoch = k // per_epoch
            order = data.seeded_permutation(count, seed + epoch)
        first = (k % per_epoch) * size
        yield [(item, k * size + j) for j, item in enumerate(order[first:first + size])]


class SeededDraws(torch.utils.data.Dataset):
    """A training set whose every random choice (flips, colour jitter, crops) is seeded by the run's seed
    and the draw's number: the same draw gets the same augmentation in whichever process reads it, and
    after a resume."""

    def __init__(self, dataset, seed):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, pair):
        item, draw = pair
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + draw)
            return self.dataset[item]


def check_not_empty(dataset):
    """An empty training set stops the run with a sentence."""
    if not len(dataset):
        raise SystemExit('the training split lists no items: check its split file (--split), or write splits '
                         'with `python data.py --make-splits <data-root>`.')


def training_batches(dataset, args, device, start=0):
    """The training stream from iteration `start` on, one global batch of epoch_batches (of SeededDraws) per
    step, read by --workers processes: each item is the list of this process's --grad-accum micro-batches of
    that batch (its share under torchrun: micro_batches). A set smaller than one batch says so and trains as
    one smaller batch; an empty one stops."""
    check_not_empty(dataset)
    if len(dataset) < args.batch_size:
        print(f'The training set holds {len(dataset)} items, fewer than --batch-size {args.batch_size}: '
              f'each batch is all {len(dataset)} of them.')
        check_shares(len(dataset), args.grad_accum, '--batch-size (the whole training set)')
    ddp = Distributed()
    shares = (micro for pairs in epoch_batches(len(dataset), args.batch_size, args.seed, start)
              for micro in micro_batches(pairs, ddp.rank, ddp.size, args.grad_accum))
    loader = iter(torch.utils.data.DataLoader(SeededDraws(dataset, args.seed), batch_sampler=shares,
                                              num_workers=args.workers, pin_memory=device.type == 'cuda',
                                              worker_init_fn=leave_stop_signals_to_the_main_process))
    return (list(itertools.islice(loader, args.grad_accum)) for _ in itertools.count())


def micro_batches(pairs, rank, size, micro):
    """Process `rank`'s share of a global batch (its `rank`-th of `size` equal slices), split into `micro`
    equal micro-batches: which items form batch k depends on k alone, whatever the number of processes."""
    share = len(pairs) // size
    mine, each = pairs[rank * share:(rank + 1) * share], share // micro
    return [mine[i * each:(i + 1) * each] for i in range(micro)]


@contextlib.contextmanager
def unreadable_files_stop():
    """A data file that cannot be read, wherever an item read it (a training batch, a sample, an evaluation;
    in this process or in a DataLoader worker), stops the script with its reader's one sentence. However the
    script ends, no DataLoader worker outlives it: workers ignore SIGTERM and Ctrl-C
    (leave_stop_signals_to_the_main_process), so Python's exit, which ends them with SIGTERM and waits, would
    wait for ever on a worker whose loader an exception left open."""
    try:
        yield
    except data.UnreadableFile as error:
        raise SystemExit(data.reader_sentence(error)) from None
    finally:
        workers = multiprocessing.active_children()
        if workers:  # torch's SIGCHLD handler would report them as crashed
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for worker in workers:
            worker.kill()


def to_device(batch, device):
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------------
# More than one process: torchrun and DistributedDataParallel
# ----------------------------------------------------------------------------------------------------

def check_shares(batch_size, grad_accum, what='--batch-size'):
    """A global batch must split into equal micro-batches: WORLD_SIZE processes x --grad-accum each."""
    size = int(os.environ.get('WORLD_SIZE', 1))
    if batch_size % (size * grad_accum):
        raise SystemExit(f'{what} {batch_size} does not split into {size} process(es) x --grad-accum {grad_accum} '
                         f'equal micro-batches: pass a --batch-size that is a multiple of {size * grad_accum}.')


@contextlib.contextmanager
def processes(args):
    """The script's device, for the `with` block around its run. One process: --device. Under torchrun (it sets
    RANK, LOCAL_RANK and WORLD_SIZE): one device per process (cuda:LOCAL_RANK, or the CPU) and the process
    group, nccl on CUDA, gloo on the CPU, joined here and left on exit. Rank 0 alone prints (the others'
    standard output goes nowhere; their errors still show) and renders the toy world while the others wait.
    A collective that fails because another process died stops this one with a sentence."""
    check_shares(args.batch_size, args.grad_accum)
    if 'RANK' not in os.environ:
        yield check_sync_bn(args, pick_device(args.device))
        return
    rank, local_rank = int(os.environ['RANK']), int(os.environ['LOCAL_RANK'])
    if ':' in args.device:
        raise SystemExit(f'--device {args.device}: under torchrun each process takes the GPU of its LOCAL_RANK; '
                         f'pass --device auto, cuda or cpu (CUDA_VISIBLE_DEVICES picks the GPUs).')
    cuda = args.device == 'cuda' or args.device == 'auto' and torch.cuda.is_available()
    device = check_sync_bn(args, pick_device(f'cuda:{local_rank}' if cuda else args.device))
    if cuda:
        torch.cuda.set_device(device)
    torch.distributed.init_process_group('nccl' if cuda else 'gloo', device_id=device if cuda else None)
    try:
        with contextlib.nullcontext() if rank == 0 else contextlib.redirect_stdout(open(os.devnull, 'w')):
            if args.data == 'toy' and rank == 0:
                data.data_root(args)
            torch.distributed.barrier()
            yield device
    except torch.distributed.DistError as error:
        raise SystemExit(f'process {rank} stopped: another process of the run stopped first ({type(error).__name__}; '
                         f'its own message says why): `--resume` continues from the last checkpoint.') from None
    finally:
        torch.distributed.destroy_process_group()


def check_sync_bn(args, device):
    """--sync-bn synchronises batch norm over GPUs (NCCL): the CPU refuses it. Returns `device`."""
    if args.sync_bn and device.type != 'cuda':
        raise SystemExit('--sync-bn synchronises batch norm across GPUs (NCCL), and this run is on the CPU: leave '
                         'it out (each process then normalises its own share of the batch).')
    return device


class Distributed:
    """This process's place among torchrun's (rank 0 of 1 in a plain run: then every method does nothing) and
    what a loop asks of the others: DistributedDataParallel's wrapper, gradients held back while micro-batches
    accumulate, a barrier, and one agreement per step on the loss and on stopping."""

    def __init__(self):
        self.on = torch.distributed.is_initialized()
        self.rank = torch.distributed.get_rank() if self.on else 0
        self.size = torch.distributed.get_world_size() if self.on else 1
        self.main = self.rank == 0  # the one writer: logs, evaluates, prints, saves, exports

    def wrap(self, net, sync_bn=False, outputs=None):
        """`net` as the loss runs it: under torchrun DistributedDataParallel's wrapper (gradients averaged over
        the processes; the module's own state dict is what checkpoints hold), with --sync-bn SyncBatchNorm.
        What no step reaches (models.freeze_untrained; `outputs`: the output scales the loss reads) is frozen
        first, so that DistributedDataParallel needs no find_unused_parameters; the optimiser, built before,
        holds the same parameters in one process and in several, so a checkpoint resumes with any number."""
        if not self.on:
            return net
        models.freeze_untrained(net, outputs)
        if sync_bn:
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        device = next(net.parameters()).device
        return torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == 'cuda' else None)

    def no_sync(self, wrapped, last):
        """While a micro-batch that is not the step's `last` runs backward: the wrappers' gradients add up in
        each process and are averaged over the processes only with the last."""
        stack = contextlib.ExitStack()
        if self.on and not last:
            for net in wrapped:
                stack.enter_context(net.no_sync())
        return stack

    def barrier(self):
        """The others wait here for rank 0 (its evaluation, its checkpoint)."""
        if self.on:
            torch.distributed.barrier()

    def agree(self, stop, loss=None):
        """Once a step, in every process: the global batch's mean loss (of `loss`, this process's mean), and
        `stop.signal` set to a stop any process was sent (SIGTERM before Ctrl-C), so that all stop at the
        same step. One process: `loss` as it is."""
        if not self.on:
            return loss
        asked = [float(stop.signal == number) for number in StopOnSignal.SIGNALS]
        where = 'cuda' if torch.distributed.get_backend() == 'nccl' else 'cpu'  # nccl reduces on the GPU
        mine = torch.tensor([0.0 if loss is None else loss.item()] + asked, dtype=torch.float64, device=where)
        torch.distributed.all_reduce(mine)
        total, *counts = mine.tolist()
        stop.signal = next((number for number, count in zip(StopOnSignal.SIGNALS, counts) if count), None)
        return None if loss is None else torch.tensor(total / self.size)


# ----------------------------------------------------------------------------------------------------
# Called from inside each script's loop: a stop asked for, a loss that is not finite, timing, the log line
# ----------------------------------------------------------------------------------------------------

class StopOnSignal:
    """SIGTERM (what a cluster or `timeout` sends before it kills) and Ctrl-C (SIGINT), caught while a run
    trains: the handler only takes note, so the step under way finishes; train() then saves a checkpoint and
    calls exit(). A second signal acts at once, as it would without this (a stuck step can still be stopped),
    except under torchrun, whose agent passes on the signal it got (a Ctrl-C reaches each process twice) and
    kills what still runs 30 s later. The previous handlers come back on leaving the `with` block."""
    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __enter__(self):
        self.signal = None
        self.previous = {number: signal.signal(number, self.note) for number in self.SIGNALS}
        return self

    def note(self, number, frame):
        if self.signal is not None and 'RANK' not in os.environ:
            self.__exit__()
            signal.raise_signal(number)
        self.signal = number

    def __exit__(self, *error):
        for number, handler in self.previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)

    def exit(self, iteration):
        """One line, no traceback, and the exit status of a process ended by the signal: 128 + its number
        (143 for SIGTERM, 130 for Ctrl-C), so a cluster or shell script sees what happened."""
        print(f'stopped at iteration {iteration}: `--resume` continues')
        raise SystemExit(128 + self.signal)


def leave_stop_signals_to_the_main_process(worker_id):
    """A DataLoader worker ignores SIGTERM and Ctrl-C, which reach the whole process group: the main process
    finishes its step and ends the workers; a worker killed by them would instead crash that step."""
    for number in StopOnSignal.SIGNALS:
        signal.signal(number, signal.SIG_IGN)


def check_finite(loss, iteration, lr, run=None):
    """A NaN or infinite loss stops the run before it is back-propagated (on a NaN sampling grid, grid_sample's
    backward can crash the whole process on CPU), and before anything is overwritten."""
    if not torch.isfinite(loss):
        kept = f'the last checkpoint {run.checkpoint} was left as it was' if run else 'nothing was written'
        raise SystemExit(f'the loss became {loss.item()} at iteration {iteration}: lower --lr (now {lr:g}) or '
                         f'check the input data; {kept}.')


def benchmark(step, batches, steps, batch_size, device):
    """--bench: time `steps` real training steps (`step(batch)`, the script's own) after one warm-up: images/s,
    ms/step, data-wait share, memory. No run folder is written."""
    step(next(batches))
    wait = total = 0.0
    for _ in range(steps):
        start = time.perf_counter()
        batch = next(batches)
        waited = time.perf_counter()
        step(batch)
        if device.type == 'cuda':
            torch.cuda.synchronize()
        wait, total = wait + waited - start, total + time.perf_counter() - start
    processes = Distributed().size
    where = f'{processes} processes on {device.type}' if processes > 1 else device
    print(f'bench: {steps} steps, batch {batch_size}, {where}: {steps * batch_size / total:.2f} images/s, '
          f'{1000 * total / steps:.0f} ms/step, waiting for data {100 * wait / total:.1f}%, '
          f'peak memory {peak_memory_mb(device):.0f} MB')


def peak_memory_mb(device):
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# The measures printed after each evaluation: key -> (label, shown in %).
SUMMARY = {'miou7': ('mIoU(7)', True), 'miou': ('mIoU', True), 'pixel_acc': ('pixel acc', True),
           'abs_rel': ('abs_rel', False), 'rmse': ('rmse', False), 'a1': ('δ<1.25', False),
           'si_rmse': ('SI-RMSE', False), 'epe': ('EPE px', False), 'fl': ('Fl', True)}


def metrics_line(metrics, baseline):
    """One line: each headline measure (those that are not NaN: mIoU(7) of NYU's classes), with the
    baseline's value in brackets."""
    def show(value, percent):
        return f'{100 * value:.1f} %' if percent else f'{value:.3f}'
    line = ', '.join(f'{label} {show(metrics[key], percent)}'
                     + (f' (baseline {show(baseline[key], percent)})' if key in baseline else '')
                     for key, (label, percent) in SUMMARY.items() if key in metrics and metrics[key] == metrics[key])
    if metrics.get('scale_std'):  # median scaling: its ratios as Monodepth2 prints them
        line += f', scale ratios median {metrics["median_scale"]:.3f} (std {metrics["scale_std"]:.3f})'
    if 'images' in metrics:
        line += f' on {metrics["images"]} frames' + (f' ({metrics["skipped"]} skipped)' if metrics['skipped'] else '')
    return line


# ----------------------------------------------------------------------------------------------------
# Run folders, resume, files written atomically
# ----------------------------------------------------------------------------------------------------

class Run:
    """A run folder runs/<name>/: args.json, metrics.jsonl, sample PNGs and checkpoint.pt.

    A folder holding a checkpoint is never overwritten: a new run refuses it, --resume reopens it, drops
    metrics logged after its last checkpoint, and returns that checkpoint to continue from. A folder without
    a checkpoint holds no results (a start that stopped before its first save): it is reused, with or
    without --resume. Temporary files a crash left behind are removed, and a lock file keeps a second
    process out of the folder while one runs.
    """

    def __init__(self, args, writer=True):
        self.path = Path(args.runs) / args.name
        self.checkpoint = self.path / 'checkpoint.pt'
        self.metrics = self.path / 'metrics.jsonl'
        self.resume = args.resume and self.checkpoint.exists()
        self.writer = writer  # False: another process of a torchrun run than rank 0, which reads the folder only
        if self.path.exists() and not self.path.is_dir():
            raise SystemExit(f'{self.path} is a file, not a run folder: pass another --name or --runs.')
        if args.resume and not self.resume:
            print(f'--resume: {self.path} holds no checkpoint yet, so the run starts from the beginning.')
        elif self.checkpoint.exists() and not args.resume:
            raise SystemExit(f'{self.path} already holds a run: pass --resume to continue it, or --name '
                             f'to start a new one (nothing was overwritten).')
        elif self.path.is_dir() and any(self.path.iterdir()) and not self.resume:
            print(f'Reusing {self.path}: it holds no checkpoint (an earlier start stopped before its first save).')
        self.args = vars(args)
        self.changes = resumed_changes(self.path / 'args.json', self.args) if self.resume else {}
        if not writer:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SystemExit(f'cannot make the run folder {self.path} ({error.strerror}): pass a writable --runs.') from None
        why = data.unwritable(self.path)
        if why:
            raise SystemExit(f'cannot write into the run folder {self.path} ({why}): make it writable, or copy it to a '
                             f'writable --runs and run there.')
        self.lock()
        for stale in self.path.glob('*.tmp'):  # a crash between writing and renaming
            stale.unlink()
        if not self.resume:
            self.metrics.unlink(missing_ok=True)
            write_text_atomic(self.path / 'args.json', json.dumps(self.args, indent=1) + '\n')

    def lock(self):
        """Hold <run>/lock (this process's id) until exit; a lock of a live process stops this one."""
        lock = self.path / 'lock'
        for _ in range(2):
            try:
                descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = lock.read_text().strip()
                if owner == str(os.getpid()):  # this process ran it before (a script calling main() twice)
                    return
                if owner.isdigit() and _alive(int(owner)):
                    raise SystemExit(f'{self.path} is in use by process {owner} (its lock file {lock} names it): wait '
                                     f'for that run to finish, or stop it; if process {owner} is no run of this code '
                                     f'(its id was reused after a crash), delete {lock} and run again.') from None
                lock.unlink(missing_ok=True)  # its process is gone: the lock is stale
                continue
            os.write(descriptor, str(os.getpid()).encode())
            os.close(descriptor)
            atexit.register(lock.unlink, missing_ok=True)
            return
        raise SystemExit(f'could not take the lock {lock}: another process keeps making it; try again.')

    def restore(self, networks, optimizer, scheduler):
        """(iteration, metrics) to continue from: with --resume, the last checkpoint loaded into `networks`
        ({checkpoint key: module}), the optimiser, the schedule and the random generators, metrics logged after it
        dropped (a torn last line too), and the flags --resume changed applied; else (0, {})."""
        if not self.resume:
            return 0, {}
        state = self.read_checkpoint()
        for key, net in networks.items():
            net.load_state_dict(state[key])
        try:
            optimizer.load_state_dict(state['optimizer'])
        except ValueError as error:  # other parameter groups: older code (pretrain.py's Adam had one group)
            raise SystemExit(f'--resume: the optimiser in {self.checkpoint} does not fit this run\'s ({error}); it '
                             f'was written by another version of this code: start a new run (--name).') from None
        scheduler.load_state_dict(state['scheduler'])
        if 'rng' in state:
            set_rng_state(state['rng'])
        if 'lr' in self.changes:  # every group's rate, and the schedule's base, scaled to the new --lr
            factor = self.changes['lr'][1] / self.changes['lr'][0]
            scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
            for group in optimizer.param_groups:
                group['lr'] *= factor
                group['initial_lr'] *= factor
        changed = ''.join(f', --{k.replace("_", "-")} {now} (was {was})' for k, (was, now) in self.changes.items())
        print(f'Resuming {self.path} at iteration {state["iter"]}{changed}.')
        return state['iter'], state['metrics']

    def read_checkpoint(self):
        """The checkpoint to resume from (models.read_checkpoint), with metrics logged after it removed."""
        try:
            state = models.read_checkpoint(self.checkpoint, advice='start a new run (--name)')
        except ValueError as error:
            raise SystemExit(str(error)) from None
        if state['iter'] > self.args['iters']:  # before anything in the folder changes
            raise SystemExit(f'--iters {self.args["iters"]} is below iteration {state["iter"]}, where '
                             f'{self.checkpoint} already is: resume with --iters {state["iter"]} or more (training cannot be undone).')
        if not self.writer:
            return state
        if self.metrics.exists():
            try:
                records = read_jsonl(self.metrics)
            except ValueError as error:
                raise SystemExit(f'--resume: {error}') from None
            kept = [record for record in records if record['iter'] <= state['iter']]
            write_text_atomic(self.metrics, ''.join(json.dumps(record) + '\n' for record in kept))
        if self.changes:  # recorded with the iteration they take effect at, in args.json and the log
            history = read_args(self.path / 'args.json').get('changes', [])
            history.append(dict(iter=state['iter'], **self.changes))
            write_text_atomic(self.path / 'args.json', json.dumps(dict(self.args, changes=history), indent=1) + '\n')
            self.log(iter=state['iter'], split='resume', **self.changes)
        return state

    def log_baseline(self, baseline):
        """Log what a trivial prediction scores, once (a resumed run logged it when it started)."""
        if baseline and not self.resume:
            self.log(iter=0, split='baseline', **baseline)

    def log(self, **entry):
        with open(self.metrics, 'a') as f:
            f.write(json.dumps(entry) + '\n')

    def save(self, state):
        save_atomic(state, self.checkpoint)


# What --resume may change: how long (--iters, or --epochs), how fast, how often it logs, evaluates and saves, and where it runs
# (on how many processes, in how many micro-batches) and reads and writes (a run folder may be moved). Every other flag defines the run and must stay as it was.
CHANGEABLE_ON_RESUME = ('iters', 'epochs', 'lr', 'log_every', 'eval_every', 'save_every', 'workers', 'device', 'data_root',
                        'out', 'overwrite', 'runs', 'name', 'grad_accum', 'sync_bn')


def read_args(path):
    """A run's flags, from its args.json. A file that is missing or damaged (not a JSON object) raises a
    ValueError naming it, to which the caller adds what to do."""
    try:
        flags = json.loads(Path(path).read_text())
    except OSError as error:
        raise ValueError(f'{path} cannot be read ({error.strerror})') from None
    except ValueError as error:  # not UTF-8, not JSON
        raise ValueError(f'{path} is damaged (not JSON: {error})') from None
    if not isinstance(flags, dict):
        raise ValueError(f'{path} is damaged (a JSON {type(flags).__name__}, not the run\'s flags)')
    return flags


def resumed_changes(args_file, args):
    """{flag: [before, now]} of the changeable flags a --resume changes; a change to any other flag stops
    with one sentence naming them."""
    try:
        before = read_args(args_file)
    except ValueError as error:
        raise SystemExit(f'--resume: {error}, so the run\'s flags are unknown: start a new run (--name).') from None
    differ = [k for k in args if k not in ('resume', 'changes') and k in before and before[k] != args[k]]
    fixed = [k for k in differ if k not in CHANGEABLE_ON_RESUME]
    if fixed:
        flags = ', '.join(f'--{k.replace("_", "-")} (was {before[k]}, now {args[k]})' for k in fixed)
        raise SystemExit(f'--resume cannot change what defines the run: {flags}; resume with the flags it was '
                         f'started with, or start a new run (--name).')
    if 'lr' in differ and before['lr'] == 0:
        raise SystemExit('--resume cannot change --lr from 0: no rate to scale the parameter groups from; start a '
                         'new run (--name).')
    return {k: [before[k], args[k]] for k in differ}


def _alive(pid):
    """Whether a process with this id runs (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def rng_state():
    """The random generators' states (Python, NumPy, torch, CUDA's when present), saved in every checkpoint.
    The training stream does not depend on them (epoch_batches, SeededDraws); code that draws from them
    between steps then continues as it would have."""
    return dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def set_rng_state(state):
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'].cpu())
    if state['cuda'] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state['cuda']])


def read_jsonl(path):
    """One dict per line. A torn last line (a run stopped, or still is, while writing it) is left out with
    a warning; a torn earlier line is an error."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise ValueError(f'{path} line {number} is not valid JSON: the file is damaged; delete that line.') from None
            print(f'warning: the last line of {path} is torn (its run stopped while writing it): it is left out.',
                  file=sys.stderr)
    return records


def write_atomic(path, write, need_mb=None):
    """Write a file through a temporary file and a rename (`write(tmp)` writes it): a crash never leaves a
    half-written file. A write that fails (a full disk) removes its temporary file and stops with a sentence;
    the previous file stays as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    try:
        write(tmp)
    except (OSError, RuntimeError) as error:
        tmp.unlink(missing_ok=True)
        need = f'it needs about {need_mb:.0f} MB and ' if need_mb is not None else ''
        free = shutil.disk_usage(path.parent).free / 2 ** 20
        then = ('continue with --resume (the previous checkpoint is intact)' if need_mb is not None
                else 'run again (the previous file is intact)')
        raise SystemExit(f'could not write {path} ({str(error).splitlines()[0][:120]}): {need}{free:.0f} MB are free '
                         f'there; free some space, then {then}.') from None
    os.replace(tmp, path)


def save_atomic(obj, path):
    """torch.save, atomically (write_atomic)."""
    need = sum(t.numel() * t.element_size() for t in _tensors(obj)) / 2 ** 20
    write_atomic(path, lambda tmp: torch.save(obj, tmp), need)


def _tensors(obj):
    """Every tensor inside nested dicts and lists."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


def write_text_atomic(path, text):
    """A text file, atomically (write_atomic)."""
    write_atomic(path, lambda tmp: tmp.write_text(text))


def check_export(args):
    """--out, checked before training: a writable file path outside run folders, and not another run's
    export (unless --overwrite): one sentence otherwise. A temporary file of an interrupted export is removed."""
    out = Path(args.out)
    folder = out.resolve().parent
    if folder == (Path(args.runs) / args.name).resolve() or (folder / 'args.json').is_file():
        raise SystemExit(f'--out {out} is inside the run folder {folder}, whose checkpoint.pt --resume continues '
                         f'from: export outside run folders (e.g. the default checkpoints/{args.task}.pt).')
    if out.is_dir():
        raise SystemExit(f'--out {out} is a folder: give the checkpoint file to write, e.g. {out}/{args.task}.pt.')
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        blocking = next((a for a in out.parents if a.exists() and not a.is_dir()), None)
        why = f'{blocking} is a file, not a folder' if blocking else error.strerror
        raise SystemExit(f'--out {out}: cannot make its folder ({why}): pass a path you can write.') from None
    if not os.access(out.parent, os.W_OK):
        raise SystemExit(f'--out {out}: its folder {out.parent} is not writable: pass a path you can write.')
    out.with_name(out.name + '.tmp').unlink(missing_ok=True)  # left by a run killed while exporting
    if out.is_file() and not args.overwrite:
        try:
            owner = (models.read_checkpoint(out).get('args') or {}).get('name')
        except ValueError:
            owner = None
        if owner != args.name:
            raise SystemExit(f'--out {out} already holds the export of {"run " + owner if owner else "another run"}: '
                             f'pass another --out, or --overwrite to replace it.')
