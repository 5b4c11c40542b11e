"""The eyeball texture (sclera, veins, limbus, iris, pupil); the iris colour from a photo is
:mod:`services.eyeball.iris`.

The texture layout is the equal-area projection of :mod:`services.eyeball.mesh`: texel
``(row i, col j)`` of an ``S x S`` texture has OBJ ``u = (j + 0.5) / S``, ``v = 1 - (i + 0.5) / S``
and shows the direction with ``sin(theta / 2) = 2 * |(u, v) - 0.5|``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from pathlib import Path

import cv2
import numpy as np

from ffhquv import vocab
from ffhquv.config import cache_dir
from ffhquv.diskcache import load_arrays, save_arrays
from services.eyeball.iris import (  # noqa: F401  (re-exported: the iris colour API)
    DEFAULT_IRIS_RGB,
    LEFT_EYE,
    MIN_EYE_ASPECT,
    MIN_EYE_WIDTH_PX,
    RIGHT_EYE,
    SCLERA_RGB,
    _lin,  # sRGB 0..255 -> linear [0, 1] (and _srgb back): the level table
    _srgb,
    eye_aspect_ratio,
    eye_colours,
    iris_colour,
)
from services.eyeball.mesh import LIMBUS_ANGLE, PUPIL_FRACTION

VEIN_RGB = np.array([182.0, 70.0, 66.0])
BACK_RGB = np.array([196.0, 140.0, 130.0])
DEFAULT_SEED = 7  # of the veins and iris fibres

log = logging.getLogger(__name__)


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _periodic_noise(rng: np.random.Generator, n: int, x: np.ndarray) -> np.ndarray:
    """Smooth periodic 1D noise with ``n`` knots over ``x`` in [0, 1) (cubic-ish via cos)."""
    knots = rng.standard_normal(n)
    xf = (x % 1.0) * n
    i0 = np.floor(xf).astype(int) % n
    t = xf - np.floor(xf)
    t = (1 - np.cos(t * math.pi)) / 2
    return knots[i0] * (1 - t) + knots[(i0 + 1) % n] * t


def eyeball_texture(iris_rgb: tuple[float, float, float] | np.ndarray = DEFAULT_IRIS_RGB,
                    size: int = 1024, seed: int = DEFAULT_SEED, level: float = 1.0
                    ) -> np.ndarray:
    """Procedural eyeball texture.

    Args:
        iris_rgb: iris base colour, sRGB 0..255.
        size: texture side ``S`` (>= 64).
        seed: random seed of the veins and iris fibres (deterministic output).
        level: the photo's exposure of the eyes (``EyeColours.level``): the whole texture
            times this in linear RGB (1: the sclera is :data:`SCLERA_RGB`).
    Returns:
        ``uint8 [S, S, 3]`` RGB, row 0 = ``v = 1`` (the top of the eye).
    """
    # the texture is affine in the iris colour: img = base * A + B, with A and B cached per
    # (size, seed) (building them is most of a second at 1024; combining takes milliseconds)
    a, b = _eyeball_layers(int(size), int(seed))
    still, (y0, y1, x0, x1) = _iris_free(int(size), int(seed))
    base = np.asarray(iris_rgb, np.float32).reshape(3)
    # A is 0 outside the iris's box (a ninth of the texels): there the texture is B's, rounded
    # once per (size, seed)
    out = still.copy()
    out[y0:y1, x0:x1] = np.clip(a[y0:y1, x0:x1] * base + b[y0:y1, x0:x1] + 0.5, 0, 255
                                ).astype(np.uint8)
    if level != 1.0:
        out = _level_table(round(float(level), 3))[out]
    return out


@functools.lru_cache(maxsize=64)
def _level_table(level: float) -> np.ndarray:
    """``uint8 [256]``: each sRGB value times ``level`` in linear RGB, rounded."""
    table = np.clip(_srgb(_lin(np.arange(256)) * level) + 0.5, 0, 255).astype(np.uint8)
    table.flags.writeable = False
    return table


def warm(size: int = vocab.TEXTURE_SIZE_DEFAULT) -> None:
    """Build the photo-independent layers of a ``size`` texture now (most of a second at 1024),
    so that the first request does not wait for them."""
    _eyeball_layers(int(size), DEFAULT_SEED)
    _iris_free(int(size), DEFAULT_SEED)


@functools.lru_cache(maxsize=4)
def _eyeball_layers(s: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(A, B)``, each read-only ``float32 [S, S, 3]``: the eyeball texture before rounding is
    ``iris_rgb * A + B``. Kept on disk under ``<FFHQUV_CACHE_DIR>/eyeball/`` (keyed by the
    code that draws them, the size and the seed): drawing them costs each new process about
    1.5 s (2.6 s on a busy host, each of a folder's workers), loading them milliseconds."""
    path = cache_dir() / "eyeball" / f"layers-{_layers_key(s, seed)}.npz"
    layers = _load_layers(path, s)
    if layers is None:
        layers = _draw_layers(s, seed)
        save_arrays(path, {"a": layers[0], "b": layers[1]}, "eyeball layer")
    for x in layers:
        x.flags.writeable = False
    return layers


@functools.lru_cache(maxsize=4)
def _iris_free(s: int, seed: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """``(texture, (y0, y1, x0, x1))``: the texture wherever A is 0 (``uint8 [S, S, 3]``,
    read-only: ``B`` rounded as :func:`eyeball_texture` rounds) and the box of the texels
    where A is not (the iris and pupil, their colour's)."""
    a, b = _eyeball_layers(s, seed)
    still = np.clip(b + 0.5, 0, 255).astype(np.uint8)
    still.flags.writeable = False
    rows, cols = np.nonzero(np.any(a != 0, axis=2))
    if not len(rows):
        return still, (0, 0, 0, 0)
    return still, (int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1)


def _layers_key(s: int, seed: int) -> str:
    """What the layers are drawn from: this module's source, the eye geometry's and the iris
    colours' (:mod:`services.eyeball.mesh`, :mod:`services.eyeball.iris`), numpy's major
    version (its random streams), the size and the seed."""
    from services.eyeball import iris, mesh

    h = hashlib.sha256()
    for f in (__file__, mesh.__file__, iris.__file__):
        h.update(Path(f).read_bytes())
    h.update(f"{np.__version__.split('.')[0]}|{s}|{seed}".encode())
    return h.hexdigest()[:32]


def _load_layers(path: Path, s: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The layers saved at ``path``, or None when absent or unreadable (drawn again)."""
    z = load_arrays(path, "eyeball layer")
    if z is None:
        return None
    a, b = z.get("a"), z.get("b")
    if a is None or b is None or a.shape != (s, s, 3) or b.shape != (s, s, 3):
        log.warning("eyeball layer cache of another shape, drawing again",
                    extra={"path": str(path)})
        return None
    return a.astype(np.float32, copy=False), b.astype(np.float32, copy=False)


def _draw_layers(s: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The layers of :func:`_eyeball_layers`, drawn (writable arrays)."""
    rng = np.random.default_rng(seed)
    jj, ii = np.meshgrid(np.arange(s), np.arange(s))
    du = (jj + 0.5) / s - 0.5
    dv = 0.5 - (ii + 0.5) / s
    r = np.hypot(du, dv)
    theta = 2 * np.arcsin(np.clip(2 * r, 0, 1))
    phi = np.arctan2(dv, du)
    # lateral radius in units of the iris radius (front hemisphere; > 1 outside the iris)
    rho = np.sin(np.minimum(theta, math.pi / 2)) / math.sin(LIMBUS_ANGLE)
    rho = np.where(theta > math.pi / 2, 1 / math.sin(LIMBUS_ANGLE) + (theta - math.pi / 2), rho)

    # --- sclera: warm white, slightly darker and pinker toward the back, faint veins
    back = _smoothstep(math.radians(75), math.radians(140), theta)[..., None]
    img = SCLERA_RGB * (1 - back) + BACK_RGB * back
    img = img * (1 - 0.05 * _smoothstep(1.0, 3.0, rho))[..., None]
    # (no per-texel grain: +-1.5 % white noise was invisible at any size an eye is seen, but
    # it tripled the PNG, stored three times a photo, and doubled its encoding time)
    veins = np.zeros((s, s), np.float32)
    px_per_rad = s / 4.0  # rough texel scale near the limbus
    for _ in range(60):
        th0 = math.radians(rng.uniform(75, 110))
        ph0 = rng.uniform(0, 2 * math.pi)
        stack = [(th0, ph0, rng.uniform(0.6, 1.0), 0)]
        while stack:
            th, ph, w, depth = stack.pop()
            pts = []
            heading = rng.normal(0, 0.25)
            for _step in range(int(rng.integers(8, 18))):
                r_uv = 0.5 * math.sin(th / 2)
                pts.append((s * (0.5 + r_uv * math.cos(ph)), s * (0.5 - r_uv * math.sin(ph))))
                heading += rng.normal(0, 0.35)
                step = rng.uniform(0.02, 0.05)
                th -= step * math.cos(heading)
                ph += step * math.sin(heading) / max(math.sin(th), 0.2)
                if th < LIMBUS_ANGLE * 1.25:
                    break
                if depth < 2 and rng.random() < 0.12:
                    stack.append((th, ph, w * 0.6, depth + 1))
            if len(pts) > 1:
                cv2.polylines(veins, [np.round(np.array(pts) * 4).astype(np.int32)], False,
                              float(w), thickness=max(1, int(px_per_rad / 200 * w)),
                              lineType=cv2.LINE_AA, shift=2)
    veins = cv2.GaussianBlur(veins, (0, 0), max(0.6, s / 1400))
    vein_a = (0.45 * veins * _smoothstep(LIMBUS_ANGLE * 1.2, LIMBUS_ANGLE * 2.2, theta))[..., None]
    img = img * (1 - vein_a) + VEIN_RGB * vein_a

    # --- iris: base colour with radial fibres, a collarette, crypts, darker rim
    a = (phi / (2 * math.pi)) % 1.0
    fib = (_periodic_noise(rng, 180, a + 0.01 * np.sin(rho * 9))
           + 0.6 * _periodic_noise(rng, 70, a) + 0.5 * _periodic_noise(rng, 400, a))
    fib = fib / 2.0
    collarette = np.exp(-((rho - 0.55 - 0.04 * _periodic_noise(rng, 24, a)) / 0.06) ** 2)
    crypts = _periodic_noise(rng, 40, a) * _periodic_noise(rng, 9, rho / 1.0 + 0.3)
    shade = (1.0 + 0.22 * fib + 0.25 * collarette - 0.18 * np.clip(crypts, 0, None)
             - 0.35 * _smoothstep(0.75, 1.0, rho) + 0.12 * _smoothstep(0.55, 0.35, rho))
    inner_warm = np.array([1.08, 1.0, 0.88])
    warm = _smoothstep(0.6, 0.35, rho)[..., None]
    iris = shade[..., None] * (1 + (inner_warm - 1) * warm)  # times the base colour
    limbus = _smoothstep(0.96, 1.06, rho)[..., None]  # 0 inside the iris, 1 on the sclera
    ring = np.exp(-((rho - 0.99) / 0.05) ** 2)[..., None]
    iris = iris * (1 - 0.45 * ring)
    a = iris * (1 - limbus) + 0.3 * ring * limbus
    b = img * limbus * (1 - 0.25 * ring)

    # --- pupil
    pupil = _smoothstep(PUPIL_FRACTION + 0.02, PUPIL_FRACTION - 0.02, rho)[..., None]
    a = np.broadcast_to(a * (1 - pupil), (s, s, 3)).astype(np.float32)
    b = (b * (1 - pupil) + np.array([8.0, 7.0, 7.0]) * pupil).astype(np.float32)
    return a, b

