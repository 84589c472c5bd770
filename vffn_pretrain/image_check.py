"""`python -m vffn_pretrain.image_check`: the container build's smoke test.

Imports what a training run imports (the Hydra entry point, the trainer, the model builder, generation) and
checks that megatron-core's transformer-engine extension found a working TE (`HAVE_TE`): megatron quietly
substitutes stand-ins when TE is broken, so a bare `import transformer_engine` would pass in a broken image. The
installed TE's version must be one megatron-core itself accepts (the range of its own requirement on
transformer-engine). Prints one line per problem and exits 1, or prints `image check: ok` and exits 0. `--no-te`
skips the TE checks (CPU images); `--te-version-only` checks the version alone (the Dockerfile installs a pinned TE
when it fails).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib import metadata

MODULES = ("vffn_pretrain.train", "vffn_pretrain.training.trainer", "vffn_pretrain.model.gpt",
           "vffn_pretrain.generate", "megatron.core")


def problems(require_te: bool = True) -> list[str]:
    """What is wrong with this environment for a training run (empty when nothing is)."""
    found = []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - reported, one line each
            found.append(f"cannot import {name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    if require_te:
        found += te_version_problems()
        try:
            from megatron.core.extensions import transformer_engine as megatron_te

            if not megatron_te.HAVE_TE:
                found.append("megatron.core.extensions.transformer_engine.HAVE_TE is False: transformer-engine is "
                             "missing or does not import (megatron would fall back to stand-ins)")
        except Exception as e:  # noqa: BLE001
            found.append(f"cannot import megatron.core.extensions.transformer_engine: {type(e).__name__}: {e}")
    return found


def megatron_te_range() -> str | None:
    """The version range megatron-core's own requirement on transformer-engine allows (None if it names none)."""
    from packaging.requirements import Requirement

    for text in metadata.requires("megatron-core") or []:
        req = Requirement(text)
        if req.name.replace("_", "-") == "transformer-engine" and str(req.specifier):
            return str(req.specifier)
    return None


def te_version_problems() -> list[str]:
    """One line if the installed transformer-engine is missing or outside megatron-core's accepted range."""
    from packaging.specifiers import SpecifierSet

    try:
        version = metadata.version("transformer-engine")
    except metadata.PackageNotFoundError:
        try:
            version = metadata.version("transformer-engine-torch")
        except metadata.PackageNotFoundError:
            return ["transformer-engine is not installed"]
    accepted = megatron_te_range()
    if accepted and not SpecifierSet(accepted).contains(version, prereleases=True):
        return [f"transformer-engine {version} is outside the range megatron-core accepts ({accepted})"]
    return []


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m vffn_pretrain.image_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--no-te", action="store_true", help="do not require transformer-engine (CPU images)")
    p.add_argument("--te-version-only", action="store_true",
                   help="only check that transformer-engine's version is one megatron-core accepts")
    args = p.parse_args(argv)
    found = te_version_problems() if args.te_version_only else problems(require_te=not args.no_te)
    for line in found:
        print(f"image check: {line}", file=sys.stderr)
    if found:
        sys.exit(1)
    print("image check: ok")


if __name__ == "__main__":
    main()
