"""VersatileFFN (docs/method.md) and the ablations that share its weights: kloop, width_only, depth_only.

One SwiGLU weight set (megatron-core's column-parallel fc1 = per-rank [gate_r ; up_r], row-parallel fc2, no
biases) and one RMSNorm owned by the layer, used by every loop and by the width path. The layer returns the whole
block output Y (every branch already contains its residual H), so the layer spec puts IdentityOp in
pre_mlp_layernorm and a bias-dropout-add that ignores the residual (`get_no_residual_bda`).

Training forward of `versatile` for this rank's tokens H (rows of [s, b, h]; s is the sequence shard under SP):
  sample loops   p = hard Gumbel-softmax(W_loop H; tau), straight-through, fp32 (noise from model/noise.py: the
                 same for a token on every TP rank, whatever the layout, and replayed exactly by recompute);
  run loops      H^(j) = H^(j-1) + fc2(phi(fc1(norm(H^(j-1))))), j = 1..L_max. With token-sparse recursion a
                 token keeps an autograd graph only for its own sampled loops (recursion.py); the deeper loops
                 run without one, since only their values enter the loop head's straight-through gradient;
  mix states     Y_depth = sum_j p_j H^(j) (forward value: the sampled state);
  route          top-k gates of the router on H;
  width delta    fc2(m ⊙ a1): loop 1's activations masked by the gates (method §7), so no second fc1;
  fuse           lambda = (L_max - sum_j j p_j) / L_max, Y = lambda (H + width delta) + (1 - lambda) Y_depth;
  record         balance loss attached to the backward pass, statistics for the log;
  blend in       with ffn.blend_in_steps, Y <- H^(1) + s (Y - H^(1)) while s = step / blend_in_steps < 1
                 (docs/method.md §15; every shared-weight kind, nothing computed once s = 1).
The router and loop head see the un-normalised H, are replicated on every TP rank and run on the rank's own
tokens. Under TP their outputs are used on every rank's slice of hidden units, so the gate tensor passes through
copy_to_tensor_model_parallel_region (all-reduce of its gradient) or, under SP, an all-gather along the sequence
(reduce-scatter of the gradient); their weights are marked `sequence_parallel` under SP so megatron sums their
gradients over TP.

Eval (module.eval()) of the adaptive kinds: argmax loop counts, per-token early exit (the same loop plan with
the no-graph rows dropped), no width path for tokens at L_max.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
    reduce_from_tensor_model_parallel_region,
)
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules, apply_swiglu_sharded_factory
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.utils import sharded_state_dict_default

from vffn_pretrain.config.errors import ConfigError
from vffn_pretrain.model import noise
from vffn_pretrain.model.counting import width_path_form
from vffn_pretrain.model.ffn.balance import attach_aux_loss, switch_balance
from vffn_pretrain.model.ffn.functional import (
    blend_in,
    expected_loops,
    expert_segments,
    fuse,
    fusion_weight,
    gumbel_straight_through,
    mask_units,
    routed_expert_delta,
    router_logits,
    swiglu,
    topk_gates,
)
from vffn_pretrain.model.ffn.recursion import LoopPlan, final_states, mix_states, run_loops
from vffn_pretrain.model.ffn.registry import FFNSlot, register_config_overrides, register_ffn
from vffn_pretrain.model.ffn.stats import FFNStats
from vffn_pretrain.model.kinds import SHARED_WEIGHT_KINDS, traits

log = logging.getLogger(__name__)



class ReplicatedHead(torch.nn.Module):
    """A bias-free d -> n linear map whose weight [n, d] is replicated on every TP rank (router, loop head).

    Called as a module, `head(hidden [..., d]) -> logits [..., n] fp32` (functional.router_logits), so that hooks
    on it run before its weight is read: megatron's DDP with parallel.overlap_param_gather waits for the weight's
    all-gather in a forward pre-hook.

    Initialised with config.init_method from the default generator, which is seeded identically across TP, so
    every TP rank (and a TP=1 run) starts from the same values. Its gradient is kept identical on every TP rank
    (`tp_replicated`, training.optim.finalize_grads): the token-sparse loop plan must be the same on each."""

    def __init__(self, config, in_features: int, out_features: int):
        super().__init__()
        weight = torch.empty(out_features, in_features, dtype=torch.float32)
        if config.perform_initialization:
            config.init_method(weight)
        self.weight = torch.nn.Parameter(weight.to(config.params_dtype))
        # Under SP each TP rank computes this head on its own tokens: megatron's finalize_model_grads
        # all-reduces the gradients of parameters marked like this over the TP group.
        self.weight.sequence_parallel = config.sequence_parallel
        self.weight.tp_replicated = True

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return router_logits(hidden, self.weight)


class _ZeroGradsFor(torch.autograd.Function):
    """Identity on `output`; in the backward pass each parameter in `params` receives a zero gradient (their
    values are not read). Added to whatever gradient the data gave them, it changes nothing, but it makes every
    such parameter get a gradient on every micro-batch: megatron's DDP with parallel.overlap_grad_reduce launches
    a bucket's reduction once its parameters' gradient counts equal those of the first step, and a parameter
    left out on some micro-batches (the router when every token sampled L_max and the balance loss is off, a
    forced loop count) would leave its bucket unreduced: an assertion on one rank, a hang on the others."""

    @staticmethod
    def forward(ctx, output: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ctx.like = [(p.shape, p.dtype, p.device) for p in params]
        return output

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, *[torch.zeros(shape, dtype=dtype, device=device) for shape, dtype, device in ctx.like]


def weight_of(module: torch.nn.Module) -> torch.Tensor:
    """`module.weight` for a matmul outside a call of `module` (the eval path's replicated rows, the sparse width
    path): the module's forward pre-hooks run first, as a call would run them. megatron's DDP with
    parallel.overlap_param_gather waits there for the weight's all-gather; without it the weight may be stale."""
    with_kwargs = getattr(module, "_forward_pre_hooks_with_kwargs", {})
    for hook_id, hook in tuple(module._forward_pre_hooks.items()):
        if hook_id in with_kwargs:
            hook(module, (), {})
        else:
            hook(module, ())
    return module.weight


def in_backward_pass() -> bool:
    """True while autograd's engine runs, i.e. during activation recompute: statistics then are not counted
    twice (the first, no-grad pass of megatron's checkpoint already counted them)."""
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is not None and task() != -1


def token_group(sequence_parallel: bool):
    """The ranks that hold the other tokens of this micro-batch: DP (with CP), and TP under SP."""
    if sequence_parallel:
        return ps.get_tensor_and_data_parallel_group(with_context_parallel=True)
    return ps.get_data_parallel_group(with_context_parallel=True)


def rows(t: torch.Tensor) -> torch.Tensor:
    """[s, b, ...] -> [s * b, 1, ...]: tokens as rows, with the middle dimension megatron's linears expect."""
    return t.reshape(t.shape[0] * t.shape[1], 1, *t.shape[2:])


class VersatileFFN(MLP):
    """The MLP slot for kinds versatile | depth_only | width_only | kloop (one module, the kind picks the paths).

    Input [s, b, h] (s = sequence shard under SP), output ([s, b, h], None) in the input dtype. Parameters:
    linear_fc1 [2*d_ff/TP, h] (this rank's [gate_r ; up_r]), linear_fc2 [h, d_ff/TP], norm [h] and, by kind,
    router [N, h] and loop_head [L_max, h] (replicated).

    Runtime attributes (not checkpointed): `tau` (Gumbel temperature) and `blend` (the blend-in weight s, 1.0
    unless ffn.blend_in_steps is set), both set from the optimizer step by state.set_training_step, `force_loops` (int | None: every token runs exactly this many loops, in training
    and eval, and the loop head is bypassed), `disable_width` (bool: the width path is skipped, lambda = 0).
    """

    def __init__(self, config, submodules: MLPSubmodules, ffn_cfg, norm, tp_group=None, **unused):
        super().__init__(config, submodules, ffn_hidden_size=config.ffn_hidden_size, tp_group=tp_group)
        if ffn_cfg.kind not in SHARED_WEIGHT_KINDS:
            raise ConfigError("ffn.kind", f"VersatileFFN serves {SHARED_WEIGHT_KINDS}, not {ffn_cfg.kind!r}")
        tp_size, tp_rank = self.tp_group.size(), self.tp_group.rank()
        ffn_cfg.validate(config.ffn_hidden_size, tp_size)
        if config.add_bias_linear or not config.gated_linear_unit or config.activation_func is not F.silu:
            raise ConfigError("ffn.kind", "VersatileFFN needs a bias-free SwiGLU FFN (docs/method.md §2)")
        self.ffn_cfg = ffn_cfg
        self.kind = ffn_cfg.kind
        kind_traits = traits(self.kind)
        self.has_width = kind_traits.width_path
        self.adaptive = kind_traits.adaptive_depth
        self.max_loops = kind_traits.loop_count(ffn_cfg)
        self.num_experts = ffn_cfg.num_experts if self.has_width else 0
        self.norm = build_module(norm, config=config, hidden_size=config.hidden_size,
                                 eps=config.layernorm_epsilon)
        if self.has_width:
            self.router = ReplicatedHead(config, config.hidden_size, ffn_cfg.num_experts)
            seg_expert, self.seg_width = expert_segments(config.ffn_hidden_size, ffn_cfg.num_experts,
                                                         tp_rank, tp_size)
            self.register_buffer("seg_expert", seg_expert, persistent=False)
        if self.adaptive:
            self.loop_head = ReplicatedHead(config, config.hidden_size, ffn_cfg.max_loops)
        # Token-sparse recursion reorders a rank's tokens, which megatron's sequence-parallel linears cannot
        # follow (their collectives cut the sequence in place): under SP the all-token path runs instead.
        self.token_sparse = bool(getattr(ffn_cfg, "token_sparse_recursion", False)) and not (
            config.sequence_parallel and tp_size > 1)
        self.tau = float(ffn_cfg.tau0)
        self.blend = 1.0
        self.force_loops: int | None = None
        self.disable_width = False
        self.layer_number = 1
        self.ffn_stats = FFNStats(self.max_loops, self.num_experts)
        # Eval diagnostics of the last forward: tokens that ran each loop, tokens that took the width path.
        self.last_loop_work: list[int] = []
        self.last_width_tokens = 0

    def set_layer_number(self, layer_number: int) -> None:
        """Global 1-based layer number (TransformerLayer calls this); it keys the layer's Gumbel noise."""
        self.layer_number = layer_number

    # ---- forward -------------------------------------------------------------------------------------------

    def forward(self, hidden_states: torch.Tensor, padding_mask=None, **kwargs):
        token_weight = self._token_weight(hidden_states, padding_mask)
        if not self.adaptive:  # k-loop, or width_only's one pass with its width path always on
            out = (self._forward_width_only if self.has_width else self._forward_kloop)(hidden_states, token_weight)
        elif self.training:
            out = self._forward_adaptive_train(hidden_states, token_weight)
        else:
            out = self._forward_adaptive_eval(hidden_states, token_weight)
        heads = [m.weight for m in (getattr(self, "router", None), getattr(self, "loop_head", None)) if m is not None]
        if heads and self.training and torch.is_grad_enabled():
            out = _ZeroGradsFor.apply(out, *heads)
        return out, None

    def _forward_adaptive_train(self, h: torch.Tensor, token_weight: torch.Tensor | None) -> torch.Tensor:
        """versatile / depth_only in training: H [s, b, h] -> Y [s, b, h]."""
        p, counts = self._sample_loops(h)
        plan = self._training_plan(counts)
        x, p = plan.to_plan_order(rows(h)), plan.to_plan_order(p)
        counts, token_weight = plan.to_plan_order(counts), plan.to_plan_order(token_weight)
        states, a1 = run_loops(x, plan, self._loop, keep_free=True)
        y = mix_states(p, states)
        route = balance = None
        lam = torch.zeros(plan.num_rows, device=h.device) if self.has_width else None
        if self._uses_width():
            route = self._route(x)
            lam = fusion_weight(expected_loops(p), self.max_loops)
            y_width = x + self._width_delta(a1, route, plan.width_start)
            y, balance = self._attach_balance_loss(fuse(lam, y_width, y), route, token_weight)
        self._record(counts, lam, route, balance, token_weight, plan)
        return plan.to_natural_order(self._blend_in(states[0].graph, y)).view_as(h)

    @torch.no_grad()
    def _forward_adaptive_eval(self, h: torch.Tensor, token_weight: torch.Tensor | None) -> torch.Tensor:
        """versatile / depth_only in eval: argmax (or forced) loop counts, each token runs its own loops only,
        tokens at L_max skip the width path. Under SP the whole sequence is gathered (a loop's rows span it) and
        this rank's shard cut out of the result. H [s, b, h] -> Y [s, b, h]."""
        x_all = self._gather_sequence(h)
        forced = self._forced_loops()
        counts = (rows(self.loop_head(x_all)).argmax(-1).squeeze(-1) + 1 if forced is None
                  else torch.full((x_all.shape[0] * x_all.shape[1],), forced, dtype=torch.int64, device=h.device))
        plan = LoopPlan.by_loop_count(counts, self.max_loops, width=self._uses_width())
        x = plan.to_plan_order(rows(x_all))
        states, a1 = run_loops(x, plan, self._loop_replicated, keep_free=False)
        y = final_states(states, plan)
        start = plan.width_start
        route = None
        if start < plan.num_rows:
            route = self._route(x[start:])
            lam = fusion_weight(plan.to_plan_order(counts)[start:], self.max_loops)
            y_width = x[start:] + self._width_delta_replicated(a1[start:], route)
            y[start:] = fuse(lam, y_width, y[start:])
        y = self._blend_in(states[0].graph, y)
        self.last_loop_work = [n for n in plan.graph_rows if n]
        self.last_width_tokens = plan.num_rows - start
        self._record_eval(counts, plan, route, token_weight)
        return self._own_shard(plan.to_natural_order(y).view_as(x_all))

    def _forward_kloop(self, h: torch.Tensor, token_weight: torch.Tensor | None) -> torch.Tensor:
        """The k-loop baseline: every token runs ffn.loops loops, no loop head, no width path."""
        z = h1 = self._loop(h)[1]
        for _ in range(self.max_loops - 1):
            z = self._loop(z)[1]
        if not in_backward_pass():
            self._record_all_tokens(h, token_weight)
        return self._blend_in(h1, z)

    def _forward_width_only(self, h: torch.Tensor, token_weight: torch.Tensor | None) -> torch.Tensor:
        """The width-only ablation: the dense FFN always on plus the routed virtual experts,
        Y = H + fc2(a1) + sum_e g_e fc2_e(a1_e) = H + fc2((1 + m) ⊙ a1), one fc2 product (method §12 #19).
        The blend-in H^(1) + s (Y - H^(1)) is H + fc2((1 + s m) ⊙ a1) by linearity: the gates scaled by s."""
        a1 = swiglu(self.linear_fc1(self.norm(h))[0])
        if not self._uses_width():
            y = h + self.linear_fc2(a1)[0]
            if not in_backward_pass():
                self._record_all_tokens(h, token_weight)
            return y
        route = self._route(h)
        gates = route[0] if self.blend >= 1.0 else route[0] * self.blend
        masked = mask_units(a1, self._replicate_gates(gates), self.seg_expert, self.seg_width, offset=1.0)
        y, balance = self._attach_balance_loss(h + self.linear_fc2(masked)[0], route, token_weight)
        self._record(torch.ones(h.shape[:-1], dtype=torch.int64, device=h.device), None, route, balance,
                     token_weight)
        return y

    # ---- loops ---------------------------------------------------------------------------------------------

    def _blend_in(self, h1: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """H^(1) + s (Y - H^(1)) during the blend-in ramp (s = self.blend < 1); Y itself, at no cost, after it."""
        return y if self.blend >= 1.0 else blend_in(h1, y, self.blend)

    def _uses_width(self) -> bool:
        return self.has_width and not self.disable_width

    def _forced_loops(self) -> int | None:
        """`force_loops`, checked against 1..L_max (training and eval)."""
        if self.force_loops is None:
            return None
        run = int(self.force_loops)
        if not 1 <= run <= self.max_loops:
            raise ValueError(f"force_loops={run} is outside 1..{self.max_loops}")
        return run

    def _sample_loops(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training loop counts: (p [T, L] fp32, straight-through one-hot; counts [T] int64 in 1..L), T = s*b
        tokens in row order. With force_loops, p is the constant one-hot of the forced count."""
        forced = self._forced_loops()
        if forced is not None:
            counts = torch.full((h.shape[0] * h.shape[1],), forced, dtype=torch.int64, device=h.device)
            p = torch.zeros(counts.numel(), self.max_loops, device=h.device).scatter_(1, counts[:, None] - 1, 1.0)
            return p, counts
        p, index = gumbel_straight_through(self.loop_head(h), self._noise(h), self.tau)
        return p.reshape(-1, self.max_loops), index.reshape(-1) + 1

    def _training_plan(self, counts: torch.Tensor) -> LoopPlan:
        forced = self._forced_loops()
        if forced is not None:  # no straight-through gradient: the forced loops only, for every token
            return LoopPlan.all_rows(counts.numel(), forced)
        if self.token_sparse:
            return LoopPlan.by_loop_count(counts, self.max_loops, width=self._uses_width())
        return LoopPlan.all_rows(counts.numel(), self.max_loops)

    def _loop(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One residual FFN application through megatron's parallel linears: (a = phi(fc1(norm(z))) on this
        rank's units, z + fc2(a)). z [rows, b, h] (this rank's sequence shard under SP)."""
        a = swiglu(self.linear_fc1(self.norm(z))[0])
        return a, z + self.linear_fc2(a)[0]

    def _loop_replicated(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`_loop` for rows every TP rank holds whole (eval): plain matmuls on this rank's units, fc2's partial
        sums all-reduced over TP. No autograd through the TP collectives."""
        a = swiglu(F.linear(self.norm(z), weight_of(self.linear_fc1)))
        return a, z + self._fc2_replicated(a)

    def _fc2_replicated(self, a: torch.Tensor) -> torch.Tensor:
        out = F.linear(a, weight_of(self.linear_fc2))
        return reduce_from_tensor_model_parallel_region(out, group=self.tp_group) if self.tp_group.size() > 1 \
            else out

    # ---- width path ----------------------------------------------------------------------------------------

    def _route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(gates [..., N] fp32, top-k indices [..., k], router logits [..., N] fp32) of the tokens x."""
        logits = self.router(x)
        gates, top_idx = topk_gates(logits, self.ffn_cfg.top_k)
        return gates, top_idx, logits

    def _width_delta(self, a1: torch.Tensor, route, start: int) -> torch.Tensor:
        """fc2(m ⊙ a1) (method §7) for rows [T, 1, U] of loop 1's activations. Rows [start, T) get a graph; rows
        before `start` (lambda = 0) only a value, which d lambda needs."""
        gates, top_idx, _ = route
        if start == 0:
            return self._expert_delta(a1, gates, top_idx)
        with torch.no_grad():
            head = self._expert_delta(a1[:start].detach(), gates[:start], top_idx[:start])
        if start == a1.shape[0]:
            return head
        return torch.cat([head, self._expert_delta(a1[start:], gates[start:], top_idx[start:])])

    def _expert_delta(self, a1: torch.Tensor, gates: torch.Tensor, top_idx: torch.Tensor) -> torch.Tensor:
        """fc2(m ⊙ a1) through megatron's fc2, in the form `counting.width_path_form` picks for this layout:
        sparse (each expert multiplies only its tokens' slices, k/N of the work; TP=1 on CPU) or masked-dense
        (one GEMM and no host sync, every TP rank doing the same work whatever the routing)."""
        if width_path_form(self.kind, self.tp_group.size(), a1.device.type) == "sparse":
            return self._sparse_expert_delta(a1, gates, top_idx)
        masked = mask_units(a1, self._replicate_gates(gates), self.seg_expert, self.seg_width)
        return self.linear_fc2(masked)[0]

    def _width_delta_replicated(self, a1: torch.Tensor, route) -> torch.Tensor:
        """`_expert_delta` for rows every TP rank holds whole (eval): no gate replication, fc2 all-reduced."""
        gates, top_idx, _ = route
        if width_path_form(self.kind, self.tp_group.size(), a1.device.type) == "sparse":
            return self._sparse_expert_delta(a1, gates, top_idx)
        return self._fc2_replicated(mask_units(a1, gates, self.seg_expert, self.seg_width))

    def _sparse_expert_delta(self, a1, gates, top_idx) -> torch.Tensor:
        if self.config.gradient_accumulation_fusion and torch.is_grad_enabled():
            # Its fc2 product bypasses the linear, so its weight gradient would bypass the fused accumulation
            # into main_grad and be dropped. The sparse form runs on CPU only, fusion on transformer-engine only.
            raise RuntimeError("the sparse width path cannot train with gradient_accumulation_fusion")
        k = top_idx.shape[-1]
        flat_idx = top_idx.reshape(-1, k)
        delta = routed_expert_delta(a1.reshape(-1, a1.shape[-1]), gates.reshape(-1, gates.shape[-1]).gather(
            -1, flat_idx), flat_idx, weight_of(self.linear_fc2), self.num_experts)
        return delta.view(*a1.shape[:-1], -1)

    def _replicate_gates(self, gates: torch.Tensor) -> torch.Tensor:
        """This rank's tokens' gates -> the gates of the tokens fc1 produced activations for (all of the
        sequence under SP), with the backward pass summing the per-rank partial gradients."""
        if self._sp:
            return gather_from_sequence_parallel_region(gates, tensor_parallel_output_grad=True,
                                                        group=self.tp_group)
        if self.tp_group.size() > 1:
            return copy_to_tensor_model_parallel_region(gates, group=self.tp_group)
        return gates

    # ---- balance loss and statistics -----------------------------------------------------------------------

    def _attach_balance_loss(self, y: torch.Tensor, route, token_weight: torch.Tensor | None):
        """(y with the Switch balance loss of this micro-batch joined to its backward pass, the BalanceTerms or
        None). alpha / num_layers per layer (method §12 #6); training only."""
        cfg = self.ffn_cfg
        if not (self.training and cfg.balance_loss and cfg.balance_coeff > 0):
            return y, None
        _, top_idx, logits = route
        n = self.num_experts
        probs = torch.softmax(logits, dim=-1).reshape(-1, n)
        terms = switch_balance(probs, self._assignments(route).reshape(-1, n), cfg.top_k,
                               cfg.balance_coeff / self.config.num_layers, token_group(self._sp), token_weight)
        if torch.is_grad_enabled():
            y = attach_aux_loss(y, terms.attach, self.config)
        return y, terms

    @staticmethod
    def _assignments(route) -> torch.Tensor:
        """1.0 where a token picked an expert in its top-k, else 0 ([..., N] fp32)."""
        _, top_idx, logits = route
        return torch.zeros(logits.shape, dtype=torch.float32, device=logits.device).scatter_(-1, top_idx, 1.0)

    def _record(self, counts, lam, route, balance, token_weight, plan: LoopPlan | None = None) -> None:
        """Training statistics of this rank's tokens (not again in the recompute pass): loop counts [T], lambda,
        expert assignments, the balance loss, and the row-loops run with a graph out of those run."""
        if in_backward_pass():
            return
        expert_counts = None
        if balance is not None:
            expert_counts = balance.counts
        elif route is not None:
            assign = self._assignments(route).reshape(-1, self.num_experts)
            expert_counts = (assign if token_weight is None else assign * token_weight.reshape(-1, 1)).sum(0)
        work = None if plan is None else (plan.loop_work, plan.num_rows * len(plan.graph_rows))
        self.ffn_stats.add(loop_index=counts - 1, lam=lam, expert_counts=expert_counts,
                           balance=None if balance is None else balance.value, token_weight=token_weight,
                           loop_work=work)

    def _record_all_tokens(self, h: torch.Tensor, token_weight) -> None:
        """Statistics of a pass where every token runs `max_loops` loops (kloop, width path off)."""
        self.ffn_stats.add(loop_index=torch.full(h.shape[:-1], self.max_loops - 1, dtype=torch.int64,
                                                 device=h.device), token_weight=token_weight)

    def _record_eval(self, counts: torch.Tensor, plan: LoopPlan, route, token_weight) -> None:
        """Eval statistics of this rank's own tokens only (its sequence shard under SP), so that summing them over
        the token-holding ranks counts every token once. counts are in natural row order; route is of the
        width-path rows (plan order, from plan.width_start)."""
        lo, hi = self._own_rows(counts.numel())
        expert_counts = None
        if self.has_width:
            expert_counts = torch.zeros(self.num_experts, dtype=torch.float32, device=counts.device)
            if route is not None:
                ids = plan.order[plan.width_start:]
                mine = ((ids >= lo) & (ids < hi)).to(torch.float32)
                if token_weight is not None:
                    mine = mine * token_weight.reshape(-1)[(ids - lo).clamp(0, hi - lo - 1)]
                expert_counts = (self._assignments(route).reshape(-1, self.num_experts) * mine[:, None]).sum(0)
        own = counts[lo:hi]
        lam = None
        if self.has_width:
            lam = fusion_weight(own, self.max_loops) if self._uses_width() else torch.zeros(own.shape,
                                                                                            device=own.device)
        self.ffn_stats.add(loop_index=own - 1, lam=lam, expert_counts=expert_counts, token_weight=token_weight)

    # ---- tokens and layout ---------------------------------------------------------------------------------

    @property
    def _sp(self) -> bool:
        return bool(self.config.sequence_parallel) and self.tp_group.size() > 1

    def _gather_sequence(self, h: torch.Tensor) -> torch.Tensor:
        """Under SP, [s/TP, b, h] -> [s, b, h] (no gradient); else h."""
        if not self._sp:
            return h
        return gather_from_sequence_parallel_region(h, tensor_parallel_output_grad=False, group=self.tp_group)

    def _own_rows(self, num_rows: int) -> tuple[int, int]:
        """This rank's rows [lo, hi) of a gathered sequence (all rows without SP)."""
        if not self._sp:
            return 0, num_rows
        share = num_rows // self.tp_group.size()
        return self.tp_group.rank() * share, (self.tp_group.rank() + 1) * share

    def _own_shard(self, y: torch.Tensor) -> torch.Tensor:
        """[s, b, h] of the gathered sequence -> this rank's shard under SP."""
        return y.chunk(self.tp_group.size(), dim=0)[self.tp_group.rank()].contiguous() if self._sp else y

    def _token_weight(self, hidden: torch.Tensor, padding_mask) -> torch.Tensor | None:
        """[s * b] 1.0 for real tokens, 0.0 for padding in row order (padding_mask [b, s_full], True = pad)."""
        if padding_mask is None:
            return None
        weight = (~padding_mask.bool()).transpose(0, 1).to(torch.float32)
        if weight.shape[0] != hidden.shape[0]:  # SP: keep this rank's sequence shard
            weight = weight.chunk(self.tp_group.size(), dim=0)[self.tp_group.rank()]
        return weight.reshape(-1)

    def _noise(self, hidden: torch.Tensor) -> torch.Tensor:
        s, b = hidden.shape[0], hidden.shape[1]
        if self._sp:
            shape = (s * self.tp_group.size(), b, self.max_loops)
            shard = (self.tp_group.rank(), self.tp_group.size())
        else:
            shape, shard = (s, b, self.max_loops), None
        return noise.gumbel_noise(shape, self.layer_number, hidden.device, seq_dim=0, seq_shard=shard)

    # ---- checkpointing -------------------------------------------------------------------------------------

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: dict | None = None):
        """fc1 is saved as the global [gate ; up] (megatron's SwiGLU factory), so it reshards across TP like the
        dense MLP's; the norm and the heads are replicated tensors."""
        singleton = (metadata or {}).get("singleton_local_shards", False)
        out = {}
        for name, module in self._modules.items():
            # tp_group must be explicit: without it megatron gives replicated tensors replica id 0 on every TP
            # rank, and the checkpoint validation rejects the duplicate main replicas.
            sub = sharded_state_dict_default(module, f"{prefix}{name}.", sharded_offsets, metadata,
                                             tp_group=self.tp_group)
            if name == "linear_fc1":
                key = f"{prefix}{name}.weight"
                sub[key] = apply_swiglu_sharded_factory(sub[key], sharded_offsets, singleton)
            out.update(sub)
        return out


def get_no_residual_bda(training: bool, fused: bool):
    """mlp_bda for FFNs that return the whole block output: passes the output through, adds no residual.

    Dropout would hit the residual stream too, so hidden_dropout must be 0 (it is in this project)."""

    def bda(x_with_bias, residual, prob: float):
        out, bias = x_with_bias
        if bias is not None:
            raise ValueError("VersatileFFN has no bias")
        if training and prob > 0:
            raise ValueError("VersatileFFN returns H + ...: hidden_dropout must be 0 after it")
        return out

    return bda


def shared_weight_slot(ffn_cfg, backend) -> FFNSlot:
    mlp = ModuleSpec(
        module=VersatileFFN,
        submodules=MLPSubmodules(linear_fc1=backend.column_parallel_linear,
                                 linear_fc2=backend.row_parallel_linear),
        params={"ffn_cfg": ffn_cfg, "norm": backend.norm},
    )
    return FFNSlot(mlp=mlp, pre_mlp_layernorm=IdentityOp, mlp_bda=get_no_residual_bda)


def validate_shared_weight_kind(ffn_cfg, model_cfg, parallel_cfg) -> dict:
    """Config check at start-up, before any module is built: megatron's build_module re-raises exceptions from
    module constructors with a changed message and type signature, which would lose the ConfigError's key."""
    ffn_cfg.validate(model_cfg.ffn_hidden_size, parallel_cfg.tp)
    if (traits(ffn_cfg.kind).adaptive_depth and ffn_cfg.token_sparse_recursion and parallel_cfg.sp
            and parallel_cfg.tp > 1 and _is_first_rank()):
        log.warning("ffn.token_sparse_recursion is not available with parallel.sp: the all-token path runs "
                    "(same results, every loop's backward paid)")
    return {}


def _is_first_rank() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


for _kind in SHARED_WEIGHT_KINDS:
    register_ffn(_kind)(shared_weight_slot)
    register_config_overrides(_kind)(validate_shared_weight_kind)
