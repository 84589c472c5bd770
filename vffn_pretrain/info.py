"""`vffn-info`: parameter and FLOP counts of the model a Hydra config describes, as JSON.

Usage: ``vffn-info model=354m ffn=versatile`` (any Hydra overrides). Prints one JSON object with
params_total, params_non_embedding, flops_per_token_train, flops_per_token_eval, eval_loop_mix,
num_layers, d_model, d_ff (and a few more descriptive keys). Nothing is allocated: the numbers come
from :mod:`vffn_pretrain.model.counting`.

Config keys read (names fixed across the project): model.num_layers, model.hidden_size,
model.ffn_hidden_size, model.num_attention_heads, model.num_query_groups (optional),
model.vocab_size (unpadded), model.seq_length or train.seq_length, ffn.kind, ffn.num_experts,
ffn.top_k, ffn.max_loops, ffn.loops, ffn.layers (optional per-layer kinds), parallel.tp (optional, default 1). Optional extras:
model.tied_embeddings (default false) and info.eval_loop_mix (list of L_max fractions; default
uniform), e.g. ``+info.eval_loop_mix=[0.1,0.2,0.3,0.4]``.

Exit status: 0 printed; 2 a bad config (one line naming the key); 130 stopped by Ctrl-C, SIGTERM or SIGHUP
(one line, nothing on stdout).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from vffn_pretrain.config.paths import CONF_DIR
from vffn_pretrain.model.counting import count_params, flops_per_token, uniform_loop_mix
from vffn_pretrain.model.kinds import traits
from vffn_pretrain.model.shapes import counting_shapes
from vffn_pretrain.process.streams import survive_closed_output

# The model's shape: vffn-info counts only a model whose config names these (a default would count a model
# nobody asked for).
SHAPE_KEYS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "vocab_size")


def _loop_mix(raw: Any, max_loops: int) -> list[float]:
    """info.eval_loop_mix: max_loops finite non-negative fractions summing to 1."""
    import math

    if isinstance(raw, ListConfig):
        raw = OmegaConf.to_container(raw)
    key = "config key 'info.eval_loop_mix'"
    if not isinstance(raw, list) or len(raw) != max_loops:
        raise ValueError(f"{key}: expected a list of {max_loops} fractions (ffn.max_loops), got {raw!r}")
    try:
        mix = [float(x) for x in raw]
    except (TypeError, ValueError):
        raise ValueError(f"{key}: expected numbers, got {raw!r}") from None
    if any(not math.isfinite(x) or x < 0 for x in mix) or not math.isclose(sum(mix), 1.0, abs_tol=1e-6):
        raise ValueError(f"{key}: expected finite non-negative fractions summing to 1, got {raw!r}")
    return mix


def info_from_config(cfg: DictConfig | dict) -> dict:
    """Compute the `vffn-info` report from a composed config (DictConfig or plain nested dict). The config is
    checked as the trainer checks it (`validate_groups`); `model.seq_length` and `info.eval_loop_mix` are keys of
    vffn-info alone."""
    from vffn_pretrain.config.run import resolved_config, validate_groups

    raw = resolved_config(cfg)
    extras = raw.pop("info", None) or {}
    model_raw = raw.get("model") or {}
    for key in SHAPE_KEYS:
        if model_raw.get(key) is None:
            raise ValueError(f"config key 'model.{key}' is missing (or null); it is needed to count the model")
    seq_length = model_raw.pop("seq_length", None)  # counts at this length instead of train.seq_length
    if seq_length is not None:
        raw.setdefault("train", {})["seq_length"] = seq_length
    groups = validate_groups(raw, world_size=None)
    model, ffn, tp = groups.model, groups.ffn, groups.parallel.tp
    kinds = ffn.layer_kinds(model.num_layers)
    ffn_kwargs = {key: getattr(ffn, key) for k in dict.fromkeys(kinds) for key in traits(k).settings}
    m, f = counting_shapes(model, ffn, tp=tp, seq_length=groups.train.seq_length)  # f: per layer if mixed

    loop_mix = None
    if any(traits(k).adaptive_depth for k in kinds):
        given = extras.get("eval_loop_mix") if isinstance(extras, dict) else None
        max_loops = ffn_kwargs["max_loops"]
        loop_mix = _loop_mix(given, max_loops) if given is not None else uniform_loop_mix(max_loops)

    params = count_params(m, f)
    return {
        "params_total": params["params_total"],
        "params_non_embedding": params["params_non_embedding"],
        "flops_per_token_train": flops_per_token(m, f, training=True),
        "flops_per_token_eval": flops_per_token(m, f, training=False, loop_mix=loop_mix),
        "eval_loop_mix": loop_mix,
        "num_layers": m.num_layers,
        "d_model": m.d_model,
        "d_ff": m.d_ff,
        "num_heads": m.num_heads,
        "num_query_groups": m.kv_heads,
        "vocab_size_padded": m.vocab_size,
        "seq_length": m.seq_length,
        "ffn": {"kind": ffn.kind, **ffn_kwargs, **({"layers": kinds} if ffn.layers is not None else {})},
    }


# Printing a report should not leave an outputs/ directory or log files behind: unless the user
# chose otherwise, run the job in place without Hydra's output subdir and job logging.
_QUIET_DEFAULTS = {
    "hydra.output_subdir": "hydra.output_subdir=null",
    "hydra.run.dir": "hydra.run.dir=.",
    "hydra/job_logging": "hydra/job_logging=disabled",
    "hydra/hydra_logging": "hydra/hydra_logging=disabled",
}


def _add_quiet_defaults(argv: list[str]) -> list[str]:
    """argv with the quiet defaults the user did not set among its overrides (`add_overrides` keeps every flag
    reading what it read)."""
    from vffn_pretrain.config.overrides import add_overrides

    given = {arg.lstrip("+~").split("=", 1)[0] for arg in argv}
    return add_overrides(argv, [override for key, override in _QUIET_DEFAULTS.items() if key not in given])


def main() -> None:
    survive_closed_output()  # a reader that goes away (`| head`) does not stop the work
    from vffn_pretrain.config.usage import print_usage, wants_help

    if wants_help(sys.argv[1:]):
        print_usage("vffn-info", "Parameter and FLOP counts of the model the config describes, as JSON (nothing "
                                 "is allocated).")
        return
    import hydra  # imported here so info_from_config stays usable without Hydra's side effects

    from vffn_pretrain.config.overrides import precheck_overrides
    from vffn_pretrain.process.exits import EXIT_BAD_CONFIG, fail

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
    def _run(cfg: DictConfig) -> None:
        try:
            report = info_from_config(cfg)
        except Exception as e:  # noqa: BLE001 - a bad value deep in the counting: one line, naming it
            fail("vffn-info", f"bad config: {e}", EXIT_BAD_CONFIG)
        print(json.dumps(report, indent=2))

    from vffn_pretrain.process.interrupts import EXIT_INTERRUPTED, interrupted, interruptible

    try:
        with interruptible():
            precheck_overrides("vffn-info", str(CONF_DIR), sys.argv[1:])
            sys.argv = [sys.argv[0], *_add_quiet_defaults(sys.argv[1:])]
            _run()
    except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM, SIGHUP: one line, nothing was written
        fail("vffn-info", interrupted(stop), EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
