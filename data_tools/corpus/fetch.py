"""Getting the ``.deb`` files of a corpus: ``apt-get download`` into a cache, or a local directory.

``apt-get download PKG`` needs no root and fetches the version apt's lists name as candidate; the cache
(``.cache/vffn-data/debs`` by default) keeps the files so a rebuild does not fetch again. ``--deb-dir`` takes
``PKG_*.deb`` from a directory instead (an offline machine with the files copied over, or the tests' fake
packages); nothing is downloaded then. Failures are :class:`FetchError` with the package named.

With a :class:`Pin` (``vffn-data corpus build --manifest``: the versions an earlier build recorded) exactly that
file is used: ``PKG_VERSION_ARCH.deb`` from --deb-dir or the cache, else ``apt-get download PKG=VERSION``; its
SHA-256 must be the pinned one (:class:`PinMismatch` otherwise).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


class FetchError(RuntimeError):
    """A package could not be fetched (unknown to apt, no network, no apt-get, not in --deb-dir)."""


class PinMismatch(ValueError):
    """A pinned package's file is not the one the manifest recorded (another SHA-256)."""


@dataclass(frozen=True)
class Pin:
    """The exact package file an earlier build used: its version, file name and SHA-256 (from its manifest)."""

    version: str
    deb: str
    sha256: str
    manifest: str  # where the pin comes from, for messages


def _find(directory: Path, package: str) -> Path | None:
    found = sorted(directory.glob(f"{package}_*.deb"))
    return found[-1] if found else None


def fetch_package(package: str, cache: Path, deb_dir: Path | None = None, pin: Pin | None = None) -> Path:
    """The path of ``package``'s .deb: from ``deb_dir`` if given, else the cache, else ``apt-get download``;
    with ``pin``, exactly the pinned file, checked against its SHA-256."""
    if pin is not None:
        return _check_pin(package, _fetch_pinned(package, cache, deb_dir, pin), pin)
    if deb_dir is not None:
        found = _find(deb_dir, package)
        if found is None:
            raise FetchError(f"package {package}: no {package}_*.deb in --deb-dir {deb_dir}")
        return found
    cache.mkdir(parents=True, exist_ok=True)
    found = _find(cache, package)
    if found is not None:
        return found
    _apt_download(package, package, cache)
    found = _find(cache, package)
    if found is None:
        raise FetchError(f"package {package}: apt-get download wrote no {package}_*.deb")
    return found


def _fetch_pinned(package: str, cache: Path, deb_dir: Path | None, pin: Pin) -> Path:
    if deb_dir is not None:
        path = deb_dir / pin.deb
        if not path.is_file():
            raise FetchError(f"package {package}: no {pin.deb} (version {pin.version}, pinned by {pin.manifest}) "
                             f"in --deb-dir {deb_dir}")
        return path
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / pin.deb
    if not path.is_file():
        _apt_download(package, f"{package}={pin.version}", cache,
                      hint=f"version {pin.version} is pinned by {pin.manifest}; if the archive no longer has it, "
                           f"fetch {pin.deb} from snapshot.debian.org and pass its directory as --deb-dir")
    if not path.is_file():
        raise FetchError(f"package {package}: apt-get download wrote no {pin.deb}")
    return path


def _check_pin(package: str, path: Path, pin: Pin) -> Path:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != pin.sha256:
        raise PinMismatch(f"package {package}: {path} has SHA-256 {h.hexdigest()[:16]}..., {pin.manifest} pins "
                          f"{pin.sha256[:16]}... (a damaged or different file; remove it to fetch it again)")
    return path


def _apt_download(package: str, spec: str, cache: Path, hint: str = "run 'apt-get update' as root if the "
                                                                     "package lists are missing") -> None:
    if shutil.which("apt-get") is None:
        raise FetchError(f"package {package}: apt-get not found (on a non-Debian machine use --deb-dir)")
    proc = subprocess.run(["apt-get", "download", spec], cwd=cache, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.startswith("E:")] or \
            (proc.stderr or proc.stdout or "no output").splitlines()[-1:]
        raise FetchError(f"package {package}: apt-get download {spec} failed: "
                         f"{lines[0] if lines else 'no output'} ({hint})")
