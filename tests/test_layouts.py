"""The layouts beside KITTI's (data.py sections 3 and 5): Cityscapes, NYU-Depth-V2 and a folder of your own.
Their encodings pinned on values written out by hand and on the real Cityscapes and NYU sample files
(copied into a temporary tree in the official layout), the depth protocols' crops, what each layout's
splits hold, and one sentence for each kind of bad input. End-to-end runs of every layout's toy world
are in test_end_to_end_layouts.py."""
import filecmp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import ImageReadMode, decode_image, decode_png, read_file, write_jpeg, write_png

import data
import evaluate
import models
import splits
import toyworld

REALDATA = Path(__file__).resolve().parents[2] / 'shared' / 'realdata'
needs_realdata = pytest.mark.skipif(not REALDATA.exists(), reason='the real dataset sample files are not here')
REAL_FRAME = 'frankfurt_000000_000294'
CAMERA = {'extrinsic': {'baseline': 0.209313, 'pitch': 0.038, 'roll': 0.0, 'x': 1.7, 'y': 0.1, 'yaw': -0.0195,
                        'z': 1.22},
          'intrinsic': {'fx': 2262.52, 'fy': 2265.3017905988554, 'u0': 1096.98, 'v0': 513.137}}


def _image(height, width, seed):
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------
# Cityscapes
# ----------------------------------------------------------------------------------------------

def _cityscapes_frame(root, split, city, sequence, frame, height=8, width=16, camera=CAMERA, kinds=('left',)):
    """Write the files `kinds` of one Cityscapes frame (random images, the CAMERA file, a disparity of 4 px)."""
    name = (split, city, f'{sequence:06d}', frame)
    for kind in kinds:
        path = data.cityscapes_path(root, kind, *name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == 'camera':
            path.write_text(json.dumps(camera))
        elif kind == 'disparity':
            toyworld.write_png16(np.full((height, width), 4 * 256 + 1), path)
        elif kind == 'labels':
            write_png(torch.full((1, height, width), 7, dtype=torch.uint8), str(path))
        else:
            write_png(_image(height, width, frame), str(path))
    return name


def test_disparity_is_p_minus_1_over_256_and_depth_is_baseline_times_fx_over_it(tmp_path):
    """Cityscapes' disparity PNG: p = 0 invalid, else d = (p - 1) / 256 pixels; depth = baseline * fx / d."""
    (tmp_path / 'camera.json').write_text(json.dumps(CAMERA))
    p = np.array([[0, 1, 2, 257], [513, 1025, 25601, 65535]])
    toyworld.write_png16(p, tmp_path / 'disparity.png')
    depth = data.read_disparity_depth(tmp_path / 'disparity.png', tmp_path / 'camera.json')
    d = (p - 1) / 256
    expected = np.where(p > 1, 0.209313 * 2262.52 / np.where(d > 0, d, 1), 0.0)
    assert depth.shape == (1, 2, 4) and depth.dtype == torch.float32
    np.testing.assert_allclose(depth[0].numpy(), expected, rtol=1e-6)
    assert depth[0, 0, 0] == 0 and depth[0, 0, 1] == 0  # no disparity, and a disparity of 0: no depth
    assert float(depth[0, 1, 1]) == pytest.approx(0.209313 * 2262.52 / 4)  # p = 1025 is 4 px


def test_camera_file_gives_the_intrinsics_and_baseline_and_a_bad_one_a_sentence(tmp_path):
    (tmp_path / 'camera.json').write_text(json.dumps(CAMERA))
    assert data.read_cityscapes_camera(tmp_path / 'camera.json') == ((2262.52, 2265.3017905988554, 1096.98, 513.137),
                                                                      0.209313)
    (tmp_path / 'bad.json').write_text(json.dumps({'intrinsic': {'fx': 1}}))
    with pytest.raises(ValueError, match='is not a Cityscapes camera file'):
        data.read_cityscapes_camera(tmp_path / 'bad.json')
    with pytest.raises(FileNotFoundError, match='no camera file .*camera_trainvaltest'):
        data.read_cityscapes_camera(tmp_path / 'missing.json')


def test_cityscapes_names_and_paths_follow_the_official_layout(tmp_path):
    name = data.cityscapes_name(tmp_path / f'leftImg8bit/val/frankfurt/{REAL_FRAME}_leftImg8bit.png')
    assert name == ('val', 'frankfurt', '000000', 294)
    assert data.cityscapes_path('R', 'labels', *name) == Path(f'R/gtFine/val/frankfurt/{REAL_FRAME}_gtFine_labelIds.png')
    assert data.cityscapes_path('R', 'disparity', *name) == Path(f'R/disparity/val/frankfurt/{REAL_FRAME}_disparity.png')
    assert data.cityscapes_path('R', 'camera', *name) == Path(f'R/camera/val/frankfurt/{REAL_FRAME}_camera.json')
    assert data.cityscapes_path('R', 'right', *name) == Path(f'R/rightImg8bit/val/frankfurt/{REAL_FRAME}_rightImg8bit.png')
    assert (data.cityscapes_path('R', 'sequence', 'val', 'frankfurt', '000000', 275)
            == Path('R/leftImg8bit_sequence/val/frankfurt/frankfurt_000000_000275_leftImg8bit.png'))
    with pytest.raises(ValueError, match='is not named as Cityscapes names its files'):
        data.cityscapes_name(tmp_path / 'leftImg8bit/val/frankfurt/photo.png')


@needs_realdata
def test_real_cityscapes_frame_reads_as_the_train_ids_of_its_label_ids(tmp_path):
    """The real frame (downscaled) copied into the official layout: the labelled pair of the val split,
    its label ids read as train ids that agree with Cityscapes' own labelTrainIds except where the two maps
    were downscaled apart (SOURCES.md: 77 boundary pixels)."""
    for folder, suffix in (('leftImg8bit', 'leftImg8bit'), ('gtFine', 'gtFine_labelIds')):
        target = tmp_path / folder / 'val/frankfurt' / f'{REAL_FRAME}_{suffix}.png'
        target.parent.mkdir(parents=True)
        shutil.copy(REALDATA / 'cityscapes' / folder / 'val/frankfurt' / target.name, target)
    _cityscapes_frame(tmp_path, 'train', 'aachen', 0, 19, 128, 256, kinds=('left', 'labels'))
    layout = data.Cityscapes(tmp_path)
    pool, held_out = layout.labelled()
    assert [p[0].name for p in held_out] == [f'{REAL_FRAME}_leftImg8bit.png'] and len(pool) == 1
    item = data.LabelledImages(held_out, 128, 256)[0]
    train_ids = decode_png(read_file(str(REALDATA / f'cityscapes/gtFine/val/frankfurt/{REAL_FRAME}_gtFine_labelTrainIds.png')))[0].long()
    assert item['image'].shape == (3, 128, 256) and item['label'].shape == (128, 256)
    assert (item['label'] != train_ids).sum() <= 77
    assert set(item['label'].unique().tolist()) == {0, 1, 2, 4, 5, 7, 8, 10, 11, 13, 255}  # road ... car, and ignored


def test_cityscapes_video_snippets_take_neighbours_from_the_sequence_and_k_from_the_camera_file(tmp_path):
    for frame in (18, 19, 20, 21):
        _cityscapes_frame(tmp_path, 'train', 'aachen', 3, frame, kinds=('sequence',))
    _cityscapes_frame(tmp_path, 'train', 'aachen', 3, 19, kinds=('left', 'right', 'camera', 'disparity'))
    layout = data.Cityscapes(tmp_path)
    snippets = layout.snippets('train', (0, -1, 1))
    assert [s.frames[0].name for s in snippets] == ['aachen_000003_000019_leftImg8bit.png',
                                                    'aachen_000003_000020_leftImg8bit.png']  # 18, 21: a neighbour missing
    assert snippets[1].frames[1].name == 'aachen_000003_000019_leftImg8bit.png'
    assert snippets[1].intrinsics == (2262.52, 2265.3017905988554, 1096.98, 513.137)  # the sequence's camera file
    assert all(s.keep_rows == 0.75 and s.stereo_frame is None for s in snippets)
    stereo = layout.snippets('train', (0, -1, 1), stereo=True)  # only the frame with a right image
    assert len(stereo) == 1 and stereo[0].stereo_frame.name.endswith('_000019_rightImg8bit.png')
    assert stereo[0].stereo_shift == -0.209313  # the right camera is +baseline along x: points move by -baseline


def test_cityscapes_depth_keeps_the_top_three_quarters_for_images_and_ground_truth(tmp_path):
    name = _cityscapes_frame(tmp_path, 'val', 'lindau', 0, 19, 8, 16, kinds=('left', 'camera', 'disparity'))
    items, skipped = data.Cityscapes(tmp_path).depth_test('cityscapes')
    frames = data.DepthTestFrames(items, 6, 16, 'cityscapes', skipped)
    item = frames[0]
    image = decode_image(read_file(str(data.cityscapes_path(tmp_path, 'left', *name)))).float() / 255
    assert item['depth'].shape == (1, 6, 16)  # 8 rows -> the top 6
    torch.testing.assert_close(item['frames'][0], image[:, :6])  # the same size: no resampling
    assert float(item['depth'][0, 0, 0]) == pytest.approx(0.209313 * 2262.52 / 4)


def test_cityscapes_crop_is_manydepths_rows_256_to_767_and_columns_192_to_1855():
    mask = evaluate.crop_mask((768, 2048), 'cityscapes')  # 1024 x 2048 with the bottom quarter out
    rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
    assert (int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])) == (256, 767, 192, 1855)
    assert int(mask.sum()) == 512 * 1664


# ----------------------------------------------------------------------------------------------
# NYU-Depth-V2
# ----------------------------------------------------------------------------------------------

@needs_realdata
def test_real_nyu_depth_is_millimetres(tmp_path):
    path = REALDATA / 'nyu/metric3d_nyu_demo/depth/sync_depth_00000.png'
    depth = data.read_nyu_depth(path)
    raw = decode_png(read_file(str(path)), mode=ImageReadMode.UNCHANGED).int()
    assert depth.shape == (1, 480, 640)
    torch.testing.assert_close(depth, raw.float() / 1000)
    assert float(depth.max()) == pytest.approx(6.625) and 0.7 < float((depth > 0).float().mean()) < 0.75


def _nyu_tree(root, folders=('sync/bookstore_0001', 'official_splits/test/bathroom')):
    """The three real NYU frames (BTS's form) copied into sync/ and official_splits/test/."""
    for folder in folders:
        (root / folder).mkdir(parents=True)
        for n in ('00000', '00050', '00100'):
            shutil.copy(REALDATA / f'nyu/metric3d_nyu_demo/rgb/rgb_{n}.jpg', root / folder / f'rgb_{n}.jpg')
            shutil.copy(REALDATA / f'nyu/metric3d_nyu_demo/depth/sync_depth_{n}.png', root / folder / f'sync_depth_{n}.png')


@needs_realdata
def test_real_nyu_frames_train_and_test_in_btss_layout(tmp_path):
    _nyu_tree(tmp_path)
    layout = data.Nyu(tmp_path)
    train = data.VideoSnippets(layout.snippets('train', with_depth=True), 96, 128)
    assert len(train) == 3 and set(train[0]) == {'frames', 'frames_aug', 'depth'}  # no intrinsics needed
    items, skipped = layout.depth_test('nyu')
    test = data.DepthTestFrames(items, 96, 128, 'nyu', skipped)
    assert len(test) == 3 and test[0]['frames'].shape == (1, 3, 96, 128) and test[0]['depth'].shape == (1, 480, 640)
    with pytest.raises(ValueError, match='--supervision gt'):
        layout.snippets('train', (0, -1, 1))


def test_nyu_crop_is_eigens_rows_45_to_470_and_columns_41_to_600():
    mask = evaluate.crop_mask((480, 640), 'nyu')
    rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
    assert (int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])) == (45, 470, 41, 600)


def test_nyu_is_scored_up_to_10_m():
    gt = torch.tensor([[0.5, 9.9, 10.0, 12.0]]).repeat(480, 160)
    pred = torch.full_like(gt, 1.0)
    metrics = evaluate.average_depth_metrics([(pred, gt)], max_depth=10.0, **evaluate.PROTOCOLS['nyu'])
    assert metrics['abs_rel'] == pytest.approx((0.5 / 0.5 + 8.9 / 9.9) / 2)  # 10 m and beyond are not scored


def test_nyu40_labels_0_is_ignored_and_1_to_40_are_train_ids_0_to_39(tmp_path):
    write_png(torch.tensor([[[0, 1, 2, 40]]], dtype=torch.uint8), str(tmp_path / 'labels40_00001.png'))
    assert data.read_nyu40_labels(tmp_path / 'labels40_00001.png').tolist() == [[255, 0, 1, 39]]
    write_png(torch.tensor([[[0, 41]]], dtype=torch.uint8), str(tmp_path / 'labels40_00002.png'))
    with pytest.raises(ValueError, match='holds class 41'):
        data.read_nyu40_labels(tmp_path / 'labels40_00002.png')


def test_nyu_labelled_images_pair_rgb_with_labels40(tmp_path):
    for split, n in (('train', 3), ('test', 2)):
        (tmp_path / 'labelled' / split).mkdir(parents=True)
        for i in range(n):
            write_png(_image(8, 8, i), str(tmp_path / f'labelled/{split}/rgb_{i + 1:05d}.png'))
            write_png(torch.full((1, 8, 8), i + 1, dtype=torch.uint8), str(tmp_path / f'labelled/{split}/labels40_{i + 1:05d}.png'))
    pool, held_out = data.Nyu(tmp_path).labelled()
    assert [p[1].name for p in pool] == ['labels40_00001.png', 'labels40_00002.png', 'labels40_00003.png']
    assert len(held_out) == 2 and held_out[1][2] is data.read_nyu40_labels
    train, test = data.few_shot_sets(data.Nyu(tmp_path), 3, seed=0)  # all of the pool may train: test is apart
    assert sorted(p[0].name for p in train) == [p[0].name for p in pool] and test == held_out


# ----------------------------------------------------------------------------------------------
# A folder of your own
# ----------------------------------------------------------------------------------------------

def _sequence(root, name, count, size=(8, 12)):
    (root / name).mkdir(parents=True)
    for i in range(count):
        write_png(_image(*size, i), str(root / name / f'{i:04d}.png'))


def test_folder_video_snippets_with_a_frame_stride_and_intrinsics_from_the_root(tmp_path):
    _sequence(tmp_path, 'walk', 6)
    (tmp_path / 'intrinsics.txt').write_text('100 101 5.5 3.5\n')
    layout = data.Folder(tmp_path)
    snippets = layout.snippets('train', (0, -2, 2))
    assert [[p.name for p in s.frames] for s in snippets] == [['0002.png', '0000.png', '0004.png'],
                                                              ['0003.png', '0001.png', '0005.png']]
    assert snippets[0].intrinsics == (100.0, 101.0, 5.5, 3.5)
    item = data.VideoSnippets(snippets, 16, 24)[0]
    assert item['K'][0, 0] == 200 and item['K'][1, 1] == 202 and float(item['K'][0, 2]) == pytest.approx(11.5)
    (tmp_path / 'walk' / 'intrinsics.txt').write_text('50 50 6 4\n')  # a sequence's own file wins
    assert layout.snippets('train', (0, -1, 1))[0].intrinsics == (50.0, 50.0, 6.0, 4.0)


def test_folder_video_says_what_is_missing(tmp_path):
    _sequence(tmp_path, 'still', 1)
    with pytest.raises(FileNotFoundError, match='no intrinsics for the video in .*still: write one line "fx fy cx cy"'):
        data.Folder(tmp_path).snippets('train', (0, -1, 1))
    (tmp_path / 'intrinsics.txt').write_text('100 100 5\n')
    with pytest.raises(ValueError, match='must hold one line "fx fy cx cy"'):
        data.Folder(tmp_path).snippets('train', (0, -1, 1))
    (tmp_path / 'intrinsics.txt').write_text('100 100 5 4\n')
    with pytest.raises(FileNotFoundError, match=r'too short for frames \(0, -1, 1\): still'):
        data.Folder(tmp_path).snippets('train', (0, -1, 1))
    _sequence(tmp_path, 'mixed', 3)
    write_png(_image(9, 12, 0), str(tmp_path / 'mixed' / '0001.png'))
    snippets = data.Folder(tmp_path).snippets('train', (0, -1, 1))
    with pytest.raises(ValueError, match='differ in size .*must share one size'):
        data.VideoSnippets(snippets, 8, 12)[0]


def test_folder_rgbd_pairs_read_npy_metres_and_png_times_the_depth_scale(tmp_path):
    (tmp_path / 'rooms').mkdir()
    write_png(_image(4, 6, 0), str(tmp_path / 'rooms/a_rgb.png'))
    np.save(tmp_path / 'rooms/a_depth.npy', np.full((4, 6), 2.5, np.float32))
    write_jpeg(_image(4, 6, 1), str(tmp_path / 'rooms/b_rgb.jpg'))
    toyworld.write_png16(np.full((4, 6), 1234), tmp_path / 'rooms/b_depth.png')
    snippets = data.Folder(tmp_path, depth_scale=0.001).snippets('train', with_depth=True)
    depths = [data.read_ground_truth(s.depth) for s in snippets]
    assert [s.frames[0].name for s in snippets] == ['a_rgb.png', 'b_rgb.jpg']
    assert float(depths[0].max()) == 2.5 and float(depths[1].max()) == pytest.approx(1.234)
    with pytest.raises(ValueError, match='pass --depth-scale'):
        data.read_ground_truth(data.Folder(tmp_path).snippets('train', with_depth=True)[1].depth)
    np.save(tmp_path / 'rooms/a_depth.npy', np.ones((5, 6), np.float32))
    with pytest.raises(ValueError, match='is 6x5 but the image is 6x4'):
        data.VideoSnippets(snippets, 4, 6)[0]


def test_folder_tests_on_its_val_split_and_without_one_on_nothing(tmp_path):
    for name in ('a', 'b', 'c'):
        write_png(_image(4, 6, 0), str(tmp_path / f'{name}_rgb.png'))
        np.save(tmp_path / f'{name}_depth.npy', np.ones((4, 6), np.float32))
    layout = data.Folder(tmp_path)
    assert layout.depth_test('pairs') == (None, 0)
    splits.write_split_files(tmp_path / 'splits', {'train': ['a_rgb.png', 'b_rgb.png'], 'val': ['c_rgb.png']})
    assert [s.frames[0].name for s in layout.snippets('train', with_depth=True)] == ['a_rgb.png', 'b_rgb.png']
    items, _ = layout.depth_test('pairs')
    assert [s.frames[0].name for s in items] == ['c_rgb.png']
    with pytest.raises(ValueError, match='holds no semantic labels'):
        layout.labelled()


def test_split_files_are_never_overwritten_without_asking(tmp_path):
    splits.write_split_files(tmp_path, {'train': ['a'], 'val': ['b']})
    with pytest.raises(ValueError, match='already holds split files .*--overwrite'):
        splits.write_split_files(tmp_path, {'train': ['c'], 'val': ['d']})
    assert (tmp_path / 'train_files.txt').read_text() == 'a\n'
    splits.write_split_files(tmp_path, {'train': ['c'], 'val': ['d']}, overwrite=True)
    assert (tmp_path / 'train_files.txt').read_text() == 'c\n'


def test_a_split_file_naming_a_missing_image_says_so(tmp_path):
    (tmp_path / 'splits').mkdir()
    (tmp_path / 'splits' / 'train_files.txt').write_text('gone_rgb.png\n')
    with pytest.raises(FileNotFoundError, match='1 of the 1 images listed in .*do not exist, e.g. .*gone_rgb.png'):
        data.Folder(tmp_path).snippets('train', with_depth=True)


# ----------------------------------------------------------------------------------------------
# Encodings pinned without the real sample files, the protocols' caps, top_rows
# ----------------------------------------------------------------------------------------------

def test_nyu_depth_png_is_millimetres_written_by_hand(tmp_path):
    toyworld.write_png16(np.array([[0, 1, 1000], [2500, 10000, 65535]]), tmp_path / 'sync_depth_00001.png')
    depth = data.read_nyu_depth(tmp_path / 'sync_depth_00001.png')
    assert depth.shape == (1, 2, 3) and depth.dtype == torch.float32
    torch.testing.assert_close(depth[0], torch.tensor([[0.0, 0.001, 1.0], [2.5, 10.0, 65.535]]))


def test_nyu_siblings_are_sync_depth_and_labels40_of_the_same_number(tmp_path):
    assert data.nyu_sibling(tmp_path / 'kitchen_0001/rgb_00042.jpg', 'depth') == tmp_path / 'kitchen_0001/sync_depth_00042.png'
    assert data.nyu_sibling(tmp_path / 'labelled/train/rgb_00007.png', 'labels') == tmp_path / 'labelled/train/labels40_00007.png'


@pytest.mark.parametrize('height, kept', [(8, 6), (10, 8), (9, 7), (2, 2), (4, 3), (11, 8)])
def test_top_rows_keeps_round_of_the_share_of_rows(height, kept):
    """round(0.75 H), not int: 10 rows keep 8 (7.5 rounds up to even), 9 keep 7 (6.75), 2 keep 2 (1.5)."""
    x = torch.arange(height * 3).view(1, height, 3)
    assert torch.equal(data.top_rows(x, 0.75), x[:, :kept])
    assert data.top_rows(x, 1.0) is x


@pytest.mark.parametrize('protocol', ['cityscapes', 'nyu', 'pairs', 'eigen'])
def test_capped_protocols_score_only_ground_truth_under_the_cap(protocol):
    """A pixel at or beyond the evaluation cap is not scored by a capped protocol; the benchmark scores every
    measured pixel. Predictions are 1.5 x the ground truth (abs_rel 0.5 wherever the prediction stays under
    the cap), so an unscored cap shows as an abs_rel other than 0.5."""
    cap = 10.0 if protocol == 'nyu' else 80.0
    gt = torch.tensor([[0.2 * cap, 0.4 * cap, cap, 1.5 * cap]]).repeat(768, 512)  # every kind inside every crop
    pred = 1.5 * gt
    metrics = evaluate.average_depth_metrics([(pred, gt)], max_depth=cap, **evaluate.PROTOCOLS[protocol])
    assert metrics['abs_rel'] == pytest.approx(0.5)
    uncapped = evaluate.average_depth_metrics([(pred, gt)], max_depth=cap, **evaluate.PROTOCOLS['benchmark'])
    assert uncapped['abs_rel'] == pytest.approx((0.5 + 0.5 + 0 + 1 / 3) / 4)  # predictions clamped to the cap


# ----------------------------------------------------------------------------------------------
# Split files from the command line: python data.py --make-splits ROOT --data ... (data.main)
# ----------------------------------------------------------------------------------------------

SPLIT_RENDER = dict(height=64, width=128, drives=2, test_frames=2, seed=0)


@pytest.fixture(scope='module')
def split_worlds(tmp_path_factory):
    """Tiny toy worlds in the folder and NYU layouts, rendered once; each test works on a copy."""
    root = tmp_path_factory.mktemp('split_worlds')
    toyworld.render_toy_world(root / 'folder', layout='folder', frames=4, labelled=0, **SPLIT_RENDER)
    toyworld.render_toy_world(root / 'nyu', layout='nyu', frames=3, labelled=2, **SPLIT_RENDER)
    return root


def _save_fresh_checkpoint(path):
    """A freshly initialised depth network in the format pretrain.py exports (as test_similarity_split's)."""
    net = models.build_depth_net('resnet18').eval()
    torch.save(dict(model=net.state_dict(), task='depth', arch='resnet18', normalization='unit', decoder='unet',
                    height=64, width=128), path)
    return path


def _copy(source, target):
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target)


def _split_world(layout, split_worlds, toy_root, tmp_path):
    """A copy of a toy world with one picture copied under a second name (a near-duplicate made by hand), and
    what a similarity split of it must give: (root, val fraction, the two names of the copied picture (split
    file lines), the val lines, the cluster histogram).

    The embedder is a random network (a fresh build_depth_net): its pooled features make every toy image
    alike (cosine above 0.997), frames of one scene above 0.9993, images of different scenes below 0.9986
    (measured). At --threshold 0.999 its clusters are therefore the scenes (each with its copies): a split
    with something to separate, where the paper's 0.9 would link everything into one cluster."""
    root = tmp_path / 'world'
    if layout == 'kitti':
        shutil.copytree(toy_root, root)
        drive = '2011_09_26/2011_09_26_drive_0001_sync'
        copy = '2011_09_26/2011_09_26_drive_0003_sync'
        _copy(data.image_path(root, drive, 3), data.image_path(root, copy, 3))
        with open(root / 'splits/train_files.txt', 'a') as split:
            split.write(f'{copy} 3 l\n')
        # clusters: drive 1's six train frames with the copy (7), drive 2's val frame (1); room for round(1.6) = 2
        return root, 0.2, (f'{drive} 3 l', f'{copy} 3 l'), ['2011_09_26/2011_09_26_drive_0002_sync 1 l'], [(1, 1), (7, 1)]
    shutil.copytree(split_worlds / layout, root)
    if layout == 'folder':
        for suffix in ('_rgb.png', '_depth.npy'):
            _copy(root / f'rgbd/scene_000_000000{suffix}', root / f'rgbd/copy_000000{suffix}')
        # clusters: seq_000 (4 frames), seq_001 (4), the RGB-D pairs with the copy (3); room for round(3.3) = 3
        val = ['rgbd/copy_000000_rgb.png', 'rgbd/scene_000_000000_rgb.png', 'rgbd/scene_000_000001_rgb.png']
        return root, 0.3, ('rgbd/scene_000_000000_rgb.png', 'rgbd/copy_000000_rgb.png'), val, [(3, 1), (4, 2)]
    for name in ('rgb_00002.jpg', 'sync_depth_00002.png'):  # nyu: a frame of room 2 copied as a scene of its own
        _copy(root / 'sync/toyroom_0002' / name, root / 'sync/toyroom_0009' / name.replace('00002', '00000'))
    # clusters: room 1's three frames with its labelled image (4), room 2's with its labelled image and the
    # copy (5); room for round(0.45 * 9) = 4: room 1 goes to val, the labelled image with its video frames
    val = ['sync/toyroom_0001/rgb_00000.jpg', 'sync/toyroom_0001/rgb_00001.jpg', 'sync/toyroom_0001/rgb_00002.jpg',
           'labelled/train/rgb_00001.png']
    return root, 0.45, ('sync/toyroom_0002/rgb_00002.jpg', 'sync/toyroom_0009/rgb_00000.jpg'), val, [(4, 1), (5, 1)]


def _lines(folder, split):
    return (folder / f'{split}_files.txt').read_text().splitlines()


def _images_read_back(layout, root, out):
    """{split: sorted image paths} of what the layout reads from the split files in `out` (its split_dir)."""
    if layout == 'kitti':
        kitti = data.Kitti(root)
        return {split: sorted(s.frames[0] for s in kitti.snippets(split, (0,), split_dir=out)) for split in ('train', 'val')}
    if layout == 'folder':  # the video frames train (video_snippets), the RGB-D pairs are val (depth_test)
        folder = data.Folder(root)
        items, _ = folder.depth_test('pairs', out)
        return {'train': sorted(s.frames[0] for s in folder.snippets('train', (0,), split_dir=out)),
                'val': sorted(s.frames[0] for s in items)}
    nyu = data.Nyu(root)  # sync frames with their depth, labelled images with their labels
    labelled = dict(zip(('train', 'val'), nyu.labelled(out)))
    return {split: sorted([s.frames[0] for s in nyu.snippets(split, with_depth=True, split_dir=out)]
                          + [pair[0] for pair in labelled[split]]) for split in ('train', 'val')}


def _line_image(layout, root, line):
    if layout == 'kitti':
        folder, frame, side = line.split()
        return data.image_path(root, folder, int(frame), side)
    return root / line


@pytest.mark.parametrize('layout', ['folder', 'nyu', 'kitti'])
def test_similarity_split_from_the_command_line_keeps_copies_together_and_reads_back(
        layout, split_worlds, toy_root, tmp_path, capsys):
    root, fraction, (original, copy), expected_val, histogram = _split_world(layout, split_worlds, toy_root, tmp_path)
    pool = sorted(line for line, _ in data.LAYOUTS[layout](root).pool())
    assert original in pool and copy in pool and filecmp.cmp(_line_image(layout, root, original),
                                                             _line_image(layout, root, copy), shallow=False)
    checkpoint = _save_fresh_checkpoint(tmp_path / 'depth.pt')
    out = tmp_path / 'out'
    data.main(['--make-splits', str(root), '--data', layout, '--by-similarity', '--embed-checkpoint', str(checkpoint),
               '--threshold', '0.999', '--val-fraction', str(fraction), '--out', str(out)])
    printed = capsys.readouterr().out
    train, val = _lines(out, 'train'), _lines(out, 'val')
    assert sorted(train + val) == pool and not set(train) & set(val)  # every image of the pool, once
    assert sorted(val) == sorted(expected_val)
    assert (original in train) == (copy in train)  # the copies never straddle train and val
    # relative lines (KITTI's "<drive> <frame> l"), read back by the layout from the split folder
    assert not any(line.startswith('/') or str(tmp_path) in line for line in train + val)
    read = _images_read_back(layout, root, out)
    assert read == {'train': sorted(_line_image(layout, root, line) for line in train),
                    'val': sorted(_line_image(layout, root, line) for line in val)}
    # what it printed: the embedder, the clusters and their histogram, what was written
    assert (f'Embedding {len(pool)} images with the encoder of {checkpoint}; linking pairs of cosine similarity '
            f'above 0.999.') in printed
    clusters = sum(count for _, count in histogram)
    assert f'{clusters} clusters; sizes (size: count):\n' + '\n'.join(splits.histogram_lines(histogram)) + '\n' in printed
    assert all(f'size {size:>5}: {count:>6} clusters, {size * count:>6} images' in printed for size, count in histogram)
    assert (f'Wrote {out}: train {len(train)}, val {len(val)} images ({100 * len(val) / len(pool):.1f} % val).'
            in printed)


@pytest.mark.parametrize('layout', ['folder', 'nyu', 'kitti'])
def test_random_split_and_split_files_are_never_replaced_without_overwrite(layout, split_worlds, toy_root, tmp_path,
                                                                           capsys):
    root, _, _, _, _ = _split_world(layout, split_worlds, toy_root, tmp_path)
    pool = sorted(line for line, _ in data.LAYOUTS[layout](root).pool())
    out = tmp_path / 'out'
    data.main(['--make-splits', str(root), '--data', layout, '--random', '--val-fraction', '0.25', '--out', str(out)])
    assert f'Random split of {len(pool)} images (near-duplicates may fall on both sides).' in capsys.readouterr().out
    train, val = _lines(out, 'train'), _lines(out, 'val')
    assert sorted(train + val) == pool and not set(train) & set(val)
    assert len(val) == round(0.25 * len(pool)) > 0  # 11, 9 and 8 images: 3, 2 and 2 in val
    read = _images_read_back(layout, root, out) if layout != 'folder' else None  # a folder's val may hold no pair
    if read:
        assert read['val'] == sorted(_line_image(layout, root, line) for line in val)
    # the same seed gives the same split
    data.main(['--make-splits', str(root), '--data', layout, '--random', '--val-fraction', '0.25', '--out',
               str(tmp_path / 'again')])
    assert _lines(tmp_path / 'again', 'val') == val
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for flags in (['--random', '--seed', '1'], ['--random', '--val-fraction', '0.5']):
        with pytest.raises(SystemExit, match=r'already holds split files \(.*train_files.txt, val_files.txt\): pass '
                                             r'--out NEW_FOLDER, or --overwrite to replace them'):
            data.main(['--make-splits', str(root), '--data', layout, *flags, '--out', str(out)])
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched, nothing added
    data.main(['--make-splits', str(root), '--data', layout, '--random', '--val-fraction', '0.5', '--out', str(out),
               '--overwrite'])
    assert len(_lines(out, 'val')) == round(0.5 * len(pool)) and sorted(_lines(out, 'train') + _lines(out, 'val')) == pool


def test_kitti_splits_regroup_train_and_val_of_the_split_folder_and_copy_its_test_file(toy_root, tmp_path, capsys):
    root = tmp_path / 'world'
    shutil.copytree(toy_root, root)
    splits = {split: (root / 'splits' / f'{split}_files.txt').read_bytes() for split in ('train', 'val', 'test')}
    pool = sorted(_lines(root / 'splits', 'train') + _lines(root / 'splits', 'val'))
    assert len(pool) == 7 and not set(pool) & set(_lines(root / 'splits', 'test'))
    # ROOT/splits, the default --out, already holds split files: refused, and left as it was
    with pytest.raises(SystemExit, match='already holds split files'):
        data.main(['--make-splits', str(root), '--data', 'kitti', '--random'])
    assert {split: (root / 'splits' / f'{split}_files.txt').read_bytes() for split in splits} == splits
    data.main(['--make-splits', str(root), '--data', 'kitti', '--random', '--out', str(tmp_path / 'out')])
    out = tmp_path / 'out'
    assert sorted(_lines(out, 'train') + _lines(out, 'val')) == pool  # the test frames stay out of the pool
    assert (out / 'test_files.txt').read_bytes() == splits['test']  # copied unchanged
    # --split: another split folder's train and val are the pool, and its test file is the one copied
    other = tmp_path / 'other'
    other.mkdir()
    (other / 'train_files.txt').write_text(''.join(line + '\n' for line in pool[:3]))
    (other / 'val_files.txt').write_text(pool[3] + '\n')
    (other / 'test_files.txt').write_text(pool[6] + '\n')
    data.main(['--make-splits', str(root), '--data', 'kitti', '--random', '--split', str(other), '--out',
               str(tmp_path / 'out2')])
    assert sorted(_lines(tmp_path / 'out2', 'train') + _lines(tmp_path / 'out2', 'val')) == pool[:4]
    assert (tmp_path / 'out2' / 'test_files.txt').read_text() == pool[6] + '\n'
    # by drive (no --by-similarity, --random) is KITTI's own; other layouts must choose one
    with pytest.raises(SystemExit, match='pass --by-similarity \\(leakage-free\\) or --random'):
        data.main(['--make-splits', str(root), '--data', 'folder'])


def test_similarity_and_random_together_stop_with_a_sentence(toy_root, tmp_path):
    with pytest.raises(SystemExit) as stop:
        data.main(['--make-splits', str(toy_root), '--data', 'kitti', '--by-similarity', '--random',
                   '--out', str(tmp_path / 'out')])
    assert stop.value.code == '--by-similarity and --random are two kinds of split: pass one.'
    assert not (tmp_path / 'out').exists()


def test_similarity_split_without_mobilenet_weights_stops_with_one_sentence_naming_the_file(split_worlds, tmp_path,
                                                                                           monkeypatch):
    """The default embedder (torchvision's ImageNet MobileNet V2) is never downloaded: with no cached weights in
    TORCH_HOME the command stops with one sentence naming the file, no traceback, no split written."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    with pytest.raises(SystemExit) as stop:
        data.main(['--make-splits', str(split_worlds / 'folder'), '--data', 'folder', '--by-similarity',
                   '--out', str(tmp_path / 'out')])
    assert 'mobilenet_v2-b0353104.pth' in stop.value.code and stop.value.__suppress_context__
    env = dict(os.environ, TORCH_HOME=str(tmp_path / 'torch'))
    result = subprocess.run([sys.executable, str(Path(data.__file__)), '--make-splits', str(split_worlds / 'folder'),
                             '--data', 'folder', '--by-similarity', '--out', str(tmp_path / 'out')],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 1
    message = result.stderr.strip()
    assert 'mobilenet_v2-b0353104.pth' in message and 'Traceback' not in message and len(message.splitlines()) == 1
    assert not (tmp_path / 'out').exists() and not (split_worlds / 'folder' / 'splits').exists()


# ----------------------------------------------------------------------------------------------
# --frame-stride on KITTI's layout, --depth-scale for folders only
# ----------------------------------------------------------------------------------------------

def test_kitti_snippets_at_a_frame_stride_take_frames_t_minus_and_plus_the_stride(toy_root, tmp_path):
    drive = '2011_09_26/2011_09_26_drive_0001_sync'  # frames 0..7 on disk
    (tmp_path / 'train_files.txt').write_text(''.join(f'{drive} {t} l\n' for t in (2, 5)))
    snippets = data.Kitti(toy_root).snippets('train', (0, -2, 2), split_dir=tmp_path)
    assert [[p.name for p in s.frames] for s in snippets] == [
        ['0000000002.png', '0000000000.png', '0000000004.png'], ['0000000005.png', '0000000003.png', '0000000007.png']]
    assert all(p.parent == toy_root / drive / 'image_02/data' for s in snippets for p in s.frames)
    # the toy world's own split lists frames 1..6, whose neighbours exist at stride 1 but not at stride 2
    assert len(data.Kitti(toy_root).snippets('train', (0, -1, 1))) == 6
    with pytest.raises(FileNotFoundError, match=r'does not exist, but item 1 of split "train" \(".*drive_0001_sync 1 l"\) '
                                                r'needs it: extract the whole drive, or list only frames whose neighbours'):
        data.Kitti(toy_root).snippets('train', (0, -2, 2))


def test_frame_stride_reaches_the_training_snippets_and_zero_is_refused(toy_root, tmp_path):
    import pretrain
    assert pretrain.parse_args(['--frame-stride', '3']).frame_stride == 3
    assert pretrain.parse_args([]).frame_stride == 1
    for stride in ('0', '-1'):
        with pytest.raises(SystemExit, match=f'--frame-stride must be 1 or more .*; got {stride}\\.'):
            pretrain.parse_args(['--frame-stride', stride])
    # video at stride 2 needs frame t - 2 of the first listed frame (1): the run stops with the loader's sentence
    with pytest.raises(SystemExit, match=r'-000000001.png does not exist, but item 1 of split "train"'):
        pretrain.main(['--data-root', str(toy_root), '--runs', str(tmp_path), '--supervision', 'mono', '--frame-stride',
                       '2', '--iters', '1', '--height', '64', '--width', '192', '--batch-size', '2', '--workers', '0',
                       '--out', str(tmp_path / 'depth.pt')])


@pytest.mark.parametrize('data_flag', ['kitti', 'toy', 'nyu', 'cityscapes'])
def test_depth_scale_is_refused_outside_a_folder(data_flag):
    import pretrain
    with pytest.raises(SystemExit, match="--depth-scale applies to --data folder's PNG depth maps and must be above 0"):
        pretrain.parse_args(['--data', data_flag, '--depth-scale', '0.001'])
    with pytest.raises(SystemExit, match='--depth-scale applies to --data folder'):
        pretrain.parse_args(['--data', 'folder', '--depth-scale', '0'])
    assert pretrain.parse_args(['--data', 'folder', '--depth-scale', '0.001']).depth_scale == 0.001


def test_cityscapes_training_frames_are_the_top_three_quarters_resized_with_their_intrinsics(tmp_path):
    """A 16 x 16 frame keeps its top 12 rows (ground truth too), then is resized to the network's 24 x 32: the
    intrinsics scale by 24 / 12 vertically and 32 / 16 horizontally (pixel centres as in scale_intrinsics)."""
    name = _cityscapes_frame(tmp_path, 'train', 'aachen', 0, 19, 16, 16, kinds=('left', 'camera', 'disparity'))
    snippets = data.Cityscapes(tmp_path).snippets('train', with_depth=True)
    item = data.VideoSnippets(snippets, 24, 32)[0]
    image = decode_image(read_file(str(data.cityscapes_path(tmp_path, 'left', *name)))).float() / 255
    torch.testing.assert_close(item['frames'][0], data.resize(image[None, :, :12], (24, 32))[0])
    assert item['depth'].shape == (1, 12, 16)
    fx, fy, u0, v0 = CAMERA['intrinsic']['fx'], CAMERA['intrinsic']['fy'], CAMERA['intrinsic']['u0'], CAMERA['intrinsic']['v0']
    expected = torch.tensor([[2 * fx, 0, (u0 + 0.5) * 2 - 0.5], [0, 2 * fy, (v0 + 0.5) * 2 - 0.5], [0, 0, 1]])
    torch.testing.assert_close(item['K'][:3, :3], expected.float())


def test_a_similarity_split_with_nothing_in_val_stops_and_writes_nothing(split_worlds, toy_root, tmp_path, capsys):
    """At the paper's 0.9 the random network links every toy image into one cluster (see _split_world), which
    cannot fit in val: the command shows the histogram and stops with a sentence, writing no split files."""
    root, _, _, _, _ = _split_world('folder', split_worlds, toy_root, tmp_path)
    count = len(data.Folder(root).pool())
    with pytest.raises(SystemExit, match=rf'no cluster fits in val \(20% of {count} images: at most {round(0.2 * count)}; '
                                         rf'the largest holds {count}\): raise --threshold'):
        data.main(['--make-splits', str(root), '--data', 'folder', '--by-similarity', '--embed-checkpoint',
                   str(_save_fresh_checkpoint(tmp_path / 'depth.pt')), '--out', str(tmp_path / 'out')])
    assert f'size {count:>5}:      1 clusters' in capsys.readouterr().out and not (tmp_path / 'out').exists()
