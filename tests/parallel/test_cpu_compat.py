"""The CPU compatibility layer: every shim is exercised, none is active on a GPU machine, and megatron-core
has no CUDA literal on our code paths that the targeted shims miss."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.parallel import layout_runs as cases
from vffn_pretrain.parallel import cpu_compat


def _python(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    full_env.update(PYTHONWARNINGS="ignore", **env)  # a world of its own, not this process's
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, timeout=180)


def test_every_shim_exercised_and_no_uncovered_cuda_literal(rank_pools, tmp_path):
    results = rank_pools(4).run(cases.shim_usage, str(tmp_path))
    for r in results:
        assert set(r["active"]) == set(cpu_compat.SHIMS)
        unexercised = [name for name in r["active"] if not r["hits"].get(name)]
        assert not unexercised, f"shims never used by TP2xPP2 + distopt + checkpoint: {unexercised}"
        # A literal only the tracing mode caught would crash the targeted variant: name it for whoever
        # upgrades megatron-core.
        assert not r["uncovered"], (
            "megatron-core CUDA literal(s) not covered by cpu_compat's targeted shims: "
            + ", ".join(r["uncovered"]) + " (add the module to TARGETED_MODULES and the site to KNOWN_LITERAL_SITES)"
        )
        unknown = set(r["targeted"]) - cpu_compat.KNOWN_LITERAL_SITES
        assert not unknown, f"CUDA literal sites missing from KNOWN_LITERAL_SITES: {sorted(unknown)}"
    assert any(r["targeted"] for r in results)


def test_nothing_but_distopt_fix_when_cuda_is_present():
    # Fake a GPU machine: only the TE/apex-keyed distributed-optimizer checkpoint fix may be installed.
    out = _python("""
        import json, torch
        torch.cuda.is_available = lambda: True
        original = torch.cuda.current_device
        from vffn_pretrain.parallel import cpu_compat
        active = sorted(cpu_compat.activate())
        print(json.dumps({"active": active, "current_device_untouched": torch.cuda.current_device is original}))
    """)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"active": ["distopt_ckpt"], "current_device_untouched": True}


def test_distopt_fix_not_installed_when_te_or_apex_present():
    out = _python("""
        import json
        from megatron.core.optimizer import distrib_optimizer
        distrib_optimizer.HAVE_APEX_OR_TE = True
        from vffn_pretrain.parallel import cpu_compat
        print(json.dumps(sorted(cpu_compat.activate())))
    """)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["cuda_literals", "current_device", "rng",
                                                                 "synchronize"]


@pytest.mark.parametrize("shim", ["rng", "current_device"])
def test_removing_a_shim_breaks_a_tiny_training_step(shim):
    script = """
        if __name__ == "__main__":
            from tests.parallel import layout_runs as cases
            from vffn_pretrain.parallel.init import init_distributed
            init_distributed()
            ddp, opt = cases.build({})
            print(cases.run_steps(ddp, opt, range(1)))
    """
    ok = _python(script)
    assert ok.returncode == 0, ok.stderr
    broken = _python(script, VFFN_CPU_COMPAT_DISABLE=shim)
    assert broken.returncode != 0


def test_unknown_shim_name_is_an_error():
    with pytest.raises(ValueError, match="unknown cpu_compat shim"):
        cpu_compat.activate(disable=["not_a_shim"])
