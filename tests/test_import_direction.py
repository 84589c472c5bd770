"""Imports run one way: `data_tools` (the `vffn-data` tool) uses the library `vffn_pretrain`, never the reverse.

Every module of vffn_pretrain is imported, and the paths that need the bundled corpus, its tokenizer and dataset
reports are run, in a fresh interpreter where importing data_tools raises; the imports inside functions, which
importing a module does not run, are read from the source."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vffn_pretrain"

WITHOUT_DATA_TOOLS = r"""
import importlib, pkgutil, sys, tempfile

class NoDataTools:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "data_tools":
            raise ImportError(f"vffn_pretrain imported {name}")
        return None

sys.meta_path.insert(0, NoDataTools())
sys.modules.pop("data_tools", None)

import vffn_pretrain

names = [m.name for m in pkgutil.walk_packages(vffn_pretrain.__path__, "vffn_pretrain.")]
for name in names:
    importlib.import_module(name)

from vffn_pretrain.data import checks
from vffn_pretrain.data.tokenizer import build_tokenizer, bundled_tokenizer_path
from vffn_pretrain.evaluation.cloze import held_out_documents

tokenizer = build_tokenizer(None)  # the bundled BPE
assert bundled_tokenizer_path().is_file()
assert len(held_out_documents()) > 0  # reads the bundled corpus
with tempfile.TemporaryDirectory() as tmp:
    checks.check_report_tokenizer(tmp + "/absent", tokenizer)  # no report: nothing to check
print(len(names))
"""


def test_vffn_pretrain_works_without_data_tools():
    proc = subprocess.run([sys.executable, "-c", WITHOUT_DATA_TOOLS], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) > 100  # every module was imported


def test_no_module_of_vffn_pretrain_imports_data_tools_even_inside_a_function():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {n}" for n in names
                      if n.partition(".")[0] == "data_tools"]
    assert not found, "vffn_pretrain must not import data_tools:\n" + "\n".join(found)
