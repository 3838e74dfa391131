"""The repository carries its own reference: every link in README.md and docs/ (markdown
links and paths in backticks that point somewhere relative) resolves to a file or folder
inside the repository, so a clone has everything the docs name."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")
RELATIVE_PATH = re.compile(r"`(\.\.?/[^`\s]*)`")  # `../x/y.md`, `./scripts/test`


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def links_leaving_the_repository(document: Path, root: Path = ROOT) -> list[str]:
    """The links of `document` that do not resolve to something inside `root`."""
    text = document.read_text(encoding="utf-8")
    bad = []
    for target in [*MARKDOWN_LINK.findall(text), *RELATIVE_PATH.findall(text)]:
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same page
        path = (document.parent / target.split("#")[0]).resolve()
        if not path.is_relative_to(root) or not path.exists():
            bad.append(f"{document.relative_to(root)}: {target}")
    return bad


def test_no_readme_or_docs_link_leaves_the_repository():
    bad = [link for document in documents() for link in links_leaving_the_repository(document)]
    assert not bad, bad
    assert all("../shared" not in d.read_text(encoding="utf-8") for d in documents())


def test_the_check_finds_a_link_outside_and_a_missing_file(tmp_path):
    """The check itself can fail: a link out of the repository and one to a missing file."""
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "DOMAIN.md").write_text("outside the repository\n")
    (root / "docs" / "here.md").write_text("inside\n")
    page = root / "docs" / "page.md"
    page.write_text(
        "[domain](../../shared/DOMAIN.md), `../../shared/DOMAIN.md`, [gone](gone.md), "
        "[here](here.md#top), `./here.md`, [web](https://example.org/x), [anchor](#top)\n"
    )
    assert links_leaving_the_repository(page, root) == [
        "docs/page.md: ../../shared/DOMAIN.md",
        "docs/page.md: gone.md",
        "docs/page.md: ../../shared/DOMAIN.md",
    ]


def test_the_domain_reference_is_in_the_repository():
    domain = (ROOT / "docs" / "domain.md").read_text(encoding="utf-8")
    for must in ("就医地目录，参保地政策", "## Glossary", "## The registration check", "## The settlement rules",
                 "## The seed stories", "179.63", "129.63", "50.00"):  # fmt: skip
        assert must in domain, must


def test_the_bundled_worlds_name_no_source_outside_the_repository():
    """A world's description is documentation too: it cites docs/, not the
    session's shared folder (which a clone does not have)."""
    worlds = sorted((ROOT / "server" / "worlds").rglob("*.yaml"))
    assert worlds
    naming_shared = [str(w.relative_to(ROOT)) for w in worlds if "shared/" in w.read_text(encoding="utf-8")]
    assert not naming_shared, naming_shared
