"""Getting the ``.deb`` files of a corpus: ``apt-get download`` into a cache, or a local directory.

``apt-get download PKG`` needs no root and fetches the version apt's lists name as candidate; the cache
(``DIR/.cache/debs`` by default) keeps the files so a rebuild does not fetch again. ``--deb-dir`` takes
``PKG_*.deb`` from a directory instead (an offline machine with the files copied over, or the tests' fake
packages); nothing is downloaded then. Failures are :class:`FetchError` with the package named.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


class FetchError(RuntimeError):
    """A package could not be fetched (unknown to apt, no network, no apt-get, not in --deb-dir)."""


def _find(directory: Path, package: str) -> Path | None:
    found = sorted(directory.glob(f"{package}_*.deb"))
    return found[-1] if found else None


def fetch_package(package: str, cache: Path, deb_dir: Path | None = None) -> Path:
    """The path of ``package``'s .deb: from ``deb_dir`` if given, else the cache, else ``apt-get download``."""
    if deb_dir is not None:
        found = _find(deb_dir, package)
        if found is None:
            raise FetchError(f"package {package}: no {package}_*.deb in --deb-dir {deb_dir}")
        return found
    cache.mkdir(parents=True, exist_ok=True)
    found = _find(cache, package)
    if found is not None:
        return found
    if shutil.which("apt-get") is None:
        raise FetchError(f"package {package}: apt-get not found (on a non-Debian machine use --deb-dir)")
    proc = subprocess.run(["apt-get", "download", package], cwd=cache, capture_output=True, text=True)
    found = _find(cache, package)
    if proc.returncode != 0 or found is None:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.startswith("E:")] or \
            (proc.stderr or proc.stdout or "no output").splitlines()[-1:]
        raise FetchError(f"package {package}: apt-get download failed: {lines[0] if lines else 'no output'} "
                         "(run 'apt-get update' as root if the package lists are missing)")
    return found
