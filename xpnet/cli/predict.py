"""``xpnet predict``: the digit in each image, by a checkpoint's model, or why there is none.

Each image is made into the network's input as MNIST made its digits (``xpnet.data.images``). The
images go through the model in batches of ``BATCH``, so twenty thousand files take the memory of
one batch, and each answer is printed as its batch finishes. An image that cannot be read gets one
line on stderr; the others still get their answers.
"""

from __future__ import annotations

import json
import sys

from xpnet import backend
from xpnet.errors import UserError

BATCH = 256

# Exit statuses (``xpnet predict --help`` lists them).
NO_DIGIT = 3  # every image was read, and at least one holds no digit (or none the model is sure of)
UNREADABLE = 1  # at least one image could not be read (a line on stderr for each)


def _probabilities(model, images, inputs="standard", crop=0):
    """images (N, 28, 28) uint8 -> softmax probabilities (N, 10) on the host; a model trained on
    crops reads their central crop x crop windows."""
    import numpy

    from xpnet.data import center_crop, normalize
    from xpnet.functional import softmax

    x = normalize(backend.to_device(center_crop(images, crop)), inputs)
    logits = backend.asnumpy(model(x)).astype(numpy.float64)
    return softmax(logits)


class _Saver:
    """Writes each network input as a 28x28 PNG named after its image in ``folder``."""

    def __init__(self, folder):
        self.folder, self.used = folder, set()
        if folder is not None:
            if folder.exists() and not folder.is_dir():
                raise UserError(f"--save-preprocessed {folder}: not a folder")
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(f"--save-preprocessed {folder}: cannot create it ({e.strerror})") from None

    def __call__(self, path, image):
        if self.folder is None:
            return
        from PIL import Image

        name, n = f"{path.stem}.png", 1
        while name in self.used:  # two images of one name from two folders
            n += 1
            name = f"{path.stem}-{n}.png"
        self.used.add(name)
        try:
            Image.fromarray(image).save(self.folder / name)
        except OSError as e:
            raise UserError(f"--save-preprocessed: cannot write {self.folder / name} ({e.strerror or e})") from None


def _answer(path, prepared, p, min_confidence):
    """-> (the JSON-able answer for one image, its text line, whether it holds a digit)."""
    import numpy

    top = [] if p is None else [dict(digit=int(k), probability=round(float(p[k]), 6)) for k in numpy.argsort(-p)[:3]]
    reason = prepared.no_digit
    if reason is None and top[0]["probability"] < min_confidence:
        reason = (f"unsure: {top[0]['digit']} at {top[0]['probability']:.1%} "
                  f"is under --min-confidence {min_confidence:g}")
    digit = reason is None
    result = dict(image=str(path), digit=digit, prediction=top[0]["digit"] if digit else None,
                  probability=top[0]["probability"] if digit else None, top3=top, reason=reason)
    line = f"{path}: {top[0]['digit']} ({top[0]['probability']:.2%})" if digit else f"{path}: no digit ({reason})"
    return result, line, digit


def cmd_predict(args) -> int:
    import numpy

    from xpnet.data.images import ImageError, prepare
    from xpnet.training.runner import load_model, stored_crop, stored_inputs

    backend.use(args.backend)
    model, _, meta = load_model(args.checkpoint)
    from xpnet.cli.evaluate import model_image_size

    size, crop = model_image_size(meta), stored_crop(meta, args.checkpoint)
    if size != (28, 28) and not 0 < crop <= 28:
        raise UserError(f"{args.checkpoint}: its model reads {size[0]}x{size[1]} images; predict prepares "
                        f"images as MNIST's 28x28 digits")
    inputs = stored_inputs(meta, args.checkpoint)
    save = _Saver(args.save_preprocessed)
    unreadable = no_digit = 0
    for start in range(0, len(args.images), BATCH):
        ready = []
        for path in args.images[start:start + BATCH]:
            try:
                ready.append((path, prepare(path)))
            except ImageError as e:
                print(f"xpnet predict: error: {e}", file=sys.stderr, flush=True)
                unreadable += 1
        digits = [i for i, (_, prep) in enumerate(ready) if prep.no_digit is None]
        probs = [None] * len(ready)
        if digits:
            stacked = numpy.stack([ready[i][1].image for i in digits])
            for i, p in zip(digits, _probabilities(model, stacked, inputs, crop)):
                probs[i] = p
        for (path, prep), p in zip(ready, probs):
            save(path, prep.image)
            result, line, digit = _answer(path, prep, p, args.min_confidence)
            no_digit += not digit
            print(json.dumps(result) if args.json else line)
        sys.stdout.flush()
    if unreadable:
        return UNREADABLE
    return NO_DIGIT if no_digit else 0
