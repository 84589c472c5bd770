"""The container build's smoke test fails on a broken image: a missing TE (megatron's HAVE_TE) or a module of the
training run that does not import."""

from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path

import pytest
from megatron.core.extensions import transformer_engine as megatron_te

from vffn_pretrain import image_check


def test_dockerfile_runs_the_check_with_te_required():
    dockerfile = (Path(__file__).resolve().parents[1] / "Dockerfile").read_text()
    run = re.search(r"^RUN pip install.*?(?=^\S)", dockerfile, re.S | re.M).group(0)
    assert "python -m vffn_pretrain.image_check" in run
    assert "--no-te" not in run


def test_missing_te_fails_with_one_line(monkeypatch, capsys):
    monkeypatch.setattr(megatron_te, "HAVE_TE", False)
    monkeypatch.setattr(image_check, "te_version_problems", lambda: [])
    with pytest.raises(SystemExit) as exit_info:
        image_check.main([])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HAVE_TE is False" in err[0]


def test_working_image_passes(monkeypatch, capsys):
    monkeypatch.setattr(megatron_te, "HAVE_TE", True)
    monkeypatch.setattr(image_check, "te_version_problems", lambda: [])
    image_check.main([])
    assert capsys.readouterr().out.strip() == "image check: ok"


@pytest.mark.parametrize("module", ["vffn_pretrain.training.trainer", "vffn_pretrain.model.gpt"])
def test_a_module_that_does_not_import_is_named(monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
    found = image_check.problems(require_te=False)
    assert len(found) == 1 and found[0].startswith(f"cannot import {module}:")


@pytest.mark.parametrize("version, ok", [("2.8.0", False), ("2.12.1", False), ("2.10.0+a1b2c3", True),
                                         ("2.9.0", True)])
def test_te_version_must_be_one_megatron_core_accepts(monkeypatch, capsys, version, ok):
    from importlib import metadata

    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: version if "transformer" in name else real(name))
    assert image_check.megatron_te_range() is not None  # read from megatron-core's own requirement
    found = image_check.te_version_problems()
    assert (found == []) is ok, found
    with pytest.raises(SystemExit) if not ok else contextlib.nullcontext():
        image_check.main(["--te-version-only"])
    if not ok:
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and version in err[0] and image_check.megatron_te_range() in err[0]


def test_dockerfile_keeps_ngc_entrypoint_ships_benchmarks_and_pins_an_accepted_te():
    from packaging.specifiers import SpecifierSet

    dockerfile = (Path(__file__).resolve().parents[1] / "Dockerfile").read_text()
    assert "ENTRYPOINT" not in dockerfile  # NGC's own (/opt/nvidia/nvidia_entrypoint.sh) stays in force
    assert re.search(r"^COPY benchmarks \./benchmarks$", dockerfile, re.M)
    pinned = re.search(r'^ARG TE_SPEC="transformer-engine\[pytorch\](.*)"$', dockerfile, re.M).group(1)
    accepted = SpecifierSet(image_check.megatron_te_range())
    for version in ("2.9.0", "2.10.0", "2.11.0", "2.8.0", "2.12.0"):  # the pin allows exactly what megatron does
        assert SpecifierSet(pinned).contains(version) == accepted.contains(version, prereleases=True), version
    assert "--te-version-only" in dockerfile and "expandable_segments:True" in dockerfile
