"""tests/SCENARIOS.md stays true: every test it cites exists, and every docs/design.md
section it cites is a heading there (a renamed test or a renumbered section fails here, not
silently in the doc)."""

from __future__ import annotations

import ast
import fnmatch
import re

from tests.support import REPO

SCENARIOS = REPO / "tests" / "SCENARIOS.md"
DESIGN = REPO / "docs" / "design.md"


def _tests_in(path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test")}


def _cited() -> list[tuple[str, str | None]]:
    """(file under tests/, test name or None) for each citation in a row's first cell."""
    out: list[tuple[str, str | None]] = []
    section_file = None  # "All in `faults/x.py`" under a heading: rows cite `::test_y`
    for line in SCENARIOS.read_text().splitlines():
        if line.startswith("#"):
            section_file = None
        m = re.match(r"^All in `([\w/]+\.py)`", line)
        if m:
            section_file = m.group(1)
        if not line.startswith("| `"):
            continue
        cell = line.split(" | ", 1)[0]
        current = section_file
        for code in re.findall(r"`([^`]+)`", cell):
            m = re.match(r"^([\w/]+\.py)?(?:::(\w[\w*]*))?", code)
            if not m or not (m.group(1) or m.group(2)):
                continue
            current = m.group(1) or current
            assert current, f"{code!r} names no file: {line[:80]}"
            out.append((current, m.group(2)))
    return out


def test_every_cited_test_exists():
    cited = _cited()
    assert len(cited) > 100  # the parser found the tables
    missing = []
    for rel, name in cited:
        path = REPO / "tests" / rel
        if not path.is_file():
            missing.append(rel)
            continue
        if name and not fnmatch.filter(_tests_in(path), name):
            missing.append(f"{rel}::{name}")
    assert not missing, missing


def test_every_cited_design_section_exists():
    headings = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", DESIGN.read_text(), re.MULTILINE))
    text = SCENARIOS.read_text()
    assert "DESIGN §" not in text  # the brief outside the repo is not the spec
    cited = set(re.findall(r"§(\d+(?:\.\d+)?)", text))
    assert cited and cited <= headings, sorted(cited - headings)
