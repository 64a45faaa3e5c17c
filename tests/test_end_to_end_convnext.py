"""ConvNeXt end to end on a tiny toy world: depth pre-training with --arch convnext_tiny (its PoseNet a
ResNet-18), xNet fine-tuning whose reversed ConvNeXt decoder starts from that checkpoint's encoder or from
torchvision's ImageNet weights, and combinations that cannot work (the benchmark's smoke run is in
test_benchmarks.py)."""
import argparse
import math

import pytest
import torch

import finetune
import models
import pretrain
import training
from conftest import SMALL, read_metrics


@pytest.fixture(scope='module')
def convnext_depth(toy_root, tmp_path_factory):
    """A ConvNeXt-T depth network (and its PoseNet) after two self-supervised iterations: (run folder, export)."""
    tmp = tmp_path_factory.mktemp('convnext')
    pretrain.main(['--data-root', str(toy_root), '--runs', str(tmp), '--name', 'depth', '--out', str(tmp / 'depth.pt'),
                   '--arch', 'convnext_tiny', '--iters', '2', '--eval-every', '2', '--log-every', '1'] + SMALL)
    return tmp / 'depth', tmp / 'depth.pt'


def test_convnext_depth_pretraining_loss_is_finite_and_its_checkpoint_loads(convnext_depth):
    run, out = convnext_depth
    losses = [m['loss'] for m in read_metrics(run) if m['split'] == 'train']
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    checkpoint = torch.load(out, weights_only=False)
    assert checkpoint['arch'] == 'convnext_tiny' and checkpoint['task'] == 'depth'
    models.build_depth_net('convnext_tiny', checkpoint['normalization']).load_state_dict(checkpoint['model'])
    pose = models.PoseNet('convnext_tiny')
    pose.load_state_dict(checkpoint['pose_net'])  # the PoseNet is a ResNet-18 for a ConvNeXt depth network
    assert checkpoint['pose_net']['encoder.layer4.1.conv2.weight'].shape == (512, 512, 3, 3)


def test_convnext_xnet_finetuning_starts_its_decoder_from_the_depth_encoder(convnext_depth, toy_root, tmp_path, capsys):
    _, out = convnext_depth
    finetune.main(['--data-root', str(toy_root), '--runs', str(tmp_path), '--name', 'xnet', '--arch', 'convnext_tiny',
                   '--decoder', 'xnet', '--init', str(out), '--decoder-init', str(out), '--train-size', '4',
                   '--iters', '2', '--eval-every', '2', '--log-every', '1', '--lr', '0'] + SMALL)
    assert 'Initialised the reversed decoder from the encoder of' in capsys.readouterr().out
    seg = torch.load(tmp_path / 'xnet' / 'checkpoint.pt', weights_only=False)
    depth = torch.load(out, weights_only=False)['model']
    encoder = {k[len('encoder.'):]: v for k, v in depth.items() if k.startswith('encoder.')}
    backbone = {k[len('decoder.backbone.'):]: v for k, v in seg['model'].items() if k.startswith('decoder.backbone.')}
    assert backbone.keys() == encoder.keys() and all(torch.equal(backbone[k], encoder[k]) for k in encoder)  # lr 0
    losses = [m['loss'] for m in read_metrics(tmp_path / 'xnet') if m['split'] == 'train']
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    net = models.build_seg_net('convnext_tiny', seg['num_classes'], seg['normalization'], 'xnet', seg['xnet'])
    net.load_state_dict(seg['model'])


def test_decoder_init_imagenet_loads_torchvisions_convnext_into_the_decoder_only(imagenet_convnext_tiny, capsys):
    net = models.build_seg_net('convnext_tiny', decoder='xnet')
    encoder_before = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    training.init_decoder_backbone(net, argparse.Namespace(decoder_init='imagenet', arch='convnext_tiny'))
    backbone = net.decoder.backbone.state_dict()
    assert all(torch.equal(backbone[k], v) for k, v in imagenet_convnext_tiny.items())
    assert all(torch.equal(net.encoder.state_dict()[k], v) for k, v in encoder_before.items())  # independent
    assert "ImageNet convnext_tiny weights" in capsys.readouterr().out


def test_init_imagenet_gives_each_encoder_its_own_architectures_weights(imagenet_resnet18, imagenet_convnext_tiny, capsys):
    depth, pose = models.build_depth_net('convnext_tiny'), models.PoseNet('convnext_tiny')
    training.init_encoders(argparse.Namespace(init='imagenet'), depth.encoder, pose.encoder)
    assert torch.equal(depth.encoder.features[7][2].block[3].weight, imagenet_convnext_tiny['features.7.2.block.3.weight'])
    assert torch.equal(pose.encoder.conv1.weight, torch.cat([imagenet_resnet18['conv1.weight']] * 2, 1) / 2)
    assert 'ImageNet convnext_tiny and resnet18 weights' in capsys.readouterr().out


@pytest.mark.parametrize('flags, message', [
    (['--arch', 'resnet18'], 'holds a convnext_tiny network; pass --arch convnext_tiny'),
    (['--arch', 'resnet18', '--init', 'none', '--decoder', 'xnet'],
     r'--decoder-init: .*depth.pt \(this project\'s depth checkpoint\) holds a convnext_tiny network, not resnet18; '
     r'pass --arch convnext_tiny\.'),
])
def test_a_convnext_checkpoint_into_another_arch_stops_with_a_sentence(flags, message, convnext_depth, toy_root, tmp_path):
    _, out = convnext_depth
    init = ['--init', str(out)] if '--init' not in flags else []
    decoder_init = ['--decoder-init', str(out)] if '--decoder' in flags else []
    with pytest.raises(SystemExit, match=message):
        finetune.main(['--data-root', str(toy_root), '--runs', str(tmp_path), '--iters', '1'] + init + flags + decoder_init + SMALL)


def test_an_unknown_arch_is_refused_by_both_scripts(capsys):
    for parse in (pretrain.parse_args, finetune.parse_args):
        with pytest.raises(SystemExit):
            parse(['--arch', 'convnext_huge'])
        assert "invalid choice: 'convnext_huge'" in capsys.readouterr().err

