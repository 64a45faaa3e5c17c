"""Every layout beside KITTI's end to end on its toy world (toyworld.py --layout): depth pre-training with each
supervision the dataset offers, few-shot segmentation and depth fine-tuning from its checkpoint, xNet, and
evaluate.py on the checkpoints; runs of a few iterations on tiny renders."""
import json

import pytest
import torch

import evaluate
import finetune
import pretrain
import toyworld
from conftest import read_metrics

FLAGS = ['--height', '64', '--width', '128', '--batch-size', '2', '--workers', '0', '--iters', '2',
         '--eval-every', '2', '--save-every', '2']
RENDER = dict(height=64, width=128, drives=2, frames=5, test_frames=4, labelled=6)


@pytest.fixture(scope='module')
def worlds(tmp_path_factory):
    """Tiny toy worlds in the Cityscapes, NYU and folder layouts."""
    root = tmp_path_factory.mktemp('layouts')
    for layout in ('cityscapes', 'nyu', 'folder'):
        toyworld.render_toy_world(root / layout, layout=layout, **RENDER)
    return root


def _run(script, worlds, layout, tmp_path, *flags):
    """Run a script on a layout's toy world; returns the run folder's metrics lines and args."""
    script.main(['--data', layout, '--data-root', str(worlds / layout), '--runs', str(tmp_path / 'runs'),
                 '--name', 'run', *FLAGS, *flags])
    run = tmp_path / 'runs' / 'run'
    return read_metrics(run), json.loads((run / 'args.json').read_text())


@pytest.mark.parametrize('supervision', ['gt', 'mono', 'stereo'])
def test_cityscapes_pre_trains_depth_from_disparity_video_and_stereo(worlds, tmp_path, supervision):
    lines, args = _run(pretrain, worlds, 'cityscapes', tmp_path, '--supervision', supervision,
                       '--out', str(tmp_path / 'depth.pt'))
    (evaluation,) = [line for line in lines if line['split'] == 'eval']
    assert args['eval_protocol'] == 'cityscapes' and args['eval_max_depth'] == 80.0
    assert evaluation['images'] == 4 and evaluation['abs_rel'] > 0  # the four val images, depth from disparity
    assert [line['split'] for line in lines][0] == 'baseline'


def test_cityscapes_few_shot_segmentation_from_its_depth_checkpoint_scores_the_val_images(worlds, tmp_path):
    _run(pretrain, worlds, 'cityscapes', tmp_path / 'pre', '--supervision', 'gt', '--decoder', 'deeplab',
         '--out', str(tmp_path / 'depth.pt'))
    lines, _ = _run(finetune, worlds, 'cityscapes', tmp_path, '--init', str(tmp_path / 'depth.pt'),
                    '--decoder', 'deeplab', '--train-size', '2', '--optim', 'sgd', '--schedule', 'poly',
                    '--crop-size', '64', '64')
    evaluation = lines[-1]
    assert evaluation['split'] == 'eval' and len(evaluation['per_class_iou']) == 19
    checkpoint = torch.load(tmp_path / 'runs/run/checkpoint.pt', weights_only=False)
    metrics, how = evaluate.evaluate_checkpoint(tmp_path / 'runs/run/checkpoint.pt', worlds / 'cityscapes')
    assert how == '4 images' and metrics['miou'] == pytest.approx(evaluation['miou'])  # the val images again
    assert checkpoint['num_classes'] == 19


def test_nyu_pre_trains_from_its_sensor_and_fine_tunes_40_classes(worlds, tmp_path):
    lines, args = _run(pretrain, worlds, 'nyu', tmp_path / 'pre', '--supervision', 'gt',
                       '--out', str(tmp_path / 'depth.pt'))
    assert args['eval_protocol'] == 'nyu' and args['max_depth'] == 10.0 and args['eval_max_depth'] == 10.0
    assert lines[-1]['images'] == 4  # official_splits/test
    lines, _ = _run(finetune, worlds, 'nyu', tmp_path, '--init', str(tmp_path / 'depth.pt'), '--train-size', '0')
    assert len(lines[-1]['per_class_iou']) == 40
    metrics, how = evaluate.evaluate_checkpoint(tmp_path / 'runs/run/checkpoint.pt', worlds / 'nyu')
    assert how == '4 images' and metrics['miou'] == pytest.approx(lines[-1]['miou'])


def test_nyu_depth_fine_tuning_with_xnet_is_scored_by_the_nyu_protocol(worlds, tmp_path):
    lines, args = _run(finetune, worlds, 'nyu', tmp_path, '--task', 'depth', '--decoder', 'xnet',
                       '--optim', 'adamw', '--schedule', 'linear', '--warmup', '1', '--train-size', '0')
    assert args['eval_protocol'] == 'nyu' and lines[-1]['images'] == 4 and 'log10' in lines[-1]
    metrics, how = evaluate.evaluate_checkpoint(tmp_path / 'runs/run/checkpoint.pt', worlds / 'nyu')
    assert how.startswith('nyu (sensor depth, Eigen crop, 10 m cap), metric: 4 frames scored')
    assert metrics['abs_rel'] == pytest.approx(lines[-1]['abs_rel'])


def test_a_folder_trains_from_video_without_a_test_set_and_from_pairs_with_a_val_split(worlds, tmp_path):
    lines, _ = _run(pretrain, worlds, 'folder', tmp_path / 'video', '--supervision', 'mono', '--frame-stride', '2', '--log-every', '1',
                    '--out', str(tmp_path / 'video.pt'))
    assert {line['split'] for line in lines} == {'train'}  # nothing to score a video on
    root = worlds / 'folder'
    pairs = sorted(p.relative_to(root).as_posix() for p in root.rglob('*_rgb.png'))
    split = tmp_path / 'split'
    split.mkdir()
    (split / 'train_files.txt').write_text('\n'.join(pairs[:-1]) + '\n')
    (split / 'val_files.txt').write_text(pairs[-1] + '\n')
    lines, args = _run(finetune, worlds, 'folder', tmp_path, '--task', 'depth', '--init', str(tmp_path / 'video.pt'),
                       '--split', str(split), '--train-size', '2')
    assert args['eval_protocol'] == 'pairs' and lines[-1]['images'] == 1


def test_a_folder_cannot_be_segmented_and_says_so(worlds, tmp_path):
    with pytest.raises(SystemExit, match='holds no semantic labels'):
        _run(finetune, worlds, 'folder', tmp_path)


def test_a_protocol_of_another_dataset_stops_with_a_sentence(worlds, tmp_path):
    with pytest.raises(SystemExit, match='--eval-protocol eigen is not a protocol of --data nyu: choose nyu'):
        _run(pretrain, worlds, 'nyu', tmp_path, '--supervision', 'gt', '--eval-protocol', 'eigen')
