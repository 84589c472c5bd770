"""Hydra's command line before Hydra runs: `add_overrides` (vffn-info's quiet defaults) keeps every flag reading
what it read, and `precheck_overrides` lets every sweep Hydra can run through."""

from __future__ import annotations

import pytest

from vffn_pretrain.config.overrides import _hydra_flags, add_overrides, precheck_overrides
from vffn_pretrain.config.paths import CONF_DIR

EXTRA = ["hydra.output_subdir=null", "hydra.run.dir=."]


@pytest.mark.parametrize("argv", [
    ["-cd", "/tmp/a=b", "model=mymodel"],        # a flag's value holding '=' is not an override
    ["-cd", "/tmp/a=b"],
    ["~train.eval_at_start", "--cfg", "job"],     # an override without '='
    ["--info"],                                   # a flag whose value is optional must not take the defaults
    ["--info", "config", "model=tiny"],
    ["model=tiny", "--cfg", "job"],
    ["--cfg", "job", "model=tiny"],
    ["-m", "ffn=dense,versatile"],
    ["--", "model=tiny"],
    [],
])
def test_added_overrides_leave_every_flag_as_it_was(argv):
    before = vars(_hydra_flags(argv))
    after = vars(_hydra_flags(add_overrides(argv, EXTRA)))
    assert after == {**before, "overrides": [*before["overrides"], *EXTRA]}


@pytest.mark.parametrize("argv", [
    ["-m", "train.seed=range(5,1)"],               # a sweep of no values runs no job
    ["-m", "train.seed=range(0,64)"],
    ["-m", "ffn=dense,versatile", "+foo=a,b"],
    ["-m", "data.paths=glob(*)"],                  # the sweeper's to enumerate
    ["--cfg", "job", "--resolve", "model=tiny"],
])
def test_sweeps_and_flags_hydra_runs_pass_the_check(argv):
    precheck_overrides("tool", str(CONF_DIR), argv)  # no SystemExit


def test_an_error_that_names_no_override_is_given_the_one_at_fault(capsys):
    """Python's own refusal of a 5000-digit number names no key: the line names the override that fails."""
    huge = "9" * 5000
    with pytest.raises(SystemExit) as stop:
        precheck_overrides("tool", str(CONF_DIR), ["model=tiny", f"model.hidden_size={huge}", "train.lr=1e-3"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"tool: bad config: model.hidden_size={huge[:42]}...: "), err
    assert "4300 digits" in err
