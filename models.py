"""Networks: the Monodepth2 encoder-decoder, its heads, the PoseNet, and weight loading.

One U-Net serves every task, which is the point of the paper: a torchvision ResNet encoder and
Monodepth2's decoder trunk are pre-trained for depth (DispHead, sigmoid disparity at four scales),
then reused for segmentation by replacing only the last layer with a fresh K-class 1x1 convolution
(SegHead, Fig. 1b). The encoder is torchvision's own ResNet class, so its state-dict keys are
torchvision's and weights move freely between torchvision, this code and other code.

The encoder can also be torchvision's ConvNeXt (`--arch convnext_tiny` ...; the xNet paper's networks),
with torchvision's keys too; the official ConvNeXt checkpoints convert to them (convnext_from_official).
ConvNeXt has no 1/2-scale map: its four maps are at 1/4 ... 1/32, and the decoders read an encoder's maps
by their scale (by_scale).

The other decoders the papers compare: DeepLabV3's head on a dilated encoder (the common practice,
Fig. 1a/1c), and xNet's reversed decoder, a second copy of the encoder's network run as the decoder so that
it can be pre-trained too (Re-Shape modules, input mixed with the image or the stem, Post Feature Pyramid).
The encoders are torchvision's ResNets and ConvNeXts (the xNet paper's network) and SegFormer's Mix
Transformer (mit_b0 ... mit_b5, the SegFormer authors' keys), the minimal-transfer paper's network, with its
all-MLP decoder, whose head predicts K classes or one depth channel.

`load_pretrained` reads every published weight layout this code meets (its own checkpoints, torchvision's
ResNets and ConvNeXts, the official ConvNeXt checkpoints, the SegFormer authors' files, Hugging Face folders,
safetensors), from a small table of layouts.

Top to bottom: the ResNet and ConvNeXt encoders and ImageNet weights; the U-Net and DeepLabV3 decoders;
SegFormer's Mix Transformer and all-MLP head; xNet's reversed decoder; the heads, the depth range
(disp_to_depth), PoseNet and the flow network; the build_* functions; published weights (read_weights,
load_pretrained); checkpoints, whose keys one function writes (checkpoint_state) and one reads
(read_checkpoint).
"""
import functools
import json
import math
import os
import re
import struct
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.convnext import CNBlockConfig
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.models.segmentation.deeplabv3 import DeepLabHead

NORMALIZATION = {'imagenet': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), 'unit': ((0., 0., 0.), (1., 1., 1.))}

# The encoders, one table per family (the Mix Transformer's is with its code below); ARCHS, the --arch
# choices, lists them all.
RESNET_BLOCKS = {'resnet18': (BasicBlock, [2, 2, 2, 2]), 'resnet50': (Bottleneck, [3, 4, 6, 3])}
# ConvNeXt: channels and blocks of its four stages, as torchvision's builders (and the ConvNeXt paper) set
# them, and the stochastic depth rate of torchvision's builders, so that our ConvNeXt computes what
# torchvision's convnext_tiny() ... does, in training mode too (a block is skipped with a probability rising
# linearly from 0 at the first block to the rate at the last).
CONVNEXT_STAGES = {'convnext_tiny': ((96, 192, 384, 768), (3, 3, 9, 3), 0.1),
                   'convnext_small': ((96, 192, 384, 768), (3, 3, 27, 3), 0.4),
                   'convnext_base': ((128, 256, 512, 1024), (3, 3, 27, 3), 0.5),
                   'convnext_large': ((192, 384, 768, 1536), (3, 3, 27, 3), 0.5)}
# The channels of each encoder's maps, finest first: ResNet's five (1/2 ... 1/32), ConvNeXt's four (1/4 ... 1/32).
ENCODER_CHANNELS = {'resnet18': [64, 64, 128, 256, 512], 'resnet50': [64, 256, 512, 1024, 2048],
                    **{arch: list(stages[0]) for arch, stages in CONVNEXT_STAGES.items()}}
IMAGENET_WEIGHTS = {'resnet18': torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
                    'resnet50': torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
                    'convnext_tiny': torchvision.models.ConvNeXt_Tiny_Weights.IMAGENET1K_V1,
                    'convnext_small': torchvision.models.ConvNeXt_Small_Weights.IMAGENET1K_V1,
                    'convnext_base': torchvision.models.ConvNeXt_Base_Weights.IMAGENET1K_V1,
                    'convnext_large': torchvision.models.ConvNeXt_Large_Weights.IMAGENET1K_V1}


def check_resolution(height, width):
    """Refuse sizes the U-Net cannot handle: every skip connection needs an exact halving, and the
    reflection-padded convs need the 1/32 feature map to be at least 2 pixels wide."""
    if height % 32 or width % 32:
        h, w = (max(64, round(n / 32) * 32) for n in (height, width))
        raise ValueError(f'height and width must be multiples of 32 (the encoder halves the resolution '
                         f'five times); got {height}x{width}, try {h}x{w}.')
    if min(height, width) < 64:
        raise ValueError(f'height and width must be at least 64 (two pixels at 1/32 scale); got {height}x{width}.')


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f'unknown {name} {value!r}; choose one of {", ".join(choices)}.')


def by_scale(maps):
    """An encoder's maps (or their channels) at the five scales 1/2 ... 1/32, finest first, None where the
    encoder has none: ConvNeXt's four maps start at 1/4, ResNet's five at 1/2."""
    return [None] * (5 - len(maps)) + list(maps)


class ResnetEncoder(torchvision.models.ResNet):
    """torchvision's ResNet returning the five feature maps a U-Net decoder needs (1/2 ... 1/32).

    Weights and activations are channels-last (NHWC), which the decoders after it inherit: oneDNN's CPU
    convolutions then skip a layout conversion at every layer (about 15% less time for a training step of
    depth network and PoseNet on CPU). Checkpoints load either way.

    As xNet's reversed decoder (XNetDecoder) it is run as a pre-trained network runs: stem(), then stage(i)
    for i = 0..3 (layer1 ... layer4).
    """

    def __init__(self, arch='resnet18', num_input_images=1):
        _check_choice('arch', arch, RESNET_BLOCKS)
        super().__init__(*RESNET_BLOCKS[arch])
        # avgpool and fc are never used, but kept so state-dict keys match torchvision's exactly
        # and checkpoints load strictly in both directions.
        if num_input_images > 1:  # PoseNet: frames stacked on channels
            self.conv1 = nn.Conv2d(3 * num_input_images, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode='fan_out', nonlinearity='relu')
        self.arch, self.num_ch_enc = arch, ENCODER_CHANNELS[arch]
        self.stem_channels, self.stage_channels = self.num_ch_enc[0], self.num_ch_enc[1:]
        self.to(memory_format=torch.channels_last)

    def forward(self, x):
        x = x.contiguous(memory_format=torch.channels_last)
        f0 = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(f0))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return [f0, f1, f2, f3, self.layer4(f3)]

    def stem(self, x):
        """Image -> 1/4 scale: conv1, BatchNorm, ReLU, max pooling."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def stage(self, i, x):
        return (self.layer1, self.layer2, self.layer3, self.layer4)[i](x)

    def dilate(self):
        """DeepLabV3's output stride 8: layer3 and layer4 keep layer2's resolution and widen their view with
        dilated 3x3 convolutions (rates 2 and 4) instead of striding. Weights keep their shapes, so pre-trained
        encoders load unchanged. (torchvision's replace_stride_with_dilation refuses ResNet-18's BasicBlock.)"""
        for layer, rate in ((self.layer3, 2), (self.layer4, 4)):
            for conv in (m for m in layer.modules() if isinstance(m, nn.Conv2d)):
                conv.stride = (1, 1)
                if conv.kernel_size == (3, 3):
                    conv.dilation, conv.padding = (rate, rate), (rate, rate)
        return self


class ConvNextEncoder(torchvision.models.ConvNeXt):
    """torchvision's ConvNeXt returning its four stage outputs (1/4, 1/8, 1/16, 1/32 of the input; 96 ... 768
    channels for ConvNeXt-T, 128 ... 1024 for -B).

    `features` holds torchvision's modules in torchvision's order: 0 the stem (4x4 conv with stride 4 and a
    LayerNorm), then the four stages (1, 3, 5, 7) with a downsampling layer (LayerNorm and a 2x2 conv with
    stride 2) before each but the first (2, 4, 6). Its avgpool and classifier are never used, but kept so that
    the state-dict keys are torchvision's and its files load strictly. Weights and activations are
    channels-last, as ResnetEncoder's, so that the decoders after it get that layout; for the encoder alone a
    CPU training step measured at parity with torchvision's default layout (benchmarks/convnext_step.py: its
    time goes to the linear layers, GELU and the depthwise convs' weight gradients, the same either way).
    """

    def __init__(self, arch='convnext_tiny'):
        _check_choice('arch', arch, CONVNEXT_STAGES)
        channels, blocks, stochastic_depth = CONVNEXT_STAGES[arch]
        setting = [CNBlockConfig(c, out, n) for c, out, n in zip(channels, channels[1:] + (None,), blocks)]
        super().__init__(setting, stochastic_depth_prob=stochastic_depth)
        self.arch, self.num_ch_enc = arch, list(channels)
        self.stem_channels, self.stage_channels = channels[0], list(channels)
        self.to(memory_format=torch.channels_last)

    def forward(self, x):
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        maps = []
        for i in range(4):
            x = self.stage(i, x)
            maps.append(x)
        return maps

    def stem(self, x):
        """Image -> 1/4 scale: the 4x4 patch convolution and its LayerNorm."""
        return self.features[0](x)

    def stage(self, i, x):
        """Stage i (0 ... 3), after its downsampling layer (none before the first)."""
        return self.features[2 * i + 1](self.features[2 * i](x) if i else x)

    def dilate(self):
        """DeepLabV3's output stride 8, the ConvNeXt way: stages 3 and 4 stay at stage 2's resolution 1/8.
        Their downsampling convs keep stride 1 with their two taps 1 and 2 pixels apart (the spacing their
        inputs had), and the depthwise 7x7 convs of the stages' blocks are dilated by 2 and 4. Every tap then
        reads the pixel it read before, so the strided network's maps are this one's taken every 2nd (1/16)
        and 4th (1/32) pixel, exactly; weights keep their shapes, so pre-trained encoders load unchanged."""
        for i, rate in ((2, 2), (3, 4)):
            down = self.features[2 * i]
            down[1] = DilatedDownsample(down[1], rate // 2)
            for block in self.features[2 * i + 1]:
                depthwise = block.block[0]
                depthwise.dilation, depthwise.padding = (rate, rate), (3 * rate, 3 * rate)
        return self


class DilatedDownsample(nn.Conv2d):
    """A ConvNeXt downsampling conv (2x2, stride 2) kept at its input's resolution: stride 1, its taps
    `spacing` pixels apart, padded after (right and bottom) only, so that output pixel i reads pixels i and
    i + spacing, as the strided conv's output i/2 read pixels i and i + 1 of its input. Same weights and keys."""

    def __init__(self, conv, spacing):
        super().__init__(conv.in_channels, conv.out_channels, 2, dilation=spacing)
        self.load_state_dict(conv.state_dict())

    def forward(self, x):
        spacing = self.dilation[0]
        return super().forward(F.pad(x, (0, spacing, 0, spacing)))


def load_imagenet_weights(encoder, arch):
    """Load torchvision's ImageNet weights from the local torch.hub cache; never download, never fall back.

    For a multi-image encoder, conv1's filters are repeated over the stacked frames and divided by their
    number (Monodepth2's PoseNet trick), so the summed response matches the single-image one.
    """
    if arch not in IMAGENET_WEIGHTS:
        raise FileNotFoundError(f'torchvision publishes no ImageNet weights for {arch}: pass the SegFormer authors\' '
                                f'{arch}.pth or Hugging Face\'s nvidia/{arch.replace("_", "-")} folder with --init PATH.')
    state = cached_weights(IMAGENET_WEIGHTS[arch], arch)
    try:
        if isinstance(encoder, ResnetEncoder):
            num_images = encoder.conv1.in_channels // 3
            state['conv1.weight'] = state['conv1.weight'].repeat(1, num_images, 1, 1) / num_images
        encoder.load_state_dict(state)
    except Exception:  # another architecture's weights under that name
        raise FileNotFoundError(f'{_weights_path(IMAGENET_WEIGHTS[arch])} is not torchvision\'s ImageNet {arch} '
                                f'weights (it cannot be read as them): download {IMAGENET_WEIGHTS[arch].url} again '
                                f'and replace it.') from None


def _weights_path(weights):
    return os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(weights.url))


def cached_weights(weights, name):
    """The state dict of torchvision's `weights` (a Weights enum member) from torch.hub's checkpoint folder,
    where torchvision keeps what it downloaded; a missing or unreadable file stops with one sentence."""
    path = _weights_path(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'ImageNet weights for {name} not found: torchvision looks for '
                                f'{os.path.basename(path)} in {os.path.dirname(path)}; download {weights.url} on a '
                                f'machine with internet and copy it there.')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception:  # a truncated download, another file under that name
        raise FileNotFoundError(f'{path} is not torchvision\'s ImageNet {name} weights (it cannot be read as '
                                f'them): download {weights.url} again and replace it.') from None


# The official ConvNeXt checkpoints (facebookresearch/ConvNeXt: convnext_tiny_1k_224.pth, convnext_base_22k_224.pth,
# ...) name a block's layers; torchvision's CNBlock holds them in one Sequential (1 and 4 are its permutes, 4 GELU).
OFFICIAL_BLOCK_LAYERS = {'dwconv': 0, 'norm': 2, 'pwconv1': 3, 'pwconv2': 5}


def convnext_from_official(state):
    """An official ConvNeXt state dict (or the checkpoint dict holding it under 'model') in torchvision's
    ConvNeXt keys, which ConvNextEncoder has.

    downsample_layers.i.n -> features.(2i).n (i = 0 is the stem: 4x4 conv, then its channels-first LayerNorm;
    the others a LayerNorm, then the 2x2 conv); stages.i.j.<layer> -> features.(2i+1).j.block.<index>; a
    block's gamma [C] -> its layer_scale [C,1,1]; the final norm -> classifier.0 and the classification head
    (`head`, 1000 or 21841 classes, never run by the encoder) -> classifier.2. A key of another layout
    (ConvNeXt V2's GRN, another network) stops with one sentence naming it."""
    state = state.get('model', state)
    converted = {}
    for key, value in state.items():
        if key.startswith('head.'):  # the ImageNet classifier: never run (a 22k one does not load; CLASSIFIERS)
            converted['classifier.2.' + key[len('head.'):]] = value
            continue
        down = re.fullmatch(r'downsample_layers\.(\d)\.([01])\.(weight|bias)', key)
        block = re.fullmatch(r'stages\.(\d)\.(\d+)\.(?:(\w+)\.(weight|bias)|gamma)', key)
        if down:
            converted[f'features.{2 * int(down[1])}.{down[2]}.{down[3]}'] = value
        elif block and block[3] is None:
            converted[f'features.{2 * int(block[1]) + 1}.{block[2]}.layer_scale'] = value[:, None, None]
        elif block and block[3] in OFFICIAL_BLOCK_LAYERS:
            layer = OFFICIAL_BLOCK_LAYERS[block[3]]
            converted[f'features.{2 * int(block[1]) + 1}.{block[2]}.block.{layer}.{block[4]}'] = value
        elif key in ('norm.weight', 'norm.bias'):
            converted['classifier.0.' + key[len('norm.'):]] = value
        else:
            raise ValueError(f'{key!r} is not a tensor of an official ConvNeXt checkpoint '
                             f'(facebookresearch/ConvNeXt, e.g. convnext_tiny_22k_224.pth): pass one of those.')
    return converted


def conv_block(in_channels, out_channels):
    """3x3 convolution with reflection padding (no border artefacts in the depth map) and ELU (in place: the
    convolution's output is not needed for its gradient)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, padding_mode='reflect'),
                         nn.ELU(inplace=True))


class UNetDecoder(nn.Module):
    """Monodepth2's depth decoder trunk: upsample from 1/32 to full resolution, fusing skip connections.

    Level i (4 down to 0) reduces to num_ch_dec[i] channels, upsamples 2x, concatenates encoder
    feature i-1 (if any) and fuses. Outputs of levels 0..3 are the four output scales.
    """
    num_ch_dec = [16, 32, 64, 128, 256]

    def __init__(self, num_ch_enc):
        super().__init__()
        self.reduce = nn.ModuleList()
        self.fuse = nn.ModuleList()
        skips = by_scale(num_ch_enc)  # ConvNeXt has no 1/2-scale map: level 1 then has no skip, as level 0
        for i in range(5):
            in_channels = num_ch_enc[-1] if i == 4 else self.num_ch_dec[i + 1]
            skip_channels = (skips[i - 1] or 0) if i > 0 else 0
            self.reduce.append(conv_block(in_channels, self.num_ch_dec[i]))
            self.fuse.append(conv_block(self.num_ch_dec[i] + skip_channels, self.num_ch_dec[i]))
        self.to(memory_format=torch.channels_last)  # the encoder's layout (ResnetEncoder)

    def forward(self, features, image=None):
        x, outputs, skips = features[-1], [], by_scale(features)
        for i in range(4, -1, -1):
            x = nn.functional.interpolate(self.reduce[i](x), scale_factor=2, mode='nearest')
            if i > 0 and skips[i - 1] is not None:
                x = torch.cat([x, skips[i - 1]], 1)
            x = self.fuse[i](x)
            if i < 4:
                outputs.insert(0, x)
        return outputs  # finest first: full, 1/2, 1/4, 1/8 resolution


class DeepLabDecoder(nn.Module):
    """The common practice of the paper's Fig. 1a/1c: torchvision's DeepLabV3 head (ASPP, then a 3x3
    conv-BN-ReLU) on the dilated encoder's last feature map, without its final 1x1 classifier, which is the
    task head. Its single output is at 1/8 of the input; the head's prediction is upsampled to full size."""
    num_ch_dec = (256,)
    upsample_output = True

    def __init__(self, num_ch_enc):
        super().__init__()
        self.layers = nn.Sequential(*list(DeepLabHead(num_ch_enc[-1], 1).children())[:-1])

    def forward(self, features, image=None):
        return [self.layers(features[-1])]


# ---------------------------------------------------------------- SegFormer: the Mix Transformer and its all-MLP head

# Xie et al. 2021 (SegFormer), Sect. 3.1 and its MiT settings: widths C_i and blocks L_i of the four stages per size
# (b0 ... b5); every size has heads N_i = 1, 2, 5, 8, sequence-reduction ratios R_i = 8, 4, 2, 1 and an MLP
# expansion of 4. Stochastic depth rises linearly over the blocks to 0.1 (the authors' training setting; it
# acts in training only).
MIT_SPECS = {'mit_b0': ([32, 64, 160, 256], [2, 2, 2, 2]), 'mit_b1': ([64, 128, 320, 512], [2, 2, 2, 2]),
             'mit_b2': ([64, 128, 320, 512], [3, 4, 6, 3]), 'mit_b3': ([64, 128, 320, 512], [3, 4, 18, 3]),
             'mit_b4': ([64, 128, 320, 512], [3, 8, 27, 3]), 'mit_b5': ([64, 128, 320, 512], [3, 6, 40, 3])}
MIT_HEADS, MIT_REDUCTION, MIT_MLP_RATIO, MIT_DROP_PATH = (1, 2, 5, 8), (8, 4, 2, 1), 4, 0.1
SEGFORMER_WIDTH = {'mit_b0': 256, 'mit_b1': 256}  # the all-MLP head's width C; 768 for every other encoder
ARCHS = (*RESNET_BLOCKS, *CONVNEXT_STAGES, *MIT_SPECS)


def tokens(x):
    """[B, C, H, W] -> [B, H*W, C]: a view when x is channels-last, as every map of the Mix Transformer is."""
    return x.permute(0, 2, 3, 1).flatten(1, 2)


def token_map(x, height, width):
    """[B, H*W, C] -> [B, C, H, W], a channels-last view of the same memory (no copy)."""
    return x.unflatten(1, (height, width)).permute(0, 3, 1, 2)


class OverlapPatchEmbed(nn.Module):
    """Overlapped patch merging (Sect. 3.1): a strided convolution whose kernel is wider than its stride
    (K=7, S=4, P=3 into stage 1; K=3, S=2, P=1 after), so patches share their borders; then LayerNorm."""

    def __init__(self, in_channels, channels, kernel_size, stride):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, channels, kernel_size, stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(channels)

    def forward(self, x):
        x = self.proj(x)
        return self.norm(tokens(x)), x.shape[-2:]


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from a sequence shortened R^2 times (Sect. 3.1,
    eq. 2): a convolution of kernel and stride R (`sr`) and a LayerNorm, when R > 1. Keys and values share
    one linear layer `kv` (rows: keys, then values), as in the authors' weights."""

    def __init__(self, dim, heads, reduction):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if reduction > 1:
            self.sr = nn.Conv2d(dim, dim, reduction, reduction)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x, size):
        context = self.norm(tokens(self.sr(token_map(x, *size)))) if hasattr(self, 'sr') else x
        q = self.q(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # [B, heads, N, d]
        k, v = self.kv(context).unflatten(-1, (2, self.heads, -1)).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # eq. 1: softmax(Q K^T / sqrt(d)) V
        return self.proj(out.transpose(1, 2).flatten(2))


class DepthwiseConv(nn.Module):
    """The 3x3 depthwise convolution of Mix-FFN, on tokens (under the name `dwconv` the authors give it)."""

    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x, size):
        return tokens(self.dwconv(token_map(x, *size)))


class MixFFN(nn.Module):
    """Mix-FFN (Sect. 3.1, eq. 3): MLP(GELU(Conv3x3(MLP(x)))); the depthwise convolution leaks enough
    position information that no positional encoding is needed."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DepthwiseConv(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x, size):
        return self.fc2(F.gelu(self.dwconv(self.fc1(x), size)))


class MixBlock(nn.Module):
    """A pre-norm Transformer block: x + Attn(LN(x)), then x + MixFFN(LN(x)) (eq. 3), each branch dropped
    for a whole sample with probability `drop_path` in training (stochastic depth)."""

    def __init__(self, dim, heads, reduction, drop_path):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = EfficientSelfAttention(dim, heads, reduction)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MixFFN(dim, MIT_MLP_RATIO * dim)
        self.drop_path = drop_path

    def forward(self, x, size):
        x = x + torchvision.ops.stochastic_depth(self.attn(self.norm1(x), size), self.drop_path, 'row', self.training)
        return x + torchvision.ops.stochastic_depth(self.mlp(self.norm2(x), size), self.drop_path, 'row', self.training)


class MixTransformer(nn.Module):
    """SegFormer's hierarchical encoder MiT-B0 ... B5 (Xie et al. 2021, Sect. 3.1): four stages, each an
    overlapped patch merging, Transformer blocks and a LayerNorm, giving maps at 1/4, 1/8, 1/16 and 1/32.

    State-dict keys are the SegFormer authors' (`patch_embed1.proj`, `block1.0.attn.kv`, `norm1`, ...), so
    their released mit_b*.pth files load as they are. Maps are channels-last, which makes every switch
    between tokens [B, N, C] and maps [B, C, H, W] a view.
    """

    def __init__(self, arch='mit_b0'):
        super().__init__()
        _check_choice('arch', arch, MIT_SPECS)
        widths, depths = MIT_SPECS[arch]
        self.arch, self.num_ch_enc = arch, widths
        drop_paths = [MIT_DROP_PATH * j / (sum(depths) - 1) for j in range(sum(depths))]  # 0 ... 0.1, linearly
        for i, (width, depth) in enumerate(zip(widths, depths)):
            first = sum(depths[:i])
            setattr(self, f'patch_embed{i + 1}', OverlapPatchEmbed(widths[i - 1] if i else 3, width, 3 if i else 7,
                                                                   2 if i else 4))
            setattr(self, f'block{i + 1}', nn.ModuleList(
                MixBlock(width, MIT_HEADS[i], MIT_REDUCTION[i], drop_paths[first + j]) for j in range(depth)))
            setattr(self, f'norm{i + 1}', nn.LayerNorm(width, eps=1e-6))
        self.apply(_init_mit_weights)

    def forward(self, x):
        maps = []
        x = x.contiguous(memory_format=torch.channels_last)
        for i in range(1, 5):
            x, size = getattr(self, f'patch_embed{i}')(x)
            for block in getattr(self, f'block{i}'):
                x = block(x, size)
            x = token_map(getattr(self, f'norm{i}')(x), *size)
            maps.append(x)
        return maps  # 1/4, 1/8, 1/16, 1/32


def _init_mit_weights(module):
    """The authors' initialisation: linear layers truncated normal (std 0.02), convolutions normal with
    He's fan-out variance, biases zero, LayerNorms the identity."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0, math.sqrt(2.0 / fan_out))
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.LayerNorm)) and module.bias is not None:
        nn.init.zeros_(module.bias)


class SegFormerDecoder(nn.Module):
    """SegFormer's all-MLP decoder trunk (Sect. 3.2, eq. 4) on the encoder's last four maps (1/4 ... 1/32):
    a linear layer per map to width C (`linear_c1..4`), upsampling to 1/4, concatenation (the authors'
    order: c4, c3, c2, c1), a fusing 1x1 convolution with BatchNorm and ReLU (`linear_fuse`), dropout. The
    prediction layer is the task head: K classes, or the minimal-transfer paper's one depth channel
    (Sect. 2.4), whose output EncoderDecoder upsamples bilinearly to the input size.

    The fusing convolution is linear and so is bilinear upsampling (its weights sum to one, so it keeps
    biases), so they commute: each map's slice of the fusing weights is folded into its linear layer and
    applied before upsampling. The function and the parameters (names and shapes as in the authors'
    weights) are SegFormer's; the 4C x C product at 1/4 resolution becomes a C_i x C one at each map's
    own resolution.
    """
    upsample_output = True

    def __init__(self, num_ch_enc, width=768, dropout=0.1):
        super().__init__()
        self.width, self.num_ch_dec = width, (width,)
        for i, channels in enumerate(num_ch_enc[-4:]):
            setattr(self, f'linear_c{i + 1}', nn.ModuleDict({'proj': nn.Linear(channels, width)}))
        self.linear_fuse = nn.ModuleDict({'conv': nn.Conv2d(4 * width, width, 1, bias=False),
                                          'bn': nn.BatchNorm2d(width)})
        self.dropout = nn.Dropout2d(dropout)  # the authors' (mmseg's) dropout: whole channels

    def forward(self, features, image=None):
        maps = features[-4:]
        fuse = self.linear_fuse.conv.weight.flatten(1).unflatten(1, (4, self.width))  # [C, 4 (c4..c1), C]
        x = 0
        for i, f in enumerate(maps):
            linear, w = getattr(self, f'linear_c{i + 1}').proj, fuse[:, 3 - i]
            y = token_map(F.linear(tokens(f), w @ linear.weight, w @ linear.bias), *f.shape[-2:])  # eq. 4, folded
            x = x + (y if i == 0 else F.interpolate(y, maps[0].shape[-2:], mode='bilinear', align_corners=False))
        return [self.dropout(F.relu(self.linear_fuse.bn(x)))]


class Reshape(nn.Module):
    """xNet's Re-Shape (RS) module (Sect. 3.1): a LayerNorm over channels and a two-layer MLP at every pixel,
    then PixelShuffle by `factor`: [B, C, h, w] -> [B, out_channels, factor*h, factor*w]. A coarse map with
    many channels becomes a fine one with few, without any interpolation."""

    def __init__(self, in_channels, out_channels, factor=1):
        super().__init__()
        self.norm = nn.LayerNorm(in_channels)
        self.mlp = nn.Sequential(nn.Linear(in_channels, in_channels), nn.GELU(),
                                 nn.Linear(in_channels, out_channels * factor ** 2))
        self.shuffle = nn.PixelShuffle(factor)

    def forward(self, x):
        return self.shuffle(self.mlp(self.norm(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2))


class PostFeaturePyramid(nn.Module):
    """xNet's PFP (Sect. 3.1): each decoder stage's output re-shaped by RS to the first stage's resolution
    (1/4), concatenated over channels and fused by another RS."""

    def __init__(self, stage_channels, channels):
        super().__init__()
        self.reshapes = nn.ModuleList(Reshape(c, channels, 2 ** i) for i, c in enumerate(stage_channels))
        self.fuse = Reshape(len(stage_channels) * channels, channels)

    def forward(self, stages):
        return self.fuse(torch.cat([rs(x) for rs, x in zip(self.reshapes, stages)], 1))


XNET_MIXES = ('stem', 'image', 'none')
XNET_DEFAULTS = dict(mix='stem', pfp=True, pyramid=False)  # xNet itself


class XNetDecoder(nn.Module):
    """xNet's reversed decoder (Sect. 3, Fig. 2-3): a second copy of the encoder's network (ResNet or ConvNeXt,
    torchvision's keys under `backbone.`) run as a pre-trained network runs, from high to low resolution (eq. 1:
    stem, then stages 1-4, ConvNeXt's with their downsampling layers), so that pre-trained weights load into it.

    Its input is the encoder's last map re-shaped by RS and mixed into the image by element-wise
    multiplication: with the stem's output (mix 'stem', xNet: RS to 1/4 with the stem's channels) or with the
    normalised RGB image before the stem (mix 'image', xNet-I: RS to full resolution with 3 channels); mix
    'none' feeds the re-shaped map to the first stage as it is. `pyramid` adds the encoder's map of the same
    resolution to the input of stages 2-4 (eq. 2), the connections xNet removes. The prediction comes from
    the Post Feature Pyramid (`pfp`) or, without it, from the last stage re-shaped to 1/4; the head's output
    (a linear probe, Sect. 6) is upsampled to the input size.
    """
    upsample_output = True

    def __init__(self, num_ch_enc, arch='resnet18', mix='stem', pfp=True, pyramid=False, channels=64):
        super().__init__()
        _check_choice('xnet mix', mix, XNET_MIXES)
        self.backbone = build_encoder(arch)
        stages = self.backbone.stage_channels
        if pyramid and by_scale(num_ch_enc)[1:4] != list(stages[:3]):
            raise ValueError('pyramid connections add encoder maps to decoder stages: their channels must match.')
        self.mix, self.pyramid, self.pfp = mix, pyramid, pfp
        stem_channels = self.backbone.stem_channels
        self.reshape_in = Reshape(num_ch_enc[-1], 3, 32) if mix == 'image' else Reshape(num_ch_enc[-1], stem_channels, 8)
        self.post = PostFeaturePyramid(stages, channels) if pfp else Reshape(stages[-1], channels, 8)
        self.num_ch_dec = (channels,)

    def forward(self, features, image):
        code = self.reshape_in(features[-1])  # RS: 1/32 -> the decoder's input resolution
        if self.mix == 'stem':
            x = self.backbone.stem(image) * code  # xNet
        elif self.mix == 'image':
            x = self.backbone.stem(image * code)  # xNet-I
        else:
            x = code
        skips, stages = by_scale(features), []
        for i in range(4):
            x = self.backbone.stage(i, x + skips[i] if self.pyramid and i else x)  # eq. 2: E_i + D_{i-1}(F)
            stages.append(x)
        return [self.post(stages if self.pfp else stages[-1])]


class DispHead(nn.Module):
    """Sigmoid disparity at each of the decoder's scales (Monodepth2's four, finest first); 3x3 convolutions,
    or linear (1x1) ones as xNet's prediction head."""

    def __init__(self, num_ch_dec=(16, 32, 64, 128), kernel_size=3):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c, 1, kernel_size, padding=kernel_size // 2, padding_mode='reflect')
                                   for c in num_ch_dec)

    def forward(self, decoder_features):
        return [torch.sigmoid(conv(f)) for conv, f in zip(self.convs, decoder_features)]


class SegHead(nn.Module):
    """The paper's best practice (Fig. 1b): a fresh K-class 1x1 conv on the finest decoder features."""

    def __init__(self, num_classes=19, in_channels=16):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, decoder_features):
        return self.conv(decoder_features[0])  # logits [B,K,H,W]


def register_normalization(module, normalization):
    """Mean/std as non-persistent buffers: they follow .to(device) but stay out of the state dict."""
    _check_choice('normalization', normalization, NORMALIZATION)
    mean, std = NORMALIZATION[normalization]
    module.register_buffer('mean', torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
    module.register_buffer('std', torch.tensor(std).view(1, 3, 1, 1), persistent=False)


class EncoderDecoder(nn.Module):
    """Image in [0,1] -> normalise -> encoder -> decoder -> head."""

    def __init__(self, encoder, decoder, head, normalization='unit'):
        super().__init__()
        self.encoder, self.decoder, self.head = encoder, decoder, head
        self.normalization = normalization  # recorded in checkpoints; fine-tuning reuses it
        register_normalization(self, normalization)

    def forward(self, x):
        check_resolution(*x.shape[-2:])
        x = (x - self.mean) / self.std
        out = self.head(self.decoder(self.encoder(x), x))  # xNet's decoder also reads the image
        return _upsampled(out, x.shape[-2:]) if getattr(self.decoder, 'upsample_output', False) else out


def _upsampled(out, size):
    """Bilinear upsampling of a prediction (or a list of them) to the input size."""
    if isinstance(out, list):
        return [_upsampled(o, size) for o in out]
    return F.interpolate(out, size, mode='bilinear', align_corners=False)


def start_at_depth(depth_net, depth, min_depth=0.1, max_depth=100.0):
    """Set the disparity head's biases so that, before training, it predicts about `depth` metres.

    At the sigmoid's midpoint the depth is 0.2 m. With a stereo baseline (0.54 m) that shifts pixels by
    more than the image width: every warped pixel comes from outside the image and the loss has no
    gradient. From video the scale is free, but the network keeps roughly the one it starts at: from
    0.2 m it squeezes the near road of a driving scene against the 0.1 m floor (pretrain.py chooses)."""
    scaled = (1 / depth - 1 / max_depth) / (1 / min_depth - 1 / max_depth)  # inverse of disp_to_depth
    for conv in depth_net.head.convs:
        nn.init.constant_(conv.bias, torch.logit(torch.tensor(scaled)).item())


def zero_new_head(depth_net):
    """Zero the weights of a new disparity head put on a transferred decoder. A decoder fine-tuned for
    another task (segmentation) can give features in the hundreds: a randomly drawn head then starts its
    sigmoids saturated, where they have almost no gradient. Zeroed, every scale starts at the sigmoid of its
    bias; features in the thousands can still saturate it within a few steps (finetune.py then stops the run)."""
    for conv in depth_net.head.convs:
        nn.init.zeros_(conv.weight)


def disp_to_depth(disp, min_depth=0.1, max_depth=100.0):
    """Map sigmoid disparity in [0,1] to depth in [min_depth, max_depth] (Monodepth2)."""
    scaled_disp = 1 / max_depth + (1 / min_depth - 1 / max_depth) * disp
    return 1 / scaled_disp


def depth_at(disp, size, min_depth=0.1, max_depth=100.0):
    """The depth [B,1,H,W] of a sigmoid disparity [B,1,h,w] at `size` (H, W): upsampled (bilinear), then mapped."""
    return disp_to_depth(F.interpolate(disp, size, mode='bilinear', align_corners=False), min_depth, max_depth)


# Monodepth2 multiplies the six pose outputs by 0.01 so that the first warps stay near the identity. We keep
# that for the rotation (radians per frame are small) but use 0.1 for the translation: at 0.01 it grows by
# at most ~0.0003 per Adam step at lr 1e-4, too slowly to reach the scene's scale in a few hundred steps
# (pretrain.py --video-start monodepth2 puts Monodepth2's 0.01 back).
POSE_SCALE = dict(rotation=0.01, translation=0.1)
MONODEPTH2_TRANSLATION_SCALE = 0.01


class PoseNet(nn.Module):
    """Relative camera motion between two frames: a two-image ResNet and Monodepth2's pose decoder. The ResNet
    is the depth network's --arch (Monodepth2 takes the same depth for both), or ResNet-18 where that is no
    ResNet (ConvNeXt): the pose only needs to be good enough to warp the frames, and ResNet-18 is Monodepth2's."""

    def __init__(self, arch='resnet18', normalization='unit', translation_scale=POSE_SCALE['translation']):
        super().__init__()
        self.translation_scale = translation_scale
        self.encoder = ResnetEncoder(arch if arch in RESNET_BLOCKS else 'resnet18', num_input_images=2)
        self.decoder = nn.Sequential(
            nn.Conv2d(self.encoder.num_ch_enc[-1], 256, 1), nn.ReLU(),  # squeeze
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 6, 1))
        register_normalization(self, normalization)

    def start_moving_forward(self, speed):
        """Set the translation's bias so that, before training, the camera moves `speed` forward per frame:
        from frame_a to frame_b the scene comes closer (-z). A random PoseNet predicts nearly the same
        motion for every input and learns that average first; started at rest, it settles in a sideways
        motion that a lopsided depth map explains about as well (the camera drives on the right lane, so
        the right side is nearer), and stays there for hundreds of steps."""
        with torch.no_grad():
            self.decoder[-1].bias[3:] = torch.tensor([0.0, 0.0, -speed]) / self.translation_scale

    def forward(self, frame_a, frame_b):
        """Return (axisangle [B,3], translation [B,3]) of the motion from frame_a to frame_b."""
        x = torch.cat([(frame_a - self.mean) / self.std, (frame_b - self.mean) / self.std], 1)
        pose = self.decoder(self.encoder(x)[-1]).mean(dim=(2, 3))
        return POSE_SCALE['rotation'] * pose[:, :3], self.translation_scale * pose[:, 3:]


class FlowHead(nn.Module):
    """Optical flow (u, v) in pixels of the input image, at each of the four decoder scales, finest first."""

    def __init__(self, num_ch_dec=(16, 32, 64, 128)):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c, 2, 3, padding=1, padding_mode='reflect') for c in num_ch_dec)

    def forward(self, decoder_features):
        return [conv(f) for conv, f in zip(self.convs, decoder_features)]


class FlowNet(nn.Module):
    """Siamese optical flow (paper Sect. 4, App. B.3): one encoder, with shared weights, reads frame t and
    frame t+1; their features are concatenated at every scale and a U-Net decoder predicts the flow from
    t to t+1 at four scales. Only the encoder has the shape of the segmentation network's, so only the
    encoder transfers to fine-tuning."""

    def __init__(self, arch='resnet18', normalization='unit'):
        super().__init__()
        self.encoder = build_encoder(arch)
        self.decoder = UNetDecoder([2 * c for c in self.encoder.num_ch_enc])
        self.head = FlowHead()
        self.normalization = normalization
        register_normalization(self, normalization)

    def forward(self, frame_a, frame_b):
        check_resolution(*frame_a.shape[-2:])
        B = frame_a.shape[0]
        features = self.encoder((torch.cat([frame_a, frame_b]) - self.mean) / self.std)  # one pass, both frames
        return self.head(self.decoder([torch.cat([f[:B], f[B:]], 1) for f in features]))


DECODERS = ('unet', 'deeplab', 'xnet', 'segformer')
CNN_DECODERS = ('unet', 'deeplab', 'xnet')  # they need a convolutional encoder: its stem, stages, dilation


def build_encoder(arch):
    """The encoder --arch names: torchvision's ResNet or ConvNeXt (torchvision's keys), or a Mix Transformer
    (the SegFormer authors' keys)."""
    _check_choice('arch', arch, ARCHS)
    family = MixTransformer if arch in MIT_SPECS else ConvNextEncoder if arch in CONVNEXT_STAGES else ResnetEncoder
    return family(arch)


def check_encoder_decoder(arch, decoder):
    """Refuse, with one sentence, a decoder that cannot run on the encoder."""
    _check_choice('arch', arch, ARCHS)
    _check_choice('decoder', decoder, DECODERS)
    if arch in MIT_SPECS and decoder in CNN_DECODERS:
        raise ValueError(f'--decoder {decoder} runs on a ResNet or ConvNeXt encoder (its stem and stages, dilated '
                         f'for deeplab); {arch}, a Mix Transformer, takes --decoder segformer.')


def _encoder_and_decoder(arch, decoder, xnet=None):
    """The encoder --arch names and the decoder named: Monodepth2's U-Net, DeepLabV3's head on the dilated
    encoder, xNet's reversed copy of the encoder's network (`xnet`: its options, XNET_DEFAULTS where not
    given), or SegFormer's all-MLP head."""
    check_encoder_decoder(arch, decoder)
    encoder = build_encoder(arch)
    if decoder == 'deeplab':
        return encoder.dilate(), DeepLabDecoder(encoder.num_ch_enc)
    if decoder == 'xnet':
        return encoder, XNetDecoder(encoder.num_ch_enc, arch, **dict(XNET_DEFAULTS, **(xnet or {})))
    if decoder == 'segformer':
        return encoder, SegFormerDecoder(encoder.num_ch_enc, SEGFORMER_WIDTH.get(arch, 768))
    return encoder, UNetDecoder(encoder.num_ch_enc)


def build_depth_net(arch='resnet18', normalization='unit', decoder='unet', xnet=None):
    """Sigmoid disparity: at four scales, finest first, from the U-Net; one, upsampled, from DeepLab, xNet and
    SegFormer (whose prediction heads are linear, 1x1).

    SegFormer's depth head is the minimal-transfer paper's one output channel (Sect. 2.4), made sigmoid
    disparity as every depth head here: the paper names no output activation, its SILog loss needs a
    positive depth, and disparity in [1/max_depth, 1/min_depth] is one, bounded at both ends, that every
    loss, evaluation and start_at_depth of this code already reads."""
    encoder, trunk = _encoder_and_decoder(arch, decoder, xnet)
    head = DispHead() if decoder == 'unet' else DispHead(trunk.num_ch_dec, 3 if decoder == 'deeplab' else 1)
    return EncoderDecoder(encoder, trunk, head, normalization)


def build_seg_net(arch='resnet18', num_classes=19, normalization='unit', decoder='unet', xnet=None):
    """The same networks with a fresh 1x1 segmentation head, so a depth checkpoint's trunk loads into it."""
    encoder, trunk = _encoder_and_decoder(arch, decoder, xnet)
    return EncoderDecoder(encoder, trunk, SegHead(num_classes, trunk.num_ch_dec[0]), normalization)


def freeze_untrained(net, outputs=None):
    """Freeze (requires_grad False) what no training step of `net` reaches: the ImageNet classifiers kept for
    torchvision's state-dict keys (every ResNet's fc, every ConvNeXt's classifier, xNet's backbone's too), the
    stem of xNet's backbone when its mix 'none' bypasses it, and the prediction heads of the output scales
    past the first `outputs` that the loss reads. None of them can get a gradient, so the optimiser (built
    before, holding them as a single process does) never changes them; frozen, they need no
    find_unused_parameters under DistributedDataParallel (training.Distributed.wrap)."""
    for module in net.modules():
        if isinstance(module, ResnetEncoder):
            module.fc.requires_grad_(False)
        elif isinstance(module, ConvNextEncoder):
            module.classifier.requires_grad_(False)
        elif isinstance(module, XNetDecoder) and module.mix == 'none':
            backbone = module.backbone
            for stem in ((backbone.conv1, backbone.bn1) if isinstance(backbone, ResnetEncoder) else (backbone.features[0],)):
                stem.requires_grad_(False)
    if outputs is not None:
        net.head.convs[outputs:].requires_grad_(False)
    return net


def xnet_options(flags):
    """xNet's options from a run's flags (an argparse namespace, or its dict from args.json), as build_* take
    them and checkpoints record them; None for the other decoders."""
    flags = flags if isinstance(flags, dict) else vars(flags)
    if flags.get('decoder') != 'xnet':
        return None
    return dict(mix=flags.get('xnet_mix', 'stem'), pfp=not flags.get('no_pfp', False),
                pyramid=flags.get('xnet_pyramid', False))


def describe_decoder(decoder, xnet=None, decoder_init='none', reset=False):
    """A short name for a decoder configuration, for run names and tables: 'unet', 'unet-reset', 'deeplab',
    'xnet-stem-from-depth', 'xnet-none-fp-nopfp', ..."""
    if decoder != 'xnet':
        return decoder + ('-reset' if reset else '')
    xnet = dict(XNET_DEFAULTS, **(xnet or {}))
    init = os.path.splitext(os.path.basename(decoder_init))[0]  # a checkpoint path: its file name
    return '-'.join(['xnet', xnet['mix']] + (['fp'] if xnet['pyramid'] else []) + ([] if xnet['pfp'] else ['nopfp'])
                    + (['reset'] if reset else []) + ([f'from-{init}'] if init != 'none' else []))


# An encoder's ImageNet classifier (ResNet's fc, ConvNeXt's last linear layer) is kept so that its keys are
# torchvision's, but it never runs: weights whose classifier has another number of classes (ImageNet-22k's
# 21,841, or none) load without it.
CLASSIFIERS = ('encoder.fc.', 'encoder.classifier.2.')


def load_parts(model, state_dict, prefixes=('encoder.', 'decoder.'), source='checkpoint'):
    """Copy the tensors under `prefixes` from `state_dict` into `model` (e.g. depth trunk -> seg net).

    Every model tensor under those prefixes must be present with the same shape; returns the loaded keys.
    """
    prefixes = tuple(prefixes)
    target = model.state_dict()
    unused = lambda k: k.startswith(CLASSIFIERS) and (k not in state_dict or state_dict[k].shape != target[k].shape)
    wanted = [k for k in target if k.startswith(prefixes) and not unused(k)]  # network order: first mismatch reported
    for key in wanted:
        if key not in state_dict:
            raise ValueError(f'{source} has no tensor {key!r} that the model needs; was it saved from a '
                             f'different network (another --arch or decoder)?')
        if state_dict[key].shape != target[key].shape:
            raise ValueError(f'{source} tensor {key!r} has shape {tuple(state_dict[key].shape)} but the model '
                             f'expects {tuple(target[key].shape)}; was it trained with a different --arch?')
    model.load_state_dict({k: state_dict[k] for k in wanted}, strict=False)
    return wanted


# ---------------------------------------------------------------- published weights: one loader for every layout

def read_safetensors(path):
    """The tensors of a .safetensors file, read from the format's published layout: an 8-byte little-endian
    header length, a JSON header {name: {dtype, shape, data_offsets: [begin, end]}} (offsets into the
    buffer after the header; `__metadata__` holds strings), then the raw little-endian buffer."""
    raw = Path(path).read_bytes()
    try:
        (length,) = struct.unpack('<Q', raw[:8])
        header = json.loads(raw[8:8 + length])
        buffer = raw[8 + length:]
        state = {}
        for name, entry in header.items():
            if name == '__metadata__':
                continue
            dtype, shape, (begin, end) = SAFETENSORS_DTYPES[entry['dtype']], entry['shape'], entry['data_offsets']
            if not 0 <= begin <= end <= len(buffer) or end - begin != math.prod(shape) * dtype.itemsize:
                raise ValueError(name)
            data = bytearray(buffer[begin:end]) or bytearray(dtype.itemsize)  # frombuffer refuses an empty one
            state[name] = torch.frombuffer(data, dtype=dtype)[:math.prod(shape)].reshape(shape)
        return state
    except (struct.error, ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        raise ValueError(f'{path} is not a readable safetensors file (its header or offsets do not fit the '
                         f'format); download it again.') from None


SAFETENSORS_DTYPES = {'F64': torch.float64, 'F32': torch.float32, 'F16': torch.float16, 'BF16': torch.bfloat16,
                      'I64': torch.int64, 'I32': torch.int32, 'I16': torch.int16, 'I8': torch.int8,
                      'U8': torch.uint8, 'BOOL': torch.bool}
HF_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')


def _renamed(state, renames, drop=()):
    """The tensors of `state` whose names start with a key of `renames` (tried in order), that prefix replaced
    by its value; names starting with a prefix in `drop` are left out; any other name is refused."""
    out = {}
    for key, tensor in state.items():
        if key.startswith(tuple(drop)):
            continue
        old = next((o for o in renames if key.startswith(o)), None)
        if old is None:
            raise ValueError(f'it holds a tensor {key!r} that this layout does not have')
        out[renames[old] + key[len(old):]] = tensor
    return out


# Hugging Face's SegFormer names -> this code's (the authors', under encoder., decoder., head.), after the
# stage numbers: its patch_embeddings.i, block.i and layer_norm.i are the authors' patch_embed, block, norm i+1.
HF_RENAMES = (('.layer_norm_1.', '.norm1.'), ('.layer_norm_2.', '.norm2.'), ('.attention.self.query.', '.attn.q.'),
              ('.attention.self.sr.', '.attn.sr.'), ('.attention.self.layer_norm.', '.attn.norm.'),
              ('.attention.output.dense.', '.attn.proj.'), ('.mlp.dense1.', '.mlp.fc1.'), ('.mlp.dense2.', '.mlp.fc2.'),
              ('decode_head.linear_fuse.', 'decoder.linear_fuse.conv.'),
              ('decode_head.batch_norm.', 'decoder.linear_fuse.bn.'), ('decode_head.classifier.', 'head.conv.'))
HF_STAGES = dict(patch_embeddings='patch_embed', block='block', layer_norm='norm')


def _from_hugging_face(state):
    """Hugging Face's SegFormer names -> this code's; its query and key/value rows joined into the authors'
    single `kv` (keys' rows, then values'); the image classifier's `classifier` left out."""
    hf = {}
    for key, tensor in state.items():
        key = re.sub(r'^segformer\.encoder\.(patch_embeddings|block|layer_norm)\.(\d+)',
                     lambda m: f'encoder.{HF_STAGES[m[1]]}{int(m[2]) + 1}', key)
        key = re.sub(r'^(encoder\.patch_embed\d)\.layer_norm\.', r'\1.norm.', key)
        key = re.sub(r'^decode_head\.linear_c\.(\d+)', lambda m: f'decoder.linear_c{int(m[1]) + 1}', key)
        for old, new in HF_RENAMES:
            key = key.replace(old, new)
        hf[key] = tensor
    for key in [k for k in hf if '.attention.self.key.' in k]:
        value = key.replace('.key.', '.value.')
        hf[key.replace('.attention.self.key.', '.attn.kv.')] = torch.cat([hf.pop(key), hf.pop(value)])
    return _renamed(hf, {'encoder.': 'encoder.', 'decoder.': 'decoder.', 'head.': 'head.'}, drop=('classifier.',))


class Layout(NamedTuple):
    """A published weight layout: its name, a test on a state dict's names, the conversion to this code's
    names (encoder., decoder., head.), and the decoder it carries (None: an encoder alone)."""
    name: str
    detect: object
    convert: object
    decoder: object = None


# One entry per layout. Each state dict is the file's own, unwrapped from {'state_dict': ...} if so.
WEIGHT_LAYOUTS = (
    Layout('torchvision\'s ResNet', lambda s: 'layer1.0.conv1.weight' in s and 'fc.weight' in s,
           lambda s: _renamed(s, {'': 'encoder.'})),
    Layout('torchvision\'s ConvNeXt', lambda s: 'features.1.0.block.0.weight' in s and 'classifier.2.weight' in s,
           lambda s: _renamed(s, {'': 'encoder.'})),
    Layout('the official ConvNeXt', lambda s: 'downsample_layers.0.0.weight' in s,  # the xNet paper's 22k weights
           lambda s: _renamed(convnext_from_official(s), {'': 'encoder.'})),
    Layout('the SegFormer authors\' MiT encoder', lambda s: 'patch_embed1.proj.weight' in s,
           lambda s: _renamed(s, {'': 'encoder.'}, drop=('head.',))),  # head: the ImageNet classifier
    Layout('the SegFormer authors\' segmentation network', lambda s: 'backbone.patch_embed1.proj.weight' in s,
           lambda s: _renamed(s, {'backbone.': 'encoder.', 'decode_head.linear_pred.': 'head.conv.',
                                  'decode_head.': 'decoder.'}, drop=('backbone.head.', 'decode_head.conv_seg.')),
           'segformer'),  # conv_seg: mmseg's unused classifier beside linear_pred
    Layout('Hugging Face\'s SegFormer', lambda s: 'segformer.encoder.patch_embeddings.0.proj.weight' in s,
           _from_hugging_face, 'segformer'),
)


class Weights(NamedTuple):
    """Pre-trained weights under this code's names, with what is known of the network they come from."""
    state: dict
    source: str  # the path, and the layout
    arch: object  # the encoder they fit (None: none this code builds)
    normalization: str
    task: object = None  # 'seg' or 'depth' (a decoder and head come with it), else None
    decoder: object = None
    xnet: object = None


def read_weights(path):
    """Read and name, as this code names them, the weights of one of: a checkpoint of this project;
    torchvision's ResNet state dict; the SegFormer authors' mit_b*.pth or segmentation checkpoint; a
    Hugging Face SegFormer folder (config.json beside model.safetensors or pytorch_model.bin) or its weight
    file. Anything else stops with one sentence."""
    path = Path(path)
    config = None
    if path.is_dir() and (path / 'checkpoint.pt').is_file() and not (path / 'config.json').is_file():
        read_checkpoint(path)  # a run folder: its sentence names the checkpoint to pass
    if path.is_dir() or path.name in HF_WEIGHT_FILES:
        path, config = _hugging_face_files(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path} does not exist; check the path.')
    state = _read_state(path)
    if isinstance(state, dict) and {'model', 'task', 'arch'} <= set(state):  # this project's checkpoint
        check_checkpoint(state, path)  # every key it must record, or one sentence
        return Weights(state['model'], f'{path} (this project\'s {state["task"]} checkpoint)', state['arch'],
                       state['normalization'], state['task'], state.get('decoder', 'unet'), state.get('xnet'))
    if isinstance(state, dict) and isinstance(state.get('state_dict', state.get('model')), dict):
        state = state.get('state_dict', state.get('model'))  # mmseg's and the official ConvNeXt files' wrapping
    layout = next((l for l in WEIGHT_LAYOUTS if isinstance(state, dict) and l.detect(state)), None)
    if layout is None:
        raise ValueError(f'{path} holds weights of no layout this code reads (this project\'s checkpoints, '
                         f'torchvision\'s ResNets and ConvNeXts, the official ConvNeXts, the SegFormer authors\' or '
                         f'Hugging Face\'s SegFormer).')
    try:
        converted = layout.convert(state)
    except ValueError as error:
        raise ValueError(f'{path} looks like {layout.name}, but {error}; is it damaged?') from None
    arch = _hugging_face_arch(config, path) if config else _arch_of(converted)
    decoder = layout.decoder if any(k.startswith('decoder.') for k in converted) else None
    return Weights(converted, f'{path} ({layout.name})', arch, 'imagenet', 'seg' if decoder else None, decoder)


def _read_state(path):
    """A file's contents: a safetensors file's tensors, or what torch.load reads; one sentence if neither."""
    if path.suffix == '.safetensors':
        return read_safetensors(path)
    try:
        return torch.load(path, map_location='cpu', weights_only=False)
    except Exception as error:
        raise ValueError(f'could not read {path} ({type(error).__name__}): it is no PyTorch or safetensors '
                         f'weight file, or it is damaged.') from None


def _hugging_face_files(path):
    """(weight file, config) of a Hugging Face model folder, or of a weight file in one."""
    folder = path if path.is_dir() else path.parent
    if not (folder / 'config.json').is_file():
        raise FileNotFoundError(f'{folder} has no config.json: pass a Hugging Face model folder as published '
                                f'(config.json beside {" or ".join(HF_WEIGHT_FILES)}).')
    files = [path] if not path.is_dir() else [folder / f for f in HF_WEIGHT_FILES if (folder / f).is_file()]
    if not files:
        raise FileNotFoundError(f'{folder} holds no {" or ".join(HF_WEIGHT_FILES)}: download the model\'s weights '
                                f'into it.')
    return files[0], json.loads((folder / 'config.json').read_text())


def _hugging_face_arch(config, path):
    """The MiT size a Hugging Face config.json describes; one sentence if it describes another network."""
    if config.get('model_type') != 'segformer':
        raise ValueError(f'{path.parent / "config.json"} describes a {config.get("model_type")!r} model, not a '
                         f'SegFormer.')
    shared = dict(num_attention_heads=list(MIT_HEADS), sr_ratios=list(MIT_REDUCTION), patch_sizes=[7, 3, 3, 3],
                  strides=[4, 2, 2, 2], mlp_ratios=[MIT_MLP_RATIO] * 4)
    for arch, (widths, depths) in MIT_SPECS.items():
        described = dict(shared, hidden_sizes=widths, depths=depths)
        if all(config.get(k, v) == v for k, v in described.items()):
            return arch
    raise ValueError(f'{path.parent / "config.json"} describes a SegFormer of no MiT size (hidden_sizes '
                     f'{config.get("hidden_sizes")}, depths {config.get("depths")}); mit_b0 ... mit_b5 load.')


def _arch_of(state):
    """The encoder whose tensors (names and shapes) `state`'s 'encoder.' ones are, or None."""
    shapes = {k: tuple(v.shape) for k, v in state.items() if k.startswith('encoder.') and not k.startswith(CLASSIFIERS)}
    return next((arch for arch in ARCHS if _encoder_shapes(arch) == shapes), None)


@functools.cache
def _encoder_shapes(arch):
    """{name: shape} of an encoder's tensors, from one built on the meta device (no memory, no time)."""
    with torch.device('meta'):
        return {'encoder.' + k: tuple(v.shape) for k, v in build_encoder(arch).state_dict().items()
                if not ('encoder.' + k).startswith(CLASSIFIERS)}


PARTS = ('encoder.', 'decoder.', 'head.')


def load_pretrained(net, source, parts=None, quiet=False):
    """Load pre-trained weights (a path, read by read_weights, or its Weights) into `net`'s `parts`.

    `parts` defaults to those the weights hold. The encoder and decoder must load whole (a missing tensor
    or a shape that does not fit stops with one sentence); a head that does not fit (another number of
    classes, or another task's) is left as it is, freshly initialised, and said so. Prints what was
    loaded and what is new (unless `quiet`); returns the names loaded.
    """
    weights = source if isinstance(source, Weights) else read_weights(source)
    arch = getattr(getattr(net, 'encoder', None), 'arch', None)
    if arch and weights.arch and weights.arch != arch:
        raise ValueError(f'{weights.source} holds a {weights.arch} network, not {arch}; pass --arch {weights.arch}.')
    held = [p for p in PARTS if any(k.startswith(p) for k in weights.state)]
    parts = [p for p in (parts or held) if hasattr(net, p[:-1])]
    head_fits = 'head.' in parts and all(k in weights.state and weights.state[k].shape == v.shape
                                         for k, v in net.state_dict().items() if k.startswith('head.'))
    loaded = load_parts(net, weights.state, [p for p in parts if p != 'head.' or head_fits], weights.source)
    done = [p[:-1] for p in PARTS if any(k.startswith(p) for k in loaded)]
    new = [p[:-1] for p in PARTS if hasattr(net, p[:-1]) and p[:-1] not in done]
    if not quiet:
        why = f' ({_head_mismatch(net, weights.state)})' if 'head.' in parts and not head_fits else ''
        print(f'Initialised {len(loaded)} tensors of the {", ".join(done)} from {weights.source}, '
              f'{weights.normalization} normalisation; new: {", ".join(new) or "nothing"}{why}.')
    return loaded


def _head_mismatch(net, state):
    """Why a head of pre-trained weights does not fit `net`'s: its number of classes, or its task."""
    theirs, ours = state.get('head.conv.weight'), net.state_dict().get('head.conv.weight')
    if theirs is not None and ours is not None:
        return f'the weights\' head predicts {theirs.shape[0]} classes, this network {ours.shape[0]}'
    return 'the weights\' head is another task\'s'


# ---------------------------------------------------------------- checkpoints: the one writer, the one reader

# What every checkpoint of pretrain.py and finetune.py records (checkpoint_state writes them): the network's
# weights, task and encoder, the input normalisation it was trained with, and its input size.
CHECKPOINT_KEYS = ('model', 'task', 'arch', 'normalization', 'height', 'width')
CHECKPOINT_FILES = 'runs/<name>/checkpoint.pt or checkpoints/<task>.pt'


def checkpoint_state(networks, args, iteration, metrics, optimizer=None, scheduler=None, rng=None,
                     train_images=None):
    """Every key a checkpoint of pretrain.py or finetune.py holds, written here only. `networks` is {key:
    module} ('model', and 'pose_net' for video); the run's flags (`args`), its iteration and last metrics;
    with `optimizer`, `scheduler` and `rng` (training.rng_state()) what --resume continues from (an exported
    network leaves them out). What the network is: its task, encoder, decoder (xNet's options), the input
    normalisation and size it was trained at; a pre-training's --init (and --supervision); a fine-tuning's
    classes and the training images (relative to the data root: evaluate.py scores the others)."""
    flags = vars(args)
    state = {key: net.state_dict() for key, net in networks.items()}
    if optimizer is not None:
        state.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), rng=rng)
    state.update(task=args.task, arch=args.arch, normalization=networks['model'].normalization, height=args.height,
                 width=args.width, args=flags, iter=iteration, metrics=metrics)
    if args.task == 'flow':
        state.update(init=args.init, decoder='siamese-unet')
    elif 'supervision' in flags:  # pre-trained depth
        state.update(init=args.init, decoder=args.decoder, xnet=xnet_options(args), supervision=args.supervision)
    else:  # fine-tuned
        head = networks['model'].head
        state.update(decoder=args.decoder, xnet=xnet_options(args),
                     num_classes=head.conv.out_channels if args.task == 'seg' else None, train_images=train_images)
    return state


def read_checkpoint(path, advice='copy or export it again, or pass another checkpoint'):
    """A checkpoint's contents (checkpoint_state's keys), or one sentence on why it cannot be read, ending
    with `advice` where the file is damaged."""
    path = Path(path)
    if path.is_dir():
        inner = path / 'checkpoint.pt'
        raise ValueError(f'{path} is a folder, not a checkpoint: pass ' + (
            f'its checkpoint, {inner}.' if inner.is_file() else f'a checkpoint file ({CHECKPOINT_FILES}).'))
    if not path.is_file():
        raise FileNotFoundError(f'{path} does not exist; a run writes runs/<name>/checkpoint.pt.')
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as error:
        raise ValueError(f'could not read {path} ({str(error).splitlines()[0][:120]}): the file is damaged or '
                         f'truncated; {advice}.') from None
    return check_checkpoint(checkpoint, path)


def check_checkpoint(checkpoint, path):
    """A checkpoint's contents as read from `path`, if they hold what every checkpoint of this code records;
    else one sentence on what they are."""
    if not isinstance(checkpoint, dict) or not {'model', 'task', 'arch'} <= set(checkpoint):
        bare = isinstance(checkpoint, dict) and 'conv1.weight' in checkpoint
        what = ('a bare state dict (such as torchvision\'s ImageNet weights; for those use --init imagenet)' if bare
                else 'not a checkpoint written by pretrain.py or finetune.py')
        raise ValueError(f'{path} is {what}: pass one of their checkpoints ({CHECKPOINT_FILES}).')
    missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
    if missing:
        raise ValueError(f'{path} lacks {", ".join(missing)}, which every checkpoint of pretrain.py and finetune.py '
                         f'records (it was written by an older version of this code, or by hand): pass one of '
                         f'theirs ({CHECKPOINT_FILES}).')
    return checkpoint
