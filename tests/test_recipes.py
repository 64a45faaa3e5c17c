"""The papers' recipes as DATASETS.md's commands set them (its table "Hyper-parameters: the papers against the code"),
and the recipe flags reaching what they set: --hue and --no-flip the pre-training's augmentation, --epochs its
length and so the step of its schedule."""
import math

import pytest
import torch

import data
import finetune
import pretrain
from conftest import SMALL
from test_docs import ROOT, code_spans, commands

RECIPES = [(script, argv) for span in code_spans((ROOT / 'DATASETS.md').read_text()) for script, argv in commands(span)]


def recipe(script, *flags):
    """The one DATASETS.md command of `script` holding every flag-value pair in `flags`, parsed by its script."""
    found = [argv for s, argv in RECIPES if s == script and all(f in ' '.join(argv).split(' ') for f in flags)
             and all(' '.join(pair) in ' '.join(argv) for pair in zip(flags[::2], flags[1::2]))]
    assert len(found) == 1, f'{len(found)} commands of {script} with {flags}'
    return (pretrain if script == 'pretrain.py' else finetune).parse_args(list(found[0]))


def test_the_flow_recipe_drops_the_rate_tenfold_after_25_of_50_epochs_at_batch_8():
    args = recipe('pretrain.py', '--task', 'flow')  # App. B.3
    assert (args.lr, args.batch_size, args.epochs, args.height, args.width) == (5e-4, 8, 50, 192, 640)
    assert (args.schedule, args.step_factor, args.epochs * args.step_at) == ('step', 0.1, 25)


def test_the_nyu_pretraining_recipe_halves_the_rate_after_5_of_10_epochs_and_jitters_without_hue_or_flips():
    args = recipe('pretrain.py', '--data', 'nyu', '--loss', 'l1')  # App. B.5
    assert (args.lr, args.batch_size, args.epochs, args.height, args.width) == (1e-4, 8, 10, 384, 448)
    assert (args.schedule, args.step_factor, args.epochs * args.step_at) == ('step', 0.5, 5)
    assert (args.hue, args.no_flip) == (0, True)


def test_the_cityscapes_recipes_jitter_without_hue_and_fine_tune_with_deeplabv3s_sgd():
    args = recipe('pretrain.py', '--data', 'cityscapes')  # App. B.4
    assert (args.hue, args.no_flip, args.lr, args.schedule, args.batch_size, args.iters) == (0, False, 1e-4, 'linear',
                                                                                             8, 15000)
    for init, lr in (('checkpoints/depth-cityscapes.pt', 0.1), ('imagenet', 0.01)):
        args = recipe('finetune.py', '--data', 'cityscapes', '--init', init, '--iters', '60000')
        assert (args.optim, args.lr, args.momentum, args.weight_decay, args.schedule) == ('sgd', lr, 0.9, 1e-4, 'poly')
        assert (args.crop_size, args.batch_size, args.rescale) == ([512, 512], 8, [0.5, 2.0])


def test_the_kitti_recipe_trains_monodepth2s_20_epochs_and_the_demo_keeps_its_defaults():
    args = recipe('pretrain.py', '--task', 'depth', '--data', 'kitti', '--batch-size', '12', '--epochs', '20')
    assert (args.schedule, args.step_at, args.step_factor, args.hue, args.no_flip) == ('step', 0.75, 0.1, 0.1, False)
    demo = pretrain.parse_args([])  # `python pretrain.py --task depth`: as before these flags
    assert (demo.iters, demo.epochs, demo.hue, demo.no_flip, demo.step_at, demo.lr) == (300, None, 0.1, False, 0.75, 1e-4)
    assert demo.name == 'depth-mono-resnet18-64x192-s0'


def _hue_angle(image):
    """Each pixel's hue as an angle, atan2(sqrt(3) (G - B), 2R - G - B): unchanged by x -> a x + b with the same a > 0
    and b for the three channels, which brightness, contrast and saturation are (before clipping)."""
    r, g, b = image.unbind(-3)
    return torch.atan2(math.sqrt(3) * (g - b), 2 * r - g - b)


def _jittered_hue_changes(toy_root, flags):
    """The largest hue change (radians) in the jittered frames of the toy world's training set as pretrain.py builds
    it with `flags`, over the pixels where no jitter step clipped (every channel inside (0.05, 0.95) before and after)
    and hue is defined (chroma above 0.1)."""
    args = pretrain.parse_args(['--data-root', str(toy_root), '--epochs', '1'] + SMALL + flags)
    snippets = data.Kitti(toy_root).snippets('train', (0, -1, 1))
    train_set = pretrain.training_set(args, snippets)
    changes = []
    for index in range(len(train_set)):
        item = train_set[index]
        before, after = item['frames'], item['frames_aug']
        if torch.equal(before, after):  # this draw did not jitter
            continue
        inside = ((before > 0.05) & (before < 0.95) & (after > 0.05) & (after < 0.95)).all(-3)
        chroma = (before.amax(-3) - before.amin(-3) > 0.1) & (after.amax(-3) - after.amin(-3) > 0.1)
        turn = (_hue_angle(after) - _hue_angle(before)).remainder(2 * math.pi)
        changes.append(torch.minimum(turn, 2 * math.pi - turn)[inside & chroma].max().item())
    assert changes, 'no training item was jittered'
    return max(changes)


def test_hue_reaches_the_pretraining_jitter(toy_root):
    assert _jittered_hue_changes(toy_root, ['--hue', '0']) < 1e-3  # App. B.4-B.5: brightness, contrast, saturation
    assert _jittered_hue_changes(toy_root, []) > 0.05  # Monodepth2's hue jitter (up to 0.1 turn) turns colours


def test_no_flip_reaches_the_pretraining_augmentation_and_epochs_its_length(toy_root):
    snippets = data.Kitti(toy_root).snippets('train', (0, -1, 1))
    plain = data.VideoSnippets(snippets, 64, 192)
    flipped = {}
    for flags in ([], ['--no-flip']):
        args = pretrain.parse_args(['--data-root', str(toy_root), '--epochs', '3', '--hue', '0'] + SMALL + flags)
        train_set = pretrain.training_set(args, snippets)
        assert args.iters == 3 * (len(train_set) // 2)  # --epochs: 3 epochs of batch 2
        torch.manual_seed(0)
        flipped[bool(flags)] = [not torch.equal(train_set[i]['frames'], plain[i]['frames'])  # `frames`: never jittered
                                for i in range(len(train_set))]
    assert any(flipped[False]) and not any(flipped[True])


@pytest.mark.parametrize('hue', ['0.6', '-0.1'])
def test_a_hue_outside_half_a_turn_stops_with_a_sentence(hue):
    with pytest.raises(SystemExit, match=rf'--hue must be between 0 and 0\.5 \(turns of the colour wheel; '
                                         rf'Monodepth2: 0\.1\); got {hue}\.'):
        pretrain.parse_args(['--hue', hue])
