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
    size = model_image_size(meta)
    if tuple(images.shape[1:]) != size:
        raise UserError(
            f"{args.checkpoint}: its model reads {size[0]}x{size[1]} images, but {folder} holds "
            f"{images.shape[1]}x{images.shape[2]} images"
        )
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
