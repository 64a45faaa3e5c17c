"""End to end on a tiny toy world: pre-train, resume, fine-tune (frozen and not), evaluate, refuse bad input."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision

import evaluate
import finetune
import pretrain
import training
from conftest import SMALL, read_metrics


@pytest.fixture(scope='module')
def pretrained(toy_root, tmp_path_factory):
    """Four pre-training iterations, checkpointed at 2 and 4; returns (runs folder, exported checkpoint)."""
    tmp = tmp_path_factory.mktemp('pretrain')
    out = tmp / 'checkpoints' / 'depth.pt'
    pretrain.main(['--data-root', str(toy_root), '--runs', str(tmp / 'runs'), '--out', str(out), '--iters', '4',
                   '--eval-every', '2', '--save-every', '2', '--log-every', '1', '--name', 'depth'] + SMALL)
    return tmp / 'runs', out


def test_pretraining_writes_run_folder_and_checkpoint(pretrained):
    runs, out = pretrained
    run = runs / 'depth'
    assert json.loads((run / 'args.json').read_text())['iters'] == 4
    lines = read_metrics(run)
    evals = [m for m in lines if m['split'] == 'eval']
    assert [m['iter'] for m in evals] == [2, 4] and all(0 < m['abs_rel'] < 10 for m in evals)
    assert [m['split'] for m in lines].count('baseline') == 1
    assert sorted(p.name for p in run.glob('sample_*.png')) == ['sample_000002.png', 'sample_000004.png']
    checkpoint = torch.load(out, weights_only=False)
    assert checkpoint['iter'] == 4 and checkpoint['task'] == 'depth' and checkpoint['normalization'] == 'unit'
    assert set(checkpoint['model']) == set(torch.load(run / 'checkpoint.pt', weights_only=False)['model'])


def test_resume_continues_the_run(pretrained, toy_root, tmp_path):
    runs, _ = pretrained
    copy = tmp_path / 'runs'
    shutil.copytree(runs, copy)
    base = ['--data-root', str(toy_root), '--runs', str(copy), '--name', 'depth', '--out', str(tmp_path / 'depth.pt'),
            '--eval-every', '2', '--save-every', '2', '--log-every', '1'] + SMALL
    with pytest.raises(SystemExit, match='--resume'):  # a finished run is not overwritten by accident
        pretrain.main(base + ['--iters', '6'])
    before = torch.load(copy / 'depth' / 'checkpoint.pt', weights_only=False)
    pretrain.main(base + ['--iters', '6', '--resume'])
    after = torch.load(copy / 'depth' / 'checkpoint.pt', weights_only=False)
    assert after['iter'] == 6
    assert after['optimizer']['state'][0]['step'] == before['optimizer']['state'][0]['step'] + 2
    iters = [m['iter'] for m in read_metrics(copy / 'depth') if m['split'] == 'train']
    assert iters == [1, 2, 3, 4, 5, 6]


def test_frozen_finetuning_keeps_the_encoder_bit_identical(pretrained, toy_root, tmp_path):
    _, out = pretrained
    finetune.main(['--data-root', str(toy_root), '--runs', str(tmp_path), '--init', str(out), '--freeze-encoder',
                   '--train-size', '4', '--iters', '3', '--eval-every', '3', '--lr', '1e-3', '--name', 'frozen'] + SMALL)
    depth = torch.load(out, weights_only=False)['model']
    seg = torch.load(tmp_path / 'frozen' / 'checkpoint.pt', weights_only=False)
    encoder = [k for k in seg['model'] if k.startswith('encoder.')]
    assert any('running_mean' in k for k in encoder)  # BatchNorm statistics are checked too
    assert all(torch.equal(seg['model'][k], depth[k]) for k in encoder)
    decoder = [k for k in seg['model'] if k.startswith('decoder.') and k.endswith('weight')]
    assert all(not torch.equal(seg['model'][k], depth[k]) for k in decoder)
    assert seg['normalization'] == 'unit' and 0 <= seg['metrics']['miou7'] <= 1


def test_finetuning_loss_falls_and_evaluate_reads_the_runs(pretrained, toy_root, tmp_path):
    finetune.main(['--data-root', str(toy_root), '--runs', str(tmp_path), '--init', 'none', '--train-size', '4',
                   '--iters', '30', '--eval-every', '30', '--log-every', '1', '--lr', '1e-3', '--name', 'none'] + SMALL)
    losses = [m['loss'] for m in read_metrics(tmp_path / 'none') if m['split'] == 'train']
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    evaluate.main([str(tmp_path / 'none'), str(pretrained[0] / 'depth'), '--out-dir', str(tmp_path / 'results')])
    table = (tmp_path / 'results' / 'results.md').read_text()
    assert 'none' in table and 'depth' in table
    assert (tmp_path / 'results' / 'curves.png').stat().st_size > 1000


@pytest.mark.parametrize('argv, message', [
    (['--height', '100'], 'multiples of 32'),
    (['--init', 'depth', '--runs', 'nowhere'], 'pretrain.py --task depth'),
    (['--data', 'kitti', '--data-root', '/no/such/folder'], '--data-root'),
    (['--train-size', '500'], '--train-size'),
])
def test_bad_input_stops_with_one_clear_sentence(argv, message, toy_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # so checkpoints/depth.pt does not exist
    base = SMALL + ['--data-root', str(toy_root), '--train-size', '4', '--runs', str(tmp_path)]
    with pytest.raises(SystemExit, match=message):
        finetune.main(base + argv)  # the flag under test comes last, so it wins
    assert not any(tmp_path.iterdir())  # nothing was written


def test_nan_loss_stops_without_overwriting(toy_root, tmp_path, monkeypatch):
    monkeypatch.setattr(finetune.losses, 'nll_loss', lambda logits, labels: logits.sum() * float('nan'))
    with pytest.raises(SystemExit, match='nan at iteration 1'):
        finetune.main(['--data-root', str(toy_root), '--runs', str(tmp_path), '--train-size', '4', '--iters', '3',
                       '--name', 'nan'] + SMALL)
    assert not (tmp_path / 'nan' / 'checkpoint.pt').exists()


def _start(toy_root, runs, *flags):
    pretrain.main(['--data-root', str(toy_root), '--runs', str(runs), '--name', 'depth', '--out',
                   str(runs / 'depth.pt'), '--iters', '2', '--eval-every', '2', '--save-every', '2'] + SMALL + list(flags))


@pytest.mark.parametrize('resume', [[], ['--resume']])
def test_a_run_folder_without_a_checkpoint_is_no_dead_end(toy_root, tmp_path, capsys, resume):
    folder = tmp_path / 'depth'  # what a start that died before its first save leaves behind
    folder.mkdir()
    (folder / 'args.json').write_text('{}')
    (folder / 'metrics.jsonl').write_text('{"iter": 0, "split": "baseline", "abs_rel": 9.0}\n')
    (folder / 'checkpoint.pt.tmp').write_bytes(b'half a checkpoint')
    _start(toy_root, tmp_path, *resume)
    out = capsys.readouterr().out
    assert ('starts from the beginning' if resume else 'Reusing') in out
    assert not (folder / 'checkpoint.pt.tmp').exists() and torch.load(folder / 'checkpoint.pt', weights_only=False)['iter'] == 2
    assert [m['abs_rel'] for m in read_metrics(folder) if m['split'] == 'baseline'] != [9.0]  # the stale line is gone
    assert json.loads((folder / 'args.json').read_text())['iters'] == 2


def test_a_run_folder_in_use_by_another_process_is_refused(toy_root, tmp_path):
    folder = tmp_path / 'depth'
    folder.mkdir()
    (folder / 'lock').write_text(str(os.getppid()))  # a live process that is not this one
    with pytest.raises(SystemExit, match=f'in use by process {os.getppid()}'):
        _start(toy_root, tmp_path)
    gone = subprocess.Popen(['true'])  # a process that has ended: its lock is stale and taken over
    gone.wait()
    (folder / 'lock').write_text(str(gone.pid))
    _start(toy_root, tmp_path)
    assert (folder / 'lock').read_text() == str(os.getpid())


def test_resume_drops_a_torn_last_metrics_line_and_evaluate_warns(toy_root, tmp_path, capsys):
    _start(toy_root, tmp_path)
    with open(tmp_path / 'depth' / 'metrics.jsonl', 'a') as f:
        f.write('{"iter": 3, "split": "tra')  # killed while writing
    evaluate.read_run(tmp_path / 'depth')
    assert 'the last line of' in capsys.readouterr().err
    _start(toy_root, tmp_path, '--resume', '--iters', '4')
    assert 'is torn' in capsys.readouterr().err
    assert [m['iter'] for m in read_metrics(tmp_path / 'depth') if m['split'] == 'eval'] == [2, 4]
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'args.json').write_text('{"task": "depth"}')
    evaluate.read_run(tmp_path / 'empty')
    assert 'has no metrics yet' in capsys.readouterr().err


def test_resume_applies_and_records_changed_lr_and_iters_and_refuses_defining_flags(toy_root, tmp_path, capsys):
    _start(toy_root, tmp_path, '--lr', '1e-3')
    with pytest.raises(SystemExit, match=r'cannot change what defines the run: --smoothness \(was 0.001, now 0.5\)'):
        _start(toy_root, tmp_path, '--lr', '1e-3', '--resume', '--iters', '4', '--smoothness', '0.5')
    _start(toy_root, tmp_path, '--resume', '--iters', '4', '--lr', '1e-4', '--log-every', '1')
    assert 'Resuming' in capsys.readouterr().out
    args = json.loads((tmp_path / 'depth' / 'args.json').read_text())
    assert args['iters'] == 4 and args['lr'] == 1e-4
    assert args['changes'] == [{'iter': 2, 'iters': [2, 4], 'lr': [1e-3, 1e-4], 'log_every': [10, 1]}]
    lines = read_metrics(tmp_path / 'depth')
    assert {'iter': 2, 'split': 'resume', 'iters': [2, 4], 'lr': [1e-3, 1e-4], 'log_every': [10, 1]} in lines
    # the new rate is the one used: 1e-4 for iteration 3 (the step schedule drops it tenfold for the last quarter)
    assert [m['lr'] for m in lines if m['split'] == 'train' and m['iter'] > 2] == pytest.approx([1e-4, 1e-5])


def _crash_after_saving(iteration, run, monkeypatch):
    """Start `run`, which dies (as if killed) right after writing its checkpoint of `iteration`."""
    save = training.Run.save

    def save_then_crash(self, state):
        save(self, state)
        if state['iter'] == iteration:
            raise KeyboardInterrupt
    with monkeypatch.context() as patch:
        patch.setattr(training.Run, 'save', save_then_crash)
        with pytest.raises(KeyboardInterrupt):
            run()


@pytest.mark.parametrize('workers', ['0', '1'])
def test_resume_after_a_crash_is_bit_identical_to_an_uninterrupted_run(toy_root, tmp_path, monkeypatch, workers):
    # video supervision: flips, colour jitter, a PoseNet, BatchNorm statistics; 6 iterations of batch 2 cross
    # an epoch of the tiny world's 6 training frames; the crash comes right after the checkpoint at 3
    def run(folder, *extra):
        pretrain.main(['--data-root', str(toy_root), '--runs', str(tmp_path / folder), '--name', 'r',
                       '--out', str(tmp_path / f'{folder}.pt'), '--iters', '6', '--eval-every', '3',
                       '--save-every', '3', '--log-every', '1', '--lr', '1e-3'] + SMALL[:-2] + ['--workers', workers]
                      + list(extra))
    run('straight')
    _crash_after_saving(3, lambda: run('crashed'), monkeypatch)
    torch.manual_seed(1234)  # whatever the process did in between does not matter
    run('crashed', '--resume')
    straight, resumed = (torch.load(tmp_path / f / 'r' / 'checkpoint.pt', weights_only=False) for f in ('straight', 'crashed'))
    for part in ('model', 'pose_net'):
        assert straight[part].keys() == resumed[part].keys()
        assert all(torch.equal(straight[part][k], resumed[part][k]) for k in straight[part])  # equal, not close
    losses = [[m['loss'] for m in read_metrics(tmp_path / f / 'r') if m['split'] == 'train'] for f in ('straight', 'crashed')]
    assert len(losses[0]) == 6 and losses[0] == losses[1]


def _bad_inputs(tmp_path):
    """Faulty files and folders for the bad-input table."""
    (tmp_path / 'a_file').write_text('not a folder')
    (tmp_path / 'a_folder').mkdir()
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / 'base.pth')
    torch.save([1, 2, 3], tmp_path / 'list.pt')
    torch.save({'model': {}, 'task': 'depth', 'arch': 'resnet18', 'normalization': 'unit', 'height': 64, 'width': 192,
                'args': {'name': 'someone-else'}}, tmp_path / 'other.pt')  # another run's export


@pytest.mark.parametrize('script, argv, message', [
    ('pretrain', ['--lr=-1e-3'], r'--lr must be a learning rate of 0 or more \(e.g. 1e-4\); got -0.001\.'),
    ('pretrain', ['--workers', '-1'], '--workers must be 0'),
    ('pretrain', ['--out', '{tmp}/a_file/depth.pt'], r'cannot make its folder .*: pass a path you can write\.'),
    ('pretrain', ['--out', '{tmp}/a_folder'], r'is a folder: give the checkpoint file to write'),
    ('pretrain', ['--out', '{tmp}/other.pt'], r'already holds the export of run someone-else: pass another --out, or --overwrite'),
    ('pretrain', ['--runs', '{tmp}/a_file'], r'cannot make the run folder .*: pass a writable --runs\.'),
    ('pretrain', ['--data-root', '{tmp}/typo'], r'--data-root .*typo does not exist: pass a rendered toy world'),
    ('finetune', ['--init', '{tmp}/base.pth', '--arch', 'resnet50'], r"torchvision's ResNet\) holds a resnet18 network; pass --arch resnet18"),
    ('finetune', ['--init', '{tmp}/list.pt'], r'list.pt holds weights of no layout this code reads'),
])
def test_faulty_files_and_flags_stop_with_one_sentence_before_training(script, argv, message, toy_root, tmp_path):
    _bad_inputs(tmp_path)
    base = ['--data-root', str(toy_root), '--runs', str(tmp_path / 'runs'), '--out', str(tmp_path / 'mine.pt'),
            '--iters', '1'] + SMALL
    if script == 'finetune':
        base = [a for a in base if a not in ('--out', str(tmp_path / 'mine.pt'))] + ['--train-size', '4']
    main = pretrain.main if script == 'pretrain' else finetune.main
    with pytest.raises(SystemExit, match=message) as stop:
        main(base + [a.format(tmp=tmp_path) for a in argv])
    assert '\n' not in str(stop.value) and not (tmp_path / 'runs').exists() and not (tmp_path / 'typo').exists()


def test_junk_imagenet_weights_stop_with_a_sentence(toy_root, tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    (tmp_path / 'torch' / 'hub' / 'checkpoints').mkdir(parents=True)
    (tmp_path / 'torch' / 'hub' / 'checkpoints' / 'resnet18-f37072fd.pth').write_bytes(b'<html>not found</html>')
    with pytest.raises(SystemExit, match=r"resnet18-f37072fd.pth is not torchvision's ImageNet resnet18 weights"):
        _start(toy_root, tmp_path, '--init', 'imagenet')


def test_a_full_disk_stops_with_the_space_needed_and_leaves_no_temporary_file(toy_root, tmp_path, monkeypatch):
    def full(obj, path):
        Path(path).write_bytes(b'partial')
        raise RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 123 vs 456')
    monkeypatch.setattr(training.torch, 'save', full)
    with pytest.raises(SystemExit, match=r'could not write .*checkpoint.pt .*: it needs about \d+ MB and \d+ MB are free') as stop:
        _start(toy_root, tmp_path)
    assert 'free some space, then continue with --resume' in str(stop.value)
    assert not list((tmp_path / 'depth').glob('*.tmp'))


def test_an_empty_training_split_stops_with_a_sentence(toy_root, tmp_path):
    root = tmp_path / 'world'
    shutil.copytree(toy_root, root)
    (root / 'splits' / 'train_files.txt').write_text('')
    with pytest.raises(SystemExit, match='the training split lists no items'):
        _start(root, tmp_path)


def test_finetuning_resumes_bit_identically_too(toy_root, tmp_path, monkeypatch):
    # segmentation: random flips of labelled images, a head, the cosine schedule
    def run(folder, *extra):
        finetune.main(['--data-root', str(toy_root), '--runs', str(tmp_path / folder), '--name', 'f', '--train-size', '5',
                       '--iters', '4', '--eval-every', '4', '--save-every', '2', '--log-every', '1', '--lr', '1e-3']
                      + SMALL + list(extra))
    run('straight')
    _crash_after_saving(2, lambda: run('crashed'), monkeypatch)
    run('crashed', '--resume')
    straight, resumed = (torch.load(tmp_path / f / 'f' / 'checkpoint.pt', weights_only=False)['model'] for f in ('straight', 'crashed'))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    losses = [[m['loss'] for m in read_metrics(tmp_path / f / 'f') if m['split'] == 'train'] for f in ('straight', 'crashed')]
    assert len(losses[0]) == 4 and losses[0] == losses[1]


def test_resuming_a_checkpoint_whose_optimiser_has_other_parameter_groups_stops_with_a_sentence(toy_root, tmp_path):
    _start(toy_root, tmp_path, '--supervision', 'stereo')
    checkpoint = tmp_path / 'depth' / 'checkpoint.pt'
    state = torch.load(checkpoint, weights_only=False)
    groups = state['optimizer']['param_groups']
    state['optimizer']['param_groups'] = [dict(groups[0], params=[p for g in groups for p in g['params']])]
    torch.save(state, checkpoint)  # pretrain.py's single Adam group of older code
    with pytest.raises(SystemExit, match=r'--resume: the optimiser in .*checkpoint\.pt does not fit this run\'s \(.*\); '
                                         r'it was written by another version of this code: start a new run') as stop:
        _start(toy_root, tmp_path, '--supervision', 'stereo', '--resume', '--iters', '4')
    assert '\n' not in str(stop.value)


# ---------------------------------------------------------------- no silent wrong results, interrupted runs

def test_out_inside_a_run_folder_is_refused_and_the_checkpoint_stays_resumable(toy_root, tmp_path):
    _start(toy_root, tmp_path)
    folder = tmp_path / 'depth'
    for out, name in ((folder / 'checkpoint.pt', 'depth'), (folder / 'export.pt', 'depth'), (folder / 'x.pt', 'other')):
        resume = ['--resume'] if name == 'depth' else []
        with pytest.raises(SystemExit, match=rf'--out .*{out.name} is inside the run folder .*depth, whose '
                                             r'checkpoint.pt --resume continues from: export outside run folders'):
            _start(toy_root, tmp_path, '--iters', '4', '--out', str(out), '--name', name, *resume)
    assert 'optimizer' in torch.load(folder / 'checkpoint.pt', weights_only=False)  # still resumable
    assert not (folder / 'export.pt').exists() and not (tmp_path / 'other').exists()
    _start(toy_root, tmp_path, '--iters', '4', '--resume')
    assert torch.load(folder / 'checkpoint.pt', weights_only=False)['iter'] == 4


def test_resume_with_iters_below_the_checkpoint_stops_and_changes_nothing(toy_root, tmp_path):
    _start(toy_root, tmp_path, '--iters', '4', '--save-every', '4')
    files = [tmp_path / 'depth' / name for name in ('args.json', 'metrics.jsonl', 'checkpoint.pt')] + [tmp_path / 'depth.pt']
    before = [f.read_bytes() for f in files]
    with pytest.raises(SystemExit, match=r'--iters 2 is below iteration 4, where .*checkpoint.pt already is: resume '
                                         r'with --iters 4 or more \(training cannot be undone\)\.'):
        _start(toy_root, tmp_path, '--resume', '--iters', '2')
    assert [f.read_bytes() for f in files] == before


@pytest.mark.parametrize('script, argv, message', [
    ('finetune', ['--encoder-lr-mult', '-1'], r'--encoder-lr-mult must be 0 or more \(e.g. 0.1 for a pre-trained '
                                              r'encoder\); got -1.0: a negative rate would train the encoder by gradient ascent\.'),
    ('pretrain', ['--step-factor=-0.1'], r'--step-factor must be 0 or more \(e.g. 0.1\): it multiplies the learning '
                                         r'rate; got -0.1, which would train by gradient ascent\.'),
])
def test_negative_learning_rate_multipliers_stop_with_one_sentence(script, argv, message, toy_root, tmp_path):
    main = pretrain.main if script == 'pretrain' else finetune.main
    with pytest.raises(SystemExit, match=message):
        main(['--data-root', str(toy_root), '--runs', str(tmp_path / 'runs'), '--iters', '1'] + SMALL + argv)
    assert not (tmp_path / 'runs').exists()


SCRIPTS = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('name, status, workers', [('SIGTERM', 143, '1'), ('SIGINT', 130, '0')])
def test_a_stop_signal_saves_after_the_step_and_resume_ends_bit_identical(name, status, workers, toy_root, tmp_path):
    # SIGTERM (a cluster's or `timeout`'s stop) and Ctrl-C (SIGINT) reach the whole process group, the
    # DataLoader's workers too: the run finishes its step, saves, says so in one line and exits 128 + signal
    flags = ['--data-root', str(toy_root), '--name', 'f', '--train-size', '4', '--iters', '12', '--eval-every', '12',
             '--save-every', '100', '--log-every', '1', '--lr', '1e-3'] + SMALL[:-1] + [workers]
    process = subprocess.Popen([sys.executable, str(SCRIPTS / 'finetune.py'), '--runs', str(tmp_path / 'stopped')] + flags,
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    metrics = tmp_path / 'stopped' / 'f' / 'metrics.jsonl'
    while not (metrics.is_file() and '"train"' in metrics.read_text()):  # after the first logged step
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    os.killpg(process.pid, getattr(signal, name))
    out, err = process.communicate(timeout=300)
    stopped = torch.load(tmp_path / 'stopped' / 'f' / 'checkpoint.pt', weights_only=False)['iter']
    assert process.returncode == status and 1 <= stopped < 12
    assert out.splitlines()[-1] == f'stopped at iteration {stopped}: `--resume` continues' and 'Traceback' not in err
    for _ in range(100):  # its DataLoader workers end with it
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail('processes of the stopped run are left running')
    finetune.main(flags + ['--runs', str(tmp_path / 'stopped'), '--resume'])
    finetune.main(flags + ['--runs', str(tmp_path / 'straight')])
    straight, resumed = (torch.load(tmp_path / f / 'f' / 'checkpoint.pt', weights_only=False) for f in ('straight', 'stopped'))
    assert resumed['iter'] == 12 and straight['model'].keys() == resumed['model'].keys()
    assert all(torch.equal(straight['model'][k], resumed['model'][k]) for k in straight['model'])  # equal, not close
    losses = [[m['loss'] for m in read_metrics(tmp_path / f / 'f') if m['split'] == 'train'] for f in ('straight', 'stopped')]
    assert len(losses[0]) == 12 and losses[0] == losses[1]
