"""The depth training step side by side with Monodepth2's own, on the same batches, interleaved.

The project's step is built as `pretrain.py --task depth --bench` builds it (ResNet-18 depth network and
PoseNet, source_views, monodepth2_loss, the loop's step with Adam).
Monodepth2's step is composed from its own networks and layers (`pip install monodepth2`: its
ResnetEncoder, DepthDecoder, PoseDecoder, BackprojectDepth, Project3D, SSIM, get_smooth_loss) the way
its trainer does it for frames 0/-1/+1 and four scales: depth from frame 0, one pose-encoder pass per
pair (-1, 0) and (0, +1), every scale upsampled to full resolution and warped, SSIM 0.85 / L1 0.15,
auto-masking against the unwarped sources (with its tie-breaking noise), the per-pixel minimum,
edge-aware smoothness 1e-3 / 2^scale of the mean-normalised disparity, Adam. Monodepth2 is used here
only to measure against; the project does not depend on it.

Both steps get the same tensors: a few batches of a small toy world rendered at the benchmark size into
a temporary folder and read by the project's loader (Monodepth2's loader would hand it the smaller
images for the smoothness term, so those are prepared outside its timed step). The steps alternate
(project, Monodepth2, project, ...) so that load from other processes hits both alike; speeds are taken from
the median step. On a machine shared with other jobs, OMP_WAIT_POLICY=PASSIVE keeps busy-waiting threads from
dominating the timings.

    python benchmarks/monodepth2_step.py                          # 96 x 320, batch 8, 6 steps each
    python benchmarks/monodepth2_step.py --steps 10 --threads 2 --profile
    python benchmarks/monodepth2_step.py --device cuda --height 192 --width 640 --batch-size 12 --steps 20

On CUDA the project's step runs as pretrain.py runs it (bfloat16 autocast where the GPU supports it;
--fp32 switches that off) and Monodepth2's as its trainer does (float32); steps are timed to the GPU's end.
"""
import sys
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import data  # noqa: E402
import models  # noqa: E402
import pretrain  # noqa: E402
import side_by_side  # noqa: E402
import toyworld  # noqa: E402
import training  # noqa: E402


def import_monodepth2():
    """Monodepth2's `networks` and `layers` modules, or None and the reason when it is not installed."""
    try:
        import layers
        import networks
        networks.DepthDecoder, layers.BackprojectDepth  # noqa: B018 (the right package, not a namesake)
    except (ImportError, AttributeError):
        return None, 'Monodepth2 is not installed (pip install monodepth2; used only by this benchmark)'
    return (networks, layers), None


def toy_batches(height, width, batch_size, count, seed):
    """`count` training batches of a small toy world rendered at height x width, as pretrain.py loads them."""
    root = Path(tempfile.mkdtemp(prefix='bench-toy-')) / 'world'
    toyworld.render_toy_world(root, height, width, drives=1, frames=batch_size * count + 2, test_frames=3,
                          labelled=0, seed=seed)
    snippets = data.Kitti(root).snippets('train', frame_ids=(0, -1, 1))
    dataset = data.VideoSnippets(snippets, height, width, augment=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(seed))
    return list(loader)[:count]


def project_step(args, device, fp32=False):
    """The project's training step on a batch, built as pretrain_depth builds it for --bench."""
    depth_net = models.build_depth_net(args.arch, 'unit').to(device)
    pose_net = models.PoseNet(args.arch, 'unit').to(device)
    params = [*depth_net.parameters(), *pose_net.parameters()]
    optimizer = torch.optim.Adam(params, lr=args.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)
    autocast = (lambda _: torch.autocast(device.type, enabled=False)) if fp32 else training.autocast
    pretrain.autocast = autocast  # source_views runs the PoseNet under it

    def loss_fn(batch):
        batch = training.to_device(batch, device)
        with autocast(device):
            disps = [d.float() for d in depth_net(batch['frames_aug'][:, 0])]
        return pretrain.monodepth2_loss(disps, *pretrain.source_views(batch, pose_net, args.supervision), batch, args)

    return side_by_side.project_step(loss_fn, optimizer, scheduler)


def monodepth2_step(networks, layers, batch_size, height, width, device, lr=1e-4, scales=4, smoothness=1e-3):
    """Monodepth2's training step (its trainer's process_batch, compute_losses and update, monocular,
    separate_resnet pose, pairs), composed from its own networks and layers."""
    encoder = networks.ResnetEncoder(18, False)
    depth = networks.DepthDecoder(encoder.num_ch_enc, range(scales))
    pose_encoder = networks.ResnetEncoder(18, False, num_input_images=2)
    pose = networks.PoseDecoder(pose_encoder.num_ch_enc, num_input_features=1, num_frames_to_predict_for=2)
    backproject, project3d = layers.BackprojectDepth(batch_size, height, width), layers.Project3D(batch_size, height, width)
    ssim = layers.SSIM()
    modules = (encoder, depth, pose_encoder, pose)
    for module in modules + (backproject, project3d, ssim):
        module.to(device)
    optimizer = torch.optim.Adam([p for m in modules for p in m.parameters()], lr)

    def reprojection(pred, target):
        return 0.85 * ssim(pred, target).mean(1, True) + 0.15 * (target - pred).abs().mean(1, True)

    def step(inputs):
        outputs = depth(encoder(inputs['color_aug', 0]))
        target = inputs['color', 0, 0]
        poses = {}
        for f in (-1, 1):
            pair = [inputs['color_aug', min(f, 0)], inputs['color_aug', max(f, 0)]]  # temporal order
            axisangle, translation = pose([pose_encoder(torch.cat(pair, 1))])
            poses[f] = layers.transformation_from_parameters(axisangle[:, 0], translation[:, 0], invert=f < 0)
        total = 0
        for scale in range(scales):
            disp = outputs['disp', scale]
            _, d = layers.disp_to_depth(F.interpolate(disp, [height, width], mode='bilinear', align_corners=False),
                                        0.1, 100.0)
            points = backproject(d, inputs['inv_K'])
            warped = [F.grid_sample(inputs['color', f, 0], project3d(points, inputs['K'], poses[f]),
                                    padding_mode='border') for f in (-1, 1)]
            errors = torch.cat([reprojection(w, target) for w in warped], 1)
            identity = torch.cat([reprojection(inputs['color', f, 0], target) for f in (-1, 1)], 1)
            identity = identity + torch.randn(identity.shape, device=device) * 0.00001
            loss = torch.min(torch.cat((identity, errors), 1), 1)[0].mean()
            norm_disp = disp / (disp.mean(2, True).mean(3, True) + 1e-7)
            loss = loss + smoothness * layers.get_smooth_loss(norm_disp, inputs['color', 0, scale]) / 2 ** scale
            total = total + loss
        total = total / scales
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        return total.detach()

    return step


def monodepth2_inputs(batch, device, scales=4):
    """A project batch in Monodepth2's input dictionary, with the smaller target images its loader provides."""
    batch = training.to_device(batch, device)
    frames, aug = batch['frames'], batch['frames_aug']
    inputs = {'K': batch['K'], 'inv_K': batch['inv_K']}
    for i, f in enumerate((0, -1, 1)):
        inputs['color', f, 0], inputs['color_aug', f] = frames[:, i], aug[:, i]
    for s in range(1, scales):
        inputs['color', 0, s] = F.interpolate(frames[:, 0], scale_factor=0.5 ** s, mode='area')
    return inputs


def profile(name, step, batch, rows):
    """Per-operator self CPU time of one step (after a warm-up step)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    step(batch)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step(batch)
    print(f'--- {name}: per-operator self CPU time, one step')
    print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=rows))


def main(argv=None):
    parser = side_by_side.parser(__doc__.split('\n\n')[0], 96, 320, 8, 6)
    parser.add_argument('--profile', action='store_true', help='print per-operator profiles instead of timing')
    parser.add_argument('--rows', type=int, default=25, help='operators per profile table')
    parser.add_argument('--fp32', action='store_true', help='CUDA: run the project\'s step without bfloat16 autocast')
    options = parser.parse_args(argv)
    reference, missing = import_monodepth2()
    warnings.filterwarnings('ignore', category=UserWarning)  # Monodepth2's old torchvision arguments
    torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)
    args = pretrain.parse_args(['--task', 'depth', '--height', str(options.height), '--width', str(options.width),
                                '--batch-size', str(options.batch_size)])
    batches = toy_batches(options.height, options.width, options.batch_size, options.batches, options.seed)
    device = training.pick_device(options.device)
    steps = {'project': (project_step(args, device, options.fp32), batches)}
    if reference:
        steps['monodepth2'] = (monodepth2_step(*reference, options.batch_size, options.height, options.width, device),
                               [monodepth2_inputs(b, device) for b in batches])
    else:
        print(f'monodepth2: skipped: {missing}; timing the project\'s step alone.')
    if options.profile:
        for name, (step, inputs) in steps.items():
            profile(name, step, inputs[0], options.rows)
        return
    speed = side_by_side.speeds(side_by_side.interleaved(steps, options.steps, device), options.batch_size)
    ratio = f'; project / monodepth2 = {speed["project"] / speed["monodepth2"]:.2f}x' if reference else ''
    print(f'{options.height}x{options.width}, batch {options.batch_size}, {options.steps} steps each, '
          f'{device}, {options.threads} threads, median step: ' + ', '.join(f'{n} {v:.2f} images/s' for n, v in speed.items()) +
          ratio)


if __name__ == '__main__':
    main()
