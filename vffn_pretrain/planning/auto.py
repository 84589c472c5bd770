"""`parallel.pipeline_layout=auto`: plan the layout at start-up, before the model is built.

The planner sees the run's layers with the costs of `parallel.plan_costs` (a `vffn-plan calibrate` JSON) or,
when null, analytic costs (H100 figures with a GPU, a CPU/gloo profile without), and the loop mixes of the latest stats record in run_dir/metrics.jsonl when the run has one (a resumed
run), else uniform mixes (what tau0 gives before training). The trainer's own recompute setting applies to every
stage (the planner's per-stage recompute is not used). The result is an ordinary layout string, validated and
turned into parallel.vpp like one written by hand. Every rank plans from the same inputs, so all agree.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

from vffn_pretrain.config_errors import ConfigError
from vffn_pretrain.planning import planner

log = logging.getLogger(__name__)

AUTO = "auto"


def plan_request(model, ffn, parallel, train, system, world_size: int,
                 metrics: Path | None) -> planner.PlanRequest:
    """The planner's request for these validated config groups (dp from the world size)."""
    from vffn_pretrain.planning.cli import build_request

    chunks = parallel.pp * (parallel.effective_vpp or 1)
    if chunks > model.num_layers:
        raise ConfigError("parallel.pp", f"parallel.pp x parallel.vpp = {chunks} pipeline chunks for "
                                         f"{model.num_layers} layers (model.num_layers); each chunk needs a layer")
    budget = parallel.plan_memory_gib
    if budget is not None and not budget > 0:
        raise ConfigError("parallel.plan_memory_gib", f"must be null or positive, got {budget!r}")
    args = SimpleNamespace(metrics=str(metrics) if metrics and metrics.exists() else None, micro_batches=None,
                           dp=parallel.data_parallel_size(world_size), calibration=parallel.plan_costs,
                           device=_this_device(),
                           memory_gib=budget, bytes_per_param=planner.BYTES_PER_PARAM)
    try:
        req, _ = build_request(SimpleNamespace(model=model, ffn=ffn, parallel=parallel, train=train, system=system),
                               args)
    except ConfigError as e:
        if e.key == "--calibration":
            raise ConfigError("parallel.plan_costs", str(e).split(": ", 1)[-1]) from None
        raise
    if system.recompute_granularity == "full":
        req.items = [i.with_recompute("full") if i.symbol == "t" else i for i in req.items]
    req.allow_recompute = False
    return req


def _this_device() -> str:
    """The analytic cost profile for this machine: H100 figures with a GPU, the CPU profile without."""
    import torch

    return "H100" if torch.cuda.is_available() else "cpu"


def auto_layout(model, ffn, parallel, train, system, world_size: int, run_dir: Path) -> str | None:
    """The planned layout string (None at parallel.pp=1: nothing to split). Logs the plan in one line.
    Raises ConfigError naming parallel.pp / parallel.plan_memory_gib when no layout can be planned."""
    if parallel.pp == 1:
        log.info("parallel.pipeline_layout=auto: parallel.pp=1, no pipeline to plan")
        return None
    metrics = Path(run_dir) / "metrics.jsonl"
    req = plan_request(model, ffn, parallel, train, system, world_size, metrics)
    try:
        best = planner.plan(req)
    except planner.PlanError as e:
        key = "parallel.plan_memory_gib" if e.key == "memory budget" else e.key
        raise ConfigError(key, str(e).split(": ", 1)[-1]) from None
    even = planner.evaluate(req, planner.even_split(req.num_layers, req.chunks))
    source = f"loop mixes of {metrics}" if metrics.exists() else "uniform loop mixes"
    log.info("parallel.pipeline_layout=auto: %s | predicted step %.4g s, bubble %.1f%%, peak %.2f GiB | even split "
             "%s: %.4g s | %s, %s, %d micro-batches", best.layout, best.step_time, 100 * best.sim.bubble,
             max(best.memory) / 2**30, even.layout, even.step_time, source, req.timing.source, req.m)
    return best.layout
