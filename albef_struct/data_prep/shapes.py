"""Scene model of the "shapes world": sampling scenes and rendering them with PIL.

A scene is a tinted canvas split into a 3x3 grid; each object occupies one grid cell,
so objects never overlap.  Object geometry (jitter inside the cell, scale) is stored as
fractions so one scene renders at any image size.

Attributes
----------
shared (drawn and mentioned):   shape, colour, size, position (grid cell)
image-private (info-gap mode):  pattern  -- drawn, never mentioned in text
text-private (info-gap mode):   material -- mentioned in text, never drawn
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "green": (35, 155, 55),
    "blue": (35, 75, 225),
    "yellow": (245, 205, 25),
    "purple": (140, 55, 190),
    "orange": (250, 135, 25),
    "gray": (128, 128, 128),
    "black": (20, 20, 20),
}
SIZES: tuple[str, ...] = ("small", "large")
ROWS: tuple[str, ...] = ("top", "middle", "bottom")
COLS: tuple[str, ...] = ("left", "center", "right")
PATTERNS: tuple[str, ...] = ("solid", "striped", "dotted")
MATERIALS: tuple[str, ...] = ("wooden", "metal", "glass")

#: probability of a scene having 1, 2, 3, 4 objects (few 1-object scenes: there are only
#: 9*6*8*2 = 864 distinct ones, and their captions are the least specific)
NUM_OBJECTS_P: tuple[float, ...] = (0.1, 0.25, 0.3, 0.35)
#: object radius as a fraction of the grid cell side
RADIUS_FRAC: dict[str, float] = {"small": 0.22, "large": 0.40}
SCALE_JITTER = 0.1  # radius multiplied by U(1 - j, 1 + j)
MARGIN_FRAC = 0.04  # minimum gap between an object and its cell border


def position_name(row: int, col: int) -> str:
    """Canonical name of a grid cell: 'top left', ..., 'center', ..., 'bottom right'."""
    if (row, col) == (1, 1):
        return "center"
    if col == 1:
        return f"{ROWS[row]} center"
    return f"{ROWS[row]} {COLS[col]}"


POSITIONS: tuple[str, ...] = tuple(position_name(r, c) for r in range(3) for c in range(3))


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene; ``dx``/``dy`` in [-1, 1] are jitter inside the cell slack."""

    shape: str
    colour: str
    size: str
    row: int
    col: int
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0
    pattern: str | None = None  # image-private (info-gap mode only)
    material: str | None = None  # text-private (info-gap mode only)

    @property
    def position(self) -> str:
        """Canonical position name of the object's grid cell."""
        return position_name(self.row, self.col)

    def labels(self) -> dict[str, str]:
        """Semantic labels (no geometry jitter) as written to ``attributes_*.json``."""
        out = {"shape": self.shape, "colour": self.colour, "size": self.size,
               "position": self.position}
        if self.pattern is not None:
            out["pattern"] = self.pattern
        if self.material is not None:
            out["material"] = self.material
        return out


@dataclass(frozen=True)
class Scene:
    """A background tint and 1-4 objects, kept in reading order (row-major by cell)."""

    background: tuple[int, int, int]
    objects: tuple[SceneObject, ...]

    @property
    def info_gap(self) -> bool:
        """Whether objects carry the private attributes of the information-gap mode."""
        return any(o.pattern is not None for o in self.objects)

    def key(self) -> tuple:
        """Canonical semantic key: two scenes with equal keys are 'the same scene'."""
        return tuple(sorted((o.row, o.col, o.shape, o.colour, o.size, o.pattern or "",
                             o.material or "") for o in self.objects))

    def to_dict(self) -> dict:
        """Plain-dict form (JSON-serialisable)."""
        return {"background": list(self.background), "objects": [asdict(o) for o in self.objects]}


def sample_scene(rng: np.random.Generator, *, info_gap: bool = False) -> Scene:
    """Sample a random scene: 1-4 objects in distinct grid cells, uniform attributes."""
    n = int(rng.choice(len(NUM_OBJECTS_P), p=NUM_OBJECTS_P)) + 1
    cells = sorted(int(c) for c in rng.choice(9, size=n, replace=False))
    objects = []
    for cell in cells:
        obj = SceneObject(
            shape=SHAPES[int(rng.integers(len(SHAPES)))],
            colour=tuple(COLOURS)[int(rng.integers(len(COLOURS)))],
            size=SIZES[int(rng.integers(len(SIZES)))],
            row=cell // 3,
            col=cell % 3,
            dx=round(float(rng.uniform(-1, 1)), 4),
            dy=round(float(rng.uniform(-1, 1)), 4),
            scale=round(float(rng.uniform(1 - SCALE_JITTER, 1 + SCALE_JITTER)), 4),
            pattern=PATTERNS[int(rng.integers(len(PATTERNS)))] if info_gap else None,
            material=MATERIALS[int(rng.integers(len(MATERIALS)))] if info_gap else None,
        )
        objects.append(obj)
    return Scene(background=_sample_background(rng), objects=tuple(objects))


def _sample_background(rng: np.random.Generator) -> tuple[int, int, int]:
    """A pale tint: every channel in [205, 250], so all object colours contrast with it."""
    return tuple(int(v) for v in 250 - rng.integers(0, 46, size=3))


# ----------------------------------------------------------------------------- geometry

def object_geometry(obj: SceneObject, canvas: int) -> tuple[float, float, float]:
    """Centre x, centre y and radius (pixels) of ``obj`` on a ``canvas``-pixel square."""
    cell = canvas / 3
    r = RADIUS_FRAC[obj.size] * obj.scale * cell
    slack = max(cell / 2 - r - MARGIN_FRAC * cell, 0.0)
    cx = (obj.col + 0.5) * cell + obj.dx * slack
    cy = (obj.row + 0.5) * cell + obj.dy * slack
    return cx, cy, r


def shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape inscribed in the circle (cx, cy, r)."""
    if shape == "square":
        h = 0.82 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.78 * r, cy), (cx, cy + r), (cx - 0.78 * r, cy)]
    if shape == "triangle":  # equilateral, pointing up, bounding box centred on (cx, cy)
        c = cy + 0.25 * r
        return [(cx + r * math.cos(a), c + r * math.sin(a))
                for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + 0.05 * r + rad * math.sin(a)))
        return pts
    if shape == "cross":
        t, a = 0.32 * r, 0.9 * r
        return [(cx - t, cy - a), (cx + t, cy - a), (cx + t, cy - t), (cx + a, cy - t),
                (cx + a, cy + t), (cx + t, cy + t), (cx + t, cy + a), (cx - t, cy + a),
                (cx - t, cy + t), (cx - a, cy + t), (cx - a, cy - t), (cx - t, cy - t)]
    raise ValueError(f"not a polygonal shape: {shape!r}")


# ---------------------------------------------------------------------------- rendering

def _shade(rgb: tuple[int, int, int], towards: int, amount: float) -> tuple[int, int, int]:
    """Blend ``rgb`` towards grey level ``towards`` (0 = black, 255 = white)."""
    return tuple(int(round(v + (towards - v) * amount)) for v in rgb)


def _luma(rgb: tuple[int, int, int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def pattern_colour(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Colour of stripes/dots: a darker shade of the fill, or a lighter one for dark fills."""
    return _shade(rgb, 0, 0.5) if _luma(rgb) > 90 else _shade(rgb, 255, 0.4)


def _pattern_layer(size: int, rgb: tuple[int, int, int], pattern: str, cx: float, cy: float,
                   r: float, period: float) -> Image.Image:
    """A full-canvas layer filled with ``rgb`` plus stripes or dots around (cx, cy)."""
    layer = Image.new("RGB", (size, size), rgb)
    if pattern == "solid":
        return layer
    draw = ImageDraw.Draw(layer)
    ink = pattern_colour(rgb)
    if pattern == "striped":  # diagonal stripes half a period wide, one through the centre
        h = r + period  # half side of the square the stripes cover
        k_max = math.ceil(2 * h / period)
        for k in range(-k_max, k_max + 1):
            x = cx + k * period
            draw.line([(x - h, cy + h), (x + h, cy - h)], fill=ink, width=max(1, round(period / 2)))
    elif pattern == "dotted":  # staggered grid of round dots 1.5 periods apart, one at the centre
        rad, step = max(0.8, 0.32 * period), 1.5 * period
        k_max = math.ceil((r + period) / step)
        for i in range(-k_max, k_max + 1):
            shift = step / 2 if i % 2 else 0.0
            for j in range(-k_max - 1, k_max + 1):
                x, y = cx + j * step + shift, cy + i * step
                draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=ink)
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    return layer


def _draw_object(img: Image.Image, obj: SceneObject, image_size: int, ss: int) -> None:
    """Draw ``obj`` onto the supersampled canvas ``img`` (side ``image_size * ss``)."""
    canvas = img.size[0]
    cx, cy, r = object_geometry(obj, canvas)
    rgb = COLOURS[obj.colour]
    mask = Image.new("L", img.size, 0)
    mdraw = ImageDraw.Draw(mask)
    if obj.shape == "circle":
        mdraw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        mdraw.polygon(shape_polygon(obj.shape, cx, cy, r), fill=255)
    # pattern period: about 4 output pixels at 96 px, never below 3 output pixels
    period = max(3.0, image_size / 24) * ss
    fill = _pattern_layer(canvas, rgb, obj.pattern or "solid", cx, cy, r, period)
    img.paste(fill, (0, 0), mask)
    outline = _shade(rgb, 0, 0.45)
    draw = ImageDraw.Draw(img)
    if obj.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=outline, width=ss)
    else:
        draw.polygon(shape_polygon(obj.shape, cx, cy, r), outline=outline, width=ss)


def render_scene(scene: Scene, image_size: int = 96, *, supersample: int = 2) -> Image.Image:
    """Render ``scene`` as an RGB image of ``image_size`` px (antialiased by supersampling)."""
    ss = max(1, int(supersample))
    img = Image.new("RGB", (image_size * ss, image_size * ss), scene.background)
    for obj in scene.objects:
        _draw_object(img, obj, image_size, ss)
    if ss > 1:
        img = img.resize((image_size, image_size), Image.Resampling.LANCZOS)
    return img
