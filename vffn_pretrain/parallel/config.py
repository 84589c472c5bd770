"""`parallel.*` config group: how the world is cut into tensor, pipeline and data parallel ranks."""

from __future__ import annotations

from dataclasses import dataclass

from vffn_pretrain.config.errors import ConfigError

AUTO_LAYOUT = "auto"  # parallel.pipeline_layout=auto: planned at start-up (vffn_pretrain.planning.auto)


@dataclass
class ParallelConfig:
    """Validated `parallel.*` keys. DP is whatever is left of the world: world / (tp * pp * cp)."""

    tp: int = 1
    pp: int = 1
    vpp: int | None = None  # virtual pipeline stages per pipeline rank (interleaved 1F1B)
    sp: bool = False  # sequence parallelism (needs tp > 1)
    cp: int = 1  # context parallelism; only 1 is supported for now
    ep: int = 1  # expert parallelism (MoE baseline)
    pipeline_layout: str | None = None  # megatron-core layout string, e.g. "Ettt|tttL", or "auto" (planned)
    plan_memory_gib: float | None = None  # pipeline_layout=auto: memory budget per device (None: unlimited)
    plan_costs: str | None = None  # pipeline_layout=auto: a `vffn-plan calibrate` JSON (None: analytic costs)
    replan_threshold: float = 0.05  # pipeline_layout=auto on resume: switch layouts when predicted this much faster
    distributed_optimizer: bool = False
    overlap_grad_reduce: bool = False
    overlap_param_gather: bool = False
    init_timeout_s: float = 300.0  # joining the world and the pre-flight check
    collective_timeout_min: float = 30.0  # any collective of the run after start-up (megatron's default)
    # megatron's overlap_p2p_comm: "auto" (on with VPP, as Megatron-LM's training defaults), true or false; it
    # picks which code path of the interleaved schedule runs (docs/parallel.md section 8)
    overlap_p2p_comm: bool | str = "auto"

    def validate_static(self) -> None:
        for key in ("tp", "pp", "cp", "ep"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"parallel.{key}", f"must be a positive integer, got {value!r}")
        if self.vpp is not None and (not isinstance(self.vpp, int) or self.vpp < 1):
            raise ConfigError("parallel.vpp", f"must be null or a positive integer, got {self.vpp!r}")
        if self.vpp is not None and self.vpp > 1 and self.pp < 2:
            raise ConfigError("parallel.vpp", f"virtual pipeline stages need parallel.pp >= 2, got pp={self.pp}")
        if self.sp and self.tp < 2:
            raise ConfigError("parallel.sp", "sequence parallelism needs parallel.tp >= 2")
        if self.cp != 1:
            raise ConfigError("parallel.cp", "context parallelism is not supported yet; use 1")
        for key in ("init_timeout_s", "collective_timeout_min"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"parallel.{key}", f"must be a positive number, got {value!r}")
        value = self.replan_threshold
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise ConfigError("parallel.replan_threshold", f"must be a finite number >= 0, got {value!r}")
        budget = self.plan_memory_gib
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                                   or not 0 < budget < float("inf")):
            raise ConfigError("parallel.plan_memory_gib", f"must be null or a positive finite number, got {budget!r}")
        if not (self.overlap_p2p_comm == "auto" or isinstance(self.overlap_p2p_comm, bool)):
            raise ConfigError("parallel.overlap_p2p_comm", f"must be auto, true or false, got {self.overlap_p2p_comm!r}")
        if self.overlap_param_gather and not self.distributed_optimizer:
            raise ConfigError("parallel.overlap_param_gather", "needs parallel.distributed_optimizer=true")

    def data_parallel_size(self, world_size: int) -> int:
        model_parallel = self.tp * self.pp * self.cp
        if world_size % model_parallel != 0:
            raise ConfigError(
                "parallel.tp",
                f"world size {world_size} is not divisible by parallel.tp x parallel.pp x parallel.cp "
                f"= {self.tp} x {self.pp} x {self.cp} = {model_parallel}",
            )
        dp = world_size // model_parallel
        if self.ep > 1 and (dp * self.cp) % self.ep != 0:
            raise ConfigError("parallel.ep", f"expert parallel size {self.ep} must divide DP x CP = {dp * self.cp}")
        return dp

    @property
    def effective_vpp(self) -> int | None:
        return self.vpp if self.vpp and self.vpp > 1 else None

    @property
    def p2p_overlap(self) -> bool:
        """The overlap_p2p_comm megatron runs with: `auto` is on exactly when VPP is."""
        if self.overlap_p2p_comm == "auto":
            return self.pp > 1 and self.effective_vpp is not None
        return bool(self.overlap_p2p_comm)

    def validate_schedule(self, micro_batches: int) -> None:
        """Refuse what megatron's pipeline schedules would refuse at the first step (`pipeline_rules`), given the
        micro-batches per step (train.global_batch_size / (train.micro_batch_size x DP)); needs parallel.vpp
        final (after the layout is read)."""
        from vffn_pretrain.parallel.pipeline_rules import interleaving_problem, overlap_problem

        vpp = self.effective_vpp or 1
        if self.overlap_p2p_comm is True and overlap_problem(self.pp, vpp, True):
            raise ConfigError("parallel.overlap_p2p_comm", overlap_problem(self.pp, vpp, True))
        problem = interleaving_problem(self.pp, vpp, micro_batches)
        if problem:
            raise ConfigError("train.global_batch_size", f"{micro_batches} micro-batches per step "
                                                         f"(train.global_batch_size / (train.micro_batch_size x DP)): "
                                                         f"{problem}")
