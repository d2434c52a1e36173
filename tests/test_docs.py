"""The docs cannot drift: docs/components.md is what the registry generates, and every
relative link of README.md and docs/*.md points at a file (and heading) that exists."""

from __future__ import annotations

import re
from pathlib import Path

from componentmanager import all_types
from componentmanager.docgen import render

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE = re.compile(r"`[^`\n]+`")


def prose(page: Path) -> str:
    """A page without its code blocks and code spans (where brackets are not links)."""
    return CODE.sub("", FENCE.sub("", page.read_text()))


def test_components_page_is_generated_from_the_registry() -> None:
    committed = (ROOT / "docs" / "components.md").read_text()
    assert committed == render(all_types()), (
        "docs/components.md is stale: python -m componentmanager.docgen > docs/components.md")


def anchors(page: Path) -> set[str]:
    """The anchors a page offers: GitHub's slugs of its headings, and explicit ids."""
    text = FENCE.sub("", page.read_text())  # code spans stay: headings have them
    found = set(re.findall(r'<a id="([^"]+)"', text))
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(prose(page)):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no file {file.relative_to(ROOT)})")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no heading #{anchor} in {file.name})")
    return broken


def test_every_relative_link_resolves() -> None:
    broken = {page.name: found for page in PAGES if (found := broken_links(page))}
    assert broken == {}


def test_readme_keeps_the_two_commands_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "pip install -e . && flowctl run examples/hello.yaml --until-done" in readme
    assert "pip install -e '.[test]' && pytest " in readme
    assert len(readme.splitlines()) <= 250
