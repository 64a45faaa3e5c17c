"""Few-shot fine-tuning from a pre-trained network: semantic segmentation (paper Sect. 4.1, App. B.2),
or depth (the reverse direction of the minimal-transfer paper).

The segmentation network is the depth network with its last layer replaced by a fresh K-class 1x1
convolution at the finest scale (Fig. 1b): `--init depth` copies the depth checkpoint's encoder and
decoder, `--init flow` only the flow network's encoder, `--init imagenet` torchvision's ImageNet encoder,
`--init none` starts from random weights. `--reset-decoder` keeps only the encoder's initialisation
(Table 2, "encoder only"); `--decoder deeplab` puts torchvision's DeepLabV3 head on the (dilated)
pre-trained encoder instead, the common practice of Fig. 1a/1c. `--freeze-encoder` keeps the encoder's
weights and its BatchNorm statistics fixed and trains the rest (Fig. 1d).

Segmentation minimises the negative log-likelihood (eq. 12) on `--train-size` labelled images picked with
the seed from the dataset's training pool, and is scored on its held-out images (KITTI: every other labelled
image; Cityscapes: val; NYU-Depth-V2: test; with --split DIR: the images of DIR/val_files.txt) by mIoU over
all classes and over the paper's 7. `--task depth` instead fits ground-truth depth (L1 of eq. 15 or SILog) on
`--train-size` frames of the training split and is scored on the test frames by --eval-protocol with the full
depth table. Optimisers and schedules (training.make_optimizer and training.lr_schedule, shared with
pretrain.py): Adam with a cosine schedule per iteration by default (App. B.2), or AdamW / SGD, polynomial,
linear or no decay, warm-up, and a smaller learning rate for the encoder. The length is --iters, or --epochs
of the training set. xNet's segmentation recipe (its App. A) adds a random rescale before the crop and a
photometric distortion to the training images (data.LabelledImages), and a multi-scale (and flipped) test
(evaluate.segmentation_scores).

Top to bottom: what transfers from a checkpoint, the two tasks (their data and loss), the training loop
(`train`: batch, loss, backward, step, log, evaluate, checkpoint), the command line. The evaluations are
evaluate.py's; the run's bookkeeping (run folder, atomic checkpoints, --resume, --bench) is training.py's.

    python finetune.py --init depth --freeze-encoder
    python finetune.py --init none
    python finetune.py --init imagenet --decoder deeplab
    python finetune.py --task depth --init runs/seg-depth-unet-full-n16-resnet18-64x192-s0/checkpoint.pt --loss silog
"""
import argparse
import re
import time
from pathlib import Path

import torch
from tqdm import tqdm

import data
import evaluate
import losses
import models
import training
from training import autocast

# ----------------------------------------------------------------------------------------------------
# What transfers, and the two tasks: their data and loss
# ----------------------------------------------------------------------------------------------------

def transferable_parts(weights, args):
    """Which parts of pre-trained weights (models.Weights) carry over: the encoder always; the decoder when
    it is the same kind and not reset (never from flow, whose decoder reads two frames' features); the head
    when the task is the same too (a depth checkpoint fine-tuned for depth, a segmentation one for
    segmentation; models.load_pretrained leaves a head of another number of classes new)."""
    parts = ['encoder.']
    same_decoder = (weights.decoder == args.decoder and weights.task != 'flow'
                    and weights.xnet == models.xnet_options(args))  # xNet variants differ in shape
    if same_decoder and not args.reset_decoder:
        parts.append('decoder.')
        if weights.task == args.task:
            parts.append('head.')
    return parts


def build_network(args):
    """The network for --task and --decoder, initialised as --init says (models.load_pretrained reads every
    published layout); image normalisation follows the weights (ImageNet mean/std for ImageNet, SegFormer
    and other published weights, else what the checkpoint was trained with)."""
    weights = None
    if args.init not in ('none', 'imagenet'):
        path, weights = training.init_weights(args.init)
        if weights.arch != args.arch:
            held = f'a {weights.arch} network; pass --arch {weights.arch}' if weights.arch else \
                'an encoder of no --arch this code builds'
            raise SystemExit(f'--init {args.init}: {weights.source} holds {held}.')
    normalization = weights.normalization if weights else 'imagenet' if args.init == 'imagenet' else 'unit'
    xnet = models.xnet_options(args)
    net = (models.build_seg_net(args.arch, num_classes(args), normalization, args.decoder, xnet) if args.task == 'seg'
           else models.build_depth_net(args.arch, normalization, args.decoder, xnet))
    if args.init == 'imagenet':
        training.init_encoders(args, net.encoder)
    elif weights:
        parts = transferable_parts(weights, args)
        training.load_weights(net, weights, parts, '--init')
        if args.task == 'depth' and 'decoder.' in parts and 'head.' not in parts:
            models.zero_new_head(net)
        if weights.task == 'flow':
            print('(A flow network\'s decoder reads two frames\' features: it does not transfer.)')
    training.init_decoder_backbone(net, args)
    return net


def set_train_mode(net, freeze_encoder):
    """Training mode, except a frozen encoder stays in eval mode so its BatchNorm statistics stay fixed."""
    net.train()
    if freeze_encoder:
        net.encoder.eval()


def num_classes(args):
    """The classes of --data's labels: Cityscapes' 19 train ids (KITTI, Cityscapes) or NYU-40."""
    return data.num_classes(data.LAYOUTS[args.data].classes)


def segmentation_task(args, layout, net, device):
    """(training set, loss of a batch, evaluation, training images) for few-shot segmentation: --train-size
    labelled images picked with the seed, scored on the layout's held-out images (data.few_shot_sets)."""
    train_pairs, eval_pairs = data.open_dataset(data.few_shot_sets, layout, args.train_size, args.seed, args.split)
    train_set = data.open_dataset(data.LabelledImages, train_pairs, args.height, args.width, augment=True,
                                  crop=args.crop_size, rescale=args.rescale, photometric=args.photometric)
    eval_set = data.open_dataset(data.LabelledImages, eval_pairs, args.height, args.width)
    evaluation = evaluate.SegmentationEvaluation(eval_set, train_pairs, layout.classes, args, device)

    def loss_of(batch, net):  # net: as train() runs it (under torchrun, DDP's wrapper)
        with autocast(device):
            logits = net(batch['image'])
        return losses.nll_loss(logits.float(), batch['label'])  # eq. 12
    return train_set, loss_of, evaluation, [image for image, _, _ in train_pairs]


SATURATED_STEPS = 20
SATURATED = (f'the depth head\'s sigmoid saturated: for {SATURATED_STEPS} batches in a row every pixel\'s disparity was '
             'exactly 0 or 1, so no gradient reached the network and the run cannot learn (a decoder fine-tuned '
             'for segmentation can give features in the thousands); fine-tune with --reset-decoder instead. The '
             'run folder\'s last checkpoint was left as it was.')


def depth_task(args, layout, net, device):
    """(training set, loss of a batch, evaluation, training images) for few-shot depth: --train-size frames of
    the training split with ground truth, flipped as in fine-tuning; scored on the layout's test frames by
    --eval-protocol, metric (no median scaling) unless --median-scaling on."""
    snippets = data.open_dataset(layout.snippets, 'train', (0,), with_depth=True, split_dir=args.split)
    frames = data.VideoSnippets(snippets, args.height, args.width, augment=True, crop=args.crop_size, jitter=False)
    picked = few_shot(len(frames), args)[0]
    train_set = torch.utils.data.Subset(frames, picked)
    evaluation = evaluate.depth_evaluation(args, layout, device)
    if evaluation is None:
        raise SystemExit(f'--task depth scores the fine-tuned network on held-out ground truth, and {layout.root} '
                         f'has none: write a val split of its RGB-D pairs (`python data.py --make-splits '
                         f'{layout.root} --data folder --by-similarity`).')

    saturated = 0  # batches in a row whose disparity had no gradient at any pixel

    def loss_of(batch, net):
        nonlocal saturated
        with autocast(device):
            disp = net(batch['frames_aug'][:, 0])[0].float()
        saturated = 0 if (disp * (1 - disp)).any() else saturated + 1  # sigmoid' exactly 0 everywhere
        if saturated == SATURATED_STEPS:
            raise SystemExit(SATURATED)
        depth = models.depth_at(disp, batch['depth'].shape[-2:], args.min_depth, args.max_depth)
        return losses.supervised_depth_loss(depth, batch['depth'], args.loss, args.silog_lambda)  # SILog or eq. 15
    return train_set, loss_of, evaluation, [snippets[i].frames[0] for i in picked]


def few_shot(count, args):
    """--train-size of `count` items picked with --seed (0: all of them), and the rest; a size that cannot work
    stops the run."""
    if args.train_size == 0:
        return list(range(count)), []
    try:
        return data.few_shot_split(count, args.train_size, args.seed)
    except ValueError as error:
        raise SystemExit(str(error)) from None


# ----------------------------------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------------------------------

def finetune(args, device):
    """Build the network from --init, then train it on --task."""
    net = build_network(args).to(device)  # a missing --init checkpoint stops the run before any rendering
    layout = data.open_layout(args)
    if args.freeze_encoder:
        net.encoder.requires_grad_(False)
    set_train_mode(net, args.freeze_encoder)
    task = segmentation_task if args.task == 'seg' else depth_task
    train_set, loss_of, evaluation, images = task(args, layout, net, device)
    training.resolve_epochs(args, train_set)
    train(args, net, loss_of, train_set, evaluation, [line for line, _ in data.relative_lines(layout.root, images)])


def optimiser(args, net):
    """--optim (Adam by default, App. B.2; AdamW for xNet; SGD for DeepLab) over the trainable parameters, the
    encoder's at --lr x --encoder-lr-mult, and its schedule: --warmup iterations of linear warm-up, then per
    iteration --schedule's decay (cosine, poly, linear or constant)."""
    optimizer = training.make_optimizer([net], args)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, training.lr_schedule(args.schedule, args.iters,
                                                                                         args.warmup))


def train(args, net, loss_of, train_set, evaluation, train_images):
    """The training loop: each iteration draws a batch of the seeded stream, minimises `loss_of(batch, net)`, logs
    it every --log-every iterations, evaluates every --eval-every (`evaluation`: evaluate.py's) and writes a
    checkpoint every --save-every, recording the training images (`train_images`, which evaluate.py leaves out);
    SIGTERM or Ctrl-C ends it after the step under way, with a checkpoint. --resume continues the run folder's
    last checkpoint, --bench times the step. Under torchrun each process takes its share of every batch
    (DistributedDataParallel), and rank 0 alone logs, evaluates and saves while the others wait."""
    device = next(net.parameters()).device
    optimizer, scheduler = optimiser(args, net)
    ddp = training.Distributed()  # one process of torchrun's, or the only one
    trained = ddp.wrap(net, args.sync_bn, 1 if args.task == 'depth' else None)  # depth: the finest scale's loss
    run = None

    def step(micro_batches):  # this process's share of a batch -> loss -> backward -> update: the mean loss, the rate
        lr = scheduler.get_last_lr()[0]
        optimizer.zero_grad(set_to_none=True)
        loss = 0.0
        for i, batch in enumerate(micro_batches):  # gradients add up; averaged over processes with the last
            with ddp.no_sync([trained], last=i == len(micro_batches) - 1):
                micro = loss_of(training.to_device(batch, device), trained)
                training.check_finite(micro, scheduler.last_epoch + 1, lr, run)
                (micro / len(micro_batches)).backward()
            loss = loss + micro.detach() / len(micro_batches)
        optimizer.step()
        scheduler.step()
        return loss, lr

    if args.bench:
        return training.benchmark(step, training.training_batches(train_set, args, device), args.bench,
                                  args.batch_size, device)
    run = training.Run(args, writer=ddp.main)
    ddp.barrier()  # every process has read the run's flags before rank 0 records what --resume changed
    start, metrics = run.restore({'model': net}, optimizer, scheduler)
    with training.StopOnSignal() as stop:
        baseline = evaluation.baseline() if ddp.main else {}
        if ddp.main:
            run.log_baseline(baseline)
        ddp.agree(stop)
        if stop.signal:  # while the baseline was measured: nothing new to save
            stop.exit(start)
        batches = training.training_batches(train_set, args, device, start)
        bar, clock = tqdm(range(start, args.iters), initial=start, total=args.iters, dynamic_ncols=True,
                          disable=not ddp.main), time.perf_counter()
        for it in bar:
            loss, lr = step(next(batches))
            loss = ddp.agree(stop, loss)  # the global batch's loss; a stop sent to any process stops all after this step
            done = it + 1
            speed = (done - start) * args.batch_size / (time.perf_counter() - clock)
            bar.set_postfix(loss=f'{loss.item():.4f}', img_s=f'{speed:.1f}')
            if ddp.main and (done % args.log_every == 0 or done == args.iters or stop.signal):
                run.log(iter=done, split='train', loss=loss.item(), lr=lr, images_per_s=speed)
            if done % args.eval_every == 0 or done == args.iters:
                if ddp.main:
                    metrics = evaluation(net, run.path / f'sample_{done:06d}.png')
                    set_train_mode(net, args.freeze_encoder)
                    run.log(iter=done, split='eval', **metrics)
                    bar.write(f'iteration {done}: {training.metrics_line(metrics, baseline)}')
                ddp.barrier()
            if done % args.save_every == 0 or done == args.iters or stop.signal:
                if ddp.main:
                    run.save(models.checkpoint_state({'model': net}, args, done, metrics, optimizer, scheduler,
                                                     training.rng_state(), train_images))
                ddp.barrier()
            if stop.signal and done < args.iters:
                bar.close()
                del batches  # the DataLoader's workers end here, before the process does
                stop.exit(done)
    print(f'{args.task} after {args.iters} iterations: {training.metrics_line(metrics, baseline)}')
    print(f'Wrote {run.path}.')


# ----------------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Fine-tune a pre-trained network for few-shot segmentation or depth.')
    parser.add_argument('--task', choices=['seg', 'depth'], default='seg', help='the downstream task')
    parser.add_argument('--init', default='none',
                        help='none (random weights), imagenet (torchvision\'s weights), depth or flow '
                             '(checkpoints/<name>.pt from pretrain.py), or a weight file or folder: a checkpoint, '
                             'torchvision\'s ResNet state dict, the SegFormer authors\' mit_b*.pth or segmentation '
                             'checkpoint, a Hugging Face SegFormer folder (models.load_pretrained)')
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
    training.add_optimizer_args(parser)
    parser.add_argument('--schedule', choices=['cosine', 'poly', 'linear', 'constant'], default='cosine',
                        help='learning-rate decay per iteration: cosine (App. B.2), poly (power 0.9, DeepLab, '
                             'App. B.4), linear (xNet) or constant')
    parser.add_argument('--rescale', type=float, nargs=2, metavar=('MIN', 'MAX'), default=None,
                        help='segmentation: rescale each training image and its labels by a random factor in '
                             '[MIN, MAX] before the --crop-size crop (xNet\'s recipe: 0.5 2.0)')
    parser.add_argument('--photometric', action='store_true',
                        help='segmentation: mmsegmentation\'s photometric distortion of the training images '
                             '(brightness, contrast, saturation, hue)')
    evaluate.add_multi_scale_args(parser, 'segmentation')
    training.add_common_args(parser, iters=ITERS, lr=3e-4, batch_size=8, eval_every=50)
    training.add_depth_range_args(parser)
    training.add_depth_eval_args(parser, 'default off (fine-tuned depth is metric)')
    args = parser.parse_args(argv)
    training.check_length(args, ITERS)
    training.resolve_depth_eval_args(args, args.task, median_scaling=False)  # fine-tuned depth is metric
    if args.task == 'seg' and data.LAYOUTS[args.data].classes is None:
        raise SystemExit(f'--data {args.data} holds no semantic labels: few-shot segmentation runs on --data toy, '
                         f'kitti, cityscapes or nyu; --task depth fine-tunes on its RGB-D pairs.')
    args.name = args.name or run_name(args)
    training.check_args(args)
    if args.train_size < 0:
        raise SystemExit(f'--train-size must be 0 (all) or more; got {args.train_size}.')
    check_segmentation_args(args)
    return args


ITERS = 300  # the training length without --iters or --epochs


def check_segmentation_args(args):
    """The segmentation-only flags: what they need, and that the evaluation scales give networks' sizes."""
    if args.task != 'seg':
        given = [f for f, default in (('rescale', None), ('photometric', False), ('eval_scales', [1.0]),
                                      ('eval_flip', False)) if getattr(args, f) != default]
        if given:
            raise SystemExit(f'--{given[0].replace("_", "-")} applies to segmentation; --task {args.task} does not '
                             f'use it.')
        return
    if args.rescale and not (0 < args.rescale[0] <= args.rescale[1]):
        raise SystemExit(f'--rescale MIN MAX needs 0 < MIN <= MAX; got {args.rescale[0]:g} {args.rescale[1]:g}.')
    if args.rescale and not args.crop_size:
        raise SystemExit('--rescale needs --crop-size H W: rescaled images differ in size, and the crops (padded '
                         'with ignored labels where an image is smaller) make them one size again.')
    try:
        evaluate.check_eval_scales(args.eval_scales, (args.height, args.width))
    except ValueError as error:
        raise SystemExit(f'--eval-scales: {error}') from None


def run_name(args):
    """A run folder name saying what was fine-tuned, from what, how; runs differing only in seed share
    all of it up to the seed."""
    path = Path(args.init)
    init = args.init if '/' not in args.init and not path.suffix else path.name if path.is_dir() else path.stem
    if init == 'checkpoint':  # runs/<name>/checkpoint.pt: the run's name says more, but for its seed
        init = re.sub(r'-s\d+$', '', path.parent.name)
    elif init in ('model', 'pytorch_model'):  # a Hugging Face folder's weight file: the folder's name
        init = path.parent.name
    decoder = models.describe_decoder(args.decoder, models.xnet_options(args), args.decoder_init, args.reset_decoder)
    frozen = 'frozen' if args.freeze_encoder else 'full'
    frozen += f'-crop{args.crop_size[0]}x{args.crop_size[1]}' if args.crop_size else ''
    frozen += f'-rescale{args.rescale[0]:g}-{args.rescale[1]:g}' if args.rescale else ''
    frozen += '-photometric' if args.photometric else ''
    task = '-'.join([args.task] + ([args.loss] + training.depth_eval_name(args, False) if args.task == 'depth' else []))
    task = '-'.join(training.dataset_name(args) + [task])
    size = args.train_size or 'all'
    return f'{task}-{init}-{decoder}-{frozen}-n{size}-{args.arch}-{args.height}x{args.width}-s{args.seed}'


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    with training.processes(args) as device, training.unreadable_files_stop():  # under torchrun: its process group
        finetune(args, device)


if __name__ == '__main__':
    main()
