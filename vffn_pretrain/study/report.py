"""The study report: a Markdown table per variant, statements about the paper's orderings, and plots.

``write_report(study_dir, out_dir)`` writes ``report.md``, ``report.json`` (every number in the table),
``final_loss.png`` (final validation loss per variant: seeds as dots, mean with its 95% t-interval),
``delta_vs_dense.png`` (each variant's per-seed difference to the dense continued run, with the 95% t-interval
of the paired differences) and ``val_curves.png`` (validation loss against step: the bases, and the continued runs averaged over seeds).

Orderings are the paper's (docs/method.md §10; 354M, Table 1 and Table 3), each checked two ways: whether the
means are in that order here, and whether the paired t-test across seeds (same seed = same base and data
order) finds the difference significant at the 5% level. With 3 seeds a test has 2 degrees of freedom:
only large, consistent differences come out significant.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

from vffn_pretrain.study.collect import RunResult, read_study
from vffn_pretrain.study.stats import paired_t, summarize

# Final losses at 354M (docs/method.md §10, Tables 1 and 3); "base" is the dense checkpoint before the extra epoch.
PAPER_LOSS_354M = {"base": 2.779, "dense": 2.654, "kloop2": 2.631, "kloop4": 2.625, "kloop6": 2.623,
                   "moe": 2.585, "versatile": 2.617, "width_only": 2.633, "depth_only": 2.629}
# "A < B" claims of the paper (lower loss is better).
# The paper's variant names (rows of its Tables 1 and 3), not FFN kinds: what the report compares and highlights.
DENSE, MOE, VERSATILE = "dense", "moe", "versatile"
CHAIN = ("versatile", "kloop6", "kloop4", "kloop2", "dense")
TABLE3 = (("versatile", "depth_only"), ("versatile", "width_only"), ("depth_only", "width_only"),
          ("width_only", "dense"), ("depth_only", "dense"))
ALPHA = 0.05


def _by_variant(results: list[RunResult]) -> tuple[dict[str, list[RunResult]], list[RunResult]]:
    cont: dict[str, list[RunResult]] = {}
    for r in results:
        if r.phase == "continued" and r.finished:
            cont.setdefault(r.variant, []).append(r)
    base = [r for r in results if r.phase == "base" and r.finished]
    return cont, base


def _paired(a: list[RunResult], b: list[RunResult]):
    """Paired test of a's losses against b's over the seeds both have."""
    la = {r.seed: r.final_val_loss for r in a}
    lb = {r.seed: r.final_val_loss for r in b}
    seeds = sorted(set(la) & set(lb))
    if not seeds:
        return None
    return paired_t([la[s] for s in seeds], [lb[s] for s in seeds])


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def analyse(results: list[RunResult]) -> dict:
    """Every number of the report, as plain data (what report.json holds)."""
    cont, base = _by_variant(results)
    rows = []
    groups = ([("base", base)] if base else []) + list(cont.items())
    for name, runs in groups:
        loss = summarize([r.final_val_loss for r in runs])
        ppl = summarize([r.final_val_ppl for r in runs])
        vs_dense = _paired(runs, cont[DENSE]) if name != DENSE and DENSE in cont else None
        rows.append({
            "variant": name, "seeds": sorted(r.seed for r in runs),
            "loss": loss.__dict__ | {"lo": loss.lo, "hi": loss.hi}, "ppl": ppl.__dict__,
            "vs_dense": None if vs_dense is None else vs_dense.__dict__ | {"significant": vs_dense.significant(ALPHA)},
            "start_loss": _mean([r.start_val_loss for r in runs]),
            "mean_loops": _mean([r.mean_loops for r in runs]),
            "width_fraction": _mean([r.width_fraction for r in runs]),
            "flops_train": _mean([r.flops_train for r in runs]),
            "flops_eval": _mean([r.flops_eval for r in runs]),
            "wall_time_s": _mean([r.wall_time_s for r in runs]),
            "paper_loss_354m": PAPER_LOSS_354M.get(name),
        })
    claims = []

    def claim(a: str, b: str, source: str) -> None:
        ra = base if a == "base" else cont.get(a)
        rb = base if b == "base" else cont.get(b)
        if not ra or not rb:
            return
        test = _paired(ra, rb)
        ma, mb = summarize([r.final_val_loss for r in ra]).mean, summarize([r.final_val_loss for r in rb]).mean
        claims.append({"claim": f"{a} < {b}", "source": source, "mean_a": ma, "mean_b": mb, "holds": ma < mb,
                       "mean_diff": None if test is None else test.mean_diff,
                       "t": None if test is None else test.t, "p": None if test is None else test.p,
                       "n": 0 if test is None else test.n,
                       "significant": bool(test and test.significant(ALPHA))})

    present = [v for v in CHAIN if v in cont]  # adjacent among the variants this study has
    for a, b in zip(present, present[1:]):
        claim(a, b, "Table 1 chain")
    for v in cont:
        if v != MOE:
            claim(MOE, v, "Table 1: MoE lowest")
    for a, b in TABLE3:
        claim(a, b, "Table 3")
    for v in cont:
        claim(v, "base", "every continued run beats the base")
    missing = [r.name for r in results if not r.finished]
    return {"rows": rows, "claims": claims, "missing": missing, "alpha": ALPHA}


def _f(x, fmt="{:.4f}") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _pm(s: dict) -> str:
    if s["std"] is None:
        return f"{s['mean']:.4f}"
    return f"{s['mean']:.4f} ± {s['std']:.4f} [{s['mean'] - s['ci95']:.4f}, {s['mean'] + s['ci95']:.4f}]"


def markdown(meta: dict, data: dict) -> str:
    lines = [f"# Study `{meta.get('name')}`: the paper's continued-pretraining comparison at CPU scale", ""]
    lines += [f"Study file `{meta.get('config')}`{' (--quick)' if meta.get('quick') else ''}; corpus "
              f"{meta.get('corpus') or 'bundled (Jargon File)'}; seeds {meta.get('seeds')}; base {meta.get('base_steps')} "
              f"steps, then {meta.get('continued_steps')} steps per variant from the base "
              f"({meta.get('tokens_per_step')} tokens a step). Loss: final validation loss (nats/token).", ""]
    if data["missing"]:
        lines += [f"**Not finished ({len(data['missing'])} runs, left out):** {', '.join(data['missing'])}", ""]
    # The converted model's loss at step 0, when the runs evaluated before their first step (train.eval_at_start).
    with_start = any(row["start_loss"] is not None for row in data["rows"])
    columns = ["variant", "seeds", "val loss: mean ± std [95% t-interval]", "val ppl: mean ± std",
               "Δ loss vs dense (paired t, p)", *(["val loss at step 0 (after conversion)"] if with_start else []),
               "mean loops (eval)", "width-path fraction (eval)", "train FLOPs/token", "inference FLOPs/token",
               "wall time (s, mean)", "paper 354M loss"]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in data["rows"]:
        vd = row["vs_dense"]
        delta = "—" if vd is None else (f"{vd['mean_diff']:+.4f} (t={_f(vd['t'], '{:.2f}')}, p={_f(vd['p'], '{:.3f}')})"
                                       + (" *" if vd["significant"] else ""))
        ppl = row["ppl"]
        ppl_text = f"{ppl['mean']:.2f}" + ("" if ppl["std"] is None else f" ± {ppl['std']:.2f}")
        cells = [row["variant"], str(len(row["seeds"])), _pm(row["loss"]), ppl_text, delta,
                 *([_f(row["start_loss"])] if with_start else []), _f(row["mean_loops"], "{:.2f}"),
                 _f(row["width_fraction"], "{:.2f}"), _f(row["flops_train"], "{:.3g}"),
                 _f(row["flops_eval"], "{:.3g}"), _f(row["wall_time_s"], "{:.0f}"),
                 _f(row["paper_loss_354m"], "{:.3f}")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "`*`: paired t-test across seeds significant at the 5% level (two-sided). The base row is the "
              "dense checkpoint the continued runs start from (it has seen half their tokens).", "",
              "## The paper's orderings", "",
              "| claim (lower loss) | source | here: means | holds? | paired Δ | t | p | significant? |",
              "|---|---|---|---|---|---|---|---|"]
    for c in data["claims"]:
        lines.append(f"| {c['claim']} | {c['source']} | {c['mean_a']:.4f} vs {c['mean_b']:.4f} | "
                     f"{'yes' if c['holds'] else 'no'} | {_f(c['mean_diff'], '{:+.4f}')} | {_f(c['t'], '{:.2f}')} | "
                     f"{_f(c['p'], '{:.3f}')} | {'yes' if c['significant'] else 'no'} |")
    lines += ["", "## In words", ""] + [f"- {s}" for s in statements(data)]
    lines += ["", "Plots: `final_loss.png` (per variant: seeds as dots, mean and 95% t-interval), "
              "`delta_vs_dense.png` (paired differences to dense, 95% t-interval), "
              "`val_curves.png` (validation loss against step)."]
    return "\n".join(lines) + "\n"


def statements(data: dict) -> list[str]:
    """The orderings in words: which hold in the means, and which differences are significant."""
    out = []
    chain = [c for c in data["claims"] if c["source"] == "Table 1 chain"]
    if chain:
        held = [c["claim"] for c in chain if c["holds"]]
        failed = [c["claim"] for c in chain if not c["holds"]]
        sig = [c["claim"] for c in chain if c["significant"]]
        chain_names = [c["claim"].split(" < ")[0] for c in chain] + [chain[-1]["claim"].split(" < ")[1]]
        out.append(f"Table 1 chain ({' < '.join(chain_names)}): {len(held)} of {len(chain)} adjacent steps hold in the "
                   f"means{(' (' + ', '.join(held) + ')') if held else ''}"
                   f"{('; reversed: ' + ', '.join(failed)) if failed else ''}; significant: "
                   f"{', '.join(sig) if sig else 'none'}.")
    moe = [c for c in data["claims"] if c["source"] == "Table 1: MoE lowest"]
    if moe:
        lowest = all(c["holds"] for c in moe)
        out.append(f"MoE {'has' if lowest else 'does not have'} the lowest mean loss of the continued variants"
                   f"{'' if lowest else ' (beaten by ' + ', '.join(c['claim'].split(' < ')[1] for c in moe if not c['holds']) + ')'}"
                   f"; significantly below: {', '.join(c['claim'].split(' < ')[1] for c in moe if c['significant'] and c['holds']) or 'none'}.")
    for row in data["rows"]:
        vd = row["vs_dense"]
        if vd is None or row["variant"] == "base":
            continue
        direction = "below" if vd["mean_diff"] < 0 else "above"
        out.append(f"{row['variant']}: {abs(vd['mean_diff']):.4f} {direction} the dense continued baseline "
                   f"({'significant' if vd['significant'] else 'not significant'}, p={_f(vd['p'], '{:.3f}')}).")
    t3 = [c for c in data["claims"] if c["source"] == "Table 3"]
    if t3:
        out.append("Table 3 (components): " + "; ".join(
            f"{c['claim']} {'holds' if c['holds'] else 'does not hold'}{' (significant)' if c['significant'] else ''}"
            for c in t3) + ".")
    beat = [c for c in data["claims"] if c["source"] == "every continued run beats the base"]
    if beat:
        out.append(f"{sum(c['holds'] for c in beat)} of {len(beat)} continued variants end below the base.")
    return out


def plot(results: list[RunResult], data: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cont, base = _by_variant(results)
    paths = []
    rows = data["rows"]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows) + 2), 4))
    for i, row in enumerate(rows):
        runs = base if row["variant"] == "base" else cont[row["variant"]]
        ax.scatter([i] * len(runs), [r.final_val_loss for r in runs], s=12, color="grey", zorder=2)
        ci = row["loss"]["ci95"]
        ax.errorbar([i], [row["loss"]["mean"]], yerr=None if ci is None else [[ci], [ci]], fmt="o", capsize=5,
                    color="C0" if row["variant"] != VERSATILE else "C3", zorder=3)
    ax.set_xticks(range(len(rows)), [r["variant"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("final validation loss")
    ax.set_title("Final validation loss (dots: seeds; bars: 95% t-interval)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    paths.append(out_dir / "final_loss.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    if DENSE in cont and len(cont) > 1:
        dense = {r.seed: r.final_val_loss for r in cont[DENSE]}
        others = [v for v in cont if v != DENSE]
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(others) + 2), 4))
        for i, v in enumerate(others):
            diffs = [r.final_val_loss - dense[r.seed] for r in cont[v] if r.seed in dense]
            if not diffs:
                continue
            s = summarize(diffs)
            ax.scatter([i] * len(diffs), diffs, s=12, color="grey", zorder=2)
            ax.errorbar([i], [s.mean], yerr=None if s.ci95 is None else [[s.ci95], [s.ci95]], fmt="o", capsize=5,
                        color="C3" if v == VERSATILE else "C0", zorder=3)
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xticks(range(len(others)), others, rotation=30, ha="right")
        ax.set_ylabel("final val loss − dense (same seed)")
        ax.set_title("Paired difference to the dense continued baseline (95% t-interval)")
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        paths.append(out_dir / "delta_vs_dense.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
    for r in base:
        if r.curve:
            ax0.plot(*zip(*r.curve), label=f"seed {r.seed}")
    ax0.set_title("dense base")
    for i, (variant, runs) in enumerate(cont.items()):
        steps = sorted(set.intersection(*[{s for s, _ in r.curve} for r in runs])) if runs else []
        if steps:
            mean = [sum(dict(r.curve)[s] for r in runs) / len(runs) for s in steps]
            ax1.plot(steps, mean, label=variant, color=f"C{i % 10}")
    ax1.set_title("continued from the base (mean over seeds)")
    for ax in (ax0, ax1):
        ax.set_xlabel("step")
        ax.set_ylabel("validation loss")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "val_curves.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


REPORT_FILES = ("report.md", "report.json", "final_loss.png", "delta_vs_dense.png", "val_curves.png")


def _is_report(path: Path) -> bool:
    """A directory holding only what `write_report` writes."""
    return path.is_dir() and all(p.name in REPORT_FILES for p in path.iterdir())


def write_report(study_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write report.md, report.json and the plots into ``out_dir`` (default STUDY_DIR/report); return report.md.

    ``out_dir`` must not be, contain or lie inside a file the report reads, and is replaced only when it holds a
    report (or is empty); it is written as OUT.partial-PID and renamed when complete, under ``OUT.lock``."""
    from vffn_pretrain.outputs.apart import check_apart, check_replaceable
    from vffn_pretrain.outputs.atomic import make_partial_dir, publish_dir, sweep_stale_partials
    from vffn_pretrain.outputs.lock import claim_output
    from vffn_pretrain.study.collect import StudyReadError, study_inputs

    out = Path(out_dir) if out_dir else Path(study_dir) / "report"
    check_apart({"--out": out}, {"the study file": study_inputs(study_dir)})
    check_replaceable(out, ours=_is_report, what="a study report", flag="--out")
    meta, results = read_study(study_dir)
    if not any(r.finished for r in results if r.phase == "continued"):
        raise StudyReadError(f"{study_dir}: no continued run has finished yet; nothing to report")
    data = analyse(results)
    with claim_output(out, "--out", "vffn-study") as lock:
        sweep_stale_partials(out, warn=lambda message: print(f"vffn-study: {message}", file=sys.stderr))
        tmp = make_partial_dir(out)
        try:
            (tmp / "report.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
            plot(results, data, tmp)
            (tmp / "report.md").write_text(markdown(meta, data))
            lock.verify()
            publish_dir(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out / "report.md"
