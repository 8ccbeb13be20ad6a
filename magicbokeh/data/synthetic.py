"""Seeded synthetic layered scenes with exact bokeh ground truth.

A scene is a stack of RGBA layers, back to front: an opaque background on a slanted or curved disparity surface,
then 2–4 fronto-parallel objects at distinct disparities with varied outlines (ellipse, superellipse, star-like
blob) and soft or hairy edges. Textures are procedural (fractal noise, stripes down to a 3-pixel period, text-like
strokes, optional small bright lights that turn into bokeh balls) or crops of photos from a folder. Because every
layer keeps the content hidden behind the objects in front of it, :func:`render_scene` (the layered renderer)
produces true partial occlusion, which no single-image renderer can.

Conventions: disparity in [0, 1], 1 = nearest (the visible disparity map is min-max normalised, and the layer maps
with it); every random choice comes from the ``torch.Generator`` passed in, so one seed gives one scene.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from magicbokeh.data.io import list_images, read_image
from magicbokeh.errors import DatasetError, InvalidInputError, ParameterError
from magicbokeh.optics.aperture import ApertureSpec
from magicbokeh.optics.render import render_layers

TEXTURE_KINDS = ("noise", "stripes", "strokes")
SHAPES = ("ellipse", "superellipse", "blob")


@dataclass
class SyntheticScene:
    """One layered scene. Layers are ordered back to front (index 0 is the background)."""

    image: torch.Tensor  # 3×H×W all-in-focus, [0, 1]
    disparity: torch.Tensor  # 1×H×W, [0, 1], 1 = nearest (alpha-blended where edges are soft)
    subject_mask: torch.Tensor  # 1×H×W bool, where the subject is visible (composited coverage > 0.5)
    layer_colors: torch.Tensor  # L×3×H×W straight colour, [0, 1]
    layer_alphas: torch.Tensor  # L×1×H×W straight alpha, [0, 1]
    layer_disparity: torch.Tensor  # L×1×H×W per-layer disparity maps (same normalisation as `disparity`)
    meta: dict = field(default_factory=dict)  # plain Python values: subject_index, subject_disparity, kinds…


def render_scene(
    scene: SyntheticScene,
    focus_disparity: float,
    blur_px: float,
    *,
    gamma: float = 2.2,
    aperture: str | ApertureSpec | Mapping = "disk",
    downsample: bool = True,
) -> torch.Tensor:
    """Ground-truth bokeh ``3×H×W`` of a scene focused at ``focus_disparity`` with ``blur_px`` (radius at |Δd| = 1);
    ``downsample`` blurs large circles of confusion at reduced resolution (:func:`render_layers`)."""
    return render_layers(
        scene.layer_colors[None], scene.layer_alphas[None], scene.layer_disparity[None], focus_disparity, blur_px,
        gamma=gamma, aperture=aperture, downsample=downsample,
    )[0]  # fmt: skip


class SyntheticSceneGenerator:
    """Callable ``generator(torch.Generator) -> SyntheticScene``; the same generator state gives the same scene.

    ``num_objects``: inclusive range of foreground objects. ``texture_dir``: a folder of photos used (with
    probability ``photo_probability``) instead of procedural textures; it must contain at least one image.
    ``background_disparity`` / ``object_disparity``: ranges before normalisation (objects are always nearer than
    the background). ``highlight_probability``: chance that the background carries small bright lights.
    ``hairy_probability``: chance that an object gets a fur-like outline instead of a soft one.
    """

    def __init__(
        self,
        height: int,
        width: int,
        *,
        num_objects: tuple[int, int] = (2, 4),
        texture_dir: str | os.PathLike | None = None,
        photo_probability: float = 0.7,
        background_disparity: tuple[float, float] = (0.0, 0.4),
        object_disparity: tuple[float, float] = (0.45, 1.0),
        highlight_probability: float = 0.5,
        hairy_probability: float = 0.3,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if height < 16 or width < 16:
            raise ParameterError(f"synthetic scenes need at least 16×16 pixels, got {height}×{width}")
        low, high = num_objects
        if not (1 <= low <= high):
            raise ParameterError(f"num_objects must be a range (low, high) with 1 ≤ low ≤ high, got {num_objects}")
        if not (0 <= background_disparity[0] <= background_disparity[1] < object_disparity[0] <= object_disparity[1]):
            raise ParameterError(
                "disparity ranges must satisfy 0 ≤ background low ≤ background high < object low ≤ object high, got "
                f"background {background_disparity} and objects {object_disparity}"
            )
        self.height, self.width = int(height), int(width)
        self.num_objects = (int(low), int(high))
        self.photo_probability = photo_probability
        self.background_disparity = background_disparity
        self.object_disparity = object_disparity
        self.highlight_probability = highlight_probability
        self.hairy_probability = hairy_probability
        self.dtype = dtype
        self.photos = _list_photos(texture_dir) if texture_dir is not None else []
        yy, xx = torch.meshgrid(
            torch.arange(self.height, dtype=dtype), torch.arange(self.width, dtype=dtype), indexing="ij"
        )
        self._x, self._y = xx, yy

    # ----------------------------------------------------------------------------------------------------------------
    def __call__(self, generator: torch.Generator) -> SyntheticScene:
        rand = _Random(generator)
        count = rand.integer(self.num_objects[0], self.num_objects[1])
        colors, alphas, maps, kinds, shapes, hairy = [], [], [], [], [], []

        background_color, kind = self._texture(rand)
        if rand.chance(self.highlight_probability):
            background_color = self._add_lights(background_color, rand)
            kind += "+lights"
        colors.append(background_color)
        alphas.append(torch.ones(1, self.height, self.width, dtype=self.dtype))
        surface = "curved" if rand.chance(0.4) else "slanted"
        maps.append(self._background_disparity(rand, surface))
        kinds.append(kind)

        # Distinct object disparities: one uniform draw in each of `count` equal bins, so they are sorted (back to
        # front) and at least a fraction of a bin apart.
        low, high = self.object_disparity
        edges = [low + (high - low) * i / count for i in range(count + 1)]
        for i in range(count):
            bin_low, bin_high = edges[i], edges[i + 1]
            disparity = rand.uniform(bin_low + 0.15 * (bin_high - bin_low), bin_high - 0.15 * (bin_high - bin_low))
            alpha, shape, is_hairy = self._object_alpha(rand)
            color, kind = self._texture(rand)
            colors.append(self._shade(color, rand))
            alphas.append(alpha)
            maps.append(torch.full((1, self.height, self.width), disparity, dtype=self.dtype))
            kinds.append(kind)
            shapes.append(shape)
            hairy.append(is_hairy)

        layer_colors, layer_alphas, layer_disparity = torch.stack(colors), torch.stack(alphas), torch.stack(maps)
        # Visible disparity: the layer maps composited with *over* (soft at soft edges), then min-max normalised; the
        # layer maps take the same affine map, so scene and ground truth stay consistent.
        disparity = layer_disparity[0]
        for layer in range(1, layer_alphas.shape[0]):
            disparity = layer_alphas[layer] * layer_disparity[layer] + (1 - layer_alphas[layer]) * disparity
        lowest, highest = float(disparity.min()), float(disparity.max())
        scale = 1.0 / max(highest - lowest, 1e-6)
        disparity = ((disparity - lowest) * scale).clamp(0.0, 1.0)
        layer_disparity = (layer_disparity - lowest) * scale

        subject, mask = self._subject(rand, layer_alphas)
        scene = SyntheticScene(
            image=torch.empty(0),
            disparity=disparity,
            subject_mask=mask,
            layer_colors=layer_colors,
            layer_alphas=layer_alphas,
            layer_disparity=layer_disparity,
            meta={
                "num_objects": count,
                "subject_index": subject,
                "subject_disparity": float(layer_disparity[subject, 0, 0, 0]),
                "background": surface,
                "textures": kinds,
                "shapes": shapes,
                "hairy": hairy,
            },
        )
        scene.image = _composite_in_focus(layer_colors, layer_alphas)
        return scene

    # ----------------------------------------------------------------------------------------------------------------
    def _subject(self, rand: _Random, alphas: torch.Tensor, min_fraction: float = 0.01) -> tuple[int, torch.Tensor]:
        """A random object whose visible part (composited coverage > 0.5) covers ≥ ``min_fraction`` of the frame;
        otherwise the front object, which nothing occludes and whose centre (inside the frame) is always opaque."""
        count = alphas.shape[0] - 1
        index = rand.integer(1, count)
        coverage = alphas[index]
        for front in range(index + 1, alphas.shape[0]):
            coverage = coverage * (1 - alphas[front])
        mask = coverage > 0.5
        if mask.float().mean() >= min_fraction:
            return index, mask
        return count, alphas[count] > 0.5

    def _background_disparity(self, rand: _Random, surface: str) -> torch.Tensor:
        """A plane ``a + g·(p − c)`` (slanted) or a paraboloid-like bowl (curved), fitted into the background range."""
        x = self._x / self.width - 0.5
        y = self._y / self.height - 0.5
        angle = rand.uniform(0, 2 * math.pi)
        values = math.cos(angle) * x + math.sin(angle) * y
        if surface == "curved":
            cx, cy = rand.uniform(-0.3, 0.3), rand.uniform(-0.3, 0.3)
            values = values * rand.uniform(0, 0.5) + ((x - cx) ** 2 + (y - cy) ** 2) * rand.choice([-1.0, 1.0])
        low, high = self.background_disparity
        extent = rand.uniform(0.3, 1.0) * (high - low)
        base = rand.uniform(low, high - extent)
        values = (values - values.min()) / (values.max() - values.min()).clamp_min(1e-6)
        return (base + extent * values)[None].to(self.dtype)

    def _object_alpha(self, rand: _Random) -> tuple[torch.Tensor, str, bool]:
        """Soft-edged coverage of one object: a signed distance (pixels) to its outline, ramped over the softness."""
        size = min(self.height, self.width)
        cx = rand.uniform(0.15, 0.85) * self.width
        cy = rand.uniform(0.15, 0.85) * self.height
        radius = rand.uniform(0.12, 0.3) * size
        dx, dy = self._x - cx, self._y - cy
        angle = rand.uniform(0, math.pi)
        u = math.cos(angle) * dx + math.sin(angle) * dy
        v = -math.sin(angle) * dx + math.cos(angle) * dy
        shape = rand.choice(SHAPES)
        if shape == "ellipse":
            aspect = rand.uniform(0.5, 1.0)
            rho = torch.sqrt((u / radius) ** 2 + (v / (radius * aspect)) ** 2)
            distance = (rho - 1) * radius * aspect
        elif shape == "superellipse":
            power, aspect = rand.uniform(3.0, 6.0), rand.uniform(0.5, 1.0)
            rho = ((u / radius).abs() ** power + (v / (radius * aspect)).abs() ** power) ** (1 / power)
            distance = (rho - 1) * radius * aspect
        else:
            theta = torch.atan2(v, u)
            outline = torch.ones_like(theta)
            for harmonic in range(2, 6):
                outline = outline + rand.uniform(0, 0.25 / harmonic * 2) * torch.sin(
                    harmonic * theta + rand.uniform(0, 2 * math.pi)
                )
            distance = torch.hypot(u, v) - radius * outline.clamp_min(0.3)
        hairy = rand.chance(self.hairy_probability)
        if hairy:
            # Fur: thin spikes along the outline (a sharp power of a cosine over angle, random length per strand),
            # drawn with a sub-pixel ramp so strands are partially transparent.
            theta = torch.atan2(dy, dx)
            strands = rand.integer(60, 160)
            lengths = torch.rand(strands + 1, generator=rand.generator, dtype=self.dtype)
            position = (theta + math.pi) / (2 * math.pi) * strands
            length = lengths[position.long().clamp(0, strands)] * rand.uniform(0.05, 0.15) * radius
            spikes = (0.5 + 0.5 * torch.cos(2 * math.pi * position)) ** 6
            distance = distance - length * spikes
            softness = 0.8
        else:
            softness = rand.uniform(0.8, 4.0)
        return (0.5 - distance / softness).clamp(0.0, 1.0)[None], shape, hairy

    # ----------------------------------------------------------------------------------------------------------------
    def _texture(self, rand: _Random) -> tuple[torch.Tensor, str]:
        if self.photos and rand.chance(self.photo_probability):
            return self._photo(rand), "photo"
        kind = rand.choice(TEXTURE_KINDS)
        if kind == "noise":
            return self._palette(self._fractal_noise(rand), rand), kind
        if kind == "stripes":
            return self._stripes(rand), kind
        return self._strokes(rand), kind

    def _fractal_noise(self, rand: _Random, octaves: int = 5) -> torch.Tensor:
        """Sum of bicubically upsampled random grids, amplitude halving per octave (value noise), in [0, 1]."""
        total = torch.zeros(1, 1, self.height, self.width, dtype=self.dtype)
        cells = rand.integer(2, 6)
        amplitude = 1.0
        for _ in range(octaves):
            grid = torch.rand(1, 1, cells + 1, cells + 1, generator=rand.generator, dtype=self.dtype)
            total = total + amplitude * F.interpolate(
                grid, size=(self.height, self.width), mode="bicubic", align_corners=True
            )
            cells, amplitude = cells * 2, amplitude * 0.5
        total = total[0]
        return (total - total.min()) / (total.max() - total.min()).clamp_min(1e-6)

    def _palette(self, values: torch.Tensor, rand: _Random) -> torch.Tensor:
        """Map a 1×H×W field in [0, 1] between two random colours, with a little per-channel variation."""
        first, second = rand.color(self.dtype), rand.color(self.dtype)
        return (first + (second - first) * values).clamp(0.0, 1.0)

    def _stripes(self, rand: _Random) -> torch.Tensor:
        """Oriented stripes, period 3–40 px (fine periods are detail super-resolution has to recover)."""
        period = math.exp(rand.uniform(math.log(3.0), math.log(40.0)))
        angle = rand.uniform(0, math.pi)
        phase = math.cos(angle) * self._x + math.sin(angle) * self._y
        wave = 0.5 + 0.5 * torch.sin(2 * math.pi * phase / period + rand.uniform(0, 2 * math.pi))
        sharpness = rand.uniform(1.0, 6.0)
        values = torch.sigmoid(sharpness * (wave - 0.5) * 4)[None]
        return self._palette(values, rand)

    def _strokes(self, rand: _Random) -> torch.Tensor:
        """Text-like lines of glyphs: each glyph is three random strokes of 1–2.5 px width in a small cell.

        All glyph cells are drawn at once on a regular pitch (``B×pitch_y×pitch_x`` blocks), then tiled into the
        image with a random offset; ~15 % of the cells stay empty, like gaps between words.
        """
        paper = self._palette(self._fractal_noise(rand, octaves=3) * 0.3, rand)
        ink = rand.color(self.dtype) * 0.4
        glyph = rand.integer(7, 16)
        width = rand.uniform(1.0, 2.5)
        pitch_y, pitch_x = int(glyph * 1.6), int(glyph * 1.1) + 1
        rows, cols = self.height // pitch_y + 2, self.width // pitch_x + 2
        count = rows * cols
        points = torch.rand(count, 4, 2, generator=rand.generator, dtype=self.dtype) * (glyph - 1)
        keep = torch.rand(count, generator=rand.generator, dtype=self.dtype) > 0.15
        cell_y = torch.arange(pitch_y, dtype=self.dtype)[None, :, None]
        cell_x = torch.arange(pitch_x, dtype=self.dtype)[None, None, :]
        coverage = torch.zeros(count, pitch_y, pitch_x, dtype=self.dtype)
        for stroke in range(3):
            start, end = points[:, stroke, :, None, None], points[:, stroke + 1, :, None, None]
            distance = _segment_distance(cell_x, cell_y, start, end)
            coverage = torch.maximum(coverage, (0.5 + width / 2 - distance).clamp(0.0, 1.0))
        coverage = coverage * keep[:, None, None]
        page = coverage.reshape(rows, cols, pitch_y, pitch_x).permute(0, 2, 1, 3).reshape(rows * pitch_y, -1)
        top, left = rand.integer(0, pitch_y - 1), rand.integer(0, pitch_x - 1)
        coverage = page[top : top + self.height, left : left + self.width]
        return paper * (1 - coverage) + ink * coverage

    def _photo(self, rand: _Random) -> torch.Tensor:
        """A random crop of a random photo from the texture folder, resized to the scene size."""
        path = rand.choice(self.photos)
        image = read_image(path)
        height, width = image.shape[-2:]
        crop = rand.uniform(0.5, 1.0)
        crop_h = max(int(height * crop), 1)
        crop_w = max(min(int(crop_h * self.width / self.height), width), 1)
        top, left = rand.integer(0, height - crop_h), rand.integer(0, width - crop_w)
        patch = image[:, top : top + crop_h, left : left + crop_w].to(self.dtype)
        return F.interpolate(patch[None], size=(self.height, self.width), mode="bilinear", antialias=True)[0].clamp(
            0.0, 1.0
        )

    def _add_lights(self, color: torch.Tensor, rand: _Random) -> torch.Tensor:
        """Small bright discs (lamps, speculars): after blurring they become bokeh balls."""
        lights = torch.zeros(self.height, self.width, dtype=self.dtype)
        for _ in range(rand.integer(5, 25)):
            radius = rand.uniform(0.6, 2.5)
            cx, cy = rand.uniform(0, self.width - 1), rand.uniform(0, self.height - 1)
            reach = math.ceil(radius + 1)
            y0, y1 = max(int(cy) - reach, 0), min(int(cy) + reach + 2, self.height)
            x0, x1 = max(int(cx) - reach, 0), min(int(cx) + reach + 2, self.width)
            distance = torch.hypot(self._x[y0:y1, x0:x1] - cx, self._y[y0:y1, x0:x1] - cy)
            disc = (0.5 + radius - distance).clamp(0.0, 1.0)
            lights[y0:y1, x0:x1] = torch.maximum(lights[y0:y1, x0:x1], disc)
        tint = 0.85 + 0.15 * torch.rand(3, 1, 1, generator=rand.generator, dtype=self.dtype)
        return color * (1 - lights) + tint * lights

    def _shade(self, color: torch.Tensor, rand: _Random) -> torch.Tensor:
        """A gentle linear shading gradient so objects read as lit surfaces, not flat cut-outs."""
        angle = rand.uniform(0, 2 * math.pi)
        gradient = (math.cos(angle) * self._x / self.width + math.sin(angle) * self._y / self.height) * rand.uniform(
            0.0, 0.4
        )
        return (color * (1 - gradient + gradient.mean())).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------------------------------
class _Random:
    """Scalar draws from one ``torch.Generator`` (never the global RNG)."""

    def __init__(self, generator: torch.Generator) -> None:
        if not isinstance(generator, torch.Generator):
            raise InvalidInputError(f"pass a torch.Generator (seeded per sample), got {type(generator).__name__}")
        self.generator = generator

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=self.generator, dtype=torch.float64))

    def integer(self, low: int, high: int) -> int:
        """Uniform integer in [low, high] inclusive."""
        return int(torch.randint(low, high + 1, (), generator=self.generator))

    def chance(self, probability: float) -> bool:
        return self.uniform(0.0, 1.0) < probability

    def choice(self, options):
        return options[self.integer(0, len(options) - 1)]

    def color(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.rand(3, 1, 1, generator=self.generator, dtype=dtype)


def _composite_in_focus(colors: torch.Tensor, alphas: torch.Tensor, gamma: float = 2.2) -> torch.Tensor:
    """All-in-focus image: the layers composited with *over* in linear light, i.e. :func:`render_scene` at blur 0
    (a test pins the equality) without its per-layer bookkeeping."""
    linear = colors[0] ** gamma
    for layer in range(1, colors.shape[0]):
        linear = alphas[layer] * colors[layer] ** gamma + (1 - alphas[layer]) * linear
    return linear ** (1 / gamma)


def _segment_distance(x: torch.Tensor, y: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Distance from each (x, y) to the segment start–end (``start``/``end``: ``…×2`` broadcasting against x, y)."""
    sx, sy, ex, ey = start[:, 0], start[:, 1], end[:, 0], end[:, 1]
    dx, dy = ex - sx, ey - sy
    t = (((x - sx) * dx + (y - sy) * dy) / (dx * dx + dy * dy).clamp_min(1e-6)).clamp(0.0, 1.0)
    return torch.hypot(x - sx - t * dx, y - sy - t * dy)


def _list_photos(texture_dir: str | os.PathLike) -> list[Path]:
    folder = Path(texture_dir)
    if not folder.is_dir():
        raise DatasetError(f"texture_dir '{folder}' is not a folder; pass a folder of photos or texture_dir=None")
    photos = list_images(folder)
    if not photos:
        raise DatasetError(
            f"texture_dir '{folder}' contains no images (.png/.jpg/…); add photos or use texture_dir=None"
        )
    return photos
