"""The SegFormer segmentation training step side by side with transformers' own, on the same batches, interleaved.

The project's step is built as `finetune.py --arch mit_b0 --decoder segformer --optim adamw` builds it
(MiT-B0, the all-MLP decoder, a 1x1 K-class head, the logits upsampled to the labels' size, the negative
log-likelihood of eq. 12, AdamW). transformers' step is its SegformerForSemanticSegmentation of the b0
configuration called with labels (it upsamples its logits and takes the cross-entropy itself), then AdamW.
Both start from the same weights: the transformers model is saved as published and read into the project's
network by models.load_pretrained. transformers is used here only to measure against; the project does
not depend on it (without it, the project's step is still timed).

Both steps get the same seeded random images and labels. They alternate (project, transformers, project,
...) so that load from other processes hits both alike; speeds are taken from the median step. On a
machine shared with other jobs, OMP_WAIT_POLICY=PASSIVE keeps busy-waiting threads from dominating.

    python benchmarks/segformer_step.py                                   # 256 x 256, batch 2, 5 steps each
    python benchmarks/segformer_step.py --device cuda --height 512 --width 512 --batch-size 8 --steps 20
"""
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import losses  # noqa: E402
import models  # noqa: E402
import side_by_side  # noqa: E402
import training  # noqa: E402


def import_transformers():
    """transformers, or None with one sentence when it is not installed."""
    try:
        import transformers
        return transformers
    except ImportError:
        print('transformers: skipped: it is not installed (pip install transformers, used only by this benchmark); '
              'timing the project\'s step alone.')
        return None


def random_batches(height, width, batch_size, count, classes, seed):
    """`count` (images in [0,1], labels with some ignored 255 pixels) batches, seeded."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        labels = torch.randint(0, classes, (batch_size, height, width), generator=g)
        labels[torch.rand(labels.shape, generator=g) < 0.1] = 255
        batches.append((torch.rand(batch_size, 3, height, width, generator=g), labels))
    return batches


def project_step(net, lr, device):
    """finetune.py's segmentation step: logits at the input size, eq. 12, AdamW."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)

    def loss_of(batch):
        images, labels = batch
        with training.autocast(device):
            logits = net(images)
        return losses.nll_loss(logits.float(), labels)  # eq. 12
    return side_by_side.project_step(loss_of, optimizer, scheduler)


def transformers_step(model, lr):
    """transformers' own: the model's loss from labels (its upsampling and cross-entropy), AdamW."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)

    def step(batch):
        pixels, labels = batch
        loss = model(pixel_values=pixels, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()
    return step


def main(argv=None):
    parser = side_by_side.parser(__doc__.split('\n\n')[0], 256, 256, 2, 5)
    parser.add_argument('--classes', type=int, default=19)
    parser.add_argument('--lr', type=float, default=6e-5, help='AdamW\'s (SegFormer\'s)')
    options = parser.parse_args(argv)
    torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)
    device = training.pick_device(options.device)
    net = models.build_seg_net('mit_b0', options.classes, 'imagenet', 'segformer')
    batches = random_batches(options.height, options.width, options.batch_size, options.batches, options.classes,
                             options.seed)
    steps = {}
    transformers = import_transformers()
    if transformers:
        model = transformers.SegformerForSemanticSegmentation(transformers.SegformerConfig(num_labels=options.classes))
        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            models.load_pretrained(net, folder)
        pixels = [((x - net.mean) / net.std, y) for x, y in batches]  # what its image processor hands it
        steps['transformers'] = (transformers_step(model.to(device).train(), options.lr),
                                 [tuple(t.to(device) for t in b) for b in pixels])
    steps = {'project': (project_step(net.to(device).train(), options.lr, device),
                         [tuple(t.to(device) for t in b) for b in batches]), **steps}
    speed = side_by_side.speeds(side_by_side.interleaved(steps, options.steps, device), options.batch_size, 3)
    ratio = f'; project / transformers = {speed["project"] / speed["transformers"]:.2f}x' if transformers else ''
    print(f'MiT-B0 + all-MLP head, {options.height}x{options.width}, batch {options.batch_size}, {options.steps} steps '
          f'each, {device}, {options.threads} threads, median step: ' +
          ', '.join(f'{n} {v:.2f} images/s' for n, v in speed.items()) + ratio)


if __name__ == '__main__':
    main()
