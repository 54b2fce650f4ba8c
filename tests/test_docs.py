"""Docs generated from the real CLI stay current."""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_cli_reference_is_current() -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from gen_cli_docs import render
    finally:
        sys.path.pop(0)
    assert (REPO / "docs" / "cli.md").read_text() == render(), (
        "docs/cli.md is stale: run `make docs-cli`"
    )


def test_readme_shows_the_two_commands() -> None:
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


DOC_PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
# words about how the project is organised internally, which mean nothing to a user
PROCESS_WORDS = re.compile(
    r"\b(this|last|next|earlier|a later) session\b|\bsession[- ]\d|\b(the|this|that) issue\b"
    r"|\bissue #?\d|\bissue's\b|FACTS\.md|\.\./shared",
    re.IGNORECASE,
)


def test_doc_links_point_at_files_that_exist() -> None:
    missing = []
    for page in DOC_PAGES:
        for target in LINK.findall(page.read_text()):
            path = target.split("#", 1)[0]
            if not path or "://" in path or path.startswith("mailto:"):
                continue
            if not (page.parent / path).exists():
                missing.append(f"{page.relative_to(REPO)}: {target}")
    assert missing == []


def test_docs_speak_to_users_not_about_how_the_project_is_run() -> None:
    found = [
        f"{page.relative_to(REPO)}:{number}: {line.strip()[:80]}"
        for page in DOC_PAGES
        for number, line in enumerate(page.read_text().splitlines(), 1)
        if PROCESS_WORDS.search(line)
    ]
    assert found == []


def test_docs_show_no_paths_from_the_test_temp_folder() -> None:
    """Output pasted from a test run carries pytest's temp paths, which mean nothing to a user."""
    found = [
        f"{page.relative_to(REPO)}:{number}: {line.strip()[:80]}"
        for page in DOC_PAGES
        for number, line in enumerate(page.read_text().splitlines(), 1)
        if "pytest-of-" in line or "/tmp/pytest-" in line
    ]
    assert found == []


def test_the_docs_index_points_at_every_page() -> None:
    linked = {
        target.split("#", 1)[0] for target in LINK.findall((REPO / "docs/index.md").read_text())
    }
    pages = {page.name for page in (REPO / "docs").glob("*.md")} - {"index.md"}
    assert sorted(pages - linked) == []


def test_serve_config_reference_is_generated_from_the_schema() -> None:
    from slmkit.config import reference_markdown
    from slmkit.monitor.serve_section import MonitoredServeConfig

    text = (REPO / "docs" / "serve.md").read_text()
    block = text.split("<!-- reference:serve -->\n", 1)[1].split("\n<!-- /reference:serve -->")[0]
    assert block == reference_markdown(MonitoredServeConfig), (
        "regenerate the table in docs/serve.md"
    )
