"""The documentation stands alone and stays navigable.

A user who clones the project has README.md and docs/, nothing beside them: no file may
point at notes outside the project, every relative link and every ``docs/<page>.md#anchor``
cited in code must land on a real file and heading, the README stays a short entry point,
and the benchmark tables in docs/benchmarks.md are what benchmarks/report.py renders
from the result files (no figure typed by hand).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250
# Notes that lived outside the repository while it was written (built from parts so this
# file does not match itself).
OUTSIDE_NOTES = re.compile(rb"\b(PAPER|STACK|DESIGN)\.md\b|\.\./" + b"shared\\b")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
DOC_CITATION = re.compile(r"\bdocs/([\w-]+\.md)#([\w-]+)")


def project_files() -> list[Path]:
    """Files git tracks or would track (new files not yet committed included)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    paths = {ROOT / p for p in out.decode().split("\0") if p}
    return sorted(p for p in paths if p.is_file())


def markdown_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def github_anchors(page: Path) -> set[str]:
    """Anchors GitHub makes of a page's headings: lower case, punctuation dropped, spaces
    to hyphens, ``-1``, ``-2`` ... for repeats."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose_lines(page.read_text()):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def test_no_file_references_notes_outside_the_project():
    offenders = []
    for path in project_files():
        if path == Path(__file__).resolve() or path.stat().st_size > 5_000_000:
            continue
        for i, line in enumerate(path.read_bytes().splitlines(), 1):
            if OUTSIDE_NOTES.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{i}")
    assert not offenders, (
        "these lines cite notes a user does not have; cite docs/paper.md or "
        f"docs/libraries.md instead: {offenders}"
    )


def test_readme_is_short():
    n = len((ROOT / "README.md").read_text().splitlines())
    assert n <= README_MAX_LINES, (
        f"README.md has {n} lines (at most {README_MAX_LINES}): move detail to docs/"
    )


def test_relative_links_resolve():
    broken = []
    for page in markdown_pages():
        for line in prose_lines(page.read_text()):
            for target in LINK.findall(line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                    continue
                file_part, _, anchor = target.partition("#")
                dest = (page.parent / file_part).resolve() if file_part else page
                if not dest.exists():
                    broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
                elif anchor and dest.suffix == ".md" and anchor not in github_anchors(dest):
                    broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken


def test_docs_sections_cited_in_files_exist():
    broken = []
    anchors: dict[str, set[str]] = {}
    for path in project_files():
        if path.suffix not in {".py", ".yaml", ".yml", ".toml", ".txt", ".md", ".cpp", ".h"}:
            continue
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for page, anchor in DOC_CITATION.findall(line):
                target = ROOT / "docs" / page
                if page not in anchors:
                    anchors[page] = github_anchors(target) if target.exists() else set()
                if anchor not in anchors[page]:
                    broken.append(f"{path.relative_to(ROOT)}:{i}: docs/{page}#{anchor}")
    assert not broken, f"cited sections that do not exist: {broken}"


def test_benchmark_tables_are_rendered_from_results():
    spec = importlib.util.spec_from_file_location("benchmarks_report", ROOT / "benchmarks" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    page = report.PAGE.read_text()
    assert "<!-- report:" in page
    assert report.render_page(page) == page, (
        "docs/benchmarks.md does not match benchmarks/results/: run python benchmarks/report.py"
    )
