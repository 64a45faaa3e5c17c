"""data.py's readers and datasets: KITTI's encodings (label ids, depth and flow PNGs, velodyne scans) pinned
on values written out by hand and on the real KITTI sample files, intrinsics under resizing and cropping,
the datasets' geometry checked against the toy world's renderer, split files (splits.make_splits, the
few-shot pick), and one sentence for each kind of bad file. The renderer's own tests are in test_toyworld.py."""
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_png, read_file, write_jpeg, write_png

import data
import toyworld
import losses
import splits
import training
from conftest import kitti_labelled, kitti_snippets, kitti_test_frames, project, warp

REALDATA = Path(__file__).resolve().parents[2] / 'shared' / 'realdata'
needs_realdata = pytest.mark.skipif(not REALDATA.exists(), reason='the real KITTI sample files are not here')


def _raw_png(path):
    """A PNG's samples as stored, decoded by torchvision apart from data.py's readers, as int64 [C, H, W]."""
    return decode_png(read_file(str(path)), mode=ImageReadMode.UNCHANGED).long()


# ----------------------------------------------------------------------------------------------
# Cityscapes label ids -> the 19 train ids
# ----------------------------------------------------------------------------------------------

# Cityscapes' label table (cityscapesScripts, helpers/labels.py), written out by hand: label id -> train id,
# 255 for the ids the benchmark ignores.
CITYSCAPES_TRAIN_IDS = {
    0: 255,   # unlabeled
    1: 255,   # ego vehicle
    2: 255,   # rectification border
    3: 255,   # out of roi
    4: 255,   # static
    5: 255,   # dynamic
    6: 255,   # ground
    7: 0,     # road
    8: 1,     # sidewalk
    9: 255,   # parking
    10: 255,  # rail track
    11: 2,    # building
    12: 3,    # wall
    13: 4,    # fence
    14: 255,  # guard rail
    15: 255,  # bridge
    16: 255,  # tunnel
    17: 5,    # pole
    18: 255,  # polegroup
    19: 6,    # traffic light
    20: 7,    # traffic sign
    21: 8,    # vegetation
    22: 9,    # terrain
    23: 10,   # sky
    24: 11,   # person
    25: 12,   # rider
    26: 13,   # car
    27: 14,   # truck
    28: 15,   # bus
    29: 255,  # caravan
    30: 255,  # trailer
    31: 16,   # train
    32: 17,   # motorcycle
    33: 18,   # bicycle
}


def test_every_cityscapes_label_id_reads_as_its_train_id(tmp_path):
    ids = list(range(34))  # the 34 label ids (a value no label id has stops: the next test)
    label = tmp_path / 'semantic' / '000000_10.png'
    label.parent.mkdir()
    write_png(torch.tensor(ids, dtype=torch.uint8).view(1, 2, 17), str(label))
    read = data.read_labels(label)
    assert read.dtype == torch.int64 and read.shape == (2, 17)
    expected = [CITYSCAPES_TRAIN_IDS.get(i, 255) for i in ids]
    assert read.flatten().tolist() == expected
    assert data.LABEL_TO_TRAIN_ID == {i: t for i, t in CITYSCAPES_TRAIN_IDS.items() if t != 255}


@pytest.mark.parametrize('top', [255, 34])
def test_a_label_map_of_train_ids_stops_with_a_sentence(tmp_path, top):
    # a *_labelTrainIds.png (0..18, 255 = ignore) saved as *_labelIds.png: read as label ids, road (train id 0)
    # would become ignored and sidewalk (1) ignored too, car (13) "wall" (label id 13 = train id 4)
    train_ids = torch.tensor(list(range(19)) + [top], dtype=torch.uint8).view(1, 2, 10)
    label = tmp_path / 'frankfurt_000000_000294_gtFine_labelIds.png'
    write_png(train_ids, str(label))
    with pytest.raises(ValueError, match=rf'holds the value {top}, but Cityscapes label ids run from 0 to 33: it '
                                         r'holds train ids .*labelTrainIds.*give the \*_gtFine_labelIds.png maps'):
        data.read_labels(label)
    image = tmp_path / 'image.png'
    write_png(torch.zeros(3, 2, 10, dtype=torch.uint8), str(image))
    with pytest.raises(ValueError, match='holds train ids'):  # when the set is built, not in a DataLoader worker
        data.LabelledImages([(image, label, data.read_labels)], 2, 10)


@needs_realdata
def test_real_label_maps_read_as_the_train_ids_of_their_label_ids():
    # KITTI data_semantics: the stored label ids mapped through the hand table, pixel for pixel
    for name in ('000000_10.png', '000001_10.png'):
        label = REALDATA / 'kitti/data_semantics/training/semantic' / name
        raw = _raw_png(label)[0]
        expected = torch.tensor([CITYSCAPES_TRAIN_IDS.get(i, 255) for i in range(256)])[raw]
        assert torch.equal(data.read_labels(label), expected)
        assert {0, 2, 13} <= set(expected.unique().tolist())  # road, building, car
    # Cityscapes ships both maps: they differ only on the 77 pixels their separate downscaling put apart
    gt = REALDATA / 'cityscapes/gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_'
    train_ids = _raw_png(f'{gt}labelTrainIds.png')[0]
    read = data.read_labels(f'{gt}labelIds.png')
    assert read.shape == train_ids.shape == (128, 256)
    assert (read != train_ids).sum() <= 77 and len(train_ids.unique()) >= 8


@needs_realdata
def test_real_kitti_labels_hold_the_19_classes_label_ids_and_a_void_id_only(tmp_path):
    # DATASETS.md's KITTI section: what KITTI's maps hold, and why the paper's unnamed "21 classes" are read as
    # Cityscapes' 19 train ids here
    folder = REALDATA / 'kitti/data_semantics/training/semantic'
    raw = torch.cat([_raw_png(folder / name)[0].flatten() for name in ('000000_10.png', '000001_10.png')])
    ids, counts = raw.unique(return_counts=True)
    assert ids.tolist() == [4, 7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 26, 27, 28, 31, 32]  # 4: void 'static'
    assert counts[:2].tolist() == [5428, 234270] and int(counts.sum()) == 931500  # static, road; every pixel
    # road, sidewalk, building, vegetation, terrain, sky and car, stored as label ids, read as the 7 representative
    write_png(torch.tensor([[[7, 8, 11, 21, 22, 23, 26, 4]]], dtype=torch.uint8), str(tmp_path / 'label.png'))
    assert data.read_labels(tmp_path / 'label.png').tolist() == [list(data.REPRESENTATIVE_IDS) + [255]]


# ----------------------------------------------------------------------------------------------
# Depth, flow and velodyne encodings: the readers on stored values written by hand and on real KITTI files
# ----------------------------------------------------------------------------------------------

def test_read_depth_is_the_stored_uint16_divided_by_256(tmp_path):
    raw = np.array([[0, 1, 256, 640], [20480, 21733, 65535, 12345]])
    toyworld.write_png16(raw, tmp_path / 'd.png')
    assert _raw_png(tmp_path / 'd.png')[0].tolist() == raw.tolist()  # the file holds these samples
    depth = data.read_depth(tmp_path / 'd.png')
    assert depth.dtype == torch.float32 and depth.shape == (1, 2, 4)
    assert depth[0].tolist() == [[0.0, 0.00390625, 1.0, 2.5], [80.0, 84.89453125, 255.99609375, 48.22265625]]


def test_read_flow_is_the_stored_uint16_minus_2_15_over_64_with_the_valid_flag(tmp_path):
    raw = np.array([[[32768, 32672, 0, 65535], [39168, 32769, 32768, 32768]],       # u
                    [[32769, 39168, 26368, 32767], [32704, 32768, 65472, 0]],       # v
                    [[0, 1, 1, 1], [1, 0, 0, 1]]])                                   # valid
    toyworld.write_png16(raw.transpose(1, 2, 0), tmp_path / 'f.png')
    assert _raw_png(tmp_path / 'f.png').tolist() == raw.tolist()
    flow, valid = data.read_flow(tmp_path / 'f.png')
    assert flow.dtype == torch.float32 and flow.shape == (2, 2, 4) and valid.dtype == torch.bool
    assert flow[0].tolist() == [[0.0, -1.5, -512.0, 511.984375], [100.0, 0.015625, 0.0, 0.0]]
    assert flow[1].tolist() == [[0.015625, 100.0, -100.0, -0.015625], [-1.0, 0.0, 511.0, -512.0]]
    assert valid.tolist() == [[False, True, True, True], [True, False, False, True]]


@needs_realdata
def test_real_annotated_depth_reads_as_metres_within_kittis_range():
    calib = data.read_calib(REALDATA / 'kitti/2011_09_26/calib_cam_to_cam.txt')
    K, _ = data.camera_intrinsics(calib)
    for depth_file in sorted((REALDATA / 'kitti_depth_metric3d_demo/depth').glob('*.png')):
        raw = _raw_png(depth_file)
        depth = data.read_depth(depth_file)
        assert depth.shape == (1, 375, 1242) and torch.equal(depth, raw.float() / 256)
        measured = depth[depth > 0]
        assert 0.15 < measured.numel() / depth.numel() < 0.25  # about a fifth of the pixels
        assert 3 < measured.min() and 75 < measured.max() <= 90  # metres: the annotation reaches about 80 m
        # the bottom rows see the road: a flat road 1.65 m below the camera lies at z = fy * 1.65 / (v - cy)
        rows = torch.arange(340, 375.0)[:, None].expand(-1, 1242)
        road = depth[0, 340:] > 0
        flat = K[1, 1] * 1.65 / (rows[road] - K[1, 2])
        assert 0.85 < (depth[0, 340:][road] / flat).median() < 1.15


@needs_realdata
def test_real_flow_reads_as_pixels_with_a_zero_one_valid_channel():
    folder = REALDATA / 'kitti/data_scene_flow/training'
    raw = _raw_png(folder / 'flow_noc/000000_10.png')
    flow, valid = data.read_flow(folder / 'flow_noc/000000_10.png')
    assert set(raw[2].unique().tolist()) == {0, 1}  # the valid channel holds 0 or 1
    assert torch.equal(valid, raw[2] == 1) and 0.1 < valid.float().mean() < 0.25
    assert torch.equal(flow, (raw[:2].float() - 32768) / 64)
    assert (flow[:, ~valid] == 0).all()  # KITTI stores no flow (2^15) where it is unknown
    assert flow[:, valid].abs().max() < 256 and flow[0, valid].abs().median() > 1
    # the flow carries frame 11 back onto frame 10 where it is valid
    first, second = (data.read_image(folder / f'image_2/000000_{n}.png').float()[None] / 255 for n in (10, 11))
    error = (losses.flow_warp(second, flow[None]) - first).abs().mean(1)[0][valid].mean()
    identity = (second - first).abs().mean(1)[0][valid].mean()
    assert error < 0.5 * identity, (error, identity)


def _calib_by_hand(path):
    """KITTI calibration text read without data.py: {name: float64 array} of the lines that are all numbers."""
    entries = {}
    for line in Path(path).read_text().splitlines():
        name, _, values = line.partition(':')
        try:
            entries[name] = np.array([float(x) for x in values.split()])
        except ValueError:
            pass
    return entries


@needs_realdata
def test_real_velodyne_scan_projects_as_the_devkit_projects_it():
    """The KITTI devkit's rule, written apart with NumPy: P_rect_02 @ R_rect_00 @ [R | T] on the float32
    (x, y, z, 1) points in front of the scanner, pixel round(u) - 1, round(v) - 1, nearest x wins."""
    date = REALDATA / 'kitti' / '2011_09_26'
    scan = date / '2011_09_26_drive_0002_sync/velodyne_points/data/0000000005.bin'
    cam, velo = _calib_by_hand(date / 'calib_cam_to_cam.txt'), _calib_by_hand(date / 'calib_velo_to_cam.txt')
    rigid = np.eye(4)
    rigid[:3, :3], rigid[:3, 3] = velo['R'].reshape(3, 3), velo['T']
    rectify = np.eye(4)
    rectify[:3, :3] = cam['R_rect_00'].reshape(3, 3)
    width, height = (int(x) for x in cam['S_rect_02'])
    points = np.fromfile(scan, dtype='<f4').reshape(-1, 4)
    assert points.shape[0] > 100000 and 0 <= points[:, 3].min() and points[:, 3].max() <= 1  # reflectance
    assert np.abs(points[:, :3]).max() < 130  # metres: x forward, y left, z up
    points = points[points[:, 0] >= 0].astype(np.float64)
    image = cam['P_rect_02'].reshape(3, 4) @ rectify @ rigid @ np.c_[points[:, :3], np.ones(len(points))].T
    col, row = np.round(image[0] / image[2]) - 1, np.round(image[1] / image[2]) - 1
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    expected = np.full((height, width), np.inf, np.float32)
    np.minimum.at(expected, (row[inside].astype(int), col[inside].astype(int)), points[inside, 0].astype(np.float32))
    expected[np.isinf(expected)] = 0
    depth = data.read_velodyne_depth(date, scan)
    assert depth.shape == (375, 1242) and torch.equal(depth, torch.from_numpy(expected))
    assert 5000 < (depth > 0).sum() and depth.max() <= 120


# ----------------------------------------------------------------------------------------------
# Intrinsics under resizing and cropping
# ----------------------------------------------------------------------------------------------

def test_scale_intrinsics_moves_pixel_centres_by_half_a_pixel(tmp_path):
    """fx and cx scale with the width, fy and cy with the height; with pixel centres at integers, a resize
    by s takes u to (u + 0.5) s - 0.5 (data.py's convention), so cx' = (cx + 0.5) sx - 0.5."""
    K = torch.tensor([[300.0, 0, 150], [0, 240, 60], [0, 0, 1]])
    down = data.scale_intrinsics(K, (120, 400), (60, 100))  # sy = 1/2, sx = 1/4
    assert down.tolist() == [[75.0, 0, 37.125, 0], [0, 120.0, 29.75, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    up = data.scale_intrinsics(K, (120, 400), (240, 800))  # twice the size
    assert up.tolist() == [[600.0, 0, 300.5, 0], [0, 480.0, 120.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    assert torch.equal(data.scale_intrinsics(K, (120, 400), (120, 400))[:3, :3], K)
    centred = torch.tensor([[300.0, 0, 199.5], [0, 240, 59.5], [0, 0, 1]])  # the image's centre stays its centre
    assert data.scale_intrinsics(centred, (120, 400), (60, 100))[:2, 2].tolist() == [49.5, 29.5]


def test_scale_intrinsics_agrees_with_the_resized_pixel_grid():
    """A ramp image holding each pixel's own column (row) number, resized by data.resize: where the scaled
    intrinsics put a ray's pixel, the resized ramp reads the column (row) the original intrinsics put it at."""
    K = torch.tensor([[300.0, 0, 150], [0, 240, 60], [0, 0, 1]])
    height, width = 120, 400
    columns = torch.arange(width, dtype=torch.float32).expand(height, width)
    rows = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
    ramps = torch.stack([columns, rows])[None]
    for size in [(60, 100), (240, 800)]:
        resized = data.resize(ramps, size)[0]
        scaled = data.scale_intrinsics(K, (height, width), size)
        for new_u in range(6, size[1] - 6, 7):  # away from the borders, where the filter is cut
            ray = (new_u - scaled[0, 2]) / scaled[0, 0]  # x / z of the ray through that new column
            assert float(resized[0, size[0] // 2, new_u]) == pytest.approx(float(K[0, 0] * ray + K[0, 2]), abs=1e-3)
        for new_v in range(6, size[0] - 6, 5):
            ray = (new_v - scaled[1, 2]) / scaled[1, 1]
            assert float(resized[1, new_v, size[1] // 2]) == pytest.approx(float(K[1, 1] * ray + K[1, 2]), abs=1e-3)


def _crop_offset(part, whole):
    """The one (top, left) at which `part` [..., h, w] is a crop of `whole` [..., H, W]."""
    h, w = part.shape[-2:]
    found = [(top, left) for top in range(whole.shape[-2] - h + 1) for left in range(whole.shape[-1] - w + 1)
             if torch.equal(whole[..., top:top + h, left:left + w], part)]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize('size, crop', [((64, 192), (48, 96)), ((56, 168), (32, 128))])
def test_random_crop_cuts_images_and_depth_at_one_place_and_shifts_the_principal_point(toy_root, size, crop):
    whole = kitti_snippets(toy_root, 'train', *size, (0, -1), with_depth=True)[1]
    whole_depth = F.interpolate(whole['depth'][None], size, mode='nearest')[0]  # stored at 64 x 192
    cropped = kitti_snippets(toy_root, 'train', *size, (0, -1), with_depth=True, crop=crop)
    offsets = set()
    for _ in range(6):
        item = cropped[1]
        assert item['frames'].shape == (2, 3, *crop) and item['depth'].shape == (1, *crop)
        top, left = _crop_offset(item['frames'], whole['frames'])
        assert torch.equal(item['depth'], whole_depth[..., top:top + crop[0], left:left + crop[1]])
        expected = whole['K'].clone()
        expected[0, 2] -= left  # the principal point moves with the crop, the focal lengths stay
        expected[1, 2] -= top
        assert torch.equal(item['K'], expected) and torch.allclose(item['inv_K'], torch.linalg.inv(expected))
        offsets.add((top, left))
    assert len(offsets) > 1 and any(top > 0 and left > 0 for top, left in offsets)


def test_few_shot_split_is_seeded_and_disjoint():
    train, held_out = data.few_shot_split(20, 5, seed=3)
    assert len(train) == 5 and len(held_out) == 15 and sorted(train + held_out) == list(range(20))
    order = torch.randperm(20, generator=torch.Generator().manual_seed(3)).tolist()  # the seed's own draw
    assert (train, held_out) == (order[:5], order[5:])
    torch.manual_seed(1234)  # torch's global random state plays no part
    assert train == data.few_shot_split(20, 5, seed=3)[0] != data.few_shot_split(20, 5, seed=4)[0]
    for size in (0, 20, 25):
        with pytest.raises(ValueError, match=f'--train-size must be between 1 and 19 .*got {size}'):
            data.few_shot_split(20, size, seed=3)


@pytest.mark.parametrize('length, count, expected', [
    (10, 3, [0, 3, 6]), (10, 4, [0, 2, 4, 6]), (10, 5, [0, 2, 4, 6, 8]), (100, 4, [0, 25, 50, 75]),
    (9, 2, [0, 4]), (5, 1, [0]), (7, 7, [0, 1, 2, 3, 4, 5, 6]), (3, 5, [0, 1, 2]), (0, 3, []),
])
def test_evenly_spaced_steps_by_length_over_count_from_zero(length, count, expected):
    assert data.evenly_spaced(length, count) == expected


def _ground_truth_warp(root, size, depth_scale=1.0, crop=None, shift_intrinsics=True):
    """Warp frame t+1 into frame t with ground-truth depth and camera motion; return the mean
    photometric error on pixels seen in both and static, the identity error there, and their share.
    `depth_scale` corrupts the warp, to show the test can tell. With `crop` the loader's random crop is
    used (its offset read off the principal point); `shift_intrinsics=False` undoes the shift."""
    snippets = kitti_snippets(root, 'train', *size, (0, 1), with_depth=True, crop=crop)
    folder, frame, _ = data.read_split(root, 'train')[2]
    assert snippets.snippets[2].frames == (data.image_path(root, folder, frame), data.image_path(root, folder, frame + 1))
    torch.manual_seed(0)
    item = snippets[2]
    K = item['K'][None]
    full_K = kitti_snippets(root, 'train', *size, (0,))[2]['K']
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


@pytest.mark.parametrize('crop', [None, (48, 128)])
def test_depth_follows_flips_and_crops(toy_root, crop):
    """With augmentation (and a crop), images and depth are cut at one place and flipped together, and the
    principal point moves into the crop, then mirrors: cx' = w - 1 - (cx - left), cy' = cy - top."""
    whole = kitti_snippets(toy_root, 'train', 64, 192, (0,), with_depth=True)[0]
    augmented = kitti_snippets(toy_root, 'train', 64, 192, (0,), with_depth=True, augment=True, crop=crop)
    h, w = crop or (64, 192)
    seen = set()
    for _ in range(12):
        item = augmented[0]
        flipped = any(torch.equal(item['frames'].flip(-1), whole['frames'][..., t:t + h, l:l + w])
                      for t in range(64 - h + 1) for l in range(192 - w + 1))
        frames, depth = (item['frames'].flip(-1), item['depth'].flip(-1)) if flipped else (item['frames'], item['depth'])
        top, left = _crop_offset(frames, whole['frames'])
        assert torch.equal(depth, whole['depth'][..., top:top + h, left:left + w])
        cx, cy = whole['K'][0, 2] - left, whole['K'][1, 2] - top
        assert item['K'][1, 2] == cy and item['K'][0, 2] == (w - 1 - cx if flipped else cx)
        seen.add((flipped, top, left))
    assert {flipped for flipped, _, _ in seen} == {True, False} and (crop is None or len(seen) > 2)


def _stereo_warp_error(root, size, focal_scale=1.0):
    """Mean photometric error of the other camera's image warped into this one with ground-truth
    depth and the loader's stereo transform (baseline from the calibration)."""
    snippets = kitti_snippets(root, 'train', *size, (0,), with_depth=True, stereo=True)
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
    snippets = kitti_snippets(toy_root, 'train', 64, 192, (0, -1, 1), stereo=True, augment=True)
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
    pairs, held_out = data.Kitti(tmp_path).labelled()
    assert pairs == [(image, label, data.read_labels)] and held_out is None  # the headers are checked later
    for build in (lambda: kitti_labelled(tmp_path, [0], 64, 192),
                  lambda: data.open_dataset(data.LabelledImages, pairs[:1], 64, 192)):
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
        kitti_snippets(tmp_path, 'train', 64, 192, (0, -1, 1), with_depth=True)
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
        frames = kitti_test_frames(root, 64, 192, protocol, split_dir=split_dir)
        assert (len(frames), frames.skipped) == (len(lines) - skipped, skipped)
        first = frames[0]
        assert first['frames'].shape == (1, 3, 64, 192) and first['depth'].shape == (1, 64, 192)
        assert (first['depth'] > 0).any()
    for scan in root.glob('*/*/velodyne_points/data/*.bin'):
        scan.unlink()
    with pytest.raises(FileNotFoundError, match=f'none of the {len(lines)} frames of split "test" has velodyne scans'):
        kitti_test_frames(root, 64, 192, 'eigen', split_dir=split_dir)


def test_a_missing_neighbour_frame_stops_when_the_set_is_built(tmp_path):
    drive = tmp_path / '2011_09_26/2011_09_26_drive_0001_sync'
    for frame in (4, 5):  # frame 6, the next of frame 5, was never extracted
        _rgb(drive / f'image_02/data/{frame:010d}.png')
    (tmp_path / 'splits').mkdir()
    (tmp_path / 'splits/train_files.txt').write_text('2011_09_26/2011_09_26_drive_0001_sync 0000000005 l\n')
    _velodyne_calib(tmp_path / '2011_09_26')  # the date's calibration: a snippet holds its camera's intrinsics
    kitti_snippets(tmp_path, 'train', 64, 192, (0, -1))  # frames 5 and 4: there
    with pytest.raises(FileNotFoundError, match='0000000006.png does not exist, but item 1 of split "train"'):
        kitti_snippets(tmp_path, 'train', 64, 192, (0, -1, 1))
    with pytest.raises(FileNotFoundError, match='image_03/data/0000000005.png does not exist'):
        kitti_snippets(tmp_path, 'train', 64, 192, (0,), stereo=True)  # the other camera's frame


def test_16_bit_label_map_points_to_the_semantic_folder(tmp_path):
    image, label = _semantics(tmp_path, label16=True)
    for read in (lambda: data.read_labels(label), lambda: kitti_labelled(tmp_path, [0], 8, 8)):
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


@needs_realdata
def test_real_kitti_files_through_every_reader(tmp_path):
    kitti = REALDATA / 'kitti'
    # raw drive 0002: the real folders linked into a root that also holds a split file
    (tmp_path / '2011_09_26').symlink_to(kitti / '2011_09_26', target_is_directory=True)
    (tmp_path / 'splits').mkdir()
    (tmp_path / 'splits/train_files.txt').write_text(
        ''.join(f'2011_09_26/2011_09_26_drive_0002_sync {f} l\n' for f in range(1, 9)))
    snippets = kitti_snippets(tmp_path, 'train', 64, 192, (0, -1, 1), stereo=True)
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
    labelled = kitti_labelled(kitti, [0, 1], 64, 192)
    assert all(read is data.read_labels for _, _, read in labelled.pairs)
    labels = torch.stack([data.read_labels(label) for _, label, _ in labelled.pairs])
    assert labels.shape == (2, 375, 1242) and {0, 2, 13} <= set(labels.unique().tolist()) <= set(range(19)) | {255}
    assert labelled[0]['label'].shape == (64, 192)
    label = kitti / 'data_semantics/training/semantic/000000_10.png'
    mismatched = kitti / '_misc/caiochaves_image_2_000000_10_MISMATCHED.png'
    (tmp_path / 'data_semantics/training/image_2').mkdir(parents=True)
    (tmp_path / 'data_semantics/training/image_2/000000_10.png').symlink_to(mismatched)
    (tmp_path / 'data_semantics/training/semantic').symlink_to(label.parent, target_is_directory=True)
    with pytest.raises(ValueError, match='1242x375 but its image .* is 1224x370') as caught:
        kitti_labelled(tmp_path, [0], 64, 192)
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


@needs_realdata
def test_real_eigen_test_frame_is_scored_at_native_size_and_frames_without_a_scan_are_skipped(tmp_path):
    import evaluate
    import models
    kitti = REALDATA / 'kitti'
    (tmp_path / 'eigen').mkdir()  # Monodepth2's form; only frame 5 of the real drive has its scan here
    (tmp_path / 'eigen/test_files.txt').write_text(''.join(
        f'2011_09_26/2011_09_26_drive_0002_sync {f:010d} l\n' for f in (4, 5, 6)))
    frames = kitti_test_frames(kitti, 64, 192, 'eigen', split_dir=tmp_path / 'eigen')
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
        splits.make_splits(root)
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
    splits.make_splits(root)
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


# 21 drives over two dates, of 4 to 6 frames; depth for frames 2 and 3 only
DRIVES = {f'{date}/{date}_drive_{d:04d}_sync': 4 + d % 3
          for date, count in (('2011_09_26', 11), ('2011_09_28', 10)) for d in range(1, count + 1)}
DEPTH_FRAMES = {2, 3}


def _drive_tree(root):
    """DRIVES as empty image files (and depth files for DEPTH_FRAMES), with folders that are not drives."""
    for folder, count in DRIVES.items():
        for f in range(count):
            (root / folder / 'image_02/data').mkdir(parents=True, exist_ok=True)
            (root / folder / f'image_02/data/{f:010d}.png').touch()
            if f in DEPTH_FRAMES:
                (root / folder / 'proj_depth/groundtruth/image_02').mkdir(parents=True, exist_ok=True)
                (root / folder / f'proj_depth/groundtruth/image_02/{f:010d}.png').touch()
    (root / '2011_09_26/2011_09_26_drive_0099_sync/image_03/data').mkdir(parents=True)  # no image_02: no drive
    (root / '2011_09_26/2011_09_26_drive_0098_extract/image_02/data').mkdir(parents=True)  # not a _sync folder


def _ranked_drives(seed):
    """The drives in the order the seed shuffles them: torch.randperm of the sorted folders."""
    folders = sorted(DRIVES)
    return [folders[i] for i in torch.randperm(len(folders), generator=torch.Generator().manual_seed(seed)).tolist()]


def _splits_by_the_rule(seed, depth_only=False, kept_out=()):
    """The split files written out by make_splits' rule: of the shuffled drives, ranks 0, 10, 20 test, ranks
    1, 11 val, the rest train; each drive's frames that have both neighbours, in order; test (and with
    depth_only every split) only frames with depth; drives in `kept_out` left out of train and val."""
    expected = {'train': [], 'val': [], 'test': []}
    for rank, folder in enumerate(_ranked_drives(seed)):
        split = 'test' if rank % 10 == 0 else 'val' if rank % 10 == 1 else 'train'
        if split != 'test' and folder in kept_out:
            continue
        expected[split] += [f'{folder} {f} l' for f in range(1, DRIVES[folder] - 1)
                            if not (split == 'test' or depth_only) or f in DEPTH_FRAMES]
    return expected


def _written_splits(root):
    return {split: (root / 'splits' / f'{split}_files.txt').read_text() for split in ('train', 'val', 'test')}


def test_make_splits_holds_out_every_tenth_drive_for_test_and_the_next_for_val(tmp_path):
    _drive_tree(tmp_path)
    for seed in (0, 3):
        counts = splits.make_splits(tmp_path, seed=seed)
        expected = _splits_by_the_rule(seed)
        assert _written_splits(tmp_path) == {split: ''.join(line + '\n' for line in lines)
                                             for split, lines in expected.items()}
        assert counts == dict({split: len(lines) for split, lines in expected.items()}, kept_out={})
        drives = {split: {line.split()[0] for line in lines} for split, lines in expected.items()}
        assert [len(drives[split]) for split in ('train', 'val', 'test')] == [16, 2, 3]  # 21 drives
    assert _splits_by_the_rule(0) != _splits_by_the_rule(3)  # the seed draws the order


def test_make_splits_leaves_files_that_are_not_frames_out(tmp_path):
    _drive_tree(tmp_path)
    for folder in DRIVES:  # what a file browser or an unzip leaves beside the frames
        for stray in ('.DS_Store', 'Thumbs.db', 'timestamps.txt'):
            (tmp_path / folder / 'image_02/data' / stray).touch()
    splits.make_splits(tmp_path)
    assert _written_splits(tmp_path) == {split: ''.join(line + '\n' for line in lines)
                                         for split, lines in _splits_by_the_rule(0).items()}


def test_make_splits_depth_only_keeps_only_frames_with_depth_in_every_split(tmp_path, capsys):
    _drive_tree(tmp_path)
    data.main(['--make-splits', str(tmp_path), '--depth-only'])
    expected = _splits_by_the_rule(0, depth_only=True)
    assert _written_splits(tmp_path) == {split: ''.join(line + '\n' for line in lines) for split, lines in expected.items()}
    assert all(int(line.split()[1]) in DEPTH_FRAMES for lines in expected.values() for line in lines)
    assert ', '.join(f'{split} {len(lines)} frames' for split, lines in expected.items()) in capsys.readouterr().out


def test_make_splits_keeps_the_mapped_drives_out_of_train_and_val_by_the_rule(tmp_path):
    _drive_tree(tmp_path)
    ranked = _ranked_drives(0)
    test_drive, val_drive, train_drive = ranked[0], ranked[1], ranked[2]
    mapped = [(test_drive, 'data_scene_flow'), (val_drive, 'data_semantics'), (train_drive, 'data_semantics')]
    for i, (folder, sub) in enumerate(mapped):
        _rgb(tmp_path / sub / f'training/image_2/{i:06d}_10.png')
    (tmp_path / data.RAW_MAPPING).parent.mkdir(parents=True)
    (tmp_path / data.RAW_MAPPING).write_text(''.join(_mapping_line(folder, 2) + '\n' for folder, _ in mapped))
    counts = splits.make_splits(tmp_path)
    expected = _splits_by_the_rule(0, kept_out={val_drive, train_drive})
    assert _written_splits(tmp_path) == {split: ''.join(line + '\n' for line in lines) for split, lines in expected.items()}
    assert counts['kept_out'] == {val_drive: [1], train_drive: [2]}  # the test drive stays: testing there does not leak
    assert test_drive in _written_splits(tmp_path)['test']


def test_make_splits_keeps_drives_of_labelled_images_out_of_train_and_val(tmp_path):
    plain, train, val, test = _labelled_tree(tmp_path)
    assert len(train) >= 2 and len(val) == 2  # 12 drives: 2 test, 2 val, 8 train
    counts = splits.make_splits(tmp_path)
    found = _split_drives(tmp_path)
    assert counts['kept_out'] == {train[0]: [2], val[0]: [0]}
    assert train[0] not in found['train'] | found['val'] and val[0] not in found['train'] | found['val']
    assert found['train'] == plain['train'] - {train[0]} and found['val'] == plain['val'] - {val[0]}
    assert found['test'] == plain['test']  # the test drive may hold such a frame: testing depth there does not leak
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
        splits.make_splits(tmp_path)
    message = str(caught.value)
    assert all(s in message for s in ('data_scene_flow and data_semantics', str(tmp_path / data.RAW_MAPPING),
                                      'devkit_scene_flow.zip', str(tmp_path / 'data_scene_flow'), '--mapping FILE'))
    assert '\n' not in message
    assert {p.name: p.read_text() for p in (tmp_path / 'splits').iterdir()} == before
    monkeypatch.setattr('sys.argv', ['data.py', '--make-splits', str(tmp_path)])
    with pytest.raises(SystemExit, match='devkit_scene_flow.zip'):
        data.main()
    with pytest.raises(FileNotFoundError, match='no mapping file'):
        splits.make_splits(tmp_path, mapping=tmp_path / 'missing.txt')


def test_make_splits_names_a_malformed_mapping_line(tmp_path):
    _labelled_tree(tmp_path)
    mapping = tmp_path / data.RAW_MAPPING
    lines = mapping.read_text().split('\n')
    lines[2] = lines[2].split(' ', 1)[1]  # the date left out
    mapping.write_text('\n'.join(lines))
    before = (tmp_path / 'splits/train_files.txt').read_text()
    with pytest.raises(ValueError, match=re.escape(f'{mapping}, line 3: expected "<date> <drive folder> <frame>"')):
        splits.make_splits(tmp_path)
    assert (tmp_path / 'splits/train_files.txt').read_text() == before


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


@needs_realdata
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


# ----------------------------------------------------------------------------------------------------
# xNet's segmentation augmentation: --rescale before the crop, --photometric on images only
# ----------------------------------------------------------------------------------------------------

def _striped_pair(tmp_path, classes=(3, 7), stripe=8, height=32, width=64):
    """A labelled image written as PNGs: vertical stripes `stripe` columns wide alternating between two
    classes, the image's red channel 0.25 on the first class and 0.75 on the second (green and blue 0.5)."""
    second = (torch.arange(width) // stripe % 2).expand(height, width)
    label = torch.where(second == 1, classes[1], classes[0]).to(torch.uint8)
    red = (64 + 128 * second).to(torch.uint8)
    image = torch.stack([red, torch.full_like(red, 128), torch.full_like(red, 128)])
    write_png(image.contiguous(), str(tmp_path / 'image.png'))
    write_png(label[None].contiguous(), str(tmp_path / 'label.png'))
    read = lambda path: data.read_png(path, 'labels')[0].long()
    return [(tmp_path / 'image.png', tmp_path / 'label.png', read)]


def _runs(row):
    """Lengths of the runs of equal values along a row."""
    edges = [0] + [i for i in range(1, len(row)) if row[i] != row[i - 1]] + [len(row)]
    return [b - a for a, b in zip(edges, edges[1:])]


def test_rescale_scales_image_and_label_together_and_never_interpolates_labels(tmp_path):
    pairs = _striped_pair(tmp_path)
    twice = data.LabelledImages(pairs, 32, 64, augment=True, crop=(32, 64), rescale=(2.0, 2.0))
    for seed in range(4):
        torch.manual_seed(seed)
        item = twice[0]
        label, red = item['label'], item['image'][0]
        assert label.shape == (32, 64) and set(label.unique().tolist()) == {3, 7}
        assert all(length == 16 for length in _runs(label[0].tolist())[1:-1])  # stripes of 8 columns now 16 wide
        assert (label == label[:1]).all()  # the stripes stay vertical
        assert (label[red > 0.6] == 7).all() and (label[red < 0.4] == 3).all()  # the image moved with the labels
    odd = data.LabelledImages(pairs, 32, 64, augment=True, crop=(32, 64), rescale=(1.3, 1.7))
    for seed in range(4):
        torch.manual_seed(seed)
        assert set(odd[0]['label'].unique().tolist()) == {3, 7}  # nearest: no class 5 between 3 and 7


def test_rescale_below_the_crop_pads_the_labels_with_255_and_the_image_with_0(tmp_path):
    half = data.LabelledImages(_striped_pair(tmp_path), 32, 64, augment=True, crop=(32, 64), rescale=(0.5, 0.5))
    places = set()
    for seed in range(6):
        torch.manual_seed(seed)
        item = half[0]
        inside = item['label'] != 255
        rows, columns = inside.any(1).nonzero()[:, 0], inside.any(0).nonzero()[:, 0]
        assert (len(rows), len(columns)) == (16, 32) and int(inside.sum()) == 16 * 32  # a 16 x 32 block: half size
        assert all(length == 4 for length in _runs(item['label'][rows[0], columns].tolist())[1:-1])  # 8 -> 4 wide
        assert (item['image'][:, ~inside] == 0).all() and (item['image'][:, inside] > 0).all()
        places.add((int(rows[0]), int(columns[0])))
    assert len(places) > 1  # the rescaled image lands at random places in the crop


def test_photometric_distortion_changes_images_not_labels(tmp_path):
    pairs = _striped_pair(tmp_path)
    plain = data.LabelledImages(pairs, 32, 64)[0]
    distorted = data.LabelledImages(pairs, 32, 64, photometric=True)
    changed = 0
    for seed in range(6):
        torch.manual_seed(seed)
        item = distorted[0]
        assert torch.equal(item['label'], plain['label'])  # labels untouched
        assert item['image'].min() >= 0 and item['image'].max() <= 1
        changed += not torch.equal(item['image'], plain['image'])
    assert changed >= 4  # each of four steps half of the time: left out entirely 1 time in 16


def test_photometric_steps_are_mmsegmentations():
    pixel = lambda *rgb: torch.tensor(rgb).view(3, 1, 1)
    same = lambda x, y: torch.testing.assert_close(x, y, atol=1e-6, rtol=0)
    x = pixel(0.8, 0.4, 0.2)
    same(data.photometric_distortion(x, brightness=0.1), pixel(0.9, 0.5, 0.3))  # adds
    same(data.photometric_distortion(x, brightness=0.3), pixel(1.0, 0.7, 0.5))  # clipped at 1
    same(data.photometric_distortion(x, contrast=1.5), pixel(1.0, 0.6, 0.3))  # multiplies every value
    # saturation: HSV's S = 0.75 halved, V = 0.8 and hue kept: each channel's distance to V halves
    same(data.photometric_distortion(x, saturation=0.5), pixel(0.8, 0.6, 0.5))
    same(data.photometric_distortion(x, saturation=2.0), pixel(0.8, 0.8 - 0.4 * 4 / 3, 0.0))  # S capped at 1: H kept
    same(data.photometric_distortion(pixel(0.5, 0.5, 0.5), saturation=1.5), pixel(0.5, 0.5, 0.5))  # grey stays
    same(data.photometric_distortion(pixel(1.0, 0.0, 0.0), hue=1 / 3), pixel(0.0, 1.0, 0.0))  # a third of a turn
    # contrast before saturation and hue, or after them (clipping tells the orders apart)
    same(data.photometric_distortion(x, contrast=1.5, saturation=0.5, contrast_first=True), pixel(1.0, 0.8, 0.65))
    same(data.photometric_distortion(x, contrast=1.5, saturation=0.5, contrast_first=False), pixel(1.0, 0.9, 0.75))
    same(data.photometric_distortion(x, brightness=0.1, contrast=0.5, contrast_first=False), pixel(0.45, 0.25, 0.15))


def test_photometric_draws_mmsegmentations_ranges_each_step_half_of_the_time():
    distortion, image = data.PhotoMetricDistortion(), torch.zeros(3, 2, 2)
    torch.manual_seed(0)
    draws = [distortion.make_params([image]) for _ in range(2000)]
    for key, low, high in (('brightness', -32 / 255, 32 / 255), ('contrast', 0.5, 1.5), ('saturation', 0.5, 1.5),
                           ('hue', -18 / 180, 18 / 180)):
        values = [d[key] for d in draws if d[key] is not None]
        assert 900 < len(values) < 1100, key
        assert low <= min(values) < low + 0.02 * (high - low) and high - 0.02 * (high - low) < max(values) <= high, key
    assert 900 < sum(d['contrast_first'] for d in draws) < 1100

# ----------------------------------------------------------------------------------------------
# No silent wrong results: 16-bit images, duplicated or shared split lines, impossible depth
# ----------------------------------------------------------------------------------------------

def _as_16_bit(png):
    """Rewrite an 8-bit PNG as the 16-bit PNG of the same picture (each value v stored as 257 v = v / 255 of 65535)."""
    image = _raw_png(png)
    toyworld.write_png16((image * 257).permute(1, 2, 0).numpy().astype(np.uint16).squeeze(-1 if len(image) == 1 else None), png)


def test_16_bit_frames_are_scaled_by_their_bit_depth(toy_root, tmp_path):
    # a KITTI tree whose left and right frames are 16-bit RGB PNGs trains on the same [0, 1] inputs as the 8-bit one
    root = tmp_path / 'world'
    shutil.copytree(toy_root, root)
    frames = sorted(root.glob('*/*_sync/image_0[23]/data/*.png'))
    for png in frames:
        _as_16_bit(png)
    assert _raw_png(frames[0]).max() > 255 and decode_png(read_file(str(frames[0]))).dtype == torch.uint16
    for stereo in (False, True):
        eight, sixteen = (kitti_snippets(r, 'train', 64, 192, (0, -1, 1), stereo=stereo, augment=True) for r in (toy_root, root))
        for i in (0, len(eight) - 1):
            torch.manual_seed(i)
            expected = eight[i]
            torch.manual_seed(i)
            got = sixteen[i]
            assert 0 <= float(got['frames'].min()) and float(got['frames'].max()) <= 1
            for key in expected:
                torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6)
    eight, sixteen = (kitti_test_frames(r, 64, 192, 'benchmark') for r in (toy_root, root))
    torch.testing.assert_close(sixteen[0]['frames'], eight[0]['frames'], rtol=0, atol=1e-6)


def test_unit_range_divides_by_the_largest_value_of_the_bit_depth():
    assert data.unit_range(torch.tensor([0, 51, 255], dtype=torch.uint8)).tolist() == pytest.approx([0, 0.2, 1])
    assert data.unit_range(torch.tensor([0, 13107, 65535], dtype=torch.uint16)).tolist() == pytest.approx([0, 0.2, 1])


def _kitti_split_files(root, train, val=(), test=()):
    """<root>/splits/{train,val,test}_files.txt of KITTI lines (frames of drive 0001, left camera)."""
    (root / 'splits').mkdir(parents=True, exist_ok=True)
    for split, frames in (('train', train), ('val', val), ('test', test)):
        if frames:
            (root / 'splits' / f'{split}_files.txt').write_text(
                ''.join(f'2011_09_26/2011_09_26_drive_0001_sync {f} l\n' for f in frames))


def test_a_split_listing_a_frame_twice_stops_naming_both_lines(tmp_path):
    _kitti_split_files(tmp_path, train=[1, 2, 1])
    split = tmp_path / 'splits' / 'train_files.txt'
    with pytest.raises(ValueError, match=re.escape(f'lines 1 and 3 of split file {split} both list '
                                                   '"2011_09_26/2011_09_26_drive_0001_sync 1 l"') + '.*counts twice'):
        data.read_split(tmp_path, 'train')
    split.write_text('2011_09_26/2011_09_26_drive_0001_sync 1 l\n2011_09_26/2011_09_26_drive_0001_sync  0001 l\n')
    with pytest.raises(ValueError, match='lines 1 and 2 '):  # the same frame, written otherwise
        data.read_split(tmp_path, 'train')
    _kitti_split_files(tmp_path, train=[1, 2], val=[3])  # the other camera's frame is another image: allowed
    with open(split, 'a') as f:
        f.write('2011_09_26/2011_09_26_drive_0001_sync 1 r\n')
    assert len(data.read_split(tmp_path, 'train')) == 3


@pytest.mark.parametrize('other', ['val', 'test'])
def test_a_frame_in_two_splits_stops_naming_both_files(tmp_path, other):
    _kitti_split_files(tmp_path, train=[1, 2, 3], **{other: [5, 2]})
    train, shared = tmp_path / 'splits' / 'train_files.txt', tmp_path / 'splits' / f'{other}_files.txt'
    for split, (mine, theirs) in (('train', (train, shared)), (other, (shared, train))):  # frame 2: line 2 of both
        with pytest.raises(ValueError, match=re.escape(f'line 2 of split file {mine} ("2011_09_26/2011_09_26_drive_'
                                                       f'0001_sync 2 l") is also line 2 of {theirs}')
                           + '.*scored on what it trained on'):
            data.read_split(tmp_path, split)


def test_path_split_files_refuse_repeated_and_shared_images_too(tmp_path):
    # every other layout's split files: image paths relative to the root (here a folder of RGB-D pairs)
    for name in ('a', 'b', 'c'):
        write_png(torch.zeros(3, 2, 2, dtype=torch.uint8), str(tmp_path / f'{name}_rgb.png'))
        np.save(tmp_path / f'{name}_depth.npy', np.ones((2, 2), np.float32))
    (tmp_path / 'splits').mkdir()
    (tmp_path / 'splits/train_files.txt').write_text('a_rgb.png\nb_rgb.png\n./a_rgb.png\n')
    with pytest.raises(ValueError, match='lines 1 and 3 of split file .*train_files.txt both list "./a_rgb.png"'):
        data.Folder(tmp_path).snippets('train', with_depth=True)
    (tmp_path / 'splits/train_files.txt').write_text('a_rgb.png\nb_rgb.png\n')
    (tmp_path / 'splits/val_files.txt').write_text('c_rgb.png\nb_rgb.png\n')
    with pytest.raises(ValueError, match=r'line 2 of split file .*val_files.txt \("b_rgb.png"\) is also line 2 of '
                                         r'.*train_files.txt'):
        data.Folder(tmp_path).depth_test('pairs')
    (tmp_path / 'splits/val_files.txt').write_text('c_rgb.png\n')
    assert len(data.Folder(tmp_path).snippets('train', with_depth=True)) == 2


@pytest.mark.parametrize('value', [float('inf'), -1.5, float('nan')])
def test_depth_that_is_infinite_negative_or_nan_stops_with_a_sentence(tmp_path, value):
    depth = np.full((3, 4), 5.0, np.float32)
    depth[1, 2] = value
    np.save(tmp_path / 'x_depth.npy', depth)
    with pytest.raises(ValueError, match=rf'x_depth.npy holds 1 depth values that are negative, infinite or NaN '
                                         rf'\(e.g. {re.escape(str(value))}\), but a depth map holds metres, 0 where '
                                         r'nothing was measured: write 0 there\.'):
        data.read_depth_file(tmp_path / 'x_depth.npy')
    depth[1, 2] = 0.0  # no measurement
    np.save(tmp_path / 'x_depth.npy', depth)
    assert float(data.read_depth_file(tmp_path / 'x_depth.npy').min()) == 0.0
