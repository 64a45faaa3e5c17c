"""Fine-tuning setups on a tiny toy world: decoders, reset decoder, depth as the downstream task,
optimisers and schedules."""
import math

import pytest
import torch

import finetune
import models
import pretrain
import training
from conftest import SMALL, read_metrics


@pytest.fixture(scope='module')
def depth_checkpoint(toy_root, tmp_path_factory):
    """A depth network after two pre-training iterations."""
    tmp = tmp_path_factory.mktemp('depth')
    pretrain.main(['--data-root', str(toy_root), '--runs', str(tmp), '--out', str(tmp / 'depth.pt'), '--iters', '2',
                   '--eval-every', '2'] + SMALL)
    return tmp / 'depth.pt'


def _finetune(toy_root, tmp_path, name, *flags, iters=1):
    """A short fine-tuning run; returns (run folder, its checkpoint)."""
    finetune.main(['--data-root', str(toy_root), '--runs', str(tmp_path), '--name', name, '--train-size', '4',
                   '--iters', str(iters), '--eval-every', str(iters), '--log-every', '1'] + SMALL + list(flags))
    return tmp_path / name, torch.load(tmp_path / name / 'checkpoint.pt', weights_only=False)


def _same(state, reference, prefix, statistics=True):
    """Per tensor under `prefix`: equal in both state dicts? (BatchNorm statistics only if `statistics`:
    they move in a training step even at lr 0.)"""
    keys = [k for k in state if k.startswith(prefix) and k in reference and state[k].dtype.is_floating_point
            and (statistics or 'running_' not in k)]
    assert keys, prefix
    return [torch.equal(state[k], reference[k]) for k in keys]


@pytest.mark.parametrize('flags', [['--decoder', 'deeplab'], ['--reset-decoder'], []])
def test_decoders_load_what_they_should(flags, depth_checkpoint, toy_root, tmp_path):
    _, checkpoint = _finetune(toy_root, tmp_path, 'seg', '--init', str(depth_checkpoint), '--freeze-encoder',
                              '--lr', '1e-3', *flags)
    depth = torch.load(depth_checkpoint, weights_only=False)['model']
    seg = checkpoint['model']
    assert all(_same(seg, depth, 'encoder.'))  # loaded, and frozen: bit-identical, BatchNorm statistics too
    if '--decoder' in flags:
        assert not any(k in depth for k in seg if k.startswith('decoder.'))  # DeepLab's decoder is its own
    else:
        assert not any(_same(seg, depth, 'decoder.'))  # reset, or loaded and then trained one step
    assert checkpoint['decoder'] == (flags[1] if flags[:1] == ['--decoder'] else 'unet')


def test_reset_decoder_starts_from_random_weights(depth_checkpoint, toy_root, tmp_path):
    # lr 0: what is in the checkpoint after one step is what was loaded
    _, loaded = _finetune(toy_root, tmp_path, 'kept', '--init', str(depth_checkpoint), '--lr', '0')
    _, reset = _finetune(toy_root, tmp_path, 'reset', '--init', str(depth_checkpoint), '--lr', '0', '--reset-decoder')
    depth = torch.load(depth_checkpoint, weights_only=False)['model']
    assert all(_same(loaded['model'], depth, 'decoder.')) and not any(_same(reset['model'], depth, 'decoder.'))
    assert all(_same(reset['model'], depth, 'encoder.conv1'))


def test_depth_finetuning_with_silog_reduces_its_loss(toy_root, tmp_path):
    run, checkpoint = _finetune(toy_root, tmp_path, 'depth', '--task', 'depth', '--loss', 'silog', '--lr', '1e-3',
                                iters=25)
    losses = [m['loss'] for m in read_metrics(run) if m['split'] == 'train']
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    evals = [m for m in read_metrics(run) if m['split'] == 'eval']
    assert {'abs_rel', 'rmse', 'silog', 'si_rmse', 'a3'} <= set(evals[-1]) and evals[-1]['median_scale'] == 1.0
    assert checkpoint['task'] == 'depth'


def test_segmentation_checkpoint_seeds_depth_finetuning(depth_checkpoint, toy_root, tmp_path, capsys):
    _, seg = _finetune(toy_root, tmp_path, 'seg', '--init', str(depth_checkpoint), '--lr', '1e-3')
    _, depth = _finetune(toy_root, tmp_path, 'depth', '--task', 'depth', '--init',
                         str(tmp_path / 'seg' / 'checkpoint.pt'), '--loss', 'l1', '--lr', '0')
    assert 'new: head' in capsys.readouterr().out
    assert all(_same(depth['model'], seg['model'], 'decoder.'))  # the segmentation trunk, head replaced
    assert depth['model']['head.convs.0.weight'].shape[0] == 1


def test_a_new_disparity_head_on_a_transferred_decoder_starts_unsaturated(depth_checkpoint, toy_root, tmp_path):
    """A segmentation decoder whose features are large, as after a real fine-tuning (its weights x5 per layer:
    the finest features reach the hundreds), under the new depth head. A randomly drawn head would start most
    of the finest scale's sigmoid saturated (|logit| > 5); the built one starts every scale at the sigmoid of
    its bias, and its weights have a gradient."""
    _finetune(toy_root, tmp_path, 'seg', '--init', str(depth_checkpoint), '--lr', '0')
    seg = torch.load(tmp_path / 'seg' / 'checkpoint.pt', weights_only=False)
    seg['model'] = {k: v * 5 if k.startswith('decoder.') and k.endswith('weight') else v
                    for k, v in seg['model'].items()}
    torch.save(seg, tmp_path / 'loud.pt')
    net = finetune.build_network(finetune.parse_args(['--task', 'depth', '--init', str(tmp_path / 'loud.pt')] + SMALL))
    features = []
    net.head.register_forward_hook(lambda head, inputs, output: features.append(inputs[0]))
    disparities = net.eval()(torch.rand(2, 3, 64, 192, generator=torch.Generator().manual_seed(0)))
    torch.manual_seed(0)
    drawn = models.DispHead().convs[0](features[0][0])
    assert (drawn.abs() > 5).float().mean() > 0.5
    for disp, conv in zip(disparities, net.head.convs):
        assert torch.allclose(disp, torch.sigmoid(conv.bias).expand_as(disp))
    sum(d.mean() for d in disparities).backward()
    assert all(conv.weight.grad.abs().sum() > 0 for conv in net.head.convs)


def test_a_depth_run_whose_head_saturated_stops_with_a_sentence(depth_checkpoint, toy_root, tmp_path):
    """Biases of -200: every disparity is exactly 0 in float32, no gradient can flow and Adam does not move;
    the run stops after 20 such batches, before writing a checkpoint."""
    depth = torch.load(depth_checkpoint, weights_only=False)
    depth['model'] = {k: torch.full_like(v, -200.0) if k.startswith('head.') and k.endswith('bias') else v
                      for k, v in depth['model'].items()}
    torch.save(depth, tmp_path / 'saturated.pt')
    with pytest.raises(SystemExit, match="the depth head's sigmoid saturated: for 20 batches in a row every pixel's "
                                         "disparity was exactly 0 or 1, so no gradient reached the network"):
        _finetune(toy_root, tmp_path, 'stuck', '--task', 'depth', '--init', str(tmp_path / 'saturated.pt'), iters=25)
    assert not (tmp_path / 'stuck' / 'checkpoint.pt').exists()


def test_learning_rate_schedules():
    for name, end in (('cosine', 0.0), ('poly', 0.0), ('linear', 0.0), ('constant', 1.0)):
        factor = training.lr_schedule(name, iters=100, warmup=10)
        assert [round(factor(i), 6) for i in (0, 4, 9)] == [0.1, 0.5, 1.0]  # linear warm-up: (it + 1) / warmup
        assert factor(10) == 1.0 and factor(100) == pytest.approx(end, abs=1e-9)
        assert all(factor(i) >= factor(i + 1) for i in range(10, 100))
    assert training.lr_schedule('cosine', 100)(50) == pytest.approx(0.5)
    assert training.lr_schedule('poly', 100)(50) == pytest.approx(0.5 ** 0.9)
    assert training.lr_schedule('linear', 100, warmup=20)(60) == pytest.approx(0.5)  # half of the 80 after warm-up
    assert training.lr_schedule('cosine', 100, warmup=20)(60) == pytest.approx(0.5)


def test_warm_up_then_a_step_after_step_at_of_the_iterations_after_it():
    factor = training.lr_schedule('step', iters=110, warmup=10, step_at=0.5, step_factor=0.1)
    assert [factor(it) for it in (0, 1, 4, 9)] == [0.1, 0.2, 0.5, 1.0]
    assert [factor(it) for it in (10, 59, 60, 109)] == [1.0, 1.0, 0.1, 0.1]  # 10 + 0.5 x (110 - 10) = 60


@pytest.mark.parametrize('optim, kind', [('adam', torch.optim.Adam), ('adamw', torch.optim.AdamW),
                                         ('sgd', torch.optim.SGD)])
def test_optimisers_and_a_smaller_encoder_learning_rate(optim, kind):
    args = finetune.parse_args(['--optim', optim, '--lr', '1e-3', '--encoder-lr-mult', '0.1', '--weight-decay', '1e-4'])
    net = models.build_seg_net()
    optimizer = training.make_optimizer([net], args)
    assert type(optimizer) is kind
    decoder_group, encoder_group = optimizer.param_groups
    assert decoder_group['lr'] == 1e-3 and math.isclose(encoder_group['lr'], 1e-4)
    assert decoder_group['weight_decay'] == encoder_group['weight_decay'] == 1e-4
    assert len(encoder_group['params']) == len(list(net.encoder.parameters()))
    net.encoder.requires_grad_(False)  # a frozen encoder has no group at all
    assert len(training.make_optimizer([net], args).param_groups) == 1


def test_runs_differing_only_in_seed_share_a_name_but_the_seed():
    names = [finetune.parse_args(['--seed', s, '--init', f'runs/seg-x-s{s}/checkpoint.pt']).name for s in '01']
    assert names[0][:-1] == names[1][:-1] and names[0].endswith('-s0')


def test_xnet_with_a_frozen_encoder_and_a_depth_pretrained_decoder(depth_checkpoint, toy_root, tmp_path, capsys):
    _, checkpoint = _finetune(toy_root, tmp_path, 'xnet', '--init', str(depth_checkpoint), '--decoder', 'xnet',
                              '--decoder-init', str(depth_checkpoint), '--freeze-encoder', '--lr', '0')
    depth = torch.load(depth_checkpoint, weights_only=False)['model']
    seg = checkpoint['model']
    assert all(_same(seg, depth, 'encoder.'))  # frozen: bit-identical, BatchNorm statistics too
    as_decoder = {'decoder.backbone.' + k[len('encoder.'):]: v for k, v in depth.items() if k.startswith('encoder.')}
    assert all(_same(seg, as_decoder, 'decoder.backbone.', statistics=False))  # lr 0: what --decoder-init loaded
    assert 'reversed decoder from the encoder of' in capsys.readouterr().out
    assert checkpoint['decoder'] == 'xnet' and checkpoint['xnet'] == dict(mix='stem', pfp=True, pyramid=False)


def test_xnet_decoder_trains_while_the_frozen_encoder_stays(toy_root, tmp_path):
    _, before = _finetune(toy_root, tmp_path, 'a', '--decoder', 'xnet', '--xnet-mix', 'image', '--freeze-encoder',
                          '--lr', '0')
    _, after = _finetune(toy_root, tmp_path, 'b', '--decoder', 'xnet', '--xnet-mix', 'image', '--freeze-encoder',
                         '--lr', '1e-3')
    assert all(_same(after['model'], before['model'], 'encoder.'))  # same seed, same start; frozen
    assert not any(_same(after['model'], before['model'], 'decoder.reshape_in.mlp'))


def test_xnet_depth_pretraining_then_fine_tuning_transfers_the_whole_decoder(toy_root, tmp_path, capsys):
    out = tmp_path / 'xnet-depth.pt'
    pretrain.main(['--data-root', str(toy_root), '--runs', str(tmp_path), '--out', str(out), '--iters', '2',
                   '--eval-every', '2', '--decoder', 'xnet', '--no-pfp', '--xnet-pyramid'] + SMALL)
    depth = torch.load(out, weights_only=False)
    assert depth['xnet'] == dict(mix='stem', pfp=False, pyramid=True) and len(depth['metrics']) > 0
    _, seg = _finetune(toy_root, tmp_path, 'seg', '--init', str(out), '--decoder', 'xnet', '--no-pfp',
                       '--xnet-pyramid', '--lr', '0')
    assert all(_same(seg['model'], depth['model'], 'decoder.', statistics=False))
    assert 'new: head' in capsys.readouterr().out
    _, other = _finetune(toy_root, tmp_path, 'other', '--init', str(out), '--decoder', 'xnet', '--lr', '0')
    key = 'decoder.backbone.layer1.0.conv1.weight'
    assert not torch.equal(other['model'][key], depth['model'][key])  # another variant: its decoder is new


@pytest.mark.parametrize('flags, message', [
    (['--xnet-mix', 'image'], 'apply to --decoder xnet only'),
    (['--decoder', 'xnet', '--decoder-init', 'missing/nothing.pt'], 'does not exist'),
])
def test_xnet_flags_that_cannot_work_stop_with_a_sentence(flags, message, toy_root, tmp_path):
    with pytest.raises(SystemExit, match=message):
        _finetune(toy_root, tmp_path, 'bad', *flags)
    assert not (tmp_path / 'bad').exists()


def test_each_evaluation_is_printed_next_to_the_majority_class_baseline(toy_root, tmp_path, capsys):
    run, _ = _finetune(toy_root, tmp_path, 'seg', iters=2)
    output = capsys.readouterr()
    printed = output.out + output.err
    baseline = next(m for m in read_metrics(run) if m['split'] == 'baseline')
    # one class everywhere: its IoU is its pixel share at most, every other class scores zero
    assert baseline['pixel_acc'] > 0.2 and sum(v > 0 for v in baseline['per_class_iou']) == 1
    assert 'iteration 2: mIoU(7) ' in printed and f'(baseline {100 * baseline["miou7"]:.1f} %)' in printed


def test_a_missing_init_checkpoint_stops_before_rendering(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r'checkpoints/depth\.pt does not exist; run `python pretrain\.py'):
        finetune.main(['--init', 'depth', '--data-root', str(tmp_path / 'world')])
    assert not (tmp_path / 'world').exists()


def test_a_training_set_smaller_than_the_batch_trains_on_what_there_is(toy_root, tmp_path, capsys):
    finetune.main(['--data-root', str(toy_root), '--runs', str(tmp_path), '--name', 'tiny', '--train-size', '2',
                   '--iters', '2', '--eval-every', '2', '--log-every', '1', '--height', '64', '--width', '192',
                   '--batch-size', '4', '--workers', '0'])
    assert [m['iter'] for m in read_metrics(tmp_path / 'tiny') if m['split'] == 'train'] == [1, 2]
    assert 'holds 2 items, fewer than --batch-size 4: each batch is all 2 of them' in capsys.readouterr().out


def test_depth_evaluation_flags_apply_to_depth_only(toy_root, tmp_path):
    args = finetune.parse_args(['--task', 'depth'])
    assert (args.eval_protocol, args.median_scaling) == ('eigen', 'off')  # fine-tuned depth is metric
    assert 'benchmark' in finetune.parse_args(['--task', 'depth', '--eval-protocol', 'benchmark']).name
    for flags in (['--eval-protocol', 'benchmark'], ['--median-scaling', 'on']):
        with pytest.raises(SystemExit, match='applies to'):
            finetune.parse_args(flags)  # --task seg scores no depth
    # --split may list Cityscapes' or NYU's labelled images for --task seg; KITTI's (the toy world's) split files
    # list raw frames, not data_semantics images: a seg run on them stops with a sentence, before any run folder
    with pytest.raises(SystemExit, match='--split lists KITTI raw frames, not data_semantics images'):
        finetune.main(['--data-root', str(toy_root), '--runs', str(tmp_path), '--name', 'split', '--split',
                       str(toy_root / 'splits')] + SMALL)
    assert not (tmp_path / 'split').exists()


# ----------------------------------------------------------------------------------------------------
# --train-size 0 (all), few-shot picks of a layout with a held-out set, segmentation crops
# ----------------------------------------------------------------------------------------------------

def _nyu_labelled(root, train=3, test=2):
    """NYU's labelled layout by hand: labelled/{train,test}/rgb_XXXXX.png with labels40_XXXXX.png (8 x 8)."""
    from torchvision.io import write_png
    for split, count in (('train', train), ('test', test)):
        (root / 'labelled' / split).mkdir(parents=True)
        for i in range(1, count + 1):
            image = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
            write_png(image, str(root / f'labelled/{split}/rgb_{i:05d}.png'))
            write_png(torch.full((1, 8, 8), i, dtype=torch.uint8), str(root / f'labelled/{split}/labels40_{i:05d}.png'))
    import data
    return data.Nyu(root)


def test_train_size_0_takes_the_whole_pool_where_the_layout_holds_out_its_own_set(tmp_path):
    import data
    layout = _nyu_labelled(tmp_path)
    pool, held_out = layout.labelled()
    assert data.few_shot_sets(layout, 0, seed=0) == (pool, held_out) and len(pool) == 3 and len(held_out) == 2
    # a smaller size: that many of the pool, picked with the seed; the held-out set is the layout's, whatever the pick
    picks = {}
    for seed in range(6):
        train, test = data.few_shot_sets(layout, 2, seed)
        assert len(train) == 2 and len(set(train)) == 2 and set(train) <= set(pool) and test == held_out
        assert data.few_shot_sets(layout, 2, seed)[0] == train  # the same seed, the same pick
        picks[seed] = tuple(p[0].name for p in train)
    assert len(set(picks.values())) > 1  # seeds pick differently
    with pytest.raises(ValueError, match='--train-size must be between 1 and 3 \\(the labelled training images\\); got 4'):
        data.few_shot_sets(layout, 4, seed=0)
    # fine-tuning depth on frames: 0 is every frame, in order
    assert finetune.few_shot(5, finetune.parse_args(['--train-size', '0'])) == ([0, 1, 2, 3, 4], [])
    assert finetune.few_shot(5, finetune.parse_args(['--train-size', '2', '--seed', '3'])) == tuple(
        data.few_shot_split(5, 2, 3))


def test_train_size_0_on_kitti_whose_pool_is_also_its_evaluation_set_stops_with_a_sentence(toy_root, tmp_path):
    import data
    with pytest.raises(ValueError, match=r'--train-size must be between 1 and 11 \(there are 12 labelled images and '
                                         r'the rest are needed for evaluation\); got 0\.'):
        data.few_shot_sets(data.Kitti(toy_root), 0, seed=0)
    with pytest.raises(SystemExit, match=r'--train-size must be between 1 and 11 .*got 0\.'):
        finetune.main(['--data-root', str(toy_root), '--runs', str(tmp_path), '--name', 'all', '--train-size', '0',
                       '--iters', '1'] + SMALL)
    assert not (tmp_path / 'all').exists()  # stopped before the run folder
    with pytest.raises(SystemExit, match='--train-size must be 0 \\(all\\) or more; got -1'):
        finetune.parse_args(['--train-size', '-1'])


def test_segmentation_crops_train_items_of_the_crop_size_and_evaluates_whole_images(toy_root, tmp_path, monkeypatch):
    import data
    import evaluate
    args = finetune.parse_args(['--data-root', str(toy_root), '--train-size', '4', '--crop-size', '64', '128'] + SMALL)
    layout = data.Kitti(toy_root)
    net = finetune.build_network(args)
    train_set, _, evaluation, _ = finetune.segmentation_task(args, layout, net, torch.device('cpu'))
    for index in range(len(train_set)):
        item = train_set[index]
        assert item['image'].shape == (3, 64, 128) and item['label'].shape == (64, 128)
    seen = []
    monkeypatch.setattr(evaluate, 'evaluate_segmentation', lambda net, batches, *rest: seen.extend(batches) or {})
    evaluation(net, tmp_path / 'sample.png')
    assert len(seen) == 4 and all(b['image'].shape[1:] == (3, 64, 192) and b['label'].shape[1:] == (64, 192)
                                  for b in seen)  # 8 held-out images, batches of 2, at --height x --width


def test_labelled_crops_cut_image_and_label_at_the_same_place(tmp_path):
    """Each pixel's label is its column and its image's red value 8 x its column: a crop keeps them together."""
    import data
    from torchvision.io import write_png
    columns = torch.arange(32, dtype=torch.uint8).expand(16, 32)
    image = torch.stack([columns * 8, torch.zeros_like(columns), torch.zeros_like(columns)])
    write_png(image.contiguous(), str(tmp_path / 'image.png'))
    write_png(columns[None].contiguous(), str(tmp_path / 'label.png'))
    read = lambda path: data.read_png(path, 'labels')[0].long()
    crops = data.LabelledImages([(tmp_path / 'image.png', tmp_path / 'label.png', read)], 16, 32, augment=True,
                                crop=(8, 12))
    lefts = set()
    for _ in range(20):
        item = crops[0]
        assert item['image'].shape == (3, 8, 12) and item['label'].shape == (8, 12)
        assert torch.equal((item['image'][0] * 255 / 8).round().long(), item['label'])
        lefts.add(int(item['label'][0].min()))
    assert len(lefts) > 3  # random crops, not one place


def test_run_names_say_all_and_the_crop():
    name = finetune.parse_args(['--train-size', '0', '--crop-size', '64', '64']).name
    assert name == 'seg-none-unet-full-crop64x64-nall-resnet18-64x192-s0'
    assert '-nall-' in finetune.parse_args(['--data', 'nyu', '--train-size', '0']).name
    assert '-n16-' in finetune.parse_args([]).name and 'crop' not in finetune.parse_args([]).name


# ----------------------------------------------------------------------------------------------------
# The papers' recipes: --epochs, xNet's segmentation augmentation and multi-scale test
# ----------------------------------------------------------------------------------------------------

def _args_json(run):
    import json
    return json.loads((run / 'args.json').read_text())


def test_epochs_become_iterations_recorded_in_args_json_and_resume_may_extend_them(toy_root, tmp_path, capsys):
    flags = ['--data-root', str(toy_root), '--runs', str(tmp_path), '--name', 'e', '--train-size', '5',
             '--eval-every', '100', '--log-every', '1'] + SMALL
    finetune.main(flags + ['--epochs', '2'])  # 5 images in batches of 2: 2 batches an epoch (the fifth waits)
    assert '--epochs 2: 4 iterations of batch 2 over 5 training items.' in capsys.readouterr().out
    args = _args_json(tmp_path / 'e')
    assert (args['epochs'], args['iters']) == (2, 4)
    assert [m['iter'] for m in read_metrics(tmp_path / 'e') if m['split'] == 'train'] == [1, 2, 3, 4]
    finetune.main(flags + ['--epochs', '3', '--resume'])
    assert torch.load(tmp_path / 'e' / 'checkpoint.pt', weights_only=False)['iter'] == 6
    assert _args_json(tmp_path / 'e')['changes'] == [dict(iter=4, iters=[4, 6], epochs=[2, 3])]


def test_epochs_of_depth_frames(toy_root, tmp_path):
    finetune.main(['--data-root', str(toy_root), '--runs', str(tmp_path), '--name', 'd', '--task', 'depth',
                   '--train-size', '4', '--epochs', '1', '--eval-every', '100'] + SMALL)
    assert _args_json(tmp_path / 'd')['iters'] == 2 and torch.load(tmp_path / 'd' / 'checkpoint.pt', weights_only=False)['iter'] == 2


@pytest.mark.parametrize('flags, message', [
    (['--epochs', '4', '--iters', '100'], r'--epochs 4 and --iters 100 both say how long to train: give one\.'),
    (['--epochs', '0'], r'--epochs must be at least 1; got 0\.'),
    (['--rescale', '0.5', '2.0'], r'--rescale needs --crop-size H W'),
    (['--rescale', '2.0', '0.5', '--crop-size', '64', '64'], r'--rescale MIN MAX needs 0 < MIN <= MAX; got 2 0\.5\.'),
    (['--task', 'depth', '--photometric'], r'--photometric applies to segmentation; --task depth does not use it\.'),
    (['--task', 'depth', '--eval-scales', '1', '2'], r'--eval-scales applies to segmentation'),
    (['--eval-scales', '0.5', '1.0'], r'--eval-scales: 0\.5 turns the 64x192 images into 32x96'),
    (['--warmup', '300'], r'--warmup must be between 0 and --iters - 1 \(299\); got 300\.'),
])
def test_recipe_flags_that_cannot_work_stop_with_a_sentence(flags, message):
    with pytest.raises(SystemExit, match=message):
        finetune.parse_args(flags)


def test_xnets_segmentation_recipe_runs_end_to_end(toy_root, tmp_path, monkeypatch):
    import evaluate
    seen = []
    scores = evaluate.segmentation_scores
    monkeypatch.setattr(evaluate, 'segmentation_scores',
                        lambda net, images, scales, flip: seen.append((list(scales), flip)) or scores(net, images, scales, flip))
    run, checkpoint = _finetune(toy_root, tmp_path, 'xnet-recipe', '--optim', 'adamw', '--weight-decay', '0.01',
                                '--schedule', 'linear', '--warmup', '1', '--crop-size', '64', '128', '--rescale', '0.5',
                                '2.0', '--photometric', '--eval-scales', '1.0', '1.5', '--eval-flip', iters=2)
    assert seen and all(s == ([1.0, 1.5], True) for s in seen)  # every evaluation batch, multi-scale
    assert [m['lr'] for m in read_metrics(run) if m['split'] == 'train'] == pytest.approx([3e-4, 3e-4])  # warm-up 1
    assert finetune.parse_args(['--crop-size', '64', '128', '--rescale', '0.5', '2', '--photometric']).name.startswith(
        'seg-none-unet-full-crop64x128-rescale0.5-2-photometric-n16-')
