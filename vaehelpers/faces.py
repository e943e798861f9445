"""The built-in face set: procedurally drawn anime-style cartoon faces.

The course's Anime Face data set may not be redistributed, so the project ships this
generator as its offline default and for its tests. Every face is drawn from
independently sampled generative factors, which are returned with the images so that
later measurements can ask which facts about a face a model keeps.

Faces are drawn with Pillow on a canvas twice the output size and reduced by 2 (box
filter), which antialiases the edges. The images depend only on ``(n, seed, size)``.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw

GENERATOR_VERSION = 1
"""Bumped whenever the drawing changes, so caches of older faces are not reused."""

# Factors with the ranges they are drawn from, uniformly and independently.
# Units: lengths are in pixels of a 64x64 image, colours as hue/lightness in [0, 1].
FACTOR_RANGES: dict[str, tuple[float, float]] = {
    "face_width": (14.0, 18.5),  # half-width of the face
    "chin_point": (0.0, 0.55),  # 0 = round jaw, 0.55 = pointed anime chin
    "skin_tone": (0.0, 1.0),  # 0 = pale, 1 = tanned
    "hair_hue": (0.0, 1.0),
    "hair_lightness": (0.15, 0.75),
    "hair_length": (0.0, 1.0),  # 0 = short, 1 = to the bottom of the image
    "fringe_length": (0.0, 1.0),  # how far the fringe reaches down the forehead
    "fringe_style": (0.0, 3.0),  # integer: 0 blunt, 1 spiky, 2 parted
    "eye_size": (0.75, 1.3),
    "eye_spacing": (7.5, 11.0),  # half the distance between the eye centres
    "iris_hue": (0.0, 1.0),
    "mouth_curve": (-1.0, 1.0),  # -1 frown, +1 smile
    "mouth_open": (0.0, 2.0),  # integer: 0 closed, 1 open
    "background_hue": (0.0, 1.0),
    "shift_x": (-3.0, 3.0),
    "shift_y": (-3.0, 3.0),
    "scale": (1.0, 1.3),
}
CATEGORICAL = ("fringe_style", "mouth_open")

_PALE = np.array([255, 228, 210])
_TAN = np.array([196, 140, 104])


def sample_factors(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Draw ``n`` independent sets of face factors (float32, categorical ones as whole numbers)."""
    rng = np.random.default_rng(seed)
    factors = {}
    for name, (low, high) in FACTOR_RANGES.items():
        values = rng.uniform(low, high, size=n)
        factors[name] = np.floor(values) if name in CATEGORICAL else values
    return {k: v.astype(np.float32) for k, v in factors.items()}


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def _shade(rgb: tuple[int, int, int], k: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, c * k))) for c in rgb)  # type: ignore[return-value]


def _draw_face(f: dict[str, float], size: int) -> Image.Image:
    """Draw one face from its factors on a ``2*size`` canvas and reduce it to ``size``."""
    k = 2 * size / 64.0 * f["scale"]  # pixels of the canvas per unit of the 64-pixel design
    cx = (32 + f["shift_x"]) * 2 * size / 64
    cy = (33 + f["shift_y"]) * 2 * size / 64

    def P(x: float, y: float) -> tuple[float, float]:
        return cx + x * k, cy + y * k

    def box(x0: float, y0: float, x1: float, y1: float) -> list[float]:
        (a, b), (c, d) = P(x0, y0), P(x1, y1)
        return [a, b, c, d]

    background = _hsv(f["background_hue"], 0.25, 0.95)
    hair = _hsv(f["hair_hue"], 0.25 + 0.5 * (1 - abs(f["hair_lightness"] - 0.5)), f["hair_lightness"] + 0.2)
    hair_dark = _shade(hair, 0.7)
    skin = tuple(int(c) for c in _PALE + (_TAN - _PALE) * f["skin_tone"])
    skin_dark = _shade(skin, 0.85)  # type: ignore[arg-type]
    iris = _hsv(f["iris_hue"], 0.75, 0.75)

    img = Image.new("RGB", (2 * size, 2 * size), background)
    d = ImageDraw.Draw(img)
    w = f["face_width"]
    h = w * 1.12  # half-height of the skull

    # Back hair: a rounded mass behind the head whose lower edge is the hair length.
    hair_bottom = -2 + 40 * f["hair_length"]
    d.rounded_rectangle(box(-w - 4, -h - 4, w + 4, max(hair_bottom, 2)), radius=12 * k, fill=hair_dark)
    d.ellipse(box(-w - 4.5, -h - 5, w + 4.5, h * 0.6), fill=hair)

    # Neck and face: an ellipse whose lower half narrows to the chin.
    d.rectangle(box(-4.5, 8, 4.5, 40), fill=skin_dark)
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    xs, ys = w * np.cos(t), h * np.sin(t)
    lower = np.sin(t) > 0
    xs[lower] *= 1 - f["chin_point"] * np.sin(t[lower]) ** 2
    ys[lower] *= 1.05 + 0.25 * f["chin_point"]
    d.polygon([P(x, y) for x, y in zip(xs, ys)], fill=skin)

    # Side locks framing the face; longer hair gives longer locks.
    lock = 6 + 20 * f["hair_length"]
    for s in (-1, 1):
        d.polygon([P(s * (w + 1), -h * 0.5), P(s * (w - 3.5), -h * 0.2), P(s * (w - 2), lock), P(s * (w + 2.5), lock - 3)], fill=hair)

    # Fringe: a cap over the forehead with a zigzag lower edge.
    fringe_y = -h * 0.6 + (h * 0.55) * f["fringe_length"]  # lowest point of the fringe
    style = int(f["fringe_style"])
    teeth = 5 if style != 1 else 7
    depth = 2.0 if style == 0 else 5.5
    edge = []
    for i in range(teeth + 1):
        x = -w - 1 + (2 * w + 2) * i / teeth
        edge.append((x, fringe_y - depth))
        if i < teeth:
            xm = x + (w + 1) / teeth
            tip = fringe_y if not (style == 2 and i in (teeth // 2, teeth // 2 - 1)) else fringe_y - 3 * depth
            edge.append((xm, tip))
    cap = [(x, -np.sqrt(max(0.0, 1 - (x / (w + 4.5)) ** 2)) * (h + 5)) for x in np.linspace(w + 4, -w - 4, 9)]
    d.polygon([P(x, y) for x, y in edge + cap], fill=hair)

    # Eyes: big ovals with an iris, a pupil, a highlight and a heavy upper lash.
    es, ex, ey = f["eye_size"], f["eye_spacing"], 2.0
    ew, eh = 4.2 * es, 5.6 * es
    for s in (-1, 1):
        x0 = s * ex
        d.ellipse(box(x0 - ew, ey - eh, x0 + ew, ey + eh), fill=(255, 255, 255))
        d.ellipse(box(x0 - ew * 0.78, ey - eh * 0.8, x0 + ew * 0.78, ey + eh), fill=iris)
        d.ellipse(box(x0 - ew * 0.38, ey - eh * 0.25, x0 + ew * 0.38, ey + eh * 0.55), fill=_shade(iris, 0.35))
        d.ellipse(box(x0 - ew * 0.6, ey - eh * 0.6, x0 - ew * 0.05, ey - eh * 0.05), fill=(255, 255, 255))
        d.polygon([P(x0 - ew * 1.25, ey - eh * 0.55), P(x0, ey - eh * 1.25), P(x0 + ew * 1.25, ey - eh * 0.55),
                   P(x0 + ew * 1.05, ey - eh * 0.85), P(x0, ey - eh * 1.05), P(x0 - ew * 1.05, ey - eh * 0.85)],
                  fill=(40, 25, 30))

    # Nose and mouth.
    d.line([P(0, 10.5), P(0.6, 11.5)], fill=skin_dark, width=max(1, int(k * 0.7)))
    my, mw, curve = 16.0, 3.0 + 1.5 * abs(f["mouth_curve"]), f["mouth_curve"]
    if int(f["mouth_open"]):
        mouth = box(-mw, my - 2 + 1.5 * min(curve, 0), mw, my + 2.5 + 1.5 * max(curve, 0))
        d.chord(mouth, 0 if curve >= 0 else 180, 180 if curve >= 0 else 360, fill=(150, 40, 50))
    else:
        bend = 2.2 * curve
        d.line([P(-mw, my - bend / 2), P(0, my + bend / 2), P(mw, my - bend / 2)], fill=(110, 40, 45),
               width=max(1, int(k * 0.8)), joint="curve")
    return img.reduce(2)


def make_faces(n: int, seed: int = 0, size: int = 64) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Draw ``n`` faces; return uint8 images of shape (n, size, size, 3) and their factors.

    The factors are the ground truth of each face (see ``FACTOR_RANGES``), float32 arrays
    of length ``n``. The result depends only on ``(n, seed, size)``.
    """
    if n <= 0:
        raise ValueError(f"The number of faces must be positive, got n={n}.")
    factors = sample_factors(n, seed)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        images[i] = np.asarray(_draw_face({k: float(v[i]) for k, v in factors.items()}, size))
    return images, factors
