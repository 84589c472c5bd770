"""FLOPs per token of this run, from `model.counting`: the paper's count, and the count as this layout executes it
(what throughput and MFU use)."""

from __future__ import annotations

from vffn_pretrain.model import counting
from vffn_pretrain.model.ffn import state as ffn_state
from vffn_pretrain.model.kinds import traits


class RunFlops:
    """`train`: training FLOPs per token as the paper counts them. `executed`: as this layout computes them,
    with the width path in `width_form` and, under token-sparse recursion, the backward of the loops sampled
    (uniform mix). `executed_in_window(stats)` refines `executed` with a logging window's sampled mix."""

    def __init__(self, model_shape: counting.ModelShape, ffn_shape, layer_kinds: list[str], width_form: str,
                 token_sparse: bool):
        self.model_shape, self.ffn_shape = model_shape, ffn_shape
        self.layer_kinds = layer_kinds
        self.width_form = width_form
        self.token_sparse = token_sparse
        self.train = counting.flops_per_token(model_shape, ffn_shape, training=True)
        self.executed = counting.flops_per_token(model_shape, ffn_shape, training=True, width_form=width_form,
                                                 token_sparse=token_sparse)

    @classmethod
    def for_run(cls, cfg, shapes: tuple, device_type: str) -> RunFlops:
        """The counts of the run `cfg` (a RunConfig) with counting shapes `shapes` = (model shape, FFN shape(s))
        on a `device_type` device."""
        kinds = cfg.ffn.layer_kinds(cfg.model.num_layers)
        # Throughput and MFU count the width path as this layout computes it (the paper's count is for C).
        width_form = counting.width_path_form(cfg.ffn.kind, cfg.parallel.tp, device_type)
        # token-sparse recursion (not under SP) makes the backward follow the sampled loops: counted per window
        token_sparse = (cfg.ffn.token_sparse_recursion and not (cfg.parallel.sp and cfg.parallel.tp > 1)
                        and any(traits(k).adaptive_depth for k in kinds))
        return cls(*shapes, kinds, width_form, token_sparse)

    def executed_in_window(self, stats: dict | None) -> float:
        """Training FLOPs per token as executed in a logging window: with token-sparse recursion the FFN's
        backward follows the loop mix sampled in that window (pooled over the adaptive layers: the count is
        linear in the mix and those layers have the same shape)."""
        if not (self.token_sparse and stats):
            return self.executed
        adaptive = [layer["loop_hist"] for number, layer in ffn_state.layer_stats(stats).items()
                    if traits(self.layer_kinds[number - 1]).adaptive_depth]
        hist = [sum(col) for col in zip(*adaptive)]
        if not hist or not sum(hist):
            return self.executed
        return counting.flops_per_token(self.model_shape, self.ffn_shape, training=True, width_form=self.width_form,
                                        token_sparse=True, loop_mix=[c / sum(hist) for c in hist])

    def eval(self, loop_mix: list[float] | None) -> float:
        """Inference FLOPs per token at `loop_mix` (the last evaluation's); the uniform count when it does not
        apply to this FFN."""
        try:
            return counting.flops_per_token(self.model_shape, self.ffn_shape, training=False, loop_mix=loop_mix)
        except (ValueError, TypeError):
            return counting.flops_per_token(self.model_shape, self.ffn_shape, training=False)
