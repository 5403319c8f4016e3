"""Train ResNet-9 on MNIST with xpnet's own parts: a model, an optimizer, batches and a loop.

    python examples/train_mnist.py --data-dir ../shared/data/mnist
    python examples/train_mnist.py --data-dir ../shared/data/mnist --width 0.25 --epochs 1 --train-subset 2000

The recipe is `xpnet train`'s default (SGD with Nesterov momentum, one-cycle learning rate,
weight decay, label smoothing, random shifts), without its checkpoints, logs and plots.
"""

import argparse

import numpy

from xpnet import backend, data, nn, optim
from xpnet.models import ResNet9


def train(net, loss_fn, opt, schedule, images, labels, batch_size, rng):
    """One epoch of SGD steps; returns the last batch's loss."""
    net.train()
    for x, y in data.batches(images, labels, batch_size, rng=rng, augment=2):
        opt.zero_grad()
        loss = loss_fn(net(x), y)             # forward
        net.backward(loss_fn.backward())      # backward: fills every Parameter.grad
        opt.lr = schedule(opt.steps)
        opt.step()
    return loss


def evaluate(net, images, labels, batch_size=500):
    """Test accuracy, a fraction."""
    net.eval()
    batches = data.batches(images, labels, batch_size, shuffle=False)
    return sum(int((net(x).argmax(axis=1) == y).sum()) for x, y in batches) / len(labels)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", help="folder of the four MNIST IDX files (default: $XPNET_DATA, else ./data/mnist)")
    p.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (0.25: the fast preset's net)")
    p.add_argument("--train-subset", type=int, default=0, help="train on the first N images (0: all)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    backend.use(args.backend)
    mnist = data.load_mnist(args.data_dir)
    n = args.train_subset or len(mnist.train_labels)
    images, labels = backend.to_device(mnist.train_images[:n]), mnist.train_labels[:n]
    rng = numpy.random.default_rng(args.seed)  # one generator: weights, shuffles and shifts
    net = ResNet9(width=args.width, rng=rng)
    opt = optim.SGD(net.named_parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = optim.OneCycle(args.lr, total_steps=max(2, args.epochs * -(-n // args.batch_size)))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    test_images = backend.to_device(mnist.test_images)
    for epoch in range(1, args.epochs + 1):
        loss = train(net, loss_fn, opt, schedule, images, labels, args.batch_size, rng)
        accuracy = evaluate(net, test_images, mnist.test_labels)
        print(f"epoch {epoch}/{args.epochs}: last batch loss {loss:.4f}, test accuracy {accuracy:.2%}")
    return accuracy


if __name__ == "__main__":
    main()
