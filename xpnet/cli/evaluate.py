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
    loss, acc, _, _ = evaluate(model, backend.to_device(images), backend.to_device(labels), args.batch_size,
                               inputs=stored_inputs(meta, args.checkpoint))
    result = dict(test_loss=loss, test_accuracy=acc, test_images=int(len(labels)),
                  checkpoint=str(args.checkpoint), epoch=meta.get("epoch"))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"test loss {loss:.4f}  test accuracy {acc:.4%}  ({result['test_images']} images)")
    return 0
