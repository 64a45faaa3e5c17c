"""The toy world and the KITTI loaders: layout, determinism, and geometry that agrees with the renderer."""
import filecmp
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.io import write_jpeg

import data
import toyworld
import losses
import training
from conftest import TINY, project, warp


def test_files_are_where_kitti_keeps_them(toy_root):
    drive = toy_root / '2011_09_26' / '2011_09_26_drive_0001_sync'
    assert (toy_root / '2011_09_26' / 'calib_cam_to_cam.txt').is_file()
    for sub in ('image_02/data', 'image_03/data', 'proj_depth/groundtruth/image_02'):
        assert sorted(p.name for p in (drive / sub).iterdir()) == [f'{f:010d}.png' for f in range(TINY['frames'])]
    images = sorted((toy_root / 'data_semantics/training/image_2').iterdir())
    first = len(data.scene_flow_files(toy_root))  # as in KITTI, one id space: labelled ids follow the flow pairs'
    assert [p.name for p in images] == [f'{first + i:06d}_10.png' for i in range(TINY['labelled'])]
    assert all((toy_root / 'data_semantics/training/semantic' / p.name).is_file() for p in images)
    for split in ('train', 'val', 'test'):
        for folder, frame, side in data.read_split(toy_root, split):
            assert side == 'l' and data.image_path(toy_root, folder, frame - 1).is_file()
            assert data.image_path(toy_root, folder, frame + 1).is_file()


def test_same_seed_gives_identical_files(tmp_path):
    small = dict(TINY, frames=3, test_frames=3, labelled=2)
    toyworld.render_toy_world(tmp_path / 'a', **small)
    toyworld.render_toy_world(tmp_path / 'b', **small, threads=2)  # whatever the threads
    files = sorted(p.relative_to(tmp_path / 'a') for p in (tmp_path / 'a').rglob('*') if p.is_file())
    assert len(files) > 20
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / 'a', tmp_path / 'b', files, shallow=False)
    assert not mismatch and not errors
    toyworld.render_toy_world(tmp_path / 'c', **dict(small, seed=1))
    assert (tmp_path / 'a' / files[-1]).read_bytes() != (tmp_path / 'c' / files[-1]).read_bytes()


def test_render_uses_its_threads_and_restores_torchs(tmp_path, monkeypatch):
    seen, render_view = [], toyworld.render_view
    monkeypatch.setattr(toyworld, 'render_view', lambda *args, **kw: seen.append(torch.get_num_threads())
                        or render_view(*args, **kw))
    previous = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        toyworld.render_toy_world(tmp_path / 'a', height=48, width=160, drives=1, frames=3, test_frames=3, labelled=1)
        assert set(seen) == {1} and torch.get_num_threads() == 3
        monkeypatch.setattr(toyworld, '_render_semantics', lambda *args: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            toyworld.render_toy_world(tmp_path / 'b', height=48, width=160, drives=1, frames=3, test_frames=3, labelled=1)
        assert torch.get_num_threads() == 3 and not (tmp_path / 'b').exists()
    finally:
        torch.set_num_threads(previous)


def test_progress_bar_counts_every_view_by_stage(tmp_path, capsys):
    toyworld.render_toy_world(tmp_path / 'w', height=48, width=160, drives=2, frames=3, test_frames=4, labelled=2)
    err = capsys.readouterr().err
    total = 2 * (2 * 3 + 4) + 2  # left and right per drive frame, one per labelled image
    assert f'{total}/{total}' in err
    assert all(stage in err for stage in ('drive 1/3', 'drive 3/3', 'labelled images'))


def test_screen_windows_lose_no_hits(monkeypatch):
    """Casting rays only inside each object's screen window (the box cut at the near plane) gives
    exactly what casting every ray at every object gives, also for objects beside the camera, except
    beyond toyworld.FAR, where objects are left out."""
    K = toyworld.toy_intrinsics(48, 160)
    views = [(toyworld.Drive(seed, 60), frame, offset) for seed, frame, offset in
             [(0, 0, 0.0), (1, 25, toyworld.STEREO_BASELINE), (2, 59, 0.0)]]
    fast = [toyworld.render_view(drive, frame, K, 48, 160, offset) for drive, frame, offset in views]
    everywhere = lambda objects, *args: torch.tensor([[0, 48, 0, 160]]).repeat(len(objects['label']), 1)
    monkeypatch.setattr(toyworld, '_screen_windows', everywhere)
    for (drive, frame, offset), view in zip(views, fast):
        slow = toyworld.render_view(drive, frame, K, 48, 160, offset)
        near = slow[1] <= toyworld.FAR
        assert near.float().mean() > 0.95
        assert all(torch.equal(a[..., near], b[..., near]) for a, b in zip(view, slow))
        assert (view[2] == toyworld.LABEL_IDS['building']).any() and (view[1] > 0).all(0).any()


def test_depth_png_round_trip(tmp_path):
    depth = torch.rand(7, 9) * 100
    depth[0, 0] = 0
    toyworld.write_depth_png(depth, tmp_path / 'd.png')
    back = data.read_depth(tmp_path / 'd.png')[0]
    assert back[0, 0] == 0 and (back - depth).abs().max() <= 0.5 / 256


def test_calibration_gives_the_rig():
    calib = data.read_calib_text(toyworld._calib_text(toyworld.toy_intrinsics(64, 192), 64, 192))
    K, size = data.camera_intrinsics(calib, '02')
    assert size == (64, 192) and torch.allclose(K, toyworld.toy_intrinsics(64, 192))
    assert abs(data.stereo_baseline(calib) - toyworld.STEREO_BASELINE) < 1e-6


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
    warped = warp(source, depth_t * depth_scale, K, inv_K, T)
    true_K = K if shift_intrinsics else item['K'][None]  # visibility from the true geometry
    points = losses.backproject(depth_t, torch.linalg.inv(true_K))
    grid = project(points, true_K, T, *shape)
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
    toyworld.write_flow_png(flow, valid, tmp_path / 'f.png')
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
    warped = warp(item['stereo'][None], depth, K, torch.linalg.inv(K), item['stereo_T'][None])
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
    toyworld._write_rgb(torch.randint(0, 256, (3, height, width), dtype=torch.uint8), path)
    return path


def _semantics(root, image_size=(10, 12), label_size=(10, 12), label16=False):
    """A one-image data_semantics layout under root: image_2/000000_10.png and its semantic/ label."""
    folder = root / 'data_semantics/training'
    image = _rgb(folder / 'image_2/000000_10.png', *image_size)
    label = folder / 'semantic/000000_10.png'
    label.parent.mkdir(parents=True)
    if label16:  # as KITTI's instance/ PNGs: label id * 256 + instance
        toyworld.write_png16(np.full(label_size, 26 * 256 + 2, np.int32), label)
    else:
        toyworld._write_rgb(torch.full((1, *label_size), toyworld.LABEL_IDS['road'], dtype=torch.uint8), label)
    return image, label


def test_label_map_of_another_size_stops_with_both_sizes_and_files(tmp_path):
    image, label = _semantics(tmp_path, image_size=(370, 1224), label_size=(375, 1242))
    for build in (lambda: data.LabelledImages(tmp_path, [0], 64, 192),
                  lambda: training.open_dataset(data.LabelledImages, tmp_path, [0], 64, 192)):
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
    for frame in range(3):  # frame 1 and its neighbours
        _rgb(tmp_path / f'2011_09_26/2011_09_26_drive_0001_sync/image_02/data/{frame:010d}.png')
    (tmp_path / 'splits').mkdir()
    (tmp_path / 'splits/train_files.txt').write_text('2011_09_26/2011_09_26_drive_0001_sync 1 l\n')
    with pytest.raises(ValueError, match='16-bit single-channel') as caught:  # when the set is built
        data.VideoSnippets(tmp_path, 'train', 64, 192, with_depth=True)
    assert str(depth) in str(caught.value)


def _monodepth2_eigen_split(root, folder):
    """The toy world's test lines written as Monodepth2 writes its splits: splits/eigen/test_files.txt,
    frame numbers zero-padded; returns (split folder, lines)."""
    lines = [line.split() for line in (root / 'splits/test_files.txt').read_text().split('\n') if line]
    (folder / 'eigen').mkdir(parents=True)
    (folder / 'eigen/test_files.txt').write_text(''.join(f'{d} {int(f):010d} {s}\n' for d, f, s in lines))
    return folder / 'eigen', lines


def test_depth_test_frames_read_monodepth2_splits_and_jpg_frames_and_skip_frames_without_ground_truth(toy_root, tmp_path):
    root = tmp_path / 'world'
    shutil.copytree(toy_root, root)
    split_dir, lines = _monodepth2_eigen_split(root, tmp_path / 'monodepth2_splits')
    (folder, frame, _), (folder2, frame2, _) = lines[0], lines[1]
    png = data.image_path(root, folder, int(frame))
    write_jpeg(data.read_image(png), str(png.with_suffix('.jpg')))  # Monodepth2 converts KITTI's PNGs to JPEG
    png.unlink()
    data.velodyne_path(root, folder2, int(frame2)).unlink()  # one scan missing
    for protocol, skipped in (('eigen', 1), ('benchmark', 0)):
        frames = data.DepthTestFrames(root, 'test', 64, 192, protocol, split_dir=split_dir)
        assert (len(frames), frames.skipped) == (len(lines) - skipped, skipped)
        first = frames[0]
        assert first['frames'].shape == (1, 3, 64, 192) and first['depth'].shape == (1, 64, 192)
        assert (first['depth'] > 0).any()
    for scan in root.glob('*/*/velodyne_points/data/*.bin'):
        scan.unlink()
    with pytest.raises(FileNotFoundError, match=f'none of the {len(lines)} frames of split "test" has velodyne scans'):
        data.DepthTestFrames(root, 'test', 64, 192, 'eigen', split_dir=split_dir)


def test_a_missing_neighbour_frame_stops_when_the_set_is_built(tmp_path):
    drive = tmp_path / '2011_09_26/2011_09_26_drive_0001_sync'
    for frame in (4, 5):  # frame 6, the next of frame 5, was never extracted
        _rgb(drive / f'image_02/data/{frame:010d}.png')
    (tmp_path / 'splits').mkdir()
    (tmp_path / 'splits/train_files.txt').write_text('2011_09_26/2011_09_26_drive_0001_sync 0000000005 l\n')
    data.VideoSnippets(tmp_path, 'train', 64, 192, frame_ids=(0, -1))  # frames 5 and 4: there
    with pytest.raises(FileNotFoundError, match='0000000006.png does not exist, but item 1 of split "train"'):
        data.VideoSnippets(tmp_path, 'train', 64, 192, frame_ids=(0, -1, 1))
    with pytest.raises(FileNotFoundError, match='image_03/data/0000000005.png does not exist'):
        data.VideoSnippets(tmp_path, 'train', 64, 192, frame_ids=(0,), stereo=True)  # the other camera's frame


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
    toyworld.write_depth_png(torch.rand(40, 50) * 80, tmp_path / 'whole.png')
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
    toyworld.write_flow_png(torch.zeros(2, 11, 12), torch.ones(11, 12, dtype=torch.bool), flow)
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


@pytest.mark.skipif(not REALDATA.exists(), reason='the real KITTI sample files are not here')
def test_real_eigen_test_frame_is_scored_at_native_size_and_frames_without_a_scan_are_skipped(tmp_path):
    import evaluate
    import models
    kitti = REALDATA / 'kitti'
    (tmp_path / 'eigen').mkdir()  # Monodepth2's form; only frame 5 of the real drive has its scan here
    (tmp_path / 'eigen/test_files.txt').write_text(''.join(
        f'2011_09_26/2011_09_26_drive_0002_sync {f:010d} l\n' for f in (4, 5, 6)))
    frames = data.DepthTestFrames(kitti, 'test', 64, 192, 'eigen', split_dir=tmp_path / 'eigen')
    assert (len(frames), frames.skipped) == (1, 2)
    item = frames[0]
    assert item['frames'].shape == (1, 3, 64, 192) and item['depth'].shape == (1, 375, 1242)
    net = models.build_depth_net().eval()
    models.start_at_depth(net, 10.0, 0.1, 100.0)
    metrics = evaluate.evaluate_depth(net, frames, torch.device('cpu'), median_scaling=True)
    assert (metrics['images'], metrics['skipped']) == (1, 2) and metrics['scale_std'] == 0.0  # one frame: one ratio
    with torch.no_grad():  # the same by hand: disparity upsampled to 375x1242, Garg crop, median-scaled
        disp = F.interpolate(net(item['frames'])[0], (375, 1242), mode='bilinear', align_corners=False)
    by_hand = evaluate.depth_metrics(models.disp_to_depth(disp, 0.1, 100.0)[0, 0], item['depth'][0],
                                     median_scaling=True, crop='garg')
    assert metrics['abs_rel'] == pytest.approx(by_hand['abs_rel'], rel=1e-9) and metrics['a1'] == by_hand['a1']


def test_make_splits_refuses_to_write_an_empty_split(toy_root, tmp_path):
    root = tmp_path / 'world'
    shutil.copytree(toy_root, root)  # two drives: one for test, one for val (and kept out), none left to train on
    before = (root / 'splits' / 'train_files.txt').read_text()
    with pytest.raises(ValueError, match=r'the train and val split would be empty \(2 drive\(s\) found.*1 of them '
                                         r'kept out of train and val'):
        data.make_splits(root)
    assert (root / 'splits' / 'train_files.txt').read_text() == before


# ----------------------------------------------------------------------------------------------
# make_splits keeps the drives of data_semantics / data_scene_flow images out of train and val
# ----------------------------------------------------------------------------------------------

def _raw_tree(root, drives=12, frames=4):
    """A fake KITTI raw tree of `drives` drives with empty image and depth files (make_splits reads names only)."""
    for d in range(1, drives + 1):
        for sub in ('image_02/data', 'proj_depth/groundtruth/image_02'):
            folder = root / f'2011_09_26/2011_09_26_drive_{d:04d}_sync' / sub
            folder.mkdir(parents=True)
            for f in range(frames):
                (folder / f'{f:010d}.png').touch()


def _split_drives(root):
    return {split: {folder for folder, _, _ in data.read_split(root, split)} for split in ('train', 'val', 'test')}


def _mapping_line(folder, frame):
    date, drive = folder.split('/')
    return f'{date} {drive} {frame:010d}'


def _labelled_tree(root):
    """A raw tree, its split drives without labelled images, and labelled images whose mapping (at the devkit's
    place) points id 2 (data_semantics) at a train drive, id 0 (data_scene_flow) at a val drive and id 4 at the
    test drive; id 1 has an empty line, id 3 a drive that was not downloaded, id 5 (no image) another train drive."""
    _raw_tree(root)
    data.make_splits(root)
    plain = _split_drives(root)
    train, val, test = sorted(plain['train']), sorted(plain['val']), sorted(plain['test'])
    for i, sub in ((0, 'data_scene_flow'), (1, 'data_semantics'), (2, 'data_semantics'), (3, 'data_semantics'),
                   (4, 'data_scene_flow')):
        _rgb(root / sub / f'training/image_2/{i:06d}_10.png')
    lines = [_mapping_line(val[0], 2), '', _mapping_line(train[0], 1), '2011_09_26 2011_09_26_drive_0093_sync 0000000010',
             _mapping_line(test[0], 1), _mapping_line(train[1], 1)]
    mapping = root / data.RAW_MAPPING
    mapping.parent.mkdir(parents=True)
    mapping.write_text('\n'.join(lines) + '\n')
    return plain, train, val, test


def test_make_splits_keeps_drives_of_labelled_images_out_of_train_and_val(tmp_path):
    plain, train, val, test = _labelled_tree(tmp_path)
    assert len(train) >= 2 and len(val) == 2  # 12 drives: 2 test, 2 val, 8 train
    counts = data.make_splits(tmp_path)
    splits = _split_drives(tmp_path)
    assert counts['kept_out'] == {train[0]: [2], val[0]: [0]}
    assert train[0] not in splits['train'] | splits['val'] and val[0] not in splits['train'] | splits['val']
    assert splits['train'] == plain['train'] - {train[0]} and splits['val'] == plain['val'] - {val[0]}
    assert splits['test'] == plain['test']  # the test drive may hold such a frame: testing depth there does not leak
    assert counts['train'] == 2 * (len(train) - 1)  # the whole drive goes, not just the mapped frame


def test_make_splits_takes_the_mapping_from_the_command_line(tmp_path, monkeypatch, capsys):
    plain, train, val, test = _labelled_tree(tmp_path)
    elsewhere = tmp_path / 'train_mapping.txt'
    (tmp_path / data.RAW_MAPPING).rename(elsewhere)
    monkeypatch.setattr('sys.argv', ['data.py', '--make-splits', str(tmp_path), '--mapping', str(elsewhere)])
    data.main()
    assert 'Kept 2 drive(s) out of train and val' in capsys.readouterr().out
    assert train[0] not in _split_drives(tmp_path)['train']


def test_make_splits_without_the_mapping_stops_and_writes_nothing(tmp_path, monkeypatch):
    _labelled_tree(tmp_path)
    (tmp_path / data.RAW_MAPPING).unlink()
    before = {p.name: p.read_text() for p in (tmp_path / 'splits').iterdir()}
    with pytest.raises(ValueError) as caught:
        data.make_splits(tmp_path)
    message = str(caught.value)
    assert all(s in message for s in ('data_scene_flow and data_semantics', str(tmp_path / data.RAW_MAPPING),
                                      'devkit_scene_flow.zip', str(tmp_path / 'data_scene_flow'), '--mapping FILE'))
    assert '\n' not in message
    assert {p.name: p.read_text() for p in (tmp_path / 'splits').iterdir()} == before
    monkeypatch.setattr('sys.argv', ['data.py', '--make-splits', str(tmp_path)])
    with pytest.raises(SystemExit, match='devkit_scene_flow.zip'):
        data.main()
    with pytest.raises(FileNotFoundError, match='no mapping file'):
        data.make_splits(tmp_path, mapping=tmp_path / 'missing.txt')


def test_make_splits_names_a_malformed_mapping_line(tmp_path):
    _labelled_tree(tmp_path)
    mapping = tmp_path / data.RAW_MAPPING
    lines = mapping.read_text().split('\n')
    lines[2] = lines[2].split(' ', 1)[1]  # the date left out
    mapping.write_text('\n'.join(lines))
    before = (tmp_path / 'splits/train_files.txt').read_text()
    with pytest.raises(ValueError, match=re.escape(f'{mapping}, line 3: expected "<date> <drive folder> <frame>"')):
        data.make_splits(tmp_path)
    assert (tmp_path / 'splits/train_files.txt').read_text() == before


def test_toy_world_mapping_names_the_frames_of_its_flow_pairs(toy_root):
    mapping = data.read_raw_mapping(toy_root / data.RAW_MAPPING)
    flow = data.scene_flow_files(toy_root)
    labelled = data.semantic_files(toy_root)
    ids = lambda files: [int(files_[0].name[:6]) for files_ in files]
    assert ids(flow) == list(range(len(flow))) and ids(labelled) == list(range(len(flow), len(flow) + len(labelled)))
    assert sorted(mapping) == list(range(len(flow) + len(labelled)))
    for i, (first, _, _) in enumerate(flow):  # each pair's first image is the named raw frame, pixel for pixel
        folder, frame = mapping[i]
        assert torch.equal(data.read_image(first), data.read_image(data.image_path(toy_root, folder, frame)))
    held_out = f'2011_09_26/2011_09_26_drive_{TINY["drives"] + 1:04d}_sync'
    assert {mapping[i][0] for i in range(len(flow))} == {held_out}
    drives = data.labelled_drives(toy_root)
    assert drives.pop(held_out) == list(range(len(flow)))
    assert drives and not any((toy_root / folder).exists() for folder in drives)  # labelled images: separate drives


def _velodyne_calib(folder, T=(0.1, -0.2, -0.5), drop=None):
    """A hand-written calibration: camera 02 (40 x 20, f = 100, principal point (20, 10)) at camera 0,
    R_rect_00 = identity, and a velodyne with KITTI's axes (x forward, y left, z up) at T in camera 0's
    frame, i.e. camera (X, Y, Z) = (-y + 0.1, -z - 0.2, x - 0.5). `drop` leaves one line out."""
    folder.mkdir(exist_ok=True)
    cam = ['S_rect_02: 40 20', 'R_rect_00: 1 0 0 0 1 0 0 0 1', 'P_rect_02: 100 0 20 0 0 100 10 0 0 0 1 0']
    velo = ['calib_time: 15-Mar-2012 11:37:16', 'R: 0 -1 0 0 0 -1 1 0 0', 'T: ' + ' '.join(map(str, T))]
    (folder / 'calib_cam_to_cam.txt').write_text(''.join(line + '\n' for line in cam if line.split(':')[0] != drop))
    (folder / 'calib_velo_to_cam.txt').write_text(''.join(line + '\n' for line in velo if line.split(':')[0] != drop))
    return folder


def _write_scan(path, points):
    """A KITTI .bin: float32 x, y, z, reflectance per point (a reflectance other than 1, which the reader replaces)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.array([p + (0.3,) for p in points], dtype=np.float32).tofile(path)
    return path


def test_velodyne_points_land_where_the_devkit_puts_them(tmp_path):
    calib = _velodyne_calib(tmp_path / 'calib')
    # velodyne (x, y, z) = (Z + 0.5, 0.1 - X, -0.2 - Y) for camera (X, Y, Z); u = 100 X / Z + 20, v = 100 Y / Z + 10
    scan = _write_scan(data.velodyne_path(tmp_path, '2011_09_26/drive', 3), [
        (10.5, -0.97, 0.24),     # camera (1.07, -0.44, 10): u = 30.7, v = 5.6 -> column 30, row 5
        (5.5, 0.59, -0.455),     # camera (-0.49, 0.255, 5): u = 10.2, v = 15.1 -> column 9, row 14 ...
        (8.5, 0.884, -0.608),    # ... and camera (-0.784, 0.408, 8) on the same pixel, farther: hidden
        (-5.0, 0.65, -0.2),      # behind the scanner (camera (-0.55, 0, -5.5) would land on u = 30, v = 10): dropped
        (7.0, -0.55, -0.2),      # camera (0.65, 0, 6.5): u = 30, v = 10 -> column 29, row 9
        (4.5, -1.1, -0.2),       # camera (1.2, 0, 4): u = 50, beyond the right edge: dropped
        (3.5, 0.691, -0.266),    # camera (-0.591, 0.066, 3): u = 0.3 -> column round(0.3) - 1 = -1: dropped
    ])
    assert scan == tmp_path / '2011_09_26/drive/velodyne_points/data/0000000003.bin'
    depth = data.read_velodyne_depth(calib, scan)
    assert depth.shape == (20, 40) and depth.dtype == torch.float32
    expected = torch.zeros(20, 40)
    expected[5, 30], expected[14, 9], expected[9, 29] = 10.5, 5.5, 7.0  # the velodyne's x, not the camera's z
    assert torch.equal(depth, expected)


def test_velodyne_depth_matches_the_annotated_depth_of_the_toy_world(toy_root):
    folder = data.read_split(toy_root, 'test')[0][0]
    date = toy_root / folder.split('/')[0]
    assert not (toy_root / folder.replace('0002', '0001') / 'velodyne_points').exists()  # scans: held-out drive only
    calib = data.read_calib(date / 'calib_cam_to_cam.txt')
    T = data.read_calib_text((date / 'calib_velo_to_cam.txt').read_text())['T']
    K, (height, width) = data.camera_intrinsics(calib)
    f, cx, cy = K[0, 0].item(), K[0, 2].item(), K[1, 2].item()
    # Where the scan must cover every pixel: within 20 degrees of the optical axis the firings are
    # f * step / cos^2 apart in u and the beams at most f * step / (cos^2(elevation) cos(azimuth)) apart in
    # v, both under a pixel, so every pixel below the top beam (+2 degrees) and above the image's bottom
    # (the -24.9 degree beam lies below it) gets a point, unless it shows sky or lies beyond the range.
    side = math.radians(20)
    elevations = toyworld.VELO_ELEVATIONS
    step_el = math.radians((elevations[0] - elevations[-1]).item() / (len(elevations) - 1))
    lowest = math.atan((height + 0.5 - cy) / f)  # the steepest beam that still meets the image
    assert f * math.radians(toyworld.VELO_AZIMUTH_STEP) / math.cos(side) ** 2 < 1
    assert f * step_el / (math.cos(lowest) ** 2 * math.cos(side)) < 1
    assert cy + f * math.tan(math.radians(-elevations[-1].item())) > height
    near = 100.0  # metres of depth: at most 20 degrees aside and `lowest` down, within the scanner's range
    assert near * math.hypot(1, math.tan(side), math.tan(lowest)) + np.linalg.norm(T) < toyworld.VELO_RANGE
    cols = torch.arange(width)
    rows = torch.arange(height)
    window = (((cols + 0.5 >= cx - f * math.tan(side)) & (cols + 1.5 <= cx + f * math.tan(side)))[None]
              & (rows + 0.5 >= cy - f * math.tan(math.radians(elevations[0].item())))[:, None])
    for frame in range(TINY['test_frames']):
        velodyne = data.read_velodyne_depth(date, data.velodyne_path(toy_root, folder, frame))
        annotated = data.read_depth(data.depth_path(toy_root, folder, frame))[0]
        both = (velodyne > 0) & (annotated > 0)
        # same surface, depth measured from 0.27 m further back, within the PNG's 1/256 m steps
        assert ((velodyne - annotated)[both] + T[2]).abs().max() <= 1 / 512 + 1e-4
        must = window & (annotated > 0) & (annotated <= near)
        assert must.sum() > 0.2 * window.sum() and (velodyne[must] > 0).all()


def test_bad_velodyne_inputs_stop_with_one_sentence(tmp_path):
    calib = _velodyne_calib(tmp_path / 'calib')
    missing = data.velodyne_path(tmp_path, '2011_09_26/drive', 7)
    with pytest.raises(FileNotFoundError, match='no velodyne scan at ' + re.escape(str(missing))):
        data.read_velodyne_depth(calib, missing)
    scan = _write_scan(tmp_path / 'scan.bin', [(10.5, -0.97, 0.24)] * 4)
    truncated = tmp_path / 'truncated.bin'
    truncated.write_bytes(scan.read_bytes()[:-5])
    with pytest.raises(ValueError, match=re.escape(str(truncated)) + ' holds 59 bytes, not a whole number of '
                                         '16-byte points .* truncated or corrupt; re-extract'):
        data.read_velodyne_depth(calib, truncated)
    (calib / 'calib_velo_to_cam.txt').unlink()
    with pytest.raises(FileNotFoundError, match='no calibration file at ' + re.escape(str(calib / 'calib_velo_to_cam.txt'))):
        data.read_velodyne_depth(calib, scan)
    for key, file in [('R', 'calib_velo_to_cam'), ('T', 'calib_velo_to_cam'), ('R_rect_00', 'calib_cam_to_cam'),
                      ('P_rect_02', 'calib_cam_to_cam'), ('S_rect_02', 'calib_cam_to_cam')]:
        short = _velodyne_calib(tmp_path / key, drop=key)
        with pytest.raises(ValueError, match=re.escape(f'{short / file}.txt has no "{key}:" line')):
            data.read_velodyne_depth(short, scan)
    with pytest.raises(ValueError, match='no "P_rect_03:" line'):  # a camera the file does not describe
        data.read_velodyne_depth(_velodyne_calib(tmp_path / 'whole'), scan, camera='03')


@pytest.mark.skipif(not REALDATA.exists(), reason='the real KITTI sample files are not here')
def test_real_velodyne_scan_projects_onto_the_road_ahead():
    date = REALDATA / 'kitti' / '2011_09_26'
    scan = data.velodyne_path(date.parent, '2011_09_26/2011_09_26_drive_0002_sync', 5)
    depth = data.read_velodyne_depth(date, scan)
    assert depth.shape == (375, 1242) and depth.dtype == torch.float32
    assert 0.03 < (depth > 0).float().mean() < 0.06 and depth.max() < 120  # a 64-beam scan covers ~4%
    assert not (depth[:100] > 0).any()  # nothing above the top beam (+2 degrees)
    # the bottom rows see the road just ahead: a flat road 1.65 m below the camera at row v lies at
    # z = fy * 1.65 / (v - cy); velodyne depth is that plus 0.27 m, give or take the road's shape
    K, _ = data.camera_intrinsics(data.read_calib(date / 'calib_cam_to_cam.txt'))
    rows = torch.arange(335, 375.0)[:, None].expand(-1, 1242)
    road = depth[335:] > 0
    flat = K[1, 1] * 1.65 / (rows[road] + 1 - K[1, 2])
    assert road.sum() > 1000 and ((depth[335:][road] > 3) & (depth[335:][road] < 20)).all()
    assert 0.95 < (depth[335:][road] / flat).median() < 1.15


def test_an_interrupted_render_leaves_no_temporary_world(tmp_path, monkeypatch):
    (tmp_path / 'world.tmp-99999999').mkdir()  # left by a render that was killed
    def interrupted(root, *args):
        (root / 'half').mkdir(parents=True)
        raise KeyboardInterrupt
    monkeypatch.setattr(toyworld, '_render_world', interrupted)
    with pytest.raises(KeyboardInterrupt):
        toyworld.render_toy_world(tmp_path / 'world', **TINY)
    assert list(tmp_path.iterdir()) == []  # neither this render's nor the killed one's temporary folder


def test_a_toy_world_of_an_older_version_stops_with_a_sentence(tmp_path):
    (tmp_path / 'old').mkdir()
    (tmp_path / 'old' / 'toy_world.json').write_text('{"height": 96, "width": 320}')  # before versions
    with pytest.raises(SystemExit, match=r'holds a toy world of version 1, .*delete it \(rm -r .*old\)'):
        toyworld.ensure_toy_world(tmp_path / 'old')
    (tmp_path / 'old' / 'toy_world.json').write_text(json.dumps({'version': toyworld.TOY_WORLD_VERSION}))
    toyworld.ensure_toy_world(tmp_path / 'old')  # the current version is reused as it is
