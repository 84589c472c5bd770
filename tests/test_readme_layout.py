"""The README's "Layout of the repository" table matches the tree: every path it names exists, every package of
the library and every top-level folder is named, and every relative link in the README and in docs/ resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _layout_rows() -> list[str]:
    text = README.read_text()
    section = text.split("### Layout of the repository", 1)[1]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        if line.startswith("| ") and not line.startswith("| path") and not line.startswith("|---"):
            rows.append(line.split("|")[1])
    assert rows, "README: no rows under 'Layout of the repository'"
    return rows


def _named_paths() -> list[str]:
    return [p.rstrip("/") for row in _layout_rows() for p in re.findall(r"`([^`]+)`", row)]


def test_every_path_the_layout_table_names_exists():
    missing = [p for p in _named_paths() if not (ROOT / p).exists()]
    assert not missing, f"README layout table names paths that do not exist: {missing}"


def test_every_package_and_top_level_folder_is_in_the_layout_table():
    named = set(_named_paths())
    # Top-level folders of the project: not hidden, not what .gitignore leaves out (runs/, *.egg-info, wandb/, ...).
    ignored = [line.strip().strip("/") for line in (ROOT / ".gitignore").read_text().splitlines() if line.strip()]
    folders = [d for d in ROOT.iterdir() if d.is_dir() and not d.name.startswith(".")
               and not any(Path(d.name).match(pattern) for pattern in ignored)]
    packages = [d for base in ("vffn_pretrain", "data_tools") for d in (ROOT / base).iterdir()
                if (d / "__init__.py").is_file()]
    absent = [str(d.relative_to(ROOT)) for d in folders + packages
              if str(d.relative_to(ROOT)) not in named and d.name != "vffn_pretrain"]
    assert not absent, f"README layout table does not name: {absent}"


@pytest.mark.parametrize("doc", [README, *sorted((ROOT / "docs").rglob("*.md"))], ids=lambda p: p.name)
def test_relative_links_resolve(doc):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        if path and not (doc.parent / path).exists():
            broken.append(target)
    assert not broken, f"{doc.relative_to(ROOT)}: links that do not resolve: {broken}"
