"""`parallel.*` config group: how the world is cut into tensor, pipeline and data parallel ranks."""

from __future__ import annotations

from dataclasses import dataclass

from vffn_pretrain.config.errors import ConfigError
from vffn_pretrain.config.fields import check_fields, setting

AUTO_LAYOUT = "auto"  # parallel.pipeline_layout=auto: planned at start-up (vffn_pretrain.planning.auto)


@dataclass
class ParallelConfig:
    """Validated `parallel.*` keys. DP is whatever is left of the world: world / (tp * pp * cp)."""

    tp: int = setting(1, ge=1)
    pp: int = setting(1, ge=1)
    vpp: int | None = setting(None, ge=1)  # virtual pipeline stages per pipeline rank (interleaved 1F1B)
    sp: bool = False  # sequence parallelism (needs tp > 1)
    cp: int = setting(1, ge=1)  # context parallelism; only 1 is supported for now
    ep: int = setting(1, ge=1)  # expert parallelism (MoE baseline)
    pipeline_layout: str | None = None  # megatron-core layout string, e.g. "Ettt|tttL", or "auto" (planned)
    # pipeline_layout=auto: memory budget per device in GiB (None: unlimited)
    plan_memory_gib: float | None = setting(None, gt=0)
    plan_costs: str | None = None  # pipeline_layout=auto: a `vffn-plan calibrate` JSON (None: analytic costs)
    # pipeline_layout=auto on resume: switch layouts when predicted this much faster
    replan_threshold: float = setting(0.05, ge=0)
    distributed_optimizer: bool = False
    overlap_grad_reduce: bool = False
    overlap_param_gather: bool = False
    # Joining the world and the pre-flight check; then any collective of the run (megatron's default). At most
    # 30 days: beyond that a wait is a hang, and a datetime.timedelta overflows.
    init_timeout_s: float = setting(300.0, gt=0, le=30 * 86400)
    collective_timeout_min: float = setting(30.0, gt=0, le=30 * 1440)
    # megatron's overlap_p2p_comm: "auto" (on with VPP, as Megatron-LM's training defaults), true or false; it
    # picks which code path of the interleaved schedule runs (docs/parallel.md section 8)
    overlap_p2p_comm: bool | str = "auto"

    def validate_static(self) -> None:
        check_fields(self, "parallel")
        if self.vpp is not None and self.vpp > 1 and self.pp < 2:
            raise ConfigError("parallel.vpp", f"virtual pipeline stages need parallel.pp >= 2, got pp={self.pp}")
        if self.sp and self.tp < 2:
            raise ConfigError("parallel.sp", "sequence parallelism needs parallel.tp >= 2")
        if self.cp != 1:
            raise ConfigError("parallel.cp", "context parallelism is not supported yet; use 1")
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
