"""The launch table in docs/gpu.md, written by the dry-run and checked against it.

The table is ``xpnet bench --backend cupy --dry-run --width W --batch-sizes 8 128`` at widths 1
and 0.25, pasted between two markers. Whoever changes the launch counts regenerates it::

    python -m xpnet.tools.launch_docs            # rewrite the table in docs/gpu.md
    python -m xpnet.tools.launch_docs --check    # exit 1 if the xpnet counts there are stale

``tests/tools/test_launch_docs.py`` runs the check (the xpnet columns only: the PyTorch twin's
columns come from ``torch.profiler`` and are written, not checked).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from xpnet.tools import launches

WIDTHS = (1.0, 0.25)
BATCHES = (8, 128)
DOC = Path(__file__).resolve().parents[2] / "docs" / "gpu.md"
BEGIN = "<!-- launch table: written by `python -m xpnet.tools.launch_docs`; do not edit by hand -->"
END = "<!-- end of launch table -->"


def tables(torch=True) -> list[str]:
    """The dry-run's markdown at each width in WIDTHS, for BATCHES."""
    return [launches.markdown(launches.run(w, list(BATCHES), torch=torch)) for w in WIDTHS]


def block(torch=True) -> str:
    batches = " ".join(map(str, BATCHES))
    commands = "\n".join(f"xpnet bench --backend cupy --dry-run --width {w:g} --batch-sizes {batches}" for w in WIDTHS)
    return f"{BEGIN}\n\n```bash\n{commands}\n```\n\n" + "\n".join(tables(torch)) + f"\n{END}"


def _span(text: str) -> tuple[int, int]:
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no launch table between {BEGIN!r} and {END!r}")
    return start, end + len(END)


def parse(text: str) -> list[list[dict]]:
    """The tables between the markers, each a list of rows {column header: cell}."""
    start, end = _span(text)
    found, header = [], None
    for line in text[start:end].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells is None:
            header = None
        elif header is None:
            header = cells
            found.append([])
        elif not re.fullmatch(r"-+", cells[0]):
            found[-1].append(dict(zip(header, cells)))
    return found


def xpnet_columns(rows: list[dict]) -> list[dict]:
    """The rows less the PyTorch twin's columns (those naming torch, and their ratio)."""
    return [{k: v for k, v in r.items() if "torch" not in k and k != "ratio"} for r in rows]


def stale(text: str, fresh=None) -> list[str]:
    """Differences between the xpnet counts in ``text``'s table and a fresh dry-run (``fresh``:
    the dry-run's tables without PyTorch, made here when not given)."""
    documented = parse(text)
    fresh_text = fresh or tables(torch=False)
    fresh = [parse(f"{BEGIN}\n{t}\n{END}")[0] for t in fresh_text]
    if len(documented) != len(fresh):
        return [f"{len(documented)} tables documented, {len(fresh)} made"]
    problems = []
    for w, doc, new in zip(WIDTHS, documented, fresh):
        if len(doc) != len(new):
            problems.append(f"width {w:g}: {len(doc)} rows documented, {len(new)} made")
        pairs = zip(xpnet_columns(doc), xpnet_columns(new))
        problems += [f"width {w:g}: documented {d}, dry-run {f}" for d, f in pairs if d != f]
    graph = re.compile(r"^a train step replayed as a CUDA graph.*$", re.M)
    start, end = _span(text)
    documented_graphs = graph.findall(text[start:end])
    made_graphs = [m for t in fresh_text for m in graph.findall(t)]
    if documented_graphs != made_graphs:
        problems.append(f"the CUDA-graph lines: documented {documented_graphs}, dry-run {made_graphs}")
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m xpnet.tools.launch_docs", description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only compare the xpnet counts; exit 1 if stale")
    p.add_argument("--doc", type=Path, default=DOC, help="the file holding the table (default: %(default)s)")
    args = p.parse_args(argv)
    text = args.doc.read_text()
    if args.check:
        problems = stale(text)
        print("\n".join(problems) or f"{args.doc}: the launch table matches the dry-run")
        return 1 if problems else 0
    _span(text)  # the markers are there before the minutes the dry-runs take
    new = block()
    text = args.doc.read_text()  # as it is now: it may have been edited meanwhile
    start, end = _span(text)
    args.doc.write_text(text[:start] + new + text[end:])
    print(f"written: the launch table in {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
