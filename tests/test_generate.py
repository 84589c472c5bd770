"""vffn-generate samples from a checkpoint with the inference path and reports the loops per token."""

from __future__ import annotations

import re

from tests.training import trainer_runs as cases


def test_generate_from_checkpoint_with_loops(rank_pools, base_overrides, tmp_path):
    run = rank_pools(1).run(cases.train, [*base_overrides, f"run_dir={tmp_path / 'run'}", "train.max_steps=2",
                                          "data.tokenizer=null:512"])[0]
    assert run["exit_code"] == 0
    ckpt = str(tmp_path / "run" / "checkpoints")
    text = rank_pools(1).run(cases.generate, ["--checkpoint", ckpt, "--prompt", "1 2 3", "--max-new-tokens", "5",
                                              "--temperature", "0", "--show-loops"])[0]
    assert text.startswith("1 2 3")
    loops = re.findall(r"\[(\d+)\]", text)
    assert loops, text
    for group in loops:  # one digit per layer (4 layers), each a loop count in 1..L_max
        assert len(group) == 4 and all(1 <= int(c) <= 4 for c in group)
    again = rank_pools(1).run(cases.generate, ["--checkpoint", ckpt, "--prompt", "1 2 3", "--max-new-tokens", "5",
                                               "--temperature", "0", "--show-loops"])[0]
    assert again == text  # greedy decoding is deterministic
