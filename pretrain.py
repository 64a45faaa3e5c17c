"""Pre-training: depth (self-supervised from video or stereo, or from ground truth) and optical flow.

Depth, the Monodepth2 recipe (paper App. B.2, eq. 9-11): a depth network (ResNet encoder + U-Net
decoder, sigmoid disparity at four scales) predicts frame t's depth; source views are warped into frame
t through it and the per-pixel minimum photometric error, auto-masked, is minimised with an edge-aware
smoothness prior. The source views are frames t-1 and t+1 with a PoseNet's camera motion (--supervision
mono), the other stereo camera with the calibrated baseline (stereo, depth in metres), or all three
(mono+stereo); --supervision gt instead fits the dataset's depth (masked L1, eq. 15, or SILog).
--init imagenet starts the encoders from ImageNet ("Depth" in the paper; none is "Depth-Rand"), and
--crop-size trains on random crops ("Depth-cropped", App. D.1).

Optical flow (--task flow, App. B.3): a siamese network predicts the flow from frame t to t+1, trained
by the photometric term of eq. 13 and the smoothness of eq. 14, evaluated by end-point error.

This file also holds the parts of a training run that finetune.py shares: the common flags, the
device, the data root, the run folder (args.json, metrics.jsonl, samples, atomic checkpoints,
--resume), the learning-rate schedules and the --bench timing.

    python pretrain.py --task depth                 # toy world, rendered on first use
    python pretrain.py --task depth --supervision stereo --init imagenet
    python pretrain.py --task flow
    python pretrain.py --task depth --data kitti --data-root /data/kitti --height 192 --width 640
"""
import argparse
import atexit
import itertools
import json
import os
import random
import resource
import shutil
import sys
import time
from pathlib import Path

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torchvision.utils import flow_to_image  # noqa: E402
from tqdm import tqdm  # noqa: E402

import data  # noqa: E402
import evaluate  # noqa: E402
import losses  # noqa: E402
import models  # noqa: E402

TOY_ROOT = 'data/toy'


# ------------------------------------------------------------------------------------------------
# Shared by pretrain.py and finetune.py
# ------------------------------------------------------------------------------------------------

def add_common_args(parser, iters, lr, batch_size, eval_every):
    """Flags spelled the same in both scripts (DESIGN.md)."""
    parser.add_argument('--data', choices=['toy', 'kitti'], default='toy',
                        help='toy: the bundled toy world (rendered into --data-root on first use); '
                             'kitti: a real KITTI tree at --data-root')
    parser.add_argument('--data-root', default=None, help=f'dataset folder (default for toy: {TOY_ROOT})')
    parser.add_argument('--arch', choices=['resnet18', 'resnet50'], default='resnet18', help='encoder')
    parser.add_argument('--height', type=int, default=64, help='network input height (multiple of 32)')
    parser.add_argument('--width', type=int, default=192, help='network input width (multiple of 32)')
    parser.add_argument('--batch-size', type=int, default=batch_size)
    parser.add_argument('--iters', type=int, default=iters, help='training iterations')
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
    parser.add_argument('--bench', type=int, default=0, metavar='N',
                        help='run N timed training steps, print images/s, ms/step, data-wait share and '
                             'peak memory, and exit (no run folder is written)')


def add_depth_eval_args(parser):
    """Where the depth data's splits are, and how depth is scored (KITTI's two protocols)."""
    parser.add_argument('--split', default=None, metavar='DIR',
                        help='folder holding train_files.txt and val_files.txt (and test_files.txt): default '
                             '<data-root>/splits; Monodepth2\'s splits/eigen_zhou works as it is')
    parser.add_argument('--eval-split', default=None, metavar='DIR',
                        help='depth: folder holding test_files.txt (default: --split), e.g. Monodepth2\'s '
                             'splits/eigen (697 frames) or splits/eigen_benchmark (652)')
    parser.add_argument('--eval-protocol', choices=data.EVAL_PROTOCOLS, default=None,
                        help='depth: eigen (default; velodyne ground truth, Garg crop, 1e-3 < gt < 80 m) or '
                             'benchmark (KITTI\'s annotated depth, no crop); test frames without that ground '
                             'truth are skipped and counted')
    parser.add_argument('--median-scaling', choices=['on', 'off'], default=None,
                        help='depth: scale each prediction by median(gt) / median(prediction) before scoring; '
                             'default on for --supervision mono (video fixes no scale), off for metric depth '
                             '(stereo, mono+stereo, gt, fine-tuning)')


def resolve_depth_eval_args(args, task, median_scaling):
    """Fill in the depth evaluation's defaults (recorded in args.json, so tables say what was used); the
    flags stop with a sentence where nothing is scored by them."""
    if task != 'depth':
        given = [f for f in ('eval_split', 'eval_protocol', 'median_scaling') if getattr(args, f) is not None]
        if given:
            raise SystemExit(f'--{given[0].replace("_", "-")} applies to depth evaluation; --task {task} does '
                             f'not score depth.')
        return
    args.eval_protocol = args.eval_protocol or 'eigen'
    args.median_scaling = args.median_scaling or ('on' if median_scaling else 'off')


def depth_eval_name(args, median_scaling):
    """The run-name parts of a depth evaluation that is not the default (median_scaling: the default)."""
    parts = ['benchmark'] if args.eval_protocol == 'benchmark' else []
    if args.median_scaling != ('on' if median_scaling else 'off'):
        parts.append('median-scaled' if args.median_scaling == 'on' else 'metric')
    return parts


def depth_test_set(args, root):
    """The test split's frames with the ground truth of --eval-protocol, said in one line."""
    frames = open_dataset(data.DepthTestFrames, root, 'test', args.height, args.width, args.eval_protocol,
                          args.eval_split or args.split)
    how = evaluate.describe_depth_evaluation(args.eval_protocol, args.median_scaling == 'on')
    print(f'Depth is scored by the {how}: {len(frames)} test frames'
          + (f', {frames.skipped} skipped (no ground truth).' if frames.skipped else '.'))
    return frames


def add_decoder_args(parser):
    """The decoder flags of both scripts: which decoder, and xNet's options (enough for its Table 1 ablation)."""
    parser.add_argument('--decoder', choices=models.DECODERS, default='unet',
                        help='unet: Monodepth2\'s U-Net (the paper, Fig. 1b); deeplab: torchvision\'s DeepLabV3 '
                             'head on the dilated encoder (Fig. 1a/1c); xnet: a reversed ResNet as the decoder')
    parser.add_argument('--decoder-init', default='none',
                        help='xnet: the reversed decoder\'s ResNet: none (random), imagenet (torchvision\'s '
                             'weights), depth or flow (the encoder of checkpoints/<name>.pt), or a checkpoint path')
    parser.add_argument('--xnet-mix', choices=models.XNET_MIXES, default='stem',
                        help='xnet: multiply the re-shaped encoder output into the stem\'s output (xNet), into '
                             'the RGB image (image: xNet-I), or feed it alone to the first stage (none)')
    parser.add_argument('--xnet-pyramid', action='store_true',
                        help='xnet: add pyramid connections, encoder maps into the decoder stages (eq. 2)')
    parser.add_argument('--no-pfp', action='store_true',
                        help='xnet: predict from the last stage instead of the Post Feature Pyramid')


def init_checkpoint(init, flag='--init'):
    """The checkpoint a flag names, as (path, contents): an existing file, or a name (depth, flow) of
    checkpoints/<name>.pt; what is not a checkpoint of this code stops with one sentence."""
    path = Path(init) if Path(init).is_file() or init.endswith('.pt') else Path(f'checkpoints/{init}.pt')
    if not path.is_file():
        hint = (f'run `python pretrain.py --task {init}` first' if path.parent == Path('checkpoints')
                and init in ('depth', 'flow') else 'check the path')
        raise SystemExit(f'{flag} {init}: {path} does not exist; {hint}.')
    try:
        checkpoint = evaluate.load_checkpoint(path)
    except ValueError as error:
        raise SystemExit(f'{flag} {init}: {error}') from None
    return path, checkpoint


def init_decoder_backbone(net, args):
    """--decoder-init: start xNet's reversed decoder from a pre-trained ResNet: torchvision's ImageNet
    weights, or the encoder of a checkpoint (`depth`: a depth-pretrained network used as the decoder, where
    the two papers meet). The backbone's keys are torchvision's, so it loads strictly."""
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
    path, checkpoint = init_checkpoint(args.decoder_init, '--decoder-init')
    state = {k[len('encoder.'):]: v for k, v in checkpoint.get('model', {}).items() if k.startswith('encoder.')}
    try:
        backbone.load_state_dict(state)
    except RuntimeError:
        raise SystemExit(f'--decoder-init {args.decoder_init}: {path} holds no {args.arch} encoder to load into '
                         f'the reversed decoder; pass a checkpoint trained with --arch {args.arch}.') from None
    print(f'Initialised the reversed decoder from the encoder of {path} ({checkpoint.get("task")}).')


def check_args(args):
    """Stop early, with one sentence, on flags that cannot work."""
    try:
        models.check_resolution(args.height, args.width)
    except ValueError as error:
        raise SystemExit(f'--height/--width: {error}') from None
    for flag in ('batch_size', 'iters', 'eval_every', 'save_every', 'log_every'):
        if getattr(args, flag) < 1:
            raise SystemExit(f'--{flag.replace("_", "-")} must be at least 1.')
    if not args.lr >= 0:
        raise SystemExit(f'--lr must be a learning rate of 0 or more (e.g. 1e-4); got {args.lr}.')
    if args.workers < 0:
        raise SystemExit(f'--workers must be 0 (read data in this process) or more; got {args.workers}.')
    xnet_flags = args.decoder_init != 'none' or args.xnet_mix != 'stem' or args.xnet_pyramid or args.no_pfp
    if args.decoder != 'xnet' and xnet_flags:
        raise SystemExit('--decoder-init, --xnet-mix, --xnet-pyramid and --no-pfp apply to --decoder xnet only.')


def pick_device(name):
    """The torch device; CUDA-only speedups (cudnn autotuning) are switched on only there."""
    device = torch.device('cuda' if name == 'auto' and torch.cuda.is_available() else
                          'cpu' if name == 'auto' else name)
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise SystemExit('--device cuda was asked for but no CUDA GPU is visible; use --device cpu.')
        torch.backends.cudnn.benchmark = True
    return device


def autocast(device):
    """bfloat16 autocast for the networks on GPUs that support it; a no-op on CPU."""
    enabled = device.type == 'cuda' and torch.cuda.is_bf16_supported()
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def data_root(args):
    """The dataset folder: the toy world is rendered there on first use; KITTI must exist."""
    if args.data == 'toy':
        if args.data_root and not Path(args.data_root).exists():  # a typo must not start a render silently
            raise SystemExit(f'--data-root {args.data_root} does not exist: pass a rendered toy world, render one '
                             f'there first (`python data.py --render-toy {args.data_root}`), or leave out '
                             f'--data-root to use {TOY_ROOT} (rendered on first use).')
        root = args.data_root or TOY_ROOT
        data.ensure_toy_world(root)
        return root
    if not args.data_root or not Path(args.data_root).is_dir():
        raise SystemExit(f'--data kitti needs --data-root pointing at a KITTI tree (got {args.data_root}); '
                         f'see "Real KITTI" in the README for the layout.')
    return args.data_root


def open_dataset(make, *args, **kwargs):
    """Build a dataset; a missing or malformed one stops the run with its one-sentence message."""
    try:
        return make(*args, **kwargs)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(str(error)) from None


def epoch_batches(count, batch_size, seed, start=0):
    """Batches of (item, draw) pairs of a set of `count` items, epoch after epoch, without end: epoch e
    visits the items in the order of randperm(count) seeded with seed + e, drops its last incomplete
    batch (unless the set is smaller than one batch: then each batch is the whole set) and `draw` numbers
    the items drawn since the start. Batch k depends on nothing but k, so a resumed run continues the
    stream exactly where it stopped (start = the iterations done)."""
    size = min(batch_size, count)
    per_epoch = count // size
    order, epoch = None, None
    for k in itertools.count(start):
        if k // per_epoch != epoch:
            epoch = k // per_epoch
            order = torch.randperm(count, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
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


def training_batches(dataset, args, device, start=0):
    """The training stream from iteration `start` on: epoch_batches of SeededDraws, read by --workers
    processes. A set smaller than one batch says so and trains as one smaller batch; an empty one stops."""
    if not len(dataset):
        raise SystemExit('the training split lists no items: check its split file (--split), or write splits '
                         'with `python data.py --make-splits <data-root>`.')
    if len(dataset) < args.batch_size:
        print(f'The training set holds {len(dataset)} items, fewer than --batch-size {args.batch_size}: '
              f'each batch is all {len(dataset)} of them.')
    stream = epoch_batches(len(dataset), args.batch_size, args.seed, start)
    return iter(torch.utils.data.DataLoader(SeededDraws(dataset, args.seed), batch_sampler=stream,
                                            num_workers=args.workers, pin_memory=device.type == 'cuda'))


def sample_frames(dataset, device, count=4):
    """The frames of `count` evenly spaced items of a dataset, [count, S, 3, H, W]: the PNG samples' inputs."""
    picks = range(0, len(dataset), max(1, len(dataset) // count))[:count]
    return torch.stack([dataset[i]['frames'] for i in picks]).to(device)


def next_batch(batches):
    """The next training batch. A file that cannot be read stops the run with its reader's one sentence,
    also when a DataLoader worker read it (the worker's traceback then wraps the sentence: unwrapped)."""
    try:
        return next(batches)
    except (FileNotFoundError, ValueError) as error:
        message = str(error).strip()
        if 'DataLoader worker process' in message:
            message = message.splitlines()[-1].partition(': ')[2]
        raise SystemExit(message) from None


def to_device(batch, device):
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def save_atomic(obj, path):
    """torch.save to a temporary file, then rename: a crash never leaves a half-written checkpoint. A
    write that fails (a full disk) removes its temporary file and stops with a sentence; the previous
    file stays as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    try:
        torch.save(obj, tmp)
    except (OSError, RuntimeError) as error:
        tmp.unlink(missing_ok=True)
        need = sum(t.numel() * t.element_size() for t in _tensors(obj)) / 2 ** 20
        free = shutil.disk_usage(path.parent).free / 2 ** 20
        raise SystemExit(f'could not write {path} ({str(error).splitlines()[0][:120]}): it needs about {need:.0f} MB '
                         f'and {free:.0f} MB are free there; free some space, then continue with --resume '
                         f'(the previous checkpoint is intact).') from None
    os.replace(tmp, path)


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


def check_export(args):
    """--out, checked before training: a writable file path, and not another run's export (unless
    --overwrite): one sentence otherwise. A temporary file of an interrupted export is removed."""
    out = Path(args.out)
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
            owner = (torch.load(out, map_location='cpu', weights_only=False).get('args') or {}).get('name')
        except Exception:
            owner = None
        if owner != args.name:
            raise SystemExit(f'--out {out} already holds the export of {"run " + owner if owner else "another run"}: '
                             f'pass another --out, or --overwrite to replace it.')


def write_text_atomic(path, text):
    tmp = Path(str(path) + '.tmp')
    tmp.write_text(text)
    os.replace(tmp, path)


class Run:
    """A run folder runs/<name>/: args.json, metrics.jsonl, sample PNGs and checkpoint.pt.

    A folder holding a checkpoint is never overwritten: a new run refuses it, --resume reopens it, drops
    metrics logged after its last checkpoint, and returns that checkpoint to continue from. A folder without
    a checkpoint holds no results (a start that stopped before its first save): it is reused, with or
    without --resume. Temporary files a crash left behind are removed, and a lock file keeps a second
    process out of the folder while one runs.
    """

    def __init__(self, args):
        self.path = Path(args.runs) / args.name
        self.checkpoint = self.path / 'checkpoint.pt'
        self.metrics = self.path / 'metrics.jsonl'
        self.resume = args.resume and self.checkpoint.exists()
        if self.path.exists() and not self.path.is_dir():
            raise SystemExit(f'{self.path} is a file, not a run folder: pass another --name or --runs.')
        if args.resume and not self.resume:
            print(f'--resume: {self.path} holds no checkpoint yet, so the run starts from the beginning.')
        elif self.checkpoint.exists() and not args.resume:
            raise SystemExit(f'{self.path} already holds a run: pass --resume to continue it, or --name '
                             f'to start a new one (nothing was overwritten).')
        elif self.path.is_dir() and any(self.path.iterdir()) and not self.resume:
            print(f'Reusing {self.path}: it holds no checkpoint (an earlier start stopped before its first save).')
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SystemExit(f'cannot make the run folder {self.path} ({error.strerror}): pass a writable --runs.') from None
        self.lock()
        for stale in self.path.glob('*.tmp'):  # a crash between writing and renaming
            stale.unlink()
        self.args = vars(args)
        self.changes = resumed_changes(self.path / 'args.json', self.args) if self.resume else {}
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
                    raise SystemExit(f'{self.path} is in use by process {owner}: wait for it to finish, or stop '
                                     f'it, before running it again.') from None
                lock.unlink(missing_ok=True)  # its process is gone: the lock is stale
                continue
            os.write(descriptor, str(os.getpid()).encode())
            os.close(descriptor)
            atexit.register(lock.unlink, missing_ok=True)
            return
        raise SystemExit(f'could not take the lock {lock}: another process keeps making it; try again.')

    def load(self, device):
        """The checkpoint to resume from, with metrics logged after it removed (a torn last line too)."""
        try:
            state = torch.load(self.checkpoint, map_location=device, weights_only=False)
        except Exception as error:
            raise SystemExit(f'could not read {self.checkpoint} ({error}); it is damaged: start a new run.') from None
        if self.metrics.exists():
            kept = [record for record in evaluate.read_jsonl(self.metrics) if record['iter'] <= state['iter']]
            write_text_atomic(self.metrics, ''.join(json.dumps(record) + '\n' for record in kept))
        if self.changes:  # recorded with the iteration they take effect at, in args.json and the log
            history = json.loads((self.path / 'args.json').read_text()).get('changes', [])
            history.append(dict(iter=state['iter'], **self.changes))
            write_text_atomic(self.path / 'args.json', json.dumps(dict(self.args, changes=history), indent=1) + '\n')
            self.log(iter=state['iter'], split='resume', **self.changes)
        return state

    def log(self, **entry):
        with open(self.metrics, 'a') as f:
            f.write(json.dumps(entry) + '\n')

    def save(self, state):
        save_atomic(state, self.checkpoint)


# What --resume may change: how long, how fast, how often it logs, evaluates and saves, and where it runs
# and reads and writes (a run folder may be moved). Every other flag defines the run and must stay as it was.
CHANGEABLE_ON_RESUME = ('iters', 'lr', 'log_every', 'eval_every', 'save_every', 'workers', 'device', 'data_root',
                        'out', 'overwrite', 'runs', 'name')


def resumed_changes(args_file, args):
    """{flag: [before, now]} of the changeable flags a --resume changes; a change to any other flag stops
    with one sentence naming them."""
    try:
        before = json.loads(args_file.read_text())
    except (OSError, json.JSONDecodeError):
        raise SystemExit(f'--resume: {args_file} is missing or damaged, so the run\'s flags are unknown: start a '
                         f'new run (--name).') from None
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


def optimisation_step(loss, optimizer, scheduler):
    """Backward pass, parameter update, schedule advanced; returns (detached loss, learning rate used).
    A loss that is not finite is not back-propagated and changes nothing (train() then stops on it): on a
    NaN sampling grid, grid_sample's backward can crash the whole process on CPU."""
    lr = scheduler.get_last_lr()[0]
    if not torch.isfinite(loss):
        return loss.detach(), lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.detach(), lr


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


def restore(run, device, networks, optimizer, scheduler):
    """Load the run's last checkpoint into `networks` ({checkpoint key: module}), the optimiser and
    the schedule; returns the checkpoint (its 'iter' is where training continues)."""
    state = run.load(device)
    for key, net in networks.items():
        net.load_state_dict(state[key])
    optimizer.load_state_dict(state['optimizer'])
    scheduler.load_state_dict(state['scheduler'])
    if 'rng' in state:
        set_rng_state(state['rng'])
    if 'lr' in run.changes:  # every group's rate, and the schedule's base, scaled to the new --lr
        factor = run.changes['lr'][1] / run.changes['lr'][0]
        scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
        for group in optimizer.param_groups:
            group['lr'] *= factor
            group['initial_lr'] *= factor
    changed = ''.join(f', --{k.replace("_", "-")} {now} (was {was})' for k, (was, now) in run.changes.items())
    print(f'Resuming {run.path} at iteration {state["iter"]}{changed}.')
    return state


def stop_on_nan(loss, iteration, run, lr):
    """A NaN or infinite loss stops the run before anything is overwritten."""
    if not torch.isfinite(loss):
        raise SystemExit(f'the loss became {loss.item()} at iteration {iteration}: lower --lr (now {lr:g}) or '
                         f'check the input data; the last checkpoint {run.checkpoint} was left as it was.')


def save_image_grid(rows, path, cmaps=None):
    """A PNG of image rows (each a batch of [H, W] or [H, W, 3] tensors), one colour map per row."""
    cmaps = cmaps or [None] * len(rows)
    fig, axes = plt.subplots(len(rows), len(rows[0]), figsize=(4 * len(rows[0]), 1.5 * len(rows)), squeeze=False)
    for r, (row, cmap) in enumerate(zip(rows, cmaps)):
        for i, image in enumerate(row):
            image = image.float().cpu().numpy()
            axes[r, i].imshow(image if cmap else image.clip(0, 1), cmap=cmap)  # jittered colours overshoot
            axes[r, i].axis('off')
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def step_schedule(iters):
    """Monodepth2's schedule per iteration: the learning rate drops tenfold for the last quarter."""
    return lambda it: 1.0 if it < 0.75 * iters else 0.1


def peak_memory_mb(device):
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def benchmark(step, batches, steps, batch_size, device):
    """Time `steps` real training steps after one warm-up: images/s, ms/step, data-wait share, memory."""
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
    print(f'bench: {steps} steps, batch {batch_size}, {device}: {steps * batch_size / total:.2f} images/s, '
          f'{1000 * total / steps:.0f} ms/step, waiting for data {100 * wait / total:.1f}%, '
          f'peak memory {peak_memory_mb(device):.0f} MB')


def train(args, run, step, batches, state, evaluate_now, checkpoint, baseline):
    """The loop both scripts share: step, log, evaluate, checkpoint, with a tqdm bar. `batches(start)` is
    the training stream from iteration `start` on. The baseline (what a trivial prediction scores) is
    logged once and printed next to every evaluation."""
    if not run.resume:
        run.log(iter=0, split='baseline', **baseline)
    batches = batches(state['iter'])
    bar = tqdm(range(state['iter'], args.iters), initial=state['iter'], total=args.iters, dynamic_ncols=True)
    start = time.perf_counter()
    for it in bar:
        loss, lr = step(next_batch(batches))
        stop_on_nan(loss, it + 1, run, lr)
        done = it + 1
        speed = (done - state['iter']) * args.batch_size / (time.perf_counter() - start)
        bar.set_postfix(loss=f'{loss.item():.4f}', img_s=f'{speed:.1f}')
        if done % args.log_every == 0:
            run.log(iter=done, split='train', loss=loss.item(), lr=lr, images_per_s=speed)
        if done % args.eval_every == 0 or done == args.iters:
            metrics = evaluate_now(done)
            run.log(iter=done, split='eval', **metrics)
            state['metrics'] = metrics
            bar.write(f'iteration {done}: {metrics_line(metrics, baseline)}')
        if done % args.save_every == 0 or done == args.iters:
            run.save(checkpoint(done))
    return state


# The measures printed after each evaluation: key -> (label, shown in %).
SUMMARY = {'miou7': ('mIoU(7)', True), 'miou': ('mIoU(19)', True), 'pixel_acc': ('pixel acc', True),
           'abs_rel': ('abs_rel', False), 'rmse': ('rmse', False), 'a1': ('δ<1.25', False),
           'si_rmse': ('SI-RMSE', False), 'epe': ('EPE px', False), 'fl': ('Fl', True)}


def metrics_line(metrics, baseline):
    """One line: each headline measure, with the baseline's value in brackets."""
    def show(value, percent):
        return f'{100 * value:.1f} %' if percent else f'{value:.3f}'
    line = ', '.join(f'{label} {show(metrics[key], percent)}'
                     + (f' (baseline {show(baseline[key], percent)})' if key in baseline else '')
                     for key, (label, percent) in SUMMARY.items() if key in metrics)
    if metrics.get('scale_std'):  # median scaling: its ratios as Monodepth2 prints them
        line += f', scale ratios median {metrics["median_scale"]:.3f} (std {metrics["scale_std"]:.3f})'
    if 'images' in metrics:
        line += f' on {metrics["images"]} frames' + (f' ({metrics["skipped"]} skipped)' if metrics['skipped'] else '')
    return line


# ------------------------------------------------------------------------------------------------
# Self-supervised depth (Monodepth2)
# ------------------------------------------------------------------------------------------------

SUPERVISIONS = ('mono', 'stereo', 'mono+stereo', 'gt')
# Where the depth network starts (models.start_at_depth), and the PoseNet with it (start_moving_forward).
METRIC_START_DEPTH = 10.0  # metres, a typical depth of a driving scene: the stereo warp stays in the image
VIDEO_START_DEPTH = 1.0  # video fixes no scale: near the sigmoid's midpoint, yet the near road (~1/15 of the
                         # median depth) stays above the 0.1 m floor
FRAMES_TO_MEDIAN_DEPTH = 15  # a car filmed at 10 Hz covers the median depth of its view in about 15 frames


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Pre-train a network for depth (self-supervised from video or '
                                                 'stereo, or from ground truth) or for optical flow.')
    parser.add_argument('--task', choices=['depth', 'flow'], default='depth', help='what to pre-train')
    parser.add_argument('--supervision', choices=SUPERVISIONS, default='mono',
                        help='depth only. mono: frames t-1 and t+1 of the video, with a PoseNet (Monodepth2); '
                             'stereo: the other camera\'s image, baseline from the calibration (depth in metres); '
                             'mono+stereo: both; gt: the dataset\'s ground-truth depth (--depth-loss)')
    parser.add_argument('--depth-loss', choices=['l1', 'silog'], default='l1',
                        help='with --supervision gt: masked L1 (eq. 15) or the scale-invariant log loss')
    parser.add_argument('--silog-lambda', type=float, default=0.5, help='lambda of SILog (1: scale-invariant)')
    parser.add_argument('--init', choices=['none', 'imagenet'], default='none',
                        help='encoder before pre-training: none (the paper\'s Depth-Rand) or torchvision\'s '
                             'ImageNet weights (the paper\'s Depth), which also sets ImageNet normalisation')
    parser.add_argument('--crop-size', type=int, nargs=2, metavar=('H', 'W'), default=None,
                        help='train on random HxW crops of the --height x --width images, intrinsics shifted '
                             'with each crop (the paper\'s Depth-cropped, App. D.1); evaluation uses whole images')
    add_common_args(parser, iters=300, lr=1e-4, batch_size=8, eval_every=100)
    add_decoder_args(parser)
    add_depth_eval_args(parser)
    parser.add_argument('--out', default=None, help='checkpoint to export at the end (default checkpoints/<task>.pt)')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace an --out written by another run (without it, that stops the run at the start)')
    parser.add_argument('--scales', type=int, default=4, choices=[1, 2, 3, 4], help='output scales in the loss')
    parser.add_argument('--smoothness', type=float, default=1e-3, help='w_sm of eq. 9 (divided by 2^scale)')
    parser.add_argument('--min-depth', type=float, default=0.1, help='depth of disparity 1 (metres)')
    parser.add_argument('--max-depth', type=float, default=100.0, help='depth of disparity 0 (metres)')
    parser.add_argument('--eval-max-depth', type=float, default=80.0, help='evaluation cap (metres)')
    parser.add_argument('--no-automask', action='store_true', help='switch auto-masking off')
    parser.add_argument('--flow-colour-weight', type=float, default=0.15, help='lambda_co of eq. 13')
    parser.add_argument('--flow-ssim-weight', type=float, default=0.15, help='lambda_st of eq. 13')
    parser.add_argument('--flow-smoothness', type=float, default=5.0, help='lambda_sm of eq. 14 (divided by 2^scale)')
    args = parser.parse_args(argv)
    args.out = args.out or f'checkpoints/{args.task}.pt'
    resolve_depth_eval_args(args, args.task, median_scaling=args.supervision == 'mono')
    args.name = args.name or run_name(args)
    check_args(args)
    if args.task == 'flow' and args.decoder != 'unet':
        raise SystemExit('--decoder applies to --task depth; the flow network has its own siamese U-Net decoder.')
    if args.crop_size:
        try:
            models.check_resolution(*args.crop_size)
        except ValueError as error:
            raise SystemExit(f'--crop-size: {error}') from None
        if args.crop_size[0] > args.height or args.crop_size[1] > args.width:
            raise SystemExit(f'--crop-size {args.crop_size[0]} {args.crop_size[1]} must fit in --height '
                             f'{args.height} x --width {args.width}.')
    return args


def run_name(args):
    """A run folder name that says what was trained: task, supervision, init, crop, arch, size, seed."""
    parts = [args.task] + ([args.supervision] if args.task == 'depth' else [])
    if args.task == 'depth' and args.supervision == 'gt':
        parts.append(args.depth_loss)
    parts += ['imagenet'] if args.init == 'imagenet' else []
    parts += [f'crop{args.crop_size[0]}x{args.crop_size[1]}'] if args.crop_size else []
    if args.decoder != 'unet':
        parts.append(models.describe_decoder(args.decoder, models.xnet_options(args), args.decoder_init))
    if args.task == 'depth':
        parts += depth_eval_name(args, median_scaling=args.supervision == 'mono')
    return '-'.join(parts + [args.arch, f'{args.height}x{args.width}', f's{args.seed}'])


def init_encoders(args, *encoders):
    """Start encoders from ImageNet weights with --init imagenet (PoseNet's conv1 repeated and halved)."""
    if args.init == 'none':
        return
    try:
        for encoder in encoders:
            models.load_imagenet_weights(encoder, args.arch)
    except FileNotFoundError as error:
        raise SystemExit(f'--init imagenet: {error}') from None
    print(f'Initialised {len(encoders)} encoder(s) from torchvision\'s ImageNet {args.arch} weights.')


def predict_poses(pose_net, frames):
    """Target->source transforms for sources t-1 and t+1 (frames [B, 3, 3, H, W]: t, t-1, t+1).

    The PoseNet reads each pair in temporal order, (t-1, t) and (t, t+1), in one batched call; the
    first estimate is inverted so that both map points of frame t into the source frame.
    """
    B = frames.shape[0]
    axisangle, translation = pose_net(torch.cat([frames[:, 1], frames[:, 0]]), torch.cat([frames[:, 0], frames[:, 2]]))
    backward = losses.pose_to_matrix(axisangle[:B], translation[:B], invert=True)
    forward = losses.pose_to_matrix(axisangle[B:], translation[B:])
    return torch.stack([backward, forward], 1)  # [B, 2, 4, 4]


def source_views(batch, pose_net, supervision):
    """The images warped into frame t and their target->source transforms: ([B,S,3,H,W], [B,S,4,4]).
    Video frames t-1, t+1 with PoseNet motion (mono), the other camera with the calibrated baseline
    (stereo), or all three (mono+stereo, Monodepth2's MS)."""
    images, transforms = [], []
    if 'mono' in supervision:
        images.append(batch['frames'][:, 1:])
        with autocast(batch['frames'].device):
            transforms.append(predict_poses(pose_net, batch['frames_aug']).float())
    if 'stereo' in supervision:
        images.append(batch['stereo'][:, None])
        transforms.append(batch['stereo_T'][:, None])
    return torch.cat(images, 1), torch.cat(transforms, 1)


def photometric_depth_loss(disps, sources, poses, batch, args):
    """Eq. 9: per scale, the auto-masked minimum reprojection error (eq. 10) of the source views
    warped with the disparity upsampled to full resolution, plus edge-aware smoothness (eq. 11) of
    the mean-normalised disparity at its own scale, weighted 1e-3 / 2^scale; averaged over scales."""
    target, K, inv_K = losses.as_target(batch['frames'][:, 0]), batch['K'], batch['inv_K']  # SSIM statistics once
    H, W = sources.shape[-2:]
    identity = None if args.no_automask else losses.identity_error(target, list(sources.unbind(1)))
    rays = losses.view_rays(K, inv_K, poses, H, W)  # the same for every scale's depth
    total, disps = 0.0, disps[:args.scales]
    for scale, disp in enumerate(disps):
        depth = models.disp_to_depth(F.interpolate(disp, (H, W), mode='bilinear', align_corners=False),
                                     args.min_depth, args.max_depth)
        warped = losses.warp_views(sources, depth, rays)  # all sources at once
        reprojection, _ = losses.reprojection_loss(target, list(warped.unbind(1)), identity)
        image = F.interpolate(target.image, disp.shape[-2:], mode='area') if scale else target.image
        smooth = losses.smoothness_loss(losses.mean_normalised(disp), image)
        total = total + reprojection + args.smoothness * smooth / 2 ** scale
    return total / len(disps)


def supervised_depth_loss(disps, batch, args):
    """Ground-truth depth: per scale, the depth upsampled to full resolution against the measured pixels,
    by masked L1 (eq. 15) or SILog (Sect. 2.3 of the minimal-transfer paper); averaged over scales."""
    gt, total, disps = batch['depth'], 0.0, disps[:args.scales]
    for disp in disps:
        depth = models.disp_to_depth(F.interpolate(disp, gt.shape[-2:], mode='bilinear', align_corners=False),
                                     args.min_depth, args.max_depth)
        total = total + (losses.silog_loss(depth, gt, lam=args.silog_lambda) if args.depth_loss == 'silog'
                         else losses.l1_depth_loss(depth, gt))
    return total / len(disps)


def save_depth_sample(depth_net, frames, path):
    """A PNG: test images above their predicted disparities (Monodepth2's magma colour map)."""
    depth_net.eval()
    with torch.no_grad():
        disp = depth_net(frames[:, 0])[0].float().cpu()
    depth_net.train()
    save_image_grid([frames[:, 0].permute(0, 2, 3, 1).cpu(), disp[:, 0]], path, cmaps=[None, 'magma'])


def run_pretraining(args, networks, loss_fn, batches, baseline, evaluate_now, info):
    """What depth and flow pre-training share: Adam over all `networks` ({checkpoint key: module}, the
    one fine-tuning starts from under 'model') with Monodepth2's step schedule, --bench, the run folder,
    --resume, the loop, and the exported checkpoint (`info`: what else it records)."""
    params = [p for net in networks.values() for p in net.parameters()]
    optimizer = torch.optim.Adam(params, lr=args.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, step_schedule(args.iters))
    step = lambda batch: optimisation_step(loss_fn(batch), optimizer, scheduler)
    device = next(iter(params)).device
    if args.bench:
        return benchmark(step, batches(0), args.bench, args.batch_size, device)

    check_export(args)
    run = Run(args)
    state = dict(iter=0, metrics={})
    if run.resume:
        state = restore(run, device, networks, optimizer, scheduler)

    def checkpoint(iteration):
        return dict({key: net.state_dict() for key, net in networks.items()}, optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(), rng=rng_state(), task=args.task, arch=args.arch, init=args.init,
                    normalization=networks['model'].normalization, height=args.height, width=args.width,
                    args=vars(args), iter=iteration, metrics=state['metrics'], **info)

    reference = baseline()
    train(args, run, step, batches, state, lambda it: evaluate_now(it, run.path), checkpoint, reference)
    final = checkpoint(args.iters)
    save_atomic({k: v for k, v in final.items() if k not in ('optimizer', 'scheduler', 'rng')}, args.out)
    print(f'{args.task} after {args.iters} iterations: {metrics_line(state["metrics"], reference)}')
    print(f'Wrote {run.path} and {args.out}.')


def pretrain_depth(args, device):
    """Depth pre-training with the chosen supervision; evaluated on the test drive's ground truth. The
    networks (and their ImageNet weights) come first, so a missing file stops the run before any rendering."""
    mono, gt = 'mono' in args.supervision, args.supervision == 'gt'
    normalization = 'imagenet' if args.init == 'imagenet' else 'unit'
    networks = {'model': models.build_depth_net(args.arch, normalization, args.decoder, models.xnet_options(args))}
    if mono:
        networks['pose_net'] = models.build_pose_net(args.arch, normalization)
    init_encoders(args, *(net.encoder for net in networks.values()))
    if args.decoder == 'xnet':
        init_decoder_backbone(networks['model'], args)
    start = VIDEO_START_DEPTH if args.supervision == 'mono' else METRIC_START_DEPTH
    models.start_at_depth(networks['model'], start, args.min_depth, args.max_depth)
    if mono:
        networks['pose_net'].start_moving_forward(start / FRAMES_TO_MEDIAN_DEPTH)
    for net in networks.values():
        net.to(device)
    root = data_root(args)
    train_set = open_dataset(data.VideoSnippets, root, 'train', args.height, args.width,
                             frame_ids=(0, -1, 1) if mono else (0,), augment=True, with_depth=gt,
                             stereo='stereo' in args.supervision, crop=args.crop_size, split_dir=args.split)
    batches = lambda start: training_batches(train_set, args, device, start)
    depth_net, pose_net = networks['model'], networks.get('pose_net')

    def loss_fn(batch):
        batch = to_device(batch, device)
        with autocast(device):
            disps = [d.float() for d in depth_net(batch['frames_aug'][:, 0])]
        if gt:
            return supervised_depth_loss(disps, batch, args)
        return photometric_depth_loss(disps, *source_views(batch, pose_net, args.supervision), batch, args)

    test_set = depth_test_set(args, root)  # read anew at each evaluation: memory stays flat
    sample = sample_frames(test_set, device)

    def evaluate_now(iteration, folder):
        save_depth_sample(depth_net, sample, folder / f'sample_{iteration:06d}.png')
        metrics = evaluate.evaluate_depth(depth_net, test_set, device, args.min_depth, args.max_depth,
                                          args.eval_max_depth, args.median_scaling == 'on', args.workers)
        depth_net.train()
        return metrics

    baseline = lambda: evaluate.constant_baseline_on(test_set, args.eval_max_depth, args.workers)
    return run_pretraining(args, networks, loss_fn, batches, baseline, evaluate_now,
                           dict(decoder=args.decoder, xnet=models.xnet_options(args), supervision=args.supervision))


def flow_loss(flows, batch, args):
    """Per scale: eq. 13 between frame t and frame t+1 warped back by the flow (upsampled to full
    resolution; it is in full-resolution pixels at every scale), plus the edge-aware smoothness of
    eq. 14 on the flow at its own scale, weighted lambda_sm / 2^scale; averaged over scales."""
    target, source = batch['frames'][:, 0], batch['frames'][:, 1]
    total = 0.0
    for scale, flow in enumerate(flows[:args.scales]):
        full = F.interpolate(flow, target.shape[-2:], mode='bilinear', align_corners=False)
        photometric = losses.flow_photometric_error(losses.flow_warp(source, full), target,
                                                    args.flow_colour_weight, args.flow_ssim_weight).mean()
        image = F.interpolate(target, flow.shape[-2:], mode='area') if scale else target
        total = total + photometric + args.flow_smoothness * losses.smoothness_loss(flow, image) / 2 ** scale
    return total / args.scales


def resize_flow(flow, size):
    """Flow [B,2,h,w] in pixels -> [B,2,H,W]: resampled, and each component scaled with its axis."""
    h, w = flow.shape[-2:]
    scale = torch.tensor([size[1] / w, size[0] / h], device=flow.device).view(1, 2, 1, 1)
    return F.interpolate(flow, size, mode='bilinear', align_corners=False) * scale


@torch.no_grad()
def evaluate_flow(flow_net, pairs, device):
    """End-point error and Fl on the ground-truth flow pairs, at the ground truth's resolution."""
    flow_net.eval()
    results = []
    for batch in pairs:
        frames, gt = batch['frames'].to(device), batch['flow'].to(device)
        flow = resize_flow(flow_net(frames[:, 0], frames[:, 1])[0].float(), gt.shape[-2:])
        results.append(evaluate.flow_metrics(flow, gt, batch['valid'].to(device)))
    flow_net.train()
    return evaluate.mean_metrics(results)


def save_flow_sample(flow_net, frames, path):
    """A PNG: first frames above their predicted flow in the usual colour wheel (torchvision's flow_to_image)."""
    flow_net.eval()
    with torch.no_grad():
        flow = flow_net(frames[:, 0], frames[:, 1])[0].float().cpu()
    flow_net.train()
    save_image_grid([frames[:, 0].permute(0, 2, 3, 1).cpu(), flow_to_image(flow).permute(0, 2, 3, 1)], path)


def pretrain_flow(args, device):
    """Siamese optical flow, self-supervised on consecutive frames (App. B.3), evaluated by end-point error."""
    flow_net = models.build_flow_net(args.arch, 'imagenet' if args.init == 'imagenet' else 'unit')
    init_encoders(args, flow_net.encoder)
    flow_net.to(device)
    root = data_root(args)
    train_set = open_dataset(data.VideoSnippets, root, 'train', args.height, args.width, frame_ids=(0, 1),
                             augment=True, crop=args.crop_size, split_dir=args.split)
    batches = lambda start: training_batches(train_set, args, device, start)

    def loss_fn(batch):
        batch = to_device(batch, device)
        with autocast(device):
            flows = [f.float() for f in flow_net(batch['frames_aug'][:, 0], batch['frames_aug'][:, 1])]
        return flow_loss(flows, batch, args)

    pair_set = open_dataset(data.FlowPairs, root, args.height, args.width)
    pairs, sample = evaluate.one_at_a_time(pair_set), sample_frames(pair_set, device)

    def baseline():
        return evaluate.mean_metrics([evaluate.flow_metrics(torch.zeros_like(b['flow']), b['flow'], b['valid'])
                                      for b in pairs])

    def evaluate_now(iteration, folder):
        save_flow_sample(flow_net, sample, folder / f'sample_{iteration:06d}.png')
        return evaluate_flow(flow_net, pairs, device)

    return run_pretraining(args, {'model': flow_net}, loss_fn, batches, baseline, evaluate_now, dict(decoder='siamese-unet'))


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    return (pretrain_flow if args.task == 'flow' else pretrain_depth)(args, device)


if __name__ == '__main__':
    sys.exit(main())
