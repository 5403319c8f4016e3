"""A photo, scan or drawing of one digit made into the network's input, as MNIST made its digits.

MNIST's digits were scaled to fit a 20x20 box keeping their aspect ratio (anti-aliased, hence the
grey edges), then placed in a 28x28 field with their centre of mass at its centre. A network trained
on them reads another image well only after the same steps, which ``prepare`` takes:

1. the image's levels as floats in [0, 1]: its luminance, or its alpha channel where it is
   transparent (a digit drawn on a transparent layer is all in the alpha);
2. polarity: the ink is the side farther from the background, which is the median of the border;
   MNIST's ink is light on dark, so dark ink on paper is turned over;
3. ink: how far each pixel stands out from the background, above the border's own noise;
4. crop to the ink, scale the longer side to 20 px, centre by the centre of mass in 28x28.

``prepare`` also says when there is no digit to read: a blank image, ink that does not stand out of
the background's noise, a speck, ink over most of the image, or a 28x28 result unlike any MNIST
digit (in pieces, or solid blobs rather than pen strokes; the bounds hold for at least 99.9 % of
MNIST's test digits). The network's own confidence is the caller's last check.

Images are read with Pillow; one whose header announces more than ``MAX_PIXELS`` is refused before
it is decoded (a decompression bomb: a small file that inflates to gigabytes).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import numpy

from xpnet.errors import XpnetError

MAX_PIXELS = 64_000_000  # about 8000x8000: any camera's photo, not a 30000x30000 bomb
WORK_SIDE = 1024  # larger images are box-reduced to about this first: a digit needs no more
BOX = 20  # MNIST's digits fit a 20x20 box ...
FIELD = 28  # ... centred in a 28x28 field
# Where MNIST puts a digit's centre of mass, in pixel-index coordinates: its test digits' mean
# centre of mass is (13.99, 14.01), with a spread of 0.3 px.
_CENTRE = 14.0

# What "no digit" means, as thresholds (levels are fractions of the full range 0..1).
MIN_CONTRAST = 0.15  # the ink's peak above the background: less is a blank page
EDGE = 0.2  # ink below this fraction of the peak does not count in the digit's bounding box
MIN_INK_SIDE = 4  # the ink's bounding box, in pixels of the (reduced) image: less is a speck
MAX_INK_COVER = 0.6  # the fraction of the image that is ink: more is not a digit on paper
# Bounds on the 28x28 result, from 4,000 of MNIST's test digits made into it (each bound holds for
# all of them, or for 99.9 % and the rest just beyond): at most 4 pieces of ink of 3 pixels or more;
# at most 0.28 of the ink (levels over 0.2) more than 2 px inside it, where filled shapes have a
# third or more.
MAX_PIECES = 4
MAX_SOLID = 0.3


class ImageError(XpnetError, ValueError):
    """An image that cannot be read (one line naming it)."""


@dataclasses.dataclass(frozen=True)
class Prepared:
    """One image made into the network's input.

    image: (28, 28) uint8, light ink on black as in MNIST (all zero when there is no ink)
    no_digit: why the image holds no digit to read, or None
    """

    image: numpy.ndarray = dataclasses.field(repr=False)
    no_digit: str | None = None


def read_levels(path) -> tuple[numpy.ndarray, bool]:
    """A PNG, JPEG or other Pillow image -> (levels (H, W) float32 in [0, 1], transparent).

    The levels are the luminance, or where the image is transparent its alpha channel (then the
    ink is high). Images larger than ``WORK_SIDE`` are box-reduced; one whose header announces more
    than ``MAX_PIXELS`` is refused before decoding. Raises ImageError (one line) for anything that
    cannot be read.
    """
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as e:
        raise ImageError("reading images needs Pillow, a dependency of xpnet: pip install pillow") from e
    path = Path(path)
    try:
        # Pillow's own bomb check warns, or raises at twice its limit; both are an error here.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_PIXELS or w < 1 or h < 1:
                    raise ImageError(f"{path}: {w}x{h} pixels, more than the {MAX_PIXELS // 10**6} megapixels "
                                     "predict reads (a decompression bomb?)" if w * h > MAX_PIXELS
                                     else f"{path}: an empty {w}x{h} image")
                if im.format == "JPEG" and max(w, h) > 2 * WORK_SIDE:
                    im.draft("L", (w // 2, h // 2))  # decode at a reduced scale: less memory and time
                return _levels(im)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: no such image") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: a folder, not an image") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read (PNG, JPEG, ...)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # over Pillow's own limit
        raise ImageError(f"{path}: refused as a decompression bomb (Pillow: {_first_line(e)})") from None
    except MemoryError:
        raise ImageError(f"{path}: not enough memory to decode it") from None
    except Exception as e:  # noqa: BLE001 - a hostile file can make a decoder raise anything
        raise ImageError(f"{path}: not a readable image ({type(e).__name__}: {_first_line(e)})") from None


def _first_line(e) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else "no detail"


def _levels(im):
    from PIL import Image

    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        alpha = im.getchannel("A")
        lo, _ = alpha.getextrema()
        if lo < 128:
            return _as_floats(_reduced(alpha), 255.0), True
        im = im.convert("L")
    if im.mode.startswith("I;16") or im.mode == "I":
        im = im.convert("I")
        hi = im.getextrema()[1]
        scale = 65535.0 if im.mode != "I" or hi > 255 else 255.0
        return numpy.clip(_as_floats(_reduced(im), scale), 0.0, 1.0), False
    if im.mode == "F":
        a = _as_floats(_reduced(im), 1.0)
        a = numpy.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        return numpy.clip(a / max(1.0, float(a.max())), 0.0, 1.0), False
    if im.mode != "L":
        im = im.convert("L")
    del Image
    return _as_floats(_reduced(im), 255.0), False


def _reduced(im):
    """``im`` box-reduced by a whole factor to at most about WORK_SIDE on its longer side."""
    factor = math.ceil(max(im.size) / WORK_SIDE)
    return im.reduce(factor) if factor > 1 else im


def _as_floats(im, scale):
    a = numpy.asarray(im, dtype=numpy.float32)
    return a * numpy.float32(1.0 / scale)


def ink_map(levels, transparent=False):
    """levels (H, W) float in [0, 1] -> (ink (H, W) float32 in [0, 1], contrast).

    ``contrast`` is how far the ink's peak stands above the background (0 for a blank image). An
    image's ink is the side of its levels farther from the background (the median of its border).
    Levels within three of the border's noise deviations of the background, or within a tenth of
    the contrast, are background (0).
    """
    v = numpy.asarray(levels, dtype=numpy.float32)
    if transparent:  # the alpha channel: no ink is 0 whatever the picture
        return v, float(v.max())
    border = numpy.concatenate([v[0], v[-1], v[:, 0], v[:, -1]])
    bg = float(numpy.median(border))
    if bg - float(v.min()) > float(v.max()) - bg:  # the ink is darker than its paper
        v, border, bg = 1.0 - v, 1.0 - border, 1.0 - bg
    peak = float(v.max())
    contrast = peak - bg
    noise = 1.4826 * float(numpy.median(numpy.abs(border - bg)))  # the border's standard deviation, robustly
    floor = bg + max(3.0 * noise, 0.1 * contrast)
    if contrast <= 0 or peak <= floor:
        return numpy.zeros_like(v), max(contrast, 0.0)
    ink = (v - numpy.float32(floor)) * numpy.float32(1.0 / (peak - floor))
    return numpy.clip(ink, 0.0, 1.0, out=ink), contrast


def to_mnist(ink):
    """ink (H, W) float in [0, 1] with some ink -> (28, 28) float32 in [0, 1]: cropped to the ink,
    the longer side scaled to 20 px keeping the aspect ratio, the centre of mass at the centre."""
    from PIL import Image

    # A faint pixel of noise above the background's floor must not stretch the box.
    rows = numpy.flatnonzero(ink.max(axis=1) > EDGE)
    cols = numpy.flatnonzero(ink.max(axis=0) > EDGE)
    crop = numpy.ascontiguousarray(ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], dtype=numpy.float32)
    h, w = crop.shape
    s = BOX / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    box = numpy.asarray(Image.fromarray(crop, mode="F").resize(size, Image.Resampling.LANCZOS), dtype=numpy.float32)
    box = numpy.clip(box, 0.0, None)
    peak = float(box.max())
    if peak <= 0:
        return numpy.zeros((FIELD, FIELD), numpy.float32)
    box /= peak  # a thin stroke dims as it shrinks; MNIST's strokes peak at full ink
    total = float(box.sum())
    cy = float((box.sum(axis=1) * numpy.arange(box.shape[0])).sum()) / total
    cx = float((box.sum(axis=0) * numpy.arange(box.shape[1])).sum()) / total
    return _place(box, round(_CENTRE - cy), round(_CENTRE - cx))


def _place(box, top, left):
    """``box`` (h, w) pasted into a zero 28x28 field at (top, left), clipped to the field."""
    field = numpy.zeros((FIELD, FIELD), numpy.float32)
    h, w = box.shape
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + h, FIELD), min(left + w, FIELD)
    if r1 > r0 and c1 > c0:
        field[r0:r1, c0:c1] = box[r0 - top:r1 - top, c0 - left:c1 - left]
    return field


def pieces(mask, min_size=3) -> int:
    """The 8-connected pieces of ``mask`` (a small 2-D bool array) of at least ``min_size`` pixels."""
    mask = numpy.asarray(mask, dtype=bool)
    seen = numpy.zeros_like(mask)
    h, w = mask.shape
    count = 0
    for r, c in zip(*numpy.nonzero(mask)):
        if seen[r, c]:
            continue
        seen[r, c] = True
        stack, size = [(r, c)], 0
        while stack:
            y, x = stack.pop()
            size += 1
            for yy in range(max(y - 1, 0), min(y + 2, h)):
                for xx in range(max(x - 1, 0), min(x + 2, w)):
                    if mask[yy, xx] and not seen[yy, xx]:
                        seen[yy, xx] = True
                        stack.append((yy, xx))
        count += size >= min_size
    return count


def solid_fraction(mask) -> float:
    """The fraction of ``mask``'s pixels more than 2 px inside it (surviving two 3x3 erosions):
    near 0 for pen strokes, large for filled shapes."""
    m = numpy.asarray(mask, dtype=bool)
    total = int(m.sum())
    if total == 0:
        return 0.0
    for _ in range(2):
        p = numpy.pad(m, 1)
        e = numpy.ones_like(m)
        for dy in range(3):
            for dx in range(3):
                e &= p[dy:dy + m.shape[0], dx:dx + m.shape[1]]
        m = e
    return float(m.sum()) / total


def judge(field) -> str | None:
    """Why a 28x28 result (float in [0, 1]) is unlike every MNIST digit, or None."""
    n = pieces(field > 0.5)
    if n > MAX_PIECES:
        return f"the ink is in {n} pieces"
    ink = field > 0.2
    if solid_fraction(ink) > MAX_SOLID:
        return "the ink is filled shapes, not pen strokes"
    return None


def prepare_levels(levels, transparent=False) -> Prepared:
    """levels (H, W) float in [0, 1] (see ``read_levels``) -> the network's input and verdict."""
    ink, contrast = ink_map(levels, transparent)
    empty = numpy.zeros((FIELD, FIELD), numpy.uint8)
    if contrast < MIN_CONTRAST:
        return Prepared(empty, "the image is blank")
    core = ink > 0.5
    if not core.any():
        return Prepared(empty, "no ink stands out from the background")
    rows, cols = numpy.flatnonzero(core.any(axis=1)), numpy.flatnonzero(core.any(axis=0))
    if max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 < MIN_INK_SIDE:
        return Prepared(empty, "too little ink: a speck, not a digit")
    cover = float(core.mean())
    if cover > MAX_INK_COVER:
        return Prepared(empty, f"ink covers {cover:.0%} of the image")
    field = to_mnist(ink)
    image = numpy.rint(field * 255.0).astype(numpy.uint8)
    return Prepared(image, judge(field))


def prepare(path) -> Prepared:
    """An image file -> its 28x28 network input and whether it holds a digit (ImageError if unreadable)."""
    return prepare_levels(*read_levels(path))


def load_image(path) -> numpy.ndarray:
    """An image file of any size -> (28, 28) uint8, light ink on black as in MNIST."""
    return prepare(path).image
