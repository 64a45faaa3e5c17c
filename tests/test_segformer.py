"""SegFormer: the Mix Transformer encoders and the all-MLP decoder against the paper's description and the
published weight layouts (the authors' files, Hugging Face folders, safetensors), and models.load_pretrained's
refusals; then fine-tuning from such weights on the toy world."""
import json
import math
import struct

import pytest
import torch
import torch.nn.functional as F

import finetune
import models
from conftest import SMALL

B0_WIDTHS, B0_DEPTHS = [32, 64, 160, 256], [2, 2, 2, 2]
HEADS, REDUCTION = (1, 2, 5, 8), (8, 4, 2, 1)


# ---------------------------------------------------------------- the networks

@pytest.mark.parametrize('arch, widths, depths, millions', [
    ('mit_b0', [32, 64, 160, 256], [2, 2, 2, 2], 3.32), ('mit_b1', [64, 128, 320, 512], [2, 2, 2, 2], 13.15),
    ('mit_b2', [64, 128, 320, 512], [3, 4, 6, 3], 24.20), ('mit_b3', [64, 128, 320, 512], [3, 4, 18, 3], 44.07),
    ('mit_b4', [64, 128, 320, 512], [3, 8, 27, 3], 60.84), ('mit_b5', [64, 128, 320, 512], [3, 6, 40, 3], 81.44)])
def test_mix_transformer_sizes_are_the_papers(arch, widths, depths, millions):
    with torch.device('meta'):  # shapes only: no memory, no time
        encoder = models.MixTransformer(arch)
    assert encoder.num_ch_enc == widths
    assert [len(getattr(encoder, f'block{i}')) for i in range(1, 5)] == depths
    assert [getattr(encoder, f'block{i}')[0].attn.heads for i in range(1, 5)] == list(HEADS)
    assert [getattr(encoder, f'block{i}')[0].attn.sr.kernel_size[0] for i in range(1, 4)] == list(REDUCTION[:3])
    assert not hasattr(encoder.block4[0].attn, 'sr')  # R = 1: keys and values from the whole sequence
    assert encoder.block1[0].mlp.fc1.out_features == 4 * widths[0]
    # SegFormer's Table 1 rounds them to 3.4 (its count for B0 differs by 0.1), 13.1, 24.2, 44.0, 60.8, 81.4 M
    assert round(sum(p.numel() for p in encoder.parameters()) / 1e6, 2) == millions
    drops = [block.drop_path for i in range(1, 5) for block in getattr(encoder, f'block{i}')]
    assert drops[0] == 0 and math.isclose(drops[-1], 0.1) and drops == sorted(drops)
    assert encoder.patch_embed1.proj.kernel_size == (7, 7) and encoder.patch_embed1.proj.stride == (4, 4)
    assert encoder.patch_embed2.proj.kernel_size == (3, 3) and encoder.patch_embed2.proj.padding == (1, 1)
    assert encoder.block1[0].norm1.eps == 1e-6 and encoder.norm4.eps == 1e-6 and encoder.patch_embed1.norm.eps == 1e-5


def test_segformer_predicts_k_classes_and_one_depth_channel_at_the_input_size():
    x = torch.rand(2, 3, 64, 96)
    seg = models.build_seg_net('mit_b0', 19, 'imagenet', 'segformer')
    maps = seg.encoder(x)
    assert [tuple(m.shape) for m in maps] == [(2, c, 64 // s, 96 // s) for c, s in zip(B0_WIDTHS, (4, 8, 16, 32))]
    assert seg.decoder.width == 256 and seg(x).shape == (2, 19, 64, 96)
    depth = models.build_depth_net('mit_b0', 'imagenet', 'segformer')
    (disp,) = depth(x)
    assert disp.shape == (2, 1, 64, 96) and 0 < disp.min() and disp.max() < 1  # sigmoid disparity
    assert models.build_seg_net('mit_b2', 19, decoder='segformer').decoder.width == 768
    assert seg.state_dict().keys() >= {'decoder.linear_c1.proj.weight', 'decoder.linear_fuse.conv.weight',
                                       'decoder.linear_fuse.bn.running_var', 'head.conv.weight'}


def test_segformer_head_on_a_resnet_reads_its_last_four_maps():
    net = models.build_seg_net('resnet18', 5, decoder='segformer')
    assert net.decoder.linear_c1.proj.in_features == 64 and net.decoder.linear_c4.proj.in_features == 512
    assert net(torch.rand(1, 3, 64, 64)).shape == (1, 5, 64, 64)


@pytest.mark.parametrize('decoder', ['unet', 'deeplab', 'xnet'])
def test_a_resnet_decoder_on_a_mix_transformer_stops_with_a_sentence(decoder):
    with pytest.raises(ValueError, match='takes --decoder segformer'):
        models.build_depth_net('mit_b0', decoder=decoder)


def test_mit_drop_path_acts_in_training_only():
    net = models.build_seg_net('mit_b0', 3, decoder='segformer')
    x = torch.rand(1, 3, 64, 64)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    net.decoder.dropout.p = 0.0
    torch.manual_seed(1)
    first = net.encoder(x)[-1]
    assert not torch.allclose(first, net.encoder(x)[-1])  # the 0.1 drop-path of the last blocks


# ---------------------------------------------------------------- the authors' layout, their forward written out

def authors_state(widths=B0_WIDTHS, depths=B0_DEPTHS, seed=0):
    """A seeded random state dict under the SegFormer authors' names (their mit_b0.pth), written out."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, scale=0.2: scale * torch.randn(*shape, generator=g)
    state = {}
    for i, (c, depth) in enumerate(zip(widths, depths)):
        k, c_in = (7, 3) if i == 0 else (3, widths[i - 1])
        state[f'patch_embed{i + 1}.proj.weight'], state[f'patch_embed{i + 1}.proj.bias'] = r(c, c_in, k, k), r(c)
        state[f'patch_embed{i + 1}.norm.weight'], state[f'patch_embed{i + 1}.norm.bias'] = 1 + r(c), r(c)
        for j in range(depth):
            b = f'block{i + 1}.{j}.'
            for name, shape in (('norm1', (c,)), ('norm2', (c,))):
                state[b + name + '.weight'], state[b + name + '.bias'] = 1 + r(*shape), r(*shape)
            for name, (o, n) in (('attn.q', (c, c)), ('attn.kv', (2 * c, c)), ('attn.proj', (c, c)),
                                 ('mlp.fc1', (4 * c, c)), ('mlp.fc2', (c, 4 * c))):
                state[b + name + '.weight'], state[b + name + '.bias'] = r(o, n, scale=n ** -0.5), r(o)
            if REDUCTION[i] > 1:
                s = REDUCTION[i]
                state[b + 'attn.sr.weight'], state[b + 'attn.sr.bias'] = r(c, c, s, s, scale=(c * s * s) ** -0.5), r(c)
                state[b + 'attn.norm.weight'], state[b + 'attn.norm.bias'] = 1 + r(c), r(c)
            state[b + 'mlp.dwconv.dwconv.weight'], state[b + 'mlp.dwconv.dwconv.bias'] = r(4 * c, 1, 3, 3), r(4 * c)
        state[f'norm{i + 1}.weight'], state[f'norm{i + 1}.bias'] = 1 + r(c), r(c)
    state['head.weight'], state['head.bias'] = r(1000, widths[-1]), r(1000)  # their ImageNet classifier
    return state


def authors_head_state(widths=B0_WIDTHS, width=256, classes=150, seed=1):
    """The decode head of their segmentation checkpoints (mmseg's SegFormerHead), seeded random."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, scale=0.2: scale * torch.randn(*shape, generator=g)
    state = {}
    for i, c in enumerate(widths):
        state[f'linear_c{i + 1}.proj.weight'], state[f'linear_c{i + 1}.proj.bias'] = r(width, c, scale=c ** -0.5), r(width)
    state['linear_fuse.conv.weight'] = r(width, 4 * width, 1, 1, scale=(4 * width) ** -0.5)
    state.update({'linear_fuse.bn.weight': 1 + r(width), 'linear_fuse.bn.bias': r(width),
                  'linear_fuse.bn.running_mean': r(width), 'linear_fuse.bn.running_var': 1 + r(width).abs(),
                  'linear_fuse.bn.num_batches_tracked': torch.tensor(7)})
    state['linear_pred.weight'], state['linear_pred.bias'] = r(classes, width, 1, 1), r(classes)
    state['conv_seg.weight'], state['conv_seg.bias'] = r(classes, width, 1, 1), r(classes)  # mmseg's, unused
    return state


def authors_encoder(state, x, depths=B0_DEPTHS):
    """MiT's forward as the SegFormer paper (Sect. 3.1) describes it, on the authors' tensors."""
    maps = []
    for i in range(4):
        p = f'patch_embed{i + 1}.'
        x = F.conv2d(x, state[p + 'proj.weight'], state[p + 'proj.bias'], stride=4 if i == 0 else 2,
                     padding=3 if i == 0 else 1)  # overlapped patch merging
        B, C, H, W = x.shape
        x = F.layer_norm(x.flatten(2).transpose(1, 2), (C,), state[p + 'norm.weight'], state[p + 'norm.bias'])
        d = C // HEADS[i]
        for j in range(depths[i]):
            b = f'block{i + 1}.{j}.'
            lin = lambda t, name: F.linear(t, state[b + name + '.weight'], state[b + name + '.bias'])
            h = F.layer_norm(x, (C,), state[b + 'norm1.weight'], state[b + 'norm1.bias'], eps=1e-6)
            q = lin(h, 'attn.q').reshape(B, -1, HEADS[i], d).transpose(1, 2)
            if REDUCTION[i] > 1:  # eq. 2: K, V from a sequence R^2 shorter
                h = F.conv2d(h.transpose(1, 2).reshape(B, C, H, W), state[b + 'attn.sr.weight'], state[b + 'attn.sr.bias'],
                             stride=REDUCTION[i]).flatten(2).transpose(1, 2)
                h = F.layer_norm(h, (C,), state[b + 'attn.norm.weight'], state[b + 'attn.norm.bias'])
            kv = lin(h, 'attn.kv').reshape(B, -1, 2, HEADS[i], d).permute(2, 0, 3, 1, 4)
            attention = torch.softmax(q @ kv[0].transpose(-2, -1) / math.sqrt(d), -1)  # eq. 1
            x = x + lin((attention @ kv[1]).transpose(1, 2).reshape(B, -1, C), 'attn.proj')
            h = lin(F.layer_norm(x, (C,), state[b + 'norm2.weight'], state[b + 'norm2.bias'], eps=1e-6), 'mlp.fc1')
            h = F.conv2d(h.transpose(1, 2).reshape(B, 4 * C, H, W), state[b + 'mlp.dwconv.dwconv.weight'],
                         state[b + 'mlp.dwconv.dwconv.bias'], padding=1, groups=4 * C)  # eq. 3, Mix-FFN
            x = x + lin(F.gelu(h.flatten(2).transpose(1, 2)), 'mlp.fc2')
        x = F.layer_norm(x, (C,), state[f'norm{i + 1}.weight'], state[f'norm{i + 1}.bias'], eps=1e-6)
        x = x.transpose(1, 2).reshape(B, C, H, W)
        maps.append(x)
    return maps


def authors_decoder(head, maps):
    """SegFormer's all-MLP decoder (Sect. 3.2, eq. 4) as written: linear per map, upsample to 1/4,
    concatenate c4..c1, fuse (1x1 conv, BatchNorm in eval mode, ReLU), predict."""
    size = maps[0].shape[-2:]
    ups = []
    for i, m in enumerate(maps):
        y = F.linear(m.flatten(2).transpose(1, 2), head[f'linear_c{i + 1}.proj.weight'], head[f'linear_c{i + 1}.proj.bias'])
        ups.append(F.interpolate(y.transpose(1, 2).reshape(m.shape[0], -1, *m.shape[-2:]), size, mode='bilinear',
                                 align_corners=False))
    x = F.conv2d(torch.cat(ups[::-1], 1), head['linear_fuse.conv.weight'])
    x = F.relu(F.batch_norm(x, head['linear_fuse.bn.running_mean'], head['linear_fuse.bn.running_var'],
                            head['linear_fuse.bn.weight'], head['linear_fuse.bn.bias'], False))
    return F.conv2d(x, head['linear_pred.weight'], head['linear_pred.bias'])


def authors_checkpoint(classes=150):
    """Their segmentation checkpoint: {'state_dict': backbone. + decode_head., 'meta': ...}."""
    state = {'backbone.' + k: v for k, v in authors_state().items()}
    state.update({'decode_head.' + k: v for k, v in authors_head_state(classes=classes).items()})
    return {'meta': {'CLASSES': tuple(str(i) for i in range(classes)), 'iter': 160000}, 'state_dict': state}


def test_the_authors_mit_file_loads_and_computes_their_encoder(tmp_path, capsys):
    torch.save(authors_state(), tmp_path / 'mit_b0.pth')
    net = models.build_seg_net('mit_b0', 19, 'imagenet', 'segformer').eval()
    loaded = models.load_pretrained(net, tmp_path / 'mit_b0.pth')
    assert len(loaded) == len(net.encoder.state_dict())
    assert "new: decoder, head" in capsys.readouterr().out
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for ours, theirs in zip(net.encoder(x), authors_encoder(authors_state(), x)):
            torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_the_authors_segmentation_checkpoint_loads_and_computes_their_logits(tmp_path, capsys):
    torch.save(authors_checkpoint(classes=19), tmp_path / 'segformer.b0.pth')
    net = models.build_seg_net('mit_b0', 19, 'imagenet', 'segformer').eval()
    models.load_pretrained(net, tmp_path / 'segformer.b0.pth')
    assert 'new: nothing' in capsys.readouterr().out
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    theirs = authors_decoder(authors_head_state(classes=19), authors_encoder(authors_state(), (x - net.mean) / net.std))
    with torch.no_grad():
        torch.testing.assert_close(net(x), F.interpolate(theirs, (64, 96), mode='bilinear', align_corners=False),
                                   atol=1e-4, rtol=1e-4)


def test_another_number_of_classes_leaves_the_head_new_and_says_so(tmp_path, capsys):
    torch.save(authors_checkpoint(classes=150), tmp_path / 'ade.pth')
    net = models.build_seg_net('mit_b0', 19, 'imagenet', 'segformer')
    head = net.head.conv.weight.clone()
    models.load_pretrained(net, tmp_path / 'ade.pth')
    assert 'new: head (the weights\' head predicts 150 classes, this network 19)' in capsys.readouterr().out
    assert torch.equal(net.head.conv.weight, head)
    assert torch.equal(net.decoder.linear_fuse.conv.weight, authors_head_state()['linear_fuse.conv.weight'])


# ---------------------------------------------------------------- safetensors, read by hand

def write_safetensors(path, tensors, padding=0):
    """A safetensors file written by hand from the format's description, with `padding` unused bytes
    before the first tensor (offsets must be honoured, not assumed)."""
    header, chunks, offset = {'__metadata__': {'format': 'pt'}}, [b'\0' * padding], padding
    names = {torch.float32: 'F32', torch.float16: 'F16', torch.bfloat16: 'BF16', torch.int64: 'I64'}
    for name, t in tensors.items():
        data = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()  # little-endian, as the format is
        header[name] = {'dtype': names[t.dtype], 'shape': list(t.shape), 'data_offsets': [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack('<Q', len(text)) + text + b''.join(chunks))


def test_safetensors_reader_reads_every_dtype_at_its_offsets(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {'a': torch.randn(3, 4, generator=g), 'b': torch.randn(5, generator=g).half(),
               'c': torch.randn(2, 2, 2, generator=g).bfloat16(), 'd': torch.arange(-3, 3).view(2, 3),
               'empty': torch.zeros(0, 4), 'scalar': torch.tensor(2.5)}
    write_safetensors(tmp_path / 'x.safetensors', tensors, padding=3)
    read = models.read_safetensors(tmp_path / 'x.safetensors')
    assert read.keys() == tensors.keys()
    for name, t in tensors.items():
        assert read[name].dtype == t.dtype and read[name].shape == t.shape and torch.equal(read[name], t)


def test_a_damaged_safetensors_file_stops_with_a_sentence(tmp_path):
    write_safetensors(tmp_path / 'x.safetensors', {'a': torch.ones(4)})
    raw = (tmp_path / 'x.safetensors').read_bytes()
    (tmp_path / 'x.safetensors').write_bytes(raw[:-4])  # truncated: the offsets run past the end
    with pytest.raises(ValueError, match='not a readable safetensors file'):
        models.read_safetensors(tmp_path / 'x.safetensors')


# ---------------------------------------------------------------- Hugging Face's layout, written by hand

def hugging_face_names(state):
    """Our (the authors') names -> Hugging Face's published SegFormer names, kv split into key and value:
    the layout of nvidia/mit-b0 and nvidia/segformer-b*-finetuned-* written out independently."""
    out = {}
    for key, t in state.items():
        for ours, theirs in (('norm1.', 'layer_norm_1.'), ('norm2.', 'layer_norm_2.'), ('attn.q.', 'attention.self.query.'),
                             ('attn.sr.', 'attention.self.sr.'), ('attn.norm.', 'attention.self.layer_norm.'),
                             ('attn.proj.', 'attention.output.dense.'), ('mlp.fc1.', 'mlp.dense1.'),
                             ('mlp.fc2.', 'mlp.dense2.')):
            key = key.replace('.' + ours, '.' + theirs)
        parts = key.split('.')
        if parts[0] == 'encoder':
            stage, rest = parts[1], '.'.join(parts[2:])
            for ours, theirs in (('patch_embed', 'patch_embeddings'), ('block', 'block'), ('norm', 'layer_norm')):
                if stage.startswith(ours) and stage[len(ours):].isdigit():
                    i = int(stage[len(ours):]) - 1
                    rest = rest.replace('norm.', 'layer_norm.') if ours == 'patch_embed' else rest
                    key = f'segformer.encoder.{theirs}.{i}' + ('.' + rest if rest else '')
                    break
            if '.attn.kv.' in key:
                c = t.shape[0] // 2
                out[key.replace('.attn.kv.', '.attention.self.key.')] = t[:c]
                out[key.replace('.attn.kv.', '.attention.self.value.')] = t[c:]
                continue
        elif parts[0] == 'decoder':
            key = key.replace('decoder.linear_fuse.conv.', 'decode_head.linear_fuse.')
            key = key.replace('decoder.linear_fuse.bn.', 'decode_head.batch_norm.')
            if key.startswith('decoder.linear_c'):
                key = f'decode_head.linear_c.{int(key[len("decoder.linear_c")]) - 1}' + key[len('decoder.linear_c1'):]
        elif parts[0] == 'head':
            key = key.replace('head.conv.', 'decode_head.classifier.')
        out[key] = t
    return out


def hugging_face_folder(folder, classes=150, weights='model.safetensors', hidden_sizes=B0_WIDTHS, segmentation=True):
    """A Hugging Face SegFormer folder as published: config.json beside the weights, from the authors'
    seeded random tensors (decoder and head for SegformerForSemanticSegmentation, a classifier else)."""
    folder.mkdir(parents=True)
    theirs = authors_checkpoint(classes)['state_dict']
    state = {('encoder.' + k[len('backbone.'):] if k.startswith('backbone.') else
              'head.conv.' + k[len('decode_head.linear_pred.'):] if k.startswith('decode_head.linear_pred.') else
              'decoder.' + k[len('decode_head.'):]): v for k, v in theirs.items()
             if not k.startswith(('backbone.head.', 'decode_head.conv_seg.'))}
    if not segmentation:
        state = {k: v for k, v in state.items() if k.startswith('encoder.')}
    state = hugging_face_names(state)
    if not segmentation:
        state['classifier.weight'], state['classifier.bias'] = torch.zeros(1000, 256), torch.zeros(1000)
    config = dict(model_type='segformer', architectures=['SegformerForSemanticSegmentation' if segmentation else
                                                         'SegformerForImageClassification'],
                  hidden_sizes=hidden_sizes, depths=B0_DEPTHS, num_attention_heads=list(HEADS), sr_ratios=list(REDUCTION),
                  patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2], mlp_ratios=[4] * 4, decoder_hidden_size=256)
    (folder / 'config.json').write_text(json.dumps(config))
    if weights.endswith('.safetensors'):
        write_safetensors(folder / weights, state)
    else:
        torch.save(state, folder / weights)
    return folder


@pytest.mark.parametrize('weights', ['model.safetensors', 'pytorch_model.bin'])
def test_a_hugging_face_folder_loads_as_the_authors_checkpoint_does(weights, tmp_path):
    torch.save(authors_checkpoint(classes=19), tmp_path / 'authors.pth')
    folder = hugging_face_folder(tmp_path / 'hf', classes=19, weights=weights)
    from_authors = models.build_seg_net('mit_b0', 19, 'imagenet', 'segformer')
    models.load_pretrained(from_authors, tmp_path / 'authors.pth')
    for source in (folder, folder / weights):  # the folder, or its weight file
        net = models.build_seg_net('mit_b0', 19, 'imagenet', 'segformer')
        assert len(models.load_pretrained(net, source)) == len(net.state_dict())
        assert all(torch.equal(v, from_authors.state_dict()[k]) for k, v in net.state_dict().items())


def test_a_hugging_face_image_classifier_gives_its_encoder(tmp_path, capsys):
    folder = hugging_face_folder(tmp_path / 'mit-b0', segmentation=False)
    net = models.build_depth_net('mit_b0', 'imagenet', 'segformer')
    models.load_pretrained(net, folder)
    assert 'new: decoder, head' in capsys.readouterr().out
    assert torch.equal(net.encoder.block2[1].attn.kv.weight, authors_state()['block2.1.attn.kv.weight'])


# ---------------------------------------------------------------- what does not load

def test_load_pretrained_refuses_what_does_not_fit_with_one_sentence(tmp_path):
    net = models.build_seg_net('mit_b0', 19, 'imagenet', 'segformer')
    (tmp_path / 'notes.pth').write_text('not weights')
    with pytest.raises(ValueError, match='no PyTorch or safetensors weight file'):
        models.load_pretrained(net, tmp_path / 'notes.pth')
    torch.save({'conv.weight': torch.zeros(1)}, tmp_path / 'other.pth')
    with pytest.raises(ValueError, match='weights of no layout this code reads'):
        models.load_pretrained(net, tmp_path / 'other.pth')
    state = authors_state()
    del state['block3.1.mlp.fc2.bias']
    torch.save(state, tmp_path / 'missing.pth')
    with pytest.raises(ValueError, match=r"no tensor 'encoder\.block3\.1\.mlp\.fc2\.bias'"):
        models.load_pretrained(net, tmp_path / 'missing.pth')
    state = authors_state()
    state['norm4.weight'] = torch.ones(255)
    torch.save(state, tmp_path / 'shape.pth')
    with pytest.raises(ValueError, match=r"'encoder\.norm4\.weight' has shape \(255,\) but the model expects \(256,\)"):
        models.load_pretrained(net, tmp_path / 'shape.pth')
    with pytest.raises(FileNotFoundError, match='has no config.json'):
        models.load_pretrained(net, tmp_path)


def test_a_config_of_another_size_stops_with_the_arch_to_pass(tmp_path):
    folder = hugging_face_folder(tmp_path / 'hf')
    config = json.loads((folder / 'config.json').read_text())
    (folder / 'config.json').write_text(json.dumps(dict(config, hidden_sizes=[64, 128, 320, 512])))
    with pytest.raises(ValueError, match='holds a mit_b1 network, not mit_b0; pass --arch mit_b1'):
        models.load_pretrained(models.build_seg_net('mit_b0', 19, decoder='segformer'), folder)
    (folder / 'config.json').write_text(json.dumps(dict(config, depths=[1, 1, 1, 1])))
    with pytest.raises(ValueError, match='describes a SegFormer of no MiT size'):
        models.read_weights(folder)


def test_torchvision_resnet_state_dicts_load_from_a_path(tmp_path, capsys):
    import torchvision
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, tmp_path / 'resnet18-f37072fd.pth')
    weights = models.read_weights(tmp_path / 'resnet18-f37072fd.pth')
    assert weights.arch == 'resnet18' and weights.normalization == 'imagenet'
    net = models.build_seg_net('resnet18', 19, 'imagenet')
    models.load_pretrained(net, weights)
    assert torch.equal(net.encoder.layer3[1].conv2.weight, state['layer3.1.conv2.weight'])
    assert 'new: decoder, head' in capsys.readouterr().out


# ---------------------------------------------------------------- fine-tuning from published weights

def _finetune(toy_root, tmp_path, name, *flags):
    finetune.main(['--data-root', str(toy_root), '--runs', str(tmp_path), '--name', name, '--train-size', '4',
                   '--iters', '2', '--eval-every', '2', '--log-every', '1', '--arch', 'mit_b0', '--decoder', 'segformer']
                  + SMALL + list(flags))
    return torch.load(tmp_path / name / 'checkpoint.pt', weights_only=False)


def test_depth_fine_tuning_from_the_authors_segmentation_checkpoint(toy_root, tmp_path, capsys):
    torch.save(authors_checkpoint(), tmp_path / 'segformer.b0.ade.pth')
    checkpoint = _finetune(toy_root, tmp_path, 'depth', '--task', 'depth', '--loss', 'silog', '--lr', '0',
                           '--init', str(tmp_path / 'segformer.b0.ade.pth'))
    assert 'of the encoder, decoder from' in capsys.readouterr().out and checkpoint['normalization'] == 'imagenet'
    head = authors_head_state()
    state = checkpoint['model']
    assert torch.equal(state['decoder.linear_c3.proj.weight'], head['linear_c3.proj.weight'])  # lr 0: as loaded
    assert torch.equal(state['encoder.block4.1.attn.q.weight'], authors_state()['block4.1.attn.q.weight'])
    assert state['head.convs.0.weight'].shape == (1, 256, 1, 1)  # the paper's one depth channel, new
    assert checkpoint['arch'] == 'mit_b0' and checkpoint['decoder'] == 'segformer'


def test_segmentation_fine_tuning_from_a_hugging_face_folder(toy_root, tmp_path, capsys):
    folder = hugging_face_folder(tmp_path / 'segformer-b0-finetuned-ade-512-512')
    checkpoint = _finetune(toy_root, tmp_path, 'seg', '--init', str(folder), '--lr', '1e-3')
    out = capsys.readouterr().out
    assert "Hugging Face's SegFormer" in out and '150 classes, this network 19' in out
    assert checkpoint['model']['head.conv.weight'].shape[0] == 19
    assert 'segformer-b0-finetuned-ade-512-512' in finetune.parse_args(['--init', str(folder), '--arch', 'mit_b0',
                                                                        '--decoder', 'segformer']).name


def test_fine_tuning_flags_that_cannot_work_stop_with_a_sentence(toy_root, tmp_path):
    folder = hugging_face_folder(tmp_path / 'hf')
    with pytest.raises(SystemExit, match='holds a mit_b0 network; pass --arch mit_b0'):
        finetune.main(['--data-root', str(toy_root), '--init', str(folder), '--decoder', 'segformer'] + SMALL)
    with pytest.raises(SystemExit, match='takes --decoder segformer'):
        finetune.parse_args(['--arch', 'mit_b0'])
    with pytest.raises(SystemExit, match='publishes no ImageNet weights for mit_b0'):
        finetune.build_network(finetune.parse_args(['--arch', 'mit_b0', '--decoder', 'segformer', '--init', 'imagenet']))


# ---------------------------------------------------------------- against transformers (a reference venv only)

def _hugging_face_model(kind, seed=0):
    """A seeded random transformers SegFormer of the b0 configuration, LayerNorms and BatchNorm statistics
    randomised too (so that every tensor's place matters), in eval mode."""
    transformers = pytest.importorskip('transformers')
    torch.manual_seed(seed)
    model = getattr(transformers, kind)(transformers.SegformerConfig(num_labels=7)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.2)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2), m.running_var.uniform_(0.5, 1.5)
    return model


def _saved(model, folder, safetensors):
    """The model saved as published: model.safetensors, or pytorch_model.bin (written from the safetensors
    file's tensors where this transformers saves safetensors only)."""
    model.save_pretrained(folder, safe_serialization=safetensors)
    if not safetensors and not (folder / 'pytorch_model.bin').exists():
        from safetensors.torch import load_file
        torch.save(load_file(folder / 'model.safetensors'), folder / 'pytorch_model.bin')
        (folder / 'model.safetensors').unlink()
    return folder


@pytest.mark.parametrize('safetensors', [True, False])
def test_matches_transformers_segformer_for_semantic_segmentation(safetensors, tmp_path):
    model = _hugging_face_model('SegformerForSemanticSegmentation')
    net = models.build_seg_net('mit_b0', 7, 'imagenet', 'segformer').eval()
    assert len(models.load_pretrained(net, _saved(model, tmp_path / 'hf', safetensors))) == len(net.state_dict())
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(4))
    pixels = (x - net.mean) / net.std  # what transformers' image processor hands the model
    with torch.no_grad():
        reference = model(pixel_values=pixels, output_hidden_states=True)
        maps = net.encoder(pixels)
        for ours, theirs in zip(maps, reference.hidden_states, strict=True):
            torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(net.head(net.decoder(maps)), reference.logits, atol=1e-4, rtol=1e-4)  # at 1/4
        upsampled = F.interpolate(reference.logits, (64, 96), mode='bilinear', align_corners=False)
        torch.testing.assert_close(net(x), upsampled, atol=1e-4, rtol=1e-4)


def test_matches_transformers_segformer_for_image_classification_encoder(tmp_path):
    model = _hugging_face_model('SegformerForImageClassification')
    net = models.build_depth_net('mit_b0', 'imagenet', 'segformer').eval()
    models.load_pretrained(net, _saved(model, tmp_path / 'hf', True))
    pixels = torch.randn(1, 3, 96, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        reference = model.segformer(pixel_values=pixels, output_hidden_states=True).hidden_states
        for ours, theirs in zip(net.encoder(pixels), reference, strict=True):
            torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_pretraining_a_mix_transformer_for_depth(toy_root, tmp_path):
    import pretrain
    out = tmp_path / 'depth.pt'
    pretrain.main(['--data-root', str(toy_root), '--runs', str(tmp_path), '--out', str(out), '--iters', '2',
                   '--eval-every', '2', '--supervision', 'stereo', '--arch', 'mit_b0', '--decoder', 'segformer'] + SMALL)
    checkpoint = torch.load(out, weights_only=False)
    assert checkpoint['arch'] == 'mit_b0' and checkpoint['decoder'] == 'segformer' and checkpoint['metrics']
    with pytest.raises(SystemExit, match='PoseNet that video supervision needs are ResNets'):
        pretrain.parse_args(['--arch', 'mit_b0', '--decoder', 'segformer'])


def test_grad_cam_of_a_mix_transformer_reads_its_stem_the_first_patch_merging():
    import evaluate
    net = models.build_seg_net('mit_b0', 3, decoder='segformer').eval()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    name, layer = evaluate.grad_cam_layer(net, images)
    assert name == 'encoder.patch_embed1.proj' and layer.in_channels == 3 and layer.stride == (4, 4)  # the image's
    cam = evaluate.grad_cam(net, images, layer)
    assert cam.shape == (2, 16, 16) and float(cam.amax()) == 1.0 and float(cam.amin()) >= 0
