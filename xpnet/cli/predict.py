"""``xpnet predict``: the digit in each image, by a checkpoint's model."""

from __future__ import annotations

import json
from pathlib import Path

from xpnet import backend
from xpnet.cli import UserError


def load_image(path: Path):
    """A PNG or JPEG of any size -> (28, 28) uint8, white digit on black as in MNIST."""
    import numpy

    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as e:
        raise UserError("predict needs Pillow, a dependency of xpnet: pip install xpnet") from e
    try:
        with Image.open(path) as im:
            im = im.convert("L").resize((28, 28), Image.Resampling.LANCZOS)
            a = numpy.asarray(im, dtype=numpy.uint8)
    except FileNotFoundError as e:
        raise UserError(f"{path}: no such image") from e
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{path}: not a readable PNG or JPEG image ({e})") from e
    # MNIST digits are light strokes on a dark ground; a scan or drawing is usually the reverse,
    # which its bright border gives away.
    border = numpy.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    if border.mean() > 127:
        a = 255 - a
    return a


def cmd_predict(args) -> int:
    import numpy

    from xpnet.data import normalize
    from xpnet.training.runner import load_model

    backend.use(args.backend)
    model, _, _ = load_model(args.checkpoint)
    # Every readable image gets its answer; the unreadable ones are reported together after them.
    paths, images, problems = [], [], []
    for path in args.images:
        try:
            images.append(load_image(path))
            paths.append(path)
        except UserError as e:
            problems.append(str(e))
    if images:
        logits = backend.asnumpy(model(normalize(backend.to_device(numpy.stack(images)))))
        z = logits - logits.max(axis=1, keepdims=True)
        probs = numpy.exp(z) / numpy.exp(z).sum(axis=1, keepdims=True)
        for path, p in zip(paths, probs):
            k = int(p.argmax())
            if args.json:
                print(json.dumps(dict(image=str(path), prediction=k, probability=float(p[k]))))
            else:
                print(f"{path}: {k} ({p[k]:.2%})")
    if problems:
        raise UserError("; ".join(problems))
    return 0
