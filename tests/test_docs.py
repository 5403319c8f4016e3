"""The documentation's promises that a test can hold: the README stays a short front door that opens
with the commands CI runs, and every link between the Markdown files leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README_LIMIT = 12 * 1024  # bytes: a front door, read in a screen or two
PAGES = ["README.md", "CONTRIBUTING.md", "benchmarks/README.md", *sorted(
    str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    return {_slug(m) for m in re.findall(r"^#+ (.*)$", text, re.M)}


def test_the_readme_is_short_and_opens_with_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    assert len(readme.encode()) <= README_LIMIT
    first_block = re.search(r"^```bash\n(.*?)^```", readme, re.M | re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()]
    assert commands[0].startswith("python3 -m venv .venv && .venv/bin/pip install ")
    assert ".venv/bin/xpnet train " in commands[0]
    assert commands[1] == ".venv/bin/python -m pytest -q"
    assert '"$venv/bin/python" -m pytest -q' in (REPO / ".ci" / "run").read_text()


def _broken_links(path: Path) -> list[str]:
    """The relative links of a Markdown file whose file or heading does not exist."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", link):  # http:, https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        dest = (path.parent / target).resolve() if target else path
        if not dest.exists() or (anchor and dest.is_file() and anchor not in _anchors(dest)):
            broken.append(link)
    return broken


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_leads_somewhere(page):
    assert _broken_links(REPO / page) == []


def test_the_link_checker_finds_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "b.md").write_text("# Top part\n\n## The `CPU` kernels\n")
    page = tmp_path / "a.md"
    page.write_text("[ok](b.md#the-cpu-kernels) [gone](c.md) [no heading](b.md#the-gpu) [web](https://x.org)\n"
                    "[self](#here)\n\n## Here\n")
    assert _broken_links(page) == ["c.md", "b.md#the-gpu"]
