"""`make gpu-wheels`: a node with only Python and torch installs the project from the folder with no index and
trains.

The folder is built for this machine's Python and glibc (the node's are variables of the same script), so the
test can install from it. The "node" is a fresh virtualenv whose only package is torch, with torch's own
dependencies: they are linked in from the test environment through a .pth file rather than reinstalled, which
would cost a 200 MB unpack per run. Downloading the wheels needs the package index (the pip cache helps).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def link_torch_only(site: Path) -> None:
    """Make torch and its dependency closure (as installed here) importable by the Python that reads `site`."""
    todo, seen = ["torch"], set()
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        dist = metadata.distribution(name)
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] != ".."}:
            link = site / top
            if not link.exists() and not top.endswith(".pth"):
                link.symlink_to(dist.locate_file(top))


@pytest.mark.slow
def test_clean_venv_with_only_torch_installs_offline_and_trains(tmp_path):
    wheels = tmp_path / "wheels"
    glibc = platform.libc_ver()[1].split(".")
    tag = f"manylinux_{glibc[0]}_{glibc[1]}_{platform.machine()}"
    made = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "gpu_wheels.py"), "--dest", str(wheels),
         "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}", "--platform", tag],
        capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr[-3000:]
    assert not list(wheels.glob("torch-*")), "torch must be left to the node"

    venv = tmp_path / "node"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.check_output([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    torch_site = tmp_path / "torch-only"
    torch_site.mkdir()
    link_torch_only(torch_site)
    (site / "torch_only.pth").write_text(f"{torch_site}\n")
    before = subprocess.check_output([py, "-m", "pip", "list", "--format=freeze"], text=True)
    assert "megatron" not in before and "hydra" not in before

    # No index at all: pip may use nothing but the folder (the machine's find-links are switched off too).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1")
    install = subprocess.run([py, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels),
                              "-e", str(ROOT)], capture_output=True, text=True, env=env, timeout=600)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-3000:]

    run = subprocess.run(
        [venv / "bin" / "vffn-pretrain", "train.max_steps=2", "logging.wandb.enabled=false",
         "logging.progress_bar=false", f"run_dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}"],
        capture_output=True, text=True, cwd=tmp_path, env=dict(env, OMP_NUM_THREADS="1"), timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert (tmp_path / "run" / "summary.json").exists()


def _wheel(folder: Path, name: str, version: str, requires: list[str] = (), extras: list[str] = ()) -> Path:
    """A minimal pure-Python wheel (metadata only)."""
    import zipfile

    dist = name.replace("-", "_")
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
            *(f"Provides-Extra: {e}" for e in extras), *(f"Requires-Dist: {r}" for r in requires)]
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{info}/METADATA", "\n".join(meta) + "\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


@pytest.mark.parametrize("extension_has_wheel", [True, False], ids=["wheel", "source-only"])
def test_transformer_engine_is_added_or_the_local_backend_is_said_plainly(tmp_path, monkeypatch,
                                                                          extension_has_wheel):
    """Offline, against a folder standing in for the index: transformer-engine's meta package (a wheel) needs its
    PyTorch extension, published either as a wheel or, as on PyPI, as source only."""
    import importlib.util
    import tarfile

    spec = importlib.util.spec_from_file_location("gpu_wheels", ROOT / "launch" / "gpu_wheels.py")
    gpu_wheels = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_wheels)
    index, dest, tmp = tmp_path / "index", tmp_path / "dest", tmp_path / "tmp"
    for folder in (index, dest, tmp):
        folder.mkdir()
    _wheel(index, "transformer-engine", "2.10.0", ['transformer-engine-torch==2.10.0; extra == "pytorch"'],
           extras=["pytorch"])
    if extension_has_wheel:
        _wheel(index, "transformer-engine-torch", "2.10.0")
    else:
        with tarfile.open(index / "transformer_engine_torch-2.10.0.tar.gz", "w:gz"):
            pass
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    torch_file = gpu_wheels.stand_in_torch(tmp)
    flags = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312",
             "--abi", "none", "--platform", "manylinux_2_28_aarch64", "--platform", "any"]
    line = gpu_wheels.add_transformer_engine(gpu_wheels.gpu_extra(ROOT), dest, flags, torch_file, tmp,
                                             "CPython 3.12 on manylinux_2_28_aarch64")
    got = sorted(p.name for p in dest.glob("*.whl"))
    if extension_has_wheel:
        assert got == ["transformer_engine-2.10.0-py3-none-any.whl", "transformer_engine_torch-2.10.0-py3-none-any.whl"]
        assert "added" in line
    else:
        assert got == []
        assert "no wheels" in line and "local backend" in line and "aarch64" in line
