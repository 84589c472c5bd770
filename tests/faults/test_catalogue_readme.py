"""The fault catalogue (tests/faults/README.md) names tests that exist, and names every module of this folder.

Each table row's last cell names the tests that check it: `file.py::test_name` (the file relative to
tests/faults/, else to tests/), optionally with a `[param-id]`; a bare `test_name` refers to the file named
most recently in the same section; a bare `[param-id]` is a further case of the test named before it. Only
files are read here: nothing is imported or run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

FAULTS = Path(__file__).resolve().parent
TESTS = FAULTS.parent
README = FAULTS / "README.md"

_CELL_SPLIT = re.compile(r"(?<!\\)\|")  # a `\|` inside a cell is text, not a column border
_CODE = re.compile(r"`([^`]+)`")
_REFERENCE = re.compile(r"^(?:(?P<file>[\w./-]+\.py)::)?(?P<name>test_\w+)(?:\[[^\]]*\])?$")
_PARAM_ONLY = re.compile(r"^\[[^\]]*\]$")


@dataclass(frozen=True)
class Reference:
    line: int  # in README.md
    file: str  # as written (or inherited from the section's previous reference)
    name: str


@dataclass
class Catalogue:
    references: list[Reference]
    problems: list[str]  # rows whose test cell cannot be read


def _cells(row: str) -> list[str]:
    return [c.strip() for c in _CELL_SPLIT.split(row.strip().strip("|"))]


def _is_header_or_rule(cells: list[str]) -> bool:
    return cells[-1] == "test" or all(set(c) <= {"-", ":"} for c in cells)


def parse(text: str) -> Catalogue:
    refs: list[Reference] = []
    problems: list[str] = []
    section, last_file, columns = "", None, 4
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("#"):
            section, last_file = line, None
            continue
        if not line.startswith("|"):
            continue
        cells = _cells(line)
        if _is_header_or_rule(cells):
            columns = len(cells)
            continue
        if len(cells) != columns:  # an unescaped `|` in a cell moves the test column
            problems.append(f"line {number}: {len(cells)} cells, the table has {columns} "
                            "(escape `|` as `\\|`)")
            continue
        spans = _CODE.findall(cells[-1])
        named = 0
        for span in spans:
            span = span.strip()
            if _PARAM_ONLY.match(span):
                if not named:
                    problems.append(f"line {number}: `{span}` follows no test name")
                continue
            match = _REFERENCE.match(span)
            if match is None:
                problems.append(f"line {number}: `{span}` is not a test reference")
                continue
            named += 1
            if match["file"]:
                last_file = match["file"]
            if last_file is None:
                problems.append(f"line {number}: `{span}` names no file, and none was named before it in "
                                f"section {section!r}")
                continue
            refs.append(Reference(number, last_file, match["name"]))
        if not named:
            problems.append(f"line {number}: the row names no test: {cells[-1]!r}")
    return Catalogue(refs, problems)


def resolve(file: str) -> Path | None:
    for base in (FAULTS, TESTS):
        path = base / file
        if path.is_file():
            return path
    return None


def _defines(path: Path, name: str) -> bool:
    definition = re.compile(rf"^[ \t]*(?:async[ \t]+)?def[ \t]+{re.escape(name)}[ \t]*\(", re.M)
    return definition.search(path.read_text()) is not None


def _catalogue() -> Catalogue:
    return parse(README.read_text())


def test_every_row_names_its_tests_readably():
    catalogue = _catalogue()
    assert catalogue.references, f"{README}: no test reference found in any table"
    problems = "\n".join(catalogue.problems)
    assert not problems, f"rows of tests/faults/README.md whose test cell cannot be read:\n{problems}"


def test_every_named_test_exists():
    missing = []
    for ref in _catalogue().references:
        path = resolve(ref.file)
        if path is None:
            missing.append(f"line {ref.line}: {ref.file}::{ref.name} (no file {ref.file} under tests/faults/ "
                           "or tests/)")
        elif not _defines(path, ref.name):
            missing.append(f"line {ref.line}: {ref.file}::{ref.name} (no `def {ref.name}` in "
                           f"{path.relative_to(TESTS.parent)})")
    assert not missing, "tests named in tests/faults/README.md that do not exist:\n" + "\n".join(missing)


def test_every_module_of_this_folder_is_catalogued():
    named = {resolve(ref.file) for ref in _catalogue().references}
    modules = sorted(p for p in FAULTS.glob("test_*.py") if p.name != Path(__file__).name)
    unnamed = [p.name for p in modules if p not in named]
    assert not unnamed, f"tests/faults modules no row of tests/faults/README.md names: {unnamed}"


def test_the_parser_reads_the_forms_the_catalogue_uses():
    text = "\n".join([
        "## A",
        "| class | case | outcome | test |",
        "|---|---|---|---|",
        "| 1 | `a \\| b` | exit 0 | `test_x.py::test_one[p-1]`, `[p-2]`, `test_two` |",
        "| 2 | c | exit 1 | `study/test_y.py::test_three` |",
        "## B",
        "| 3 | d | exit 2 | `test_four` |",
        "| 4 | e | exit 2 | no test |",
        "| 5 | f | g | h | `test_x.py::test_one` |",
    ])
    catalogue = parse(text)
    assert [(r.file, r.name) for r in catalogue.references] == [
        ("test_x.py", "test_one"), ("test_x.py", "test_two"), ("study/test_y.py", "test_three")]
    assert len(catalogue.problems) == 3, catalogue.problems
    assert "names no file" in catalogue.problems[0] and "names no test" in catalogue.problems[1]
    assert "5 cells, the table has 4" in catalogue.problems[2]
