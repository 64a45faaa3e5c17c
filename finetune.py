"""Few-shot fine-tuning from a pre-trained network: semantic segmentation (paper Sect. 4.1, App. B.2),
or depth (the reverse direction of the minimal-transfer paper).

The segmentation network is the depth network with its last layer replaced by a fresh K-class 1x1
convolution at the finest scale (Fig. 1b): `--init depth` copies the depth checkpoint's encoder and
decoder, `--init flow` only the flow network's encoder, `--init imagenet` torchvision's ImageNet encoder,
`--init none` starts from random weights. `--reset-decoder` keeps only the encoder's initialisation
(Table 2, "encoder only"); `--decoder deeplab` puts torchvision's DeepLabV3 head on the (dilated)
pre-trained encoder instead, the common practice of Fig. 1a/1c. `--freeze-encoder` keeps the encoder's
weights and its BatchNorm statistics fixed and trains the rest (Fig. 1d).

Segmentation minimises the negative log-likelihood (eq. 12) on `--train-size` labelled images picked
with the seed; every other labelled image is the evaluation set. `--task depth` instead fits
ground-truth depth (L1 of eq. 15 or SILog) on `--train-size` frames of the training drives and is
scored on the test drive with the full depth table. Optimisers and schedules: Adam with a cosine
schedule per iteration by default (App. B.2), or AdamW / SGD, polynomial or linear decay, warm-up, and a
smaller learning rate for the encoder.

Top to bottom: what transfers from a checkpoint, the optimisers and schedules, the two tasks (their data,
loss and evaluation), the command line. The run's bookkeeping (run folder, --resume, checkpoints, --bench)
is training.fit's.

    python finetune.py --init depth --freeze-encoder
    python finetune.py --init none
    python finetune.py --init imagenet --decoder deeplab
    python finetune.py --task depth --init runs/seg-depth-unet-full-n16-resnet18-64x192-s0/checkpoint.pt --loss silog
"""
import argparse
import math
import re
from pathlib import Path

import torch

import data
import evaluate
import losses
import models
import training
from pretrain import depth_evaluation, supervised_depth_loss
from training import autocast



# ----------------------------------------------------------------------------------------------------
# What transfers, how it trains, what it is scored on
# ----------------------------------------------------------------------------------------------------

def transferable_parts(checkpoint, args):
    """Which parts of a checkpoint's network carry over: the encoder always; the decoder when it is the
    same kind and not reset (never from flow, whose decoder reads two frames); the head when the task
    is the same too (a depth checkpoint fine-tuned for depth, a segmentation one for segmentation on the
    same classes: a head of NYU's 40 classes does not fit Cityscapes' 19)."""
    parts = ['encoder.']
    same_decoder = (checkpoint.get('decoder', 'unet') == args.decoder and checkpoint['task'] != 'flow'
                    and checkpoint.get('xnet') == models.xnet_options(args))  # xNet variants differ in shape
    if same_decoder and not args.reset_decoder:
        parts.append('decoder.')
        if checkpoint['task'] == args.task and not other_classes(checkpoint, args):
            parts.append('head.')
    return parts


def other_classes(checkpoint, args):
    """The number of classes of a segmentation checkpoint whose classes are not --data's, else None."""
    classes = checkpoint.get('num_classes')
    return classes if checkpoint['task'] == args.task == 'seg' and classes not in (None, num_classes(args)) else None


def build_network(args):
    """The network for --task and --decoder, initialised as --init says; image normalisation follows the
    weights (ImageNet mean/std for ImageNet weights, else what the checkpoint was trained with)."""
    checkpoint = None
    if args.init not in ('none', 'imagenet'):
        path, checkpoint = training.init_checkpoint(args.init)
        if checkpoint.get('arch') != args.arch:
            raise SystemExit(f'--init {args.init}: {path} holds a {checkpoint.get("arch")} network; '
                             f'pass --arch {checkpoint.get("arch")}.')
    normalization = checkpoint['normalization'] if checkpoint else 'imagenet' if args.init == 'imagenet' else 'unit'
    xnet = models.xnet_options(args)
    net = (models.build_seg_net(args.arch, num_classes(args), normalization, args.decoder, xnet) if args.task == 'seg'
           else models.build_depth_net(args.arch, normalization, args.decoder, xnet))
    if args.init == 'imagenet':
        training.init_encoders(args, net.encoder)
    elif checkpoint:
        parts = transferable_parts(checkpoint, args)
        try:
            loaded = models.load_parts(net, checkpoint['model'], parts, source=str(path))
        except ValueError as error:
            raise SystemExit(f'--init {args.init}: {error}') from None
        new = [p[:-1] for p in ('decoder.', 'head.') if p not in parts]
        why = (' (a flow network\'s decoder reads two frames\' features: it does not transfer)'
               if checkpoint['task'] == 'flow' else
               f' (its head predicts {other_classes(checkpoint, args)} classes, --data {args.data} has '
               f'{num_classes(args)})' if other_classes(checkpoint, args) and 'decoder.' in parts else '')
        print(f'Initialised {len(loaded)} tensors of the {", ".join(p[:-1] for p in parts)} from {path} '
              f'({checkpoint["task"]}, {checkpoint.get("decoder", "unet")} decoder, {normalization} normalisation); '
              f'new: {", ".join(new) or "nothing"}{why}.')
    training.init_decoder_backbone(net, args)
    return net


def make_optimizer(net, args):
    """--optim over the trainable parameters, the encoder's at --lr x --encoder-lr-mult."""
    encoder = [p for p in net.encoder.parameters() if p.requires_grad]
    rest = [p for name, p in net.named_parameters() if not name.startswith('encoder.') and p.requires_grad]
    groups = [dict(params=rest)] + ([dict(params=encoder, lr=args.lr * args.encoder_lr_mult)] if encoder else [])
    if args.optim == 'sgd':
        return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    optimizer = torch.optim.AdamW if args.optim == 'adamw' else torch.optim.Adam
    return optimizer(groups, lr=args.lr, weight_decay=args.weight_decay)


def lr_schedule(name, iters, warmup=0):
    """The learning-rate factor at each iteration: linear warm-up over `warmup` iterations, then cosine
    (App. B.2), polynomial with power 0.9 (DeepLab, App. B.4) or linear decay towards 0."""
    def factor(it):
        if it < warmup:
            return (it + 1) / warmup
        t = min(it - warmup, iters - warmup) / (iters - warmup)
        return {'cosine': 0.5 * (1 + math.cos(math.pi * t)), 'poly': (1 - t) ** 0.9, 'linear': 1 - t}[name]
    return factor


def set_train_mode(net, freeze_encoder):
    """Training mode, except a frozen encoder stays in eval mode so its BatchNorm statistics stay fixed."""
    net.train()
    if freeze_encoder:
        net.encoder.eval()


def num_classes(args):
    """The classes of --data's labels: Cityscapes' 19 train ids (KITTI, Cityscapes) or NYU-40."""
    return len(evaluate.CLASS_SETS[data.LAYOUTS[args.data].classes][0])


def segmentation_task(args, layout, net, device):
    """(training set, loss of a batch, evaluation, baseline) for few-shot segmentation: --train-size labelled
    images picked with the seed, scored on the layout's held-out images (data.few_shot_sets)."""
    train_pairs, eval_pairs = training.open_dataset(data.few_shot_sets, layout, args.train_size, args.seed, args.split)
    train_set = training.open_dataset(data.LabelledImages, train_pairs, args.height, args.width, augment=True,
                                      crop=args.crop_size)
    eval_set = training.open_dataset(data.LabelledImages, eval_pairs, args.height, args.width)
    eval_batches = list(torch.utils.data.DataLoader(eval_set, batch_size=args.batch_size))
    sample, classes = {k: v[:4] for k, v in eval_batches[0].items()}, num_classes(args)
    colours = evaluate.CLASS_SETS[layout.classes][1]

    def loss_fn(batch):
        with autocast(device):
            logits = net(batch['image'])
        return losses.nll_loss(logits.float(), batch['label'])  # eq. 12

    def evaluate_now(iteration, folder):
        save_seg_sample(net, sample, folder / f'sample_{iteration:06d}.png', device, colours)
        return evaluate.evaluate_segmentation(net, eval_batches, device, classes)
    return train_set, loss_fn, evaluate_now, lambda: majority_baseline(train_pairs, eval_batches, classes)


@data.reads_files
def majority_baseline(train_pairs, eval_batches, classes):
    """What labelling every pixel with the training labels' most frequent class scores on the evaluation set."""
    counts = sum(torch.bincount(read(label).flatten(), minlength=256)[:classes] for _, label, read in train_pairs)
    majority = int(counts.argmax())
    confusion = sum(evaluate.confusion_matrix(torch.full_like(b['label'], majority), b['label'], classes)
                    for b in eval_batches)
    return evaluate.segmentation_metrics(confusion)


def depth_task(args, layout, net, device):
    """(training set, loss of a batch, evaluation, baseline) for few-shot depth: --train-size frames of the
    training split with ground truth, flipped as in fine-tuning; scored on the layout's test frames by
    --eval-protocol, metric (no median scaling) unless --median-scaling on."""
    snippets = training.open_dataset(layout.snippets, 'train', (0,), with_depth=True, split_dir=args.split)
    frames = data.VideoSnippets(snippets, args.height, args.width, augment=True, crop=args.crop_size, jitter=False)
    train_set = torch.utils.data.Subset(frames, few_shot(len(frames), args)[0])
    evaluate_now, baseline = depth_evaluation(args, layout, net, device)
    if evaluate_now is None:
        raise SystemExit(f'--task depth scores the fine-tuned network on held-out ground truth, and {layout.root} '
                         f'has none: write a val split of its RGB-D pairs (`python data.py --make-splits '
                         f'{layout.root} --data folder --by-similarity`).')

    def loss_fn(batch):
        with autocast(device):
            disp = net(batch['frames_aug'][:, 0])[0].float()
        return supervised_depth_loss(disp, batch['depth'], args.loss, args.silog_lambda, args.min_depth, args.max_depth)
    return train_set, loss_fn, evaluate_now, baseline


def few_shot(count, args):
    """--train-size of `count` items picked with --seed (0: all of them), and the rest; a size that cannot work
    stops the run."""
    if args.train_size == 0:
        return list(range(count)), []
    try:
        return data.few_shot_split(count, args.train_size, args.seed)
    except ValueError as error:
        raise SystemExit(str(error)) from None


def save_seg_sample(net, batch, path, device, colours):
    """A PNG: images, ground truth and predictions, in the class set's colours."""
    net.eval()
    with torch.no_grad():
        pred = net(batch['image'].to(device)).argmax(1).cpu()
    evaluate.save_image_grid([batch['image'].permute(0, 2, 3, 1), evaluate.colourise(batch['label'], colours),
                              evaluate.colourise(pred, colours)], path)


# ----------------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Fine-tune a pre-trained network for few-shot segmentation or depth.')
    parser.add_argument('--task', choices=['seg', 'depth'], default='seg', help='the downstream task')
    parser.add_argument('--init', default='none',
                        help='none (random weights), imagenet (torchvision\'s weights), depth or flow '
                             '(checkpoints/<name>.pt from pretrain.py), or a checkpoint path')
    training.add_decoder_args(parser)
    parser.add_argument('--reset-decoder', action='store_true',
                        help='load only the encoder from --init; the decoder starts from random weights (Table 2)')
    parser.add_argument('--freeze-encoder', action='store_true',
                        help='keep encoder weights and BatchNorm statistics fixed; train the rest only')
    parser.add_argument('--train-size', type=int, default=16,
                        help='labelled training images (the paper: 16), or training frames for --task depth; 0: all '
                             'of them (a full-data run, where the dataset has a held-out set of its own)')
    parser.add_argument('--loss', choices=['l1', 'silog'], default='silog',
                        help='--task depth: masked L1 (eq. 15) or the scale-invariant log loss (Sect. 2.3)')
    parser.add_argument('--silog-lambda', type=float, default=0.5, help='lambda of SILog (1: scale-invariant)')
    parser.add_argument('--optim', choices=['adam', 'adamw', 'sgd'], default='adam', help='the optimiser')
    parser.add_argument('--weight-decay', type=float, default=0.0, help='weight decay (decoupled for adamw)')
    parser.add_argument('--momentum', type=float, default=0.9, help='momentum of sgd')
    parser.add_argument('--schedule', choices=['cosine', 'poly', 'linear'], default='cosine',
                        help='learning-rate decay per iteration: cosine (App. B.2), poly (power 0.9, DeepLab, '
                             'App. B.4) or linear (xNet)')
    parser.add_argument('--warmup', type=int, default=0, help='iterations of linear warm-up before the decay')
    parser.add_argument('--encoder-lr-mult', type=float, default=1.0,
                        help='the encoder\'s learning rate is --lr times this (e.g. 0.1 for a pre-trained encoder)')
    training.add_common_args(parser, iters=300, lr=3e-4, batch_size=8, eval_every=50)
    training.add_depth_eval_args(parser)
    args = parser.parse_args(argv)
    training.resolve_depth_eval_args(args, args.task, median_scaling=False)  # fine-tuned depth is metric
    if args.task == 'seg' and data.LAYOUTS[args.data].classes is None:
        raise SystemExit(f'--data {args.data} holds no semantic labels: few-shot segmentation runs on --data toy, '
                         f'kitti, cityscapes or nyu; --task depth fine-tunes on its RGB-D pairs.')
    args.name = args.name or run_name(args)
    training.check_args(args)
    if args.train_size < 0:
        raise SystemExit(f'--train-size must be 0 (all) or more; got {args.train_size}.')
    if not 0 <= args.warmup < args.iters:
        raise SystemExit(f'--warmup must be between 0 and --iters - 1 ({args.iters - 1}); got {args.warmup}.')
    return args


def run_name(args):
    """A run folder name saying what was fine-tuned, from what, how; runs differing only in seed share
    all of it up to the seed."""
    init = Path(args.init).stem if args.init.endswith('.pt') else args.init
    if init == 'checkpoint':  # runs/<name>/checkpoint.pt: the run's name says more, but for its seed
        init = re.sub(r'-s\d+$', '', Path(args.init).parent.name)
    decoder = models.describe_decoder(args.decoder, models.xnet_options(args), args.decoder_init, args.reset_decoder)
    frozen = 'frozen' if args.freeze_encoder else 'full'
    frozen += f'-crop{args.crop_size[0]}x{args.crop_size[1]}' if args.crop_size else ''
    task = '-'.join([args.task] + ([args.loss] + training.depth_eval_name(args, False) if args.task == 'depth' else []))
    task = '-'.join(training.dataset_name(args) + [task])
    size = args.train_size or 'all'
    return f'{task}-{init}-{decoder}-{frozen}-n{size}-{args.arch}-{args.height}x{args.width}-s{args.seed}'


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = training.pick_device(args.device)
    with training.unreadable_files_stop():
        finetune(args, device)


def finetune(args, device):
    """Build the network from --init, then train it on --task (training.fit does the rest: the run folder,
    --resume, evaluations, checkpoints)."""
    net = build_network(args).to(device)  # a missing --init checkpoint stops the run before any rendering
    layout = training.open_layout(args)
    if args.freeze_encoder:
        net.encoder.requires_grad_(False)
    set_train_mode(net, args.freeze_encoder)
    task = segmentation_task if args.task == 'seg' else depth_task
    train_set, loss_fn, evaluate_now, baseline = task(args, layout, net, device)
    optimizer = make_optimizer(net, args)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(args.schedule, args.iters, args.warmup))
    batches = lambda start: training.training_batches(train_set, args, device, start)

    def evaluate_and_resume(iteration, folder):
        metrics = evaluate_now(iteration, folder)
        set_train_mode(net, args.freeze_encoder)
        return metrics

    info = dict(decoder=args.decoder, xnet=models.xnet_options(args), num_classes=num_classes(args) if args.task == 'seg' else None)
    training.fit(args, {'model': net}, optimizer, scheduler, loss_fn, batches, evaluate_and_resume, baseline, info)


if __name__ == '__main__':
    main()
