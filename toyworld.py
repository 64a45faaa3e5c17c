"""The toy world: a small procedural driving scene, ray-cast with plain tensor code and written to disk
exactly as KITTI ships it, so that every reader in data.py, and every experiment, runs on a laptop.

It writes raw drives (left and right images, projected ground-truth depth, velodyne scans of the held-out
drive, calibration), data_semantics (Cityscapes label ids), data_scene_flow (pairs with ground-truth flow),
the scene-flow devkit's raw-data mapping and split files. With --layout it writes the same kind of world in
another dataset's layout instead, so that the readers of those datasets run end to end too: Cityscapes
(sequences, stereo, label ids, disparity, camera files), NYU-Depth-V2 (BTS's depth layout, NYU-40 labels in
PNGs) or a folder of one's own (video sequences, RGB-D pairs); LAYOUT_COUNTS says what each count means in
each. The scripts render it on first use; by hand:

    python toyworld.py data/toy                       # the default world (96 x 320, 4 + 1 drives)
    python toyworld.py /tmp/tiny --height 48 --width 160 --drives 1 --frames 10
    python toyworld.py data/toy_nyu --layout nyu      # NYU's layout (96 x 128)

Contents, top to bottom: procedural textures; the scene (road, buildings, trees, cars); ray casting;
shading; the file formats (KITTI's calibration, 16-bit depth and flow PNGs, velodyne scans; Cityscapes'
disparity, millimetre depth); the renderer, in KITTI's layout, then in the others.

Coordinates: camera x right, y down, z forward; depth is the z coordinate in metres; pixel centres sit
at integer (u, v). The world frame has the same axes, with the road at y = +1.65 m below the camera.
"""
import argparse
import contextlib
import fcntl
import json
import math
import os
import shutil
import struct
import time
import zlib
from collections import namedtuple
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.io import write_jpeg, write_png
from tqdm import tqdm

import data

CAMERA_HEIGHT = 1.65   # metres above the road (KITTI's rig)
STEREO_BASELINE = 0.54  # metres from the left (image_02) to the right (image_03) camera
CITYSCAPES_BASELINE = 0.22  # metres between the cameras of the Cityscapes layout (Cityscapes' rig: 0.21)
TOY_DATE = '2011_09_26'

# Cityscapes label ids, as KITTI's data_semantics stores them.
LABEL_IDS = {'road': 7, 'sidewalk': 8, 'building': 11, 'pole': 17, 'traffic sign': 20,
             'vegetation': 21, 'terrain': 22, 'sky': 23, 'person': 24, 'car': 26}

# Road cross-section, as lateral offsets from the centre line (metres).
LANE_CENTRE, ROAD_EDGE, CURB, SETBACK = 1.75, 5.5, 8.0, 10.5


_NOISE_TABLE = torch.rand(1 << 16, generator=torch.Generator().manual_seed(0))


_LATTICE_HASH = torch.tensor([1619, 31337, 6971])  # a lattice point's key: its coordinates times these
_CORNER_KEYS = torch.tensor([dx * 1619 + dy * 31337 + dz * 6971 for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)])


def value_noise(p, salt=0):
    """Smooth 3-D value noise in [0, 1] at points p [N, 3]: random values on the integer lattice
    (looked up in a fixed table by a hash of the lattice point), blended with smoothstep weights
    (trilinear interpolation of the cell's 8 corners, along x, then y, then z)."""
    base = torch.floor(p)
    w = p - base
    w = w * w * (3 - 2 * w)
    key = (base.long() * _LATTICE_HASH).sum(1) + salt * 1013
    corners = _NOISE_TABLE.index_select(0, ((key[:, None] + _CORNER_KEYS) & 0xFFFF).flatten())
    corners = corners.view(-1, 2, 2, 2)  # [N, dx, dy, dz]
    along_x = torch.lerp(corners[:, 0], corners[:, 1], w[:, 0, None, None])
    along_y = torch.lerp(along_x[:, 0], along_x[:, 1], w[:, 1, None])
    return torch.lerp(along_y[:, 0], along_y[:, 1], w[:, 2])


NOISE_SCALES = (4.0, 1.0, 0.25, 0.06)  # metres: texture detail at several scales


def noise_octaves(p, footprint):
    """Value noise at NOISE_SCALES, centred on 0, each octave faded out where its features get
    smaller than a pixel (footprint = metres per pixel), a cheap stand-in for mip-mapping that keeps
    distant texture from aliasing. Returns [N, len(NOISE_SCALES)]."""
    octaves = []
    for k, scale in enumerate(NOISE_SCALES):
        fade = (scale / (2 * footprint) - 1).clamp(0, 1)
        visible = fade > 0
        octave = torch.zeros(p.shape[0])
        octave[visible] = (value_noise(p[visible] / scale, salt=k) - 0.5) * fade[visible]
        octaves.append(octave)
    return torch.stack(octaves, 1)


def road_centre(z, curve):
    """Lateral position x(z) of the road's centre line: two gentle sinusoids (curve = [a1, l1, p1, a2, l2, p2])."""
    a1, l1, p1, a2, l2, p2 = curve
    return a1 * torch.sin(z / l1 + p1) + a2 * torch.sin(z / l2 + p2)


def road_heading(z, curve):
    """Yaw of the road's tangent at z (radians, rotation about the y axis)."""
    a1, l1, p1, a2, l2, p2 = curve
    slope = a1 / l1 * torch.cos(z / l1 + p1) + a2 / l2 * torch.cos(z / l2 + p2)
    return torch.atan(slope)


def rot_y(yaw):
    """Rotation about the (downward) y axis: maps forward (0, 0, 1) to (sin yaw, 0, cos yaw)."""
    c, s = math.cos(yaw), math.sin(yaw)
    return torch.tensor([[c, 0., s], [0., 1., 0.], [-s, 0., c]])


def rot_x(pitch):
    """Rotation about the x axis (camera pitch)."""
    c, s = math.cos(pitch), math.sin(pitch)
    return torch.tensor([[1., 0., 0.], [0., c, -s], [0., s, c]])


class Drive:
    """One drive of the toy world: a road, the objects along it, the lighting, the camera path.

    Objects are oriented boxes (buildings, cars, poles, sign panels, trunks, people) and spheres
    (tree crowns, heads). Moving cars follow the road: their pose is a function of the frame index.
    """

    def __init__(self, seed, num_frames, speed=None):
        g = torch.Generator().manual_seed(seed)
        self.rand = lambda *shape: torch.rand(shape or (1,), generator=g)
        r = lambda lo, hi: float(lo + (hi - lo) * self.rand())
        self.curve = [r(2, 6), r(40, 80), r(0, 6.3), r(1, 3), r(15, 30), r(0, 6.3)]
        self.speed = speed or r(0.8, 1.2)  # metres per frame (KITTI: 10 Hz at ~35 km/h)
        self.pitch = (r(0.002, 0.008), r(4, 9))  # a gentle bounce: amplitude (rad), period (frames)
        self.length = num_frames * self.speed + 120
        elevation, azimuth = r(0.35, 1.0), r(0, 6.3)
        self.sun = torch.tensor([math.cos(elevation) * math.sin(azimuth), -math.sin(elevation),
                                 math.cos(elevation) * math.cos(azimuth)])
        self.ambient, self.diffuse = r(0.35, 0.55), r(0.5, 0.8)
        self.tint = torch.tensor([r(0.9, 1.1), r(0.95, 1.05), r(0.9, 1.1)])
        self.urban = r(0.3, 0.95)  # share of the roadside lined with buildings
        self.boxes, self.spheres, self.movers = [], [], []
        self._populate(r)
        self.tables = object_table(self.boxes), object_table(self.spheres)

    # -- scene generation ------------------------------------------------------------------------
    def _place(self, s, u):
        """World position (x, z) and yaw of the point at distance s along the road, lateral offset u."""
        s = torch.tensor(float(s))
        yaw = float(road_heading(s, self.curve))
        x = float(road_centre(s, self.curve)) + u * math.cos(yaw)
        return x, float(s) - u * math.sin(yaw), yaw

    def _box(self, s, u, half, lift, label, colour, yaw_offset=0.0):
        """Add a box whose bottom sits `lift` metres above the road, centred at (s, u)."""
        x, z, yaw = self._place(s, u)
        y = CAMERA_HEIGHT - lift - half[1]
        self.boxes.append(dict(centre=torch.tensor([x, y, z]), half=torch.tensor(half),
                               yaw=yaw + yaw_offset, label=LABEL_IDS[label], colour=torch.tensor(colour)))

    def _sphere(self, s, u, radius, height, label, colour):
        x, z, _ = self._place(s, u)
        self.spheres.append(dict(centre=torch.tensor([x, CAMERA_HEIGHT - height, z]), radius=radius,
                                 label=LABEL_IDS[label], colour=torch.tensor(colour)))

    def _populate(self, r):
        for side in (-1, 1):
            s = -30.0
            while s < self.length:  # buildings, with gaps of terrain and trees
                width = r(8, 20)
                if self.rand() < self.urban:
                    depth, height = r(8, 14), r(6, 20)
                    colour = [r(0.35, 0.8), r(0.3, 0.7), r(0.25, 0.6)]
                    self._box(s + width / 2, side * (SETBACK + r(0, 2) + depth / 2),
                              [width / 2 - 0.3, height / 2, depth / 2], 0, 'building', colour)
                else:
                    for _ in range(int(r(1, 3))):
                        self._tree(s + r(0, width), side * r(CURB + 0.5, SETBACK + 3), r)
                s += width
            s = r(0, 20)
            while s < self.length:  # street furniture on the sidewalk's outer edge
                u = side * (CURB - 0.3)
                self._box(s, u, [0.08, r(2.5, 3.5), 0.08], 0, 'pole', [0.45, 0.45, 0.47])
                if self.rand() < 0.3:
                    colour = [[0.8, 0.1, 0.1], [0.1, 0.25, 0.75], [0.9, 0.8, 0.1]][int(r(0, 2.99))]
                    self._box(s, u - side * 0.1, [0.35, 0.35, 0.03], 2.2, 'traffic sign', colour)
                s += r(18, 35)
            s = r(0, 15)
            while s < self.length:  # parked cars
                if self.rand() < 0.5:
                    self._car(s, side * (ROAD_EDGE - 1.1), r)
                s += r(6, 14)
            s = r(0, 40)
            while s < self.length:  # rare pedestrians on the sidewalk
                u = side * r(ROAD_EDGE + 0.8, CURB - 0.8)
                self._box(s, u, [0.25, 0.45, 0.15], 0, 'person', [r(0.1, 0.6), r(0.1, 0.6), r(0.2, 0.7)])
                self._box(s, u, [0.22, 0.33, 0.13], 0.9, 'person', [r(0.2, 0.9), r(0.1, 0.8), r(0.1, 0.8)])
                self._sphere(s, u, 0.12, 1.75, 'person', [0.8, 0.6, 0.5])
                s += r(40, 90)
        for _ in range(int(r(2, 5))):  # moving cars: some ahead in our lane, some oncoming
            same_way = self.rand() < 0.5
            self.movers.append(dict(s0=r(10, 40) if same_way else r(30, self.length),
                                    u=LANE_CENTRE if same_way else -LANE_CENTRE,
                                    v=self.speed * (r(0.8, 1.1) if same_way else -r(0.6, 1.2)),
                                    colour=torch.tensor([r(0.1, 0.9), r(0.1, 0.9), r(0.1, 0.9)])))

    def _tree(self, s, u, r):
        trunk = r(1.5, 3)
        self._box(s, u, [0.15, trunk / 2, 0.15], 0, 'vegetation', [0.35, 0.25, 0.15])
        radius = r(1.2, 2.8)
        self._sphere(s, u, radius, trunk + radius * 0.8, 'vegetation', [r(0.15, 0.3), r(0.35, 0.55), 0.15])

    def _car(self, s, u, r, colour=None):
        colour = colour if colour is not None else [r(0.1, 0.9), r(0.1, 0.9), r(0.1, 0.9)]
        self._box(s, u, [0.9, 0.75, 2.1], 0, 'car', colour)

    # -- camera and moving objects at a frame ----------------------------------------------------
    def camera_to_world(self, frame):
        """4x4 pose of the left camera at a frame: on the right lane, heading along the road."""
        s = frame * self.speed
        x, z, yaw = self._place(s, LANE_CENTRE)
        amp, period = self.pitch
        pose = torch.eye(4)
        pose[:3, :3] = rot_y(yaw) @ rot_x(amp * math.sin(2 * math.pi * frame / period))
        pose[:3, 3] = torch.tensor([x, 0.0, z])
        return pose

    def objects_at(self, frame):
        """Every object at a frame as one table (see object_table): the static boxes, then the moving
        cars at their positions for this frame, then the spheres."""
        movers = []
        for m in self.movers:
            x, z, yaw = self._place(m['s0'] + m['v'] * frame, m['u'])
            movers.append(dict(centre=torch.tensor([x, CAMERA_HEIGHT - 0.75, z]),
                               half=torch.tensor([0.9, 0.75, 2.1]), yaw=yaw, label=LABEL_IDS['car'],
                               colour=m['colour']))
        tables = self.tables[0], object_table(movers), self.tables[1]
        return {key: torch.cat([table[key] for table in tables]) for key in tables[0]}


def object_table(objects):
    """Objects (the dicts of Drive.boxes and Drive.spheres) as one table of tensors, row k for
    objects[k]: centre [M, 3], half extents [M, 3] (a sphere's: its radius), rot [M, 3, 3] (object to
    world axes; the identity for spheres), radius [M] (0 for boxes), colour [M, 3], label [M].
    With it a view casts and shades all its objects at once."""
    rows = [(o['centre'].tolist(), o['half'].tolist() if 'half' in o else [o['radius']] * 3,
             rot_y(o['yaw']).tolist() if 'yaw' in o else torch.eye(3).tolist(), o.get('radius', 0.0),
             o['colour'].tolist(), o['label']) for o in objects]
    centre, half, rot, radius, colour, label = zip(*rows) if rows else ([],) * 6
    return dict(centre=torch.tensor(centre).reshape(-1, 3), half=torch.tensor(half).reshape(-1, 3),
                rot=torch.tensor(rot).reshape(-1, 3, 3), radius=torch.tensor(radius).reshape(-1),
                colour=torch.tensor(colour).reshape(-1, 3), label=torch.tensor(label, dtype=torch.long).reshape(-1))


NEAR, FAR = 0.05, 150.0  # metres: the closest a ray can hit anything; objects wholly farther are not drawn
_CORNER_SIGNS = torch.tensor([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)],
                             dtype=torch.float32)
_EDGES = torch.tensor([(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count('1') == 1])


def _screen_windows(objects, origin, rot, K, height, width):
    """The pixel rectangle each object can cover, [M, 4] as (v0, v1, u0, u1); empty where it is out of
    view. It bounds the projection of the object's bounding box cut to the part in front of the camera
    (z >= NEAR): the corners there and the points where edges cross that plane. Casting only these
    rays, not the whole image per object, makes rendering fast."""
    corners = objects['centre'][:, None] + (_CORNER_SIGNS * objects['half'][:, None]) @ objects['rot'].mT
    cam = (corners - origin) @ rot  # world -> camera frame, [M, 8, 3]
    a, b = cam[:, _EDGES[:, 0]], cam[:, _EDGES[:, 1]]
    s = (NEAR - a[..., 2]) / (b[..., 2] - a[..., 2])  # where an edge crosses z = NEAR
    points = torch.cat([cam, a + s[..., None] * (b - a)], 1)
    front = torch.cat([cam[..., 2] >= NEAR, (s > 0) & (s < 1)], 1)
    z = points[..., 2].clamp(min=NEAR)
    u = K[0, 0] * points[..., 0] / z + K[0, 2]
    v = K[1, 1] * points[..., 1] / z + K[1, 2]
    lowest = lambda x: torch.where(front, x, math.inf).amin(1).trunc() - 1
    highest = lambda x: torch.where(front, x, -math.inf).amax(1).trunc() + 2
    window = torch.stack([lowest(v), highest(v), lowest(u), highest(u)], 1)
    window = torch.minimum(window.clamp(min=0), torch.tensor([height, height, width, width])).long()
    seen = front.any(1) & (cam[..., 2].amin(1) <= FAR) & (window[:, 0] < window[:, 1]) & (window[:, 2] < window[:, 3])
    return window * seen[:, None]


def _window_pixels(windows, width):
    """Every (object, pixel) pair inside the objects' windows, as object indices and flat pixel indices."""
    rows, cols = windows[:, 1] - windows[:, 0], windows[:, 3] - windows[:, 2]
    sizes = rows * cols
    obj = torch.repeat_interleave(torch.arange(len(windows)), sizes)
    i = torch.arange(len(obj)) - (sizes.cumsum(0) - sizes)[obj]  # position inside its window
    return obj, (windows[obj, 0] + i // cols[obj]) * width + windows[obj, 2] + i % cols[obj]


def _intersect(o, d, half, radius):
    """Distance along rays (origin o [P, 3], direction d [P, 3], in each one's object frame) to a box of
    half extents `half` (slab method) or, where radius > 0, a sphere at the origin; inf where missed."""
    d_safe = torch.where(d.abs() < 1e-9, 1e-9, d)
    t1, t2 = (-half - o) / d_safe, (half - o) / d_safe
    near, far = torch.minimum(t1, t2).amax(1), torch.maximum(t1, t2).amin(1)
    box = torch.where((near <= far) & (near > NEAR), near, math.inf)
    a, b = (d * d).sum(1), 2 * (d * o).sum(1)
    disc = b * b - 4 * a * ((o * o).sum(1) - radius ** 2)
    t = (-b - disc.clamp(min=0).sqrt()) / (2 * a)
    sphere = torch.where((disc > 0) & (t > NEAR), t, math.inf)
    return torch.where(radius > 0, sphere, box)


def _cast(origin, dirs, objects, windows, width, road):
    """Nearest surface along each ray (dirs [N, 3], world frame): distance [N] and hit [N], the row of
    `objects` it hits or -1 for the road (whose distances `road` holds, inf for sky). An object must be
    strictly closer than the road; between objects at the same distance the first one wins."""
    obj, pix = _window_pixels(windows, width)
    row = lambda x: x.index_select(0, obj)  # each pair's object's entry
    local_origin = ((origin - objects['centre'])[:, None] @ objects['rot'])[:, 0]  # x R = R^T x
    local_dirs = torch.bmm(dirs.index_select(0, pix)[:, None], row(objects['rot']))[:, 0]
    t = _intersect(row(local_origin), local_dirs, row(objects['half']), row(objects['radius']))
    best = road.scatter_reduce(0, pix, t, 'amin')
    wins = (t == best.index_select(0, pix)) & (t < road.index_select(0, pix))
    none = len(objects['label'])
    hit = torch.full(road.shape, none).scatter_reduce(0, pix[wins], obj[wins], 'amin')
    return best, torch.where(hit == none, -1, hit)


def render_view(drive, frame, K, height, width, offset=0.0):
    """Ray-cast one camera view; `offset` moves the camera along its x axis (the right camera).

    Rays are K^-1 [u, v, 1]: their camera-frame z is 1, so the distance along a ray *is* the depth.
    Returns rgb uint8 [3, H, W], depth float [H, W] (0 for sky), Cityscapes label ids uint8 [H, W] and
    `moving` bool [H, W], the pixels showing a moving car.
    """
    pose = drive.camera_to_world(frame)
    rot, origin = pose[:3, :3], pose[:3, 3] + offset * pose[:3, 0]
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float32),
                          torch.arange(width, dtype=torch.float32), indexing='ij')
    rays = torch.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], torch.ones_like(u)], -1)
    dirs = (rays @ rot.T).reshape(-1, 3)  # in the world frame
    road = (CAMERA_HEIGHT - origin[1]) / dirs[:, 1].clamp(min=1e-6)
    road = torch.where((dirs[:, 1] > 1e-6) & (road < 400), road, math.inf)  # the far road is sky
    objects = drive.objects_at(frame)
    windows = _screen_windows(objects, origin, rot, K, height, width)
    best, hit = _cast(origin, dirs, objects, windows, width, road)
    sky = torch.isinf(best)
    depth = torch.where(sky, 0.0, best)
    rgb, label = torch.empty(len(dirs), 3), torch.full_like(hit, LABEL_IDS['sky'])
    rgb[sky] = _sky(dirs[sky], drive)
    solid = (~sky).nonzero()[:, 0]  # shade only what is not sky
    points = origin + dirs[solid] * depth[solid, None]
    footprint = depth[solid] / K[0, 0]  # metres covered by one pixel at that depth
    albedo, normal, label[solid] = _shade_inputs(drive, points, footprint, hit[solid], objects)
    light = drive.ambient + drive.diffuse * (normal @ -drive.sun).clamp(min=0)
    rgb[solid] = albedo * light[:, None] * drive.tint
    rgb = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).T.reshape(3, height, width)
    movers = len(drive.boxes), len(drive.boxes) + len(drive.movers)  # rows of the moving cars
    moving = (hit >= movers[0]) & (hit < movers[1])
    return (rgb, depth.reshape(height, width), label.to(torch.uint8).reshape(height, width),
            moving.reshape(height, width))


def _sky(dirs, drive):
    """Sky colour from the ray direction alone (it lies at infinity): a gradient with soft clouds."""
    d = dirs / dirs.norm(dim=1, keepdim=True)
    up = (-d[:, 1]).clamp(0, 1)[:, None]
    blue = torch.tensor([0.55, 0.7, 0.92]) * (1 - up) + torch.tensor([0.3, 0.45, 0.85]) * up
    cloud = value_noise(d * 6, salt=7) * 0.6 + value_noise(d * 18, salt=8) * 0.4
    cloud = ((cloud - 0.45) * 2.5).clamp(0, 1)[:, None]
    return (blue * (1 - cloud) + 0.95 * cloud) * drive.tint


def _shade_inputs(drive, points, footprint, hit, objects):
    """Per hit point: albedo (procedural texture), surface normal, and Cityscapes label id. Textures
    use coordinates in each object's own frame, so they move with it."""
    ground = hit < 0
    row = lambda x: x.index_select(0, hit.clamp(min=0))  # each point's object's entry
    rot, half = row(objects['rot']), row(objects['half'])
    local = torch.bmm((points - row(objects['centre']))[:, None], rot)[:, 0]  # x R = R^T x
    sphere = (row(objects['radius']) > 0) & ~ground
    box_face = F.one_hot((local.abs() / half).argmax(1), 3).float() * torch.sign(local)
    face = torch.where(sphere[:, None], local / half, box_face)  # a sphere's half extents: its radius
    normal = torch.bmm(face[:, None], rot.mT)[:, 0]  # R f: back to the world's axes
    normal[ground] = torch.tensor([0.0, -1.0, 0.0])
    local[ground] = points[ground]
    salt = torch.where(ground, 0.0, 17.0 * hit)[:, None]  # decorrelates the textures of different objects
    octaves = noise_octaves(local + salt, footprint)
    half_height, label = torch.where(sphere, 1.0, half[:, 1]), row(objects['label'])
    albedo = _object_texture(row(objects['colour']), label, local, face, octaves, half_height, sphere)
    albedo[ground], label[ground] = _ground_texture(drive, points[ground], octaves[ground])
    return albedo, normal, label


def _ground_texture(drive, p, octaves):
    """Road (asphalt, lane markings), sidewalk (paving slabs) and terrain (grass), by lateral offset."""
    lateral = (p[:, 0] - road_centre(p[:, 2], drive.curve)).abs()
    grain = octaves @ torch.tensor([0.5, 0.4, 0.5, 0.6])
    dash = (torch.remainder(p[:, 2], 9.0) < 3.0) & (lateral < 0.08)
    edge_line = (lateral - (ROAD_EDGE - 0.3)).abs() < 0.08
    slab = (torch.remainder(p[:, 2], 1.0) < 0.05) | (torch.remainder(lateral, 1.0) < 0.05)
    road = torch.tensor([0.3, 0.3, 0.32]) * (1 + grain[:, None])
    road[dash | edge_line] = 0.85
    sidewalk = torch.tensor([0.62, 0.58, 0.52]) * (1 + 0.6 * grain[:, None])
    sidewalk[slab] *= 0.7
    grass_mix = (octaves[:, 0] + octaves[:, 1] + 0.5).clamp(0, 1)[:, None]
    terrain = torch.tensor([0.3, 0.45, 0.18]) * grass_mix + torch.tensor([0.45, 0.38, 0.24]) * (1 - grass_mix)
    terrain = terrain * (1 + octaves[:, 2:].sum(1, keepdim=True))
    is_road, is_walk = lateral < ROAD_EDGE, (lateral >= ROAD_EDGE) & (lateral < CURB)
    albedo = torch.where(is_road[:, None], road, torch.where(is_walk[:, None], sidewalk, terrain))
    label = torch.where(is_road, LABEL_IDS['road'],
                        torch.where(is_walk, LABEL_IDS['sidewalk'], LABEL_IDS['terrain']))
    return albedo, label


def _object_texture(colour, label, local, face, octaves, half_height, sphere):
    """Albedo on objects, from coordinates in each object's own frame (so textures move with it)."""
    albedo = colour * (1 + octaves @ torch.tensor([0.2, 0.25, 0.3, 0.3]))[:, None]
    along = torch.where(face[:, 0].abs() > 0.5, local[:, 2], local[:, 0])
    window = ((label == LABEL_IDS['building']) & (face[:, 1].abs() < 0.5)
              & (torch.remainder(along, 3.0) > 0.8) & (torch.remainder(local[:, 1], 3.2) > 1.2))
    albedo[window] = torch.tensor([0.16, 0.2, 0.28]) * (1 + octaves[window, 1:3].sum(1, keepdim=True))
    car = label == LABEL_IDS['car']
    albedo[car & (local[:, 1] < -0.2 * half_height)] = torch.tensor([0.12, 0.14, 0.18])  # windows
    albedo[car & (local[:, 1] > 0.6 * half_height)] = torch.tensor([0.06, 0.06, 0.06])  # wheels
    crown = (label == LABEL_IDS['vegetation']) & sphere
    albedo[crown] = colour[crown] * (1 + 1.5 * octaves[crown, 2:].sum(1, keepdim=True))  # leaves
    return albedo


def toy_intrinsics(height, width):
    """KITTI-like pinhole intrinsics (KITTI: fx = 721.5 at 1242 px wide, principal point a bit left
    of and above the centre), square pixels, for a render of the given size."""
    f = 0.581 * width
    return torch.tensor([[f, 0.0, 0.4908 * width], [0.0, f, 0.4611 * height], [0.0, 0.0, 1.0]])


def _calib_text(K, height, width):
    """calib_cam_to_cam.txt as KITTI writes it, for rectified cameras 00-03 (00/01 grey, 02/03 colour).
    P_rect_0x[0, 3] = -fx * (x position of camera x along the rig): KITTI's cameras 02 and 03 sit
    0.06 m left of and 0.48 m right of camera 00, 0.54 m apart."""
    positions = {'00': 0.0, '01': 0.54, '02': -0.06, '03': 0.48}
    lines = ['calib_time: 09-Jan-2012 13:57:47', 'corner_dist: 9.950000e-02']
    fmt = lambda values: ' '.join(f'{float(x):.12e}' for x in values)
    for cam, x in positions.items():
        P = torch.zeros(3, 4)
        P[:, :3] = K
        P[0, 3] = -K[0, 0] * x
        lines += [f'S_{cam}: {fmt([width, height])}', f'K_{cam}: {fmt(K.flatten())}',
                  f'D_{cam}: {fmt([0] * 5)}', f'R_{cam}: {fmt(torch.eye(3).flatten())}',
                  f'T_{cam}: {fmt([-x, 0, 0])}', f'S_rect_{cam}: {fmt([width, height])}',
                  f'R_rect_{cam}: {fmt(torch.eye(3).flatten())}', f'P_rect_{cam}: {fmt(P.flatten())}']
    return '\n'.join(lines) + '\n'


# The velodyne (an HDL-64E) as KITTI mounts it. Its axes are x forward, y left, z up, so R takes them
# to camera 0's axes by a permutation: camera x = -y, camera y = -z, camera z = x. T is where the
# scanner sits in camera 0's frame: 0.27 m behind and 0.08 m above it (2011_09_26's T, rounded).
VELO_R = ((0, -1, 0), (0, 0, -1), (1, 0, 0))
VELO_T = (-0.004, -0.076, -0.272)
VELO_ELEVATIONS = torch.linspace(2.0, -24.9, 64)  # degrees: the HDL-64E's 64 beams, top to bottom
VELO_AZIMUTH_STEP = 0.35  # degrees between two firings of a beam, fixed like a real scanner's
VELO_RANGE = 120.0  # metres: farther surfaces give no return (the HDL-64E's range)


def _calib_velo_text():
    """calib_velo_to_cam.txt as KITTI writes it."""
    fmt = lambda values: ' '.join(f'{float(x):.6e}' for x in values)
    return (f'calib_time: 15-Mar-2012 11:37:16\nR: {fmt(sum(VELO_R, ()))}\nT: {fmt(VELO_T)}\n'
            f'delta_f: {fmt([0, 0])}\ndelta_c: {fmt([0, 0])}\n')


def velodyne_scan(depth, calib_dir):
    """A toy velodyne scan of a rendered depth map of camera 02 [H, W]: float32 [N, 4] points (x forward,
    y left, z up, reflectance) in the velodyne's frame, as KITTI's .bin files hold them.

    The 64 beams (VELO_ELEVATIONS) fire every VELO_AZIMUTH_STEP degrees, seen from camera 02's centre.
    A beam direction that meets the image at (u, v) takes the rendered depth of the pixel
    read_velodyne_depth will put it on (column round(u) - 1, row round(v) - 1, the devkit's rule), so
    that the two ground truths agree pixel for pixel; it is back-projected with that depth and moved to
    the velodyne's frame by the inverse of velodyne_to_image's chain, read from the calibration files
    in `calib_dir`. Sky and surfaces beyond VELO_RANGE give no return. A coarse ring of points outside
    the camera's view (behind the car and beyond its sides), as a 360-degree scan holds, exercises the
    reader's rules for dropping points. Density in pixels falls as the render grows, as a real
    scanner's angular resolution is fixed (0.35 degrees is about 1.1 px at 96 x 320).
    """
    height, width = depth.shape
    left = data.KITTI_CAMERAS['l']
    projection = data.velodyne_to_image(calib_dir, left)[0]
    K = torch.from_numpy(data.read_calib(Path(calib_dir) / 'calib_cam_to_cam.txt')[f'P_rect_{left}'].reshape(3, 4)[:, :3])
    rigid = torch.linalg.solve(K, projection)  # [rotation | translation]: velodyne -> camera 02
    (fx, cx), (fy, cy) = K[0, [0, 2]].tolist(), K[1, [1, 2]].tolist()
    # the firings whose u can land on a column (round(u) - 1 in [0, W - 1]), then all 64 beams of each
    first, last = (math.degrees(math.atan((u - cx) / fx)) / VELO_AZIMUTH_STEP for u in (0.5, width + 0.5))
    azimuth = torch.arange(math.floor(first), math.ceil(last) + 1, dtype=torch.float64) * VELO_AZIMUTH_STEP
    azimuth, elevation = torch.deg2rad(azimuth), torch.deg2rad(VELO_ELEVATIONS.double())[:, None]
    u = (fx * azimuth.tan() + cx).expand(len(elevation), -1)  # camera 02: x right, y down, z forward
    v = cy - fy * elevation.tan() / azimuth.cos()
    col, row = u.round() - 1, v.round() - 1
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    u, v, col, row = u[inside], v[inside], col[inside].long(), row[inside].long()
    z = depth.double()[row, col]
    in_camera = torch.stack([(u - cx) / fx * z, (v - cy) / fy * z, z], 1)
    velo = torch.linalg.solve(rigid[:, :3], (in_camera - rigid[:, 3]).T).T
    # keep returns within range, and only those the float32 file leaves on their own pixel
    stored = torch.cat([velo.float().double(), torch.ones(len(velo), 1, dtype=torch.float64)], 1) @ projection.T
    same = ((stored[:, 0] / stored[:, 2]).round() - 1 == col) & ((stored[:, 1] / stored[:, 2]).round() - 1 == row)
    velo = velo[(z > 0) & (velo.norm(dim=1) <= VELO_RANGE) & same]
    # the rest of the 360 degrees, every 4 degrees on three beams at 10 m: all outside the image
    around = torch.deg2rad(torch.arange(60.0, 301.0, 4.0, dtype=torch.float64))
    tilt = torch.deg2rad(torch.tensor([-2.0, -8.0, -14.0], dtype=torch.float64))[:, None]
    ring = 10 * torch.stack([around.cos() * tilt.cos(), around.sin() * tilt.cos(),
                             tilt.sin().expand(-1, len(around))], -1).reshape(-1, 3)
    points = torch.cat([velo, ring]).float()
    return torch.cat([points, torch.full((len(points), 1), 0.5)], 1)  # the toy scanner has no reflectance


def write_png16(array, path):
    """A 16-bit PNG (grey [H, W] or RGB [H, W, 3] uint16), written by hand with zlib: torchvision
    writes only 8-bit PNGs, and Pillow cannot write 16-bit colour, which KITTI's flow maps are."""
    array = np.ascontiguousarray(array, dtype='>u2')  # PNG stores big-endian samples
    height, width = array.shape[:2]
    colour_type = 2 if array.ndim == 3 else 0
    rows = array.reshape(height, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], 1).tobytes()  # filter byte 0 per row

    def chunk(kind, body):
        return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))
    header = struct.pack('>IIBBBBB', width, height, 16, colour_type, 0, 0, 0)
    Path(path).write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(raw, 6))
                           + chunk(b'IEND', b''))


def write_depth_png(depth, path):
    """KITTI's depth PNG: uint16, metres * 256, 0 = no measurement."""
    write_png16((depth * 256).round().clamp(0, 65535).to(torch.int32).numpy(), path)


def write_flow_png(flow, valid, path):
    """KITTI's flow PNG (flow 2015 devkit): uint16 RGB = (u * 64 + 2^15, v * 64 + 2^15, valid)."""
    encoded = (flow * 64 + 2 ** 15).round().clamp(0, 65535).to(torch.int32)
    write_png16(torch.cat([encoded, valid[None].to(torch.int32)]).permute(1, 2, 0).numpy(), path)


def write_disparity_png(depth, baseline_fx, path):
    """Cityscapes' disparity PNG: uint16, p = round(d * 256) + 1 for the disparity d = baseline * fx / depth
    (pixels; `baseline_fx` = baseline * fx), 0 = invalid: sky (depth 0) and disparities too large for 16 bits."""
    encoded = (baseline_fx / depth * 256).round() + 1
    write_png16(torch.where((depth > 0) & (encoded <= 65535), encoded, 0).to(torch.int32).numpy(), path)


def write_millimetre_png(depth, path, max_depth=65.535):
    """A depth PNG in millimetres, as NYU's (BTS's sync_depth) and a folder of one's own may store it: uint16
    round(metres * 1000), 0 = no measurement: sky (depth 0) and beyond `max_depth` metres (NYU: the Kinect's
    range; by default the most 16 bits hold)."""
    millimetres = (depth * 1000).round()
    write_png16(torch.where(depth <= max_depth, millimetres, 0).to(torch.int32).numpy(), path)


def static_flow(depth, moving, depth_next, T, K):
    """Ground-truth optical flow [2, H, W] from frame t to t+1 and where it is known [H, W]: each pixel's
    3D point (from its depth) moved by the camera motion T (frame t -> frame t+1) and projected with K.
    Known means: not sky, not a moving car, in front of the camera and inside the next frame, and not
    occluded there (the next frame's depth at the landing pixel agrees within 5%)."""
    height, width = depth.shape
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float32),
                          torch.arange(width, dtype=torch.float32), indexing='ij')
    points = torch.stack([(u - K[0, 2]) / K[0, 0] * depth, (v - K[1, 2]) / K[1, 1] * depth, depth])
    moved = T[:3, :3] @ points.reshape(3, -1) + T[:3, 3:]
    z = moved[2].reshape(height, width)
    u_next = K[0, 0] * moved[0].reshape(height, width) / z.clamp(min=1e-6) + K[0, 2]
    v_next = K[1, 1] * moved[1].reshape(height, width) / z.clamp(min=1e-6) + K[1, 2]
    col, row = u_next.round().long(), v_next.round().long()
    inside = (depth > 0) & ~moving & (z > 0.1) & (col >= 0) & (col < width) & (row >= 0) & (row < height)
    seen = depth_next[row.clamp(0, height - 1), col.clamp(0, width - 1)]
    valid = inside & ((seen - z).abs() < 0.05 * z)
    return torch.stack([u_next - u, v_next - v]), valid


def _write_rgb(image, path):
    """An 8-bit PNG (RGB [3, H, W] or grey [1, H, W] uint8). Compression level 1 writes it five times
    faster than the default 6, for a file about a fifth larger; the pixels are the same."""
    write_png(image, str(path), compression_level=1)


def _write_jpeg(image, path):
    """An 8-bit RGB JPEG [3, H, W] uint8, at quality 95, as the extracted NYU-Depth-V2 (BTS's) stores its frames."""
    write_jpeg(image, str(path), quality=95)


def _with_folder(path):
    """`path`, its folder created first if need be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _render_drive_frames(root, drive, name, frames, K, height, width, bar, keep=(), velodyne=False):
    """Write left and right images (and left ground-truth depth) of some frames of a drive, and with
    `velodyne` a velodyne scan of each (velodyne_scan of the left depth); return the left views of the
    frames in `keep`, as {frame: (rgb, depth, moving)}."""
    folder = root / TOY_DATE / name
    left_dir, right_dir = (folder / data.camera_folder(side) / 'data' for side in 'lr')
    depth_dir = folder / 'proj_depth/groundtruth' / data.camera_folder('l')
    for sub in (left_dir, right_dir, depth_dir):
        sub.mkdir(parents=True, exist_ok=True)
    if velodyne:
        (folder / 'velodyne_points/data').mkdir(parents=True, exist_ok=True)
    kept = {}
    for f in frames:
        rgb, depth, _, moving = render_view(drive, f, K, height, width)
        right = render_view(drive, f, K, height, width, offset=STEREO_BASELINE)[0]
        _write_rgb(rgb, left_dir / f'{f:010d}.png')
        _write_rgb(right, right_dir / f'{f:010d}.png')
        write_depth_png(depth, depth_dir / f'{f:010d}.png')
        if velodyne:
            velodyne_scan(depth, root / TOY_DATE).numpy().tofile(folder / f'velodyne_points/data/{f:010d}.bin')
        if f in keep:
            kept[f] = rgb, depth, moving
        bar.update(2)
    poses = torch.stack([drive.camera_to_world(f)[:3].flatten() for f in range(max(frames) + 1)])
    np.savetxt(folder / 'poses.txt', poses.numpy(), fmt='%.9e')
    return kept


def _render_scene_flow(root, drive, frames, views, K):
    """KITTI's scene-flow layout (data_scene_flow/training: image_2/<id>_10.png and <id>_11.png, a frame
    and the next, and flow_noc/<id>_10.png) for some frames of the held-out drive, from its left views
    already rendered (`views`: frame -> rgb, depth, moving). The flow is known for static pixels only
    (moving cars are marked invalid): it comes from depth and camera motion. Pair i is id i (0, 1, ...),
    the first ids of the raw-data mapping (data.RAW_MAPPING), which names its frame `frames[i]`."""
    folder = root / 'data_scene_flow' / 'training'
    for sub in ('image_2', 'flow_noc'):
        (folder / sub).mkdir(parents=True)
    for i, f in enumerate(frames):
        (rgb, depth, moving), (rgb_next, depth_next, _) = views[f], views[f + 1]
        T = torch.linalg.inv(drive.camera_to_world(f + 1)) @ drive.camera_to_world(f)
        flow, valid = static_flow(depth, moving, depth_next, T, K)
        _write_rgb(rgb, folder / f'image_2/{i:06d}_10.png')
        _write_rgb(rgb_next, folder / f'image_2/{i:06d}_11.png')
        write_flow_png(flow, valid, folder / f'flow_noc/{i:06d}_10.png')


TOY_SIZE = (96, 320)  # default stored (height, width): the demo trains at 64 x 192, the speed bench at 96 x 320

# The layouts the toy world writes: per layout, its default stored size and counts, which render in 10-30 s on
# one CPU core, and what each count means in it (render_toy_world, the CLI's --help).
LAYOUT_DEFAULTS = {
    'kitti': dict(height=TOY_SIZE[0], width=TOY_SIZE[1], drives=4, frames=100, test_frames=60, labelled=100),
    'cityscapes': dict(height=96, width=192, drives=4, frames=5, test_frames=30, labelled=100),
    'nyu': dict(height=96, width=128, drives=4, frames=30, test_frames=20, labelled=40),
    'folder': dict(height=96, width=128, drives=4, frames=25, test_frames=24, labelled=0),
}
LAYOUT_COUNTS = {
    'kitti': dict(drives='training drives', frames='frames per training drive',
                  test_frames='frames of the held-out drive (val and test splits, velodyne, scene flow)',
                  labelled='data_semantics images, from separate drives'),
    'cityscapes': dict(drives='train sequences, toyaachen and toybochum in turn (val: half as many, toyfrankfurt)',
                       frames='frames of the leftImg8bit_sequence snippet around each labelled frame',
                       test_frames='val images', labelled='train images'),
    'nyu': dict(drives='sync/ scenes (test images: from half as many further scenes)', frames='frames per sync/ scene',
                test_frames='test images (official_splits/test and labelled/test)',
                labelled='labelled/train images: the first frames of the sync/ scenes'),
    'folder': dict(drives='video sequences', frames='frames per sequence',
                   test_frames='RGB-D pairs in rgbd/: consecutive frames of half as many further scenes',
                   labelled='unused (a folder of one\'s own has no semantic labels)'),
}


def render_toy_world(root, height=None, width=None, drives=None, frames=None, test_frames=None, labelled=None,
                     seed=0, threads=1, layout='kitti'):
    """Render the toy world into `root` in a dataset's layout (KITTI's by default) and return seconds taken.
    A size or count left out takes the layout's default (LAYOUT_DEFAULTS); LAYOUT_COUNTS says what each
    count means in each layout.

    kitti (DATASETS.md's toy-world section): `drives` training drives of `frames` frames each, one held-out
    drive (its first fifth is the validation split, the rest the test split, with ground-truth depth and,
    as KITTI raw has, a velodyne scan per frame in velodyne_points/data/ with calib_velo_to_cam.txt beside
    the date's calibration; the training drives get no scans, to keep the world small), and `labelled`
    images with Cityscapes label ids from separate drives, as KITTI's data_semantics, and pairs of
    consecutive test frames with ground-truth optical flow, as KITTI's data_scene_flow. Each drive also
    gets a `poses.txt` (camera-to-world of image_02, KITTI odometry format), a toy-world extra that real
    raw KITTI replaces with GPS/IMU (oxts) data; tests use it to check geometry against the renderer.
    cityscapes, nyu, folder: the files of those datasets, scene by scene (_render_layout), as
    _cityscapes_scenes, _nyu_scenes and _folder_scenes lay the scenes out.

    Deterministic for a seed, whatever `threads`. Written to a temporary folder, then renamed, so no
    half-written world is ever mistaken for a complete one; toy_world.json records the layout, size,
    counts, seed and version. A progress bar counts the views (frames, in the other layouts). Two processes
    rendering one world take turns (render_lock); a world the other one completed meanwhile raises
    FileExistsError.

    It runs on `threads` torch threads, torch's setting restored afterwards. One by default: the views
    are too small for threads to gain much, and torch's OpenMP threads spin-wait for each other, so two
    of them on two cores run several times slower as soon as another process takes one core.
    """
    start = time.time()
    if layout not in LAYOUT_DEFAULTS:
        raise ValueError(f'unknown toy-world layout {layout!r}: one of {", ".join(LAYOUT_DEFAULTS)}')
    given = dict(height=height, width=width, drives=drives, frames=frames, test_frames=test_frames, labelled=labelled)
    settings = {key: LAYOUT_DEFAULTS[layout][key] if value is None else value for key, value in given.items()}
    root = Path(root)
    tmp = root.with_name(root.name + f'.tmp-{os.getpid()}')
    with render_lock(root):
        if (root / 'toy_world.json').exists():
            raise FileExistsError(f'{root} was rendered meanwhile, by the process this one waited for.')
        for stale in root.parent.glob(f'{root.name}.tmp-*'):  # left by a render that was killed
            shutil.rmtree(stale, ignore_errors=True)
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            body = _render_world if layout == 'kitti' else partial(_render_layout, layout)
            body(tmp, *settings.values(), seed)  # height, width, drives, frames, test_frames, labelled, seed
        except BaseException:  # an interrupt or an error leaves nothing half-written behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            torch.set_num_threads(previous)
        meta = dict(version=TOY_WORLD_VERSION, **settings, seed=seed, layout=layout)
        (tmp / 'toy_world.json').write_text(json.dumps(meta, indent=1) + '\n')
        os.replace(tmp, root)
    return time.time() - start


@contextlib.contextmanager
def render_lock(root):
    """Hold the lock on rendering `root`: the hidden file .<name>.lock beside it, locked with flock, which
    the system releases when its process dies. A second process waits (and says so) until the first is done;
    the file is removed on release, and one a killed render left behind is simply locked again."""
    path = root.with_name(f'.{root.name}.lock')
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        descriptor = os.open(path, os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f'Another process is rendering the toy world into {root}: waiting for it to finish...', flush=True)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(descriptor).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(descriptor)  # its holder removed the file on release: lock the file there now
    try:
        yield
    finally:
        os.unlink(path)
        os.close(descriptor)


def _render_world(root, height, width, drives, frames, test_frames, labelled, seed):
    """The body of render_toy_world: calibration, drives, scene flow, split files, labelled images.
    Only the held-out drive (val + test) gets velodyne scans: they are test ground truth (the Eigen
    protocol's), and leaving them out of the training drives keeps the world small."""
    K = toy_intrinsics(height, width)
    (root / TOY_DATE).mkdir(parents=True)
    (root / TOY_DATE / 'calib_cam_to_cam.txt').write_text(_calib_text(K, height, width))
    (root / TOY_DATE / 'calib_velo_to_cam.txt').write_text(_calib_velo_text())
    splits = {'train': [], 'val': [], 'test': []}
    with tqdm(total=2 * (drives * frames + test_frames) + labelled, unit='view') as bar:
        for d in range(drives + 1):
            bar.set_description(f'toy world: drive {d + 1}/{drives + 1}')
            name = f'{TOY_DATE}_drive_{d + 1:04d}_sync'
            n = frames if d < drives else test_frames
            drive = Drive(seed * 1000 + d, n)
            lines = [f'{TOY_DATE}/{name} {f} l' for f in range(1, n - 1)]  # frames with both neighbours
            if d < drives:
                splits['train'] += lines
                _render_drive_frames(root, drive, name, range(n), K, height, width, bar)
                continue
            splits['val'], splits['test'] = lines[:len(lines) // 5], lines[len(lines) // 5:]
            flow_frames = range(1, n - 1)[len(lines) // 5::2]
            keep = set(flow_frames) | {f + 1 for f in flow_frames}
            views = _render_drive_frames(root, drive, name, range(n), K, height, width, bar, keep, velodyne=True)
            _render_scene_flow(root, drive, flow_frames, views, K)
            _append_raw_mapping(root, [f'{TOY_DATE} {name} {f:010d}' for f in flow_frames])  # ids 0..k-1
        bar.set_description('toy world: labelled images')
        _render_semantics(root, labelled, seed, K, height, width, bar)
    (root / 'splits').mkdir()
    for split, lines in splits.items():
        (root / 'splits' / f'{split}_files.txt').write_text('\n'.join(lines) + '\n')


LABELLED_SPACING = 25  # frames (about 25 m) between the labelled views of a drive: not near duplicates


def _render_semantics(root, count, seed, K, height, width, bar, per_drive=10):
    """KITTI data_semantics: images and label-id maps, 10 per separate drive, LABELLED_SPACING frames apart. As
    in KITTI, whose labelled images and scene-flow pairs share one id space, they are numbered after the
    scene-flow pairs, and the raw-data mapping names their drives (drive 501 on: like drive d + 1, from seed offset
    500 + d), which are not written as raw drives, as for a user who downloaded only part of raw KITTI."""
    image_dir = root / 'data_semantics/training/image_2'
    label_dir = root / 'data_semantics/training/semantic'
    image_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    first = _append_raw_mapping(root, [f'{TOY_DATE} {TOY_DATE}_drive_{501 + i // per_drive:04d}_sync '
                                       f'{(i % per_drive) * LABELLED_SPACING:010d}' for i in range(count)])
    for i in range(count):
        if i % per_drive == 0:
            drive = Drive(seed * 1000 + 500 + i // per_drive, per_drive * LABELLED_SPACING)
        rgb, _, label, _ = render_view(drive, (i % per_drive) * LABELLED_SPACING, K, height, width)
        _write_rgb(rgb, image_dir / f'{first + i:06d}_10.png')
        _write_rgb(label[None], label_dir / f'{first + i:06d}_10.png')
        bar.update(1)


def _append_raw_mapping(root, lines):
    """Append lines "<date> <drive folder> <frame:010d>" to the toy world's copy of the scene-flow devkit's
    mapping (line i: the raw frame of training id i, see read_raw_mapping); return the id of the first."""
    path = root / data.RAW_MAPPING
    path.parent.mkdir(parents=True, exist_ok=True)
    before = path.read_text().splitlines() if path.exists() else []
    path.write_text(''.join(line + '\n' for line in before + lines))
    return len(before)


# -- the other layouts: Cityscapes, NYU-Depth-V2, a folder of one's own ------------------------------------

# One scene of a layout, one toy Drive (of seed `seed`): the frames it renders, in order, and among them its
# key frames, the views with labels or ground-truth depth. `split` says which part of the layout it is in.
Scene = namedtuple('Scene', 'split name seed frames keyframes')

CITYSCAPES_CITIES = {'train': ('toyaachen', 'toybochum'), 'val': ('toyfrankfurt',)}
NYU_MAX_DEPTH = 10.0  # metres: the Kinect's range; the NYU layout's depth PNGs hold 0 beyond it
# The toy world's classes as NYU-40 classes (Gupta et al.'s ids; 0 = unlabelled) for the NYU layout's labels40
# maps: the road is the floor, sidewalk and terrain (the ground beside it) floor mats, buildings walls, the sky
# the ceiling, poles other structure, signs pictures, trees other props and cars other furniture.
NYU40_IDS = {'road': 2, 'sidewalk': 20, 'building': 1, 'pole': 38, 'traffic sign': 11, 'vegetation': 40,
             'terrain': 20, 'sky': 22, 'person': 31, 'car': 39}
_NYU40_LOOKUP = torch.zeros(256, dtype=torch.uint8)
_NYU40_LOOKUP[[LABEL_IDS[name] for name in NYU40_IDS]] = torch.tensor(list(NYU40_IDS.values()), dtype=torch.uint8)


def nyu40_labels(label):
    """Cityscapes label ids uint8 [H, W] (render_view's) -> NYU-40 class ids uint8 [H, W] (NYU40_IDS)."""
    return _NYU40_LOOKUP[label.long()]


def _spread(count, parts):
    """`count` images shared out over `parts` scenes as evenly as they go (the first ones get one more)."""
    return [count // parts + (p < count % parts) for p in range(parts)]


def _held_out(drives):
    """How many val or test scenes a layout has beside its `drives` training scenes: half as many, at least one."""
    return max(1, drives // 2)


def _scenes(split, names, seed, counts, frames=None, spacing=LABELLED_SPACING, snippet=1):
    """Scenes named `names`, the k-th one showing Drive seed + k with counts[k] key frames `spacing` frames
    apart, each in a video snippet of `snippet` frames (from snippet // 2 frames before it); with `frames`, a
    scene shows its first `frames` frames instead, its key frames among them. Scenes showing nothing are left out."""
    scenes = []
    for k, (name, count) in enumerate(zip(names, counts)):
        keys = [snippet // 2 + spacing * j for j in range(count)]
        shown = range(frames) if frames is not None else {f - snippet // 2 + i for f in keys for i in range(snippet)}
        if shown:
            scenes.append(Scene(split, name, seed + k, sorted(shown), keys))
    return scenes


def _cityscapes_scenes(drives, frames, test_frames, labelled, seed):
    """Cityscapes: `labelled` train images spread over `drives` sequences, the train cities taking turns
    (toyaachen_000000, toybochum_000000, toyaachen_000001, ...), and `test_frames` val images over half as
    many toyfrankfurt sequences, LABELLED_SPACING frames apart, each in a snippet of `frames` frames."""
    train = [f'{CITYSCAPES_CITIES["train"][k % 2]}_{k // 2:06d}' for k in range(drives)]
    val = [f'{CITYSCAPES_CITIES["val"][0]}_{k:06d}' for k in range(_held_out(drives))]
    return (_scenes('train', train, seed * 1000, _spread(labelled, len(train)), snippet=frames)
            + _scenes('val', val, seed * 1000 + 500, _spread(test_frames, len(val)), snippet=frames))


def _nyu_scenes(drives, frames, test_frames, labelled, seed):
    """NYU: `drives` train scenes toyroom_0001, ... of `frames` consecutive frames (sync/), whose first frames
    are the `labelled` labelled/train images (near duplicates, as NYU's), and `test_frames` test images,
    LABELLED_SPACING frames apart, from half as many further scenes (official_splits/test, labelled/test)."""
    if labelled > drives * frames:
        raise ValueError(f'the nyu layout takes its {labelled} labelled images from the first frames of its '
                         f'{drives} scenes of {frames} frames: pass more --drives or --frames, or fewer --labelled')
    names = [f'toyroom_{k + 1:04d}' for k in range(drives + _held_out(drives))]
    return (_scenes('train', names[:drives], seed * 1000, _spread(labelled, drives), frames=frames, spacing=1)
            + _scenes('test', names[drives:], seed * 1000 + 500, _spread(test_frames, _held_out(drives))))


def _folder_scenes(drives, frames, test_frames, labelled, seed):
    """A folder of one's own: `drives` video sequences seq_000, ... of `frames` frames, and `test_frames` RGB-D
    pairs, consecutive frames of half as many further scenes (scene_000, ...). `labelled` is unused: a folder
    of one's own has no semantic labels."""
    del labelled
    video = [f'seq_{k:03d}' for k in range(drives)]
    rgbd = [f'scene_{k:03d}' for k in range(_held_out(drives))]
    return (_scenes('video', video, seed * 1000, [0] * drives, frames=frames)
            + _scenes('rgbd', rgbd, seed * 1000 + 500, _spread(test_frames, len(rgbd)), spacing=1))


def layout_scenes(layout, drives, frames, test_frames, labelled, seed):
    """The scenes a layout other than KITTI's renders (Scene), in order: the plan _render_layout follows, which
    tests check the files against."""
    return _LAYOUTS[layout][0](drives, frames, test_frames, labelled, seed)


def scene_drive(scene):
    """The toy Drive a Scene shows, just long enough for its frames."""
    return Drive(scene.seed, scene.frames[-1] + 1)


def _cityscapes_camera(K):
    """A Cityscapes camera file's contents for the toy rig: the left camera at the vehicle's origin,
    CAMERA_HEIGHT above the road, level (the toy's slight bounce left out); the right one CITYSCAPES_BASELINE
    to its right; intrinsics in pixels of the stored images."""
    extrinsic = dict(baseline=CITYSCAPES_BASELINE, pitch=0.0, roll=0.0, x=0.0, y=0.0, yaw=0.0, z=CAMERA_HEIGHT)
    intrinsic = dict(fx=float(K[0, 0]), fy=float(K[1, 1]), u0=float(K[0, 2]), v0=float(K[1, 2]))
    return dict(extrinsic=extrinsic, intrinsic=intrinsic)


def _write_cityscapes_view(root, scene, frame, view, drive, K, index):
    """A frame of a Cityscapes sequence: its leftImg8bit_sequence image, and for a key frame (index not None) the
    labelled left image, the right one (rendered CITYSCAPES_BASELINE to the right), the label ids, the disparity
    and the camera file."""
    rgb, depth, label, _ = view
    city = scene.name.rsplit('_', 1)[0]
    path = lambda kind, suffix: _with_folder(root / kind / scene.split / city / f'{scene.name}_{frame:06d}_{suffix}')
    _write_rgb(rgb, path('leftImg8bit_sequence', 'leftImg8bit.png'))
    if index is None:
        return
    right = render_view(drive, frame, K, *depth.shape, offset=CITYSCAPES_BASELINE)[0]
    _write_rgb(rgb, path('leftImg8bit', 'leftImg8bit.png'))
    _write_rgb(right, path('rightImg8bit', 'rightImg8bit.png'))
    _write_rgb(label[None], path('gtFine', 'gtFine_labelIds.png'))
    write_disparity_png(depth, CITYSCAPES_BASELINE * K[0, 0], path('disparity', 'disparity.png'))
    path('camera', 'camera.json').write_text(json.dumps(_cityscapes_camera(K), indent=2) + '\n')


def _write_nyu_view(root, scene, frame, view, drive, K, index):
    """A frame of an NYU scene: a train scene's sync/ frame (numbered by frame) or a test image in
    official_splits/test (numbered by index, as NYU's test images by their place in the labelled .mat),
    and for a key frame (index not None) its labelled/<split> image and NYU-40 labels, numbered by index."""
    rgb, depth, label, _ = view
    folder, number = ((root / 'sync' / scene.name, frame) if scene.split == 'train'
                      else (root / 'official_splits/test' / scene.name, index))
    _write_jpeg(rgb, _with_folder(folder / f'rgb_{number:05d}.jpg'))
    write_millimetre_png(depth, folder / f'sync_depth_{number:05d}.png', NYU_MAX_DEPTH)
    if index is not None:
        _write_rgb(rgb, _with_folder(root / 'labelled' / scene.split / f'rgb_{index:05d}.png'))
        _write_rgb(nyu40_labels(label)[None], root / 'labelled' / scene.split / f'labels40_{index:05d}.png')


def _write_folder_view(root, scene, frame, view, drive, K, index):
    """A frame of a folder of one's own: a video sequence's image <sequence>/<frame:06d>.png, or an RGB-D pair
    rgbd/<scene>_<frame:06d>_rgb.png with _depth.npy (float32 metres, 0 = sky)."""
    rgb, depth = view[:2]
    if scene.split == 'video':
        _write_rgb(rgb, _with_folder(root / scene.name / f'{frame:06d}.png'))
        return
    stem = f'{scene.name}_{frame:06d}'
    _write_rgb(rgb, _with_folder(root / 'rgbd' / f'{stem}_rgb.png'))
    np.save(root / 'rgbd' / f'{stem}_depth.npy', depth.numpy())


# Per layout other than KITTI's: its scenes, and the writer of each rendered frame.
_LAYOUTS = {'cityscapes': (_cityscapes_scenes, _write_cityscapes_view), 'nyu': (_nyu_scenes, _write_nyu_view),
            'folder': (_folder_scenes, _write_folder_view)}


def _render_layout(layout, root, height, width, drives, frames, test_frames, labelled, seed):
    """The body of render_toy_world for the layouts other than KITTI's: every frame of every scene
    (layout_scenes) rendered once, in order, and handed to the layout's writer with its index if it is a key
    frame (1, 2, ... over the whole world, in order: NYU's numbering of its labelled images), else None;
    then, for a folder of one's own, intrinsics.txt ("fx fy cx cy")."""
    scenes = layout_scenes(layout, drives, frames, test_frames, labelled, seed)
    write, K, index = _LAYOUTS[layout][1], toy_intrinsics(height, width), 0
    root.mkdir(parents=True)
    with tqdm(total=sum(len(scene.frames) for scene in scenes), unit='frame') as bar:
        for scene in scenes:
            bar.set_description(f'toy world: {scene.split} {scene.name}')
            drive = scene_drive(scene)
            for f in scene.frames:
                key = f in scene.keyframes
                index += key
                write(root, scene, f, render_view(drive, f, K, height, width), drive, K, index if key else None)
                bar.update(1)
    if layout == 'folder':
        (root / 'intrinsics.txt').write_text(' '.join(str(float(x)) for x in K[[0, 1, 0, 1], [0, 1, 2, 2]]) + '\n')


TOY_WORLD_VERSION = 2  # 2: velodyne scans, the raw-data mapping, labelled ids after the scene-flow ids


def ensure_toy_world(root, layout='kitti', **render_args):
    """Render the toy world into `root`, in `layout`, on first use; afterwards reuse it (it is deterministic).
    A world in another layout (one without a layout in its toy_world.json is KITTI's), one an older version
    of this code rendered, which lacks files the readers now need, one whose toy_world.json is damaged, or a
    file where the folder should be, stops with a sentence."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise SystemExit(f'{root} is a file, not a toy world\'s folder: pass --data-root a rendered toy world, or a '
                         f'new folder to render one into.')
    if not (root / 'toy_world.json').exists():
        render_on_first_use(root, layout, **render_args)
    try:
        meta = json.loads((root / 'toy_world.json').read_text())
        found, version = meta.get('layout', 'kitti'), meta.get('version', 1)
    except (ValueError, AttributeError):  # not JSON, or not a JSON object
        raise SystemExit(f'{root / "toy_world.json"} is damaged (it should record the world\'s layout and version): '
                         f'delete the world (rm -r {root}) and run again to render it.') from None
    if found != layout:
        raise SystemExit(f'{root} holds a toy world in the {found} layout, not the {layout} layout asked for: '
                         f'pass another folder (the {layout} world is rendered there on first use) or delete '
                         f'this one (rm -r {root}).')
    if version != TOY_WORLD_VERSION:
        raise SystemExit(f'{root} holds a toy world of version {version}, from an older version of this code '
                         f'(without velodyne scans and the raw-data mapping): delete it (rm -r {root}) and run '
                         f'again to render the current one (version {TOY_WORLD_VERSION}).')


def render_on_first_use(root, layout, **render_args):
    """Render the world into `root`, an empty or missing folder; where another process rendered it meanwhile
    (render_lock made this one wait), use that one."""
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f'{root} exists but holds no complete toy world (no toy_world.json): '
                         f'move it away or pass another --data-root.')
    why = data.unwritable(root)
    if why:
        raise SystemExit(f'cannot render the toy world into {root} ({why}): pass --data-root a folder you can write.')
    print(f'Rendering the toy world into {root}, in the {layout} layout (once; under a minute on a CPU core)...',
          flush=True)
    try:
        seconds = render_toy_world(root, layout=layout, **render_args)
    except FileExistsError:
        print(f'{root} was rendered meanwhile by another process: using it.', flush=True)
        return
    print(f'Rendered the toy world in {seconds:.0f} s.', flush=True)


def _layout_help():
    """The CLI's --help epilog: per layout, its default size and counts and what each count means."""
    lines = ['What the counts mean, and their defaults, per layout:']
    for layout, meanings in LAYOUT_COUNTS.items():
        defaults = LAYOUT_DEFAULTS[layout]
        lines.append(f'  --layout {layout} (default --height {defaults["height"]} --width {defaults["width"]}):')
        lines += [f'    --{key.replace("_", "-")} {defaults[key]}: {meaning}' for key, meaning in meanings.items()]
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description='Render the toy world into a new folder, in the layout of KITTI '
                                     '(by default), Cityscapes, NYU-Depth-V2 or a folder of one\'s own.',
                                     epilog=_layout_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('root', metavar='DIR', help='the folder to render into (must not exist)')
    parser.add_argument('--layout', choices=LAYOUT_DEFAULTS, default='kitti', help='the dataset layout to write')
    parser.add_argument('--height', type=int, help='render height (pixels; default: per layout, below)')
    parser.add_argument('--width', type=int, help='render width (pixels; default: per layout, below)')
    parser.add_argument('--drives', type=int, help='training drives (or sequences, scenes: per layout, below)')
    parser.add_argument('--frames', type=int, help='frames per training drive (per layout, below)')
    parser.add_argument('--test-frames', type=int, help='frames of the held-out drive (per layout, below)')
    parser.add_argument('--labelled', type=int, help='images with semantic labels (per layout, below)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=1,
                        help='torch threads for rendering (more only help on idle cores: see render_toy_world)')
    args = parser.parse_args(argv)
    if Path(args.root).exists():
        raise SystemExit(f'{args.root} already exists: choose a new folder (nothing was overwritten).')
    why = data.unwritable(args.root)
    if why:
        raise SystemExit(f'cannot render into {args.root} ({why}): choose a folder you can write.')
    seconds = render_toy_world(args.root, args.height, args.width, args.drives, args.frames, args.test_frames,
                               args.labelled, args.seed, args.threads, args.layout)
    print(f'Rendered the toy world into {args.root} in {seconds:.1f} s.')


if __name__ == '__main__':
    main()
