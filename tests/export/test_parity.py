"""Exported models compute the megatron model's eval logits (fp32, 1e-5 relative) and its greedy tokens."""

from __future__ import annotations

import numpy as np
import pytest

from tests.export import cases
from tests.export.conftest import KINDS
from tests.training import cases as training_cases


@pytest.mark.parametrize("kind", KINDS)
def test_exported_logits_and_greedy_tokens_match_megatron(rank_pools, tp2pp2_checkpoints, kind, tmp_path):
    ckpt = tp2pp2_checkpoints[kind]
    out = rank_pools(1).run(cases.export_and_compare, ckpt, str(tmp_path / "hf"))[0]
    assert out["class"] == ("LlamaForCausalLM" if kind == "dense" else "VffnForCausalLM")
    ref, got = out["megatron"], out["hf"]
    assert ref.shape == got.shape and np.abs(ref).max() > 0
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())

    greedy = rank_pools(1).run(training_cases.generate, ["--checkpoint", ckpt, "--prompt", cases.TEXT[:40],
                                                         "--max-new-tokens", "20", "--temperature", "0"])[0]
    assert greedy == cases.hf_greedy_text(str(tmp_path / "hf"), cases.TEXT[:40], 20)
