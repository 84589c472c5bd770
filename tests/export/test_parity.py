"""Exported models compute the megatron model's eval logits (fp32, 1e-5 relative) and its greedy tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.export import export_runs as cases
from tests.export.conftest import KINDS
from tests.training import trainer_runs as training_cases


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


def test_dense_export_is_plain_llama_and_versatile_export_needs_only_its_own_files(rank_pools, tp2pp2_checkpoints,
                                                                                   tmp_path):
    dense = rank_pools(1).run(cases.export_and_compare, tp2pp2_checkpoints["dense"], str(tmp_path / "dense"))[0]
    config = json.loads((tmp_path / "dense" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "auto_map" not in config
    assert not list((tmp_path / "dense").glob("*.py"))
    assert dense["class"] == "LlamaForCausalLM"

    out = rank_pools(1).run(cases.export_and_compare, tp2pp2_checkpoints["versatile"], str(tmp_path / "vffn"))[0]
    np.save(tmp_path / "batch.npy", out["batch"])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", cases.STANDALONE, str(tmp_path / "vffn"), str(tmp_path / "batch.npy"),
                           str(tmp_path / "logits.npy")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "transformers_modules" in proc.stdout  # the class came from the exported directory's file
    np.testing.assert_array_equal(np.load(tmp_path / "logits.npy"), out["hf"])
