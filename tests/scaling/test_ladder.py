"""Scaling-ladder rules: they reproduce the paper's recipe where it exists, behave sensibly elsewhere,
and the planned runs are valid trainer configs."""

import math
import shlex
from dataclasses import asdict

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from vffn_pretrain.config.run import load_run_config
from vffn_pretrain.scaling.ladder import (
    DEFAULT_CONFIG,
    LadderRules,
    ffn_shape,
    global_batch_sequences,
    main,
    peak_lr,
    plan_ladder,
    run_overrides,
    token_budget,
)

CONF_DIR = str(DEFAULT_CONFIG.parents[1])
# paper models: non-embedding parameters (docs/method.md §9.1 totals minus 2 x 50,304 x d) and peak LR (method §9.3)
PAPER_LR = {251_689_984: 5e-4, 566_278_656: 4e-4, 1_006_696_448: 3e-4}


@pytest.fixture(scope="module")
def ladder_cfg():
    return OmegaConf.load(DEFAULT_CONFIG)


def test_rules_in_yaml_match_the_code_defaults(ladder_cfg):
    # the yaml documents the rules; the code defaults must be the same numbers
    assert asdict(LadderRules.from_config(ladder_cfg.rules)) == pytest.approx(asdict(LadderRules()), rel=1e-6)


@pytest.mark.parametrize("n, lr", sorted(PAPER_LR.items()))
def test_peak_lr_reproduces_paper(n, lr):
    assert peak_lr(n) == pytest.approx(lr, rel=0.06)


def test_peak_lr_decreases_and_is_clipped():
    sizes = [1e4, 1e6, 1e7, 1e8, 1e9, 1e10, 1e13]
    lrs = [peak_lr(n) for n in sizes]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lrs[0] == LadderRules().lr_max and lrs[-1] == LadderRules().lr_min
    # between the clips: LR ~ N^(-1/3), i.e. 8x the parameters halves the LR
    assert peak_lr(8e8) == pytest.approx(peak_lr(1e8) / 2)


def test_token_budget_is_twenty_per_parameter():
    assert token_budget(1_000_000) == 20_000_000
    assert token_budget(1_000_000, LadderRules(tokens_per_param=5)) == 5_000_000


def test_batch_rule():
    rules = LadderRules()
    # independent evaluation for the 354M model: C = 6 N D, B = 0.292 C^0.3271 tokens = ~107 sequences -> 128
    n = 251_689_984
    c = 6 * n * 20 * n
    assert 0.292 * c**0.3271 / 4096 == pytest.approx(107, rel=0.02)
    assert global_batch_sequences(n, 4096) == 128
    previous = 0
    for n in [3e4, 1e5, 1e6, 1e7, 1e8, 1e9]:
        for seq in (128, 4096):
            b = global_batch_sequences(n, seq)
            assert b & (b - 1) == 0  # a power of two
            assert rules.batch_min_sequences <= b <= rules.batch_max_sequences
            steps = math.ceil(token_budget(n) / (b * seq))
            assert steps >= rules.min_steps or b == rules.batch_min_sequences
        b = global_batch_sequences(n, 4096)
        assert b >= previous  # bigger models, bigger batches
        previous = b


def test_plan_paper_ladder(ladder_cfg):
    rungs = {
        r.name: r for r in plan_ladder(ladder_cfg.ladders.paper, LadderRules.from_config(ladder_cfg.rules))
    }
    assert rungs["354m"].params_total == 354_712_576
    assert rungs["720m"].params_total == 720_812_544
    assert rungs["1b2"].params_total == 1_212_741_632
    for r in rungs.values():
        assert r.tokens >= r.tokens_target == token_budget(r.params_non_embedding)
        assert r.tokens - r.tokens_target < r.global_batch_size * r.shape.seq_length  # whole steps, no more
        assert r.shape.d_ff == 4 * r.shape.d_model and r.shape.vocab_size == 50_304
    assert rungs["354m"].lr == pytest.approx(5e-4)


def test_variants_resolve_to_ffn_shapes(ladder_cfg):
    assert ffn_shape("versatile") == ffn_shape("versatile")  # loads conf/ffn/versatile.yaml
    v = ffn_shape("versatile")
    assert (v.kind, v.num_experts, v.top_k, v.max_loops) == ("versatile", 8, 2, 4)
    assert ffn_shape("kloop4").loops == 4
    for variant in ladder_cfg.variants:
        ffn_shape(variant)
    with pytest.raises(ValueError, match="unknown FFN variant"):
        ffn_shape("nonsense")


@pytest.mark.parametrize("ladder_name", ["cpu", "paper"])
def test_planned_runs_are_valid_trainer_configs(ladder_cfg, ladder_name):
    ladder = ladder_cfg.ladders[ladder_name]
    rung = plan_ladder(ladder)[0]
    overrides = run_overrides(ladder_name, ladder, rung, "versatile")
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(config_name="config", overrides=overrides)
    run = load_run_config(cfg, world_size=1)
    assert run.model.hidden_size == rung.shape.d_model and run.model.num_layers == rung.shape.num_layers
    assert run.train.max_steps == rung.max_steps and run.train.global_batch_size == rung.global_batch_size
    assert run.train.lr == pytest.approx(rung.lr, rel=1e-3)
    assert run.ffn.kind == "versatile"
    assert run.run_name == f"{ladder_name}-{rung.name}-versatile"


def test_cli_formats(capsys):
    assert main(["--ladder", "paper", "--variants", "dense,versatile"]) == 0
    table = capsys.readouterr().out
    assert "354m" in table and "251,689,984" in table and "C versatile" in table
    assert main(["--ladder", "cpu", "--variants", "dense,kloop4", "--format", "overrides"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 * 5
    assert "ffn=kloop4" in shlex.split(lines[1])
    assert main(["--ladder", "cpu", "--format", "multirun"]) == 0
    cmd = shlex.split(capsys.readouterr().out.strip().splitlines()[0])
    assert cmd[:5] == ["python", "-m", "vffn_pretrain.train", "-m", "hydra/launcher=submitit_slurm"]
    assert "ffn=dense,versatile,kloop4,moe" in cmd and "hydra.sweep.dir=multirun/ladder-cpu/c32" in cmd
    assert main(["--ladder", "nope"]) == 2
