import os

import pytest
import torch
import torchvision

import data
import models


@pytest.mark.parametrize('height,width', [(64, 192), (96, 320)])
def test_depth_seg_pose_shapes(height, width):
    x = torch.rand(2, 3, height, width)
    disps = models.build_depth_net().eval()(x)
    assert [tuple(d.shape) for d in disps] == [(2, 1, height >> s, width >> s) for s in range(4)]
    assert all(0 <= d.min() and d.max() <= 1 for d in disps)
    assert models.build_seg_net(num_classes=7).eval()(x).shape == (2, 7, height, width)
    axisangle, translation = models.build_pose_net().eval()(x, torch.rand_like(x))
    assert axisangle.shape == translation.shape == (2, 3)


def test_resnet50_builds_and_runs():
    x = torch.rand(1, 3, 64, 64)
    disps = models.build_depth_net('resnet50', normalization='imagenet').eval()(x)
    assert disps[0].shape == (1, 1, 64, 64)
    assert models.build_seg_net('resnet50').eval()(x).shape == (1, 19, 64, 64)


def test_resnet50_every_network_takes_a_training_step():
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    cases = [(models.build_depth_net('resnet50'), lambda net: net(x)[0].mean()),
             (models.build_pose_net('resnet50'), lambda net: sum(o.abs().mean() for o in net(x, y))),
             (models.build_flow_net('resnet50'), lambda net: net(x, y)[0].abs().mean()),
             (models.build_seg_net('resnet50'), lambda net: net(x).logsumexp(1).mean())]
    for net, loss_of in cases:
        before = net.encoder.layer4[0].conv1.weight.detach().clone()
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        loss_of(net).backward()
        optimizer.step()
        assert not torch.equal(before, net.encoder.layer4[0].conv1.weight), type(net).__name__


@pytest.mark.parametrize('height, width', [(64, 192), (96, 320)])
def test_flow_net_shapes_and_its_encoder_fits_the_seg_net(height, width):
    net = models.build_flow_net().eval()
    flows = net(torch.rand(2, 3, height, width), torch.rand(2, 3, height, width))
    assert [tuple(f.shape) for f in flows] == [(2, 2, height >> s, width >> s) for s in range(4)]
    seg = models.build_seg_net()
    loaded = models.load_parts(seg, net.state_dict(), ('encoder.',))
    assert loaded and all(torch.equal(seg.state_dict()[k], net.state_dict()[k]) for k in loaded)
    with pytest.raises(ValueError, match='shape'):  # the siamese decoder reads twice the channels
        models.load_parts(seg, net.state_dict(), ('decoder.',))


def test_start_at_depth_sets_the_initial_prediction():
    net = models.build_depth_net()
    models.start_at_depth(net, 10.0, min_depth=0.1, max_depth=100.0)
    for disp in net.eval()(torch.rand(2, 3, 64, 96)):
        depth = models.disp_to_depth(disp, 0.1, 100.0)
        assert 5 < depth.median() < 20  # weights add a little spread around the 10 m the biases aim at


@pytest.mark.parametrize('arch', ['resnet18', 'resnet50'])
def test_deeplab_decoder_on_a_dilated_encoder(arch):
    seg = models.build_seg_net(arch, num_classes=5, decoder='deeplab').eval()
    x = torch.rand(2, 3, 64, 96)
    assert seg.encoder(x)[-1].shape[-2:] == (8, 12)  # output stride 8: layer3 and layer4 dilated, not strided
    assert seg(x).shape == (2, 5, 64, 96)  # logits upsampled to the input
    assert models.build_depth_net(arch, decoder='deeplab').eval()(x)[0].shape == (2, 1, 64, 96)
    plain = models.ResnetEncoder(arch).state_dict()  # dilation changes no weight: U-Net encoders load as they are
    seg.encoder.load_state_dict(plain, strict=True)


def test_encoder_feature_shapes():
    encoder = models.ResnetEncoder('resnet18')
    features = encoder(torch.rand(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in features] == [
        (c, 64 >> s, 96 >> s) for s, c in enumerate(models.ENCODER_CHANNELS['resnet18'], start=1)]


def test_resolution_not_multiple_of_32_is_refused():
    with pytest.raises(ValueError, match='32') as info:
        models.build_depth_net()(torch.rand(1, 3, 100, 320))
    assert '96x320' in str(info.value)
    models.check_resolution(96, 320)
    with pytest.raises(ValueError, match='64'):
        models.check_resolution(32, 64)


def test_unknown_arch_names_choices():
    with pytest.raises(ValueError, match='resnet18'):
        models.ResnetEncoder('resnet34')


def test_normalization_buffers_stay_out_of_state_dict():
    net = models.build_depth_net(normalization='imagenet')
    assert all(k.split('.')[0] in ('encoder', 'decoder', 'head') for k in net.state_dict())
    assert torch.allclose(net.std.flatten(), torch.tensor(models.NORMALIZATION['imagenet'][1]))


@pytest.mark.parametrize('arch', ['resnet18', 'resnet50'])
def test_encoder_state_dict_matches_torchvision(arch):
    reference = getattr(torchvision.models, arch)()
    reference.load_state_dict(models.ResnetEncoder(arch).state_dict(), strict=True)
    encoder = models.ResnetEncoder(arch)
    encoder.load_state_dict(reference.state_dict(), strict=True)
    assert torch.equal(encoder.conv1.weight, reference.conv1.weight)


def test_disp_to_depth_range():
    depth = models.disp_to_depth(torch.tensor([0.0, 1.0]), min_depth=0.1, max_depth=100.0)
    assert torch.allclose(depth, torch.tensor([100.0, 0.1]))


def test_load_parts_copies_trunk_and_keeps_head():
    depth_net, seg_net = models.build_depth_net(), models.build_seg_net()
    head_before = seg_net.head.conv.weight.clone()
    loaded = models.load_parts(seg_net, depth_net.state_dict())
    assert 'encoder.conv1.weight' in loaded and 'decoder.fuse.0.0.weight' in loaded
    assert not any(k.startswith('head.') for k in loaded)
    seg_state, depth_state = seg_net.state_dict(), depth_net.state_dict()
    assert all(torch.equal(seg_state[k], depth_state[k]) for k in loaded)
    assert torch.equal(seg_net.head.conv.weight, head_before)


def test_load_parts_refuses_other_arch():
    with pytest.raises(ValueError, match=r"encoder\.layer1\.0\.conv1\.weight.*--arch"):
        models.load_parts(models.build_seg_net('resnet18'), models.build_depth_net('resnet50').state_dict(),
                          source='depth.pt')


def test_torch_hub_dir_follows_torch_home(monkeypatch, tmp_path):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    assert torch.hub.get_dir() == os.path.join(str(tmp_path), 'hub')


def test_load_imagenet_weights_reads_cached_file(imagenet_resnet18):
    state = imagenet_resnet18
    encoder = models.ResnetEncoder('resnet18')
    models.load_imagenet_weights(encoder, 'resnet18')
    loaded = encoder.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_load_imagenet_weights_two_images_repeats_conv1(imagenet_resnet18):
    state = imagenet_resnet18
    pose = models.build_pose_net()
    models.load_imagenet_weights(pose.encoder, 'resnet18')
    expected = torch.cat([state['conv1.weight']] * 2, dim=1) / 2
    assert torch.allclose(pose.encoder.conv1.weight, expected)
    assert torch.equal(pose.encoder.layer4[1].conv2.weight, state['layer4.1.conv2.weight'])


def test_load_imagenet_weights_missing_file_names_it(monkeypatch, tmp_path):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    with pytest.raises(FileNotFoundError, match='resnet18-f37072fd.pth') as info:
        models.load_imagenet_weights(models.ResnetEncoder('resnet18'), 'resnet18')
    assert os.path.join(str(tmp_path), 'hub', 'checkpoints') in str(info.value)


@pytest.mark.parametrize('factor', [1, 2, 8, 32])
def test_reshape_module_trades_channels_for_resolution(factor):
    rs = models.Reshape(512, 3, factor)
    x = torch.rand(2, 512, 2, 6)
    y = rs(x)
    assert y.shape == (2, 3, 2 * factor, 6 * factor)
    # PixelShuffle: output pixel (i*f + a, j*f + b) comes from input pixel (i, j) alone
    x2 = x.clone()
    x2[:, :, 1, 4] += torch.linspace(-1, 1, 512)  # not a constant: LayerNorm would remove that
    changed = (rs(x2) - y).abs().sum(1) > 0
    assert changed[:, factor:2 * factor, 4 * factor:5 * factor].all() and changed.sum() == 2 * factor ** 2


def test_reversed_decoder_loads_a_torchvision_resnet_strictly():
    net = models.build_seg_net(decoder='xnet')
    reference = torchvision.models.resnet18().state_dict()
    net.decoder.backbone.load_state_dict(reference, strict=True)
    assert torch.equal(net.state_dict()['decoder.backbone.layer3.1.conv2.weight'], reference['layer3.1.conv2.weight'])


@pytest.mark.parametrize('mix', ['stem', 'image'])  # xNet and xNet-I
@pytest.mark.parametrize('height, width', [(64, 192), (96, 320)])
def test_xnet_forward_and_backward(mix, height, width):
    x = torch.rand(2, 3, height, width)
    seg = models.build_seg_net(num_classes=5, decoder='xnet', xnet=dict(mix=mix))
    logits = seg(x)
    assert logits.shape == (2, 5, height, width)
    logits.logsumexp(1).mean().backward()
    grads = {name: p.grad for name, p in seg.named_parameters()}
    for part in ('encoder.layer4', 'decoder.reshape_in', 'decoder.backbone.conv1', 'decoder.backbone.layer4',
                 'decoder.post'):  # the image reaches the decoder's stem, the encoder its input
        assert any(g is not None and g.abs().sum() > 0 for k, g in grads.items() if k.startswith(part)), part
    disp = models.build_depth_net(decoder='xnet', xnet=dict(mix=mix)).eval()(x)
    assert len(disp) == 1 and disp[0].shape == (2, 1, height, width) and 0 <= disp[0].min() <= disp[0].max() <= 1


@pytest.mark.parametrize('options', [dict(mix='none', pfp=False, pyramid=True), dict(mix='none', pfp=True, pyramid=True),
                                     dict(mix='none', pfp=True, pyramid=False)])
def test_xnet_ablation_variants(options):
    x = torch.rand(1, 3, 64, 96)
    net = models.build_seg_net(num_classes=3, decoder='xnet', xnet=options)
    assert net(x).shape == (1, 3, 64, 96)
    assert isinstance(net.decoder.post, models.PostFeaturePyramid) == options['pfp']
    # the pyramid connections change what the decoder computes from the same weights
    other = models.build_seg_net(num_classes=3, decoder='xnet', xnet=dict(options, pyramid=not options['pyramid']))
    other.load_state_dict(net.state_dict())
    assert not torch.allclose(net.eval()(x), other.eval()(x))


def test_pose_net_scales_rotation_by_a_hundredth_and_translation_by_a_tenth():
    pose = models.build_pose_net().eval()
    last = pose.decoder[-1]
    torch.nn.init.zeros_(last.weight)
    with torch.no_grad():
        last.bias.copy_(torch.tensor([1.0, 2.0, 3.0, 0.5, -1.0, 2.0]))
    x = torch.rand(2, 3, 64, 64)
    axisangle, translation = pose(x, x)
    assert torch.allclose(axisangle, torch.tensor([[0.01, 0.02, 0.03]] * 2))
    assert torch.allclose(translation, torch.tensor([[0.05, -0.1, 0.2]] * 2))


def test_pose_net_starts_moving_forward_as_the_toy_camera_does(toy_root):
    pose = models.build_pose_net().eval()
    torch.nn.init.zeros_(pose.decoder[-1].weight)
    torch.nn.init.zeros_(pose.decoder[-1].bias)
    pose.start_moving_forward(0.25)
    x = torch.rand(1, 3, 64, 64)
    axisangle, translation = pose(x, x)
    assert torch.equal(axisangle, torch.zeros(1, 3))
    assert torch.allclose(translation, torch.tensor([[0.0, 0.0, -0.25]]))
    # the same sign as the renderer's camera: frame t's points seen from frame t+1 come closer
    poses = data.read_poses(next(toy_root.rglob('poses.txt')))
    assert (torch.linalg.inv(poses[3]) @ poses[2])[2, 3] < -0.5
