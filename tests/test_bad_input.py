"""Bad input stops with one sentence naming the flag or file and what to do, never a traceback: flags that
cannot work, damaged files (checkpoints, run folders, the toy world's record), data files found unreadable
while sampling or evaluating (in a DataLoader worker too), outputs that cannot be written (a file in the way,
a read-only file system), and two processes rendering one toy world on first use."""
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import write_png

import data
import evaluate
import finetune
import models
import pretrain
import toyworld
from conftest import SMALL, TINY

REPO = Path(pretrain.__file__).parent


def _pretrain(root, runs, *flags, name='r'):
    pretrain.main(['--data-root', str(root), '--runs', str(runs), '--name', name, '--out', str(runs / f'{name}.pt'),
                   '--iters', '1'] + SMALL + list(flags))


def _finetune(root, runs, *flags):
    finetune.main(['--data-root', str(root), '--runs', str(runs), '--train-size', '4', '--iters', '1'] + SMALL
                  + list(flags))


def _stops(run, match):
    """The one-line sentence `run()` stops with (SystemExit), checked against the regular expression `match`."""
    with pytest.raises(SystemExit) as stop:
        run()
    message = str(stop.value.code)
    assert '\n' not in message and re.search(match, message), message
    return message


# ----------------------------------------------------------------------------------------------------
# Flags that cannot work: refused before anything is read or written
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('script, argv, message', [
    ('pretrain', ['--min-depth', '0'], r'^--min-depth and --max-depth \(the depths of disparity 1 and 0\) must '
                                       r'satisfy 0 < --min-depth < --max-depth; got 0.0 and 100.0\.$'),
    ('pretrain', ['--max-depth', '0.05'], r'< --max-depth; got 0.1 and 0.05\.$'),
    ('pretrain', ['--max-depth', '0'], r'< --max-depth; got 0.1 and 0.0\.$'),  # was replaced by 100, silently
    ('finetune', ['--task', 'depth', '--min-depth', '-1'], r'got -1.0 and 100.0\.$'),
    ('pretrain', ['--eval-max-depth', '0'], r'^--eval-max-depth must be above 0 metres; got 0.0\.$'),
    ('pretrain', ['--device', 'gpu'],
     r'^--device gpu is not a device this code runs on: pass auto, cpu, cuda or cuda:N\.$'),
    ('finetune', ['--device', 'meta'], r'^--device meta is not a device this code runs on'),
    ('pretrain', ['--bench', '-1'], r'^--bench must be 0 \(train\) or the number of steps to time; got -1\.$'),
    ('pretrain', ['--lr', 'inf'], r'^--lr must be a finite number; got inf\.$'),
    ('finetune', ['--weight-decay', 'nan'], r'^--weight-decay must be a finite number; got nan\.$'),
    ('pretrain', ['--smoothness=-inf'], r'^--smoothness must be a finite number; got -inf\.$'),
])
def test_flags_that_cannot_work_stop_with_one_sentence(script, argv, message, toy_root, tmp_path):
    run = (lambda: _pretrain(toy_root, tmp_path / 'runs', *argv)) if script == 'pretrain' else \
        (lambda: _finetune(toy_root, tmp_path / 'runs', *argv))
    _stops(run, message)
    assert not (tmp_path / 'runs').exists()


# ----------------------------------------------------------------------------------------------------
# Damaged files: checkpoints, run folders, the toy world's record
# ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def finished_run(toy_root, tmp_path_factory):
    """A run folder of one iteration of ground-truth depth (runs/r) and its export (runs/r.pt)."""
    runs = tmp_path_factory.mktemp('finished')
    _pretrain(toy_root, runs, '--supervision', 'gt', '--log-every', '1')
    return runs / 'r'


def _copy_run(run, runs):
    """A copy of a run folder to damage: the checkpoint hard-linked (nothing below writes it), the rest copied."""
    copy = runs / run.name
    copy.mkdir(parents=True)
    for file in run.iterdir():
        (os.link if file.name == 'checkpoint.pt' else shutil.copy)(file, copy / file.name)
    return copy


def _partial_checkpoint(path, missing):
    """A checkpoint dict like ours, without the keys `missing`."""
    keys = dict(model={}, task='depth', arch='resnet18', normalization='unit', height=64, width=192)
    torch.save({k: v for k, v in keys.items() if k not in missing}, path)
    return path


def _evaluate_error(argv, capsys):
    """evaluate.py's exit code and its sentence (argparse's last line, 'PROG: error: SENTENCE')."""
    with pytest.raises(SystemExit) as stop:
        evaluate.main(argv)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert ': error: ' in last, last
    return stop.value.code, last.partition(': error: ')[2]


@pytest.mark.parametrize('key, use', list(itertools.product(['normalization', 'height', 'width'],
                                                            ['--checkpoint', 'table', '--predict', '--init'])))
def test_a_checkpoint_lacking_a_key_stops_with_a_sentence_in_every_script(key, use, toy_root, tmp_path, capsys):
    checkpoint = _partial_checkpoint(tmp_path / 'old.pt', [key])
    sentence = (f'{checkpoint} lacks {key}, which every checkpoint of pretrain.py and finetune.py records (it was '
                f'written by an older version of this code, or by hand): pass one of theirs (runs/<name>/checkpoint.pt '
                f'or checkpoints/<task>.pt).')
    if use == '--init':
        assert _stops(lambda: _finetune(toy_root, tmp_path / 'runs', '--init', str(checkpoint)), '') == \
            f'--init {checkpoint}: {sentence}'
        return
    argv = {'--checkpoint': ['--checkpoint', str(checkpoint), '--data-root', str(toy_root)],
            'table': [str(checkpoint)],
            '--predict': ['--checkpoint', str(checkpoint), '--predict', str(tmp_path)]}[use]
    assert _evaluate_error(argv + ['--out-dir', str(tmp_path / 'out')], capsys) == (2, f'{sentence}')


def test_damaged_checkpoints_and_run_folders_given_as_checkpoints_stop_with_a_sentence(finished_run, toy_root, tmp_path,
                                                                                       capsys):
    truncated = tmp_path / 'truncated.pt'
    truncated.write_bytes((finished_run.parent / 'r.pt').read_bytes()[:5000])  # a copy that stopped early
    code, line = _evaluate_error([str(truncated), '--out-dir', str(tmp_path / 'results')], capsys)
    assert code == 2 and re.fullmatch(rf'could not read {truncated} \(.*\): the file is damaged or '
                                      r'truncated; copy or export it again, or pass another checkpoint\.', line)
    assert not (tmp_path / 'results').exists()
    folder = f'{finished_run} is a folder, not a checkpoint: pass its checkpoint, {finished_run}/checkpoint.pt.'
    assert _evaluate_error(['--checkpoint', str(finished_run)], capsys) == (2, f'{folder}')
    for flag in (['--init', str(finished_run)], ['--decoder', 'xnet', '--decoder-init', str(finished_run)]):
        said = _stops(lambda: _finetune(toy_root, tmp_path / 'runs', *flag), '')
        assert said == f'{flag[-2]} {finished_run}: {folder}'
    (tmp_path / 'empty').mkdir()
    assert _evaluate_error(['--checkpoint', str(tmp_path / 'empty')], capsys)[1].endswith(
        'empty is a folder, not a checkpoint: pass a checkpoint file (runs/<name>/checkpoint.pt or '
        'checkpoints/<task>.pt).')


def test_a_damaged_run_folder_stops_resume_and_evaluate_with_a_sentence_naming_the_file(finished_run, toy_root,
                                                                                         tmp_path, capsys):
    runs = tmp_path / 'runs'
    run = _copy_run(finished_run, runs)
    lines = (run / 'metrics.jsonl').read_text().splitlines()
    (run / 'metrics.jsonl').write_text('\n'.join([lines[0], lines[1][:15]] + lines[2:]) + '\n')  # a torn middle line
    resume = lambda: _pretrain(toy_root, runs, '--supervision', 'gt', '--log-every', '1', '--resume', '--iters', '2')
    torn = f'{run}/metrics.jsonl line 2 is not valid JSON: the file is damaged; delete that line.'
    assert _stops(resume, '') == f'--resume: {torn}'
    assert _evaluate_error([str(run), '--out-dir', str(tmp_path / 'results')], capsys) == (2, torn)
    (run / 'metrics.jsonl').write_text('\n'.join(lines) + '\n')
    for damage, why in [('{"task": "dep', r'not JSON: .*'), ('[1, 2]', 'a JSON list, not the run\'s flags')]:
        (run / 'args.json').write_text(damage)
        _stops(resume, rf'^--resume: {run}/args.json is damaged \({why}\), so the run\'s flags are unknown: start a '
                       r'new run \(--name\)\.$')
        code, line = _evaluate_error([str(run), '--out-dir', str(tmp_path / 'results')], capsys)
        assert code == 2 and re.fullmatch(rf'{run}/args.json is damaged \({why}\): restore it from '
                                          r'a copy, or leave the run out\.', line)


def test_a_lock_held_by_a_live_process_names_the_lock_file_and_how_to_remove_it(toy_root, tmp_path):
    lock = tmp_path / 'r' / 'lock'
    lock.parent.mkdir()
    lock.write_text(str(os.getppid()))  # a live process that is not this one
    pid = os.getppid()
    _stops(lambda: _pretrain(toy_root, tmp_path), rf'^{lock.parent} is in use by process {pid} \(its lock file {lock} '
                                                  rf'names it\): wait for that run to finish, or stop it; if process '
                                                  rf'{pid} is no run of this code \(its id was reused after a crash\), '
                                                  rf'delete {lock} and run again\.$')
    assert lock.read_text() == str(pid)


def test_a_toy_world_that_is_a_file_or_has_a_damaged_record_stops_with_a_sentence(tmp_path):
    (tmp_path / 'a_file').write_text('not a world')
    _stops(lambda: _pretrain(tmp_path / 'a_file', tmp_path / 'runs'),
           rf"^{tmp_path}/a_file is a file, not a toy world's folder: pass --data-root a rendered toy world, or a new "
           r"folder to render one into\.$")
    world = tmp_path / 'world'
    world.mkdir()
    for record in ('', '[]', '"kitti"'):
        (world / 'toy_world.json').write_text(record)
        _stops(lambda: _pretrain(world, tmp_path / 'runs'),
               rf"^{world}/toy_world.json is damaged \(it should record the world's layout and version\): delete the "
               rf"world \(rm -r {world}\) and run again to render it\.$")
    assert not (tmp_path / 'runs').exists()


# ----------------------------------------------------------------------------------------------------
# Data files found unreadable while sampling or evaluating: the reader's sentence, from a worker too
# ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def other_worlds(tmp_path_factory):
    """Tiny toy worlds in the NYU and folder layouts (the folder's RGB-D pairs hold .npy depth)."""
    root = tmp_path_factory.mktemp('other_worlds')
    for layout in ('nyu', 'folder'):
        toyworld.render_toy_world(root / layout, layout=layout, height=64, width=128, drives=2, frames=5,
                                  test_frames=4, labelled=6)
    return root


def _truncate(path):
    path.write_bytes(path.read_bytes()[:300])  # the PNG header survives; its pixels do not


def _test_image(root, frame):
    return root / '2011_09_26/2011_09_26_drive_0002_sync/image_02/data' / f'{frame:010d}.png'


def _damaged_copy(case, toy_root, other_worlds, tmp_path):
    """A copy of a toy world with files damaged as `case` says; returns (the world, a regular expression
    matching the damaged files' names, the script's flags)."""
    if case in ('nyu 8-bit depth', 'npy inf'):
        layout = case.split()[0].replace('npy', 'folder')
        root = tmp_path / layout
        shutil.copytree(other_worlds / layout, root)
        flags = ['--data', layout, '--supervision', 'gt', '--width', '128']
        if layout == 'nyu':
            bad = sorted(root.glob('official_splits/test/*/sync_depth_*.png'))[0]
            write_png(torch.zeros(1, 64, 128, dtype=torch.uint8), str(bad))
            return root, re.escape(str(bad)), flags
        for bad in root.glob('rgbd/*_depth.npy'):  # every pair: the first batch reads some
            depth = np.load(bad)
            depth[3, 4] = np.inf
            np.save(bad, depth)
        return root, re.escape(f'{root}/rgbd/') + r'\w+_depth\.npy', flags
    root = tmp_path / 'world'
    shutil.copytree(toy_root, root)
    if case == 'labelled image':
        bad = sorted(root.glob('data_semantics/training/image_2/*.png'))
        for image in bad:  # every labelled image: the evaluation set holds some
            _truncate(image)
        return root, re.escape(f'{bad[0].parent}/') + r'\d+_10\.png', []
    # the test frames are 2..6; samples are drawn from the first four, so frame 6 is read only by evaluations
    bad = _test_image(root, 2 if case == 'sampled test image' else 6)
    _truncate(bad)
    return root, re.escape(str(bad)), []


@pytest.mark.parametrize('case, script, workers', [
    ('sampled test image', pretrain, '1'),
    ('evaluated test image', pretrain, '0'),
    ('evaluated test image', pretrain, '1'),
    ('labelled image', finetune, '1'),
    ('nyu 8-bit depth', pretrain, '1'),
    ('npy inf', pretrain, '1'),
])
def test_a_data_file_found_unreadable_while_sampling_or_evaluating_stops_with_its_sentence(
        case, script, workers, toy_root, other_worlds, tmp_path):
    root, bad, flags = _damaged_copy(case, toy_root, other_worlds, tmp_path)
    argv = ['--data-root', str(root), '--runs', str(tmp_path / 'runs'), '--iters', '1'] + SMALL[:-1] + [workers] + flags
    argv += ['--train-size', '4'] if script is finetune else ['--out', str(tmp_path / 'out.pt')]
    message = _stops(lambda: script.main(argv), f'^(depth map )?{bad} ')
    assert 'Traceback' not in message and 'DataLoader' not in message
    expected = {'nyu 8-bit depth': 'holds 8-bit single-channel pixels, but NYU depth maps are 16-bit',
                'npy inf': r'holds 1 depth values that are negative, infinite or NaN \(e.g. inf\), but a depth map '
                           r'holds metres, 0 where nothing was measured: write 0 there\.$'}.get(case, 'the file is truncated or corrupt')
    assert re.search(expected, message), message


def test_an_unreadable_test_image_read_by_a_worker_prints_one_line_and_exits_1(toy_root, tmp_path):
    root, _, _ = _damaged_copy('evaluated test image', toy_root, None, tmp_path)
    bad = _test_image(root, 6)
    done = subprocess.run([sys.executable, 'pretrain.py', '--data-root', str(root), '--runs', str(tmp_path / 'runs'),
                           '--out', str(tmp_path / 'out.pt'), '--iters', '1'] + SMALL[:-1] + ['1'],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert done.returncode == 1 and 'Traceback' not in done.stderr, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == (f'{bad} is not a PNG or JPEG image that can be decoded: the '
                                                    f'file is truncated or corrupt; re-extract it from its archive.')


def test_split_files_with_a_byte_order_mark_read_as_without(toy_root, other_worlds, tmp_path):
    """Windows editors start UTF-8 files with a byte-order mark, which used to become part of the first line."""
    for name in ('train', 'val', 'test'):
        text = (toy_root / 'splits' / f'{name}_files.txt').read_text()
        (tmp_path / f'{name}_files.txt').write_text('\ufeff' + text, encoding='utf-8')
        assert data.read_split(toy_root, name, tmp_path) == data.read_split(toy_root, name)
    folder = other_worlds / 'folder'
    (tmp_path / 'val_files.txt').write_text('\ufeffrgbd/scene_000_000000_rgb.png\n', encoding='utf-8')
    assert data.read_path_split(folder, 'val', tmp_path) == [folder / 'rgbd/scene_000_000000_rgb.png']


# ----------------------------------------------------------------------------------------------------
# Outputs that cannot be written, said before any work
# ----------------------------------------------------------------------------------------------------

def _nyu_checkpoint(path):
    net = models.build_depth_net('resnet18')
    torch.save(dict(model=net.state_dict(), task='depth', arch='resnet18', normalization='unit', decoder='unet',
                    height=64, width=128), path)
    return path


def _output_commands(tmp_path, toy_root, other_worlds, target):
    """The four commands whose output folder is `target`: (name, argv of `python SCRIPT ...`, exit code)."""
    checkpoint = _nyu_checkpoint(tmp_path / 'net.pt')
    image = next((other_worlds / 'folder' / 'rgbd').glob('*_rgb.png'))
    return [
        ('make-splits', ['data.py', '--make-splits', str(other_worlds / 'folder'), '--data', 'folder', '--random',
                         '--out', str(target / 'splits')], 1),
        ('evaluate --out-dir', ['evaluate.py', str(checkpoint), '--out-dir', str(target / 'results')], 2),
        ('--predict --out-dir', ['evaluate.py', '--checkpoint', str(checkpoint), '--predict', str(image),
                                 '--out-dir', str(target / 'predictions')], 2),
    ]


@pytest.mark.parametrize('command', ['make-splits', 'evaluate --out-dir', '--predict --out-dir'])
def test_an_output_folder_under_a_file_stops_before_any_work(command, toy_root, other_worlds, tmp_path, capsys):
    (tmp_path / 'a_file').write_text('in the way')
    commands = {name: (argv, code) for name, argv, code in _output_commands(tmp_path, toy_root, other_worlds,
                                                                             tmp_path / 'a_file')}
    argv, code = commands[command]
    if argv[0] == 'data.py':  # exits 1 with the sentence
        said = _stops(lambda: data.main(argv[1:]), '^cannot write the split files into ')
    else:  # argparse's error: exit 2
        code, said = _evaluate_error(argv[1:], capsys)
        assert code == 2 and said.startswith(f'--out-dir {tmp_path}/a_file/')
    assert f'({tmp_path}/a_file is a file, not a folder): pass ' in said and 'you can write' in said, said


def _read_only(folder):
    """A command prefix running a command with `folder` mounted read-only (a private mount namespace of an
    unprivileged user namespace: `unshare -rm`), so that writing there fails for root too; None where the
    system does not allow it."""
    prefix = ['unshare', '-rm', 'sh', '-c', 'mount --bind -o ro "$0" "$0" && exec "$@"', str(folder)]
    if not shutil.which('unshare'):
        return None
    probe = subprocess.run(prefix + ['touch', str(folder / 'probe')], capture_output=True, text=True)
    return prefix if probe.returncode and 'Read-only file system' in probe.stderr else None


@pytest.mark.parametrize('command', ['make-splits', 'evaluate --out-dir', '--predict --out-dir', '--resume'])
def test_a_read_only_output_stops_with_a_sentence(command, toy_root, other_worlds, tmp_path):
    target = tmp_path / 'read_only'
    target.mkdir()
    prefix = _read_only(target)
    if prefix is None:
        pytest.skip('no read-only mount possible here (unshare -rm)')
    commands = {name: (argv, code) for name, argv, code in _output_commands(tmp_path, toy_root, other_worlds, target)}
    run = target / 'r'  # a run to resume: its checkpoint is not read before the folder is found read-only
    run.mkdir()
    (run / 'checkpoint.pt').write_bytes(b'not read')
    (run / 'args.json').write_text('{}')
    commands['--resume'] = (['pretrain.py', '--data-root', str(toy_root), '--runs', str(target), '--name', 'r',
                             '--out', str(tmp_path / 'r.pt'), '--resume'] + SMALL, 1)
    argv, code = commands[command]
    done = subprocess.run(prefix + [sys.executable] + argv, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    last = done.stderr.strip().splitlines()[-1].partition('evaluate.py: error: ')
    last = last[2] or last[0]  # the sentence, without argparse's prefix
    assert done.returncode == code and 'Traceback' not in done.stderr, done.stderr[-3000:]
    where = {'make-splits': rf'^cannot write the split files into {target}/splits \({target}: Read-only file system\): '
                            r'pass --out a folder you can write, then --split that folder to the scripts\.$',
             'evaluate --out-dir': rf'^--out-dir {target}/results: cannot write there \({target}: '
                                   r'Read-only file system\): pass a folder you can write\.$',
             '--predict --out-dir': rf'^--out-dir {target}/predictions: cannot write there',
             '--resume': rf'^cannot write into the run folder {run} \({run}: Read-only file system\): make it '
                         r'writable, or copy it to a writable --runs and run there\.$'}[command]
    assert re.search(where, last), last


# ----------------------------------------------------------------------------------------------------
# A checkpoint of other classes, and two renders of one world
# ----------------------------------------------------------------------------------------------------

def test_a_checkpoint_of_40_classes_fine_tunes_on_19_with_a_new_head_and_says_why(toy_root, tmp_path, capsys):
    nyu = models.build_seg_net('resnet18', 40)
    torch.save(dict(model=nyu.state_dict(), task='seg', arch='resnet18', normalization='unit', decoder='unet',
                    xnet=None, num_classes=40, height=64, width=192), tmp_path / 'nyu40.pt')
    _finetune(toy_root, tmp_path / 'runs', '--init', str(tmp_path / 'nyu40.pt'), '--name', 'f', '--lr', '0')
    said = capsys.readouterr().out
    assert 'new: head (the weights\' head predicts 40 classes, this network 19).' in said
    tuned = torch.load(tmp_path / 'runs/f/checkpoint.pt', weights_only=False)['model']
    assert tuned['head.conv.weight'].shape[0] == 19
    assert all(torch.equal(tuned[k], v) for k, v in nyu.state_dict().items()
               if k.startswith(('encoder.', 'decoder.')) and v.is_floating_point() and 'running' not in k)


def test_two_first_use_renders_of_one_world_take_turns(tmp_path, capsys):
    """Another process renders a world on first use (its views slowed down); this process, needing the same
    world meanwhile, waits for it instead of deleting its temporary folder, then uses its world."""
    root = tmp_path / 'world'
    first = subprocess.Popen([sys.executable, '-c', f"""
import sys, time
sys.path.insert(0, {str(REPO)!r})
import toyworld
view = toyworld.render_view
toyworld.render_view = lambda *args, **kwargs: time.sleep(0.02) or view(*args, **kwargs)
toyworld.ensure_toy_world({str(root)!r}, **{TINY!r})
"""], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    for _ in range(1200):  # until its render has begun
        if list(tmp_path.glob('world.tmp-*')) or first.poll() is not None:
            break
        time.sleep(0.05)
    assert first.poll() is None, first.communicate()
    toyworld.ensure_toy_world(root, **TINY)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    said = capsys.readouterr().out
    assert f'Another process is rendering the toy world into {root}: waiting for it to finish...' in said
    assert f'{root} was rendered meanwhile by another process: using it.' in said and 'Rendered the toy world' in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ['world']  # no lock file, no temporary folder left
