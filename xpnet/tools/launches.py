"""``xpnet bench --backend cupy --dry-run``: what a train step would cost a GPU, counted without one.

On a GPU each array operation is a kernel launch of 5-10 us, and each host synchronisation stalls
the queue, so at small batches their counts, not the arithmetic, set the step time. Both are
counted here on the strict fake device (``xpnet.testing.fakecupy``), for the step that
``fit`` runs (``training.runner.train_step`` on ``fit``'s runner: forward, loss with label
smoothing 0.1, backward, SGD with Nesterov momentum and weight decay, and the accuracy count),
after one warm-up step that fills the workspace.

Beside them, the PyTorch twin's operations for the same step, from ``torch.profiler`` on the
CPU: every aten operation that does work itself (views, allocations and operations whose work is
done by child operations are left out), with the optimizer in its ``foreach`` form, one launch
per multi-tensor call, as PyTorch runs it on a GPU. The CPU's convolution kernels are not
cuDNN's, which may launch two or three kernels where the CPU profile shows one, so the PyTorch
figure is an estimate, not a trace of a GPU run.
"""

from __future__ import annotations

import collections

import numpy

from xpnet import backend
from xpnet.training.config import TrainConfig
from xpnet.training.runner import build_runner, train_step

# aten operations that launch no kernel: views, allocations, metadata.
TORCH_NO_LAUNCH = frozenset(
    "aten::" + n
    for n in (
        "empty empty_strided empty_like view as_strided as_strided_ resize_ detach detach_ _reshape_alias t "
        "transpose permute expand expand_as unsqueeze squeeze slice select reshape _unsafe_view alias "
        "resolve_conj resolve_neg lift_fresh to _to_copy contiguous set_ result_type size stride numel "
        "flatten view_as narrow split chunk unbind zeros_like ones_like new_empty new_empty_strided "
        "_has_compatible_shallow_copy_type is_nonzero"
    ).split()
)


def _config(width, res_blocks, optimizer, framework="xpnet"):
    """The run whose step is counted: ``xpnet train``'s default recipe at this width."""
    return TrainConfig(width=width, res_blocks=res_blocks, optimizer=optimizer, framework=framework)


def _runner(cfg, batch, seed):
    """``fit``'s runner for ``cfg`` and one batch of random images and labels drawn after it."""
    rng = numpy.random.default_rng(seed)
    runner = build_runner(cfg, 10, rng)
    x = backend.to_device(rng.standard_normal((batch, 1, 28, 28)).astype(numpy.float32))
    y = backend.to_device(rng.integers(0, 10, batch))
    return runner, x, y


def count_xpnet(width, batch, res_blocks=2, seed=0, optimizer="sgd"):
    """Counts of one train step (``fit``'s: the step and its accuracy count) and one eval step
    of xpnet on the fake device: {"train": {ops, syncs, to_host, to_device, float64},
    "eval": {...}, "train_by_name": {...}}. ``optimizer``: "sgd" (Nesterov momentum, weight
    decay) or "adam"."""
    from xpnet.testing import fakecupy

    with fakecupy.installed() as dev, backend.using("cupy"):
        runner, x, y = _runner(_config(width, res_blocks, optimizer), batch, seed)
        model = runner.model

        def step(correct):
            _, hits = train_step(runner, x, y, lr=0.01)
            return correct + hits

        correct = step(0)
        before = dev.counts.snapshot()
        dev.counts.by_name.clear()
        step(correct)
        train = dev.counts.since(before)
        by_name = dict(dev.counts.by_name.most_common())
        model.eval()
        model(x)
        before = dev.counts.snapshot()
        model(x).argmax(axis=1)
        evals = dev.counts.since(before)
        model.train()
    return dict(train=train, eval=evals, train_by_name=by_name)


# aten operations that do work of their own besides what their child operations do (a GEMM
# after copying the bias, a scatter after zeroing), and reductions whose CPU zero-fill a GPU
# reduction does not need (their children are not counted).
TORCH_OWN_WORK = frozenset(("aten::addmm", "aten::max_pool2d_with_indices_backward", "aten::nll_loss_backward"))
TORCH_WHOLE = frozenset(("aten::sum", "aten::mean"))


def _torch_launches(events):
    """(launches, per-name counts) from a profiler's events: each aten operation that does work
    of its own (a composite operation counts only through its children), one per ``_foreach_``
    call."""
    counts = collections.Counter()

    def visit(e):
        if not e.name.startswith("aten::"):
            for c in e.cpu_children:
                visit(c)
            return
        if e.name.startswith("aten::_foreach_") or e.name in TORCH_WHOLE:
            counts[e.name] += 1
            return
        before = sum(counts.values())
        for c in e.cpu_children:
            visit(c)
        leaf = sum(counts.values()) == before
        if (leaf or e.name in TORCH_OWN_WORK) and e.name not in TORCH_NO_LAUNCH:
            counts[e.name] += 1

    for e in events:
        if e.cpu_parent is None:
            visit(e)
    return sum(counts.values()), dict(counts.most_common())


def count_torch(width, batch, seed=0):
    """The PyTorch twin's launches for the same train step (``TorchRunner``'s, as ``fit`` runs
    it) and eval step (see the module docstring), or None without PyTorch."""
    try:
        import torch
    except ImportError:
        return None

    with backend.using("numpy"):  # the twin on the CPU, where the profiler sees its operations
        runner, x, y = _runner(_config(width, 2, "sgd", framework="torch"), batch, seed)
    for group in runner.opt.param_groups:
        group["foreach"] = True  # as torch.optim runs on a GPU: one launch per multi-tensor call
    model = runner.model

    def train_step_():
        return train_step(runner, x, y, lr=0.01)

    def eval_step():
        with torch.inference_mode():
            return model(runner._tensor(x)).argmax(1)

    result = {}
    for name, fn, mode in (("train", train_step_, model.train), ("eval", eval_step, model.eval)):
        mode()
        fn()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            fn()
        events = prof.events()
        result[name], result[f"{name}_by_name"] = _torch_launches(events)
        result[f"{name}_leaf_ops"] = sum(
            1 for e in events
            if e.name.startswith("aten::") and not any(c.name.startswith("aten::") for c in e.cpu_children)
        )
    model.train()
    return result


def count_graph(width, batch, res_blocks=2, seed=0):
    """Counts of one train step replayed as a CUDA graph (``training.graphs.GraphedStep``, as
    ``xpnet train --cuda-graph`` runs it) on the fake device, after the step that captured it:
    {ops (host launches), syncs, to_device, inside (the launches the graph replays)}."""
    from xpnet import nn, optim
    from xpnet.models import ResNet9
    from xpnet.testing import fakecupy
    from xpnet.training.graphs import GraphedStep

    with fakecupy.installed() as dev:
        backend.use("cupy")
        try:
            rng = numpy.random.default_rng(seed)
            model = ResNet9(width=width, res_blocks=res_blocks, rng=rng)
            opt = optim.SGD(model.named_parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
            step = GraphedStep(model, opt, nn.CrossEntropyLoss(label_smoothing=0.1))
            x = backend.to_device(rng.standard_normal((batch, 1, 28, 28)).astype(numpy.float32))
            y = backend.to_device(rng.integers(0, 10, batch))
            step(x, y, 0.01)
            before, inside = dev.counts.snapshot(), dev.counts.graph_ops
            step(x, y, 0.01)
            counts = dev.counts.since(before)
            counts["inside"] = dev.counts.graph_ops - inside
        finally:
            backend.use("numpy")
    return counts


def run(width, batch_sizes, res_blocks=2, torch=True):
    rows = []
    for batch in batch_sizes:
        row = dict(batch=batch, xpnet=count_xpnet(width, batch, res_blocks))
        if torch and res_blocks == 2:
            row["torch"] = count_torch(width, batch)
        rows.append(row)
    # The replayed graph is the same at any batch size (as the eager count is): one count, at
    # the smallest batch, spares the fake device a capture of the largest.
    graph = dict(batch=min(batch_sizes), **count_graph(width, min(batch_sizes), res_blocks))
    return dict(width=width, res_blocks=res_blocks, rows=rows, graph=graph)


def markdown(result) -> str:
    has_torch = any(r.get("torch") for r in result["rows"])
    head = ["batch", "xpnet train launches", "host syncs", "host copies"]
    if has_torch:
        head += ["torch train launches (est.)", "ratio", "torch leaf ops (views incl.)"]
    head += ["xpnet eval launches"] + (["torch eval launches (est.)"] if has_torch else [])
    lines = [
        f"launches per step on the fake device (width {result['width']}, res_blocks {result['res_blocks']})",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in result["rows"]:
        t, e = r["xpnet"]["train"], r["xpnet"]["eval"]
        cells = [str(r["batch"]), str(t["ops"]), str(t["syncs"]), str(t["to_host"] + t["to_device"])]
        if has_torch:
            cells += [str(r["torch"]["train"]), f"{t['ops'] / r['torch']['train']:.2f}",
                      str(r["torch"]["train_leaf_ops"])]
        cells += [str(e["ops"])] + ([str(r["torch"]["eval"])] if has_torch else [])
        lines.append("| " + " | ".join(cells) + " |")
    g = result.get("graph")
    if g:
        lines += ["", f"a train step replayed as a CUDA graph (batch {g['batch']}): {g['ops']} host launches, "
                      f"{g['inside']} inside the graph, {g['syncs']} host syncs"]
    return "\n".join(lines) + "\n"
