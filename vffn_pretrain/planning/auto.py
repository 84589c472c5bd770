"""`parallel.pipeline_layout=auto`: plan the layout at start-up, before the model is built.

The planner sees the run's layers with the costs of `parallel.plan_costs` (a `vffn-plan calibrate` JSON) or,
when null, analytic costs (H100 figures with a GPU, a CPU/gloo profile without), and loop mixes from, in order:
the checkpoint the run resumes from (its loop_stats.json), the latest stats record in run_dir/metrics.jsonl, or
uniform mixes (what tau0 gives before training).

On resume, the checkpoint also names the layout it was trained with. The run keeps that layout unless the plan
for the checkpoint's loop mixes is predicted faster than it by more than `parallel.replan_threshold` (a fraction,
5% by default), or it no longer fits (another PP/VPP, layer count or memory budget); then the run switches to the
plan (distributed checkpoints load into any layout) and says so in one line. Switching has a cost (the RNG
states are not restored across layouts), hence the threshold. The trainer's own recompute setting applies to every
stage (the planner's per-stage recompute is not used). The result is an ordinary layout string, validated and
turned into parallel.vpp like one written by hand.

Config loading never plans: the trainer calls `resolve_auto_layout` on rank 0 once the process group exists and
broadcasts the layout (or the error), so every rank runs the same layout even when their views of
`checkpoint.dir` differ (a shared file system's cached listing, say).
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

from vffn_pretrain.config.errors import ConfigError
from vffn_pretrain.parallel.config import AUTO_LAYOUT
from vffn_pretrain.planning import loops, planner

log = logging.getLogger(__name__)

AUTO = AUTO_LAYOUT


def plan_request(model, ffn, parallel, train, system, world_size: int, metrics: Path | None,
                 checkpoint: Path | None = None) -> planner.PlanRequest:
    """The planner's request for these validated config groups (dp from the world size); loop mixes from the
    `checkpoint` directory's loop_stats.json when given, else from `metrics` (a metrics.jsonl) when it exists,
    else uniform. The schedule is the one the run will use (parallel.overlap_p2p_comm). Every input is checked
    first: ConfigError naming parallel.plan_costs, parallel.plan_memory_gib or the statistics file at fault."""
    from vffn_pretrain.planning.cli import build_request

    budget = parallel.plan_memory_gib
    costs = parallel.plan_costs
    if costs is not None and not (isinstance(costs, str) and costs):
        raise ConfigError("parallel.plan_costs", f"must be null or the path of a calibration file, got {costs!r}")
    args = SimpleNamespace(metrics=str(metrics) if metrics and metrics.exists() else None, metrics_optional=True,
                           micro_batches=None, checkpoint=str(checkpoint) if checkpoint else None,
                           dp=parallel.data_parallel_size(world_size), calibration=costs,
                           device=_this_device(), memory_gib=budget, bytes_per_param=planner.BYTES_PER_PARAM,
                           shared_cores=None)
    rename = {"--calibration": "parallel.plan_costs", "--metrics": str(metrics), "--checkpoint": str(checkpoint)}
    try:
        req, _ = build_request(SimpleNamespace(model=model, ffn=ffn, parallel=parallel, train=train, system=system),
                               args)
    except ConfigError as e:
        if e.key in rename:
            raise ConfigError(rename[e.key], str(e).split(": ", 1)[-1]) from None
        raise
    if system.recompute_granularity == "full":
        req.items = [i.with_recompute("full") if i.symbol == "t" else i for i in req.items]
    req.allow_recompute = False
    return req


def _this_device() -> str:
    """The analytic cost profile for this machine: H100 figures with a GPU, the CPU profile without."""
    import torch

    return "H100" if torch.cuda.is_available() else "cpu"


def resolve_auto_layout(cfg) -> str | None:
    """The layout a run with `parallel.pipeline_layout=auto` runs (None at parallel.pp=1), planned for the
    checkpoint this run resumes from (`cfg` is a validated RunConfig). Not collective: the trainer calls it on
    rank 0 only. Raises ConfigError naming the key when no layout can be planned."""
    from vffn_pretrain.training.checkpointing import CheckpointManager

    resume_from = CheckpointManager(cfg.checkpoint_dir).latest() if cfg.checkpoint.resume else None
    return auto_layout(cfg.model, cfg.ffn, cfg.parallel, cfg.train, cfg.system, cfg.world_size, cfg.run_dir,
                       resume_from)


def auto_layout(model, ffn, parallel, train, system, world_size: int, run_dir: Path,
                resume_from: Path | None = None) -> str | None:
    """The layout string to run (None at parallel.pp=1: nothing to split). Logs the decision in one line.
    resume_from: the checkpoint directory this run will resume from, if any (its loop statistics and layout
    decide whether to replan). Raises ConfigError naming parallel.pp / parallel.plan_memory_gib when no layout
    can be planned."""
    if parallel.pp == 1:
        log.info("parallel.pipeline_layout=auto: parallel.pp=1, no pipeline to plan")
        return None
    metrics = Path(run_dir) / "metrics.jsonl"
    saved = _saved_stats(model, ffn, resume_from) if resume_from else None
    req = plan_request(model, ffn, parallel, train, system, world_size, metrics, resume_from if saved else None)
    try:
        best = planner.plan(req)
    except planner.PlanError as e:
        key = "parallel.plan_memory_gib" if e.key == "memory budget" else e.key
        raise ConfigError(key, str(e).split(": ", 1)[-1]) from None
    if saved:
        source = f"loop mixes of {resume_from} (step {saved['step']})"
        layout, reason = replan_decision(req, best, saved["pipeline_layout"], parallel.replan_threshold)
        log.info("parallel.pipeline_layout=auto: %s | %s | %s, %s", layout, reason, source, req.timing.source)
        return layout
    even = planner.evaluate(req, planner.even_split(req.num_layers, req.chunks))
    source = f"loop mixes of {metrics}" if metrics.exists() else "uniform loop mixes"
    log.info("parallel.pipeline_layout=auto: %s | predicted step %.4g s, bubble %.1f%%, peak %.2f GiB | even split "
             "%s: %.4g s | %s, %s, %d micro-batches", best.layout, best.step_time, 100 * best.sim.bubble,
             max(best.memory) / 2**30, even.layout, even.step_time, source, req.timing.source, req.m)
    return best.layout


def _saved_stats(model, ffn, checkpoint: Path) -> dict | None:
    """The checkpoint's loop statistics (None for an older checkpoint without them); ConfigError naming its file
    when they are damaged or of another model."""
    from vffn_pretrain.model.shapes import ffn_shapes

    shapes = ffn_shapes(ffn, model.num_layers)
    shapes = shapes if isinstance(shapes, list) else [shapes] * model.num_layers
    try:
        return loops.checkpoint_loop_stats(checkpoint, [s.max_loops if s.traits.adaptive_depth else None
                                                        for s in shapes])
    except loops.LoopStatsError as e:
        raise ConfigError(str(Path(checkpoint) / loops.LOOP_STATS_FILE), str(e)) from None


def replan_decision(req: planner.PlanRequest, best: planner.Plan, saved_layout: str | None,
                    threshold: float) -> tuple[str, str]:
    """(layout to run, why) on resume: the checkpoint's `saved_layout` unless `best` is predicted faster by
    more than `threshold` (a fraction), or the saved layout does not fit this request (other PP/VPP or layer
    count, or over the memory budget)."""
    try:
        cuts = planner.layout_cuts(saved_layout or "", req.num_layers, req.p)
        current = planner.evaluate_cuts(req, cuts) if len(cuts) == req.chunks + 1 else None
    except (planner.PlanError, ValueError):
        current = None
    if current is None:
        return best.layout, (f"replanned: the checkpoint's layout {saved_layout!r} does not fit "
                             f"pp={req.p} x vpp={req.v} and {req.num_layers} layers")
    if not current.feasible:
        return best.layout, (f"replanned: the checkpoint's layout {saved_layout} needs "
                             f"{max(current.memory) / 2**30:.2f} GiB, over parallel.plan_memory_gib")
    gain = current.step_time / best.step_time - 1
    if best.layout != current.layout and gain > threshold:
        return best.layout, (f"replanned from {current.layout}: predicted step {best.step_time:.4g} s vs "
                             f"{current.step_time:.4g} s, {gain:.1%} faster (parallel.replan_threshold="
                             f"{threshold:g})")
    return current.layout, (f"kept the checkpoint's layout: the plan {best.layout} would be {gain:.1%} faster, "
                            f"not more than parallel.replan_threshold={threshold:g}")
