"""Resume across backends carries the whole optimizer state: a checkpoint written with fp32 weights resumes with
bf16 ones and the reverse (the fp32 weights exact, the moments and the step unchanged); one written by torch's
AdamW (a `step` per parameter) resumes with transformer-engine's FusedAdam layout (a `step` per group, here a CPU
stand-in with its load contract) and the reverse; switching the distributed optimizer is refused naming its key;
RNG states of another device type are skipped with a line, not set."""

from __future__ import annotations

import math

import pytest
import torch

from tests.training import trainer_runs as cases
from tests.training.resume_layout_runs import resume_across

FP32, BF16 = torch.float32, torch.bfloat16


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("saved, loaded", [(FP32, BF16), (BF16, FP32)], ids=["fp32->bf16", "bf16->fp32"])
def test_optimizer_state_crosses_precisions_exactly(rank_pools, tmp_path, saved, loaded):
    out = rank_pools(1).run(resume_across, str(tmp_path), {"dtype": saved, "fused_adam": False},
                            {"dtype": loaded, "fused_adam": False})[0]
    before, after = out["before"], out["after"]
    assert _same(before["weights"], after["weights"])  # the fp32 weights, bit for bit
    assert after["model_is_main_rounded"]  # a bf16 model holds them rounded once
    assert _same(before["exp_avg"], after["exp_avg"]) and _same(before["exp_avg_sq"], after["exp_avg_sq"])
    assert before["steps"] == after["steps"] == [2.0]
    assert math.isfinite(out["loss"])


@pytest.mark.parametrize("saved, loaded", [(False, True), (True, False)], ids=["torch->fused", "fused->torch"])
def test_adam_step_moves_between_per_parameter_and_per_group(rank_pools, tmp_path, saved, loaded):
    out = rank_pools(1).run(resume_across, str(tmp_path), {"dtype": FP32, "fused_adam": saved},
                            {"dtype": FP32, "fused_adam": loaded})[0]
    before, after = out["before"], out["after"]
    assert before["steps"] == after["steps"] == [2.0]
    if loaded:  # FusedAdam's layout: the step in every group, none per parameter
        assert after["per_param_steps"] == 0 and after["group_steps"] > 0
    else:
        assert after["group_steps"] == 0 and after["per_param_steps"] == len(after["exp_avg"])
    assert _same(before["exp_avg"], after["exp_avg"]) and _same(before["weights"], after["weights"])
    assert math.isfinite(out["loss"])


def test_switching_the_distributed_optimizer_is_refused_naming_the_key(rank_pools, base_overrides, tmp_path):
    run = [*base_overrides, f"run_dir={tmp_path / 'run'}", "train.eval_iters=0"]
    pool = rank_pools(1)
    first = pool.run(cases.train, [*run, "train.max_steps=1", "parallel.distributed_optimizer=true"])[0]
    assert first["exit_code"] == 0
    key, message = pool.run(config_error_of, [*run, "train.max_steps=2"])[0]
    assert key == "parallel.distributed_optimizer" and "step_0000001" in message and "\n" not in message


def config_error_of(overrides: list[str]) -> tuple[str, str] | None:
    """(key, message) of the ConfigError the trainer's set-up raises (the CLI prints it as one line, exit 2)."""
    from megatron.core import parallel_state as ps

    from vffn_pretrain.config.errors import ConfigError
    from vffn_pretrain.training.trainer import Trainer

    trainer = Trainer(cases.run_config(overrides))
    try:
        trainer.setup()
    except ConfigError as e:
        return e.key, str(e)
    finally:
        trainer.release(failed=True)
        ps.destroy_model_parallel()
    return None


def test_rng_states_of_another_device_type_are_skipped_with_a_line(single_rank):
    from megatron.core import tensor_parallel

    from vffn_pretrain.training.checkpointing import rng_state, set_rng_state

    here = rng_state()
    tracker = tensor_parallel.get_cuda_rng_tracker()
    before = {k: v.clone() for k, v in tracker.get_states().items()}
    from_gpu = dict(here, device="cuda", cuda=torch.zeros(16, dtype=torch.uint8),
                    tracker={name: torch.zeros(16, dtype=torch.uint8) for name in before})
    torch.manual_seed(999)
    line = set_rng_state(from_gpu)  # would raise "RNG state is wrong size" at the first fork if it were set
    assert line is not None and "cuda" in line and "cpu" in line
    assert all(torch.equal(v, before[k]) for k, v in tracker.get_states().items())
    assert torch.equal(torch.get_rng_state(), here["torch"])  # the host generators are restored
    assert set_rng_state(here) is None
