"""Plan a scaling ladder: for each model size, the token budget, global batch and peak LR, by rules.

    python -m vffn_pretrain.scaling.ladder [--config conf/sweep/ladder.yaml] --ladder cpu
        [--variants dense,versatile] [--format table|overrides|multirun] [--launcher submitit_slurm]

The rules (parameters in the ``rules:`` block of conf/sweep/ladder.yaml), with N the non-embedding
parameter count of the *dense* model of a size, so every FFN variant of a size gets the same run:

* tokens   D = tokens_per_param x N (20: the Chinchilla compute-optimal ratio).
* peak LR  ref x (N / ref_params)^exponent, clipped to [min, max]. Defaults are anchored at the
  paper's 354M model (5e-4) with exponent -1/3, which reproduces the paper's 720M and 1.21B LRs to
  within 5%.
* batch    tokens = coef x C^exponent with C = 6 N D (DeepSeek LLM's compute-optimal batch fit),
  in sequences rounded to the nearest power of two, clipped to [min_sequences, max_sequences], then
  halved while the run would have fewer than min_steps optimizer steps.
* steps    ceil(D / batch tokens); the run sees steps x batch tokens >= D.

The FFN variant is the second axis: each variant is a conf/ffn/<name>.yaml group (a ladder's own
``variants:`` list, else the config's, unless --variants is given).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vffn_pretrain.config.paths import CONF_DIR
from vffn_pretrain.model.config import ModelConfig
from vffn_pretrain.model.counting import FFNShape, ModelShape, count_params, flops_per_token
from vffn_pretrain.model.ffn.config import FFNConfig
from vffn_pretrain.model.shapes import ffn_shapes, model_shape

DEFAULT_CONFIG = CONF_DIR / "sweep" / "ladder.yaml"
FFN_CONF_DIR = CONF_DIR / "ffn"


@dataclass(frozen=True)
class LadderRules:
    tokens_per_param: float = 20.0
    lr_ref: float = 5e-4
    lr_ref_params: float = 251_689_984  # non-embedding parameters of the paper's 354M model
    lr_exponent: float = -1 / 3
    lr_min: float = 1e-4
    lr_max: float = 2e-3
    batch_coef: float = 0.292
    batch_exponent: float = 0.3271
    batch_min_sequences: int = 8
    batch_max_sequences: int = 1024
    min_steps: int = 100

    @classmethod
    def from_config(cls, rules: DictConfig | dict) -> LadderRules:
        r = OmegaConf.to_container(rules) if isinstance(rules, DictConfig) else rules
        lr, batch = r.get("lr", {}), r.get("batch", {})
        d = cls()
        return cls(
            tokens_per_param=float(r.get("tokens_per_param", d.tokens_per_param)),
            lr_ref=float(lr.get("ref", d.lr_ref)),
            lr_ref_params=float(lr.get("ref_params", d.lr_ref_params)),
            lr_exponent=float(lr.get("exponent", d.lr_exponent)),
            lr_min=float(lr.get("min", d.lr_min)),
            lr_max=float(lr.get("max", d.lr_max)),
            batch_coef=float(batch.get("coef", d.batch_coef)),
            batch_exponent=float(batch.get("exponent", d.batch_exponent)),
            batch_min_sequences=int(batch.get("min_sequences", d.batch_min_sequences)),
            batch_max_sequences=int(batch.get("max_sequences", d.batch_max_sequences)),
            min_steps=int(batch.get("min_steps", d.min_steps)),
        )


class LadderError(ValueError):
    """A ladder file that cannot be read, or a key with a wrong value: the message names the file and key."""


def _get(path: Path, node, key: str, where: str):
    if not isinstance(node, dict) or key not in node:
        raise LadderError(f"{path}: key {where + key!r} is missing")
    return node[key]


def _check_number(path: Path, where: str, value, *, low: float | None = None, integer: bool = False,
                  positive: bool = False):
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (not integer or float(value).is_integer()) and (not positive or value > 0)
    ok = ok and (low is None or value >= low)
    if not ok:
        what = "an integer" if integer else "a finite number"
        bound = " > 0" if positive else f" >= {low:g}" if low is not None else ""
        raise LadderError(f"{path}: key {where!r} must be {what}{bound} (got {value!r})")
    return value


def load_ladder_config(path: str | Path, ladder_name: str) -> tuple[DictConfig, DictConfig, LadderRules]:
    """Read and check a ladder file: (the whole config, the ladder `ladder_name`, its rules). LadderError names
    the file and the key (`ladders.cpu.sizes[2].hidden_size`) of anything wrong."""
    path = Path(path)
    try:
        cfg = OmegaConf.load(path)
        raw = OmegaConf.to_container(cfg, resolve=True)
    except FileNotFoundError:
        raise LadderError(f"{path}: no such ladder file") from None
    except Exception as e:  # noqa: BLE001 - YAML syntax, a directory, interpolation errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LadderError(f"{path}: not a readable ladder file ({first})") from None
    if not isinstance(raw, dict):
        raise LadderError(f"{path}: expected a mapping with `ladders:` at the top level")
    ladders = _get(path, raw, "ladders", "")
    if not isinstance(ladders, dict) or ladder_name not in ladders:
        known = ", ".join(ladders) if isinstance(ladders, dict) else "nothing"
        raise LadderError(f"{path}: unknown ladder {ladder_name!r} (key 'ladders' defines {known})")
    ladder, where = ladders[ladder_name], f"ladders.{ladder_name}."
    if not isinstance(ladder, dict):
        raise LadderError(f"{path}: key {where[:-1]!r} must be a mapping")
    base = _get(path, ladder, "base_model", where)
    if not isinstance(base, str) or not (CONF_DIR / "model" / f"{base}.yaml").is_file():
        raise LadderError(f"{path}: key {where + 'base_model'!r} must name a conf/model group (got {base!r})")
    for key in ("seq_length", "vocab_size"):
        _check_number(path, where + key, _get(path, ladder, key, where), integer=True, positive=True)
    sizes = _get(path, ladder, "sizes", where)
    if not isinstance(sizes, list) or not sizes:
        raise LadderError(f"{path}: key {where + 'sizes'!r} must be a non-empty list of model sizes")
    for i, size in enumerate(sizes):
        at = f"{where}sizes[{i}]."
        if not isinstance(size, dict):
            raise LadderError(f"{path}: key {at[:-1]!r} must be a mapping (got {size!r})")
        _get(path, size, "name", at)
        for key in ("num_layers", "hidden_size", "num_attention_heads"):
            _check_number(path, at + key, _get(path, size, key, at), integer=True, positive=True)
        for key in ("ffn_hidden_size", "num_query_groups"):
            if size.get(key) is not None:
                _check_number(path, at + key, size[key], integer=True, positive=True)
        if size["hidden_size"] % size["num_attention_heads"]:
            raise LadderError(f"{path}: key {at + 'hidden_size'!r} ({size['hidden_size']}) must be a multiple of "
                              f"num_attention_heads ({size['num_attention_heads']})")
    overrides = ladder.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise LadderError(f"{path}: key {where + 'overrides'!r} must be a list of trainer overrides")
    rules = raw.get("rules") or {}
    if not isinstance(rules, dict):
        raise LadderError(f"{path}: key 'rules' must be a mapping")
    for group, keys in (("", ("tokens_per_param",)), ("lr.", ("ref", "ref_params", "min", "max", "exponent")),
                        ("batch.", ("coef", "exponent", "min_sequences", "max_sequences", "min_steps"))):
        block = rules.get(group[:-1], {}) if group else rules
        if not isinstance(block, dict):
            raise LadderError(f"{path}: key {'rules.' + group[:-1]!r} must be a mapping")
        for key in keys:
            if key in block:
                integer = key in ("min_sequences", "max_sequences", "min_steps")
                _check_number(path, f"rules.{group}{key}", block[key], integer=integer,
                              positive=key != "exponent")
    parsed = LadderRules.from_config(rules)
    if parsed.lr_min > parsed.lr_max:
        raise LadderError(f"{path}: key 'rules.lr.min' ({parsed.lr_min:g}) is above rules.lr.max ({parsed.lr_max:g})")
    if parsed.batch_min_sequences > parsed.batch_max_sequences:
        raise LadderError(f"{path}: key 'rules.batch.min_sequences' ({parsed.batch_min_sequences}) is above "
                          f"rules.batch.max_sequences ({parsed.batch_max_sequences})")
    return cfg, cfg.ladders[ladder_name], parsed


def peak_lr(n_params: float, rules: LadderRules = LadderRules()) -> float:
    """Peak learning rate for a model with ``n_params`` non-embedding parameters."""
    lr = rules.lr_ref * (n_params / rules.lr_ref_params) ** rules.lr_exponent
    return min(max(lr, rules.lr_min), rules.lr_max)


def token_budget(n_params: float, rules: LadderRules = LadderRules()) -> int:
    return int(round(rules.tokens_per_param * n_params))


def global_batch_sequences(n_params: float, seq_length: int, rules: LadderRules = LadderRules()) -> int:
    """Global batch size in sequences (a power of two) for a model of ``n_params`` trained on its
    token budget."""
    tokens = token_budget(n_params, rules)
    batch_tokens = rules.batch_coef * (6.0 * n_params * tokens) ** rules.batch_exponent
    seqs = 2 ** round(math.log2(max(batch_tokens / seq_length, 1.0)))
    seqs = min(max(seqs, rules.batch_min_sequences), rules.batch_max_sequences)
    # Too few steps leave no room for warmup and decay: trade batch for steps.
    while seqs > rules.batch_min_sequences and math.ceil(tokens / (seqs * seq_length)) < rules.min_steps:
        seqs //= 2
    return seqs


@dataclass(frozen=True)
class Rung:
    """One model size of a ladder, with its derived training recipe."""

    name: str
    shape: ModelShape
    params_non_embedding: int  # of the dense model: the N the rules use
    params_total: int
    tokens_target: int
    global_batch_size: int  # sequences
    max_steps: int
    lr: float

    @property
    def tokens(self) -> int:
        """Tokens the run actually sees (whole steps)."""
        return self.max_steps * self.global_batch_size * self.shape.seq_length


def plan_ladder(ladder: DictConfig | dict, rules: LadderRules = LadderRules()) -> list[Rung]:
    """The rungs of one ``ladders.<name>`` block, in the order given."""
    if not isinstance(ladder, DictConfig):
        ladder = OmegaConf.create(ladder)
    seq = int(ladder.seq_length)
    rungs = []
    for size in ladder.sizes:
        model = ModelConfig(  # ffn_hidden_size None: 4 * hidden_size, as in training
            num_layers=int(size.num_layers),
            hidden_size=int(size.hidden_size),
            ffn_hidden_size=int(size.ffn_hidden_size) if size.get("ffn_hidden_size") else None,
            num_attention_heads=int(size.num_attention_heads),
            num_query_groups=size.get("num_query_groups"),
            vocab_size=int(ladder.vocab_size),
        )
        shape = model_shape(model, seq_length=seq)
        params = count_params(shape, FFNShape("dense"))
        n = params["params_non_embedding"]
        tokens = token_budget(n, rules)
        batch = global_batch_sequences(n, seq, rules)
        rungs.append(
            Rung(
                name=str(size.name),
                shape=shape,
                params_non_embedding=n,
                params_total=params["params_total"],
                tokens_target=tokens,
                global_batch_size=batch,
                max_steps=math.ceil(tokens / (batch * seq)),
                lr=peak_lr(n, rules),
            )
        )
    return rungs


def ffn_shape(variant: str, ffn_conf_dir: Path = FFN_CONF_DIR) -> FFNShape:
    """The FFNShape of a conf/ffn/<variant>.yaml group (for compute estimates); keys it omits take FFNConfig's
    defaults, as in training."""
    path = ffn_conf_dir / f"{variant}.yaml"
    if not path.exists():
        raise ValueError(f"unknown FFN variant {variant!r}: {path} does not exist")
    cfg = OmegaConf.to_container(OmegaConf.load(path))
    return ffn_shapes(FFNConfig(**{k: v for k, v in cfg.items() if v is not None}), 1)


def model_overrides(ladder: DictConfig, rung: Rung) -> list[str]:
    s = rung.shape
    out = [
        f"model={ladder.base_model}",
        f"model.name={rung.name}",
        f"model.num_layers={s.num_layers}",
        f"model.hidden_size={s.d_model}",
        f"model.ffn_hidden_size={s.d_ff}",
        f"model.num_attention_heads={s.num_heads}",
        f"model.vocab_size={int(ladder.vocab_size)}",
    ]
    if s.num_query_groups is not None:
        out.append(f"model.num_query_groups={s.num_query_groups}")
    return out + [
        f"train.seq_length={s.seq_length}",
        f"train.lr={rung.lr:.4g}",
        f"train.global_batch_size={rung.global_batch_size}",
        f"train.max_steps={rung.max_steps}",
        *[str(o) for o in ladder.get("overrides") or []],
    ]


def run_overrides(ladder_name: str, ladder: DictConfig, rung: Rung, variant: str) -> list[str]:
    """Hydra overrides for the trainer that train ``rung`` with the FFN ``variant``."""
    return [*model_overrides(ladder, rung), f"ffn={variant}", f"run_name={ladder_name}-{rung.name}-{variant}"]


def multirun_command(
    ladder_name: str, ladder: DictConfig, rung: Rung, variants: list[str], launcher: str
) -> str:
    """One Hydra multirun over the variants of one size; all sizes share the sweep root
    multirun/ladder-<name>, which is what vffn-scaling reads."""
    args = [
        "python", "-m", "vffn_pretrain.train", "-m", f"hydra/launcher={launcher}",
        *model_overrides(ladder, rung),
        f"ffn={','.join(variants)}",
        f"run_name={ladder_name}-{rung.name}-${{hydra:runtime.choices.ffn}}",
        f"hydra.sweep.dir=multirun/ladder-{ladder_name}/{rung.name}",
        "hydra.sweep.subdir=${hydra:runtime.choices.ffn}",
    ]  # fmt: skip
    return shlex.join(args)


def format_table(rungs: list[Rung], variants: list[str]) -> str:
    shapes = {v: ffn_shape(v) for v in variants}
    head = f"{'size':>6} {'N non-emb':>12} {'N total':>12} {'tokens':>11} {'batch':>5} {'steps':>6} {'LR':>8}"
    lines = [head + "".join(f" {'C ' + v:>14}" for v in variants)]
    for r in rungs:
        row = (
            f"{r.name:>6} {r.params_non_embedding:>12,} {r.params_total:>12,} {r.tokens:>11.3g} "
            f"{r.global_batch_size:>5} {r.max_steps:>6} {r.lr:>8.2e}"
        )
        for v in variants:
            row += f" {flops_per_token(r.shape, shapes[v], training=True) * r.tokens:>14.3g}"
        lines.append(row)
    lines.append("C = training FLOPs of the whole run (forward + backward, all loops), per variant.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vffn_pretrain.scaling.ladder", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--ladder", required=True, help="a key of `ladders:` in the config")
    parser.add_argument(
        "--variants", default=None,
        help="comma-separated conf/ffn groups (default: the ladder's `variants`, else the config's)"
    )
    parser.add_argument("--format", choices=("table", "overrides", "multirun"), default="table")
    parser.add_argument("--launcher", default="submitit_slurm", help="hydra/launcher for --format multirun")
    args = parser.parse_args(argv)

    try:
        cfg, ladder, rules = load_ladder_config(args.config, args.ladder)
        default_variants = ladder.get("variants") or cfg.get("variants") or []
        variants = args.variants.split(",") if args.variants else [str(v) for v in default_variants]
        if not variants:
            raise LadderError(f"{args.config}: no variants (key 'variants', or --variants)")
        for v in variants:
            ffn_shape(v)
    except ValueError as e:
        print(f"ladder: error: {e}", file=sys.stderr)
        return 2
    rungs = plan_ladder(ladder, rules)
    if args.format == "table":
        print(format_table(rungs, variants))
    elif args.format == "overrides":
        for r in rungs:
            for v in variants:
                print(shlex.join(run_overrides(args.ladder, ladder, r, v)))
    else:
        for r in rungs:
            print(multirun_command(args.ladder, ladder, r, variants, args.launcher))
    return 0


if __name__ == "__main__":
    sys.exit(main())
