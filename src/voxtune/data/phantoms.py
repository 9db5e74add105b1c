"""Synthetic phantoms of three more MSD tasks: spleen CT (Task09), hippocampus MRI (Task04), prostate MRI (Task05).

Each case draws its own voxel spacing and field of view (the task's nominal field, base shape x nominal
spacing, give or take a few per cent per axis); its matrix is that field over its spacing, kept within
0.85-1.15 of the base shape per axis. Anatomy is laid out in millimetres about the field's centre, in
fractions of the nominal half-field (`half`): an organ has the same physical size in every case of a
dataset whatever the case's spacing, and still fills the field at any base shape. The NIfTI affine
carries the spacing (header zooms). Same generator state -> byte-identical arrays.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from voxtune.data.shape import MIN_SIZE

Shape = tuple[int, int, int]
Case = tuple[np.ndarray, np.ndarray, np.ndarray]  # image, label uint8 [X, Y, Z], affine 4x4


@dataclass(frozen=True)
class MsdTask:
    """One synthetic MSD task: its dataset.json fields, its case file names and the maker of one case."""

    name: str                    # dataset.json "name"
    folder: str                  # the official task folder, e.g. "Task09_Spleen"
    tensor_size: str             # dataset.json "tensorImageSize": "3D" (one modality) or "4D"
    modality: dict[str, str]
    labels: dict[str, str]
    shape: Shape                 # default base shape (X, Y, Z)
    file: str                    # case file name, formatted with n = case index + first
    first: int                   # number of the first case (MSD's prostate counts from 0)
    make_case: Callable[[np.random.Generator, Shape], Case]

    def case_file(self, index: int) -> str:
        return self.file.format(n=index + self.first)


def _case_grid(rng: np.random.Generator, base: Shape, nominal: tuple[float, float, float],
               spacing: tuple[float, float, float], spread: float) -> tuple[Shape, list[np.ndarray]]:
    """Matrix (X, Y, Z) of one case of voxel size `spacing` mm, and its axes in mm about the field's centre
    (float32, broadcast shapes [X,1,1], [1,Y,1], [1,1,Z]).

    The field of view is the nominal one (base x nominal spacing) times 1 +- `spread` per axis, so a finer
    spacing gives a larger matrix, as on a scanner; the matrix stays within 0.85-1.15 of `base`, >= MIN_SIZE.
    """
    base_arr = np.asarray(base, dtype=np.float64)
    field = base_arr * np.asarray(nominal) * rng.uniform(1 - spread, 1 + spread, size=3)
    low = np.maximum(MIN_SIZE, np.round(0.85 * base_arr))
    high = np.maximum(MIN_SIZE, np.round(1.15 * base_arr))
    shape = tuple(int(n) for n in np.clip(np.round(field / np.asarray(spacing)), low, high))
    axes = [((np.arange(n) - (n - 1) / 2) * s).astype(np.float32).reshape([-1 if a == i else 1 for a in range(3)])
            for i, (n, s) in enumerate(zip(shape, spacing))]
    return shape, axes


def _texture(rng: np.random.Generator, axes: list[np.ndarray], wavelength: float, waves: int = 4) -> np.ndarray:
    """Smooth random texture, float32 with about unit standard deviation: plane waves `wavelength` mm long
    (0.6-1.6x) in random directions."""
    field = np.zeros(np.broadcast_shapes(*(a.shape for a in axes)), dtype=np.float32)
    for _ in range(waves):
        direction = rng.normal(size=3)
        k = 2 * np.pi / (wavelength * rng.uniform(0.6, 1.6)) * direction / np.linalg.norm(direction)
        phase = rng.uniform(0, 2 * np.pi)
        # cos(a + b + c) as a product of per-axis complex exponentials: one complex multiply per voxel
        e = [np.exp(1j * (k[i] * a + (phase if i == 0 else 0.0))).astype(np.complex64) for i, a in enumerate(axes)]
        field += (e[0] * e[1] * e[2]).real
    return field * np.float32(np.sqrt(2.0 / waves))


def _ellipsoid(axes: list[np.ndarray], centre, radii, angle: float = 0.0) -> list[np.ndarray]:
    """Offsets from `centre` (mm), turned by `angle` (rad) in the X-Y plane, over `radii` (mm): a point lies
    inside the ellipsoid where the sum of their squares is <= 1."""
    x, y, z = (a - np.float32(c) for a, c in zip(axes, centre))
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return [(cos * x + sin * y) / np.float32(radii[0]), (cos * y - sin * x) / np.float32(radii[1]),
            z / np.float32(radii[2])]


def _blob(rng: np.random.Generator, q: list[np.ndarray], amount: float, lumps: int = 3) -> np.ndarray:
    """Normalised radius of the ellipsoid coordinates `q` (<= 1 inside), its surface made lumpy by a
    direction-dependent factor 1 +- `amount`."""
    dist = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2) + np.float32(1e-6)
    factor = np.float32(1.0)
    for _ in range(lumps):
        axis = rng.normal(size=3)
        axis = (axis / np.linalg.norm(axis)).astype(np.float32)
        cos = (q[0] * axis[0] + q[1] * axis[1] + q[2] * axis[2]) / dist
        k, phase = np.float32(rng.uniform(1.5, 3.5)), np.float32(rng.uniform(0, 2 * np.pi))
        factor = factor + np.float32(amount / lumps) * np.cos(k * cos + phase)
    return dist / factor


def _affine(spacing, origin, signs=(1, 1, 1)) -> np.ndarray:
    affine = np.diag([*(s * float(sign) for s, sign in zip(spacing, signs)), 1.0])
    affine[:3, 3] = origin
    return affine


# --- spleen CT (Task09) ---------------------------------------------------------------------------------
_CT_NOMINAL = (0.8, 0.8, 2.0)
# Hounsfield units, mean and noise sd, per tissue: air, fat, soft tissue, liver, spleen, cancellous bone, cortex
_CT_HU = np.array([-1000, -100, 40, 60, 115, 450, 900], dtype=np.float32)
_CT_SD = np.array([6, 15, 15, 12, 14, 40, 50], dtype=np.float32)


def spleen_ct_case(rng: np.random.Generator, base: Shape) -> Case:
    """One abdominal CT slab. Returns image int16 [X, Y, Z] in HU, label uint8 [X, Y, Z] in {0, 1}, affine.

    Voxel (i, j, k) lies at world (x0 - i sx, y0 - j sy, z0 + k sz) mm, as in many CTs: i runs toward the
    patient's right and j toward the back, so the spleen (patient's left) lies at low i and the spine at high j.
    In-plane spacing 0.7-0.9 mm, slices 1.5-2.5 mm.
    """
    pixel = rng.uniform(0.7, 0.9)
    spacing = (pixel, pixel, rng.uniform(1.5, 2.5))
    shape, axes = _case_grid(rng, base, _CT_NOMINAL, spacing, spread=0.06)
    half = np.asarray(base) * _CT_NOMINAL / 2
    # Body: an elliptic cylinder along Z, wider than deep, in a rim of subcutaneous fat.
    a, b = half[0] * rng.uniform(0.84, 0.90), half[1] * rng.uniform(0.66, 0.74)
    centre = (*(half[:2] * rng.uniform(-0.03, 0.03, size=2)), 0.0)
    rim = half[0] * rng.uniform(0.07, 0.11)
    body = sum(q ** 2 for q in _ellipsoid(axes, centre, (a, b, np.inf))) <= 1
    inner = sum(q ** 2 for q in _ellipsoid(axes, centre, (a - rim, b - rim, np.inf))) <= 1
    # Spine: a vertebral body (cortex around cancellous bone) near the back, with its posterior arch.
    r_bone = half[0] * rng.uniform(0.12, 0.15)
    spine_v = centre[1] + (b - rim) - 1.9 * r_bone
    vertebra = np.sqrt(sum(q ** 2 for q in _ellipsoid(axes, (centre[0], spine_v, 0), (r_bone, r_bone, np.inf))))
    arch = sum(q ** 2 for q in _ellipsoid(axes, (centre[0], spine_v + 1.45 * r_bone, 0),
                                          (0.35 * r_bone, 0.6 * r_bone, np.inf))) <= 1
    # Liver on the patient's right (high i), spleen on the left (low i) toward the back: lumpy ellipsoids.
    liver = _blob(rng, _ellipsoid(axes, (centre[0] + 0.42 * a, centre[1] - 0.12 * b, half[2] * rng.uniform(-0.1, 0.1)),
                                  (0.55 * a, 0.70 * b, 1.05 * half[2]), rng.uniform(-0.3, 0.3)), 0.15) <= 1
    radii = np.array([0.32 * a, 0.48 * b, 0.64 * half[2]]) * rng.uniform(0.92, 1.08, size=3)
    spleen_c = (centre[0] - a * rng.uniform(0.46, 0.52), centre[1] + b * rng.uniform(0.10, 0.20),
                half[2] * rng.uniform(-0.1, 0.1))
    spleen = _blob(rng, _ellipsoid(axes, spleen_c, radii, rng.uniform(-0.5, 0.5)), 0.22, lumps=4) <= 1

    tissue = np.zeros(shape, dtype=np.int64)  # indices into _CT_HU
    tissue[body] = 1
    tissue[inner] = 2
    tissue[inner & liver] = 3
    tissue[inner & spleen] = 4
    tissue[inner & (arch | (vertebra <= 1))] = 6
    tissue[inner & (vertebra <= 0.72)] = 5
    label = (tissue == 4).astype(np.uint8)

    hu = _CT_HU[tissue] + _CT_SD[tissue] * rng.standard_normal(shape, dtype=np.float32)
    # Bowel and muscle pattern in soft tissue, a finer one in the spleen, a faint one in the liver.
    hu += (tissue == 2) * np.float32(12) * _texture(rng, axes, 0.5 * half[0])
    hu += (tissue == 4) * np.float32(8) * _texture(rng, axes, 0.2 * half[0])
    hu += (tissue == 3) * np.float32(5) * _texture(rng, axes, 0.4 * half[0])
    image = np.rint(np.clip(hu, -1024, 3071)).astype(np.int16)
    origin = ((shape[0] - 1) / 2 * spacing[0] + rng.uniform(-20, 20),
              (shape[1] - 1) / 2 * spacing[1] + rng.uniform(-20, 20), -rng.uniform(100, 400))
    return image, label, _affine(spacing, origin, signs=(-1, -1, 1))


# --- hippocampus MRI (Task04) ---------------------------------------------------------------------------
def hippocampus_case(rng: np.random.Generator, base: Shape) -> Case:
    """A T1 MRI crop around one hippocampus. Returns image float32 [X, Y, Z], label uint8 [X, Y, Z] in {0, 1, 2}
    (1 anterior head, 2 posterior body and tail), affine (isotropic 0.95-1.05 mm).

    Every voxel is tissue (grey/white texture, no zero background). The hippocampus is a tube along Y, bent in
    X and rising in Z toward the tail, thick at the anterior head (high Y) and thin at the tail, darker than
    the tissue around it and wrapped in a thin darker CSF border.
    """
    s = rng.uniform(0.95, 1.05)
    shape, axes = _case_grid(rng, base, (1.0, 1.0, 1.0), (s, s, s), spread=0.10)
    half = np.asarray(base, dtype=np.float64) / 2
    x, y, z = axes
    # Position along the tube: t = 0 at the anterior tip, 1 at the posterior tip (one value per Y slice).
    length = 2 * half[1] * rng.uniform(0.76, 0.80)
    y_head = length / 2 + half[1] * rng.uniform(-0.04, 0.04)
    t = (y_head - y) / np.float32(length)
    bend = half[0] * rng.uniform(0.12, 0.20) * rng.choice([-1.0, 1.0])
    x_c = np.float32(half[0] * rng.uniform(-0.05, 0.05)) + np.float32(bend) * (4 * (t - 0.5) ** 2 - np.float32(1 / 3))
    rise = half[2] * rng.uniform(0.20, 0.30)
    z_c = np.float32(-rise / 2) + np.float32(rise) * t ** 2
    r_head, r_tail = half[0] * rng.uniform(0.58, 0.62), half[0] * rng.uniform(0.32, 0.35)
    ends = np.sqrt(np.clip(1 - np.abs(2 * t - 1) ** 6, 0, 1))  # rounded tips
    radius = (np.float32(r_tail) + np.float32(r_head - r_tail) * np.clip(1 - t, 0, 1) ** 1.5) * ends
    radius = np.maximum(radius, np.float32(1e-3))  # mm, per Y slice; ~0 beyond the tips
    flat = np.float32(rng.uniform(0.85, 0.95))  # cross-sections are flattened in Z
    dist = np.sqrt(((x - x_c) / radius) ** 2 + ((z - z_c) / (flat * radius)) ** 2)
    inside = dist <= 1
    csf = ~inside & ((dist - 1) * radius <= np.float32(rng.uniform(1.0, 1.5))) & (radius > 1)

    label = np.zeros(shape, dtype=np.uint8)
    split = np.float32(rng.uniform(0.36, 0.40))
    label[inside & (t < split)] = 1
    label[inside & (t >= split)] = 2

    # Grey/white matter mix around it, a smooth coil bias over all, then noise (Gaussian: the signal is high).
    white = 1 / (1 + np.exp(-3 * _texture(rng, axes, 0.5 * half[0], waves=6)))
    value = np.float32(290) + np.float32(130) * white
    value = np.where(inside, np.float32(215) + np.float32(10) * _texture(rng, axes, 0.3 * half[0]), value)
    value = np.where(csf, np.float32(95), value)
    bias = 1 + np.float32(0.06) * _texture(rng, axes, 3 * half[0], waves=2)
    noise = np.float32(12) * rng.standard_normal(shape, dtype=np.float32)
    image = np.clip(value * bias + noise, 1, None).astype(np.float32)
    origin = (-(shape[0] // 2) * s + 1.0, -(shape[1] // 2) * s - 8.0, -(shape[2] // 2) * s + 3.0)
    return image, label, _affine((s, s, s), origin)


# --- prostate MRI (Task05) ------------------------------------------------------------------------------
_MR_NOMINAL = (0.625, 0.625, 3.8)
# Per tissue: outside, fat, muscle, rectal wall, rectal lumen, PZ, TZ. Rows: T2 (a.u.), ADC (1e-6 mm^2/s).
_MR_MEAN = np.array([[0, 680, 170, 210, 330, 560, 320],
                     [0, 220, 1380, 1150, 1900, 1700, 1100]], dtype=np.float32)
_MR_SD = np.array([[8, 40, 18, 20, 40, 35, 30],
                   [20, 90, 90, 90, 150, 110, 90]], dtype=np.float32)


def prostate_case(rng: np.random.Generator, base: Shape) -> Case:
    """An axial pelvic MRI. Returns image float32 [X, Y, Z, 2] (T2, ADC), label uint8 [X, Y, Z] in {0, 1, 2}
    (1 PZ, 2 TZ), affine (in-plane 0.55-0.7 mm, slices 3.6 or 4.0 mm: anisotropic, ratio 5-7).

    World Y points to the front (RAS), so the rectum lies at low j behind the prostate. The TZ is an
    ellipsoid in the front centre of the prostate, the PZ the crescent behind and around it. T2: fat and PZ
    bright, TZ medium and nodular, muscle dark; ADC: PZ high, TZ lower, muscle medium, fat dark.
    """
    pixel = rng.uniform(0.55, 0.70)
    spacing = (pixel, pixel, float(rng.choice([3.6, 4.0])))
    shape, axes = _case_grid(rng, base, _MR_NOMINAL, spacing, spread=0.06)
    half = np.asarray(base) * _MR_NOMINAL / 2
    hx, hy, hz = half
    # Pelvis: body filling most of the field in a fat rim; obturator muscles at the sides; rectum behind.
    a, b = hx * rng.uniform(0.92, 0.97), hy * rng.uniform(0.82, 0.90)
    body = sum(q ** 2 for q in _ellipsoid(axes, (0, 0, 0), (a, b, np.inf))) <= 1
    muscle = np.zeros(shape, dtype=bool)
    for side in (-1, 1):
        muscle |= sum(q ** 2 for q in _ellipsoid(axes, (side * 0.68 * hx, 0.0, 0), (0.17 * hx, 0.50 * hy, np.inf),
                                                 side * rng.uniform(0.1, 0.3))) <= 1
    rectum = np.sqrt(sum(q ** 2 for q in _ellipsoid(axes, (0, -0.56 * hy, 0), (0.24 * hx, 0.18 * hy, np.inf))))
    radii = np.array([0.42 * hx, 0.33 * hy, 0.60 * hz]) * rng.uniform(0.93, 1.07, size=3)
    centre = np.array([hx * rng.uniform(-0.03, 0.03), hy * rng.uniform(0.02, 0.08), hz * rng.uniform(-0.05, 0.05)])
    prostate = _blob(rng, _ellipsoid(axes, centre, radii), 0.08) <= 1
    tz_radii = radii * np.array([0.75, 0.72, 0.80]) * rng.uniform(0.95, 1.05, size=3)
    tz = _blob(rng, _ellipsoid(axes, centre + [0, 0.28 * radii[1], 0.05 * radii[2]], tz_radii), 0.12) <= 1

    tissue = np.zeros(shape, dtype=np.int64)  # column of _MR_MEAN
    tissue[body] = 1
    tissue[body & muscle] = 2
    tissue[body & (rectum <= 1)] = 3
    tissue[body & (rectum <= 0.55)] = 4
    tissue[prostate] = 5
    tissue[prostate & tz] = 6
    label = np.zeros(shape, dtype=np.uint8)
    label[tissue == 5], label[tissue == 6] = 1, 2

    nodules = _texture(rng, axes, 0.15 * hx)  # benign hyperplasia: the TZ's nodular look in both channels
    striae = _texture(rng, axes, 0.25 * hx)
    septa = _texture(rng, axes, 0.2 * hx)
    bias = 1 + np.float32(0.10) * _texture(rng, axes, 3 * hx, waves=2)
    image = np.empty((*shape, 2), dtype=np.float32)
    for c, (tz_tex, pz_tex, fat_tex) in enumerate(((50, 25, 40), (60, 40, 30))):
        value = _MR_MEAN[c][tissue] + _MR_SD[c][tissue] * rng.standard_normal(shape, dtype=np.float32)
        value += (tissue == 6) * np.float32(tz_tex) * nodules + (tissue == 5) * np.float32(pz_tex) * striae
        value += (tissue == 1) * np.float32(fat_tex) * septa
        # Outside the body: the magnitude of pure noise, low but never zero.
        value = np.where(tissue == 0, np.abs(value) + np.float32(1), value * bias)
        image[..., c] = np.clip(value, 1, None)
    origin = (-(shape[0] - 1) / 2 * spacing[0] - rng.uniform(0, 10), -(shape[1] - 1) / 2 * spacing[1] + 20.0,
              -(shape[2] - 1) / 2 * spacing[2] + rng.uniform(-15, 15))
    return image, label, _affine(spacing, origin)


SPLEEN_CT = MsdTask("Spleen", "Task09_Spleen", "3D", {"0": "CT"}, {"0": "background", "1": "spleen"},
                    (48, 48, 32), "spleen_{n}.nii.gz", 1, spleen_ct_case)
HIPPOCAMPUS = MsdTask("Hippocampus", "Task04_Hippocampus", "3D", {"0": "MRI"},
                      {"0": "background", "1": "Anterior", "2": "Posterior"}, (32, 40, 32),
                      "hippocampus_{n:03d}.nii.gz", 1, hippocampus_case)
PROSTATE = MsdTask("Prostate", "Task05_Prostate", "4D", {"0": "T2", "1": "ADC"},
                   {"0": "background", "1": "PZ", "2": "TZ"}, (64, 64, 16), "prostate_{n:02d}.nii.gz", 0,
                   prostate_case)
