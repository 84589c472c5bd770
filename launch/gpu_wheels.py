"""Download every wheel vffn-pretrain needs beyond PyTorch, for a GPU node with no network.

    python launch/gpu_wheels.py [--dest .gpu-wheels] [--python-version 3.12] [--platform manylinux_2_28_x86_64]

Run it where pip reaches a package index (`make gpu-wheels` does). On the node, which already has Python and
a CUDA PyTorch, from this checkout:

    pip install --no-index --find-links .gpu-wheels -e .

The folder holds the project's dependencies (megatron-core and everything it and the others pull in, for the
chosen Python and platform) and the build backend pyproject.toml names, so the editable install needs no index.
The install is editable because the Hydra configs (`conf/`) live beside the package, not inside it.

PyTorch is left out on purpose, with all it alone pulls in (CUDA libraries, triton): the node's own build is the
one that matches its driver. To resolve the rest without it, pip is handed a stand-in torch wheel with no
dependencies (at the version installed here, so every `torch>=` pin is met); the stand-in is never downloaded
or installed. A dependency published only as a source archive (hydra-core's antlr4 runtime) is built into a
wheel here; that is only right for pure-Python packages, so any other is reported.

transformer-engine (the `gpu` extra, in the range megatron-core accepts) is added when wheels of all of it exist
for the node's Python and platform; then `pip install ... -e ".[gpu]"` on the node installs it. Its PyTorch
extension is usually published as source only (it is compiled against the node's own torch and CUDA), and then
the script says so in its last line: such a node trains on the local backend (megatron's local linears, SDPA,
torch AdamW) unless transformer-engine is built there or the Docker image is used. GH200 nodes are aarch64:
`--platform manylinux_2_28_aarch64` (`make gpu-wheels GPU_ARCH=aarch64`).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LEFT_OUT = "torch"  # the node's own CUDA build; see the module docstring


def pip(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], check=True, text=True, **kw)


def stand_in_torch(directory: Path) -> Path:
    """A dependency-free wheel named torch at this interpreter's torch version (or 2.6.0 without one)."""
    try:
        import torch

        version = torch.__version__.split("+")[0]
    except ImportError:
        version = "2.6.0"
    path = directory / f"torch-{version}-py3-none-any.whl"
    info = f"torch-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: gpu_wheels\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


def platform_tags(tag: str) -> list[str]:
    """`tag` and every older manylinux tag a node of that glibc also runs (pip matches platform tags exactly)."""
    m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", tag)
    if not m:
        return [tag]
    glibc, arch = int(m.group(1)), m.group(2)
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags = []
    for minor in range(glibc, 4, -1):
        tags.append(f"manylinux_2_{minor}_{arch}")
        if minor in legacy:
            tags.append(f"{legacy[minor]}_{arch}")
    return tags


def resolve(requirements: list[str], report: Path, target_flags: list[str], find_links: list[Path],
            **run) -> list[dict]:
    """pip's resolution of `requirements` (dry run, nothing installed): the report's install items. `run`: more
    subprocess.run keywords (capture_output=True keeps a failed resolution quiet)."""
    links = [arg for d in find_links for arg in ("--find-links", str(d))]
    with tempfile.TemporaryDirectory() as target:
        pip("install", "--dry-run", "--quiet", "--ignore-installed", "--target", target, "--report", str(report),
            *target_flags, *links, *requirements, **run)
    return json.loads(report.read_text())["install"]


def gpu_extra(project: Path) -> list[str]:
    """The project's `gpu` extra (transformer-engine, pinned to the range megatron-core accepts)."""
    return tomllib.loads((project / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]


def add_transformer_engine(requirements: list[str], dest: Path, target_flags: list[str], torch_file: Path,
                           tmp: Path, target: str) -> str:
    """Download transformer-engine's wheels for the node into `dest` if wheels of all of it exist there; returns
    the line that says what the node will train with."""
    spec = " ".join(requirements)
    try:
        items = resolve([*requirements, f"torch @ {torch_file.as_uri()}"], tmp / "te.json", target_flags, [dest],
                        capture_output=True)
    except subprocess.CalledProcessError:
        return (f"transformer-engine: no wheels of {spec} for {target} (its PyTorch extension is published as "
                "source, to be compiled against the node's own torch and CUDA). A node set up from this folder "
                "trains on the local backend (megatron's local linears, SDPA, torch AdamW); for "
                f"transformer-engine, build it there (pip install --no-build-isolation '{spec}', with the CUDA "
                "toolkit) or use the Docker image")
    have = {p.name for p in dest.glob("*.whl")}
    needed = [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in items
              if i["metadata"]["name"] != LEFT_OUT and i["download_info"]["url"].rsplit("/", 1)[-1] not in have]
    if needed:
        pip("download", "--quiet", "--no-deps", "--dest", str(dest), *target_flags, *needed)
    return f"transformer-engine: wheels of {spec} added; on the node install with -e \".[gpu]\""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=ROOT / ".gpu-wheels")
    parser.add_argument("--python-version", default="3.12", help="the node's Python, major.minor")
    parser.add_argument("--platform", action="append",
                        help="pip platform tag of the node, repeatable (default manylinux_2_28_x86_64, which also takes "
                             "the older manylinux tags it implies)")
    parser.add_argument("--project", type=Path, default=ROOT, help="the project directory (pyproject.toml)")
    args = parser.parse_args(argv)
    platforms = args.platform or ["manylinux_2_28_x86_64"]
    dest = args.dest.resolve()
    dest.mkdir(parents=True, exist_ok=True)
    build_requires = tomllib.loads((args.project / "pyproject.toml").read_text())["build-system"]["requires"]

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        torch_file = stand_in_torch(tmp)
        wanted = [str(args.project), *build_requires, f"torch @ {torch_file.as_uri()}"]
        # 1. Source-only dependencies: resolve for this interpreter (sources allowed) and build those as wheels.
        sources = [i for i in resolve(wanted, tmp / "local.json", [], [dest])
                   if not i["download_info"]["url"].endswith(".whl") and i["metadata"]["name"] != "vffn-pretrain"]
        for item in sources:
            name, version = item["metadata"]["name"], item["metadata"]["version"]
            before = set(dest.glob("*.whl"))
            pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(dest), f"{name}=={version}")
            for built in set(dest.glob("*.whl")) - before:
                if not built.name.endswith("-py3-none-any.whl") and not built.name.endswith("-py2.py3-none-any.whl"):
                    print(f"warning: {built.name} was built for this machine, not the node; build it there",
                          file=sys.stderr)
        # 2. Everything for the node's Python and platform, wheels only.
        abi = "cp" + args.python_version.replace(".", "")
        target_flags = ["--only-binary=:all:", "--python-version", args.python_version, "--implementation", "cp",
                        "--abi", abi, "--abi", "abi3", "--abi", "none",
                        *[arg for p in platforms for t in platform_tags(p) for arg in ("--platform", t)], "--platform", "any"]
        items = resolve(wanted, tmp / "node.json", target_flags, [dest])
        have = {p.name for p in dest.glob("*.whl")}
        needed = [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in items
                  if i["metadata"]["name"] not in (LEFT_OUT, "vffn-pretrain")
                  and i["download_info"]["url"].rsplit("/", 1)[-1] not in have]
        if needed:
            pip("download", "--quiet", "--no-deps", "--dest", str(dest), *target_flags, *needed)
        target = f"CPython {args.python_version} on {', '.join(platforms)}"
        te_line = add_transformer_engine(gpu_extra(args.project), dest, target_flags, torch_file, tmp, target)
    names = sorted(i["metadata"]["name"] for i in items if i["metadata"]["name"] not in (LEFT_OUT, "vffn-pretrain"))
    print(f"{dest}: wheels for {len(names)} packages (Python {args.python_version}, {', '.join(platforms)}; "
          f"torch left out): {', '.join(names)}")
    print(f"on the node, from the checkout: pip install --no-index --find-links {args.dest} -e .")
    print(te_line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
