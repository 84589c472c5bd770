"""GPU-only device mistakes, caught on a CPU (see vffn_pretrain/testing/device_audit.py): every tensor handed to a
collective during start-up, training steps, a save and a resume is made on the rank's device, from the main
thread; vffn-generate feeds the model device tensors and samples with a generator on the probabilities' device."""

from __future__ import annotations

from tests.training import trainer_runs as cases


def audited(fn, *args, check_modules: bool = False):
    """Run `fn(*args)` on this rank under the device audit; returns (its result, the violations, collectives)."""
    from vffn_pretrain.parallel.init import device
    from vffn_pretrain.testing.device_audit import device_audit

    with device_audit(device(), check_modules=check_modules) as audit:
        result = fn(*args)
    return result, audit.violations, audit.collectives


def audited_train(overrides: list[str]):
    run, violations, collectives = audited(cases.train, overrides)
    return run["exit_code"], violations, collectives


def audited_generate(argv: list[str]):
    return audited(cases.generate, argv, check_modules=True)[:2]


def test_collectives_get_device_tensors_in_steps_save_and_resume(rank_pools, base_overrides, tmp_path):
    args = [*base_overrides, f"run_dir={tmp_path / 'run'}", "checkpoint.interval=1"]
    code, violations, collectives = rank_pools(1).run(audited_train, [*args, "train.max_steps=2"])[0]
    assert code == 0 and violations == []
    assert {"all_reduce", "all_gather_object", "barrier"} <= set(collectives)  # pre-flight, steps and a save
    code, violations, collectives = rank_pools(1).run(audited_train, [*args, "train.max_steps=3"])[0]
    assert code == 0 and violations == []  # the resume's agreement on whether the checkpoint loaded included
    assert cases.read_losses(tmp_path / "run").keys() == {1, 2, 3}


def test_generate_puts_its_inputs_on_the_model_device(rank_pools, base_overrides, tmp_path):
    run = rank_pools(1).run(cases.train, [*base_overrides, f"run_dir={tmp_path / 'run'}", "train.max_steps=1"])[0]
    assert run["exit_code"] == 0
    ckpt = str(tmp_path / "run" / "checkpoints")
    for temperature in ("0", "0.8"):  # greedy, and sampled with the seeded generator
        text, violations = rank_pools(1).run(audited_generate, ["--checkpoint", ckpt, "--prompt", "1 2 3",
                                                                "--max-new-tokens", "3", "--temperature",
                                                                temperature])[0]
        assert text.startswith("1 2 3") and violations == [], violations
