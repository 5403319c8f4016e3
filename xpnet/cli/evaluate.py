"""``xpnet evaluate``: a checkpoint's test loss and accuracy."""

from __future__ import annotations

import json
import sys

from xpnet import backend
from xpnet.data.folder import DataFolder
from xpnet.errors import UserError


def model_image_size(meta) -> tuple:
    """(H, W) of the images a checkpoint's model reads (28x28 for checkpoints that do not say)."""
    return tuple(meta["model_config"].get("image_size", (28, 28)))


def model_view(images, meta, path, where):
    """The images a checkpoint's model reads: their central crop where its run trained on crops
    (``TrainConfig.crop``), else the images themselves; images (N, H, W). UserError in one line
    where they do not fit the model. ``where`` names the images' source in that line."""
    from xpnet.data import center_crop
    from xpnet.training.runner import stored_crop

    size, crop = model_image_size(meta), stored_crop(meta, path)
    h, w = images.shape[1:]
    if crop and min(h, w) >= crop:
        return center_crop(images, crop)
    if (h, w) != size:
        reads = f"central {crop}x{crop} windows of" if crop else f"{size[0]}x{size[1]}"
        raise UserError(f"{path}: its model reads {reads} images, but {where} holds {h}x{w} images")
    return images


def _check_eval_batch(batch: int, meta, image_size, n: int) -> int:
    """The batch evaluation runs: at most the test set (in eval mode every image is classified on
    its own, so a larger batch is the same single pass), refused in one line where even a training
    step's estimate, an upper bound of an evaluation's, says it would not fit in memory."""
    from xpnet.tools import memory
    from xpnet.training.config import TrainConfig

    batch = min(batch, n)
    if backend.name() != "numpy" or batch <= EVAL_BATCH_PROBED_FROM:
        return batch
    cfg = TrainConfig.from_dict(meta["config"])
    need = memory.estimate_step_bytes(cfg, int(meta["num_classes"]), image_size, batch)
    available = memory.available_bytes()
    if not memory.fits(need, available)[0]:
        raise UserError(f"--batch-size {batch} needs about {need / 2.0**30:.1f} GiB but "
                        f"{available / 2.0**30:.1f} GiB of memory is available; use a smaller batch")
    return batch


# Up to this batch an evaluation fits anywhere xpnet trains; above it the memory model is asked.
EVAL_BATCH_PROBED_FROM = 1000


def cmd_evaluate(args) -> int:
    from xpnet.training.runner import evaluate, load_model, stored_inputs

    backend.use(args.backend)
    model, _, meta = load_model(args.checkpoint)
    folder = DataFolder.choose(args.data_dir)
    images, labels = folder.load_test(progress=sys.stderr.isatty())
    images = model_view(images, meta, args.checkpoint, folder)
    size = model_image_size(meta)
    batch = _check_eval_batch(args.batch_size, meta, size, len(labels))
    loss, acc, _, _ = evaluate(model, backend.to_device(images), backend.to_device(labels), batch,
                               inputs=stored_inputs(meta, args.checkpoint))
    result = dict(test_loss=loss, test_accuracy=acc, test_images=int(len(labels)),
                  checkpoint=str(args.checkpoint), epoch=meta.get("epoch"))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"test loss {loss:.4f}  test accuracy {acc:.4%}  ({result['test_images']} images)")
    return 0
