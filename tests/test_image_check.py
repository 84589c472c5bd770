"""The container build's smoke test fails on a broken image: a missing TE (megatron's HAVE_TE) or a module of the
training run that does not import."""

from __future__ import annotations

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
    with pytest.raises(SystemExit) as exit_info:
        image_check.main([])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HAVE_TE is False" in err[0]


def test_working_image_passes(monkeypatch, capsys):
    monkeypatch.setattr(megatron_te, "HAVE_TE", True)
    image_check.main([])
    assert capsys.readouterr().out.strip() == "image check: ok"


@pytest.mark.parametrize("module", ["vffn_pretrain.training.trainer", "vffn_pretrain.model.gpt"])
def test_a_module_that_does_not_import_is_named(monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
    found = image_check.problems(require_te=False)
    assert len(found) == 1 and found[0].startswith(f"cannot import {module}:")
