"""VersatileFFN (spec §2–§8) and the ablations that share its weights: kloop, width_only, depth_only.

One SwiGLU weight set (megatron-core's column-parallel fc1 = per-rank [gate_r ; up_r], row-parallel fc2, no
biases) and one RMSNorm owned by the layer, used by every loop and by the width path. The layer returns the whole
block output Y (every branch already contains its residual H), so the layer spec puts IdentityOp in
pre_mlp_layernorm and a bias-dropout-add that ignores the residual (`get_no_residual_bda`).

Training forward of `versatile` for this rank's tokens H [s, b, h] (s is the sequence shard under SP):
  p = hard Gumbel-softmax(W_loop H; tau), straight-through, fp32 (noise from model/noise.py: the same for a
      token on every TP rank, whatever the layout, and replayed exactly by activation recompute);
  H^(l) = H^(l-1) + fc2(phi(fc1(norm(H^(l-1))))) for l = 1..L_max (all loops, for the straight-through grads);
  Y_width = H + fc2(m ⊙ a1): spec §7, the width path is loop 1's activations a1 masked by the router's top-k
      gates (m_j = g_e on expert e's units), so it needs no second fc1. Under TP it is computed densely (every
      rank does the same work for any routing); at TP=1 sparsely, one matmul per expert on its own tokens;
  lambda = (L_max - sum_l l p_l) / L_max, Y = lambda * Y_width + (1 - lambda) * sum_l p_l H^(l).
The router and loop head see the un-normalised H, are replicated on every TP rank and run on the rank's own
tokens. Under TP their outputs are used on every rank's slice of hidden units, so the gate tensor passes through
copy_to_tensor_model_parallel_region (all-reduce of its gradient) or, under SP, an all-gather along the sequence
(reduce-scatter of the gradient); their weights are marked `sequence_parallel` under SP so megatron sums their
gradients over TP.

Eval (module.eval()) runs `inference.adaptive_inference`: argmax loop counts, per-token early exit, no width
path for tokens at L_max.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
)
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules, apply_swiglu_sharded_factory
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.utils import sharded_state_dict_default

from vffn_pretrain.config_errors import ConfigError
from vffn_pretrain.model import noise
from vffn_pretrain.model.ffn.balance import attach_aux_loss, switch_balance
from vffn_pretrain.model.ffn.functional import (
    expert_segments,
    gumbel_straight_through,
    mask_units,
    mix_states,
    routed_expert_delta,
    router_logits,
    swiglu,
    topk_gates,
)
from vffn_pretrain.model.ffn.registry import FFNSlot, register_config_overrides, register_ffn
from vffn_pretrain.model.ffn.stats import FFNStats

SHARED_WEIGHT_KINDS = ("versatile", "depth_only", "width_only", "kloop")


class ReplicatedHead(torch.nn.Module):
    """A bias-free d -> n linear map whose weight [n, d] is replicated on every TP rank (router, loop head).

    Initialised with config.init_method from the default generator, which is seeded identically across TP, so
    every TP rank (and a TP=1 run) starts from the same values. Only `weight` is used; the caller does the
    matmul in fp32."""

    def __init__(self, config, in_features: int, out_features: int):
        super().__init__()
        weight = torch.empty(out_features, in_features, dtype=torch.float32)
        if config.perform_initialization:
            config.init_method(weight)
        self.weight = torch.nn.Parameter(weight.to(config.params_dtype))
        # Under SP each TP rank computes this head on its own tokens: megatron's finalize_model_grads
        # all-reduces the gradients of parameters marked like this over the TP group.
        self.weight.sequence_parallel = config.sequence_parallel


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


class VersatileFFN(MLP):
    """The MLP slot for kinds versatile | depth_only | width_only | kloop (one module, the kind picks the paths).

    Input [s, b, h] (s = sequence shard under SP), output ([s, b, h], None) in the input dtype. Parameters:
    linear_fc1 [2*d_ff/TP, h] (this rank's [gate_r ; up_r]), linear_fc2 [h, d_ff/TP], norm [h] and, by kind,
    router [N, h] and loop_head [L_max, h] (replicated).

    Runtime attributes (not checkpointed): `tau` (Gumbel temperature, set from the optimizer step by
    state.set_training_step), `force_loops` (int | None: every token runs exactly this many loops, in training
    and eval, and the loop head is bypassed), `disable_width` (bool: the width path is skipped, lambda = 0).
    """

    def __init__(self, config, submodules: MLPSubmodules, ffn_cfg, norm, tp_group=None, **unused):
        super().__init__(config, submodules, ffn_hidden_size=config.ffn_hidden_size, tp_group=tp_group)
        if ffn_cfg.kind not in SHARED_WEIGHT_KINDS:
            raise ConfigError("ffn.kind", f"VersatileFFN serves {SHARED_WEIGHT_KINDS}, not {ffn_cfg.kind!r}")
        tp_size, tp_rank = self.tp_group.size(), self.tp_group.rank()
        ffn_cfg.validate(config.ffn_hidden_size, tp_size)
        if config.add_bias_linear or not config.gated_linear_unit or config.activation_func is not F.silu:
            raise ConfigError("ffn.kind", "VersatileFFN needs a bias-free SwiGLU FFN (spec §2)")
        self.ffn_cfg = ffn_cfg
        self.kind = ffn_cfg.kind
        self.has_width = self.kind in ("versatile", "width_only")
        self.adaptive = self.kind in ("versatile", "depth_only")
        self.max_loops = {"versatile": ffn_cfg.max_loops, "depth_only": ffn_cfg.max_loops,
                          "kloop": ffn_cfg.loops, "width_only": 1}[self.kind]
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
        self.tau = float(ffn_cfg.tau0)
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

    # ---- helpers -------------------------------------------------------------------------------------------

    @property
    def _sp(self) -> bool:
        return bool(self.config.sequence_parallel) and self.tp_group.size() > 1

    def _loop(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One residual FFN application: (a = phi(fc1(norm(z))) on this rank's units, z + fc2(a))."""
        a = swiglu(self.linear_fc1(self.norm(z))[0])
        return a, z + self.linear_fc2(a)[0]

    def _replicate_gates(self, gates: torch.Tensor) -> torch.Tensor:
        """This rank's tokens' gates -> the gates of the tokens fc1 produced activations for (all of the
        sequence under SP), with the backward pass summing the per-rank partial gradients."""
        if self._sp:
            return gather_from_sequence_parallel_region(gates, tensor_parallel_output_grad=True,
                                                        group=self.tp_group)
        if self.tp_group.size() > 1:
            return copy_to_tensor_model_parallel_region(gates, group=self.tp_group)
        return gates

    def _token_weight(self, hidden: torch.Tensor, padding_mask) -> torch.Tensor | None:
        """[s, b] 1.0 for real tokens, 0.0 for padding (megatron's padding_mask [b, s_full], True = pad)."""
        if padding_mask is None:
            return None
        weight = (~padding_mask.bool()).transpose(0, 1).to(torch.float32)
        if weight.shape[0] != hidden.shape[0]:  # SP: keep this rank's sequence shard
            weight = weight.chunk(self.tp_group.size(), dim=0)[self.tp_group.rank()]
        return weight

    def _noise(self, hidden: torch.Tensor) -> torch.Tensor:
        s, b = hidden.shape[0], hidden.shape[1]
        if self._sp:
            shape = (s * self.tp_group.size(), b, self.max_loops)
            shard = (self.tp_group.rank(), self.tp_group.size())
        else:
            shape, shard = (s, b, self.max_loops), None
        return noise.gumbel_noise(shape, self.layer_number, hidden.device, seq_dim=0, seq_shard=shard)

    # ---- forward -------------------------------------------------------------------------------------------

    def forward(self, hidden_states: torch.Tensor, padding_mask=None, **kwargs):
        if self.adaptive and not self.training:
            from vffn_pretrain.model.ffn.inference import adaptive_inference

            return adaptive_inference(self, hidden_states, self._token_weight(hidden_states, padding_mask)), None
        return self._forward_dense_paths(hidden_states, self._token_weight(hidden_states, padding_mask)), None

    def _forward_dense_paths(self, h: torch.Tensor, token_weight: torch.Tensor | None) -> torch.Tensor:
        """Training forward of every kind (and eval of kloop / width_only, which have no randomness)."""
        record = not in_backward_pass()
        use_width = self.has_width and not self.disable_width

        if self.kind == "kloop":
            z = h
            for _ in range(self.max_loops):
                z = self._loop(z)[1]
            if record:
                self._record_fixed(h, token_weight)
            return z

        if self.kind == "width_only":
            a1 = swiglu(self.linear_fc1(self.norm(h))[0])
            if not use_width:
                y = h + self.linear_fc2(a1)[0]
                if record:
                    self._record_fixed(h, token_weight)
                return y
            gates, top_idx, logits = self._route(h)
            # Dense FFN always on plus the routed virtual experts: H + fc2(a1) + sum_e g_e fc2_e(a1_e)
            # = H + fc2((1 + m) ⊙ a1), one fc2 product (spec §12 #19).
            y = h + self.linear_fc2(mask_units(a1, self._replicate_gates(gates), self.seg_expert,
                                               self.seg_width, offset=1.0))[0]
            y = self._balance_and_stats(y, logits, top_idx, token_weight, record, lam=None, loop_index=None)
            return y

        # versatile / depth_only
        num_loops = self.max_loops
        if self.force_loops is not None:
            run = int(self.force_loops)
            if not 1 <= run <= num_loops:
                raise ValueError(f"force_loops={run} is outside 1..{num_loops}")
            loop_index = torch.full(h.shape[:-1], run - 1, dtype=torch.int64, device=h.device)
            p = F.one_hot(loop_index, num_loops).to(torch.float32)
        else:
            run = num_loops  # every loop, for the straight-through gradient of every p_l (spec §4.3)
            logits = router_logits(h, self.loop_head.weight)
            p, loop_index = gumbel_straight_through(logits, self._noise(h), self.tau)

        states, z, a1 = [], h, None
        for i in range(run):
            a, z = self._loop(z)
            if i == 0:
                a1 = a
            states.append(z)
        y_depth = mix_states(p[..., :run], states)

        if self.kind == "depth_only" or not use_width:
            if record:
                lam = None if self.kind == "depth_only" else torch.zeros(h.shape[:-1], device=h.device)
                self.ffn_stats.add(loop_index=loop_index, lam=lam, token_weight=token_weight)
            return y_depth

        gates, top_idx, logits = self._route(h)
        y_width = h + self._width_delta(a1, gates, top_idx)
        steps = torch.arange(1, num_loops + 1, device=h.device, dtype=torch.float32)
        lam = ((num_loops - (p * steps).sum(-1, keepdim=True)) / num_loops)  # exact in the forward pass
        if y_width.dtype == torch.float32:
            y = lam * y_width + (1 - lam) * y_depth
        else:  # mix in fp32, round once
            y = (lam * y_width.float() + (1 - lam) * y_depth.float()).to(y_width.dtype)
        return self._balance_and_stats(y, logits, top_idx, token_weight, record, lam=lam.squeeze(-1),
                                       loop_index=loop_index)

    def _width_delta(self, a1: torch.Tensor, gates: torch.Tensor, top_idx: torch.Tensor) -> torch.Tensor:
        """fc2(m ⊙ a1) of spec §7 for this rank's tokens ([s, b, h]).

        TP=1: sparse, each expert multiplies only its tokens' slices (k/N of the work). TP>1: masked-dense, so
        every rank does the same work whatever the routing (a sparse form would load the ranks that hold the
        popular experts); the gates are replicated onto the tokens fc1 ran on (all of the sequence under SP)."""
        if self.tp_group.size() == 1:
            k = top_idx.shape[-1]
            delta = routed_expert_delta(a1.reshape(-1, a1.shape[-1]), gates.gather(-1, top_idx).reshape(-1, k),
                                        top_idx.reshape(-1, k), self.linear_fc2.weight, self.num_experts)
            return delta.view(*a1.shape[:-1], -1)
        masked = mask_units(a1, self._replicate_gates(gates), self.seg_expert, self.seg_width)
        return self.linear_fc2(masked)[0]

    def _record_fixed(self, h: torch.Tensor, token_weight) -> None:
        """Statistics of a pass where every token runs `max_loops` loops (kloop, width path off)."""
        index = torch.full(h.shape[:-1], self.max_loops - 1, dtype=torch.int64, device=h.device)
        self.ffn_stats.add(loop_index=index, token_weight=token_weight)

    def _route(self, h: torch.Tensor):
        logits = router_logits(h, self.router.weight)
        gates, top_idx = topk_gates(logits, self.ffn_cfg.top_k)
        return gates, top_idx, logits

    def _balance_and_stats(self, y, logits, top_idx, token_weight, record, *, lam, loop_index):
        cfg = self.ffn_cfg
        n = self.num_experts
        assign = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device).scatter_(-1, top_idx, 1.0)
        flat_w = None if token_weight is None else token_weight.reshape(-1)
        balance_value = None
        counts = None
        grad = torch.is_grad_enabled() and self.training
        if self.training and cfg.balance_loss and cfg.balance_coeff > 0 and (grad or record):
            probs = torch.softmax(logits, dim=-1).reshape(-1, n)
            # alpha / num_layers: the per-layer losses are averaged over the model's layers (spec §12 #6)
            terms = switch_balance(probs, assign.reshape(-1, n), cfg.top_k, cfg.balance_coeff / self.config.num_layers,
                                   token_group(self._sp), flat_w)
            if grad:
                y = attach_aux_loss(y, terms.attach, self.config)
            balance_value, counts = terms.value, terms.counts
        if record:
            if counts is None:
                a = assign.reshape(-1, n)
                counts = (a if flat_w is None else a * flat_w.unsqueeze(-1)).sum(0)
            if loop_index is None:  # width_only: one pass for every token
                loop_index = torch.zeros(y.shape[:-1], dtype=torch.int64, device=y.device)
            self.ffn_stats.add(loop_index=loop_index, lam=lam, expert_counts=counts, balance=balance_value,
                               token_weight=token_weight)
        return y

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
    return {}


for _kind in SHARED_WEIGHT_KINDS:
    register_ffn(_kind)(shared_weight_slot)
    register_config_overrides(_kind)(validate_shared_weight_kind)
