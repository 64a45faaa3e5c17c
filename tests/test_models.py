import math
import os
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
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
    axisangle, translation = models.PoseNet().eval()(x, torch.rand_like(x))
    assert axisangle.shape == translation.shape == (2, 3)


def test_resnet50_builds_and_runs():
    x = torch.rand(1, 3, 64, 64)
    disps = models.build_depth_net('resnet50', normalization='imagenet').eval()(x)
    assert disps[0].shape == (1, 1, 64, 64)
    assert models.build_seg_net('resnet50').eval()(x).shape == (1, 19, 64, 64)


def test_resnet50_every_network_takes_a_training_step():
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    cases = [(models.build_depth_net('resnet50'), lambda net: net(x)[0].mean()),
             (models.PoseNet('resnet50'), lambda net: sum(o.abs().mean() for o in net(x, y))),
             (models.FlowNet('resnet50'), lambda net: net(x, y)[0].abs().mean()),
             (models.build_seg_net('resnet50'), lambda net: net(x).logsumexp(1).mean())]
    for net, loss_of in cases:
        before = net.encoder.layer4[0].conv1.weight.detach().clone()
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        loss_of(net).backward()
        optimizer.step()
        assert not torch.equal(before, net.encoder.layer4[0].conv1.weight), type(net).__name__


@pytest.mark.parametrize('height, width', [(64, 192), (96, 320)])
def test_flow_net_shapes_and_its_encoder_fits_the_seg_net(height, width):
    net = models.FlowNet().eval()
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


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # App. B.2, written out


def test_normalization_constants_are_imagenets_and_unit():
    assert models.NORMALIZATION['imagenet'] == (IMAGENET_MEAN, IMAGENET_STD)
    assert models.NORMALIZATION['unit'] == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def test_normalization_buffers_stay_out_of_state_dict():
    net = models.build_depth_net(normalization='imagenet')
    assert all(k.split('.')[0] in ('encoder', 'decoder', 'head') for k in net.state_dict())
    assert torch.allclose(net.mean.flatten(), torch.tensor(IMAGENET_MEAN))
    assert torch.allclose(net.std.flatten(), torch.tensor(IMAGENET_STD))


class _Capture(nn.Module):
    """A stand-in encoder: the (normalised) input as its only feature map."""

    def forward(self, x):
        return [x]


class _PassDecoder(nn.Module):
    def forward(self, features, image):
        return features


class _First(nn.Module):
    def forward(self, features):
        return features[0]


def _channel_image(values, size=64):
    """[1,3,size,size] image of one constant per channel."""
    return torch.tensor(values).view(1, 3, 1, 1).expand(1, 3, size, size).clone()


def test_encoder_decoder_normalises_its_input_with_the_chosen_statistics():
    x = _channel_image([0.2, 0.5, 0.8])
    net = models.EncoderDecoder(_Capture(), _PassDecoder(), _First(), 'imagenet')
    expected = torch.tensor([(0.2 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (0.8 - 0.406) / 0.225])
    assert torch.allclose(net(x)[0, :, 0, 0], expected, atol=1e-6) and net(x).shape == x.shape
    assert torch.equal(models.EncoderDecoder(_Capture(), _PassDecoder(), _First(), 'unit')(x), x)


def test_pose_net_normalises_both_frames_in_order_and_scales_rotation_and_translation():
    # the encoder returns its input and the decoder passes it on: the six outputs are the means of the
    # normalised channels of frame a (rotation, times 0.01) and frame b (translation, times 0.1)
    pose = models.PoseNet(normalization='imagenet')
    pose.encoder, pose.decoder = _Capture(), nn.Identity()
    a, b = [0.2, 0.5, 0.8], [0.9, 0.1, 0.4]
    axisangle, translation = pose(_channel_image(a, 4), _channel_image(b, 4))
    normalised = lambda values: torch.tensor([(v - m) / s for v, m, s in zip(values, IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.allclose(axisangle[0], 0.01 * normalised(a), atol=1e-7)
    assert torch.allclose(translation[0], 0.1 * normalised(b), atol=1e-6)
    assert models.POSE_SCALE == dict(rotation=0.01, translation=0.1)
    # Monodepth2's translation scale (pretrain.py --video-start monodepth2), the rotation's unchanged
    pose.translation_scale = models.MONODEPTH2_TRANSLATION_SCALE
    axisangle, translation = pose(_channel_image(a, 4), _channel_image(b, 4))
    assert torch.allclose(axisangle[0], 0.01 * normalised(a), atol=1e-7)
    assert torch.allclose(translation[0], 0.01 * normalised(b), atol=1e-7) and models.MONODEPTH2_TRANSLATION_SCALE == 0.01


def test_flow_net_normalises_both_frames_and_pairs_their_features():
    net = models.FlowNet(normalization='imagenet')
    net.encoder, net.decoder, net.head = _Capture(), nn.Identity(), nn.Identity()
    a, b = torch.cat([_channel_image([0.2, 0.5, 0.8])] * 2), torch.cat([_channel_image([0.9, 0.1, 0.4])] * 2)
    out = net(a, b)[0]  # [2, 6, 64, 64]: frame a's channels, then frame b's
    mean, std = torch.tensor(IMAGENET_MEAN * 2), torch.tensor(IMAGENET_STD * 2)
    expected = (torch.tensor([0.2, 0.5, 0.8, 0.9, 0.1, 0.4]) - mean) / std
    assert out.shape == (2, 6, 64, 64) and torch.allclose(out[:, :, 5, 7], expected.expand(2, 6), atol=1e-6)


@pytest.mark.parametrize('arch', ['resnet18', 'resnet50'])
def test_encoder_state_dict_matches_torchvision(arch):
    reference = getattr(torchvision.models, arch)()
    reference.load_state_dict(models.ResnetEncoder(arch).state_dict(), strict=True)
    encoder = models.ResnetEncoder(arch)
    encoder.load_state_dict(reference.state_dict(), strict=True)
    assert torch.equal(encoder.conv1.weight, reference.conv1.weight)


def test_disp_to_depth_maps_0_to_max_1_to_min_and_is_linear_in_inverse_depth():
    depth = models.disp_to_depth(torch.tensor([0.0, 1.0, 0.5]), min_depth=0.1, max_depth=100.0)
    # 1 / (1/100 + (1/0.1 - 1/100) * 0.5) = 1 / 5.005
    assert torch.allclose(depth, torch.tensor([100.0, 0.1, 1 / 5.005]), rtol=1e-6, atol=0)
    # the defaults are 0.1 and 100 m
    assert torch.allclose(models.disp_to_depth(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([100.0, 1 / 5.005, 0.1]),
                          rtol=1e-6, atol=0)
    # another range: 1 / (1/50 + (1/2 - 1/50) * 0.25) = 1 / 0.14
    depth = models.disp_to_depth(torch.tensor([0.25, 0.0, 1.0]), min_depth=2.0, max_depth=50.0)
    assert torch.allclose(depth, torch.tensor([1 / 0.14, 50.0, 2.0]), rtol=1e-6, atol=0)


def test_start_at_depth_sets_every_disparity_bias_to_the_logit_of_that_depths_disparity():
    head = models.DispHead()
    net = types.SimpleNamespace(head=head)
    models.start_at_depth(net, 10.0, min_depth=0.1, max_depth=100.0)
    # disparity (1/10 - 1/100) / (1/0.1 - 1/100) = 0.09 / 9.99, through the inverse of the sigmoid
    p = 0.09 / 9.99
    for conv in head.convs:
        assert torch.allclose(conv.bias, torch.tensor([math.log(p / (1 - p))]), rtol=1e-5, atol=0)
        disp = torch.sigmoid(conv.bias)
        assert torch.allclose(1 / (0.01 + 9.99 * disp), torch.tensor([10.0]), rtol=1e-4)
    models.start_at_depth(net, 4.0, min_depth=2.0, max_depth=50.0)  # (1/4 - 1/50) / (1/2 - 1/50) = 0.23 / 0.48
    p = 0.23 / 0.48
    assert all(torch.allclose(conv.bias, torch.tensor([math.log(p / (1 - p))]), rtol=1e-5, atol=0) for conv in head.convs)
    models.start_at_depth(net, 1.0)  # defaults 0.1 and 100 m: 0.99 / 9.99
    p = 0.99 / 9.99
    assert all(torch.allclose(conv.bias, torch.tensor([math.log(p / (1 - p))]), rtol=1e-5, atol=0) for conv in head.convs)


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
    pose = models.PoseNet()
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
    pose = models.PoseNet().eval()
    last = pose.decoder[-1]
    torch.nn.init.zeros_(last.weight)
    with torch.no_grad():
        last.bias.copy_(torch.tensor([1.0, 2.0, 3.0, 0.5, -1.0, 2.0]))
    x = torch.rand(2, 3, 64, 64)
    axisangle, translation = pose(x, x)
    assert torch.allclose(axisangle, torch.tensor([[0.01, 0.02, 0.03]] * 2))
    assert torch.allclose(translation, torch.tensor([[0.05, -0.1, 0.2]] * 2))


def test_pose_net_starts_moving_forward_as_the_toy_camera_does(toy_root):
    pose = models.PoseNet().eval()
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


# ---------------------------------------------------------------- ConvNeXt

CONVNEXT_T = ((96, 192, 384, 768), (3, 3, 9, 3))  # the ConvNeXt paper's ConvNeXt-T: channels, blocks per stage


@pytest.mark.parametrize('decoder', models.DECODERS)
def test_every_decoder_with_convnext_for_depth_and_segmentation(decoder):
    x = torch.rand(2, 3, 64, 96)
    disps = models.build_depth_net('convnext_tiny', decoder=decoder).eval()(x)
    scales = range(4) if decoder == 'unet' else range(1)  # the U-Net's four output scales, the others' one
    assert [tuple(d.shape) for d in disps] == [(2, 1, 64 >> s, 96 >> s) for s in scales]
    assert all(0 <= d.min() and d.max() <= 1 for d in disps)
    assert models.build_seg_net('convnext_tiny', num_classes=5, decoder=decoder).eval()(x).shape == (2, 5, 64, 96)


def test_convnext_encoder_maps_flow_net_and_pose_net():
    x = torch.rand(1, 3, 64, 96)
    maps = models.build_encoder('convnext_tiny').eval()(x)
    assert [tuple(m.shape[1:]) for m in maps] == [(c, 64 >> s, 96 >> s) for s, c in enumerate(CONVNEXT_T[0], start=2)]
    assert models.ENCODER_CHANNELS['convnext_base'] == [128, 256, 512, 1024]
    flows = models.FlowNet('convnext_tiny').eval()(x, x)
    assert [tuple(f.shape) for f in flows] == [(1, 2, 64 >> s, 96 >> s) for s in range(4)]
    assert models.PoseNet('convnext_tiny').encoder.arch == 'resnet18'  # a ConvNeXt depth network's PoseNet
    assert models.PoseNet('resnet50').encoder.arch == 'resnet50'


def test_convnext_unet_skips_where_the_encoder_has_a_map():
    # no 1/2-scale map: levels 1 and 0 fuse the upsampled features alone; levels 2-4 concatenate 96/192/384
    decoder = models.build_seg_net('convnext_tiny').decoder
    assert [decoder.fuse[i][0].in_channels for i in range(5)] == [16, 32, 64 + 96, 128 + 192, 256 + 384]
    assert models.by_scale([96, 192, 384, 768]) == [None, 96, 192, 384, 768]


def test_convnext_state_dict_is_torchvisions_and_so_are_its_features():
    reference = torchvision.models.convnext_tiny().eval()
    encoder = models.ConvNextEncoder('convnext_tiny').eval()
    encoder.load_state_dict(reference.state_dict(), strict=True)
    reference.load_state_dict(models.ConvNextEncoder('convnext_tiny').state_dict(), strict=True)
    reference.load_state_dict(encoder.state_dict(), strict=True)
    x, expected = torch.rand(2, 3, 64, 96), []
    with torch.no_grad():
        y = x
        for index, module in enumerate(reference.features):  # stem, stage 1, downsampling, stage 2, ...
            y = module(y)
            if index % 2:
                expected.append(y)
        for mine, theirs in zip(encoder(x), expected, strict=True):
            torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
    # stochastic depth as torchvision's builder: 0 at the first block, 0.1 at the last (ConvNeXt-T)
    rates = [m.p for m in encoder.modules() if isinstance(m, torchvision.ops.StochasticDepth)]
    assert len(rates) == sum(CONVNEXT_T[1]) and rates[0] == 0 and math.isclose(rates[-1], 0.1)


def _official_layer_norm(x, weight, bias, eps=1e-6):
    """The official ConvNeXt's channels-first LayerNorm: each pixel normalised over its channels."""
    mean = x.mean(1, keepdim=True)
    var = (x - mean).pow(2).mean(1, keepdim=True)
    return weight[:, None, None] * (x - mean) / torch.sqrt(var + eps) + bias[:, None, None]


def _official_convnext(state, x, blocks):
    """The official ConvNeXt's forward pass (facebookresearch/ConvNeXt, as the ConvNeXt paper describes it),
    written out on its own state dict: per stage a downsampling layer (stage 1: 4x4 conv with stride 4, then
    LayerNorm; others: LayerNorm, then 2x2 conv with stride 2), then blocks x + gamma * pwconv2(GELU(pwconv1(
    LN(dwconv7x7(x))))). Returns the four stage outputs."""
    maps = []
    for i, count in enumerate(blocks):
        down = f'downsample_layers.{i}.'
        if i == 0:
            x = F.conv2d(x, state[down + '0.weight'], state[down + '0.bias'], stride=4)
            x = _official_layer_norm(x, state[down + '1.weight'], state[down + '1.bias'])
        else:
            x = _official_layer_norm(x, state[down + '0.weight'], state[down + '0.bias'])
            x = F.conv2d(x, state[down + '1.weight'], state[down + '1.bias'], stride=2)
        for j in range(count):
            p = f'stages.{i}.{j}.'
            y = F.conv2d(x, state[p + 'dwconv.weight'], state[p + 'dwconv.bias'], padding=3, groups=x.shape[1])
            y = y.permute(0, 2, 3, 1)
            y = F.layer_norm(y, y.shape[-1:], state[p + 'norm.weight'], state[p + 'norm.bias'], eps=1e-6)
            y = F.linear(F.gelu(F.linear(y, state[p + 'pwconv1.weight'], state[p + 'pwconv1.bias'])),
                         state[p + 'pwconv2.weight'], state[p + 'pwconv2.bias'])
            x = x + (state[p + 'gamma'] * y).permute(0, 3, 1, 2)
        maps.append(x)
    return maps


def _official_state(channels, blocks, classes, seed=0):
    """A random state dict in the official ConvNeXt layout (norm weights near 1, gamma far from its 1e-6 start,
    so that every block counts)."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape, scale=0.02, mean=0.0: mean + scale * torch.randn(*shape, generator=g)
    state = {}
    for i, (c, count) in enumerate(zip(channels, blocks)):
        if i == 0:
            state.update({'downsample_layers.0.0.weight': rand(c, 3, 4, 4, scale=0.2), 'downsample_layers.0.0.bias': rand(c),
                          'downsample_layers.0.1.weight': rand(c, scale=0.1, mean=1), 'downsample_layers.0.1.bias': rand(c)})
        else:
            d = channels[i - 1]
            state.update({f'downsample_layers.{i}.0.weight': rand(d, scale=0.1, mean=1), f'downsample_layers.{i}.0.bias': rand(d),
                          f'downsample_layers.{i}.1.weight': rand(c, d, 2, 2, scale=0.05), f'downsample_layers.{i}.1.bias': rand(c)})
        for j in range(count):
            p = f'stages.{i}.{j}.'
            state.update({p + 'dwconv.weight': rand(c, 1, 7, 7, scale=0.1), p + 'dwconv.bias': rand(c),
                          p + 'norm.weight': rand(c, scale=0.1, mean=1), p + 'norm.bias': rand(c),
                          p + 'pwconv1.weight': rand(4 * c, c, scale=0.05), p + 'pwconv1.bias': rand(4 * c),
                          p + 'pwconv2.weight': rand(c, 4 * c, scale=0.05), p + 'pwconv2.bias': rand(c),
                          p + 'gamma': rand(c, scale=0.1, mean=0.3)})
    state.update({'norm.weight': rand(channels[-1], mean=1), 'norm.bias': rand(channels[-1]),
                  'head.weight': rand(classes, channels[-1]), 'head.bias': rand(classes)})
    return state


@pytest.mark.parametrize('classes', [1000, 21841])  # ImageNet-1k and -22k checkpoints
def test_official_convnext_checkpoint_computes_what_the_official_network_does(classes, tmp_path):
    state = _official_state(*CONVNEXT_T, classes)
    torch.save({'model': state}, tmp_path / 'convnext_tiny_22k_224.pth')  # the official files' form
    net = models.build_seg_net('convnext_tiny', 19, 'imagenet', 'xnet').eval()
    loaded = models.load_pretrained(net, tmp_path / 'convnext_tiny_22k_224.pth')
    encoder = net.encoder
    assert {k for k in net.state_dict() if k.startswith('encoder.')} - set(loaded) == (
        set() if classes == 1000 else {'encoder.classifier.2.weight', 'encoder.classifier.2.bias'})  # never run
    assert models.read_weights(tmp_path / 'convnext_tiny_22k_224.pth').arch == 'convnext_tiny'
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for mine, official in zip(encoder(x), _official_convnext(state, x, CONVNEXT_T[1]), strict=True):
            assert official.abs().mean() > 0.1  # not a vanishing signal that any mapping would match
            torch.testing.assert_close(mine, official, atol=1e-4, rtol=1e-4)
    converted = models.convnext_from_official(state)
    assert converted['features.3.2.layer_scale'].shape == (192, 1, 1) and not any('head' in k for k in converted)
    assert torch.equal(converted['classifier.2.weight'], state['head.weight'])
    assert torch.equal(converted['classifier.0.weight'], state['norm.weight'])


def test_official_convnext_of_another_layout_or_size_stops_with_a_sentence(tmp_path):
    state = _official_state(*CONVNEXT_T, 10)
    with pytest.raises(ValueError, match=r"'stages.0.0.grn.gamma' is not a tensor of an official ConvNeXt"):
        models.convnext_from_official(dict(state, **{'stages.0.0.grn.gamma': torch.zeros(1, 1, 1, 96)}))  # ConvNeXt V2
    torch.save({'model': state}, tmp_path / 'tiny.pth')
    with pytest.raises(ValueError, match=r'tiny.pth \(the official ConvNeXt\) holds a convnext_tiny network, not convnext_base; pass --arch '
                                         r'convnext_tiny\.'):
        models.load_pretrained(models.build_seg_net('convnext_base', 19), tmp_path / 'tiny.pth')
    torch.save({k: v for k, v in state.items() if not k.startswith('stages.3.')}, tmp_path / 'part.pth')
    with pytest.raises(ValueError, match=r"part.pth \(the official ConvNeXt\) has no tensor 'encoder.features.7.0."):
        models.load_pretrained(models.build_seg_net('convnext_tiny', 19), tmp_path / 'part.pth')


def test_convnext_dilated_for_deeplab_is_the_strided_network_sampled_every_2nd_and_4th_pixel():
    plain = models.ConvNextEncoder('convnext_tiny').eval()
    dilated = models.ConvNextEncoder('convnext_tiny').eval()
    dilated.load_state_dict(plain.state_dict(), strict=True)
    dilated.dilate()
    dilated.load_state_dict(plain.state_dict(), strict=True)  # dilation changes no weight and no key
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        strided, atrous = plain(x), dilated(x)
    assert [tuple(m.shape[-2:]) for m in atrous] == [(16, 24), (8, 12), (8, 12), (8, 12)]  # output stride 8
    torch.testing.assert_close(atrous[1], strided[1], atol=0, rtol=0)
    torch.testing.assert_close(atrous[2][..., ::2, ::2], strided[2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(atrous[3][..., ::4, ::4], strided[3], atol=1e-5, rtol=1e-5)
    assert models.build_seg_net('convnext_tiny', decoder='deeplab').encoder(x)[-1].shape[-2:] == (8, 12)


@pytest.mark.parametrize('mix', ['stem', 'image'])
def test_xnet_convnext_decoder_runs_as_the_pretrained_network_and_mixes_the_code_in(mix):
    net = models.build_seg_net('convnext_tiny', num_classes=3, decoder='xnet', xnet=dict(mix=mix)).eval()
    calls = []
    for index, module in enumerate(net.decoder.backbone.features):
        module.register_forward_hook(lambda m, inputs, output, index=index: calls.append((index, inputs[0], output)))
    net.decoder.post.register_forward_hook(lambda m, inputs, output: calls.append(('pfp', inputs[0], output)))
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        net(x)
        code = net.decoder.reshape_in(net.encoder(x)[-1])  # RS of the encoder's 1/32 map
    assert [index for index, _, _ in calls] == list(range(8)) + ['pfp']  # stem, stage 1, downsampling, stage 2, ...
    if mix == 'stem':  # xNet: RS to 1/4 with the stem's 96 channels, times the stem's output
        assert code.shape == (1, 96, 16, 24)
        torch.testing.assert_close(calls[1][1], calls[0][2] * code)
    else:  # xNet-I: RS to full resolution with 3 channels, times the (here unit-normalised) image
        assert code.shape == (1, 3, 64, 96)
        torch.testing.assert_close(calls[0][1], x * code)
    stages = [calls[i][2] for i in (1, 3, 5, 7)]  # the Post Feature Pyramid gathers the four stages' outputs
    assert all(torch.equal(a, b) for a, b in zip(calls[-1][1], stages, strict=True))


def test_xnet_convnext_pyramid_adds_the_encoder_maps_of_the_same_scale():
    net = models.build_seg_net('convnext_tiny', num_classes=3, decoder='xnet', xnet=dict(pyramid=True)).eval()
    inputs = []
    for index in (2, 4, 6):  # the downsampling layers of stages 2-4 receive E_i + D_{i-1}(F) (eq. 2)
        net.decoder.backbone.features[index].register_forward_hook(lambda m, i, o: inputs.append(i[0]))
    outputs = []
    for index in (1, 3, 5):
        net.decoder.backbone.features[index].register_forward_hook(lambda m, i, o: outputs.append(o))
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        net(x)
        maps = net.encoder(x)
    for given, decoded, encoded in zip(inputs, outputs, maps[:3], strict=True):
        torch.testing.assert_close(given, decoded + encoded)


def test_unknown_arch_stops_with_the_choices():
    with pytest.raises(ValueError, match='unknown arch .convnext_huge.; choose one of resnet18, resnet50, convnext_tiny'):
        models.build_encoder('convnext_huge')
    with pytest.raises(ValueError, match='convnext_small'):
        models.ConvNextEncoder('resnet18')


def test_load_imagenet_weights_convnext(imagenet_convnext_tiny):
    encoder = models.build_encoder('convnext_tiny')
    models.load_imagenet_weights(encoder, 'convnext_tiny')
    assert all(torch.equal(encoder.state_dict()[k], v) for k, v in imagenet_convnext_tiny.items())
    with pytest.raises(FileNotFoundError, match='convnext_small-0c510722.pth'):
        models.load_imagenet_weights(models.build_encoder('convnext_small'), 'convnext_small')
