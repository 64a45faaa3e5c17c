"""The toy world (toyworld.py): KITTI's layout, deterministic rendering, its threads, the renderer's screen
windows, the encodings of the depth and flow PNGs it writes (checked on the raw 16-bit values, apart from
data.py's readers), its velodyne scans and its calibration, and how a render or an old world is handled;
then the other layouts (Cityscapes, NYU-Depth-V2, a folder of one's own): their files, and their encodings
decoded by hand against the renderer's own views."""
import filecmp
import functools
import json
import math
import re

import numpy as np
import pytest
import torch
from torchvision.io import ImageReadMode, decode_jpeg, decode_png, encode_jpeg, read_file

import data
import splits
import toyworld
from conftest import TINY


def _raw_png(path):
    """A PNG's samples as stored (uint16 for 16-bit files) by torchvision's decoder, as int64: the test's own
    decoding, apart from data.py's readers."""
    return decode_png(read_file(str(path)), mode=ImageReadMode.UNCHANGED).long()


def test_toy_world_files_are_where_kitti_keeps_them(toy_root):
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


def test_same_seed_renders_identical_files_whatever_the_threads(tmp_path):
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


def test_depth_png_stores_metres_times_256_as_uint16(tmp_path):
    """KITTI's depth encoding, by hand: round(metres * 256), 0 = no measurement, saturating at 65535."""
    depth = torch.tensor([[0.0, 1.0, 2.5, 80.0, 1 / 256],
                          [3.14, 100.5, 255.99609375, 300.0, 0.001]])
    expected = [[0, 256, 640, 20480, 1],
                [804, 25728, 65535, 65535, 0]]  # 3.14 * 256 = 803.84; 300 m saturates; 1 mm rounds to none
    toyworld.write_depth_png(depth, tmp_path / 'd.png')
    raw = decode_png(read_file(str(tmp_path / 'd.png')), mode=ImageReadMode.UNCHANGED)
    assert raw.dtype == torch.uint16 and raw.shape == (1, 2, 5)  # 16-bit, single channel
    assert raw[0].long().tolist() == expected


def test_depth_png_round_trip(tmp_path):
    depth = torch.rand(7, 9, generator=torch.Generator().manual_seed(1)) * 100
    depth[0, 0] = 0
    toyworld.write_depth_png(depth, tmp_path / 'd.png')
    back = data.read_depth(tmp_path / 'd.png')[0]
    assert back[0, 0] == 0 and (back - depth).abs().max() <= 0.5 / 256


def test_toy_calibration_text_gives_the_rigs_intrinsics_and_baseline():
    calib = data.read_calib_text(toyworld._calib_text(toyworld.toy_intrinsics(64, 192), 64, 192))
    K, size = data.camera_intrinsics(calib, '02')
    assert size == (64, 192) and torch.allclose(K, toyworld.toy_intrinsics(64, 192))
    assert abs(data.stereo_baseline(calib) - toyworld.STEREO_BASELINE) < 1e-6


def test_toy_labels_are_cityscapes_ids_and_read_as_road_building_sky_and_car(toy_root):
    files = data.semantic_files(toy_root)
    raw = torch.stack([_raw_png(label) for _, label in files])
    assert set(raw.unique().tolist()) <= set(toyworld.LABEL_IDS.values())  # 8-bit Cityscapes label ids as stored
    assert {7, 11, 23, 26} <= set(raw.unique().tolist())  # road, building, sky and car appear in a dozen views
    labels = torch.stack([data.read_labels(label) for _, label in files])
    present = set(labels.unique().tolist())
    assert present <= set(range(19)) | {255}
    assert {0, 2, 10, 13} <= present  # ... and read as their train ids


def test_flow_png_stores_u_and_v_times_64_plus_2_15_and_the_valid_flag(tmp_path):
    """KITTI's flow encoding (flow 2015 devkit), by hand: channels round(u * 64) + 32768, round(v * 64) + 32768
    and valid (1 or 0), uint16."""
    flow = torch.tensor([[[-1.5, 0.0, 2.25], [100.0, -512.0, 0.01]],      # u
                         [[3.0, -0.25, 0.0], [-100.0, 511.0, -0.02]]])    # v
    valid = torch.tensor([[True, False, True], [True, True, False]])
    toyworld.write_flow_png(flow, valid, tmp_path / 'f.png')
    raw = decode_png(read_file(str(tmp_path / 'f.png')), mode=ImageReadMode.UNCHANGED)
    assert raw.dtype == torch.uint16 and raw.shape == (3, 2, 3)  # 16-bit, three channels
    assert raw[0].long().tolist() == [[32672, 32768, 32912], [39168, 0, 32769]]    # -96, 0, 144; 6400, -32768, 0.64
    assert raw[1].long().tolist() == [[32960, 32752, 32768], [26368, 65472, 32767]]  # 192, -16, 0; -6400, 32704, -1.28
    assert raw[2].long().tolist() == [[1, 0, 1], [1, 1, 0]]


def test_flow_png_round_trip(tmp_path):
    generator = torch.Generator().manual_seed(2)
    flow = (torch.rand(2, 5, 7, generator=generator) - 0.5) * 200
    valid = torch.rand(5, 7, generator=generator) > 0.3
    toyworld.write_flow_png(flow, valid, tmp_path / 'f.png')
    back, back_valid = data.read_flow(tmp_path / 'f.png')
    assert torch.equal(back_valid, valid) and (back - flow).abs().max() <= 0.5 / 64


def test_toy_scene_flow_pairs_are_where_kitti_keeps_them(toy_root):
    files = data.scene_flow_files(toy_root)
    assert len(files) >= 2 and all(p.is_file() for triple in files for p in triple)
    assert [p.name for p in files[0]] == ['000000_10.png', '000000_11.png', '000000_10.png']
    assert files[0][2].parent.name == 'flow_noc'


def test_toy_world_mapping_names_the_frames_of_its_flow_pairs(toy_root):
    mapping = splits.read_raw_mapping(toy_root / data.RAW_MAPPING)
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
    drives = splits.labelled_drives(toy_root)
    assert drives.pop(held_out) == list(range(len(flow)))
    assert drives and not any((toy_root / folder).exists() for folder in drives)  # labelled images: separate drives


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


# ----------------------------------------------------------------------------------------------
# The rendered depth and flow PNGs hold the road's geometry in KITTI's encodings, decoded here by hand
# (raw samples / 256 and (raw - 2^15) / 64), so that a writer and a reader sharing a wrong scale fail
# ----------------------------------------------------------------------------------------------

def _road_depth(pose, K, rows, cols):
    """Depth (camera z, float64 [rows, cols]) of the flat road, CAMERA_HEIGHT below the camera's centre in
    the world (y down), seen through the pixel centres (u, v) by a camera of camera-to-world `pose`: the ray
    K^-1 (u, v, 1) meets the road where its world y, (R ray)_y * z, equals the camera height."""
    v, u = torch.meshgrid(rows.double(), cols.double(), indexing='ij')
    K = K.double()
    rays = torch.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], torch.ones_like(u)])
    down = torch.einsum('j,jhw->hw', pose[1, :3].double(), rays)
    return toyworld.CAMERA_HEIGHT / down, rays


def test_toy_depth_png_holds_the_roads_depth_in_metres_times_256(toy_root):
    folder = toy_root / '2011_09_26' / '2011_09_26_drive_0001_sync'
    poses = data.read_poses(folder / 'poses.txt')
    K = toyworld.toy_intrinsics(TINY['height'], TINY['width'])
    rows, cols = torch.arange(54, 64), torch.arange(64, 128)  # the road 5-8 m ahead, in the camera's lane
    for frame in range(4):
        z, _ = _road_depth(poses[frame], K, rows, cols)
        raw = _raw_png(folder / f'proj_depth/groundtruth/image_02/{frame:010d}.png')[0, 54:64, 64:128]
        assert 5 < z.min() and z.max() < 8
        assert ((raw - 256 * z).abs() <= 0.5 + 1e-2).float().mean() > 0.9  # round(z * 256), a car aside


def test_toy_flow_png_holds_the_roads_flow_in_pixels_times_64_plus_2_15(toy_root):
    mapping = splits.read_raw_mapping(toy_root / data.RAW_MAPPING)
    K = toyworld.toy_intrinsics(TINY['height'], TINY['width']).double()
    rows, cols = torch.arange(40, 58), torch.arange(TINY['width'])
    for i, (_, _, flow_file) in enumerate(data.scene_flow_files(toy_root)):
        folder, frame = mapping[i]
        poses = data.read_poses(toy_root / folder / 'poses.txt').double()
        z, rays = _road_depth(poses[frame], K, rows, cols)
        T = torch.linalg.inv(poses[frame + 1]) @ poses[frame]  # camera at frame t -> camera at t + 1
        moved = torch.einsum('ij,jhw->ihw', T[:3, :3], rays * z) + T[:3, 3, None, None]
        u, v = (K[0, 0] * moved[0] / moved[2] + K[0, 2], K[1, 1] * moved[1] / moved[2] + K[1, 2])
        flow_u, flow_v = u - cols.double(), v - rows.double()[:, None]
        raw = _raw_png(flow_file)[:, 40:58]
        assert set(raw[2].unique().tolist()) == {0, 1}
        road = ((raw[0] - (64 * flow_u + 2 ** 15)).abs() <= 0.5 + 1e-2) & ((raw[1] - (64 * flow_v + 2 ** 15)).abs() <= 0.5 + 1e-2)
        assert (road & (raw[2] == 1)).float().mean() > 0.3  # most of the road (not kerbs, buildings or the car ahead)
        assert flow_u[road].abs().max() > 2 and flow_v[road].max() > 2  # the road streams past: not a trivial flow


# ----------------------------------------------------------------------------------------------
# The other layouts: every file the spec names, with its size, dtype and channels, and the encodings
# decoded by hand (with the spec's constants written out) against render_view of the same drive and frame
# ----------------------------------------------------------------------------------------------

LAYOUT_WORLDS = {  # tiny worlds, under a second each
    'cityscapes': dict(height=48, width=96, drives=3, frames=5, test_frames=3, labelled=5, seed=0),
    'nyu': dict(height=48, width=64, drives=2, frames=6, test_frames=3, labelled=5, seed=0),
    'folder': dict(height=48, width=64, drives=2, frames=5, test_frames=4, labelled=0, seed=0),
}
# Cityscapes label id -> NYU-40 id, the toy world's documented table: road floor, sidewalk floor mat, building
# wall, pole otherstructure, traffic sign picture, vegetation otherprop, terrain floor mat, sky ceiling,
# person person, car otherfurniture
NYU40 = {7: 2, 8: 20, 11: 1, 17: 38, 20: 11, 21: 40, 22: 20, 23: 22, 24: 31, 26: 39}


def _render_layout_world(tmp_path_factory, layout):
    root = tmp_path_factory.mktemp(layout) / 'world'
    toyworld.render_toy_world(root, layout=layout, **LAYOUT_WORLDS[layout])
    return root


@pytest.fixture(scope='module')
def cityscapes_root(tmp_path_factory):
    return _render_layout_world(tmp_path_factory, 'cityscapes')


@pytest.fixture(scope='module')
def nyu_root(tmp_path_factory):
    return _render_layout_world(tmp_path_factory, 'nyu')


@pytest.fixture(scope='module')
def folder_root(tmp_path_factory):
    return _render_layout_world(tmp_path_factory, 'folder')


def _scenes(layout):
    """The scenes the tiny world of a layout renders (toyworld.layout_scenes)."""
    counts = {key: value for key, value in LAYOUT_WORLDS[layout].items() if key not in ('height', 'width')}
    return toyworld.layout_scenes(layout, **counts)


@functools.lru_cache(maxsize=None)
def _drive(layout, name):
    """The toy Drive of a scene of a layout's tiny world, made once."""
    return toyworld.scene_drive(next(scene for scene in _scenes(layout) if scene.name == name))


@functools.lru_cache(maxsize=None)
def _view(layout, name, frame, offset=0.0):
    """The renderer's own view of a frame of a scene of a layout's tiny world: rgb, depth, label ids, moving.
    On one thread, as the renderer runs: torch's threads run several times slower on shared cores."""
    height, width = LAYOUT_WORLDS[layout]['height'], LAYOUT_WORLDS[layout]['width']
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return toyworld.render_view(_drive(layout, name), frame, toyworld.toy_intrinsics(height, width),
                                    height, width, offset)
    finally:
        torch.set_num_threads(previous)


def _decoded(path):
    """A PNG's samples as stored (uint8, or uint16 for 16-bit files), channels first."""
    return decode_png(read_file(str(path)), mode=ImageReadMode.UNCHANGED)


def _files(root):
    """Every file under root, as paths relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob('*') if p.is_file()}


def _assert_image(path, dtype, channels, layout):
    """A PNG's samples, checked to be of `dtype` with `channels` channels at the size of the layout's tiny world."""
    image = _decoded(path)
    assert image.dtype == dtype and image.shape == (channels, LAYOUT_WORLDS[layout]['height'],
                                                   LAYOUT_WORLDS[layout]['width']), path
    return image


def test_cityscapes_scenes_are_sequences_of_two_train_cities_and_a_val_city():
    scenes = _scenes('cityscapes')
    assert [(s.split, s.name) for s in scenes] == [('train', 'toyaachen_000000'), ('train', 'toybochum_000000'),
                                                   ('train', 'toyaachen_000001'), ('val', 'toyfrankfurt_000000')]
    assert [len(s.keyframes) for s in scenes] == [2, 2, 1, 3]  # --labelled 5 train images, --test-frames 3 val
    for s in scenes:  # labelled frames 25 apart, each the middle of a 5-frame snippet (--frames 5)
        assert all(b - a == 25 for a, b in zip(s.keyframes, s.keyframes[1:]))
        assert s.frames == [f + i for f in s.keyframes for i in (-2, -1, 0, 1, 2)] and s.frames[0] == 0


def test_cityscapes_files_are_named_and_stored_as_cityscapes_does(cityscapes_root):
    expected = {'toy_world.json'}
    for scene in _scenes('cityscapes'):
        city = scene.name.rsplit('_', 1)[0]
        expected |= {f'leftImg8bit_sequence/{scene.split}/{city}/{scene.name}_{f:06d}_leftImg8bit.png'
                     for f in scene.frames}
        for f in scene.keyframes:
            stem = f'{scene.split}/{city}/{scene.name}_{f:06d}'
            expected |= {f'leftImg8bit/{stem}_leftImg8bit.png', f'rightImg8bit/{stem}_rightImg8bit.png',
                         f'gtFine/{stem}_gtFine_labelIds.png', f'disparity/{stem}_disparity.png',
                         f'camera/{stem}_camera.json'}
    assert _files(cityscapes_root) == expected
    pattern = re.compile(r'(leftImg8bit|rightImg8bit|gtFine|disparity|camera|leftImg8bit_sequence)/(train|val)/'
                         r'(toy[a-z]+)/\3_\d{6}_\d{6}_[A-Za-z0-9_]+\.(png|json)')
    assert all(pattern.fullmatch(name) for name in expected - {'toy_world.json'})
    for name in expected:
        kind = name.split('/')[0]
        if kind in ('leftImg8bit', 'rightImg8bit', 'leftImg8bit_sequence'):
            _assert_image(cityscapes_root / name, torch.uint8, 3, 'cityscapes')  # RGB 8-bit
        elif kind == 'gtFine':
            _assert_image(cityscapes_root / name, torch.uint8, 1, 'cityscapes')  # label ids, 8-bit grey
        elif kind == 'disparity':
            _assert_image(cityscapes_root / name, torch.uint16, 1, 'cityscapes')  # 16-bit grey
    meta = json.loads((cityscapes_root / 'toy_world.json').read_text())
    assert meta == dict(LAYOUT_WORLDS['cityscapes'], version=toyworld.TOY_WORLD_VERSION, layout='cityscapes')


def test_cityscapes_images_labels_and_snippets_are_the_rendered_views(cityscapes_root):
    for scene in _scenes('cityscapes'):
        city = scene.name.rsplit('_', 1)[0]
        snippet = sorted((cityscapes_root / 'leftImg8bit_sequence' / scene.split / city).glob(f'{scene.name}_*'))
        assert [int(p.name.split('_')[2]) for p in snippet] == scene.frames  # sorted by name: frame after frame
        for path, f in zip(snippet, scene.frames):
            assert torch.equal(_decoded(path), _view('cityscapes', scene.name, f)[0])
        for f in scene.keyframes:
            rgb, _, label, _ = _view('cityscapes', scene.name, f)
            stem = f'{scene.split}/{city}/{scene.name}_{f:06d}'
            assert torch.equal(_decoded(cityscapes_root / f'leftImg8bit/{stem}_leftImg8bit.png'), rgb)
            assert torch.equal(_decoded(cityscapes_root / f'gtFine/{stem}_gtFine_labelIds.png')[0], label)
            right = _view('cityscapes', scene.name, f, offset=0.22)[0]  # the right camera, 0.22 m to the right
            assert torch.equal(_decoded(cityscapes_root / f'rightImg8bit/{stem}_rightImg8bit.png'), right)
            assert not torch.equal(right, rgb)


def test_cityscapes_disparity_png_decodes_to_the_rendered_depth(cityscapes_root):
    """p = 0: invalid (sky); else d = (p - 1) / 256 pixels and depth = baseline * fx / d, the rendered depth
    within the error of d's rounding to 1/256 px: |d - exact| <= 1/512, so
    |depth' - depth| <= depth' depth / (baseline fx) / 512."""
    bf = 0.22 * toyworld.toy_intrinsics(48, 96)[0, 0].double()
    seen = torch.zeros(2, dtype=torch.bool)
    for scene in _scenes('cityscapes'):
        city = scene.name.rsplit('_', 1)[0]
        for f in scene.keyframes:
            p = _decoded(cityscapes_root / f'disparity/{scene.split}/{city}/{scene.name}_{f:06d}_disparity.png')[0]
            depth = _view('cityscapes', scene.name, f)[1].double()
            sky = depth == 0
            assert torch.equal(p == 0, sky)
            d = (p[~sky].double() - 1) / 256
            decoded = bf / d
            assert ((decoded - depth[~sky]).abs() <= decoded * depth[~sky] / bf * (0.5 / 256 + 1e-6)).all()
            seen |= torch.stack([sky.any(), (d > 2).any()])
    assert seen.all()  # sky, and near surfaces of large disparity (where scale errors show most)


def test_cityscapes_camera_files_hold_the_toy_intrinsics_and_baseline(cityscapes_root):
    K = toyworld.toy_intrinsics(48, 96)
    files = sorted(cityscapes_root.glob('camera/*/*/*_camera.json'))
    assert len(files) == 5 + 3
    for path in files:
        camera = json.loads(path.read_text())
        assert set(camera['extrinsic']) == {'baseline', 'pitch', 'roll', 'x', 'y', 'yaw', 'z'}
        assert camera['extrinsic']['baseline'] == 0.22
        intrinsic = camera['intrinsic']
        values = torch.tensor([intrinsic[k] for k in ('fx', 'fy', 'u0', 'v0')], dtype=torch.float64)
        assert torch.equal(values, K[[0, 1, 0, 1], [0, 1, 2, 2]].double())


def _nyu_files():
    """What the tiny NYU world must hold, by the spec: sync/ frames numbered by frame, and the labelled images
    numbered 1, 2, ... over the world (train scenes first), test images in both official_splits/ and labelled/."""
    expected, index = {'toy_world.json'}, 0
    for scene in _scenes('nyu'):
        for f in scene.frames:
            if scene.split == 'train':
                expected |= {f'sync/{scene.name}/rgb_{f:05d}.jpg', f'sync/{scene.name}/sync_depth_{f:05d}.png'}
            if f in scene.keyframes:
                index += 1
                expected |= {f'labelled/{scene.split}/{kind}_{index:05d}.png' for kind in ('rgb', 'labels40')}
            if scene.split == 'test':
                expected |= {f'official_splits/test/{scene.name}/rgb_{index:05d}.jpg',
                             f'official_splits/test/{scene.name}/sync_depth_{index:05d}.png'}
    return expected


def test_nyu_files_are_named_and_stored_as_the_extracted_nyu_depth_v2(nyu_root):
    scenes = _scenes('nyu')
    assert [(s.split, s.name) for s in scenes] == [('train', 'toyroom_0001'), ('train', 'toyroom_0002'),
                                                   ('test', 'toyroom_0003')]
    assert [s.keyframes for s in scenes] == [[0, 1, 2], [0, 1], [0, 25, 50]]  # labelled/train: near duplicates
    assert _files(nyu_root) == _nyu_files()
    assert [len(list(nyu_root.glob(f'labelled/{split}/rgb_*.png'))) for split in ('train', 'test')] == [5, 3]
    for path in nyu_root.rglob('*.jpg'):
        image = decode_jpeg(read_file(str(path)))
        assert image.dtype == torch.uint8 and image.shape == (3, 48, 64)
    for path in nyu_root.rglob('sync_depth_*.png'):
        _assert_image(path, torch.uint16, 1, 'nyu')
    for path in nyu_root.glob('labelled/*/*.png'):
        _assert_image(path, torch.uint8, 3 if path.name.startswith('rgb_') else 1, 'nyu')


def _nyu_frames(root):
    """Every frame of the tiny NYU world with its files: (scene, frame, JPEG, depth PNG, and for a labelled
    image its labelled/ folder and number, else None)."""
    frames, index = [], 0
    for scene in _scenes('nyu'):
        for f in scene.frames:
            index += f in scene.keyframes
            number = f if scene.split == 'train' else index
            folder = root / ('sync' if scene.split == 'train' else 'official_splits/test') / scene.name
            labelled = (root / 'labelled' / scene.split, f'{index:05d}') if f in scene.keyframes else None
            frames.append((scene, f, folder / f'rgb_{number:05d}.jpg', folder / f'sync_depth_{number:05d}.png',
                           labelled))
    return frames


def test_nyu_depth_png_holds_millimetres_and_none_beyond_10_m(nyu_root):
    near_and_far = torch.zeros(2, dtype=torch.bool)
    for scene, f, _, depth_file, _ in _nyu_frames(nyu_root):
        raw = _decoded(depth_file)[0].long()
        depth = _view('nyu', scene.name, f)[1].double()
        measured = (depth > 0) & (depth <= 10)
        assert (raw[~measured] == 0).all()  # sky, and beyond the Kinect's 10 m
        assert ((raw[measured] - 1000 * depth[measured]).abs() <= 0.5 + 1e-3).all()  # round(depth * 1000)
        near_and_far |= torch.stack([(measured & (depth > 9)).any(), (depth > 10).any()])
    assert near_and_far.all()


def test_nyu_frames_are_the_rendered_views_and_labels40_their_mapped_ids(nyu_root):
    lookup = torch.zeros(256, dtype=torch.long)
    lookup[list(NYU40)] = torch.tensor(list(NYU40.values()))
    for scene, f, jpeg, _, labelled in _nyu_frames(nyu_root):
        rgb, _, label, _ = _view('nyu', scene.name, f)
        assert jpeg.read_bytes() == encode_jpeg(rgb, quality=95).numpy().tobytes()  # torchvision's, quality 95
        if labelled:
            folder, number = labelled
            assert torch.equal(_decoded(folder / f'rgb_{number}.png'), rgb)
            assert torch.equal(_decoded(folder / f'labels40_{number}.png')[0].long(), lookup[label.long()])
    labels = torch.cat([_decoded(p).flatten() for p in nyu_root.glob('labelled/*/labels40_*.png')])
    assert {1, 2, 22} <= set(labels.unique().tolist()) <= set(NYU40.values())  # wall, floor and ceiling at least


def test_folder_files_are_sequences_rgbd_pairs_and_intrinsics(folder_root):
    scenes = _scenes('folder')
    assert [(s.split, s.name, s.frames) for s in scenes] == [('video', 'seq_000', list(range(5))),
                                                             ('video', 'seq_001', list(range(5))),
                                                             ('rgbd', 'scene_000', list(range(4)))]
    expected = {'toy_world.json', 'intrinsics.txt'}
    expected |= {f'seq_{k:03d}/{f:06d}.png' for k in range(2) for f in range(5)}
    expected |= {f'rgbd/scene_000_{f:06d}_{kind}' for f in range(4) for kind in ('rgb.png', 'depth.npy')}
    assert _files(folder_root) == expected  # one depth format, .npy: no _depth.png
    K = toyworld.toy_intrinsics(48, 64)
    fx, fy, cx, cy = map(float, (folder_root / 'intrinsics.txt').read_text().split())
    assert torch.equal(torch.tensor([fx, fy, cx, cy], dtype=torch.float64), K[[0, 1, 0, 1], [0, 1, 2, 2]].double())


def test_folder_sequences_and_rgbd_pairs_are_the_rendered_views(folder_root):
    *videos, rgbd = _scenes('folder')
    for video in videos:
        images = sorted((folder_root / video.name).glob('*.png'))
        for f, path in enumerate(images):  # sorted by name: consecutive frames
            assert torch.equal(_assert_image(path, torch.uint8, 3, 'folder'), _view('folder', video.name, f)[0])
    for f in rgbd.frames:
        rgb, depth, _, _ = _view('folder', rgbd.name, f)
        assert torch.equal(_decoded(folder_root / f'rgbd/scene_000_{f:06d}_rgb.png'), rgb)
        stored = np.load(folder_root / f'rgbd/scene_000_{f:06d}_depth.npy')
        assert stored.dtype == np.float32 and stored.shape == (48, 64)
        assert np.array_equal(stored, depth.numpy()) and (stored == 0).any() and (stored > 0).any()


@pytest.mark.parametrize('layout', ['cityscapes', 'nyu', 'folder'])
def test_each_layout_renders_the_same_files_for_a_seed_with_a_progress_bar(tmp_path, capsys, layout):
    small = dict(height=32, width=48, drives=1, frames=3, test_frames=2, labelled=2)
    toyworld.render_toy_world(tmp_path / 'a', layout=layout, **small)
    toyworld.render_toy_world(tmp_path / 'b', layout=layout, **small, threads=2)
    total = sum(len(scene.frames) for scene in toyworld.layout_scenes(layout, 1, 3, 2, 2, 0))
    assert f'{total}/{total}' in capsys.readouterr().err
    files = sorted(_files(tmp_path / 'a'))
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / 'a', tmp_path / 'b', files, shallow=False)
    assert len(match) == len(files) > 5 and sorted(_files(tmp_path / 'b')) == files
    assert json.loads((tmp_path / 'a' / 'toy_world.json').read_text())['layout'] == layout
    toyworld.render_toy_world(tmp_path / 'c', layout=layout, **small, seed=1)
    image = next(name for name in files if name.endswith('.png'))
    assert (tmp_path / 'a' / image).read_bytes() != (tmp_path / 'c' / image).read_bytes()


def test_an_interrupted_layout_render_leaves_no_temporary_world(tmp_path, monkeypatch):
    calls, render_view = [], toyworld.render_view
    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return render_view(*args, **kwargs)
    monkeypatch.setattr(toyworld, 'render_view', interrupted)
    with pytest.raises(KeyboardInterrupt):
        toyworld.render_toy_world(tmp_path / 'world', height=32, width=48, drives=1, frames=4, layout='folder')
    assert list(tmp_path.iterdir()) == []


def test_the_cli_renders_a_layout_at_its_default_size_and_counts(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(toyworld, '_render_layout', lambda layout, root, *args: root.mkdir())  # no frames
    for layout, size in (('cityscapes', (96, 192)), ('nyu', (96, 128)), ('folder', (96, 128))):
        toyworld.main([str(tmp_path / layout), '--layout', layout])
        meta = json.loads((tmp_path / layout / 'toy_world.json').read_text())
        assert meta['layout'] == layout and (meta['height'], meta['width']) == size
        assert {key: meta[key] for key in toyworld.LAYOUT_DEFAULTS[layout]} == toyworld.LAYOUT_DEFAULTS[layout]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        toyworld.main(['--help'])
    help_text = capsys.readouterr().out
    assert all(f'--layout {layout} (default --height' in help_text for layout in toyworld.LAYOUT_DEFAULTS)


def test_ensure_toy_world_refuses_a_world_of_another_layout(tmp_path):
    world = tmp_path / 'world'
    world.mkdir()
    (world / 'toy_world.json').write_text(json.dumps({'version': toyworld.TOY_WORLD_VERSION}))  # no layout: KITTI's
    with pytest.raises(SystemExit, match=r'holds a toy world in the kitti layout, not the nyu layout asked for: '
                                         r'pass another folder .* or delete this one \(rm -r .*world\)\.$'):
        toyworld.ensure_toy_world(world, layout='nyu')
    toyworld.ensure_toy_world(world)  # KITTI's, asked for: reused as it is
    (world / 'toy_world.json').write_text(json.dumps({'version': toyworld.TOY_WORLD_VERSION, 'layout': 'cityscapes'}))
    with pytest.raises(SystemExit, match='in the cityscapes layout, not the kitti layout'):
        toyworld.ensure_toy_world(world)
    toyworld.ensure_toy_world(world, layout='cityscapes')
    toyworld.ensure_toy_world(tmp_path / 'new', layout='folder', height=32, width=48, drives=1, frames=2, test_frames=1)
    assert json.loads((tmp_path / 'new' / 'toy_world.json').read_text())['layout'] == 'folder'
