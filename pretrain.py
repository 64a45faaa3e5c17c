"""Pre-training: depth (self-supervised from video or stereo, or from ground truth) and optical flow.

Depth, the Monodepth2 recipe (paper App. B.2, eq. 7-11): a depth network (ResNet encoder + U-Net decoder,
sigmoid disparity at four scales) predicts frame t's depth; source views are warped into frame t through it
(eq. 7-8), and the per-pixel minimum photometric error (eq. 10), auto-masked, is minimised together with an
edge-aware smoothness prior (eq. 11), weighted as eq. 9. The source views are frames t-1 and t+1 with a
PoseNet's camera motion (--supervision mono), the other stereo camera with the calibrated baseline (stereo,
depth in metres), or all three (mono+stereo); --supervision gt instead fits the dataset's depth (masked L1,
eq. 15, or SILog). --init imagenet starts the encoders from ImageNet ("Depth" in the paper; none is
"Depth-Rand"), and --crop-size trains on random crops ("Depth-cropped", App. D.1). The PoseNet is a ResNet of
--arch, or a ResNet-18 whatever other --arch the depth network has (ConvNeXt: models.PoseNet).

Optical flow (--task flow, App. B.3): a siamese network predicts the flow from frame t to t+1, trained by
the photometric term of eq. 13 and the smoothness of eq. 14, evaluated by end-point error and Fl.

Top to bottom: the losses, the two pre-trainings, their training loop (`train`: batch, loss, backward, step,
log, evaluate, checkpoint), the command line. The evaluations are evaluate.py's; what the loop calls beyond the
paper (the run folder, atomic checkpoints, --resume, --bench, the seeded training stream) is training.py's.

    python pretrain.py --task depth                 # toy world, rendered on first use
    python pretrain.py --task depth --supervision stereo --init imagenet
    python pretrain.py --task flow
    python pretrain.py --task depth --data kitti --data-root /data/kitti --height 192 --width 640
"""
import argparse
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import evaluate
import losses
import models
import training
from training import autocast


# ----------------------------------------------------------------------------------------------------
# The losses: Monodepth2 (eq. 7-11) and optical flow (eq. 13-14); depth from ground truth is losses.py's
# ----------------------------------------------------------------------------------------------------

def source_views(batch, pose_net, supervision):
    """The source views of frame t and their transforms (target -> source): ([B,S,3,H,W], [B,S,4,4]).

    mono: frames t-1 and t+1, with the PoseNet's camera motion. The PoseNet reads each pair in temporal
    order, (t-1, t) and (t, t+1), in one batched call; the first estimate (t-1 -> t) is inverted so that
    both map points of frame t into their source frame. stereo: the other camera, with the calibrated
    baseline. mono+stereo: all three (Monodepth2's MS).
    """
    images, poses = [], []
    if 'mono' in supervision:
        frames, B = batch['frames_aug'], len(batch['frames_aug'])  # t, t-1, t+1; the PoseNet sees the jittered ones
        with autocast(frames.device):
            axisangle, translation = pose_net(torch.cat([frames[:, 1], frames[:, 0]]),
                                              torch.cat([frames[:, 0], frames[:, 2]]))
        backward = losses.pose_to_matrix(axisangle[:B].float(), translation[:B].float(), invert=True)
        forward = losses.pose_to_matrix(axisangle[B:].float(), translation[B:].float())
        images.append(batch['frames'][:, 1:])
        poses.append(torch.stack([backward, forward], 1))
    if 'stereo' in supervision:
        images.append(batch['stereo'][:, None])
        poses.append(batch['stereo_T'][:, None])
    return torch.cat(images, 1), torch.cat(poses, 1)


def monodepth2_loss(disps, sources, poses, batch, args):
    """Eq. 9 averaged over the output scales: at each scale, the disparity is upsampled to full resolution,
    turned into depth, and every source view is warped into frame t through it (eq. 7-8); each pixel keeps
    the smallest photometric error (eq. 10) over the sources (a pixel occluded in one source is seen in
    another), and with auto-masking a pixel counts only where that beats every unwarped source (static
    camera, objects moving with the camera: ties go to the unwarped source, whose error carries no gradient).
    The edge-aware smoothness (eq. 11) of the mean-normalised disparity, at its own scale, is weighted
    w_sm / 2^scale (--smoothness).
    """
    target, (H, W) = losses.ssim_statistics(batch['frames'][:, 0]), sources.shape[-2:]  # computed once
    identity = None if args.no_automask else losses.photometric_error(sources, target).min(1, keepdim=True).values
    rays = losses.view_rays(batch['K'], batch['inv_K'], poses, H, W)  # eq. 8's part that depth does not change
    total, disps = 0.0, disps[:args.scales]
    for scale, disp in enumerate(disps):
        depth = models.depth_at(disp, (H, W), args.min_depth, args.max_depth)
        warped = losses.warp_views(sources, depth, rays)                               # eq. 7-8
        reprojection = losses.photometric_error(warped, target).min(1, keepdim=True).values  # eq. 10, min over sources
        if identity is not None:                                                       # auto-masking
            reprojection = torch.where(reprojection < identity, reprojection, identity)
        image = F.interpolate(target.image, disp.shape[-2:], mode='area') if scale else target.image
        smoothness = losses.smoothness_loss(losses.mean_normalised(disp), image)      # eq. 11
        total = total + reprojection.mean() + args.smoothness * smoothness / 2 ** scale  # eq. 9
    return total / len(disps)


def flow_loss(flows, batch, args):
    """Per scale: eq. 13 between frame t and frame t+1 warped back by the flow (upsampled to full
    resolution; it is in full-resolution pixels at every scale), plus the edge-aware smoothness of
    eq. 14 on the flow at its own scale, weighted lambda_sm / 2^scale; averaged over scales."""
    target, source = batch['frames'][:, 0], batch['frames'][:, 1]
    total, flows = 0.0, flows[:args.scales]
    for scale, flow in enumerate(flows):
        full = F.interpolate(flow, target.shape[-2:], mode='bilinear', align_corners=False)
        photometric = losses.flow_photometric_error(losses.flow_warp(source, full), target,
                                                    args.flow_colour_weight, args.flow_ssim_weight).mean()
        image = F.interpolate(target, flow.shape[-2:], mode='area') if scale else target
        total = total + photometric + args.flow_smoothness * losses.smoothness_loss(flow, image) / 2 ** scale
    return total / len(flows)


# ----------------------------------------------------------------------------------------------------
# Pre-training depth and optical flow
# ----------------------------------------------------------------------------------------------------

ITERS = 300  # the training length without --iters or --epochs
SUPERVISIONS = ('mono', 'stereo', 'mono+stereo', 'gt')
# Where the depth network starts (models.start_at_depth), and the PoseNet with it (start_moving_forward).
METRIC_START_DEPTH = 10.0  # metres, a typical depth of a driving scene: the stereo warp stays in the image
INDOOR_START_SHARE = 0.3  # of --max-depth where that is under twice the above (NYU: 3 m of 10, a room's depth)
VIDEO_START_DEPTH = 1.0  # video fixes no scale: near the sigmoid's midpoint, yet the near road (~1/15 of the
                         # median depth) stays above the 0.1 m floor
FRAMES_TO_MEDIAN_DEPTH = 15  # a car filmed at 10 Hz covers the median depth of its view in about 15 frames
# Where video pre-training starts (--video-start): forward, the above; rest, the same with the PoseNet at rest;
# monodepth2, Monodepth2's own start: depth at the sigmoid's midpoint (0.2 m), the PoseNet at rest, its
# translation x 0.01. RESULTS.md measures the three.
VIDEO_STARTS = ('forward', 'rest', 'monodepth2')


def depth_networks(args, device):
    """The depth network (and with video the PoseNet), {checkpoint key: module} on `device`: ImageNet weights
    with --init imagenet, xNet's decoder from --decoder-init, and a starting depth (models.start_at_depth)."""
    normalization = 'imagenet' if args.init == 'imagenet' else 'unit'
    networks = {'model': models.build_depth_net(args.arch, normalization, args.decoder, models.xnet_options(args))}
    monodepth2 = args.video_start == 'monodepth2'
    if 'mono' in args.supervision:
        scale = models.MONODEPTH2_TRANSLATION_SCALE if monodepth2 else models.POSE_SCALE['translation']
        networks['pose_net'] = models.PoseNet(args.arch, normalization, translation_scale=scale)
    training.init_encoders(args, *(net.encoder for net in networks.values()))
    if args.decoder == 'xnet':
        training.init_decoder_backbone(networks['model'], args)
    metric_start = min(METRIC_START_DEPTH, INDOOR_START_SHARE * args.max_depth)
    start = VIDEO_START_DEPTH if args.supervision == 'mono' else metric_start
    if not monodepth2:
        models.start_at_depth(networks['model'], start, args.min_depth, args.max_depth)
    if 'pose_net' in networks and args.video_start == 'forward':
        networks['pose_net'].start_moving_forward(start / FRAMES_TO_MEDIAN_DEPTH)
    return {key: net.to(device) for key, net in networks.items()}


def pretrain_depth(args, device):
    """Depth pre-training with the chosen supervision; evaluated on the test frames' ground truth. The
    networks (and their ImageNet weights) come first, so a missing file stops the run before any rendering."""
    networks = depth_networks(args, device)

    def loss_of(batch, nets):  # nets: the networks as train() runs them (under torchrun, DDP's wrappers)
        with autocast(device):
            disps = [d.float() for d in nets['model'](batch['frames_aug'][:, 0])]
        if args.supervision == 'gt':
            depth = models.depth_at(disps[0], batch['depth'].shape[-2:], args.min_depth, args.max_depth)
            return losses.supervised_depth_loss(depth, batch['depth'], args.loss, args.silog_lambda)  # eq. 15, SILog
        return monodepth2_loss(disps, *source_views(batch, nets.get('pose_net'), args.supervision), batch, args)  # eq. 9

    layout = data.open_layout(args)
    frame_ids = (0, -args.frame_stride, args.frame_stride) if 'pose_net' in networks else (0,)
    snippets = data.open_dataset(layout.snippets, 'train', frame_ids, stereo='stereo' in args.supervision,
                                 with_depth=args.supervision == 'gt', split_dir=args.split)
    train_set = training_set(args, snippets)
    evaluation = evaluate.depth_evaluation(args, layout, device)
    if evaluation is None:
        print('Nothing to evaluate on (no held-out ground truth): the run logs its training loss only.')
    train(args, networks, loss_of, train_set, evaluation)


def training_set(args, snippets):
    """The training snippets, augmented (data.VideoSnippets: flips unless --no-flip, colour jitter with a hue
    shift of up to --hue), cropped with --crop-size; --epochs becomes --iters of this set."""
    train_set = data.open_dataset(data.VideoSnippets, snippets, args.height, args.width, augment=True,
                                  crop=args.crop_size, hue=args.hue, flip=not args.no_flip)
    training.resolve_epochs(args, train_set)
    return train_set


def pretrain_flow(args, device):
    """Siamese optical flow, self-supervised on consecutive frames (App. B.3), evaluated by end-point error."""
    flow_net = models.FlowNet(args.arch, 'imagenet' if args.init == 'imagenet' else 'unit')
    training.init_encoders(args, flow_net.encoder)
    flow_net.to(device)
    if args.data not in ('toy', 'kitti'):
        raise SystemExit('optical flow is scored on KITTI\'s scene-flow pairs (data_scene_flow): --task flow runs '
                         'with --data toy or kitti.')
    layout = data.open_layout(args)
    snippets = data.open_dataset(layout.snippets, 'train', (0, args.frame_stride), split_dir=args.split)
    train_set = training_set(args, snippets)

    def loss_of(batch, nets):
        with autocast(device):
            flows = [f.float() for f in nets['model'](batch['frames_aug'][:, 0], batch['frames_aug'][:, 1])]
        return flow_loss(flows, batch, args)  # eq. 13-14

    pair_set = data.open_dataset(data.FlowPairs, layout.root, args.height, args.width)
    train(args, {'model': flow_net}, loss_of, train_set, evaluate.FlowEvaluation(pair_set, device))


# ----------------------------------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------------------------------

def optimiser(args, networks):
    """--optim (Adam by default; AdamW for xNet, App. A) over every network ({checkpoint key: module}), the
    encoders at --lr x --encoder-lr-mult, and its schedule: --warmup iterations of linear warm-up, then a step
    (the rate times --step-factor from --step-at of the iterations on: Monodepth2's tenfold drop for the last
    quarter, the paper's NYU halving, App. B.5) or linear decay to 0 (App. B.4; xNet)."""
    optimizer = training.make_optimizer(list(networks.values()), args)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, training.lr_schedule(
        args.schedule, args.iters, args.warmup, args.step_at, args.step_factor))


def train(args, networks, loss_of, train_set, evaluation):
    """The training loop: each iteration draws a batch of the seeded stream, minimises `loss_of(batch, networks)`,
    logs it every --log-every iterations, evaluates every --eval-every (`evaluation`: evaluate.py's; None without
    held-out ground truth) and writes a checkpoint every --save-every; SIGTERM or Ctrl-C ends it after the step
    under way, with a checkpoint. --resume continues the run folder's last checkpoint, --bench times the step, and
    the trained networks are exported to --out. Under torchrun each process takes its share of every batch
    (DistributedDataParallel), and rank 0 alone logs, evaluates, saves and exports while the others wait."""
    model, device = networks['model'], next(networks['model'].parameters()).device
    optimizer, scheduler = optimiser(args, networks)
    ddp = training.Distributed()  # one process of torchrun's, or the only one
    outputs = 1 if args.task == 'depth' and args.supervision == 'gt' else args.scales  # the scales the loss reads
    trained = {key: ddp.wrap(net, args.sync_bn, outputs if key == 'model' else None) for key, net in networks.items()}
    run = None

    def step(micro_batches):  # this process's share of a batch -> loss -> backward -> update: the mean loss, the rate
        lr = scheduler.get_last_lr()[0]
        optimizer.zero_grad(set_to_none=True)
        loss = 0.0
        for i, batch in enumerate(micro_batches):  # gradients add up; averaged over processes with the last
            with ddp.no_sync(trained.values(), last=i == len(micro_batches) - 1):
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
    if ddp.main:
        training.check_export(args)
    run = training.Run(args, writer=ddp.main)
    ddp.barrier()  # every process has read the run's flags before rank 0 records what --resume changed
    start, metrics = run.restore(networks, optimizer, scheduler)
    with training.StopOnSignal() as stop:
        baseline = evaluation.baseline() if evaluation and ddp.main else {}
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
            if evaluation and (done % args.eval_every == 0 or done == args.iters):
                if ddp.main:
                    metrics = evaluation(model, run.path / f'sample_{done:06d}.png')
                    model.train()
                    run.log(iter=done, split='eval', **metrics)
                    bar.write(f'iteration {done}: {training.metrics_line(metrics, baseline)}')
                ddp.barrier()
            if done % args.save_every == 0 or done == args.iters or stop.signal:
                if ddp.main:
                    run.save(models.checkpoint_state(networks, args, done, metrics, optimizer, scheduler,
                                                     training.rng_state()))
                ddp.barrier()
            if stop.signal and done < args.iters:
                bar.close()
                del batches  # the DataLoader's workers end here, before the process does
                stop.exit(done)
    if ddp.main:
        training.save_atomic(models.checkpoint_state(networks, args, args.iters, metrics), args.out)
    ddp.barrier()
    summary = training.metrics_line(metrics, baseline) or 'not evaluated (no held-out ground truth)'
    print(f'{args.task} after {args.iters} iterations: {summary}')
    print(f'Wrote {run.path} and {args.out}.')


# ----------------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Pre-train a network for depth (self-supervised from video or '
                                                 'stereo, or from ground truth) or for optical flow.')
    parser.add_argument('--task', choices=['depth', 'flow'], default='depth', help='what to pre-train')
    parser.add_argument('--supervision', choices=SUPERVISIONS, default='mono',
                        help='depth only. mono: frames t-1 and t+1 of the video, with a PoseNet (Monodepth2; '
                             'a ResNet of --arch, ResNet-18 for a ConvNeXt --arch); '
                             'stereo: the other camera\'s image, baseline from the calibration (depth in metres); '
                             'mono+stereo: both; gt: the dataset\'s ground-truth depth (--loss)')
    parser.add_argument('--video-start', choices=VIDEO_STARTS, default='forward',
                        help='with --supervision mono, where training starts. forward: depth at 1 m, the PoseNet '
                             'moving forward 1/15 m per frame, its translation x 0.1; rest: the same, the PoseNet '
                             'at rest; monodepth2: Monodepth2\'s start, depth 0.2 m, the PoseNet at rest, x 0.01')
    parser.add_argument('--loss', '--depth-loss', choices=['l1', 'silog'], default='l1',
                        help='with --supervision gt: masked L1 (eq. 15) or the scale-invariant log loss (--depth-loss: '
                             'its older name)')
    parser.add_argument('--silog-lambda', type=float, default=0.5, help='lambda of SILog (1: scale-invariant)')
    parser.add_argument('--init', choices=['none', 'imagenet'], default='none',
                        help='encoder before pre-training: none (the paper\'s Depth-Rand) or torchvision\'s '
                             'ImageNet weights (the paper\'s Depth), which also sets ImageNet normalisation')
    training.add_common_args(parser, iters=ITERS, lr=1e-4, batch_size=8, eval_every=100)
    training.add_optimizer_args(parser)
    training.add_decoder_args(parser)
    parser.add_argument('--frame-stride', type=int, default=1, metavar='N',
                        help='video: the source frames are t-N and t+N (default 1: the neighbours)')
    training.add_depth_range_args(parser)
    training.add_depth_eval_args(parser, 'default on for --supervision mono (video fixes no scale), off for stereo, '
                                         'mono+stereo and gt (metric depth)')
    parser.add_argument('--out', default=None, help='checkpoint to export at the end (default checkpoints/<task>.pt)')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace an --out written by another run (without it, that stops the run at the start)')
    parser.add_argument('--schedule', choices=['step', 'linear'], default='step',
                        help='learning rate after --warmup: step (--step-factor from --step-at of the iterations on; '
                             'Monodepth2) or linear decay to 0 (the paper\'s Cityscapes recipe, App. B.4; xNet)')
    parser.add_argument('--step-at', type=float, default=0.75, help='step: the share of iterations before the step')
    parser.add_argument('--step-factor', type=float, default=0.1, help='step: the rate is multiplied by this after it')
    parser.add_argument('--hue', type=float, default=0.1,
                        help='the colour jitter\'s largest hue shift, in turns (Monodepth2: 0.1; the paper\'s '
                             'Cityscapes and NYU recipes, App. B.4-B.5, jitter brightness, contrast and saturation '
                             'only: 0)')
    parser.add_argument('--no-flip', action='store_true',
                        help='no horizontal flips (App. B.5 lists none for NYU-Depth-V2)')
    parser.add_argument('--scales', type=int, default=4, choices=[1, 2, 3, 4], help='output scales in the loss')
    parser.add_argument('--smoothness', type=float, default=1e-3, help='w_sm of eq. 9 (divided by 2^scale)')
    parser.add_argument('--no-automask', action='store_true', help='switch auto-masking off')
    parser.add_argument('--flow-colour-weight', type=float, default=0.15, help='lambda_co of eq. 13')
    parser.add_argument('--flow-ssim-weight', type=float, default=0.15, help='lambda_st of eq. 13')
    parser.add_argument('--flow-smoothness', type=float, default=5.0, help='lambda_sm of eq. 14 (divided by 2^scale)')
    args = parser.parse_args(argv)
    training.check_length(args, ITERS)
    args.out = args.out or f'checkpoints/{args.task}.pt'
    training.resolve_depth_eval_args(args, args.task, median_scaling=args.supervision == 'mono')
    args.name = args.name or run_name(args)
    training.check_args(args)
    check_pretraining_args(args)
    return args


def check_pretraining_args(args):
    """Stop early, with one sentence, on pretrain.py's own flags that cannot work."""
    if args.frame_stride < 1:
        raise SystemExit(f'--frame-stride must be 1 or more (frames between a target and its sources); got '
                         f'{args.frame_stride}.')
    if not 0 <= args.hue <= 0.5:
        raise SystemExit(f'--hue must be between 0 and 0.5 (turns of the colour wheel; Monodepth2: 0.1); got '
                         f'{args.hue}.')
    if not args.step_factor >= 0:
        raise SystemExit(f'--step-factor must be 0 or more (e.g. 0.1): it multiplies the learning rate; got '
                         f'{args.step_factor}, which would train by gradient ascent.')
    if args.video_start != 'forward' and (args.task, args.supervision) != ('depth', 'mono'):
        raise SystemExit(f'--video-start {args.video_start} applies to depth from video alone (--task depth '
                         f'--supervision mono); leave it out here: the other supervisions start at a metric depth, '
                         f'which the stereo warp needs, and flow has no depth to start.')
    if args.task == 'flow' and args.decoder != 'unet':
        raise SystemExit('--decoder applies to --task depth; the flow network has its own siamese U-Net decoder.')
    if args.arch in models.MIT_SPECS and (args.task == 'flow' or 'mono' in args.supervision):
        raise SystemExit(f'--arch {args.arch}: the flow network and the PoseNet that video supervision needs are '
                         f'ResNets here; pre-train a Mix Transformer for depth with --supervision stereo or gt.')


def run_name(args):
    """A run folder name that says what was trained: task, supervision, init, crop, arch, size, seed."""
    parts = training.dataset_name(args) + [args.task] + ([args.supervision] if args.task == 'depth' else [])
    if args.task == 'depth' and args.supervision == 'gt':
        parts.append(args.loss)
    parts += ['imagenet'] if args.init == 'imagenet' else []
    parts += [f'crop{args.crop_size[0]}x{args.crop_size[1]}'] if args.crop_size else []
    parts += ['linear'] if args.schedule == 'linear' else []
    parts += [f'hue{args.hue:g}'] if args.hue != 0.1 else []
    parts += ['noflip'] if args.no_flip else []
    parts += [f'start-{args.video_start}'] if args.video_start != 'forward' else []
    if args.decoder != 'unet':
        parts.append(models.describe_decoder(args.decoder, models.xnet_options(args), args.decoder_init))
    if args.task == 'depth':
        parts += training.depth_eval_name(args, median_scaling=args.supervision == 'mono')
    return '-'.join(parts + [args.arch, f'{args.height}x{args.width}', f's{args.seed}'])


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    with training.processes(args) as device, training.unreadable_files_stop():  # under torchrun: its process group
        (pretrain_flow if args.task == 'flow' else pretrain_depth)(args, device)


if __name__ == '__main__':
    main()
