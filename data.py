"""Where images come from: readers and datasets of KITTI's real on-disk layout.

The same code reads real KITTI and the toy world (toyworld.py writes KITTI's layout), so every code path
the experiments use on a GPU machine is exercised on a laptop.

Contents, top to bottom:
  1. reading the KITTI layout: calibration, images, depth (annotated maps and velodyne scans), labels
     (Cityscapes label ids -> the 19 train ids), flow, split files;
  2. datasets: video snippets for self-supervised depth, test frames with the ground truth of an
     evaluation protocol, labelled images for few-shot segmentation, flow pairs; the few-shot pick and
     `python data.py --make-splits ROOT`, which writes leakage-free split files for a KITTI raw tree.

Coordinates: camera x right, y down, z forward; depth is the z coordinate in metres; pixel centres sit
at integer (u, v).
"""
import argparse
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_image, decode_png, read_file
from torchvision.transforms import v2
from torchvision import tv_tensors

# torchvision 0.29 announces that its image codecs will move to TorchCodec; they work, and the
# design keeps to torchvision, so the notice is silenced rather than printed once per image.
warnings.filterwarnings('ignore', message='The image decoding and encoding capabilities of TorchVision')


# ----------------------------------------------------------------------------------------------
# 1. Reading the KITTI layout (real KITTI and the toy world alike)
# ----------------------------------------------------------------------------------------------

# Cityscapes label id -> train id (19 classes); every other id is ignored (255).
LABEL_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                     24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}

RAW_MAPPING = 'data_scene_flow/devkit/mapping/train_mapping.txt'  # KITTI's devkit_scene_flow.zip, extracted



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


def camera_intrinsics(calib, camera='02'):
    """(K [3, 3], (height, width)) of a rectified camera, from P_rect_xx and S_rect_xx."""
    P = calib[f'P_rect_{camera}'].reshape(3, 4)
    width, height = calib[f'S_rect_{camera}']
    return torch.tensor(P[:, :3], dtype=torch.float32), (int(round(height)), int(round(width)))


def stereo_baseline(calib):
    """Distance in metres from camera 02 to camera 03 (P_rect[0, 3] = -fx * camera position)."""
    P2, P3 = calib['P_rect_02'].reshape(3, 4), calib['P_rect_03'].reshape(3, 4)
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


# What each file the readers decode must be: (what it is, PNG colour type, bit depth, where KITTI
# keeps it, what the format is). Colour type 0 is single-channel, 2 is RGB; None: any (images).
PNG_KINDS = {
    'image': ('image', None, None, 'check --data-root and that the KITTI archives are extracted in their '
              'original layout', None),
    'depth': ('depth map', 0, 16, "KITTI's depth archive keeps one per frame in proj_depth/groundtruth/image_0x/",
              'KITTI depth maps are 16-bit single-channel PNGs (metres x 256, 0 = no measurement): use the '
              'maps of data_depth_annotated (proj_depth/groundtruth/), not images'),
    'labels': ('label map', 0, 8, 'KITTI semantics keeps one per image in data_semantics/training/semantic/',
               "label maps are 8-bit single-channel PNGs of Cityscapes label ids (KITTI's instance/ PNGs "
               'are 16-bit: use the semantic/ folder)'),
    'flow': ('flow map', 2, 16, 'KITTI keeps one per pair in data_scene_flow/training/flow_noc/',
             'KITTI flow maps are 16-bit 3-channel PNGs (u, v, valid): use those of data_scene_flow/training/flow_noc/'),
}
_PNG_LAYOUTS = {0: 'single-channel', 2: '3-channel (RGB)', 3: 'palette', 4: '2-channel (grey + alpha)',
                6: '4-channel (RGBA)'}


def check_png(path, kind):
    """(height, width) of an image, depth, label or flow PNG (`kind`, a key of PNG_KINDS), read from its
    header without decoding; a missing file, a file that is not a PNG, or a PNG of another bit depth or
    channel count stops with one sentence naming the file."""
    what, colour, bits, where, form = PNG_KINDS[kind]
    if not Path(path).is_file():
        raise FileNotFoundError(f'no such file: {what} {path}; {where}.')
    with open(path, 'rb') as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b'\x89PNG\r\n\x1a\n' or head[12:16] != b'IHDR':
        raise ValueError(f'{what} {path} is not a PNG file and cannot be decoded: re-extract it from its archive.')
    width, height, found_bits, found_colour = struct.unpack('>IIBB', head[16:26])
    if colour is not None and (found_colour, found_bits) != (colour, bits):
        layout = _PNG_LAYOUTS.get(found_colour, f'colour type {found_colour}')
        raise ValueError(f'{what} {path} holds {found_bits}-bit {layout} pixels, but {form}.')
    return height, width


def read_png(path, kind):
    """A depth, label or flow PNG (`kind`, a key of PNG_KINDS), checked by check_png and decoded as
    stored: uint8 or uint16 [C, H, W]; a file that cannot be decoded stops with one sentence."""
    check_png(path, kind)
    return _decode(path, lambda raw: decode_png(raw, mode=ImageReadMode.UNCHANGED),
                   f'{PNG_KINDS[kind][0]} {path} cannot be decoded')


def read_image(path):
    """An RGB image as uint8 [3, H, W] (PNG or JPEG), with one sentence for a missing or corrupt file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f'no such file: image {path}; {PNG_KINDS["image"][3]}.')
    return _decode(path, lambda raw: decode_image(raw, mode=ImageReadMode.RGB),
                   f'{path} is not a PNG or JPEG image that can be decoded')


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
    """A Cityscapes label-id PNG (8-bit, single channel) -> int64 [H, W] of the 19 train ids, 255 = ignore."""
    return _TRAIN_ID_LOOKUP[read_png(path, 'labels')[0].long()]


def check_pair(image_file, other_file, kind):
    """Check the headers of an image PNG and of its label or flow map (`kind`), which must line up
    pixel for pixel: a different size stops with one sentence giving both sizes and both files."""
    (h, w), (oh, ow) = check_png(image_file, 'image'), check_png(other_file, kind)
    if (h, w) != (oh, ow):
        raise ValueError(f'{PNG_KINDS[kind][0]} {other_file} is {ow}x{oh} but its image {image_file} is {w}x{h}: '
                         f'they must match pixel for pixel, so one of them belongs to another frame or '
                         f'download; replace it with its true partner.')


_TRAIN_ID_LOOKUP = torch.full((256,), 255, dtype=torch.long)
for _label_id, _train_id in LABEL_TO_TRAIN_ID.items():
    _TRAIN_ID_LOOKUP[_label_id] = _train_id


def read_split(root, split, split_dir=None):
    """Lines '<date>/<drive folder> <frame> <l|r>' of <split_dir>/<split>_files.txt (default split_dir:
    <root>/splits). Monodepth2's split folders (splits/eigen_zhou, splits/eigen, ...) are read as they are."""
    path = Path(split_dir or Path(root) / 'splits') / f'{split}_files.txt'
    if not path.is_file():
        raise FileNotFoundError(f'no split file {path}: put the split lists (lines "<date>/<drive> <frame> l") in '
                                f'<data-root>/splits/ (e.g. `python data.py --make-splits <data-root>`), or point '
                                f'--split / --eval-split at a folder holding {split}_files.txt.')
    entries = []
    for number, line in enumerate(path.read_text().split('\n'), 1):
        if line.strip():
            fields = line.split()
            if len(fields) != 3 or not fields[1].isdigit() or fields[2] not in ('l', 'r'):
                raise ValueError(f'line {number} of split file {path} reads "{line.strip()}", but each line must '
                                 f'be "<date>/<drive> <frame> l|r" (e.g. "2011_09_26/2011_09_26_drive_0002_sync 5 l").')
            entries.append((fields[0], int(fields[1]), fields[2]))
    return entries


def read_poses(path):
    """poses.txt (KITTI odometry format: a row-major 3x4 camera-to-world matrix per line) -> [N, 4, 4]."""
    rows = torch.tensor(np.loadtxt(path, ndmin=2), dtype=torch.float32)
    poses = torch.eye(4).repeat(len(rows), 1, 1)
    poses[:, :3] = rows.reshape(-1, 3, 4)
    return poses


def image_path(root, folder, frame, side='l'):
    """Where KITTI raw keeps a frame: image_02 is the left colour camera, image_03 the right."""
    camera = {'l': 'image_02', 'r': 'image_03'}[side]
    path = Path(root) / folder / camera / 'data' / f'{frame:010d}.png'
    return path if path.exists() or not path.with_suffix('.jpg').exists() else path.with_suffix('.jpg')


def depth_path(root, folder, frame, side='l'):
    """Ground-truth depth: inside the raw drive folder, or where KITTI's depth archive puts it
    (<root>/data_depth_annotated/{train,val}/<drive>/proj_depth/groundtruth/image_0x/)."""
    camera = {'l': 'image_02', 'r': 'image_03'}[side]
    tail = Path('proj_depth/groundtruth') / camera / f'{frame:010d}.png'
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


def velodyne_to_image(calib_dir, camera='02'):
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


def read_velodyne_depth(calib_dir, velo_path, camera='02'):
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
# 2. Datasets
# ----------------------------------------------------------------------------------------------

class VideoSnippets(torch.utils.data.Dataset):
    """Snippets of consecutive frames for self-supervised depth (Monodepth2's training data).

    An item holds `frames` [F, 3, H, W] in [0, 1] for the frame offsets `frame_ids` (target first),
    `frames_aug`, the network's input (colour-jittered when augmenting; the loss compares the
    un-jittered `frames`), the 4x4 intrinsics `K` / `inv_K` scaled to (height, width), and with
    `with_depth` the ground-truth `depth` [1, H0, W0] at its stored resolution, and with `stereo` the
    other camera's frame t (`stereo` [3, H, W], jittered like the rest in `stereo_aug`) and `stereo_T`,
    the 4x4 transform from this camera's frame to the other's (baseline read from the calibration).
    Augmentation as Monodepth2 and the paper: horizontal flip (principal point mirrored, stereo
    baseline reversed) and, half of the time (unless `jitter=False`, as in fine-tuning), colour jitter
    shared by all frames of a snippet.
    With `crop` (h, w) each snippet is a random crop of that size, intrinsics shifted with it. When
    augmenting or cropping, `depth` is resized (nearest) to (height, width) and transformed with the images.
    The split is read from `split_dir` (default <root>/splits); every frame an item needs must exist.
    """

    def __init__(self, root, split, height, width, frame_ids=(0, -1, 1), augment=False, with_depth=False,
                 stereo=False, crop=None, jitter=True, split_dir=None):
        self.root, self.size, self.frame_ids = Path(root), (height, width), frame_ids
        self.entries = read_split(root, split, split_dir)
        self.augment, self.with_depth, self.stereo, self.crop = augment, with_depth, stereo, crop
        if crop and not (crop[0] <= height and crop[1] <= width):
            raise ValueError(f'crop {crop[0]}x{crop[1]} does not fit in the {height}x{width} images.')
        self.jitter = v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1) if jitter else None
        self.calib = {}
        check_frames_exist(root, self.entries, frame_ids, stereo, split)
        if with_depth:
            missing = [e for e in self.entries if not depth_path(root, *e).exists()]
            if missing:
                raise FileNotFoundError(f'{len(missing)} of {len(self.entries)} frames of split "{split}" have no '
                                        f'ground-truth depth, e.g. {depth_path(root, *missing[0])}: list only '
                                        f'frames with proj_depth/groundtruth in that split (on KITTI: '
                                        f'`python data.py --make-splits <root> --depth-only`).')
            if self.entries:  # a map of the wrong format stops here, not inside a DataLoader worker
                check_png(depth_path(root, *self.entries[0]), 'depth')

    def __len__(self):
        return len(self.entries)

    def calibration(self, folder):
        """The calibration of a drive's date folder, read once."""
        date = Path(folder).parts[0]
        if date not in self.calib:
            self.calib[date] = read_calib(self.root / date / 'calib_cam_to_cam.txt')
        return self.calib[date]

    def random_crop(self, images, K, depth):
        """A random crop of the images (and depth), with the principal point shifted into the crop, so
        that warping with the cropped intrinsics is the same geometry (paper App. D.1)."""
        h, w = self.crop
        top = int(torch.randint(self.size[0] - h + 1, ()))
        left = int(torch.randint(self.size[1] - w + 1, ()))
        K = K.clone()
        K[0, 2] -= left
        K[1, 2] -= top
        crop = lambda x: None if x is None else x[..., top:top + h, left:left + w]
        return crop(images), K, crop(depth)

    def __getitem__(self, index):
        folder, frame, side = self.entries[index]
        paths = [image_path(self.root, folder, frame + k, side) for k in self.frame_ids]
        if self.stereo:  # the other camera's frame t rides along as one more image
            paths.append(image_path(self.root, folder, frame, {'l': 'r', 'r': 'l'}[side]))
        raw = torch.stack([read_image(p) for p in paths])
        frames = resize(raw.float() / 255, self.size)
        K, _ = camera_intrinsics(self.calibration(folder), {'l': '02', 'r': '03'}[side])
        K = scale_intrinsics(K, raw.shape[-2:], self.size)
        depth = read_depth(depth_path(self.root, folder, frame, side)) if self.with_depth else None
        if depth is not None and (self.augment or self.crop):  # depth follows the images' geometry
            depth = F.interpolate(depth[None], self.size, mode='nearest')[0]  # nearest keeps 0 = none
        if self.crop:
            frames, K, depth = self.random_crop(frames, K, depth)
        # the other camera sits at +baseline along x from the left one: points move by -baseline
        sign = -1.0 if side == 'l' else 1.0
        if self.augment and torch.rand(1) < 0.5:
            frames, depth = frames.flip(-1), None if depth is None else depth.flip(-1)
            K[0, 2] = frames.shape[-1] - 1 - K[0, 2]
            sign = -sign
        jitter = self.augment and self.jitter is not None and torch.rand(1) < 0.5
        frames_aug = self.jitter(frames) if jitter else frames
        item = dict(frames=frames[:len(self.frame_ids)], frames_aug=frames_aug[:len(self.frame_ids)],
                    K=K, inv_K=torch.linalg.inv(K))
        if self.stereo:
            item['stereo'], item['stereo_aug'] = frames[-1], frames_aug[-1]
            item['stereo_T'] = torch.eye(4)
            item['stereo_T'][0, 3] = sign * stereo_baseline(self.calibration(folder))
        if depth is not None:
            item['depth'] = depth
        return item


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
        needs = [(side, frame + k) for k in frame_ids] + ([({'l': 'r', 'r': 'l'}[side], frame)] if stereo else [])
        for camera_side, f in needs:
            if not has(folder, {'l': 'image_02', 'r': 'image_03'}[camera_side], f):
                raise FileNotFoundError(
                    f'{image_path(root, folder, f, camera_side)} does not exist, but item {number} of split '
                    f'"{split}" ("{folder} {frame} {side}") needs it: extract the whole drive, or list only frames '
                    f'whose neighbours (and other camera) exist, as Monodepth2\'s splits do.')


EVAL_PROTOCOLS = ('eigen', 'benchmark')


def ground_truth_path(root, folder, frame, side, protocol):
    """Where a frame's ground truth for a KITTI depth protocol is: its velodyne scan (eigen) or its
    annotated depth map (benchmark)."""
    return velodyne_path(root, folder, frame) if protocol == 'eigen' else depth_path(root, folder, frame, side)


class DepthTestFrames(torch.utils.data.Dataset):
    """The frames of a test split with the ground truth of one of KITTI's two depth protocols, at its
    native size, for evaluation.

    eigen: Eigen et al.'s test frames scored against their velodyne scan, projected into the image
    (read_velodyne_depth); benchmark: KITTI's depth benchmark, scored against the annotated maps
    (proj_depth/groundtruth). An item holds `frames` [1, 3, height, width] in [0, 1] (the network's
    input, as VideoSnippets gives it) and `depth` [1, H0, W0] in metres, 0 = none, at the frame's own
    size, which differs between KITTI's dates: batch one item at a time. Frames whose ground-truth file
    does not exist are left out, and counted in `skipped`; none left stops with a sentence.
    """

    def __init__(self, root, split, height, width, protocol='eigen', split_dir=None):
        if protocol not in EVAL_PROTOCOLS:
            raise ValueError(f'unknown depth protocol {protocol}: choose one of {", ".join(EVAL_PROTOCOLS)}.')
        self.root, self.size, self.protocol = Path(root), (height, width), protocol
        entries = read_split(root, split, split_dir)
        self.entries = [e for e in entries if ground_truth_path(root, *e, protocol).exists()]
        self.skipped = len(entries) - len(self.entries)
        if not self.entries:
            example = ground_truth_path(root, *entries[0], protocol) if entries else 'its first line'
            what = ('velodyne scans (velodyne_points/data/*.bin, from the raw archives)' if protocol == 'eigen'
                    else 'annotated depth maps (proj_depth/groundtruth, from data_depth_annotated)')
            raise FileNotFoundError(f'none of the {len(entries)} frames of split "{split}" has {what}, e.g. '
                                    f'{example}: extract them into --data-root, or choose the other --eval-protocol.')
        check_frames_exist(root, self.entries, (0,), False, split)
        if protocol == 'benchmark':  # a map of the wrong format stops here, not inside a DataLoader worker
            check_png(ground_truth_path(root, *self.entries[0], protocol), 'depth')

    def __len__(self):
        return len(self.entries)

    def __getitem__(self, index):
        folder, frame, side = self.entries[index]
        image = read_image(image_path(self.root, folder, frame, side)).float() / 255
        frames = resize(image[None], self.size)
        path = ground_truth_path(self.root, folder, frame, side, self.protocol)
        if self.protocol == 'eigen':
            date = self.root / Path(folder).parts[0]
            depth = read_velodyne_depth(date, path, {'l': '02', 'r': '03'}[side])[None]
        else:
            depth = read_depth(path)
        return dict(frames=frames, depth=depth)


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


def few_shot_split(count, train_size, seed):
    """Pick `train_size` of `count` labelled images with the seed; the rest are the evaluation set."""
    if not 0 < train_size < count:
        raise ValueError(f'--train-size must be between 1 and {count - 1} (there are {count} labelled '
                         f'images and the rest are needed for evaluation); got {train_size}.')
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    return order[:train_size], order[train_size:]


class LabelledImages(torch.utils.data.Dataset):
    """Images with semantic labels (19 train ids, 255 = ignore) for few-shot segmentation.

    Image and label are transformed together by torchvision.transforms.v2 (the label as a Mask, so it
    is resized with nearest neighbours); augmentation is the paper's: horizontal flip only.
    Every pair's PNG headers are checked when the set is built (a missing label, a label map of the
    wrong format or size stops there with one sentence, not later inside a DataLoader worker).
    """

    def __init__(self, root, indices, height, width, augment=False):
        files = semantic_files(root)
        self.files = [files[i] for i in indices]
        for image_file, label_file in self.files:
            check_pair(image_file, label_file, 'labels')
        steps = [v2.Resize((height, width), antialias=True)] + ([v2.RandomHorizontalFlip()] if augment else [])
        self.transform = v2.Compose(steps)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        image_file, label_file = self.files[index]
        image = tv_tensors.Image(read_image(image_file).float() / 255)
        label = tv_tensors.Mask(read_labels(label_file))
        image, label = self.transform(image, label)
        return dict(image=image.as_subclass(torch.Tensor), label=label.as_subclass(torch.Tensor))


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

    def __getitem__(self, index):
        first, second, flow_file = self.files[index]
        frames = resize(torch.stack([read_image(first), read_image(second)]).float() / 255, self.size)
        flow, valid = read_flow(flow_file)
        return dict(frames=frames, flow=flow, valid=valid)


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
    data_scene_flow training image under `root`, by the raw-data mapping (default <root>/RAW_MAPPING;
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
    path = Path(mapping) if mapping is not None else root / RAW_MAPPING
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


def make_splits(root, seed=0, depth_only=False, mapping=None):
    """Write <root>/splits/{train,val,test}_files.txt for a KITTI raw tree: every tenth drive is held
    out for testing (frames with ground-truth depth only), the next for validation, the rest train.
    Frames need both neighbours, since training uses t-1 and t+1. With `depth_only` every split keeps
    only frames with ground-truth depth (for pre-training with --supervision gt).

    A drive holding the frame of a data_semantics or data_scene_flow training image (labelled_drives,
    by the devkit's mapping; `mapping` overrides its path) is kept out of train and val, whole (its
    neighbouring frames are near copies): segmentation or flow on those images after pre-training on
    their drive would leak. It may still be drawn as the test drive (testing depth on it does not leak).
    Returns the frame count of each split and 'kept_out': {drive folder: ids of its images} of the
    drives kept out."""
    drives = sorted(p for p in Path(root).glob('*/*_sync') if (p / 'image_02/data').is_dir())
    if not drives:
        raise FileNotFoundError(f'no KITTI raw drives (<date>/<date>_drive_XXXX_sync/image_02/data) under {root}.')
    labelled = labelled_drives(root, mapping)
    order = torch.randperm(len(drives), generator=torch.Generator().manual_seed(seed)).tolist()
    splits, kept_out = {'train': [], 'val': [], 'test': []}, {}
    for rank, d in enumerate(order):
        folder = drives[d].relative_to(root).as_posix()
        split = 'test' if rank % 10 == 0 else 'val' if rank % 10 == 1 else 'train'
        if split != 'test' and folder in labelled:
            kept_out[folder] = labelled[folder]
            continue
        frames = sorted(frame_numbers(drives[d] / 'image_02/data'))
        for f in frames[1:-1]:
            if not (split == 'test' or depth_only) or depth_path(root, folder, f).exists():
                splits[split].append(f'{folder} {f} l')
    empty = [split for split, lines in splits.items() if not lines]
    if empty:  # before writing anything: existing split files stay as they were
        why = (f'; {len(kept_out)} of them kept out of train and val, as they hold frames of data_semantics or '
               f'data_scene_flow training images' if kept_out else '')
        raise ValueError(f'{root}: the {" and ".join(empty)} split would be empty ({len(drives)} drive(s) found; every '
                         f'tenth drive is test, the next val, the rest train{why}): add drives, or write the split files '
                         f'yourself into {Path(root) / "splits"} ("<date>/<drive> <frame> l" per line).')
    (Path(root) / 'splits').mkdir(exist_ok=True)
    for split, lines in splits.items():
        (Path(root) / 'splits' / f'{split}_files.txt').write_text('\n'.join(lines) + '\n')
    return dict({split: len(lines) for split, lines in splits.items()}, kept_out=kept_out)


def main(argv=None):
    parser = argparse.ArgumentParser(description='Write split files (train, val, test) for a KITTI raw tree.')
    parser.add_argument('--make-splits', metavar='ROOT', required=True,
                        help='write ROOT/splits/*_files.txt for a KITTI raw tree')
    parser.add_argument('--depth-only', action='store_true',
                        help='keep only frames with ground-truth depth in every split')
    parser.add_argument('--mapping', metavar='FILE',
                        help='KITTI\'s scene-flow devkit train_mapping.txt (default: '
                             f'ROOT/{RAW_MAPPING}); drives of data_semantics/data_scene_flow images stay out of train and val')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    try:
        counts = make_splits(args.make_splits, args.seed, args.depth_only, args.mapping)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(str(error)) from None
    kept_out = counts.pop('kept_out')
    print(f'Wrote {args.make_splits}/splits: ' + ', '.join(f'{k} {v} frames' for k, v in counts.items()))
    if kept_out:
        print(f'Kept {len(kept_out)} drive(s) out of train and val, as they hold the raw frames of '
              f'data_semantics/data_scene_flow training images: '
              + ', '.join(f'{folder} (ids {" ".join(f"{i:06d}" for i in ids)})' for folder, ids in sorted(kept_out.items())))


if __name__ == '__main__':
    main()
