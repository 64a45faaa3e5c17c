"""Where images come from and what their labels mean: the class tables, readers of each dataset's real
on-disk layout, the datasets built on them, and a layout class per --data.

The same code reads the real datasets and the toy world (toyworld.py writes each layout), so every code
path the experiments use on a GPU machine is exercised on a laptop.

Contents, top to bottom (after two helpers every script uses: UnreadableFile, the one sentence of a data
file that cannot be read, and `unwritable`, why no file can be written into a folder):
  1. the classes: Cityscapes' label ids -> its 19 train ids, their names, colours and the 7 representative
     ones; NYU-Depth-V2's 40 classes and colours; CLASS_SETS (a layout's `classes`) and num_classes;
  2. reading the KITTI layout: a split line's side -> camera (KITTI_CAMERAS, camera_folder), calibration,
     images, depth (annotated maps and velodyne scans), labels (label ids -> train ids), flow, split files;
  3. reading the other layouts: Cityscapes (disparity -> depth through the camera file), NYU-Depth-V2
     (millimetre depth, NYU-40 labels), a folder of your own (intrinsics.txt, .npy / .png depth);
  4. datasets, for any layout: video snippets (self-supervised or ground-truth depth), test frames with
     the ground truth of an evaluation protocol, labelled images for few-shot segmentation, KITTI's
     flow pairs; the few-shot pick;
  5. layouts: what each dataset's splits hold (Kitti, Cityscapes, Nyu, Folder; LAYOUTS by --data);
  6. the run's data: --data and --data-root to a layout (the toy world rendered on first use), and
     datasets that stop the run with their one sentence when they cannot be built.

Split files are written by the split tool in splits.py (KITTI by drive, random, or by image similarity); its
command stays `python data.py --make-splits ROOT`, which this file hands over to splits.main.

Coordinates: camera x right, y down, z forward; depth is the z coordinate in metres; pixel centres sit
at integer (u, v).
"""
import colorsys
import functools
import json
import os
import struct
import tempfile
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_image, decode_png, read_file
from torchvision.transforms import v2
from torchvision import tv_tensors

# torchvision 0.29 announces that its image codecs will move to TorchCodec; they work, and the
# design keeps to torchvision, so the notice is silenced rather than printed once per image.
warnings.filterwarnings('ignore', message='The image decoding and encoding capabilities of TorchVision')


class UnreadableFile(ValueError):
    """A data file that an item needs is missing or cannot be read; the message is its reader's one sentence
    naming the file. What reads_files raises, so a script can stop with that sentence wherever the item was
    read: while training, sampling or evaluating, in this process or in a DataLoader worker."""


def reads_files(read):
    """`read` (a dataset's __getitem__, or any function reading data files as it goes) with its readers'
    one-sentence errors (FileNotFoundError, ValueError) raised as UnreadableFile."""
    @functools.wraps(read)
    def reading(*args, **kwargs):
        try:
            return read(*args, **kwargs)
        except UnreadableFile:
            raise
        except (FileNotFoundError, ValueError) as error:
            raise UnreadableFile(str(error)) from error
    return reading


def reader_sentence(error):
    """The reader's sentence of an UnreadableFile: a DataLoader worker's copy wraps it in the worker's
    traceback (whose last line is "data.UnreadableFile: <sentence>"), which is left out."""
    message = str(error).strip()
    return message.splitlines()[-1].partition(': ')[2] if '\n' in message else message


def unwritable(folder):
    """Why no file can be written into `folder` (to be made where it is missing), or None where one can: the
    first folder of its path that exists is tried with a temporary file, which also finds a read-only file
    system (root may write into any folder, but not onto those) or a file in the way."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        return f'{existing} is a file, not a folder'
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as error:
        return f'{existing}: {error.strerror}'
    return None




# ----------------------------------------------------------------------------------------------
# 1. The classes: what the labels mean
# ----------------------------------------------------------------------------------------------
# Label maps are read as train ids 0..K-1 (255 = ignore) of one of two class sets, CLASS_SETS by a layout's
# `classes`: Cityscapes' 19 (KITTI's and Cityscapes' maps hold Cityscapes label ids) or NYU-Depth-V2's 40.

# Cityscapes label id -> train id (19 classes); every other id is ignored (255).
LABEL_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                     24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
# The same as a table indexed by label id (read_labels).
_TRAIN_ID_LOOKUP = torch.full((256,), 255, dtype=torch.long)
for _label_id, _train_id in LABEL_TO_TRAIN_ID.items():
    _TRAIN_ID_LOOKUP[_label_id] = _train_id
# Cityscapes' 19 classes, by train id.
CITYSCAPES_CLASSES = ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light', 'traffic sign',
                      'vegetation', 'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train',
                      'motorcycle', 'bicycle')
# The 7 representative classes of the depth pre-training paper's mIoU (App. B.2; evaluate.segmentation_metrics).
REPRESENTATIVE_CLASSES = ('road', 'sidewalk', 'building', 'vegetation', 'terrain', 'sky', 'car')
REPRESENTATIVE_IDS = tuple(CITYSCAPES_CLASSES.index(name) for name in REPRESENTATIVE_CLASSES)
# Cityscapes' colours for the 19 train ids, and black for ignored pixels.
CITYSCAPES_PALETTE = ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
                      (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
                      (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
                      (0, 80, 100), (0, 0, 230), (119, 11, 32))
# NYU-Depth-V2's 40 classes (Gupta et al., 2013), train ids 0..39 (stored 1..40, 0 unlabelled).
NYU40_CLASSES = ('wall', 'floor', 'cabinet', 'bed', 'chair', 'sofa', 'table', 'door', 'window', 'bookshelf',
                 'picture', 'counter', 'blinds', 'desk', 'shelves', 'curtain', 'dresser', 'pillow', 'mirror',
                 'floor mat', 'clothes', 'ceiling', 'books', 'refridgerator', 'television', 'paper', 'towel',
                 'shower curtain', 'box', 'whiteboard', 'person', 'night stand', 'toilet', 'sink', 'lamp',
                 'bathtub', 'bag', 'otherstructure', 'otherfurniture', 'otherprop')
# 40 colours far apart: hues by the golden ratio, alternating saturation and value.
NYU40_PALETTE = tuple(tuple(int(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1, 0.9 - 0.3 * (i % 2),
                                                                       1.0 - 0.25 * (i % 3)))
                      for i in range(len(NYU40_CLASSES)))
CLASS_SETS = {'cityscapes': (CITYSCAPES_CLASSES, CITYSCAPES_PALETTE), 'nyu40': (NYU40_CLASSES, NYU40_PALETTE)}


def num_classes(class_set):
    """How many classes a class set (a key of CLASS_SETS) holds: the outputs of a segmentation head."""
    return len(CLASS_SETS[class_set][0])


# ----------------------------------------------------------------------------------------------
# 2. Reading the KITTI layout (real KITTI and the toy world alike)
# ----------------------------------------------------------------------------------------------

RAW_MAPPING = 'data_scene_flow/devkit/mapping/train_mapping.txt'  # KITTI's devkit_scene_flow.zip, extracted
# The side of a split line ("<date>/<drive> <frame> l|r") -> KITTI's colour camera: l the left (02), r the right (03).
KITTI_CAMERAS = {'l': '02', 'r': '03'}
OTHER_SIDE = {'l': 'r', 'r': 'l'}


def camera_folder(side):
    """image_02 or image_03: the folder of a side's camera in a raw drive (and in its depth maps)."""
    return f'image_{KITTI_CAMERAS[side]}'


def read_calib(path):
    """calib_cam_to_cam.txt -> {name: float array}; non-numeric entries (calib_time) are skipped."""
    if not Path(path).is_file():
        raise FileNotFoundError(f'no calibration file at {path}: KITTI raw keeps calib_cam_to_cam.txt '
                                f'in each date folder (<root>/<date>/); extract the calibration archive there.')
    return read_calib_text(Path(path).read_text())


def read_calib_text(text):
    """Parse KITTI calibration text 'name: numbers' into {name: float array}."""
    calib = {}
    for line in text.splitlines():
        key, _, value = line.partition(':')
        try:
            calib[key.strip()] = np.array([float(x) for x in value.split()])
        except ValueError:
            continue
    return calib


def camera_intrinsics(calib, camera=KITTI_CAMERAS['l']):
    """(K [3, 3], (height, width)) of a rectified camera, from P_rect_xx and S_rect_xx."""
    P = calib[f'P_rect_{camera}'].reshape(3, 4)
    width, height = calib[f'S_rect_{camera}']
    return torch.tensor(P[:, :3], dtype=torch.float32), (int(round(height)), int(round(width)))


def stereo_baseline(calib):
    """Distance in metres from camera 02 to camera 03 (P_rect[0, 3] = -fx * camera position)."""
    P2, P3 = (calib[f'P_rect_{KITTI_CAMERAS[side]}'].reshape(3, 4) for side in 'lr')
    return float((P2[0, 3] - P3[0, 3]) / P2[0, 0])


def scale_intrinsics(K, size, new_size):
    """4x4 intrinsics for an image resized from `size` to `new_size` (height, width).

    With pixel centres at integer coordinates, resizing by s maps u to (u + 0.5) s - 0.5, so the
    principal point moves by half a pixel more than a plain multiplication would say.
    """
    sy, sx = new_size[0] / size[0], new_size[1] / size[1]
    out = torch.eye(4)
    out[0, 0], out[1, 1] = K[0, 0] * sx, K[1, 1] * sy
    out[0, 2], out[1, 2] = (K[0, 2] + 0.5) * sx - 0.5, (K[1, 2] + 0.5) * sy - 0.5
    return out


class PngKind(NamedTuple):
    """What a file the readers decode must be, and the words its sentences use."""
    what: str  # what it is ('depth map')
    colour: int  # PNG colour type: 0 single-channel, 2 RGB; None: any (images)
    bits: int  # bit depth; None: any
    where: str  # where the dataset keeps it
    form: str  # what the format is, for a file of another bit depth or channel count


PNG_KINDS = {
    'image': PngKind('image', None, None, 'check --data-root and that the KITTI archives are extracted in their '
                     'original layout', None),
    'depth': PngKind('depth map', 0, 16, "KITTI's depth archive keeps one per frame in "
                     'proj_depth/groundtruth/image_0x/', 'KITTI depth maps are 16-bit single-channel PNGs (metres x '
                     '256, 0 = no measurement): use the maps of data_depth_annotated (proj_depth/groundtruth/), not '
                     'images'),
    'labels': PngKind('label map', 0, 8, 'KITTI semantics keeps one per image in data_semantics/training/semantic/, '
                      'Cityscapes in gtFine/<split>/<city>/', "label maps are 8-bit single-channel PNGs of label ids "
                      "(KITTI's instance/ PNGs are 16-bit: use the semantic/ folder; Cityscapes: the *_labelIds.png)"),
    'flow': PngKind('flow map', 2, 16, 'KITTI keeps one per pair in data_scene_flow/training/flow_noc/',
                    'KITTI flow maps are 16-bit 3-channel PNGs (u, v, valid): use those of '
                    'data_scene_flow/training/flow_noc/'),
    'disparity': PngKind('disparity map', 0, 16, 'Cityscapes keeps one per frame in disparity/<split>/<city>/',
                         'Cityscapes disparity maps are 16-bit single-channel PNGs ((p - 1) / 256 pixels, '
                         '0 = invalid)'),
    'nyu depth': PngKind('depth map', 0, 16, 'the extracted NYU-Depth-V2 keeps sync_depth_XXXXX.png beside each '
                         'rgb_XXXXX.jpg', 'NYU depth maps are 16-bit single-channel PNGs of millimetres'),
    'labels40': PngKind('label map', 0, 8, 'labelled/<split>/labels40_XXXXX.png beside each rgb_XXXXX.png',
                        'NYU-40 label maps are 8-bit single-channel PNGs (0 unlabelled, 1..40)'),
    'depth png': PngKind('depth map', 0, 16, 'a folder keeps <name>_depth.png (or .npy) beside each <name>_rgb image',
                         'PNG depth maps are 16-bit single-channel PNGs (value x --depth-scale = metres)'),
}
_PNG_LAYOUTS = {0: 'single-channel', 2: '3-channel (RGB)', 3: 'palette', 4: '2-channel (grey + alpha)',
                6: '4-channel (RGBA)'}


def check_png(path, kind):
    """(height, width) of an image, depth, label or flow PNG (`kind`, a key of PNG_KINDS), read from its
    header without decoding; a missing file, a file that is not a PNG, or a PNG of another bit depth or
    channel count stops with one sentence naming the file."""
    png = PNG_KINDS[kind]
    if not Path(path).is_file():
        raise FileNotFoundError(f'no such file: {png.what} {path}; {png.where}.')
    with open(path, 'rb') as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b'\x89PNG\r\n\x1a\n' or head[12:16] != b'IHDR':
        raise ValueError(f'{png.what} {path} is not a PNG file and cannot be decoded: re-extract it from its archive.')
    width, height, found_bits, found_colour = struct.unpack('>IIBB', head[16:26])
    if png.colour is not None and (found_colour, found_bits) != (png.colour, png.bits):
        layout = _PNG_LAYOUTS.get(found_colour, f'colour type {found_colour}')
        raise ValueError(f'{png.what} {path} holds {found_bits}-bit {layout} pixels, but {png.form}.')
    return height, width


def read_png(path, kind):
    """A depth, label or flow PNG (`kind`, a key of PNG_KINDS), checked by check_png and decoded as
    stored: uint8 or uint16 [C, H, W]; a file that cannot be decoded stops with one sentence."""
    check_png(path, kind)
    return _decode(path, lambda raw: decode_png(raw, mode=ImageReadMode.UNCHANGED),
                   f'{PNG_KINDS[kind].what} {path} cannot be decoded')


def read_image(path):
    """An RGB image as stored, uint8 [3, H, W] (PNG or JPEG) or uint16 for a 16-bit PNG (unit_range scales
    either to [0, 1]), with one sentence for a missing or corrupt file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f'no such file: image {path}; {PNG_KINDS["image"].where}.')
    return _decode(path, lambda raw: decode_image(raw, mode=ImageReadMode.RGB),
                   f'{path} is not a PNG or JPEG image that can be decoded')


def unit_range(image):
    """An image of integers as float32 in [0, 1], divided by the largest value of its bit depth: 255 for
    8-bit files, 65535 for 16-bit PNGs (which /255 would carry up to 257)."""
    return v2.functional.to_dtype(image, torch.float32, scale=True)


def _decode(path, decode, what):
    """`decode` of the file's bytes; a truncated or corrupt file stops with `what` and what to do."""
    try:
        return decode(read_file(str(path)))
    except RuntimeError:
        raise ValueError(f'{what}: the file is truncated or corrupt; re-extract it from its archive.') from None


def read_depth(path):
    """KITTI ground-truth depth PNG (uint16, metres * 256, 0 = none) -> float [1, H, W] metres."""
    return read_png(path, 'depth').float() / 256.0


def read_flow(path):
    """KITTI flow PNG (uint16 RGB: u * 64 + 2^15, v * 64 + 2^15, valid) -> flow float [2, H, W] in
    pixels and valid bool [H, W]."""
    raw = read_png(path, 'flow').int()
    return (raw[:2].float() - 2 ** 15) / 64, raw[2] > 0


def read_labels(path):
    """A Cityscapes label-id PNG (8-bit, single channel) -> int64 [H, W] of the 19 train ids, 255 = ignore.
    A value no label id has (above 33: the 255 of a map of train ids, *_labelTrainIds.png) stops with one
    sentence: read as label ids, train ids would scramble the classes."""
    labels = read_png(path, 'labels')[0].long()
    if labels.max() > max(LABEL_TO_TRAIN_ID):
        raise ValueError(f'label map {path} holds the value {int(labels.max())}, but Cityscapes label ids run from 0 '
                         f'to {max(LABEL_TO_TRAIN_ID)}: it holds train ids (0-18, 255 = ignore; a '
                         f'*_gtFine_labelTrainIds.png?); give the *_gtFine_labelIds.png maps, which are turned into '
                         f'train ids here.')
    return _TRAIN_ID_LOOKUP[labels]


def check_pair(image_file, other_file, kind):
    """Check the headers of an image PNG and of its label or flow map (`kind`), which must line up
    pixel for pixel: a different size stops with one sentence giving both sizes and both files."""
    (h, w), (oh, ow) = check_png(image_file, 'image'), check_png(other_file, kind)
    if (h, w) != (oh, ow):
        raise ValueError(f'{PNG_KINDS[kind].what} {other_file} is {ow}x{oh} but its image {image_file} is {w}x{h}: '
                         f'they must match pixel for pixel, so one of them belongs to another frame or '
                         f'download; replace it with its true partner.')


def read_split(root, split, split_dir=None):
    """Lines '<date>/<drive folder> <frame> <l|r>' of <split_dir>/<split>_files.txt (default split_dir:
    <root>/splits), each distinct and in no other split (split_lines). Monodepth2's split folders
    (splits/eigen_zhou, splits/eigen, ...) are read as they are."""
    path = Path(split_dir or Path(root) / 'splits') / f'{split}_files.txt'
    if not path.is_file():
        raise FileNotFoundError(f'no split file {path}: put the split lists (lines "<date>/<drive> <frame> l") in '
                                f'<data-root>/splits/ (e.g. `python data.py --make-splits <data-root>`), or point '
                                f'--split / --eval-split at a folder holding {split}_files.txt.')
    return split_lines(path, _kitti_split_entry)


def _kitti_split_entry(line, number, path):
    """(folder, frame, side) of a KITTI split line; a line of another form stops with one sentence."""
    fields = line.split()
    if len(fields) != 3 or not fields[1].isdigit() or fields[2] not in ('l', 'r'):
        raise ValueError(f'line {number} of split file {path} reads "{line.strip()}", but each line must '
                         f'be "<date>/<drive> <frame> l|r" (e.g. "2011_09_26/2011_09_26_drive_0002_sync 5 l").')
    return fields[0], int(fields[1]), fields[2]


SPLITS = ('train', 'val', 'test')


def split_lines(path, parse):
    """The items of a split file, `parse(line, number, path)` of each non-empty line. A split file lists each
    item once, and no item of another split file beside it (train, val, test): an item listed twice
    counts twice, and one in two splits is scored on images it trained on. Either stops with one sentence
    naming both lines."""
    lines = _parsed_lines(path, parse)
    first = {}
    for number, line, item in lines:
        if item in first:
            raise ValueError(f'lines {first[item][0]} and {number} of split file {path} both list "{line}": an item '
                             f'listed twice counts twice; delete one of them.')
        first[item] = number, line
    for split in SPLITS:
        other = path.with_name(f'{split}_files.txt')
        if other.name != path.name and other.is_file():
            for number, line, item in _parsed_lines(other, parse):
                if item in first:
                    raise ValueError(f'line {first[item][0]} of split file {path} ("{first[item][1]}") is also line '
                                     f'{number} of {other}: an item in two splits is scored on what it trained on; '
                                     f'keep it in one of them.')
    return [item for _, _, item in lines]


def _parsed_lines(path, parse):
    """(line number, line, parse(line, number, path)) of a split file's non-empty lines."""
    return [(number, line.strip(), parse(line, number, path))
            for number, line in enumerate(read_split_lines(path), 1) if line.strip()]


def read_split_lines(path):
    """The lines of a split file; a UTF-8 byte-order mark (Windows editors write one) is not part of its
    first line."""
    return Path(path).read_text(encoding='utf-8-sig').splitlines()


def read_poses(path):
    """poses.txt (KITTI odometry format: a row-major 3x4 camera-to-world matrix per line) -> [N, 4, 4]."""
    rows = torch.tensor(np.loadtxt(path, ndmin=2), dtype=torch.float32)
    poses = torch.eye(4).repeat(len(rows), 1, 1)
    poses[:, :3] = rows.reshape(-1, 3, 4)
    return poses


def image_path(root, folder, frame, side='l'):
    """Where KITTI raw keeps a frame: image_02 is the left colour camera, image_03 the right."""
    path = Path(root) / folder / camera_folder(side) / 'data' / f'{frame:010d}.png'
    return path if path.exists() or not path.with_suffix('.jpg').exists() else path.with_suffix('.jpg')


def depth_path(root, folder, frame, side='l'):
    """Ground-truth depth: inside the raw drive folder, or where KITTI's depth archive puts it
    (<root>/data_depth_annotated/{train,val}/<drive>/proj_depth/groundtruth/image_0x/)."""
    tail = Path('proj_depth/groundtruth') / camera_folder(side) / f'{frame:010d}.png'
    drive = Path(folder).name
    candidates = [Path(root) / folder / tail] + [Path(root) / 'data_depth_annotated' / part / drive / tail
                                                 for part in ('train', 'val')]
    for path in candidates:
        if path.exists():
            return path
    return candidates[0]


def velodyne_path(root, folder, frame):
    """Where KITTI raw keeps a frame's velodyne scan (the Eigen split's ground truth)."""
    return Path(root) / folder / 'velodyne_points' / 'data' / f'{frame:010d}.bin'


def _calib_entry(calib, key, path, count):
    """calib[key] as a float64 array of `count` numbers; a missing or short entry stops with one sentence."""
    if key not in calib or calib[key].size != count:
        raise ValueError(f'calibration file {path} has no "{key}:" line of {count} numbers, which the velodyne '
                         f'projection needs: it is not KITTI\'s calibration text (or not for this camera); '
                         f'replace it with the one from the date\'s calibration archive.')
    return calib[key]


def velodyne_to_image(calib_dir, camera=KITTI_CAMERAS['l']):
    """(3x4 float64 matrix taking homogeneous velodyne points to camera `camera`'s image, (height,
    width) of its rectified images), from <calib_dir>/calib_cam_to_cam.txt and calib_velo_to_cam.txt:
    P_rect_xx @ R_rect_00 (as 4x4) @ [R | T]. [R | T] takes the velodyne's frame to camera 0's,
    R_rect_00 rectifies camera 0 (every rectified camera shares its orientation), and P_rect_xx projects
    from there, its fourth column holding camera xx's offset along the rig."""
    cam_file, velo_file = Path(calib_dir) / 'calib_cam_to_cam.txt', Path(calib_dir) / 'calib_velo_to_cam.txt'
    cam = read_calib(cam_file)
    if not velo_file.is_file():
        raise FileNotFoundError(f'no calibration file at {velo_file}: KITTI raw keeps calib_velo_to_cam.txt beside '
                                f'calib_cam_to_cam.txt in each date folder (<root>/<date>/); extract the '
                                f'calibration archive there.')
    velo = read_calib_text(velo_file.read_text())
    velo_to_cam = np.eye(4)
    velo_to_cam[:3, :3] = _calib_entry(velo, 'R', velo_file, 9).reshape(3, 3)
    velo_to_cam[:3, 3] = _calib_entry(velo, 'T', velo_file, 3)
    rectify = np.eye(4)
    rectify[:3, :3] = _calib_entry(cam, 'R_rect_00', cam_file, 9).reshape(3, 3)
    P = _calib_entry(cam, f'P_rect_{camera}', cam_file, 12).reshape(3, 4)
    width, height = _calib_entry(cam, f'S_rect_{camera}', cam_file, 2)
    return torch.from_numpy(P @ rectify @ velo_to_cam), (int(round(height)), int(round(width)))


def read_velodyne_depth(calib_dir, velo_path, camera=KITTI_CAMERAS['l']):
    """A velodyne scan (.bin) projected into camera `camera`'s image: float32 [H, W] depth in metres at
    the camera's native size (S_rect_xx), 0 where no point lands.

    This is the Eigen split's ground truth, made by the rule the field uses, that of Monodepth2's
    export_gt_depth (kitti_utils.generate_depth_map with vel_depth=True), so that scores compare with
    published Eigen tables:
      - the .bin holds float32 points (x forward, y left, z up, reflectance); the reflectance is
        replaced by 1, making the points homogeneous;
      - they are taken to the image by velodyne_to_image (P_rect_xx @ R_rect_00 @ [R | T]), in float64;
      - points behind the scanner (x < 0) are dropped, which keeps most of what lies behind the camera
        out of the image;
      - u, v are the first two projective coordinates divided by the third; a point lands on column
        round(u) - 1, row round(v) - 1, because the devkit's MATLAB code counts pixels from 1; points
        landing outside the image are dropped;
      - the depth stored is the point's forward coordinate x in the velodyne's frame (vel_depth=True),
        not the camera's z: Eigen's ground truth was made that way. On KITTI the scanner sits 0.27 m
        behind the cameras, so these depths are about 0.27 m more than the camera's z;
      - where several points land on one pixel the nearest (smallest depth) wins, as the nearer surface
        hides the farther; negative depths would be set to 0 (with x >= 0 kept, none arise).
    A missing file, a truncated scan or a calibration file without a needed entry stops with one sentence.
    """
    velo_path = Path(velo_path)
    if not velo_path.is_file():
        raise FileNotFoundError(f'no velodyne scan at {velo_path}: KITTI raw keeps one per frame in '
                                f'<drive>/velodyne_points/data/; extract the drive\'s raw archive (synced+rectified) there.')
    size = velo_path.stat().st_size
    if size % 16:
        raise ValueError(f'velodyne scan {velo_path} holds {size} bytes, not a whole number of 16-byte points '
                         f'(x, y, z, reflectance as float32): the file is truncated or corrupt; re-extract it '
                         f'from its archive.')
    projection, (height, width) = velodyne_to_image(calib_dir, camera)
    points = torch.from_numpy(np.fromfile(velo_path, dtype='<f4').reshape(-1, 4))
    points = points[points[:, 0] >= 0].double()
    points[:, 3] = 1.0
    image = points @ projection.T
    col = (image[:, 0] / image[:, 2]).round() - 1
    row = (image[:, 1] / image[:, 2]).round() - 1
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)  # false for NaN too
    pixel = (row[inside] * width + col[inside]).long()
    depth = torch.zeros(height * width).scatter_reduce(0, pixel, points[inside, 0].float(), 'amin',
                                                       include_self=False)
    return depth.clamp(min=0).view(height, width)


def resize(image, size):
    """Bilinear, antialiased resize of float images [..., C, H, W] (pixel centres move as in
    scale_intrinsics)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=size, mode='bilinear', align_corners=False, antialias=True)


# ----------------------------------------------------------------------------------------------
# 3. Reading the other layouts: Cityscapes, NYU-Depth-V2, a folder of your own
# ----------------------------------------------------------------------------------------------

# Cityscapes names every file of a frame <city>_<sequence>_<frame>_<suffix> under <folder>/<split>/<city>/.
CITYSCAPES_FILES = {'left': ('leftImg8bit', 'leftImg8bit.png'), 'right': ('rightImg8bit', 'rightImg8bit.png'),
                    'labels': ('gtFine', 'gtFine_labelIds.png'), 'disparity': ('disparity', 'disparity.png'),
                    'camera': ('camera', 'camera.json'), 'sequence': ('leftImg8bit_sequence', 'leftImg8bit.png')}
# Depth from Cityscapes uses the top three quarters of each frame: the bottom quarter shows the ego
# vehicle's bonnet (and its reflections), whose disparity is not the scene's; the common practice of
# ManyDepth (Watson et al., 2021), whose evaluation this code follows (evaluate.PROTOCOLS['cityscapes']).
CITYSCAPES_KEEP_ROWS = 0.75


def cityscapes_name(path):
    """(split, city, sequence, frame) of a Cityscapes file <folder>/<split>/<city>/<city>_<seq>_<frame>_<suffix>."""
    path = Path(path)
    fields = path.name.split('_')
    if len(fields) < 4 or not (fields[-3].isdigit() and fields[-2].isdigit()):
        raise ValueError(f'{path} is not named as Cityscapes names its files (<city>_<sequence>_<frame>_'
                         f'leftImg8bit.png, e.g. frankfurt_000000_000294_leftImg8bit.png).')
    return path.parent.parent.name, path.parent.name, fields[-3], int(fields[-2])


def cityscapes_path(root, kind, split, city, sequence, frame):
    """Where Cityscapes keeps the `kind` file (a key of CITYSCAPES_FILES) of a frame."""
    folder, suffix = CITYSCAPES_FILES[kind]
    return Path(root) / folder / split / city / f'{city}_{sequence}_{frame:06d}_{suffix}'


def read_cityscapes_camera(path):
    """A Cityscapes camera file (camera/<split>/<city>/*_camera.json) -> ((fx, fy, u0, v0) in pixels, baseline
    in metres); a missing file or entry stops with one sentence."""
    if not Path(path).is_file():
        raise FileNotFoundError(f'no camera file {path}: Cityscapes keeps one per frame in camera/<split>/<city>/ '
                                f'(the camera_trainvaltest archive); extract it into --data-root.')
    try:
        camera = json.loads(Path(path).read_text())
        intrinsic = camera['intrinsic']
        return tuple(float(intrinsic[k]) for k in ('fx', 'fy', 'u0', 'v0')), float(camera['extrinsic']['baseline'])
    except (ValueError, KeyError, TypeError):
        raise ValueError(f'{path} is not a Cityscapes camera file (JSON with intrinsic fx, fy, u0, v0 and '
                         f'extrinsic baseline): re-extract it from the camera archive.') from None


def read_disparity_depth(disparity_path, camera_path):
    """A Cityscapes disparity PNG (uint16: 0 = invalid, else disparity d = (p - 1) / 256 pixels) turned
    into depth = baseline * fx / d, float [1, H, W] metres, 0 where there is no disparity. fx is the
    camera file's, for the stored images."""
    (fx, _, _, _), baseline = read_cityscapes_camera(camera_path)
    p = read_png(disparity_path, 'disparity').float()
    d = (p - 1) / 256
    return torch.where(d > 0, baseline * fx / d.clamp(min=1 / 256), 0.0)


def read_nyu_depth(path):
    """An NYU-Depth-V2 depth PNG (uint16 millimetres, 0 = no measurement) -> float [1, H, W] metres."""
    return read_png(path, 'nyu depth').float() / 1000


def read_nyu40_labels(path):
    """An NYU-40 label PNG (uint8: 0 unlabelled, 1..40 the classes of Gupta et al.) -> int64 [H, W] of
    train ids 0..39, 255 = ignore; a value above 40 (a map of NYU's 894 raw classes) stops with a sentence."""
    labels = read_png(path, 'labels40')[0].long()
    if labels.max() > len(NYU40_CLASSES):
        raise ValueError(f'{path} holds class {int(labels.max())}, but NYU-40 label maps hold 0 (unlabelled) to '
                         f'40: it is a map of another class set (NYU\'s 894 raw classes?); convert it to the 40 classes.')
    return torch.where(labels == 0, 255, labels - 1)


def read_intrinsics_txt(path):
    """intrinsics.txt of a folder of video: one line 'fx fy cx cy', pixels of the stored images."""
    fields = Path(path).read_text().split()
    try:
        values = tuple(float(x) for x in fields)
    except ValueError:
        values = ()
    if len(values) != 4 or min(values[:2]) <= 0:
        raise ValueError(f'{path} must hold one line "fx fy cx cy" (pixels of the stored images, e.g. "721.5 '
                         f'721.5 609.6 172.9"), got {" ".join(fields)!r}.')
    return values


def read_depth_file(path, depth_scale=None):
    """A depth map of a folder of RGB-D pairs -> float [1, H, W] metres, 0 = no measurement: <name>_depth.npy
    holds metres ([H, W] float); <name>_depth.png holds uint16 values times --depth-scale (0.001 for mm)."""
    path = Path(path)
    if path.suffix == '.npy':
        try:
            depth = torch.from_numpy(np.load(path).astype(np.float32))
        except (ValueError, OSError):
            raise ValueError(f'{path} cannot be read as a NumPy array: the file is truncated or not a .npy.') from None
        if depth.ndim != 2:
            raise ValueError(f'{path} holds an array of shape {tuple(depth.shape)}, but a depth map is [H, W] metres.')
        wrong = ~torch.isfinite(depth) | (depth < 0)
        if wrong.any():
            raise ValueError(f'{path} holds {int(wrong.sum())} depth values that are negative, infinite or NaN (e.g. '
                             f'{float(depth[wrong][0])}), but a depth map holds metres, 0 where nothing was measured: '
                             f'write 0 there.')
        return depth[None]
    if depth_scale is None:
        raise ValueError(f'{path} is a PNG depth map: pass --depth-scale, the metres of one stored unit (0.001 for '
                         f'millimetres, 1/256 for KITTI-style maps).')
    return read_png(path, 'depth png').float() * depth_scale


# ----------------------------------------------------------------------------------------------
# 4. Datasets (any layout: section 5 lists what each layout's splits hold)
# ----------------------------------------------------------------------------------------------

class Snippet(NamedTuple):
    """What one training item reads, in any layout.

    frames: image paths for the frame offsets, target first. intrinsics: (fx, fy, cx, cy) in pixels of
    the stored images (None where no loss needs them). stereo_frame: the other stereo camera's frame t,
    and stereo_shift the x translation (metres) taking points from this camera's frame to the other's.
    depth: (reader, *arguments) giving the ground truth [1, H, W] in metres. keep_rows: the fraction of
    each image's rows used, from the top (Cityscapes: 0.75, the ego vehicle left out).
    """
    frames: tuple
    intrinsics: tuple = None
    stereo_frame: object = None
    stereo_shift: float = 0.0
    depth: tuple = None
    keep_rows: float = 1.0


def read_images(paths):
    """Images of one snippet, float [F, 3, H, W] in [0, 1] (unit_range, so 8- and 16-bit files may mix);
    frames of different sizes stop with one sentence."""
    images = [unit_range(read_image(p)) for p in paths]
    sizes = {tuple(image.shape[-2:]) for image in images}
    if len(sizes) > 1:
        raise ValueError(f'the frames {", ".join(str(p) for p in paths)} differ in size ({" and ".join(f"{w}x{h}" for h, w in sorted(sizes))}): '
                         f'the frames of a sequence and its stereo partner must share one size.')
    return torch.stack(images)


def read_ground_truth(depth):
    """The ground truth a Snippet's `depth` (reader, *arguments) names, float [1, H, W] metres."""
    reader, *arguments = depth
    return reader(*arguments)


def check_ground_truth(depth, image, snippet):
    """Ground truth must line up with its image pixel for pixel: a different size stops with one sentence."""
    if depth.shape[-2:] != image.shape[-2:]:
        raise ValueError(f'the ground truth of {snippet.frames[0]} ({snippet.depth[1]}) is {depth.shape[-1]}x'
                         f'{depth.shape[-2]} but the image is {image.shape[-1]}x{image.shape[-2]}: they must match '
                         f'pixel for pixel; replace one of them with its true partner.')
    return depth


def top_rows(x, keep_rows):
    """The top `keep_rows` fraction of the rows of [..., H, W] (all of them for 1.0)."""
    return x if keep_rows == 1.0 else x[..., :int(round(x.shape[-2] * keep_rows)), :]


def intrinsics_matrix(intrinsics):
    """(fx, fy, cx, cy) -> 3x3 K."""
    fx, fy, cx, cy = intrinsics
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


class VideoSnippets(torch.utils.data.Dataset):
    """Snippets of frames for depth training (Monodepth2's training data), from a list of Snippets.

    An item holds `frames` [F, 3, H, W] in [0, 1] (target first), `frames_aug`, the network's input
    (colour-jittered when augmenting; the loss compares the un-jittered `frames`), and where the snippets
    have intrinsics the 4x4 `K` / `inv_K` scaled to (height, width); with ground truth, `depth` [1, H0, W0]
    at its stored resolution; with another camera, `stereo` [3, H, W] (un-jittered: the loss compares it)
    and `stereo_T`, the 4x4 transform from this camera's frame to the other's.
    Augmentation as Monodepth2 and the paper: half of the time each, a horizontal flip (principal point
    mirrored, stereo shift reversed; unless `flip=False`: App. B.5 lists no flips for NYU-Depth-V2) and
    (unless `jitter=False`, as in fine-tuning) colour jitter shared by all frames of a snippet: brightness,
    contrast and saturation by factors in [0.8, 1.2] (App. B.5) and a hue shift of up to `hue` turns
    (Monodepth2's 0.1; App. B.4 and B.5 list no hue: 0). With `crop` (h, w) each snippet is a random crop
    of that size, intrinsics shifted with it. When augmenting or cropping, `depth` is resized (nearest) to
    (height, width) and transformed with the images.
    """

    def __init__(self, snippets, height, width, augment=False, crop=None, jitter=True, hue=0.1, flip=True):
        self.snippets, self.size, self.augment, self.crop = list(snippets), (height, width), augment, crop
        self.flip = flip
        if crop and not (crop[0] <= height and crop[1] <= width):
            raise ValueError(f'crop {crop[0]}x{crop[1]} does not fit in the {height}x{width} images.')
        if not 0 <= hue <= 0.5:
            raise ValueError(f'the hue jitter must be between 0 and 0.5 turns; got {hue}.')
        self.jitter = v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=hue) if jitter else None

    def __len__(self):
        return len(self.snippets)

    def random_crop(self, images, K, depth):
        """A random crop of the images (and depth), with the principal point shifted into the crop, so
        that warping with the cropped intrinsics is the same geometry (paper App. D.1)."""
        h, w = self.crop
        top = int(torch.randint(self.size[0] - h + 1, ()))
        left = int(torch.randint(self.size[1] - w + 1, ()))
        if K is not None:
            K = K.clone()
            K[0, 2] -= left
            K[1, 2] -= top
        crop = lambda x: None if x is None else x[..., top:top + h, left:left + w]
        return crop(images), K, crop(depth)

    def read(self, snippet):
        """The snippet's frames (and the other camera's) resized to the network size, its scaled 4x4 K
        (or None) and its ground truth (or None), the rows below keep_rows left out of all of them."""
        paths = list(snippet.frames) + ([snippet.stereo_frame] if snippet.stereo_frame else [])
        full = read_images(paths)
        depth = None if snippet.depth is None else check_ground_truth(read_ground_truth(snippet.depth), full, snippet)
        raw, depth = top_rows(full, snippet.keep_rows), depth if depth is None else top_rows(depth, snippet.keep_rows)
        frames = resize(raw, self.size)
        K = (None if snippet.intrinsics is None else
             scale_intrinsics(intrinsics_matrix(snippet.intrinsics), raw.shape[-2:], self.size))
        if depth is not None and (self.augment or self.crop):  # depth follows the images' geometry
            depth = F.interpolate(depth[None], self.size, mode='nearest')[0]  # nearest keeps 0 = none
        return frames, K, depth

    @reads_files
    def __getitem__(self, index):
        snippet = self.snippets[index]
        frames, K, depth = self.read(snippet)
        if self.crop:
            frames, K, depth = self.random_crop(frames, K, depth)
        shift = snippet.stereo_shift
        if self.augment and torch.rand(1) < 0.5 and self.flip:  # drawn either way: the jitter's draws stay the same
            frames, depth = frames.flip(-1), None if depth is None else depth.flip(-1)
            if K is not None:
                K[0, 2] = frames.shape[-1] - 1 - K[0, 2]
            shift = -shift  # mirrored, the other camera is on the other side
        count = len(snippet.frames)  # the other camera's frame comes last: the loss compares it un-jittered
        jitter = self.augment and self.jitter is not None and torch.rand(1) < 0.5
        item = dict(frames=frames[:count], frames_aug=self.jitter(frames[:count]) if jitter else frames[:count])
        if K is not None:
            item['K'], item['inv_K'] = K, torch.linalg.inv(K)
        if snippet.stereo_frame:
            item['stereo'] = frames[-1]
            item['stereo_T'] = torch.eye(4)
            item['stereo_T'][0, 3] = shift
        if depth is not None:
            item['depth'] = depth
        return item


class DepthTestFrames(torch.utils.data.Dataset):
    """Test frames with the ground truth of a depth protocol, at its native size, for evaluation.

    `items` are Snippets of one frame with `depth`; `protocol` names how evaluate.py scores them
    (evaluate.PROTOCOLS) and `skipped` counts the split's frames left out for want of ground truth. An
    item holds `frames` [1, 3, height, width] in [0, 1] (the network's input, as VideoSnippets gives it)
    and `depth` [1, H0, W0] in metres, 0 = none, at the frame's own size, which may differ between
    frames (KITTI's dates): batch one item at a time.
    """

    def __init__(self, items, height, width, protocol, skipped=0):
        self.items, self.size, self.protocol, self.skipped = list(items), (height, width), protocol, skipped

    def __len__(self):
        return len(self.items)

    @reads_files
    def __getitem__(self, index):
        item = self.items[index]
        image = read_image(item.frames[0])
        depth = check_ground_truth(read_ground_truth(item.depth), image, item)
        image = unit_range(top_rows(image, item.keep_rows))
        return dict(frames=resize(image[None], self.size), depth=top_rows(depth, item.keep_rows))


class LabelledImages(torch.utils.data.Dataset):
    """Images with semantic labels (train ids, 255 = ignore) for few-shot segmentation.

    `pairs` are (image PNG, label PNG, label reader); image and label are transformed together by
    torchvision.transforms.v2 (the label as a Mask, so it is resized with nearest neighbours: its values
    are never interpolated); augmentation is the paper's: horizontal flip only, and with `crop` (h, w) a
    random crop of that size (DeepLab's, App. B.4), from the images resized to (height, width). xNet's
    segmentation recipe (its App. A, mmsegmentation's defaults) adds `rescale` (min, max): image and label
    rescaled by a random factor in [min, max] before the crop, which pads where the rescaled image is
    smaller (image 0, label 255: ignored); and `photometric`: PhotoMetricDistortion on the image only. Every
    pair's PNG headers are checked when the set is built, and the first label map read (a missing label, a
    label map of the wrong format or size, or of train ids where label ids belong, stops there with one
    sentence, not later inside a DataLoader worker).
    """

    def __init__(self, pairs, height, width, augment=False, crop=None, rescale=None, photometric=False):
        self.pairs = list(pairs)
        for image_file, label_file, _ in self.pairs:
            check_pair(image_file, label_file, 'labels')
        if self.pairs:
            _, label_file, read = self.pairs[0]
            read(label_file)
        steps = [v2.Resize((height, width), antialias=True)] + ([PhotoMetricDistortion()] if photometric else [])
        steps += [v2.ScaleJitter((width, height), rescale, antialias=True)] if rescale else []  # size given (W, H)
        steps += [v2.RandomHorizontalFlip()] if augment else []
        steps += [v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: 255})] if crop else []
        self.transform = v2.Compose(steps)

    def __len__(self):
        return len(self.pairs)

    @reads_files
    def __getitem__(self, index):
        image_file, label_file, read = self.pairs[index]
        image = tv_tensors.Image(unit_range(read_image(image_file)))
        label = tv_tensors.Mask(read(label_file))
        image, label = self.transform(image, label)
        return dict(image=image.as_subclass(torch.Tensor), label=label.as_subclass(torch.Tensor))


class PhotoMetricDistortion(v2.Transform):
    """mmsegmentation's photometric distortion (xNet's segmentation recipe), on images only (labels pass
    through): each step half of the time, in this order: brightness, contrast (here or after hue, at
    random), saturation, hue. Its constants are mmsegmentation's on 0-255 images (brightness +-32, OpenCV's hue
    +-18 of 180), here on [0, 1]. It acts on each pixel alone, so it is applied at the network size before the
    rescale, flip and crop: only the rescale's interpolation tells that order from mmsegmentation's (after
    the crop), and the crop's padding stays 0."""
    _transformed_types = (tv_tensors.Image,)
    BRIGHTNESS = 32 / 255  # the largest shift
    CONTRAST = SATURATION = (0.5, 1.5)  # the factors' range
    HUE = 18 / 180  # the largest hue shift, in turns

    def make_params(self, flat_inputs):
        """The draws: a value per step, or None for a step left out this time."""
        def draw(low, high):
            return float(low + (high - low) * torch.rand(())) if torch.rand(()) < 0.5 else None
        brightness = draw(-self.BRIGHTNESS, self.BRIGHTNESS)
        contrast_first = bool(torch.rand(()) < 0.5)
        contrast = draw(*self.CONTRAST)
        return dict(brightness=brightness, contrast=contrast, contrast_first=contrast_first,
                    saturation=draw(*self.SATURATION), hue=draw(-self.HUE, self.HUE))

    def transform(self, inpt, params):
        return tv_tensors.wrap(photometric_distortion(inpt.as_subclass(torch.Tensor), **params), like=inpt)


def photometric_distortion(image, brightness=None, contrast=None, contrast_first=True, saturation=None, hue=None):
    """An image [..., 3, H, W] in [0, 1] distorted as mmsegmentation's PhotoMetricDistortion does it, each step
    clipped to [0, 1] and skipped where its value is None: brightness adds, contrast multiplies every value
    (mmsegmentation's, not a blend with the mean), saturation multiplies HSV's S (at most 1), hue shifts HSV's
    H by that many turns."""
    if brightness is not None:
        image = (image + brightness).clamp(0, 1)
    if contrast is not None and contrast_first:
        image = (image * contrast).clamp(0, 1)
    if saturation is not None:  # in HSV a channel is V - V S k(H): scaling S scales its distance to V = max
        value = image.amax(-3, keepdim=True)
        spread = value - image.amin(-3, keepdim=True)  # V S
        scaled = torch.minimum(saturation * spread, value)  # V min(S x saturation, 1)
        image = value - scaled / spread.clamp(min=1e-12) * (value - image)
    if hue is not None:
        image = v2.functional.adjust_hue(image, hue)
    if contrast is not None and not contrast_first:
        image = (image * contrast).clamp(0, 1)
    return image


def frame_numbers(directory):
    """The frame numbers of a KITTI image folder (<frame:010d>.png or .jpg); other files (a stray .DS_Store,
    a thumbnail) are not frames and are left out. A missing folder has none."""
    names = os.listdir(directory) if Path(directory).is_dir() else []
    return {int(n[:-4]) for n in names if n[-4:] in ('.png', '.jpg') and n[:-4].isdigit()}


def check_frames_exist(root, entries, frame_ids, stereo, split):
    """Every frame the split's items need (frames t + k for k in frame_ids, the other camera's frame t
    with stereo) must be on disk: a missing one stops here, with one sentence, instead of later inside a
    DataLoader worker. Each camera folder is listed once, so a 40,000-line split takes a moment."""
    listed = {}

    def has(folder, camera, frame):
        if (folder, camera) not in listed:
            listed[folder, camera] = frame_numbers(Path(root) / folder / camera / 'data')
        return frame in listed[folder, camera]

    for number, (folder, frame, side) in enumerate(entries, 1):
        needs = [(side, frame + k) for k in frame_ids] + ([(OTHER_SIDE[side], frame)] if stereo else [])
        for camera_side, f in needs:
            if not has(folder, camera_folder(camera_side), f):
                raise FileNotFoundError(
                    f'{image_path(root, folder, f, camera_side)} does not exist, but item {number} of split '
                    f'"{split}" ("{folder} {frame} {side}") needs it: extract the whole drive, or list only frames '
                    f'whose neighbours (and other camera) exist, as Monodepth2\'s splits do.')


def semantic_files(root):
    """Image and label paths of KITTI's data_semantics training set, sorted by id."""
    image_dir = Path(root) / 'data_semantics/training/image_2'
    images = sorted(image_dir.glob('*_10.png'))
    if not images:
        raise FileNotFoundError(f'no labelled images in {image_dir}: extract KITTI\'s data_semantics '
                                f'archive into --data-root (data_semantics/training/image_2 and semantic).')
    return [(p, p.parent.parent / 'semantic' / p.name) for p in images]


def scene_flow_files(root):
    """(frame 10, frame 11, flow) paths of KITTI's data_scene_flow training pairs, sorted by id."""
    folder = Path(root) / 'data_scene_flow/training'
    firsts = sorted((folder / 'image_2').glob('*_10.png'))
    if not firsts:
        raise FileNotFoundError(f'no image pairs in {folder}/image_2: extract KITTI\'s data_scene_flow archive '
                                f'into --data-root (a toy world rendered before flow existed lacks it: render a new one).')
    return [(p, p.with_name(p.name.replace('_10', '_11')), folder / 'flow_noc' / p.name) for p in firsts]


def evenly_spaced(length, count):
    """Up to `count` indices spread evenly over range(length), from 0: the items shown in samples and figures."""
    return list(range(0, length, max(1, length // count)))[:count]


def seeded_permutation(count, seed):
    """range(count) in the order of a permutation drawn with `seed` (the same on every machine and run)."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()


def few_shot_split(count, train_size, seed):
    """Pick `train_size` of `count` labelled images with the seed; the rest are the evaluation set."""
    if not 0 < train_size < count:
        raise ValueError(f'--train-size must be between 1 and {count - 1} (there are {count} labelled '
                         f'images and the rest are needed for evaluation); got {train_size}.')
    order = seeded_permutation(count, seed)
    return order[:train_size], order[train_size:]


def few_shot_sets(layout, train_size, seed, split_dir=None):
    """(training pairs, evaluation pairs) of a few-shot segmentation run: `train_size` of the layout's
    labelled pool picked with the seed, scored on its held-out set (Cityscapes val, NYU test, --split's val
    files), or where it has none (KITTI) on the rest of the pool. `train_size` 0 takes the whole pool."""
    pool, held_out = layout.labelled(split_dir)
    if train_size == 0 and held_out is not None:
        return pool, held_out
    if held_out is None:
        train, rest = few_shot_split(len(pool), train_size, seed)
        return [pool[i] for i in train], [pool[i] for i in rest]
    if not 0 < train_size <= len(pool):
        raise ValueError(f'--train-size must be between 1 and {len(pool)} (the labelled training images); got '
                         f'{train_size}.')
    order = seeded_permutation(len(pool), seed)
    return [pool[i] for i in order[:train_size]], held_out


class FlowPairs(torch.utils.data.Dataset):
    """Consecutive frames with ground-truth flow (KITTI scene flow) for evaluating optical flow.

    `frames` [2, 3, H, W] are resized to the network resolution; `flow` [2, H0, W0] (pixels) and
    `valid` [H0, W0] stay at their stored resolution, where end-point error is measured. Every flow
    map's header is checked against its first frame's when the set is built.
    """

    def __init__(self, root, height, width):
        self.files, self.size = scene_flow_files(root), (height, width)
        for first, _, flow_file in self.files:
            check_pair(first, flow_file, 'flow')

    def __len__(self):
        return len(self.files)

    @reads_files
    def __getitem__(self, index):
        first, second, flow_file = self.files[index]
        frames = resize(read_images([first, second]), self.size)
        flow, valid = read_flow(flow_file)
        return dict(frames=frames, flow=flow, valid=valid)


# ----------------------------------------------------------------------------------------------
# 5. Layouts: what each dataset's splits hold, as Snippets and labelled pairs
# ----------------------------------------------------------------------------------------------
# Every layout answers the same questions: the training snippets of a split (video, stereo, ground
# truth), the depth test frames of its evaluation protocol, the labelled images (a training pool and a
# held-out set), and the images a similarity split may regroup (`pool`). Split files: KITTI's are lines
# "<date>/<drive> <frame> l|r"; every other layout's are image paths relative to the root, one a line.

class Kitti:
    """KITTI's layout (real KITTI and the toy world): raw drives listed by split files (default
    <root>/splits), depth tested by the Eigen or the benchmark protocol, data_semantics labelled."""
    protocols, classes, max_depth, eval_max_depth = ('eigen', 'benchmark'), 'cityscapes', 100.0, 80.0

    def __init__(self, root, depth_scale=None):
        self.root, self.calib = Path(root), {}

    def calibration(self, folder):
        """The calibration of a drive's date folder, read once."""
        date = Path(folder).parts[0]
        if date not in self.calib:
            self.calib[date] = read_calib(self.root / date / 'calib_cam_to_cam.txt')
        return self.calib[date]

    def snippets(self, split, frame_ids=(0,), stereo=False, with_depth=False, split_dir=None):
        """The split's frames (every frame an item needs must exist; with_depth, every ground truth)."""
        entries = read_split(self.root, split, split_dir)
        check_frames_exist(self.root, entries, frame_ids, stereo, split)
        if with_depth:
            missing = [e for e in entries if not depth_path(self.root, *e).exists()]
            if missing:
                raise FileNotFoundError(f'{len(missing)} of {len(entries)} frames of split "{split}" have no '
                                        f'ground-truth depth, e.g. {depth_path(self.root, *missing[0])}: list only '
                                        f'frames with proj_depth/groundtruth in that split (on KITTI: '
                                        f'`python data.py --make-splits <root> --depth-only`).')
            if entries:  # a map of the wrong format stops here, not inside a DataLoader worker
                check_png(depth_path(self.root, *entries[0]), 'depth')
        return [self.snippet(e, frame_ids, stereo, with_depth) for e in entries]

    def snippet(self, entry, frame_ids, stereo, with_depth):
        folder, frame, side = entry
        calib = self.calibration(folder)
        K, _ = camera_intrinsics(calib, KITTI_CAMERAS[side])
        # the other camera sits at +baseline along x from the left one: points move by -baseline
        shift = (-1.0 if side == 'l' else 1.0) * stereo_baseline(calib) if stereo else 0.0
        return Snippet(tuple(image_path(self.root, folder, frame + k, side) for k in frame_ids),
                       (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])),
                       image_path(self.root, folder, frame, OTHER_SIDE[side]) if stereo else None, shift,
                       (read_depth, depth_path(self.root, folder, frame, side)) if with_depth else None)

    def depth_test(self, protocol, split_dir=None):
        """The test split's frames with the protocol's ground truth, and how many had none: eigen scores
        Eigen et al.'s test frames against their velodyne scan projected into the image
        (read_velodyne_depth), benchmark against KITTI's annotated maps (proj_depth/groundtruth)."""
        entries = read_split(self.root, 'test', split_dir)
        kept = [e for e in entries if ground_truth_path(self.root, *e, protocol).exists()]
        if not kept:
            example = ground_truth_path(self.root, *entries[0], protocol) if entries else 'its first line'
            what = ('velodyne scans (velodyne_points/data/*.bin, from the raw archives)' if protocol == 'eigen'
                    else 'annotated depth maps (proj_depth/groundtruth, from data_depth_annotated)')
            raise FileNotFoundError(f'none of the {len(entries)} frames of split "test" has {what}, e.g. '
                                    f'{example}: extract them into --data-root, or choose the other --eval-protocol.')
        check_frames_exist(self.root, kept, (0,), False, 'test')
        if protocol == 'benchmark':  # a map of the wrong format stops here, not inside a DataLoader worker
            check_png(ground_truth_path(self.root, *kept[0], protocol), 'depth')
        return [Snippet((image_path(self.root, f, n, s),), depth=self.ground_truth(f, n, s, protocol))
                for f, n, s in kept], len(entries) - len(kept)

    def ground_truth(self, folder, frame, side, protocol):
        path = ground_truth_path(self.root, folder, frame, side, protocol)
        if protocol == 'eigen':
            return velodyne_ground_truth, self.root / Path(folder).parts[0], path, KITTI_CAMERAS[side]
        return read_depth, path

    def labelled(self, split_dir=None):
        """data_semantics: every labelled image is in the pool; the few-shot pick's rest is held out (None)."""
        if split_dir:
            raise ValueError('--split lists KITTI raw frames, not data_semantics images; few-shot segmentation on '
                             'KITTI picks --train-size of the labelled images and evaluates on the rest.')
        return [(image, label, read_labels) for image, label in semantic_files(self.root)], None

    def pool(self, split_dir=None):
        """The frames of the train and val splits ((line, image path) each), for a similarity split to
        regroup; the test split stays as it is."""
        lines = [e for split in ('train', 'val') for e in read_split(self.root, split, split_dir)]
        return [(f'{f} {n} {s}', image_path(self.root, f, n, s)) for f, n, s in lines]


def velodyne_ground_truth(calib_dir, velo_path, camera):
    """read_velodyne_depth as ground truth: float [1, H, W] metres."""
    return read_velodyne_depth(calib_dir, velo_path, camera)[None]


def ground_truth_path(root, folder, frame, side, protocol):
    """Where a frame's ground truth for a KITTI depth protocol is: its velodyne scan (eigen) or its
    annotated depth map (benchmark)."""
    return velodyne_path(root, folder, frame) if protocol == 'eigen' else depth_path(root, folder, frame, side)


def read_path_split(root, split, split_dir):
    """The image paths of <split_dir>/<split>_files.txt (lines relative to the root), each of which must exist."""
    path = Path(split_dir) / f'{split}_files.txt'
    if not path.is_file():
        raise FileNotFoundError(f'no split file {path}: write split files with `python data.py --make-splits '
                                f'<data-root> [--by-similarity]`, or point --split at a folder holding {split}_files.txt.')
    paths = split_lines(path, lambda line, number, path: Path(root) / line.strip())
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f'{len(missing)} of the {len(paths)} images listed in {path} do not exist, e.g. '
                                f'{missing[0]}: its lines must be image paths relative to --data-root.')
    return paths


def relative_lines(root, paths):
    """(line, path) pairs of images for a split file: each path relative to the root."""
    return [(Path(p).relative_to(root).as_posix(), Path(p)) for p in paths]


class Cityscapes:
    """Cityscapes' official layout: leftImg8bit (2,975 train, 500 val) with gtFine labels, disparity and
    camera files, rightImg8bit for stereo, leftImg8bit_sequence for video. Depth uses the top
    CITYSCAPES_KEEP_ROWS of each frame; the 500 val images are the depth test set (or --eval-split's
    test_files.txt) and the segmentation held-out set."""
    protocols, classes, max_depth, eval_max_depth = ('cityscapes',), 'cityscapes', 100.0, 80.0

    def __init__(self, root, depth_scale=None):
        self.root, self.cameras = Path(root), {}

    def frames(self, split, split_dir=None, kind='left'):
        """(split, city, sequence, frame) of the split's labelled frames (kind 'left') or video frames
        ('sequence'), sorted; from <split_dir>/<split>_files.txt where given."""
        if split_dir:
            return sorted(cityscapes_name(p) for p in read_path_split(self.root, split, split_dir))
        folder = self.root / CITYSCAPES_FILES[kind][0] / split
        found = sorted(cityscapes_name(p) for p in folder.glob(f'*/*_{CITYSCAPES_FILES[kind][1]}'))
        if not found:
            raise FileNotFoundError(f'no Cityscapes images in {folder}/<city>/: extract the {CITYSCAPES_FILES[kind][0]} '
                                    f'archive into --data-root, keeping its layout.')
        return found

    def path(self, kind, frame):
        return cityscapes_path(self.root, kind, *frame)

    def camera(self, split, city, sequence, frame):
        """The camera file of a frame, or for a video frame that of its sequence's labelled frame."""
        own = self.path('camera', (split, city, sequence, frame))
        if own.is_file():
            return own
        if (split, city, sequence) not in self.cameras:
            found = sorted((self.root / 'camera' / split / city).glob(f'{city}_{sequence}_*_camera.json'))
            self.cameras[split, city, sequence] = found[0] if found else own
        return self.cameras[split, city, sequence]

    def snippets(self, split, frame_ids=(0,), stereo=False, with_depth=False, split_dir=None):
        """Video snippets from leftImg8bit_sequence (every frame whose neighbours exist), or the labelled
        frames alone; with stereo, only frames with a rightImg8bit partner; K and the baseline from the
        camera files."""
        video, kind = len(frame_ids) > 1, 'sequence' if len(frame_ids) > 1 else 'left'
        frames = self.frames(split, split_dir)
        if video:  # targets: every video frame, or those --split lists; neighbours from the whole sequence
            sequence = [f for s in sorted({f[0] for f in frames} if split_dir else {split})
                        for f in self.frames(s, kind='sequence')]
            frames = sequence if not split_dir else sorted(set(sequence) & set(frames))
            present = set(sequence)
        else:
            present = set(frames)
        keep = [f for f in frames if all((*f[:3], f[3] + k) in present for k in frame_ids)
                and (not stereo or self.path('right', f).is_file())]
        if not keep:
            raise FileNotFoundError(f'no {split} frame of {self.root} has all it needs (frames {frame_ids} around '
                                    f'it{", its rightImg8bit partner" if stereo else ""}): check the '
                                    f'{CITYSCAPES_FILES[kind][0]} and rightImg8bit archives.')
        return [self.snippet(f, kind, frame_ids, stereo, with_depth) for f in keep]

    def snippet(self, frame, kind, frame_ids, stereo, with_depth):
        intrinsics, baseline = read_cityscapes_camera(self.camera(*frame))
        depth = (read_disparity_depth, self.path('disparity', frame), self.camera(*frame)) if with_depth else None
        return Snippet(tuple(self.path(kind, (*frame[:3], frame[3] + k)) for k in frame_ids), intrinsics,
                       self.path('right', frame) if stereo else None, -baseline if stereo else 0.0, depth,
                       CITYSCAPES_KEEP_ROWS)

    def depth_test(self, protocol, split_dir=None):
        """The val frames (or --eval-split's test_files.txt) with depth from their disparity."""
        frames = self.frames('test', split_dir) if split_dir else self.frames('val')
        kept = [f for f in frames if self.path('disparity', f).is_file()]
        if not kept:
            raise FileNotFoundError(f'none of the {len(frames)} test frames has a disparity map, e.g. '
                                    f'{self.path("disparity", frames[0])}: extract the disparity archive.')
        return [self.snippet(f, 'left', (0,), False, True) for f in kept], len(frames) - len(kept)

    def labelled(self, split_dir=None):
        """gtFine: the train images are the few-shot pool, the val images held out (or --split's files)."""
        pairs = lambda frames: [(self.path('left', f), self.path('labels', f), read_labels) for f in frames]
        if split_dir:
            return pairs(self.frames('train', split_dir)), pairs(self.frames('val', split_dir))
        return pairs(self.frames('train')), pairs(self.frames('val'))

    def pool(self, split_dir=None):
        """The training images, for a similarity split (val stays the held-out set)."""
        return relative_lines(self.root, [self.path('left', f) for f in self.frames('train')])


def nyu_sibling(rgb, kind):
    """The depth (sync_depth_XXXXX.png) or NYU-40 labels (labels40_XXXXX.png) beside rgb_XXXXX.{jpg,png}."""
    number = Path(rgb).stem[len('rgb_'):]
    return Path(rgb).with_name(f'sync_depth_{number}.png' if kind == 'depth' else f'labels40_{number}.png')


class Nyu:
    """NYU-Depth-V2 as the field extracts it: depth pairs <scene>/rgb_XXXXX.jpg + sync_depth_XXXXX.png under
    sync/ (training) and official_splits/test/ (the 654 test images; BTS's layout), and the 795 / 654
    labelled images as labelled/{train,test}/rgb_XXXXX.png + labels40_XXXXX.png. Depth is supervised by
    the sensor (App. B.5) and scored by Eigen's crop with a 10 m cap."""
    protocols, classes, max_depth, eval_max_depth = ('nyu',), 'nyu40', 10.0, 10.0

    def __init__(self, root, depth_scale=None):
        self.root = Path(root)

    def rgb(self, folder, pattern, split=None, split_dir=None, kind='depth'):
        """RGB images under <root>/<folder> matching pattern (or --split's lines) whose `kind` sibling exists."""
        paths = (read_path_split(self.root, split, split_dir) if split_dir
                 else sorted((self.root / folder).glob(pattern)))
        kept = [p for p in paths if nyu_sibling(p, kind).is_file()]
        if not kept:
            raise FileNotFoundError(f'no NYU-Depth-V2 images with {"depth" if kind == "depth" else "NYU-40 labels"} '
                                    f'in {split_dir or self.root / folder}: see "NYU-Depth-V2" in DATASETS.md for the '
                                    f'layout (<scene>/rgb_XXXXX.jpg beside sync_depth_XXXXX.png).')
        return kept

    def snippets(self, split, frame_ids=(0,), stereo=False, with_depth=False, split_dir=None):
        if len(frame_ids) > 1 or stereo or not with_depth:
            raise ValueError('NYU-Depth-V2 depth is learnt from its depth sensor (the paper\'s App. B.5): use '
                             '--supervision gt (the extracted frames are not consecutive video).')
        return [Snippet((p,), depth=(read_nyu_depth, nyu_sibling(p, 'depth')))
                for p in self.rgb('sync', '*/rgb_*.jpg', split, split_dir)]

    def depth_test(self, protocol, split_dir=None):
        frames = self.rgb('official_splits/test', '*/rgb_*.jpg', 'test', split_dir)
        return [Snippet((p,), depth=(read_nyu_depth, nyu_sibling(p, 'depth'))) for p in frames], 0

    def labelled(self, split_dir=None):
        pairs = lambda paths: [(p, nyu_sibling(p, 'labels'), read_nyu40_labels) for p in paths]
        if split_dir:
            return (pairs(self.rgb(None, None, 'train', split_dir, 'labels')),
                    pairs(self.rgb(None, None, 'val', split_dir, 'labels')))
        return (pairs(self.rgb('labelled/train', 'rgb_*.png', kind='labels')),
                pairs(self.rgb('labelled/test', 'rgb_*.png', kind='labels')))

    def pool(self, split_dir=None):
        """Every training image, depth frames and labelled ones together: a labelled image and its
        neighbouring video frames must land on one side."""
        images = sorted((self.root / 'sync').glob('*/rgb_*.jpg')) + sorted((self.root / 'labelled/train').glob('rgb_*.png'))
        return relative_lines(self.root, images)


IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')


class Folder:
    """A folder of your own: video sequences <root>/<sequence>/*.{png,jpg} (sorted by name; intrinsics
    'fx fy cx cy' in <sequence>/intrinsics.txt or <root>/intrinsics.txt) for self-supervised depth, and
    RGB-D pairs <name>_rgb.{png,jpg} + <name>_depth.{npy,png} anywhere under the root for supervised
    depth. Splits: <root>/splits (or --split) train_files.txt / val_files.txt; without them every pair
    trains and nothing is tested. Depth is scored on every measured pixel below the cap (no crop)."""
    protocols, classes, max_depth, eval_max_depth = ('pairs',), None, 100.0, 80.0

    def __init__(self, root, depth_scale=None):
        self.root, self.depth_scale = Path(root), depth_scale

    def sequences(self):
        """{sequence folder: its frames sorted by name}: folders under the root holding images other than pairs."""
        found = {}
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and p.name != 'splits'):
            frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                            and not p.stem.endswith(('_rgb', '_depth')))
            if frames:
                found[folder] = frames
        return found

    def intrinsics(self, folder):
        for path in (folder / 'intrinsics.txt', self.root / 'intrinsics.txt'):
            if path.is_file():
                return read_intrinsics_txt(path)
        raise FileNotFoundError(f'no intrinsics for the video in {folder}: write one line "fx fy cx cy" (pixels of '
                                f'the stored images) into {self.root / "intrinsics.txt"} or {folder / "intrinsics.txt"}.')

    def video_snippets(self, frame_ids, allowed=None):
        """Every frame of every sequence whose offsets frame_ids (in frames) exist in its sequence."""
        snippets, short = [], []
        for folder, frames in self.sequences().items():
            K, span = self.intrinsics(folder), range(-min(frame_ids), len(frames) - max(frame_ids))
            short += [folder.name] if not len(span) else []
            snippets += [Snippet(tuple(frames[t + k] for k in frame_ids), K) for t in span
                         if allowed is None or frames[t] in allowed]
        if not snippets:
            what = f'; too short for frames {frame_ids}: {", ".join(short)}' if short else ''
            raise FileNotFoundError(f'no video snippets in {self.root} (sequences are folders of frames '
                                    f'<root>/<sequence>/*.png or *.jpg{what}): add frames, or lower --frame-stride.')
        return snippets

    def rgb_images(self):
        """Every <name>_rgb.png / .jpg under the root, sorted."""
        return sorted(p for p in self.root.rglob('*_rgb.*') if p.suffix.lower() in IMAGE_SUFFIXES)

    def depth_of(self, rgb):
        stem = Path(rgb).stem[:-len('_rgb')]
        for suffix in ('.npy', '.png'):
            if (Path(rgb).parent / f'{stem}_depth{suffix}').is_file():
                return read_depth_file, Path(rgb).parent / f'{stem}_depth{suffix}', self.depth_scale
        raise FileNotFoundError(f'{rgb} has no depth beside it ({stem}_depth.npy or {stem}_depth.png).')

    def pairs(self, split=None, split_dir=None):
        """RGB-D pairs of a split (all of them without split files) as one-frame Snippets with depth."""
        paths = read_path_split(self.root, split, split_dir) if split_dir else self.rgb_images()
        paths = [p for p in paths if p.stem.endswith('_rgb')]
        if not paths:
            raise FileNotFoundError(f'no RGB-D pairs (<name>_rgb.png or .jpg with <name>_depth.npy or .png) in '
                                    f'{split_dir or self.root}.')
        return [Snippet((p,), depth=self.depth_of(p)) for p in paths]

    def split_dir(self, split_dir):
        """--split, else <root>/splits when it exists, else None (no split files)."""
        return split_dir or (self.root / 'splits' if (self.root / 'splits').is_dir() else None)

    def snippets(self, split, frame_ids=(0,), stereo=False, with_depth=False, split_dir=None):
        if stereo:
            raise ValueError('a folder of your own has no calibrated stereo pairs: use --supervision mono (video) '
                             'or gt (RGB-D pairs).')
        split_dir = self.split_dir(split_dir)
        if with_depth:
            return self.pairs(split, split_dir)
        allowed = set(read_path_split(self.root, split, split_dir)) if split_dir else None
        return self.video_snippets(frame_ids, allowed)

    def depth_test(self, protocol, split_dir=None):
        """The val split's RGB-D pairs; None without split files (nothing to test on)."""
        split_dir = self.split_dir(split_dir)
        lines = read_path_split(self.root, 'val', split_dir) if split_dir else []
        if not any(p.stem.endswith('_rgb') for p in lines):
            return None, 0
        return self.pairs('val', split_dir), 0

    def labelled(self, split_dir=None):
        raise ValueError('a folder of your own holds no semantic labels: few-shot segmentation runs on --data '
                         'kitti, cityscapes or nyu (or toy); --task depth fine-tunes on its RGB-D pairs.')

    def pool(self, split_dir=None):
        """Every image: the pairs' RGB images and the video frames."""
        frames = [p for frames in self.sequences().values() for p in frames]
        return relative_lines(self.root, frames + self.rgb_images())


LAYOUTS = {'toy': Kitti, 'kitti': Kitti, 'cityscapes': Cityscapes, 'nyu': Nyu, 'folder': Folder}
EVAL_PROTOCOLS = tuple(dict.fromkeys(p for layout in LAYOUTS.values() for p in layout.protocols))


# ----------------------------------------------------------------------------------------------
# 6. The run's data: --data and --data-root to a layout, and datasets built with one sentence on failure
# ----------------------------------------------------------------------------------------------

TOY_ROOT = 'data/toy'


def data_root(args):
    """The dataset folder: the toy world is rendered there on first use; any other dataset must exist."""
    if args.data == 'toy':
        if args.data_root and not Path(args.data_root).exists():  # a typo must not start a render silently
            raise SystemExit(f'--data-root {args.data_root} does not exist: pass a rendered toy world, render one '
                             f'there first (`python toyworld.py {args.data_root}`), or leave out '
                             f'--data-root to use {TOY_ROOT} (rendered on first use).')
        root = args.data_root or TOY_ROOT
        import toyworld  # it writes this module's layouts, so it imports this module
        toyworld.ensure_toy_world(root)
        return root
    if not args.data_root or not Path(args.data_root).is_dir():
        raise SystemExit(f'--data {args.data} needs --data-root pointing at its folder (got {args.data_root}); '
                         f'DATASETS.md says each dataset\'s layout, in the section named after it.')
    return args.data_root


def open_layout(args):
    """The layout of --data at its root (data.LAYOUTS), which lists what each split holds."""
    return LAYOUTS[args.data](data_root(args), depth_scale=args.depth_scale)


def open_dataset(make, *args, **kwargs):
    """Build a dataset; a missing or malformed one stops the run with its one-sentence message."""
    try:
        return make(*args, **kwargs)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(str(error)) from None


def main(argv=None):
    """`python data.py --make-splits ROOT ...`, the command the split files' sentences name: the split tool
    lives in splits.py, which imports this module, so it is imported here rather than at the top."""
    import splits
    splits.main(argv)


if __name__ == '__main__':
    main()
