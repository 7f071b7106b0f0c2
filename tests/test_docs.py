"""The README and docs/: every link leads somewhere, and the README stays a front page."""

import re

import pytest

from processes import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page):
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces
    to hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_link_leads_to_a_file_and_a_heading(page):
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target} leads nowhere"
        if anchor:
            assert anchor in anchors(linked), f"{page.name}: no heading for {target}"


def test_the_readme_is_a_front_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 250
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in readme, f"the README does not link {page.name}"


NAMED_FILE = re.compile(
    r"(?<![\w/.])((?:app|worker|storage|bench|tests|cluster)/[\w/]*\w\.(?:py|conf|html|json))\b")
NAMING = [*PAGES, *(path for folder in ("app", "worker", "storage", "bench", "tests")
                    for path in sorted((REPO / folder).rglob("*.py"))),
          REPO / "supervisord.conf", REPO / "Makefile", *sorted((REPO / "cluster").iterdir())]


# What the project writes for itself (bench results, scratch folders) is named but not kept:
# the folders .gitignore lists.
GENERATED = tuple(line.strip() for line in (REPO / ".gitignore").read_text().splitlines()
                  if line.strip().endswith("/"))


def test_every_file_the_docs_and_the_code_name_exists():
    """A module moved or renamed leaves no page or comment pointing at its old place."""
    missing = [f"{page.relative_to(REPO)}: {name}" for page in NAMING
               for name in sorted(set(NAMED_FILE.findall(page.read_text())))
               if not (REPO / name).exists() and not name.startswith(GENERATED)]
    assert not missing, "named, but not there:\n" + "\n".join(missing)
