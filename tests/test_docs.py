"""The documentation holds together: README.md is a short page one that links every
docs/*.md page, and every relative link (images included) in README.md and docs/*.md
names a file that exists inside the repository. Files only: no network, no build."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 150

FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)
CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^)]*[\"'])?\s*\)")  # ](path "title")
EXTERNAL = ("http://", "https://", "mailto:")


def links_in(text: str) -> list[str]:
    """The targets of markdown links and images in `text`, outside code."""
    return LINK.findall(CODE.sub("", FENCE.sub("", text)))


def local_targets(page: Path) -> list[tuple[str, Path]]:
    """Each relative link of a page with the path it resolves to (its #anchor dropped)."""
    out = []
    for target in links_in(page.read_text(encoding="utf-8")):
        if target.startswith(EXTERNAL) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0].split("?", 1)[0]
        out.append((target, (page.parent / path).resolve()))
    return out


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_there_are_docs_pages():
    assert PAGES, "docs/ holds no .md page"


def test_readme_links_every_docs_page():
    linked = {path for _, path in local_targets(README)}
    unlinked = [_name(p) for p in PAGES if p.resolve() not in linked]
    assert not unlinked, f"README.md does not link {unlinked}"


def test_readme_is_at_most_150_lines():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines"


@pytest.mark.parametrize("page", [README, *PAGES], ids=_name)
def test_every_relative_link_names_an_existing_file(page: Path):
    broken = [t for t, path in local_targets(page) if not path.is_file()]
    assert not broken, f"{_name(page)}: links to nothing: {broken}"


@pytest.mark.parametrize("page", [README, *PAGES], ids=_name)
def test_no_link_leaves_the_repository(page: Path):
    outside = [t for t, path in local_targets(page) if not path.is_relative_to(ROOT)]
    assert not outside, f"{_name(page)}: links outside the repository: {outside}"


def test_the_link_reader_sees_links_and_images_but_not_code():
    text = (
        'See [a](a.md#part), ![fig](quick/x.png "title") and [web](https://x.org).\n'
        "`[not](inline.md)`\n```\n[not](fenced.md)\n```\n[top](#anchor)\n"
    )
    assert links_in(text) == ["a.md#part", "quick/x.png", "https://x.org", "#anchor"]
