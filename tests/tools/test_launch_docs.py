"""The launch table in docs/gpu.md is the dry-run's, at widths 1 and 0.25 and batches 8 and 128."""

import pytest

from xpnet.tools import launch_docs


@pytest.fixture(scope="module")
def fresh():
    return launch_docs.tables(torch=False)


def test_the_documented_launch_counts_are_the_dry_runs(fresh):
    text = launch_docs.DOC.read_text()
    documented = launch_docs.parse(text)
    assert len(documented) == len(launch_docs.WIDTHS)
    assert all(sorted(int(r["batch"]) for r in rows) == sorted(launch_docs.BATCHES) for rows in documented)
    problems = launch_docs.stale(text, fresh)
    assert not problems, "regenerate with: python -m xpnet.tools.launch_docs\n" + "\n".join(problems)


def test_a_stale_count_is_found(fresh):
    text = launch_docs.DOC.read_text()
    rows = launch_docs.parse(text)[0]
    cell = rows[0]["xpnet train launches"]
    line = next(line for line in text.splitlines() if line.startswith(f"| {rows[0]['batch']} | {cell} |"))
    edited = text.replace(line, line.replace(f"| {cell} |", f"| {int(cell) + 1} |", 1), 1)
    assert launch_docs.stale(edited, fresh)
