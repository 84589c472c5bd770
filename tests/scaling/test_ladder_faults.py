"""The ladder tool (sweeps) on a bad ladder file (issue 23): one line naming the file and key, exit 2.

| case | what the user sees |
|---|---|
| the file missing, not YAML, a directory | exit 2, "no such ladder file" / "not a readable ladder file" |
| an unknown ladder, no `ladders:` | exit 2, names the ladders defined |
| a size without a key, a wrong value, hidden_size not a multiple of the heads | exit 2, `ladders.t.sizes[i].KEY` |
| a rule that is negative, NaN, zero sequences, lr.min above lr.max | exit 2, `rules.KEY` |
"""

from __future__ import annotations

import pytest

from vffn_pretrain.scaling.ladder import main

GOOD = """
rules:
  tokens_per_param: 20
  lr: {ref: 5.0e-4, ref_params: 251689984, exponent: -0.33, min: 1.0e-4, max: 2.0e-3}
  batch: {coef: 0.292, exponent: 0.3271, min_sequences: 8, max_sequences: 1024, min_steps: 100}
variants: [dense]
ladders:
  t:
    base_model: tiny
    seq_length: 128
    vocab_size: 8192
    sizes:
      - {name: a, num_layers: 2, hidden_size: 32, num_attention_heads: 2}
      - {name: b, num_layers: 2, hidden_size: 48, num_attention_heads: 2}
"""

CASES = [
    ("not-yaml", "a: [b\n", "not a readable ladder file"),
    ("no-ladders", "variants: [dense]\n", "key 'ladders' is missing"),
    ("unknown-ladder", GOOD.replace("  t:", "  u:"), "unknown ladder 't' (key 'ladders' defines u)"),
    ("size-missing-key", GOOD.replace("num_layers: 2, hidden_size: 48", "hidden_size: 48"),
     "key 'ladders.t.sizes[1].num_layers' is missing"),
    ("size-string", GOOD.replace("hidden_size: 32", "hidden_size: wide"),
     "key 'ladders.t.sizes[0].hidden_size' must be an integer > 0 (got 'wide')"),
    ("size-heads", GOOD.replace("hidden_size: 48", "hidden_size: 47"),
     "key 'ladders.t.sizes[1].hidden_size' (47) must be a multiple of num_attention_heads (2)"),
    ("seq-zero", GOOD.replace("seq_length: 128", "seq_length: 0"), "key 'ladders.t.seq_length' must be an integer > 0"),
    ("base-model", GOOD.replace("base_model: tiny", "base_model: huge"), "key 'ladders.t.base_model'"),
    ("negative-tokens", GOOD.replace("tokens_per_param: 20", "tokens_per_param: -20"),
     "key 'rules.tokens_per_param' must be a finite number > 0"),
    ("nan-coef", GOOD.replace("coef: 0.292", "coef: .nan"), "key 'rules.batch.coef' must be a finite number > 0"),
    ("zero-sequences", GOOD.replace("min_sequences: 8", "min_sequences: 0"),
     "key 'rules.batch.min_sequences' must be an integer > 0"),
    ("lr-min-above-max", GOOD.replace("min: 1.0e-4", "min: 1.0e-2"), "key 'rules.lr.min' (0.01) is above"),
]


@pytest.mark.parametrize("text, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_ladder_file_is_one_line_naming_file_and_key(text, words, tmp_path, capsys):
    config = tmp_path / "ladder.yaml"
    config.write_text(text)
    assert main(["--config", str(config), "--ladder", "t"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err and not captured.out, captured.err
    assert lines[0].startswith(f"ladder: error: {config}: ") and words in lines[0], lines[0]


def test_the_good_file_plans_and_a_missing_one_is_named(tmp_path, capsys):
    config = tmp_path / "ladder.yaml"
    config.write_text(GOOD)
    assert main(["--config", str(config), "--ladder", "t", "--format", "overrides"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    assert main(["--config", str(tmp_path / "gone.yaml"), "--ladder", "t"]) == 2
    assert f"{tmp_path / 'gone.yaml'}: no such ladder file" in capsys.readouterr().err
