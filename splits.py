"""The split tool: split files (train_files.txt, val_files.txt, test_files.txt) for any layout of data.py.

    python data.py --make-splits ROOT [--data kitti|cityscapes|nyu|folder] [--by-similarity | --random] [flags]

(data.py hands its command line to `main` here; `python data.py --make-splits ROOT --help` lists the flags.)

Contents, top to bottom:
  1. KITTI by drive: the raw-data mapping of the scene-flow devkit, the raw drives holding labelled images
     (kept out of train and val, whole), and `make_splits`: every tenth drive test, the next val, the rest train;
  2. the leakage-free split by image similarity (the minimal-transfer paper's Sect. 2.2): image embedders
     (torchvision's ImageNet MobileNet V2, or the encoder of a checkpoint of this project), embeddings,
     the components of the similarity graph, whole clusters moved to val, their histogram;
  3. writing split files, the random split to compare with, and the command line.
"""
import argparse
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from tqdm import tqdm

import data
import models


# ----------------------------------------------------------------------------------------------
# 1. KITTI by drive
# ----------------------------------------------------------------------------------------------

def read_raw_mapping(path):
    """KITTI's raw-data mapping of the scene-flow devkit (devkit_scene_flow.zip: devkit/mapping/train_mapping.txt).
    Line i (0-based) gives the raw frame of training image i as "<date> <drive folder> <frame>", e.g.
    "2011_09_26 2011_09_26_drive_0009_sync 0000000384" for 000010_10.png, or is empty when that image's
    drive is not in public raw KITTI. data_scene_flow and data_semantics share these 200 ids (the same images).
    Returns {id: ('<date>/<drive folder>', frame)}."""
    frames = {}
    for i, line in enumerate(Path(path).read_text().splitlines()):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or not fields[1].startswith(fields[0] + '_drive_') or not fields[2].isdigit():
            raise ValueError(f'{path}, line {i + 1}: expected "<date> <drive folder> <frame>" (e.g. "2011_09_26 '
                             f'2011_09_26_drive_0009_sync 0000000384") or an empty line, got {line.strip()!r}.')
        frames[i] = f'{fields[0]}/{fields[1]}', int(fields[2])
    return frames


def labelled_drives(root, mapping=None):
    """{'<date>/<drive folder>': [ids]}: the raw drives holding the frame of a data_semantics or
    data_scene_flow training image under `root`, by the raw-data mapping (default <root>/data.RAW_MAPPING;
    `mapping` overrides), whether that drive is under `root` or not. Images whose mapping line is empty (or
    missing) have no raw drive."""
    root = Path(root)
    present = {}  # id -> the folders holding an image with it
    for sub in ('data_semantics', 'data_scene_flow'):
        for p in (root / sub / 'training/image_2').glob('*_10.png'):
            if p.name[:-len('_10.png')].isdigit():
                present.setdefault(int(p.name[:-len('_10.png')]), []).append(sub)
    if not present and mapping is None:
        return {}
    path = Path(mapping) if mapping is not None else root / data.RAW_MAPPING
    if not path.is_file():
        if mapping is not None:
            raise FileNotFoundError(f'no mapping file {path} (--mapping): give the train_mapping.txt of KITTI\'s '
                                    f'devkit_scene_flow.zip (devkit/mapping/train_mapping.txt).')
        holders = ' and '.join(sorted({sub for subs in present.values() for sub in subs}))
        raise ValueError(f'{root} holds {holders} training images but no {path}, which names the raw drive of '
                         f'each image so that make_splits can keep those drives out of train and val: extract '
                         f'KITTI\'s devkit_scene_flow.zip into {root / "data_scene_flow"}/ (it holds '
                         f'devkit/mapping/train_mapping.txt) or pass --mapping FILE.')
    frames = read_raw_mapping(path)
    drives = {}
    for i in sorted(present):
        if i in frames:
            drives.setdefault(frames[i][0], []).append(i)
    return drives


def make_splits(root, seed=0, depth_only=False, mapping=None, out=None):
    """Write {train,val,test}_files.txt into `out` (default <root>/splits) for a KITTI raw tree: every tenth
    drive is held out for testing (frames with ground-truth depth only), the next for validation, the rest train.
    Frames need both neighbours, since training uses t-1 and t+1. With `depth_only` every split keeps
    only frames with ground-truth depth (for pre-training with --supervision gt).

    A drive holding the frame of a data_semantics or data_scene_flow training image (labelled_drives,
    by the devkit's mapping; `mapping` overrides its path) is kept out of train and val, whole (its
    neighbouring frames are near copies): segmentation or flow on those images after pre-training on
    their drive would leak. It may still be drawn as the test drive (testing depth on it does not leak).
    Returns the frame count of each split and 'kept_out': {drive folder: ids of its images} of the
    drives kept out."""
    drives = sorted(p for p in Path(root).glob('*/*_sync') if (p / data.camera_folder('l') / 'data').is_dir())
    if not drives:
        raise FileNotFoundError(f'no KITTI raw drives (<date>/<date>_drive_XXXX_sync/image_02/data) under {root}.')
    labelled = labelled_drives(root, mapping)
    order = data.seeded_permutation(len(drives), seed)
    splits, kept_out = {'train': [], 'val': [], 'test': []}, {}
    for rank, d in enumerate(order):
        folder = drives[d].relative_to(root).as_posix()
        split = 'test' if rank % 10 == 0 else 'val' if rank % 10 == 1 else 'train'
        if split != 'test' and folder in labelled:
            kept_out[folder] = labelled[folder]
            continue
        frames = sorted(data.frame_numbers(drives[d] / data.camera_folder('l') / 'data'))
        for f in frames[1:-1]:
            if not (split == 'test' or depth_only) or data.depth_path(root, folder, f).exists():
                splits[split].append(f'{folder} {f} l')
    empty = [split for split, lines in splits.items() if not lines]
    if empty:  # before writing anything: existing split files stay as they were
        why = (f'; {len(kept_out)} of them kept out of train and val, as they hold frames of data_semantics or '
               f'data_scene_flow training images' if kept_out else '')
        raise ValueError(f'{root}: the {" and ".join(empty)} split would be empty ({len(drives)} drive(s) found; every '
                         f'tenth drive is test, the next val, the rest train{why}): add drives, or write the split files '
                         f'yourself into {Path(root) / "splits"} ("<date>/<drive> <frame> l" per line).')
    out = Path(out or Path(root) / 'splits')
    out.mkdir(parents=True, exist_ok=True)
    for split, lines in splits.items():
        (out / f'{split}_files.txt').write_text('\n'.join(lines) + '\n')
    return dict({split: len(lines) for split, lines in splits.items()}, kept_out=kept_out)


# ----------------------------------------------------------------------------------------------
# 2. The leakage-free split by image similarity
# ----------------------------------------------------------------------------------------------

MOBILENET_WEIGHTS = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1


class Embedder(nn.Module):
    """Images in [0,1] [B,3,H,W] (image_embeddings resizes them to EMBEDDING_SIZE) -> normalised by mean/std -> `features` -> its
    (last) feature map, global-average-pooled: [B, D]. Frozen and in eval mode (batch norm's running
    statistics, not the batch's)."""

    def __init__(self, features, normalization):
        super().__init__()
        self.features = features
        models.register_normalization(self, normalization)  # the networks' own mean/std buffers
        self.eval().requires_grad_(False)

    def forward(self, images):
        x = (images - self.mean) / self.std
        maps = self.features(x)
        return (maps[-1] if isinstance(maps, (list, tuple)) else maps).mean((2, 3))  # a ResnetEncoder's: 1/32


def mobilenet_embedder():
    """The paper's embedder: torchvision's ImageNet MobileNet V2, its 1280-channel last feature map pooled.

    The weights come from the local torch.hub cache only, as models.load_imagenet_weights reads ResNet's:
    never downloaded, and a missing or unreadable file stops with one sentence on where to put it.
    """
    net = torchvision.models.mobilenet_v2()
    net.load_state_dict(models.cached_weights(MOBILENET_WEIGHTS, 'MobileNet V2'))
    return Embedder(net.features, 'imagenet')


def checkpoint_embedder(path):
    """An embedder from a checkpoint of this project (pretrain.py, finetune.py): its encoder's last feature
    map (1/32 scale; 512 channels for resnet18, 2048 for resnet50, 768 for convnext_tiny, 256 for mit_b0), pooled, after the normalisation the
    network was trained with. DeepLab's encoder is dilated as in training, so its features are the ones the
    network saw. What is not such a checkpoint stops with one sentence (read_checkpoint's, or ours)."""
    checkpoint = models.read_checkpoint(path)
    normalization = checkpoint.get('normalization')
    if normalization not in models.NORMALIZATION:
        raise ValueError(f'{path} records no input normalisation ({normalization!r}, not one of '
                         f'{", ".join(models.NORMALIZATION)}): pass a checkpoint written by pretrain.py or '
                         f'finetune.py.')
    holder = nn.Module()  # load_parts reads the keys under 'encoder.' of the network's state dict
    try:
        holder.encoder = models.build_encoder(checkpoint['arch'])
    except ValueError as error:
        raise ValueError(f'{path}: {error}') from None
    if checkpoint.get('decoder') == 'deeplab':
        holder.encoder.dilate()
    models.load_parts(holder, checkpoint['model'], ('encoder.',), source=str(path))
    return Embedder(holder.encoder, normalization)


EMBEDDING_SIZE = (224, 224)  # MobileNet's ImageNet input size; every image is resized to it (aspect ignored)


def image_embeddings(paths, embed, batch_size=32):
    """L2-normalised embeddings float32 [N, D] of the images at `paths` (read by data.read_image), in batches
    of `batch_size`, each image resized to EMBEDDING_SIZE first so that images of any size batch together.
    On unit vectors a dot product is the cosine similarity, which similar_components compares."""
    paths, chunks = list(paths), []
    device = next(embed.parameters()).device if isinstance(embed, nn.Module) else torch.device('cpu')
    with torch.no_grad(), tqdm(total=len(paths), unit='image', desc='embedding', dynamic_ncols=True) as bar:
        for start in range(0, len(paths), batch_size):
            batch = torch.stack([data.resize(data.unit_range(data.read_image(p))[None], EMBEDDING_SIZE)[0]
                                 for p in paths[start:start + batch_size]])
            chunks.append(F.normalize(embed(batch.to(device)).float(), dim=1).cpu())
            bar.update(len(batch))
    return torch.cat(chunks) if chunks else torch.zeros(0, 0)


def similar_components(embeddings, threshold=0.9, block=2048):
    """Connected components of the graph linking images i, j whose cosine similarity is > `threshold`
    (strictly): LongTensor [N] of component ids 0..C-1, numbered in order of first appearance.

    Embeddings are L2-normalised here (a copy), so any [N, D] will do. Rows are taken `block` at a time and
    compared with themselves and every later row (a block x (N - start) matrix product: pairs with earlier
    rows were seen with those rows' block), and each block's links are merged into a union-find forest.
    Memory, besides the normalised copy (4 N D bytes), is at most about 6 block N bytes (float32
    similarities, then boolean masks and int32 labels), however many pairs are linked: for N = 24,000,
    D = 1280, block = 2048, 123 MB + 295 MB (measured: about 410 MB above the embeddings). Never N x N.
    """
    unit = F.normalize(embeddings.float(), dim=1)
    n = len(unit)
    parent = torch.arange(n)  # union-find forest; a parent is never larger than its child
    for start in range(0, n, block):
        stop = min(start + block, n)
        linked = unit[start:stop] @ unit[start:].T > threshold  # [rows, later columns]
        if linked.any():
            parent = _merge_links(parent, torch.arange(start, stop), start, linked)
    return torch.unique(_roots(parent), return_inverse=True)[1]  # a root is its component's first member


def _roots(parent):
    """Each node's root in a forest whose parents are never larger than their children (pointer jumping)."""
    while True:
        grand = parent[parent]
        if torch.equal(grand, parent):
            return parent
        parent = grand


def _merge_links(parent, rows, start, linked):
    """Union of every row with every column (start + position) it is linked to: bool [rows, columns].

    Vectorised union-find: in each round every row hooks onto the smallest root among its linked columns of
    other components, and every such column onto the smallest root among its rows; the larger root always
    points to the smaller, so no cycle forms however the writes collide. Rounds go on until no link joins
    two components; each merges at least two, so it ends, and stars (one image like many) take one round.
    """
    n = len(parent)
    while True:
        roots = _roots(parent)
        row_roots, column_roots = roots[rows].int()[:, None], roots[start:].int()[None]
        pending = linked & (column_roots != row_roots)
        if not pending.any():
            return roots
        row_target = torch.where(pending, column_roots, n).amin(1)  # n: nothing pending
        column_target = torch.where(pending, row_roots, n).amin(0)
        a = torch.cat([row_roots[:, 0], column_roots[0]]).long()
        b = torch.cat([row_target, column_target]).long()
        a, b = a[b < n], b[b < n]
        parent = roots.clone()
        parent[torch.maximum(a, b)] = torch.minimum(a, b)


def split_by_clusters(components, val_fraction=0.2):
    """(train_indices, val_indices), sorted lists, from component ids [N] (similar_components'): whole clusters,
    largest first (ties: the one with the smallest member index first), go to validation whenever they
    still fit under round(val_fraction * N) images; every other image trains.

    The paper "sorted the clusters by size and selected clusters for the validation set until approximately
    20%". Largest first, because big clusters are the hardest to place: left to the end they would overshoot
    20% or never fit, and small ones (singletons above all) then fill the rest almost exactly. A cluster
    that no longer fits is skipped rather than ending the selection, so validation never exceeds its share
    and no cluster is ever split between the two sets. A cluster larger than the share always trains: with a
    degenerate embedder (every image like every other) validation stays empty, as cluster_histogram shows.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f'val_fraction must lie strictly between 0 and 1 (a share of the images); got {val_fraction}.')
    components = torch.as_tensor(components).long()
    room = round(val_fraction * len(components))
    val = []
    for members in _clusters_largest_first(components):
        if len(members) <= room:
            val += members
            room -= len(members)
    chosen = set(val)
    return [i for i in range(len(components)) if i not in chosen], sorted(val)


def _clusters_largest_first(components):
    """The member indices of each cluster, clusters by decreasing size, ties by their smallest member."""
    clusters = {}
    for index, label in enumerate(components.tolist()):
        clusters.setdefault(label, []).append(index)  # members in increasing order
    return sorted(clusters.values(), key=lambda members: (-len(members), members[0]))


def cluster_histogram(components):
    """[(cluster size, number of clusters of that size)], by increasing size."""
    sizes = torch.bincount(torch.unique(torch.as_tensor(components), return_inverse=True)[1])
    size, count = torch.unique(sizes, return_counts=True)
    return list(zip(size.tolist(), count.tolist()))


def histogram_lines(histogram, width=40):
    """Printable lines of cluster_histogram's (size, count) pairs, one per size, with a bar of '#' scaled to
    the largest count (at least one '#'), and how many images clusters of that size hold."""
    top = max((count for _, count in histogram), default=1)
    return [f'size {size:>5}: {count:>6} clusters, {size * count:>6} images  {"#" * max(1, round(width * count / top))}'
            for size, count in histogram]


# ----------------------------------------------------------------------------------------------
# 3. Split files and the command line
# ----------------------------------------------------------------------------------------------

def write_split_files(out, splits, overwrite=False, copy=()):
    """Write <out>/<split>_files.txt for each {split: lines}, and copy the files in `copy` beside them. Split
    files already in `out` stop with a sentence unless `overwrite`: earlier splits are never lost silently."""
    out = Path(out)
    existing = [p for p in out.glob('*_files.txt')] if out.is_dir() else []
    if existing and not overwrite:
        raise ValueError(f'{out} already holds split files ({", ".join(sorted(p.name for p in existing))}): pass '
                         f'--out NEW_FOLDER, or --overwrite to replace them.')
    sources = {Path(c).name: Path(c).read_text() for c in copy}  # read before anything is replaced
    out.mkdir(parents=True, exist_ok=True)
    for name, text in list(sources.items()) + [(f'{k}_files.txt', ''.join(f'{line}\n' for line in v))
                                               for k, v in splits.items()]:
        tmp = out / f'.{name}.tmp'
        tmp.write_text(text)
        os.replace(tmp, out / name)


def random_split(lines, val_fraction, seed):
    """(train, val) lines, val about val_fraction of them drawn at random: the leaky split that a similarity
    split is compared with (near-duplicates may straddle it)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f'--val-fraction must lie between 0 and 1; got {val_fraction}.')
    order = data.seeded_permutation(len(lines), seed)
    val = set(order[:round(val_fraction * len(lines))])
    return [l for i, l in enumerate(lines) if i not in val], [l for i, l in enumerate(lines) if i in val]


def similarity_split(pool, embed, threshold=0.9, val_fraction=0.2, block=2048):
    """The minimal-transfer paper's leakage-free split (Sect. 2.2) of a layout's pool of (line, image): image
    embeddings, pairs more similar than `threshold` linked, connected components as clusters, clusters moved
    whole to val (largest first) until about `val_fraction`. Returns (train lines, val lines, components)."""
    embeddings = image_embeddings([path for _, path in pool], embed)
    components = similar_components(embeddings, threshold, block)
    train, val = split_by_clusters(components, val_fraction)
    return [pool[i][0] for i in train], [pool[i][0] for i in val], components


def splits_command(args):
    """--make-splits: KITTI's by-drive split, or for any layout a random or a similarity split of its pool."""
    out = Path(args.out or Path(args.make_splits) / 'splits')
    why = data.unwritable(out)
    if why:  # before minutes of embedding
        raise ValueError(f'cannot write the split files into {out} ({why}): pass --out a folder you can write, '
                         f'then --split that folder to the scripts.')
    if not (args.by_similarity or args.random):
        if args.data != 'kitti':
            raise ValueError(f'--data {args.data}: pass --by-similarity (leakage-free) or --random; the by-drive '
                             f'split is KITTI\'s.')
        return kitti_splits_command(args, out)
    layout = data.LAYOUTS[args.data](args.make_splits)
    pool = layout.pool(args.split)
    if len(pool) < 2:
        raise ValueError(f'{args.make_splits} holds {len(pool)} image(s) to split in --data {args.data}\'s layout.')
    lines = [line for line, _ in pool]
    if args.random:
        train, val = random_split(lines, args.val_fraction, args.seed)
        print(f'Random split of {len(lines)} images (near-duplicates may fall on both sides).')
    else:
        embed, what = ((checkpoint_embedder(args.embed_checkpoint), f'the encoder of {args.embed_checkpoint}')
                       if args.embed_checkpoint else (mobilenet_embedder(), "torchvision's ImageNet MobileNet V2"))
        print(f'Embedding {len(lines)} images with {what}; linking pairs of cosine similarity above {args.threshold}.')
        train, val, components = similarity_split(pool, embed, args.threshold, args.val_fraction)
        print(f'{int(components.max()) + 1} clusters; sizes (size: count):')
        print('\n'.join(histogram_lines(cluster_histogram(components))))
        if not val:
            raise ValueError(f'no cluster fits in val ({args.val_fraction:.0%} of {len(lines)} images: at most '
                             f'{round(args.val_fraction * len(lines))}; the largest holds {int(torch.bincount(components).max())}): '
                             f'raise --threshold (the embeddings are more alike than {args.threshold}) or --val-fraction; '
                             f'nothing was written.')
    test = Path(args.split or Path(args.make_splits) / 'splits') / 'test_files.txt'
    write_split_files(out, {'train': train, 'val': val}, args.overwrite, [test] if args.data == 'kitti' and test.is_file() else [])
    print(f'Wrote {out}: train {len(train)}, val {len(val)} images ({100 * len(val) / len(lines):.1f} % val).')


def kitti_splits_command(args, out):
    counts = make_splits(args.make_splits, args.seed, args.depth_only, args.mapping, out)
    kept_out = counts.pop('kept_out')
    print(f'Wrote {out}: ' + ', '.join(f'{k} {v} frames' for k, v in counts.items()))
    if kept_out:
        print(f'Kept {len(kept_out)} drive(s) out of train and val, as they hold the raw frames of '
              f'data_semantics/data_scene_flow training images: '
              + ', '.join(f'{folder} (ids {" ".join(f"{i:06d}" for i in ids)})' for folder, ids in sorted(kept_out.items())))


def main(argv=None):
    parser = argparse.ArgumentParser(description='Write split files (train_files.txt, val_files.txt, ...) for a dataset.')
    parser.add_argument('--make-splits', metavar='ROOT', required=True, help='the dataset\'s folder')
    parser.add_argument('--data', choices=[k for k in data.LAYOUTS if k != 'toy'], default='kitti',
                        help='ROOT\'s layout (the toy world\'s is kitti unless rendered with another --layout)')
    parser.add_argument('--by-similarity', action='store_true',
                        help='leakage-free train/val split of the training images by image similarity '
                             '(minimal-transfer paper, Sect. 2.2)')
    parser.add_argument('--random', action='store_true', help='a random train/val split of the same images, to compare')
    parser.add_argument('--threshold', type=float, default=0.9, help='--by-similarity: cosine similarity that links two images')
    parser.add_argument('--val-fraction', type=float, default=0.2, help='share of the images moved to val')
    parser.add_argument('--embed-checkpoint', metavar='FILE',
                        help='--by-similarity: embed with the encoder of this project\'s checkpoint instead of '
                             'torchvision\'s ImageNet MobileNet V2')
    parser.add_argument('--split', metavar='DIR', help='kitti: the split folder whose train and val frames are '
                                                       'regrouped (default ROOT/splits; its test_files.txt is copied)')
    parser.add_argument('--out', metavar='DIR', help='where the split files go (default ROOT/splits)')
    parser.add_argument('--overwrite', action='store_true', help='replace split files already in --out')
    parser.add_argument('--depth-only', action='store_true',
                        help='kitti by drive: keep only frames with ground-truth depth in every split')
    parser.add_argument('--mapping', metavar='FILE',
                        help='kitti by drive: the scene-flow devkit\'s train_mapping.txt (default: '
                             f'ROOT/{data.RAW_MAPPING}); drives of data_semantics/data_scene_flow images stay out of train and val')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    if args.by_similarity and args.random:
        raise SystemExit('--by-similarity and --random are two kinds of split: pass one.')
    try:
        splits_command(args)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(str(error)) from None
