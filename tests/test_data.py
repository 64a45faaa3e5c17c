"""The toy world and the KITTI loaders: layout, determinism, and geometry that agrees with the renderer."""
import filecmp
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import data
import losses
import pretrain
from conftest import TINY


def test_files_are_where_kitti_keeps_them(toy_root):
    drive = toy_root / '2011_09_26' / '2011_09_26_drive_0001_sync'
    assert (toy_root / '2011_09_26' / 'calib_cam_to_cam.txt').is_file()
    for sub in ('image_02/data', 'image_03/data', 'proj_depth/groundtruth/image_02'):
        assert sorted(p.name for p in (drive / sub).iterdir()) == [f'{f:010d}.png' for f in range(TINY['frames'])]
    images = sorted((toy_root / 'data_semantics/training/image_2').iterdir())
    assert [p.name for p in images] == [f'{i:06d}_10.png' for i in range(TINY['labelled'])]
    assert all((toy_root / 'data_semantics/training/semantic' / p.name).is_file() for p in images)
    for split in ('train', 'val', 'test'):
        for folder, frame, side in data.read_split(toy_root, split):
            assert side == 'l' and data.image_path(toy_root, folder, frame - 1).is_file()
            assert data.image_path(toy_root, folder, frame + 1).is_file()


def test_same_seed_gives_identical_files(tmp_path):
    small = dict(TINY, frames=3, test_frames=3, labelled=2)
    data.render_toy_world(tmp_path / 'a', **small)
    data.render_toy_world(tmp_path / 'b', **small, threads=2)  # whatever the threads
    files = sorted(p.relative_to(tmp_path / 'a') for p in (tmp_path / 'a').rglob('*') if p.is_file())
    assert len(files) > 20
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / 'a', tmp_path / 'b', files, shallow=False)
    assert not mismatch and not errors
    data.render_toy_world(tmp_path / 'c', **dict(small, seed=1))
    assert (tmp_path / 'a' / files[-1]).read_bytes() != (tmp_path / 'c' / files[-1]).read_bytes()


def test_render_uses_its_threads_and_restores_torchs(tmp_path, monkeypatch):
    seen, render_view = [], data.render_view
    monkeypatch.setattr(data, 'render_view', lambda *args, **kw: seen.append(torch.get_num_threads())
                        or render_view(*args, **kw))
    previous = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        data.render_toy_world(tmp_path / 'a', height=48, width=160, drives=1, frames=3, test_frames=3, labelled=1)
        assert set(seen) == {1} and torch.get_num_threads() == 3
        monkeypatch.setattr(data, '_render_semantics', lambda *args: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            data.render_toy_world(tmp_path / 'b', height=48, width=160, drives=1, frames=3, test_frames=3, labelled=1)
        assert torch.get_num_threads() == 3 and not (tmp_path / 'b').exists()
    finally:
        torch.set_num_threads(previous)


def test_progress_bar_counts_every_view_by_stage(tmp_path, capsys):
    data.render_toy_world(tmp_path / 'w', height=48, width=160, drives=2, frames=3, test_frames=4, labelled=2)
    err = capsys.readouterr().err
    total = 2 * (2 * 3 + 4) + 2  # left and right per drive frame, one per labelled image
    assert f'{total}/{total}' in err
    assert all(stage in err for stage in ('drive 1/3', 'drive 3/3', 'labelled images'))


def test_screen_windows_lose_no_hits(monkeypatch):
    """Casting rays only inside each object's screen window (the box cut at the near plane) gives
    exactly what casting every ray at every object gives, also for objects beside the camera, except
    beyond data.FAR, where objects are left out."""
    K = data.toy_intrinsics(48, 160)
    views = [(data.Drive(seed, 60), frame, offset) for seed, frame, offset in
             [(0, 0, 0.0), (1, 25, data.STEREO_BASELINE), (2, 59, 0.0)]]
    fast = [data.render_view(drive, frame, K, 48, 160, offset) for drive, frame, offset in views]
    everywhere = lambda objects, *args: torch.tensor([[0, 48, 0, 160]]).repeat(len(objects['label']), 1)
    monkeypatch.setattr(data, '_screen_windows', everywhere)
    for (drive, frame, offset), view in zip(views, fast):
        slow = data.render_view(drive, frame, K, 48, 160, offset)
        near = slow[1] <= data.FAR
        assert near.float().mean() > 0.95
        assert all(torch.equal(a[..., near], b[..., near]) for a, b in zip(view, slow))
        assert (view[2] == data.LABEL_IDS['building']).any() and (view[1] > 0).all(0).any()


def test_depth_png_round_trip(tmp_path):
    depth = torch.rand(7, 9) * 100
    depth[0, 0] = 0
    data.write_depth_png(depth, tmp_path / 'd.png')
    back = data.read_depth(tmp_path / 'd.png')[0]
    assert back[0, 0] == 0 and (back - depth).abs().max() <= 0.5 / 256


def test_calibration_gives_the_rig():
    calib = data.read_calib_text(data._calib_text(data.toy_intrinsics(64, 192), 64, 192))
    K, size = data.camera_intrinsics(calib, '02')
    assert size == (64, 192) and torch.allclose(K, data.toy_intrinsics(64, 192))
    assert abs(data.stereo_baseline(calib) - data.STEREO_BASELINE) < 1e-6


def test_labels_map_to_train_ids(toy_root):
    files = data.semantic_files(toy_root)
    labels = torch.stack([data.read_labels(label) for _, label in files])
    present = set(labels.unique().tolist())
    assert present <= set(range(19)) | {255}
    assert {0, 2, 10, 13} <= present  # road, building, sky and car appear in a dozen views


def test_few_shot_split_is_seeded_and_disjoint():
    train, held_out = data.few_shot_split(20, 5, seed=3)
    assert len(train) == 5 and not set(train) & set(held_out) and len(held_out) == 15
    assert train == data.few_shot_split(20, 5, seed=3)[0] != data.few_shot_split(20, 5, seed=4)[0]


def _ground_truth_warp(root, size, depth_scale=1.0, crop=None, shift_intrinsics=True):
    """Warp frame t+1 into frame t with ground-truth depth and camera motion; return the mean
    photometric error on pixels seen in both and static, the identity error there, and their share.
    `depth_scale` corrupts the warp, to show the test can tell. With `crop` the loader's random crop is
    used (its offset read off the principal point); `shift_intrinsics=False` undoes the shift."""
    snippets = data.VideoSnippets(root, 'train', *size, frame_ids=(0, 1), with_depth=True, crop=crop)
    folder, frame, _ = snippets.entries[2]
    torch.manual_seed(0)
    item = snippets[2]
    K = item['K'][None]
    full_K = data.VideoSnippets(root, 'train', *size, frame_ids=(0,))[2]['K']
    left, top = (int(round(float(full_K[i, 2] - K[0, i, 2]))) for i in (0, 1))
    shape = tuple(item['frames'].shape[-2:])
    cut = lambda x: x[..., top:top + shape[0], left:left + shape[1]]
    if crop:
        assert left > 0 and top > 0, 'the seeded crop should be off the corner'
    if not shift_intrinsics:
        K = full_K[None]
    poses = data.read_poses(root / folder / 'poses.txt')
    T = (torch.linalg.inv(poses[frame + 1]) @ poses[frame])[None]  # frame t -> frame t+1 camera
    depth_t = cut(F.interpolate(data.read_depth(data.depth_path(root, folder, frame))[None], size=size, mode='nearest'))
    depth_s = cut(F.interpolate(data.read_depth(data.depth_path(root, folder, frame + 1))[None], size=size, mode='nearest'))
    if crop:
        assert torch.equal(item['depth'][None], depth_t)  # the loader crops depth with the images
    inv_K = torch.linalg.inv(K)
    target, source = item['frames'][0:1], item['frames'][1:2]
    warped = losses.warp(source, depth_t * depth_scale, K, inv_K, T)
    true_K = K if shift_intrinsics else item['K'][None]  # visibility from the true geometry
    points = losses.backproject(depth_t, torch.linalg.inv(true_K))
    grid = losses.project(points, true_K, T, *shape)
    expected_z = (T @ points)[:, 2].view(1, 1, *shape)
    seen_z = F.grid_sample(depth_s, grid, mode='nearest', align_corners=False)
    inside = (grid.abs() < 1).all(-1)[:, None]
    # seen in both and static: the source sees, at the projection, the depth the motion predicts
    valid = inside & (depth_t > 0) & ((seen_z - expected_z).abs() < 0.03 * expected_z)
    error = (warped - target).abs().mean(1, keepdim=True)[valid].mean()
    identity = (source - target).abs().mean(1, keepdim=True)[valid].mean()
    return error.item(), identity.item(), valid.float().sum().item() / (depth_t > 0).sum().item()


def test_ground_truth_warp_reproduces_the_frame(toy_root):
    for size in [(64, 192), (32, 96)]:  # the render's resolution, and resized (scaled intrinsics)
        error, identity, share = _ground_truth_warp(toy_root, size)
        assert share > 0.6, f'only {share:.0%} of pixels agree with the camera motion at {size}'
        assert error < 0.025 and error < 0.5 * identity, (size, error, identity)
    right = _ground_truth_warp(toy_root, (64, 192))[0]
    assert _ground_truth_warp(toy_root, (64, 192), depth_scale=1.5)[0] > 1.5 * right


def test_ground_truth_warp_holds_on_random_crops(toy_root):
    error, identity, share = _ground_truth_warp(toy_root, (64, 192), crop=(48, 96))
    assert share > 0.5 and error < 0.025 and error < 0.5 * identity, (error, identity, share)
    unshifted = _ground_truth_warp(toy_root, (64, 192), crop=(48, 96), shift_intrinsics=False)[0]
    assert unshifted > 1.5 * error  # the principal point must move with the crop


def test_flow_png_round_trip(tmp_path):
    flow = (torch.rand(2, 5, 7) - 0.5) * 200
    valid = torch.rand(5, 7) > 0.3
    data.write_flow_png(flow, valid, tmp_path / 'f.png')
    back, back_valid = data.read_flow(tmp_path / 'f.png')
    assert torch.equal(back_valid, valid) and (back - flow).abs().max() <= 0.5 / 64


def test_scene_flow_pairs_are_where_kitti_keeps_them(toy_root):
    files = data.scene_flow_files(toy_root)
    assert len(files) >= 2 and all(p.is_file() for triple in files for p in triple)
    assert [p.name for p in files[0]] == ['000000_10.png', '000000_11.png', '000000_10.png']
    assert files[0][2].parent.name == 'flow_noc'


def test_ground_truth_flow_warps_the_next_frame_onto_the_first(toy_root):
    pairs = data.FlowPairs(toy_root, 64, 192)  # the render's resolution: flow in these pixels
    for item in pairs:
        first, second = item['frames'][0:1], item['frames'][1:2]
        flow, valid = item['flow'][None], item['valid']
        assert 0.3 < valid.float().mean() < 1  # sky, moving cars and pixels leaving the view are unknown
        assert flow[0][:, valid].norm(dim=0).max() > 2  # the camera moves: the flow is not trivial
        error = (losses.flow_warp(second, flow) - first).abs().mean(1)[0][valid].mean()
        identity = (second - first).abs().mean(1)[0][valid].mean()
        assert error < 0.03 and error < 0.5 * identity, (error, identity)


def test_depth_follows_flips_and_crops(toy_root):
    plain = data.VideoSnippets(toy_root, 'train', 64, 192, frame_ids=(0,), with_depth=True)[0]
    augmented = data.VideoSnippets(toy_root, 'train', 64, 192, frame_ids=(0,), with_depth=True, augment=True)
    flipped_once = False
    for _ in range(10):
        item = augmented[0]
        flipped = bool(item['K'][0, 2] > 96)
        assert torch.equal(item['depth'], plain['depth'].flip(-1) if flipped else plain['depth'])
        flipped_once |= flipped
    assert flipped_once


def _stereo_warp_error(root, size, focal_scale=1.0):
    """Mean photometric error of the other camera's image warped into this one with ground-truth
    depth and the loader's stereo transform (baseline from the calibration)."""
    snippets = data.VideoSnippets(root, 'train', *size, frame_ids=(0,), with_depth=True, stereo=True)
    item = snippets[2]
    depth = F.interpolate(item['depth'][None], size=size, mode='nearest')
    K = item['K'][None].clone()
    K[:, 0, 0] *= focal_scale
    warped = losses.warp(item['stereo'][None], depth, K, torch.linalg.inv(K), item['stereo_T'][None])
    valid = depth > 0
    error = (warped - item['frames'][:1]).abs().mean(1, keepdim=True)[valid].mean()
    identity = (item['stereo'][None] - item['frames'][:1]).abs().mean(1, keepdim=True)[valid].mean()
    return error.item(), identity.item()


def test_ground_truth_stereo_warp_reproduces_the_left_image(toy_root):
    error, identity = _stereo_warp_error(toy_root, (64, 192))
    assert error < 0.02 and error < 0.3 * identity
    assert _stereo_warp_error(toy_root, (64, 192), focal_scale=1.25)[0] > 1.4 * error


def test_flipped_stereo_reverses_the_baseline(toy_root):
    snippets = data.VideoSnippets(toy_root, 'train', 64, 192, stereo=True, augment=True)
    signs = set()
    for _ in range(12):  # the toy world's principal point lies left of the centre; flips mirror it
        item = snippets[0]
        flipped = bool(item['K'][0, 2] > 96)
        assert (item['stereo_T'][0, 3] > 0) == flipped
        signs.add(flipped)
    assert signs == {True, False}


# ----------------------------------------------------------------------------------------------
# Bad files: one sentence naming the file and what is wrong (issue 10, item 6)
# ----------------------------------------------------------------------------------------------

REALDATA = Path(__file__).resolve().parents[2] / 'shared' / 'realdata'


def _rgb(path, height=10, width=12):
    """A small 8-bit RGB PNG at `path` (folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data._write_rgb(torch.randint(0, 256, (3, height, width), dtype=torch.uint8), path)
    return path


def _semantics(root, image_size=(10, 12), label_size=(10, 12), label16=False):
    """A one-image data_semantics layout under root: image_2/000000_10.png and its semantic/ label."""
    folder = root / 'data_semantics/training'
    image = _rgb(folder / 'image_2/000000_10.png', *image_size)
    label = folder / 'semantic/000000_10.png'
    label.parent.mkdir(parents=True)
    if label16:  # as KITTI's instance/ PNGs: label id * 256 + instance
        data.write_png16(np.full(label_size, 26 * 256 + 2, np.int32), label)
    else:
        data._write_rgb(torch.full((1, *label_size), data.LABEL_IDS['road'], dtype=torch.uint8), label)
    return image, label


def test_label_map_of_another_size_stops_with_both_sizes_and_files(tmp_path):
    image, label = _semantics(tmp_path, image_size=(370, 1224), label_size=(375, 1242))
    for build in (lambda: data.LabelledImages(tmp_path, [0], 64, 192),
                  lambda: pretrain.open_dataset(data.LabelledImages, tmp_path, [0], 64, 192)):
        with pytest.raises((ValueError, SystemExit)) as caught:
            build()
        message = str(caught.value)
        assert all(s in message for s in (str(image), str(label), '1224x370', '1242x375'))
        assert '\n' not in message


def test_rgb_png_read_as_depth_stops_with_the_format(tmp_path):
    depth = _rgb(tmp_path / '2011_09_26/2011_09_26_drive_0001_sync/proj_depth/groundtruth/image_02/0000000001.png')
    with pytest.raises(ValueError, match='16-bit single-channel') as caught:
        data.read_depth(depth)
    assert str(depth) in str(caught.value) and '8-bit 3-channel' in str(caught.value)
    (tmp_path / 'splits').mkdir()
    (tmp_path / 'splits/train_files.txt').write_text('2011_09_26/2011_09_26_drive_0001_sync 1 l\n')
    with pytest.raises(ValueError, match='16-bit single-channel') as caught:  # when the set is built
        data.VideoSnippets(tmp_path, 'train', 64, 192, with_depth=True)
    assert str(depth) in str(caught.value)


def test_16_bit_label_map_points_to_the_semantic_folder(tmp_path):
    image, label = _semantics(tmp_path, label16=True)
    for read in (lambda: data.read_labels(label), lambda: data.LabelledImages(tmp_path, [0], 8, 8)):
        with pytest.raises(ValueError, match='16-bit single-channel') as caught:
            read()
        assert str(label) in str(caught.value) and 'instance/' in str(caught.value) and 'semantic/' in str(caught.value)


def test_missing_files_are_told_apart_from_corrupt_ones(tmp_path):
    missing = tmp_path / 'none.png'
    for read in (data.read_depth, data.read_labels, data.read_flow, data.read_image):
        with pytest.raises(FileNotFoundError, match='no such file') as caught:
            read(missing)
        assert str(missing) in str(caught.value)
    junk = tmp_path / 'junk.png'
    junk.write_bytes(b'not a png at all, just text')
    truncated = tmp_path / 'truncated.png'
    data.write_depth_png(torch.rand(40, 50) * 80, tmp_path / 'whole.png')
    truncated.write_bytes((tmp_path / 'whole.png').read_bytes()[:60])
    for read, path, words in [(data.read_depth, junk, 'not a PNG'), (data.read_depth, truncated, 'cannot be decoded'),
                              (data.read_image, junk, 'not a PNG or JPEG image')]:
        with pytest.raises(ValueError, match=words) as caught:
            read(path)
        assert str(path) in str(caught.value)


def test_bad_split_line_gives_file_line_and_format(tmp_path):
    (tmp_path / 'splits').mkdir()
    split = tmp_path / 'splits/train_files.txt'
    for text in ['2011_09_26/2011_09_26_drive_0001_sync 1 l\n2011_09_26/2011_09_26_drive_0001_sync 2\n',
                 '2011_09_26/2011_09_26_drive_0001_sync 1 l\n2011_09_26/2011_09_26_drive_0001_sync 2 left\n',
                 '2011_09_26/2011_09_26_drive_0001_sync 1 l\n2011_09_26/2011_09_26_drive_0001_sync two l\n']:
        split.write_text(text)
        with pytest.raises(ValueError) as caught:
            data.read_split(tmp_path, 'train')
        message = str(caught.value)
        assert str(split) in message and 'line 2' in message and '<date>/<drive> <frame> l|r' in message


def test_flow_map_of_the_wrong_format_or_size_stops(tmp_path):
    folder = tmp_path / 'data_scene_flow/training'
    first = _rgb(folder / 'image_2/000000_10.png')
    _rgb(folder / 'image_2/000000_11.png')
    flow = _rgb(folder / 'flow_noc/000000_10.png')  # an image where the flow map should be
    with pytest.raises(ValueError, match='16-bit 3-channel') as caught:
        data.FlowPairs(tmp_path, 8, 8)
    assert str(flow) in str(caught.value)
    data.write_flow_png(torch.zeros(2, 11, 12), torch.ones(11, 12, dtype=torch.bool), flow)
    with pytest.raises(ValueError, match='12x11') as caught:
        data.FlowPairs(tmp_path, 8, 8)
    assert str(flow) in str(caught.value) and str(first) in str(caught.value) and '12x10' in str(caught.value)


@pytest.mark.skipif(not REALDATA.exists(), reason='the real KITTI sample files are not here')
def test_real_kitti_files_through_every_reader(tmp_path):
    kitti = REALDATA / 'kitti'
    # raw drive 0002: the real folders linked into a root that also holds a split file
    (tmp_path / '2011_09_26').symlink_to(kitti / '2011_09_26', target_is_directory=True)
    (tmp_path / 'splits').mkdir()
    (tmp_path / 'splits/train_files.txt').write_text(
        ''.join(f'2011_09_26/2011_09_26_drive_0002_sync {f} l\n' for f in range(1, 9)))
    snippets = data.VideoSnippets(tmp_path, 'train', 64, 192, stereo=True)
    item = snippets[0]
    assert item['frames'].shape == (3, 3, 64, 192) and 0.4 < item['stereo_T'][0, 3].abs() < 0.6  # 0.54 m rig
    assert data.read_image(data.image_path(tmp_path, '2011_09_26/2011_09_26_drive_0002_sync', 5)).shape == (3, 375, 1242)
    # annotated depth (drive unknown): uint16 metres * 256, about a fifth of the pixels measured
    for depth_file in sorted((REALDATA / 'kitti_depth_metric3d_demo/depth').glob('*.png')):
        depth = data.read_depth(depth_file)
        assert depth.shape == (1, 375, 1242) and 0.1 < (depth > 0).float().mean() < 0.3 and depth.max() < 100
    rgb = REALDATA / 'kitti_depth_metric3d_demo/rgb/0000000005.png'
    with pytest.raises(ValueError, match=re.escape(str(rgb)) + '.*16-bit single-channel'):
        data.read_depth(rgb)
    # data_semantics: the true pairs load, the mismatched image beside its label stops
    labelled = data.LabelledImages(kitti, [0, 1], 64, 192)
    labels = torch.stack([data.read_labels(label) for _, label in labelled.files])
    assert labels.shape == (2, 375, 1242) and {0, 2, 13} <= set(labels.unique().tolist()) <= set(range(19)) | {255}
    assert labelled[0]['label'].shape == (64, 192)
    label = kitti / 'data_semantics/training/semantic/000000_10.png'
    mismatched = kitti / '_misc/caiochaves_image_2_000000_10_MISMATCHED.png'
    (tmp_path / 'data_semantics/training/image_2').mkdir(parents=True)
    (tmp_path / 'data_semantics/training/image_2/000000_10.png').symlink_to(mismatched)
    (tmp_path / 'data_semantics/training/semantic').symlink_to(label.parent, target_is_directory=True)
    with pytest.raises(ValueError, match='1242x375 but its image .* is 1224x370') as caught:
        data.LabelledImages(tmp_path, [0], 64, 192)
    assert 'semantic/000000_10.png' in str(caught.value) and 'image_2/000000_10.png' in str(caught.value)
    # Cityscapes ids: labelIds read, the 16-bit instanceIds stop with the way out
    gt = REALDATA / 'cityscapes/gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_'
    assert data.read_labels(f'{gt}labelIds.png').shape == (128, 256)
    with pytest.raises(ValueError, match='semantic/') as caught:
        data.read_labels(f'{gt}instanceIds.png')
    assert f'{gt}instanceIds.png' in str(caught.value)
    # scene flow pair 000000: 16-bit RGB flow, about a sixth of the pixels valid
    pair = data.FlowPairs(kitti, 64, 192)[0]
    assert pair['frames'].shape == (2, 3, 64, 192) and pair['flow'].shape == (2, 375, 1242)
    assert 0.1 < pair['valid'].float().mean() < 0.25 and pair['flow'][:, pair['valid']].abs().max() < 300
    image = kitti / 'data_scene_flow/training/image_2/000000_10.png'
    with pytest.raises(ValueError, match=re.escape(str(image)) + '.*16-bit 3-channel'):
        data.read_flow(image)


def test_make_splits_refuses_to_write_an_empty_split(toy_root, tmp_path):
    root = tmp_path / 'world'
    shutil.copytree(toy_root, root)  # two drives: one for test, one for val, none left to train on
    before = (root / 'splits' / 'train_files.txt').read_text()
    with pytest.raises(ValueError, match=r'the train split would be empty \(2 drive\(s\) found'):
        data.make_splits(root)
    assert (root / 'splits' / 'train_files.txt').read_text() == before
