"""The ConvNeXt training step of the project's encoder beside torchvision's own ConvNeXt, interleaved.

The project's encoder is models.ConvNextEncoder: torchvision's ConvNeXt modules, weights and activations
channels-last, returning its four stage outputs. The reference is torchvision's `convnext_tiny().features`
(or the --arch asked for) run module by module, its four stage outputs collected (modules 1, 3, 5, 7), as a
dense-prediction network takes them. Both start from the same weights and get the same batches (seeded
random images), the same loss (the mean square of each map, summed) and AdamW; forward, backward and the
optimiser step are timed. The steps alternate (project, torchvision, project, ...) so that load from other
processes hits both alike; speeds are taken from the median step. The whole segmentation network
(models.build_seg_net: the encoder, --decoder, a 1x1 head; cross-entropy against random labels) is timed in
the same rounds and printed apart: it has no reference to compare with. On a machine shared with other jobs,
OMP_WAIT_POLICY=PASSIVE keeps busy-waiting threads from dominating the timings, and --clock process times the
CPU this process used instead of the wall clock (the time others' jobs take from it is not counted).

    python benchmarks/convnext_step.py                                  # 96 x 320, batch 8, 6 steps each
    python benchmarks/convnext_step.py --steps 1 --height 64 --width 64 --batch-size 1   # a smoke test
    python benchmarks/convnext_step.py --device cuda --height 512 --width 512 --batch-size 16 --steps 20

On CUDA both steps run under the bfloat16 autocast of the training scripts (training.autocast; --fp32 switches
it off) and are timed to the GPU's end.
"""
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402
import side_by_side  # noqa: E402
import training  # noqa: E402


def maps_loss(maps):
    """The mean square of each of the four stage outputs, summed: every stage gets a gradient."""
    return sum(m.float().square().mean() for m in maps)


def training_step(net, forward, loss_of, precision):
    """One step of AdamW (torch's defaults, lr 1e-4): forward, loss, backward, update; returns the loss."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def step(batch):
        with precision():
            out = forward(batch['image'])
        loss = loss_of(out, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()
    return step


def torchvision_stage_outputs(features):
    """torchvision's ConvNeXt `features`, run module by module, returning the outputs of its four stages."""
    def forward(x):
        maps = []
        for index, module in enumerate(features):
            x = module(x)
            if index % 2:  # 0 the stem, odd the stages, even the downsampling layers between them
                maps.append(x)
        return maps
    return forward


def main(argv=None):
    parser = side_by_side.parser(__doc__.split('\n\n')[0], 96, 320, 8, 6)
    parser.add_argument('--arch', choices=list(models.CONVNEXT_STAGES), default='convnext_tiny')
    parser.add_argument('--decoder', choices=models.DECODERS, default='unet', help='the segmentation network\'s')
    parser.add_argument('--fp32', action='store_true', help='CUDA: run without bfloat16 autocast')
    parser.add_argument('--clock', choices=['wall', 'process'], default='wall',
                        help='wall: elapsed time; process: CPU time of this process (CPU only)')
    options = parser.parse_args(argv)
    try:
        models.check_resolution(options.height, options.width)
    except ValueError as error:
        raise SystemExit(f'--height/--width: {error}') from None
    torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)
    device = training.pick_device(options.device)
    if options.clock == 'process' and device.type == 'cuda':
        raise SystemExit('--clock process counts CPU time: on CUDA time the wall clock (--clock wall).')
    clock = time.perf_counter if options.clock == 'wall' else time.process_time
    precision = (lambda: torch.autocast(device.type, enabled=False)) if options.fp32 else lambda: training.autocast(device)
    generator = torch.Generator().manual_seed(options.seed)
    batches = [{'image': torch.rand(options.batch_size, 3, options.height, options.width, generator=generator).to(device),
                'label': torch.randint(0, 19, (options.batch_size, options.height, options.width),
                                       generator=generator).to(device)} for _ in range(options.batches)]

    encoder = models.ConvNextEncoder(options.arch).to(device)
    reference = getattr(torchvision.models, options.arch)().to(device)
    reference.load_state_dict(encoder.state_dict())  # the same starting weights
    seg_net = models.build_seg_net(options.arch, 19, 'imagenet', options.decoder).to(device)
    loss_of_maps = lambda maps, batch: maps_loss(maps)
    loss_of_logits = lambda logits, batch: F.cross_entropy(logits.float(), batch['label'])
    steps = {'project': (training_step(encoder, encoder, loss_of_maps, precision), batches),
             'torchvision': (training_step(reference.features, torchvision_stage_outputs(reference.features),
                                           loss_of_maps, precision), batches),
             'seg net': (training_step(seg_net, seg_net, loss_of_logits, precision), batches)}

    speed = side_by_side.speeds(side_by_side.interleaved(steps, options.steps, device, clock), options.batch_size, 3)
    print(f'{options.arch} {options.height}x{options.width}, batch {options.batch_size}, {options.steps} steps each, '
          f'{device}, {options.threads} threads, {options.clock} clock, median step: project encoder {speed["project"]:.2f} images/s, '
          f'torchvision features {speed["torchvision"]:.2f} images/s; project / torchvision = '
          f'{speed["project"] / speed["torchvision"]:.2f}x; whole segmentation network ({options.decoder}) '
          f'{speed["seg net"]:.2f} images/s')


if __name__ == '__main__':
    main()
