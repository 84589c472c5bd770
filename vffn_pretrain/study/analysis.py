"""Every number of the study report, as plain data (what report.json holds).

Arms (a run's ``phase``): ``continued`` (variants continued from the dense base, the paper's Tables 1 and 3),
``scratch`` (trained from scratch for the base's tokens, the paper's Table 5; the base_variant's row is the base
itself) and ``scratch_long`` (from scratch for base + continued tokens, the tokens a continued run has seen in
all), plus the ``base`` row. Within an arm every variant is compared with the dense run of the same arm and seed
(same initial shared weights, same data order), in three losses (collect.py): ``val`` (held-out, eval mode: the
primary metric), ``val_train_mode`` (held-out, loops sampled as in training) and ``train`` (the training loss of
the last 5% of steps: the paper's metric).

A difference is given as its mean, the 95% t-interval of the paired per-seed differences and how many seeds
point each way; the paired t-test's p-value comes with it. With 3 seeds the test has 2 degrees of freedom and
rests on a normality that 3 points cannot check: the sign count and the interval say more.
"""

from __future__ import annotations

from vffn_pretrain.study.collect import RunResult
from vffn_pretrain.study.stats import PairedTest, paired_t, summarize

# The paper's row names (variants, not FFN kinds): the reference every arm is compared with, and the MoE row.
REFERENCE, MOE = "dense", "moe"
ARMS = ("base", "continued", "scratch", "scratch_long")
METRICS = {
    "val": "held-out loss, eval mode (argmax loops)",
    "val_train_mode": "held-out loss, train mode (sampled loops)",
    "train": "training loss, last 5% of steps (train mode; the paper's metric)",
}
# The paper's 354M losses (docs/method.md §10): Tables 1 and 3 for the continued arm, Table 5 for from scratch
# ("dense" there is the base, trained for the same 40B tokens).
PAPER_LOSS_354M = {
    "base": {"dense": 2.779},
    "continued": {"dense": 2.654, "kloop2": 2.631, "kloop4": 2.625, "kloop6": 2.623, "moe": 2.585,
                  "versatile": 2.617, "width_only": 2.633, "depth_only": 2.629},
    "scratch": {"dense": 2.779, "moe": 2.639, "kloop4": 2.641, "versatile": 2.654},
}
CHAIN = ("versatile", "kloop6", "kloop4", "kloop2", "dense")
TABLE3 = (("versatile", "depth_only"), ("versatile", "width_only"), ("depth_only", "width_only"),
          ("width_only", "dense"), ("depth_only", "dense"))
TABLE5 = (("moe", "kloop4"), ("kloop4", "versatile"))  # the paper's from-scratch loss order: MoE < 4-loop < VFFN
BLEND_SUFFIX = "_blend"
ALPHA = 0.05
GAP_FROM = 0.25  # the gap's change is measured from this share of the phase to its end


def metric(run: RunResult, name: str) -> float | None:
    return {"val": run.final_val_loss, "val_train_mode": run.final_val_loss_train_mode,
            "train": run.train_loss_end}[name]


def arms(results: list[RunResult], base_variant: str = REFERENCE) -> dict[str, dict[str, list[RunResult]]]:
    """{arm: {variant: finished runs}}; the base is also the base_variant's row of the scratch arm (it is that
    variant trained from scratch for base_steps), when the scratch arm has any other variant."""
    out: dict[str, dict[str, list[RunResult]]] = {arm: {} for arm in ARMS}
    for r in results:
        if r.finished:
            out[r.phase].setdefault(REFERENCE if r.phase == "base" else r.variant, []).append(r)
    if out["scratch"] and REFERENCE in out["base"]:
        out["scratch"] = {base_variant: out["base"][REFERENCE], **out["scratch"]}
    return {arm: groups for arm, groups in out.items() if groups}


def paired(a: list[RunResult], b: list[RunResult], name: str = "val") -> PairedTest | None:
    """Paired test of a's metric against b's over the seeds both have a value for."""
    va = {r.seed: metric(r, name) for r in a if metric(r, name) is not None}
    vb = {r.seed: metric(r, name) for r in b if metric(r, name) is not None}
    seeds = sorted(set(va) & set(vb))
    return paired_t([va[s] for s in seeds], [vb[s] for s in seeds]) if seeds else None


def _test_dict(test: PairedTest | None) -> dict | None:
    if test is None:
        return None
    return {"n": test.n, "mean_diff": test.mean_diff, "ci95": test.ci95, "lo": test.lo, "hi": test.hi,
            "t": test.t, "p": test.p, "above": test.above, "below": test.below,
            "significant": test.significant(ALPHA)}


def _summary(values: list[float]) -> dict | None:
    if not values:
        return None
    s = summarize(values)
    return {"n": s.n, "mean": s.mean, "std": s.std, "ci95": s.ci95, "lo": s.lo, "hi": s.hi}


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _row(arm: str, variant: str, runs: list[RunResult], ref: list[RunResult] | None, dense_flops) -> dict:
    runs = sorted(runs, key=lambda r: r.seed)
    per_seed = {str(r.seed): {"val": r.final_val_loss, "val_train_mode": r.final_val_loss_train_mode,
                              "train": r.train_loss_end, "start": r.start_val_loss} for r in runs}
    row = {
        "arm": arm, "variant": variant, "kind": runs[0].kind, "seeds": [r.seed for r in runs],
        "steps": runs[0].steps, "per_seed": per_seed,
        "loss": _summary([r.final_val_loss for r in runs]),
        "ppl": _summary([r.final_val_ppl for r in runs]),
        "val_train_mode": _summary([r.final_val_loss_train_mode for r in runs
                                    if r.final_val_loss_train_mode is not None]),
        "train_loss": _summary([r.train_loss_end for r in runs if r.train_loss_end is not None]),
        "start_loss": _mean([r.start_val_loss for r in runs]),
        "mean_loops": _mean([r.mean_loops for r in runs]),
        "width_fraction": _mean([r.width_fraction for r in runs]),
        "flops_train": _mean([r.flops_train for r in runs]),
        "flops_eval": _mean([r.flops_eval for r in runs]),
        "wall_time_s": _mean([r.wall_time_s for r in runs]),  # the machine's load as much as the variant's cost
        "paper_loss_354m": PAPER_LOSS_354M.get(arm, {}).get(variant),
        "vs_dense": None, "vs_dense_train_mode": None, "vs_dense_train": None, "start_vs_dense": None,
    }
    if dense_flops:
        row["flops_train_vs_dense"] = None if row["flops_train"] is None else row["flops_train"] / dense_flops[0]
        row["flops_eval_vs_dense"] = None if row["flops_eval"] is None else row["flops_eval"] / dense_flops[1]
    if ref is not None and variant != REFERENCE:
        row["vs_dense"] = _test_dict(paired(runs, ref))
        row["vs_dense_train_mode"] = _test_dict(paired(runs, ref, "val_train_mode"))
        row["vs_dense_train"] = _test_dict(paired(runs, ref, "train"))
        starts = {r.seed: r.start_val_loss for r in ref}
        diffs = [r.start_val_loss - starts[r.seed] for r in runs
                 if r.start_val_loss is not None and starts.get(r.seed) is not None]
        row["start_vs_dense"] = _mean(diffs) if diffs else None
    return row


def gap_curve(runs: list[RunResult], ref: list[RunResult]) -> list[dict]:
    """Per evaluation step that every paired seed has: the mean of the per-seed differences to dense in held-out
    loss (eval mode), their range and the number of seeds."""
    ref_curves = {r.seed: dict(r.curve) for r in ref}
    pairs = [(dict(r.curve), ref_curves[r.seed]) for r in runs if r.seed in ref_curves]
    if not pairs:
        return []
    steps = sorted(set.intersection(*[set(a) & set(b) for a, b in pairs]))
    out = []
    for step in steps:
        diffs = [a[step] - b[step] for a, b in pairs]
        out.append({"step": step, "mean": sum(diffs) / len(diffs), "min": min(diffs), "max": max(diffs),
                    "n": len(diffs)})
    return out


def gap_change(runs: list[RunResult], ref: list[RunResult], steps: int) -> dict | None:
    """How the gap to dense moved over the phase: per seed, gap(end) - gap(at GAP_FROM of the phase, the nearest
    evaluation), paired over seeds (negative: the gap shrank). None without both points."""
    ref_curves = {r.seed: dict(r.curve) for r in ref}
    early, late = [], []
    for r in runs:
        a, b = dict(r.curve), ref_curves.get(r.seed)
        if b is None:
            continue
        common = sorted(set(a) & set(b))
        if len(common) < 2:
            continue
        start = min(common, key=lambda s: abs(s - GAP_FROM * steps))
        if start == common[-1]:
            continue
        early.append(a[start] - b[start])
        late.append(a[common[-1]] - b[common[-1]])
    if not early:
        return None
    test = paired_t(late, early)
    return {"from_step": round(GAP_FROM * steps), "gap_from": sum(early) / len(early),
            "gap_end": sum(late) / len(late), "change": _test_dict(test)}


def analyse(results: list[RunResult], meta: dict | None = None) -> dict:
    """The rows of every arm, the claims, the gap curves, and what is missing."""
    meta = meta or {}
    groups = arms(results, meta.get("base_variant", REFERENCE))
    dense_runs = groups.get("continued", {}).get(REFERENCE) or groups.get("base", {}).get(REFERENCE) or []
    dense_flops = ((_mean([r.flops_train for r in dense_runs]), _mean([r.flops_eval for r in dense_runs]))
                   if dense_runs and dense_runs[0].flops_train else None)
    rows = []
    for arm, variants in groups.items():
        ref = groups["continued"].get(REFERENCE) if arm == "base" else variants.get(REFERENCE)
        for variant, runs in variants.items():
            rows.append(_row(arm, variant, runs, ref, dense_flops))
    gaps = {}
    for arm in ("continued", "scratch_long"):
        variants = groups.get(arm, {})
        if REFERENCE in variants:
            gaps[arm] = {v: {"curve": gap_curve(runs, variants[REFERENCE]),
                             "change": gap_change(runs, variants[REFERENCE], runs[0].steps)}
                         for v, runs in variants.items() if v != REFERENCE}
    return {"rows": rows, "claims": claims(groups), "gaps": gaps, "metrics": METRICS, "alpha": ALPHA,
            "missing": [r.name for r in results if not r.finished]}


def claims(groups: dict) -> list[dict]:
    """"A < B" statements (lower loss is better): the paper's orderings, the blend-in's effect, the from-scratch
    arm, each checked in the means and by the paired differences."""
    out = []
    cont = groups.get("continued", {})

    def claim(a: tuple[str, str], b: tuple[str, str], source: str) -> None:
        ra, rb = groups.get(a[0], {}).get(a[1]), groups.get(b[0], {}).get(b[1])
        if not ra or not rb:
            return
        test = paired(ra, rb)
        ma, mb = summarize([r.final_val_loss for r in ra]).mean, summarize([r.final_val_loss for r in rb]).mean
        out.append({"claim": f"{label(*a)} < {label(*b)}", "source": source, "mean_a": ma, "mean_b": mb,
                    "holds": ma < mb, **(_test_dict(test) or {"n": 0, "significant": False})})

    present = [v for v in CHAIN if v in cont]
    for a, b in zip(present, present[1:]):
        claim(("continued", a), ("continued", b), "Table 1 chain")
    for v in cont:
        if v != MOE:
            claim(("continued", MOE), ("continued", v), "Table 1: MoE lowest")
    for a, b in TABLE3:
        claim(("continued", a), ("continued", b), "Table 3")
    for v in cont:
        claim(("continued", v), ("base", REFERENCE), "every continued run beats the base")
    for v in cont:
        if v.endswith(BLEND_SUFFIX):
            claim(("continued", v), ("continued", v.removesuffix(BLEND_SUFFIX)), "blend-in helps (departure)")
            claim(("continued", v), ("continued", REFERENCE), "blend-in reaches dense (departure)")
    scratch = groups.get("scratch", {})
    for v in scratch:
        if v != REFERENCE:
            claim(("scratch", v), ("scratch", REFERENCE), "Table 5: from scratch, below dense (the base)")
    for a, b in TABLE5:
        claim(("scratch", a), ("scratch", b), "Table 5: loss order")
    long = groups.get("scratch_long", {})
    for v in long:
        if v != REFERENCE:
            claim(("scratch_long", v), ("scratch_long", REFERENCE), "from scratch, base + continued tokens")
        claim(("continued", v), ("scratch_long", v), "continued beats from scratch (equal tokens)")
    return out


def label(arm: str, variant: str) -> str:
    """How a group is named in claims: continued variants by name, the others with their arm."""
    return variant if arm == "continued" else ("base" if arm == "base" else f"{arm}:{variant}")
