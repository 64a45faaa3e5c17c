"""The leakage-free split (splits.py section 2, its embedders too): embeddings, the similarity graph's components, the split by clusters."""
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.io import write_png

import models
from splits import (checkpoint_embedder, cluster_histogram, histogram_lines, image_embeddings, mobilenet_embedder,
                    similar_components, split_by_clusters)


def near(vector, generator, scale=1e-3):
    """`vector` plus a little seeded noise: cosine similarity to it about 1."""
    return vector + scale * torch.randn(vector.shape, generator=generator)


def test_components_of_near_duplicates_and_unrelated_vectors():
    g = torch.Generator().manual_seed(0)
    base = F.normalize(torch.randn(64, generator=g), dim=0)
    unrelated = torch.eye(64)[:4]  # orthogonal to each other; base is far from all of them (checked below)
    assert (unrelated @ base).abs().max() < 0.5
    embeddings = torch.stack([unrelated[0], near(base, g), unrelated[1], near(base, g), unrelated[2],
                              unrelated[3], near(base, g)])
    assert similar_components(embeddings).tolist() == [0, 1, 2, 1, 3, 4, 1]  # numbered by first appearance


def test_threshold_is_strict():
    # 64 entries of +-1/8 are unit vectors, and their cosines are exact: 1 - (signs apart) / 32.
    a = torch.full((64,), 1 / 8)
    b, c = a.clone(), a.clone()
    b[0] = -b[0]
    c[1:4] = -c[1:4]
    embeddings = torch.stack([a, b, c])
    assert (embeddings @ embeddings.T).tolist() == [[1, 62 / 64, 58 / 64], [62 / 64, 1, 56 / 64], [58 / 64, 56 / 64, 1]]
    assert similar_components(embeddings, threshold=62 / 64).tolist() == [0, 1, 2]  # at the threshold: no link
    assert similar_components(embeddings, threshold=62 / 64 - 1e-6).tolist() == [0, 0, 1]
    assert similar_components(embeddings, threshold=58 / 64).tolist() == [0, 0, 1]
    assert similar_components(embeddings, threshold=58 / 64 - 1e-6).tolist() == [0, 0, 0]


def test_linked_through_a_third_image_is_one_cluster():
    # a ~ b and b ~ c (cosine 0.95), but a and c only 0.805: one cluster all the same.
    angle = torch.tensor(0.95).acos()
    a, b, c = (torch.stack([torch.cos(k * angle), torch.sin(k * angle), torch.tensor(0.)]) for k in range(3))
    assert (a @ c) < 0.9 < (a @ b) and (b @ c) > 0.9
    assert similar_components(torch.stack([a, c, torch.tensor([0., 0., 1.]), b])).tolist() == [0, 0, 1, 0]


def test_similarity_is_cosine_whatever_the_lengths():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(32, generator=g)
    embeddings = torch.stack([base, 100 * near(base, g), 0.01 * near(base, g), torch.randn(32, generator=g)])
    assert similar_components(embeddings).tolist() == [0, 0, 0, 1]


def clustered_embeddings(seed, n=200, centres=30, dim=16):
    """Seeded random unit embeddings around a few centres, with noise large enough that the graph at 0.9 has
    many components of many sizes (chains among them)."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.randn(centres, dim, generator=g)[torch.randint(centres, (n,), generator=g)]
    return F.normalize(centre + 0.3 * torch.randn(n, dim, generator=g), dim=1)


@pytest.mark.parametrize('seed', [0, 1])
def test_blocked_components_equal_unblocked(seed):
    embeddings = clustered_embeddings(seed)
    n = len(embeddings)
    linked = embeddings @ embeddings.T > 0.9  # the oracle: the whole matrix, labels spread to convergence
    labels = torch.arange(n)
    while True:
        spread = torch.where(linked, labels[None], n).amin(1)
        if torch.equal(spread, labels):
            break
        labels = spread
    expected = torch.unique(labels, return_inverse=True)[1]
    sizes = torch.bincount(expected)
    assert len(sizes) > 1 and len(sizes) < n and sizes.max() > 2  # the seeded case has clusters to find
    for block in (1, 3, n, n + 5):
        assert similar_components(embeddings, 0.9, block).tolist() == expected.tolist(), block


def straddling(groups, train, val):
    """The groups (lists of indices) with members on both sides."""
    return [group for group in groups if set(group) & set(train) and set(group) & set(val)]


def test_split_keeps_clusters_whole_and_under_the_share():
    components = similar_components(clustered_embeddings(0))
    n = len(components)
    groups = [torch.nonzero(components == c).flatten().tolist() for c in range(int(components.max()) + 1)]
    for fraction in (0.1, 0.2, 0.5):
        train, val = split_by_clusters(components, fraction)
        assert sorted(train + val) == list(range(n)) and train == sorted(train) and val == sorted(val)
        assert not straddling(groups, train, val)
        assert len(val) <= round(fraction * n)
        left = round(fraction * n) - len(val)  # greedy: no cluster left in train would still have fit
        assert all(len(group) > left for group in groups if group[0] in train)


def test_split_takes_largest_clusters_first():
    # A (3 images), B (2), then 5 singletons; room for round(0.4 * 10) = 4.
    components = [0, 0, 0, 1, 1, 2, 3, 4, 5, 6]
    train, val = split_by_clusters(components, 0.4)
    assert val == [0, 1, 2, 5]  # A, then B does not fit, then the first singleton; smallest first: 5, 6, 7, 8
    assert train == [3, 4, 6, 7, 8, 9]
    # clusters of equal size: the one with the smallest member first, whatever their ids
    assert split_by_clusters([7, 3, 7, 3, 5], 0.4)[1] == [0, 2]
    assert split_by_clusters(list(range(7)), 0.5)[1] == [0, 1, 2, 3]  # round(3.5) images: 4


@pytest.mark.parametrize('fraction', [0, 1, -0.2, 1.5])
def test_split_refuses_a_fraction_outside_0_1(fraction):
    with pytest.raises(ValueError, match='between 0 and 1'):
        split_by_clusters([0, 1, 2], fraction)


def test_cluster_histogram_and_its_lines():
    histogram = cluster_histogram(torch.tensor([4, 4, 4, 9, 2, 2, 0, 1, 5]))
    assert histogram == [(1, 4), (2, 1), (3, 1)]
    lines = histogram_lines(histogram, width=8)
    assert len(lines) == 3 and lines[0].endswith(' ' + '#' * 8) and lines[2].endswith(' ' + '#' * 2)
    assert '4 clusters' in lines[0] and '3 images' in lines[2]


def write_near_duplicates(folder, groups=4, copies=3):
    """`groups` seeded smooth random textures, each saved `copies` times as a PNG with its own faint noise
    (the last copy also shifted by one pixel): [[paths of group 0], ...]."""
    g = torch.Generator().manual_seed(0)
    paths = []
    for group in range(groups):
        texture = F.interpolate(torch.rand(1, 3, 6, 8, generator=g), size=(60, 80), mode='bilinear')[0]
        paths.append([])
        for copy in range(copies):
            image = texture + 0.02 * torch.randn(texture.shape, generator=g)
            image = torch.roll(image, 1, dims=2) if copy == copies - 1 else image
            path = folder / f'{group}_{copy}.png'
            write_png((255 * image.clamp(0, 1)).round().byte(), str(path))
            paths[-1].append(path)
    return paths


def save_fresh_checkpoint(path, normalization='unit', decoder='unet'):
    """A freshly initialised depth network in the format pretrain.py exports; returns the network."""
    net = models.build_depth_net('resnet18', normalization, decoder).eval()
    torch.save(dict(model=net.state_dict(), task='depth', arch='resnet18', normalization=normalization,
                    decoder=decoder, height=64, width=192), path)
    return net


def test_near_duplicate_images_never_straddle(tmp_path):
    groups = write_near_duplicates(tmp_path)
    save_fresh_checkpoint(tmp_path / 'depth.pt')
    paths = [path for group in groups for path in group]
    embeddings = image_embeddings(paths, checkpoint_embedder(tmp_path / 'depth.pt'), batch_size=5)
    assert embeddings.shape == (12, 512) and embeddings.dtype == torch.float32
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(12))
    # A random network's pooled features are alike for every image (cosine > 0.99): its near-duplicates stand
    # apart above 0.999, where a trained embedder's would above the paper's 0.9.
    components = similar_components(embeddings, threshold=0.999)
    assert components.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    indices = [[paths.index(path) for path in group] for group in groups]
    train, val = split_by_clusters(components, 0.25)
    assert val == [0, 1, 2] and not straddling(indices, train, val)


def test_embeddings_of_images_of_different_sizes(tmp_path):
    g = torch.Generator().manual_seed(0)
    for name, (h, w) in dict(a=(40, 60), b=(300, 200), c=(224, 224)).items():
        write_png(torch.randint(256, (3, h, w), generator=g, dtype=torch.uint8), str(tmp_path / f'{name}.png'))
    net = save_fresh_checkpoint(tmp_path / 'depth.pt', 'imagenet', 'deeplab')
    embeddings = image_embeddings([tmp_path / f'{n}.png' for n in 'abc'], checkpoint_embedder(tmp_path / 'depth.pt'))
    # the oracle: the checkpoint's own (dilated) encoder, after its own normalisation, on the 224 x 224 image
    image = torchvision.io.read_image(str(tmp_path / 'c.png')).float()[None] / 255
    with torch.no_grad():
        expected = net.encoder((image - net.mean) / net.std)[-1].mean((2, 3))
    assert torch.allclose(embeddings[2], F.normalize(expected, dim=1)[0], atol=1e-5)


def test_checkpoint_embedder_refuses_what_is_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        checkpoint_embedder(tmp_path / 'missing.pt')
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / 'bare.pt')
    with pytest.raises(ValueError, match='bare state dict'):
        checkpoint_embedder(tmp_path / 'bare.pt')
    net = models.build_depth_net('resnet18')
    torch.save(dict(model=net.state_dict(), task='depth', arch='resnet18'), tmp_path / 'old.pt')
    with pytest.raises(ValueError, match='old.pt lacks normalization, height, width'):
        checkpoint_embedder(tmp_path / 'old.pt')
    torch.save(dict(model=net.state_dict(), task='depth', arch='resnet18', normalization='none', height=64, width=64),
               tmp_path / 'junk.pt')
    with pytest.raises(ValueError, match='normalisation'):
        checkpoint_embedder(tmp_path / 'junk.pt')
    torch.save(dict(model=net.state_dict(), task='depth', arch='resnet50', normalization='unit', height=64, width=64),
               tmp_path / 'arch.pt')
    with pytest.raises(ValueError, match='different --arch'):
        checkpoint_embedder(tmp_path / 'arch.pt')


def test_mobilenet_embedder_loads_the_cached_weights(monkeypatch, tmp_path):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    folder = tmp_path / 'torch' / 'hub' / 'checkpoints'
    folder.mkdir(parents=True)
    net = torchvision.models.mobilenet_v2().eval()
    torch.save(net.state_dict(), folder / 'mobilenet_v2-b0353104.pth')
    images = torch.rand(2, 3, 224, 224)  # splits.image_embeddings resizes every image to this first
    embed = mobilenet_embedder()  # initialised from another random state: equal outputs mean the file was read
    with torch.no_grad():
        embeddings = embed(images)
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
        expected = net.features((images - mean) / std).mean((2, 3))
    assert embeddings.shape == (2, 1280)
    # an untrained MobileNet's features are tiny (about 1e-9): compare directions, which are what the split uses
    assert torch.allclose(F.normalize(embeddings, dim=1), F.normalize(expected, dim=1), atol=1e-5)


def test_mobilenet_embedder_never_downloads(monkeypatch, tmp_path):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'empty'))
    with pytest.raises(FileNotFoundError, match='mobilenet_v2-b0353104.pth'):
        mobilenet_embedder()
    folder = tmp_path / 'empty' / 'hub' / 'checkpoints'
    folder.mkdir(parents=True)
    (folder / 'mobilenet_v2-b0353104.pth').write_bytes(b'truncated')
    with pytest.raises(FileNotFoundError, match='download .* again'):
        mobilenet_embedder()
