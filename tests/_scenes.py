"""Images as a user would hand them to ``xpnet predict``, made from MNIST digits (28x28 uint8, light
on black): drawn dark on grey paper with margins, inverted, scaled, shifted, on a transparent layer,
in colour; and images with no digit: blank, noise, photo-like. Each maker returns a Pillow image."""

from __future__ import annotations

import struct
import zlib

import numpy


def _pil():
    from PIL import Image

    return Image


def _grow(digit, factor):
    """digit (28, 28) uint8 -> float in [0, 1], resized by ``factor`` (bilinear)."""
    Image = _pil()
    side = max(1, round(28 * factor))
    return numpy.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BILINEAR), numpy.float32) / 255.0


def on_paper(digit, rng, paper=0.72, ink=0.12, factor=4.0, canvas=(240, 200), at=(50, 40), noise=0.015):
    """Dark ink on grey paper, enlarged, with wide margins and a little sensor noise (L mode)."""
    d = _grow(digit, factor)
    page = numpy.full(canvas, paper, numpy.float32)
    y, x = at
    page[y:y + d.shape[0], x:x + d.shape[1]] -= (paper - ink) * d
    page += rng.normal(0.0, noise, page.shape).astype(numpy.float32)
    return _pil().fromarray(numpy.clip(page * 255.0 + 0.5, 0, 255).astype(numpy.uint8))


def inverted(digit, rng=None):
    """Black on white, MNIST's own size."""
    return _pil().fromarray(255 - digit)


def scaled(digit, rng=None, factor=2.5):
    """Light on black, resized by ``factor``."""
    return _pil().fromarray(numpy.rint(_grow(digit, factor) * 255.0).astype(numpy.uint8))


def shifted(digit, rng=None, canvas=64, at=(3, 30)):
    """Light on black, off-centre in a larger field."""
    page = numpy.zeros((canvas, canvas), numpy.uint8)
    page[at[0]:at[0] + 28, at[1]:at[1] + 28] = digit
    return _pil().fromarray(page)


def transparent(digit, rng=None, factor=3.0):
    """Drawn only in the alpha channel: black everywhere, opaque where the ink is (RGBA)."""
    a = numpy.rint(_grow(digit, factor) * 255.0).astype(numpy.uint8)
    rgba = numpy.zeros((*a.shape, 4), numpy.uint8)
    rgba[..., 3] = a
    return _pil().fromarray(rgba, mode="RGBA")


def blue_pen(digit, rng, factor=3.0, margin=20):
    """Blue ink on white paper, in colour (RGB)."""
    d = _grow(digit, factor)
    d = numpy.pad(d, margin)
    paper = numpy.array([250, 248, 240], numpy.float32)
    pen = numpy.array([20, 40, 160], numpy.float32)
    rgb = paper + (pen - paper) * d[..., None]
    rgb += rng.normal(0.0, 2.0, rgb.shape).astype(numpy.float32)
    return _pil().fromarray(numpy.clip(rgb + 0.5, 0, 255).astype(numpy.uint8), mode="RGB")


DIGIT_SCENES = {
    "paper": on_paper,
    "inverted": inverted,
    "scaled-up": scaled,
    "scaled-down": lambda d, rng: scaled(d, rng, factor=0.8),
    "shifted": shifted,
    "transparent": transparent,
    "rgb": blue_pen,
}


def blank(rng, level=0, size=(120, 90)):
    return _pil().fromarray(numpy.full(size, level, numpy.uint8))


def grey_paper(rng, size=(200, 160)):
    """Grey paper and its sensor noise, nothing written on it."""
    page = 0.7 + rng.normal(0.0, 0.015, size)
    return _pil().fromarray(numpy.clip(page * 255.0, 0, 255).astype(numpy.uint8))


def noise(rng, size=(64, 64)):
    return _pil().fromarray(rng.integers(0, 256, size).astype(numpy.uint8))


def colour_noise(rng, size=(96, 128)):
    return _pil().fromarray(rng.integers(0, 256, (*size, 3)).astype(numpy.uint8), mode="RGB")


def photo(rng, size=(120, 160)):
    """Photo-like: a sky-like gradient, a few filled shapes in random colours, a little noise (RGB)."""
    from PIL import ImageDraw

    h, w = size
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = numpy.linspace(0.0, 1.0, h)[:, None, None]
    rgb = (top * (1 - t) + bottom * t) * numpy.ones((1, w, 1))
    im = _pil().fromarray(rgb.astype(numpy.uint8), mode="RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        x1, y1 = x0 + int(rng.integers(15, w // 2)), y0 + int(rng.integers(15, h // 2))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    a = numpy.asarray(im, numpy.float32) + rng.normal(0.0, 4.0, (h, w, 3))
    return _pil().fromarray(numpy.clip(a, 0, 255).astype(numpy.uint8), mode="RGB")


def texture(rng, size=(128, 128), blur=4):
    """Photo-like: smoothed noise, as foliage or gravel (L mode)."""
    from PIL import ImageFilter

    im = noise(rng, size).filter(ImageFilter.GaussianBlur(blur))
    a = numpy.asarray(im, numpy.float32)
    a = (a - a.min()) / max(1.0, float(a.max() - a.min())) * 255.0
    return _pil().fromarray(a.astype(numpy.uint8))


NON_DIGITS = {
    "blank-black": lambda rng: blank(rng, 0),
    "blank-white": lambda rng: blank(rng, 255),
    "grey-paper": grey_paper,
    "noise": noise,
    "colour-noise": colour_noise,
    "photo": photo,
    "texture": texture,
}


def png_bytes(width, height, rows, bit_depth=8, colour=0) -> bytes:
    """A PNG with the given IHDR and ``rows`` (an iterable of raw scanlines, each without its
    filter byte), compressed as a stream."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    body = b"".join(z.compress(b"\0" + row) for row in rows) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
