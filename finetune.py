"""Few-shot semantic segmentation, fine-tuned from a pre-trained network (paper Sect. 4.1, App. B.2).

The segmentation network is the depth network with its last layer replaced by a fresh K-class 1x1
convolution at the finest scale (Fig. 1b): `--init depth` copies the depth checkpoint's encoder and
decoder, `--init flow` only the flow network's encoder, `--init imagenet` torchvision's ImageNet encoder,
`--init none` starts from random weights. `--freeze-encoder` keeps the encoder's weights
and its BatchNorm statistics fixed and trains the decoder only (Fig. 1d). Training minimises the
negative log-likelihood (eq. 12) with Adam and a cosine schedule per iteration, on `--train-size`
labelled images picked with the seed; every other labelled image is the evaluation set.

    python finetune.py --init depth --freeze-encoder
    python finetune.py --init none
"""
import argparse
import sys
from pathlib import Path

import torch

import data
import evaluate
import losses
import models
from pretrain import (Run, add_common_args, autocast, benchmark, check_args, cosine_schedule,
                      data_root, forever, loader, open_dataset, optimisation_step, pick_device, restore, save_image_grid,
                      to_device, train)

NUM_CLASSES = len(evaluate.CITYSCAPES_CLASSES)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Fine-tune a network for few-shot semantic segmentation.')
    parser.add_argument('--task', choices=['seg'], default='seg', help='the downstream task')
    parser.add_argument('--init', default='none',
                        help='none (random weights), imagenet (torchvision\'s weights), depth or flow '
                             '(checkpoints/<name>.pt from pretrain.py), or a checkpoint path')
    parser.add_argument('--freeze-encoder', action='store_true',
                        help='keep encoder weights and BatchNorm statistics fixed; train the decoder only')
    parser.add_argument('--train-size', type=int, default=16, help='labelled training images (the paper: 16)')
    add_common_args(parser, iters=300, lr=3e-4, batch_size=8, eval_every=50)
    args = parser.parse_args(argv)
    frozen = 'frozen' if args.freeze_encoder else 'full'
    init_name = Path(args.init).stem if args.init.endswith('.pt') else args.init
    args.name = args.name or (f'{args.task}-{init_name}-{frozen}-n{args.train_size}-{args.arch}-'
                              f'{args.height}x{args.width}-s{args.seed}')
    check_args(args)
    return args


def init_checkpoint(init):
    """The checkpoint `--init` names (depth, flow or a path), as (path, contents)."""
    path = Path(f'checkpoints/{init}.pt') if not init.endswith('.pt') else Path(init)
    if not path.is_file():
        hint = f'run `python pretrain.py --task {init}` first' if not init.endswith('.pt') else 'check the path'
        raise SystemExit(f'--init {init}: {path} does not exist; {hint}.')
    try:
        return path, torch.load(path, map_location='cpu', weights_only=False)
    except Exception as error:
        raise SystemExit(f'--init {init}: could not read {path} ({error}); the file is damaged.') from None


def build_network(args):
    """The segmentation net, initialised as --init says; image normalisation follows the weights.

    none: random weights; imagenet: torchvision's ImageNet encoder; a depth checkpoint: its encoder and
    decoder (only the 1x1 head is new); a flow checkpoint: its encoder only, since the siamese decoder
    reads two frames' features and has another shape.
    """
    if args.init in ('none', 'imagenet'):
        net = models.build_seg_net(args.arch, NUM_CLASSES, 'unit' if args.init == 'none' else 'imagenet')
        if args.init == 'imagenet':
            try:
                models.load_imagenet_weights(net.encoder, args.arch)
            except FileNotFoundError as error:
                raise SystemExit(f'--init imagenet: {error}') from None
            print(f'Initialised the encoder from torchvision\'s ImageNet {args.arch} weights; the decoder is new.')
        return net
    path, checkpoint = init_checkpoint(args.init)
    if checkpoint.get('arch') != args.arch:
        raise SystemExit(f'--init {args.init}: {path} holds a {checkpoint.get("arch")} network; '
                         f'pass --arch {checkpoint.get("arch")}.')
    net = models.build_seg_net(args.arch, NUM_CLASSES, checkpoint['normalization'])
    parts = ('encoder.',) if checkpoint['task'] == 'flow' else ('encoder.', 'decoder.')
    try:
        loaded = models.load_parts(net, checkpoint['model'], parts, source=str(path))
    except ValueError as error:
        raise SystemExit(f'--init {args.init}: {error}') from None
    print(f'Initialised {len(loaded)} {" and ".join(p[:-1] for p in parts)} tensors from {path} '
          f'({checkpoint["task"]}, {checkpoint["normalization"]} normalisation); '
          + ('the decoder does not transfer from a flow network (it reads two frames\' features) and starts '
             'from random weights, and ' if checkpoint['task'] == 'flow' else '') + 'the 1x1 head is new.')
    return net


def set_train_mode(net, freeze_encoder):
    """Training mode, except a frozen encoder stays in eval mode so its BatchNorm statistics stay fixed."""
    net.train()
    if freeze_encoder:
        net.encoder.eval()


@torch.no_grad()
def evaluate_segmentation(net, eval_batches, device):
    """Segmentation metrics over the held-out labelled images, from one confusion matrix."""
    net.eval()
    confusion = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)
    for batch in eval_batches:
        pred = net(batch['image'].to(device)).argmax(1)
        confusion += evaluate.confusion_matrix(pred, batch['label'].to(device), NUM_CLASSES)
    return evaluate.segmentation_metrics(confusion)


def save_sample(net, batch, path, device):
    """A PNG: images, ground truth and predictions, in the Cityscapes colours."""
    net.eval()
    with torch.no_grad():
        pred = net(batch['image'].to(device)).argmax(1).cpu()
    save_image_grid([batch['image'].permute(0, 2, 3, 1), evaluate.colourise(batch['label']),
                     evaluate.colourise(pred)], path)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    root = data_root(args)
    files = open_dataset(data.semantic_files, root)
    try:
        train_ids, eval_ids = data.few_shot_split(len(files), args.train_size, args.seed)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    net = build_network(args).to(device)
    if args.freeze_encoder:
        net.encoder.requires_grad_(False)
    set_train_mode(net, args.freeze_encoder)
    train_set = data.LabelledImages(root, train_ids, args.height, args.width, augment=True)
    eval_set = data.LabelledImages(root, eval_ids, args.height, args.width)
    batches = forever(loader(train_set, args, device, shuffle=True))
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=args.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(args.iters))

    def step(batch):
        batch = to_device(batch, device)
        with autocast(device):
            logits = net(batch['image'])
        return optimisation_step(losses.nll_loss(logits.float(), batch['label']), optimizer, scheduler)  # eq. 12

    if args.bench:
        return benchmark(step, batches, args.bench, args.batch_size, device)

    run = Run(args)
    state = dict(iter=0, metrics={})
    if args.resume:
        state = restore(run, device, {'model': net}, optimizer, scheduler)
    eval_batches = list(torch.utils.data.DataLoader(eval_set, batch_size=args.batch_size))
    sample = {k: v[:4] for k, v in eval_batches[0].items()}

    def evaluate_now(iteration):
        save_sample(net, sample, run.path / f'sample_{iteration:06d}.png', device)
        metrics = evaluate_segmentation(net, eval_batches, device)
        set_train_mode(net, args.freeze_encoder)
        return metrics

    def checkpoint(iteration):
        return dict(model=net.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                    task=args.task, arch=args.arch, decoder='unet', normalization=net.normalization,
                    num_classes=NUM_CLASSES, height=args.height, width=args.width, args=vars(args),
                    iter=iteration, metrics=state['metrics'])

    train(args, run, step, batches, state, evaluate_now, checkpoint)
    m = state['metrics']
    print(f'Segmentation after {args.iters} iterations: mIoU (7 classes) {100 * m["miou7"]:.2f}, '
          f'mIoU {100 * m["miou"]:.2f}, pixel accuracy {100 * m["pixel_acc"]:.2f}. Wrote {run.path}.')


if __name__ == '__main__':
    sys.exit(main())
