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


# ------------------------------------------------------------------------------------------------ the house
def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the package: dotted name -> (file, is a package)."""
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of the package it imports, anywhere in the file (inside functions too: a lazy
    import still runs the other module's code), plus the packages whose __init__ such an import runs."""
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, (path, is_package) in mods.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                wanted = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = name if is_package else name.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{base}" if node.module else package
                wanted = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in filter(None, map(resolve, wanted)):
                while target and target != name and not name.startswith(target + "."):
                    targets.add(target)  # the module, then each package above it whose __init__ runs first
                    target = target.rpartition(".")[0]
        graph[name] = targets
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def test_no_import_circles_inside_the_package():
    assert not import_circles(import_graph()), "import circles:\n" + "\n".join(map(str, import_circles(import_graph())))


def test_the_circle_finder_finds_a_circle():
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = import_graph()
    graph["vffn_pretrain.config.errors"] = {"vffn_pretrain.training.trainer"}  # errors -> trainer -> ... -> errors
    assert any("vffn_pretrain.config.errors" in c for c in import_circles(graph))


def test_no_module_replaces_itself_in_sys_modules():
    found = [f"{p.relative_to(PACKAGE.parent)}" for root in (PACKAGE, PACKAGE.parent / "data_tools")
             for p in sorted(root.rglob("*.py")) if "sys.modules[__name__]" in p.read_text()]
    assert not found, found


def test_the_package_top_holds_only_packages_and_entry_points():
    """A newcomer reads the top as: packages (concerns) and the commands' entry modules."""
    import tomllib

    scripts = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]["scripts"].values()
    entry_modules = {s.partition(":")[0] for s in scripts}
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"
             and f"vffn_pretrain.{p.stem}" not in entry_modules and "__main__" not in p.read_text()]
    assert not loose, f"modules at the package's top that are no entry point: {loose}"


FFN_KIND_NAMES = {"dense", "kloop", "moe", "versatile", "width_only", "depth_only"}


def kind_comparisons(root: Path) -> list[str]:
    """Places that compare with an FFN kind's name (`kind == "moe"`, `kind in ("versatile", ...)`) or look one
    up in a literal table: decisions that belong to model/kinds.py's traits."""

    def names_a_kind(node) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in FFN_KIND_NAMES
        return isinstance(node, (ast.Tuple, ast.List, ast.Set)) and any(map(names_a_kind, node.elts))

    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            compared = isinstance(node, ast.Compare) and any(map(names_a_kind, [node.left, *node.comparators]))
            looked_up = (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Dict)
                         and any(map(names_a_kind, filter(None, node.value.keys))))
            if compared or looked_up:
                found.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_ffn_kinds_are_asked_not_compared(tmp_path):
    kinds_table = PACKAGE / "model" / "kinds.py"
    found = [f for f in kind_comparisons(PACKAGE) if not f.startswith(str(kinds_table))]
    assert not found, "ask model/kinds.py's traits instead:\n" + "\n".join(found)
    (tmp_path / "m.py").write_text('if cfg.kind in ("versatile", "depth_only"):\n    pass\nx = {"moe": 1}[k]\n')
    assert len(kind_comparisons(tmp_path)) == 2  # the finder sees both forms


HELP_WITHOUT_HEAVY_IMPORTS = r"""
import contextlib, importlib, inspect, io, sys, tomllib

commands = tomllib.loads(open("pyproject.toml").read())["project"]["scripts"]
subcommands = {"vffn-data": [["tokenize"], ["train-tokenizer"], ["merge"], ["inspect"], ["corpus", "build"]],
               "vffn-plan": [["calibrate"]], "vffn-study": [["run"], ["report"]]}
for name, target in commands.items():
    module, _, function = target.partition(":")
    for words in [[], *subcommands.get(name, [])]:
        sys.argv = [name, *words, "--help"]
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                main = getattr(importlib.import_module(module), function)
                code = main(sys.argv[1:]) if inspect.signature(main).parameters else main()
            except SystemExit as e:
                code = e.code
        assert code in (0, None), (sys.argv, code, out.getvalue()[-500:])
        assert "usage" in out.getvalue().lower(), (sys.argv, out.getvalue()[-500:])
        heavy = sorted({m.partition(".")[0] for m in sys.modules} & {"torch", "megatron"})
        assert not heavy, f"{' '.join(sys.argv)} imported {heavy}"
print("ok")
"""


def test_help_of_every_command_imports_neither_torch_nor_megatron():
    """`--help` answers at once: the heavy libraries are imported only where the work needs them."""
    proc = subprocess.run([sys.executable, "-c", HELP_WITHOUT_HEAVY_IMPORTS], capture_output=True, text=True,
                          timeout=120, cwd=PACKAGE.parent)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
