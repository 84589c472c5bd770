"""`ffn.*` config group: which FFN fills the MLP slot, and VersatileFFN's own settings (docs/method.md §12)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from vffn_pretrain.config.errors import ConfigError
from vffn_pretrain.config.fields import MAX_REPEATS, MODEL, check_fields, setting
from vffn_pretrain.model.kinds import FFN_KINDS, traits
from vffn_pretrain.model.layer_pattern import parse_layer_pattern


@dataclass
class FFNConfig:
    """Validated `ffn.*` keys.

    kind: dense | kloop | moe | versatile | width_only | depth_only.
    num_experts (N), top_k (k): virtual experts of the width path (real experts for moe).
    max_loops (L_max): depth path loops; loops: k of the k-loop baseline.
    tau0, tau_decay, tau_min: Gumbel temperature tau_t = max(tau0 * tau_decay**t, tau_min), t = optimizer step;
    tau_decay_to_end: if true, tau_decay is set so tau reaches tau_min at the run's last step.
    balance_coeff: Switch balance loss alpha; the loss added is alpha * mean over layers of N * sum_e f_e P_e
    (docs/method.md §12 #6; 0 or balance_loss=false turns it off).
    token_sparse_recursion: in training, a token keeps an autograd graph only for the loops it sampled (and the
    width path only when lambda > 0); deeper loops run for their values alone (versatile, depth_only; not under
    sequence parallelism, where the all-token path runs). Same losses and gradients, less backward work and
    activation memory.
    blend_in_steps: 0 = the paper's conversion. B > 0 (continued pretraining without the conversion shock, a
    departure from the paper, docs/method.md §15): the shared-weight kinds (versatile, depth_only, width_only,
    kloop) output H^(1) + s * (Y - H^(1)) with s = min(step / B, 1), t the optimizer step, so a model converted
    from a dense checkpoint computes the dense function at step 0 and the kind's own from step B on. dense and
    moe have no such key.
    layers: per-layer kinds, null = every layer is `kind`; a list (["dense", "versatile", ...]) or a string
    "dense*3,versatile*12" (quote it on the command line: ffn.layers='dense*3,versatile*12'). Every layer uses
    the ffn.* settings above with its own kind. moe cannot be mixed with other kinds.
    """

    kind: str = setting("versatile", changes=MODEL)
    num_experts: int = setting(8, ge=1, changes=MODEL)
    top_k: int = setting(2, ge=1, changes=MODEL)
    max_loops: int = setting(4, ge=1, le=MAX_REPEATS, changes=MODEL)
    loops: int = setting(4, ge=1, le=MAX_REPEATS, changes=MODEL)
    tau0: float = setting(5.0, gt=0)
    tau_decay: float = setting(0.99984, gt=0, le=1)
    tau_min: float = setting(0.1, gt=0)
    tau_decay_to_end: bool = False
    balance_loss: bool = True
    balance_coeff: float = setting(1e-5, ge=0)
    token_sparse_recursion: bool = True
    # a conversion ramp (docs/method.md §15): changes the layer's output until step blend_in_steps
    blend_in_steps: int = setting(0, ge=0, le=2**31, changes=MODEL)
    layers: list | str | None = setting(None, changes=MODEL)

    def layer_kinds(self, num_layers: int) -> list[str]:
        """The FFN kind of each of the `num_layers` layers (all `kind` when `layers` is null)."""
        if self.layers is None:
            return [self.kind] * num_layers
        return parse_layer_pattern(self.layers, num_layers)

    def is_mixed(self, num_layers: int) -> bool:
        return len(set(self.layer_kinds(num_layers))) > 1

    def for_kind(self, kind: str) -> FFNConfig:
        """These settings for one layer of `kind` (what a layer's builder sees)."""
        return dataclasses.replace(self, kind=kind, layers=None)

    def counting_shape(self, num_layers: int):
        """What `model.counting` takes: one FFNShape for a uniform model, a list (one per layer) for a mixed one
        (`model.shapes.ffn_shapes`)."""
        from vffn_pretrain.model.shapes import ffn_shapes

        return ffn_shapes(self, num_layers)

    def validate(self, d_ff: int, tp: int = 1, num_layers: int | None = None) -> None:
        """Checks `kind` and, with `num_layers`, the `layers` pattern; then the settings of every kind in use."""
        check_fields(self, "ffn")
        if self.kind not in FFN_KINDS:
            raise ConfigError("ffn.kind", f"must be one of {', '.join(FFN_KINDS)}, got {self.kind!r}")
        if isinstance(self.blend_in_steps, bool) or not isinstance(self.blend_in_steps, int) \
                or self.blend_in_steps < 0:
            raise ConfigError("ffn.blend_in_steps", f"must be an integer >= 0 (0: the paper's conversion), got "
                                                    f"{self.blend_in_steps!r}")
        kinds = [self.kind] if num_layers is None or self.layers is None else self.layer_kinds(num_layers)
        for kind in dict.fromkeys(kinds):
            self._validate_kind(kind, d_ff, tp)

    def _validate_kind(self, kind: str, d_ff: int, tp: int) -> None:
        """The relations between keys for one kind in use (each key's own range: `check_fields`)."""
        t = traits(kind)
        if t.has_router:
            if self.top_k > self.num_experts:
                raise ConfigError(
                    "ffn.top_k", f"must be between 1 and ffn.num_experts={self.num_experts}, got {self.top_k!r}"
                )
            if d_ff % self.num_experts:
                raise ConfigError(
                    "ffn.num_experts", f"ffn.num_experts={self.num_experts} does not divide d_ff={d_ff}"
                )
        if d_ff % tp:
            raise ConfigError("parallel.tp", f"parallel.tp={tp} does not divide d_ff={d_ff}")
        if t.adaptive_depth and self.tau_min > self.tau0:
            raise ConfigError("ffn.tau_min", f"must be in (0, ffn.tau0={self.tau0}], got {self.tau_min!r}")
