"""The study report: report.md, report.json, the plots, and the corpus manifest next to them.

``write_report(study_dir, out_dir)`` writes into ``out_dir`` (default STUDY_DIR/report):

* ``report.json``: every number (`analysis.analyse`): per arm and variant the per-seed losses (held-out in eval
  and train mode, the training loss, the step-0 loss), their summaries, the paired differences to dense, the
  loops, FLOPs and the paper's loss; the claims; the gap to dense at every evaluation;
* ``report.md``: the same as tables and sentences;
* the plots of `plots.py`;
* ``corpus-manifest.json``: the corpus the study trained on (package versions and checksums, tokenizer and
  split checksums), as recorded when the study ran; `vffn-data corpus build --manifest` rebuilds it exactly.

The report names the study file relative to the repository and the corpus by name and checksums: no path of the
machine that ran it.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

from vffn_pretrain.study.analysis import ALPHA, METRICS, REFERENCE, analyse, label
from vffn_pretrain.study.collect import read_study
from vffn_pretrain.study.plots import ARM_TITLES, plot

MANIFEST_NAME = "corpus-manifest.json"


def _f(x, fmt="{:.4f}") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def p_text(p: float | None) -> str:
    """p<0.001 below a thousandth (never p=0.000), else three decimals; — without a test."""
    if p is None:
        return "—"
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _pm(s: dict | None) -> str:
    if s is None:
        return "—"
    if s["std"] is None:
        return f"{s['mean']:.4f}"
    return f"{s['mean']:.4f} ± {s['std']:.4f} [{s['lo']:.4f}, {s['hi']:.4f}]"


def paired_words(test: dict | None, worse: str = "worse", better: str = "better") -> str:
    """'worse in 3 of 3 seeds, paired 95% CI [+0.040, +0.056]' (a positive difference is `worse`)."""
    if test is None or not test.get("n"):
        return "—"
    n, above, below = test["n"], test["above"], test["below"]
    way = f"{worse} in {above} of {n} seeds" if above >= below else f"{better} in {below} of {n} seeds"
    ci = "" if test["lo"] is None else f", paired 95% CI [{test['lo']:+.4f}, {test['hi']:+.4f}]"
    return f"{way}{ci}"


def _delta(test: dict | None) -> str:
    """+0.0480 [+0.0400, +0.0560] (3/3 above), p<0.001 *"""
    if test is None:
        return "—"
    ci = "" if test["lo"] is None else f" [{test['lo']:+.4f}, {test['hi']:+.4f}]"
    star = " *" if test["significant"] else ""
    return f"{test['mean_diff']:+.4f}{ci} ({test['above']}/{test['n']} above), {p_text(test['p'])}{star}"


def _seeds(row: dict, key: str = "val") -> str:
    vals = [(s, v[key]) for s, v in row["per_seed"].items() if v.get(key) is not None]
    return ", ".join(f"{s}: {v:.4f}" for s, v in vals) or "—"


def _name(row: dict) -> str:
    return "base" if row["arm"] == "base" else row["variant"]


def _source_line(meta: dict) -> str:
    corpus = meta.get("corpus_manifest") or {}
    if corpus:
        splits = corpus.get("splits", {})
        checks = "; ".join(f"{s} {v.get('tokens', 0):,} tokens (sha256 {str(v.get('bin_sha256', ''))[:12]})"
                           for s, v in splits.items())
        tok = corpus.get("tokenizer", {})
        where = (f"corpus `{corpus.get('corpus')}` ({checks}; tokenizer {tok.get('vocab_size')} ids, sha256 "
                 f"{str(tok.get('sha256', ''))[:12]}; package versions and full checksums in "
                 f"[{MANIFEST_NAME}]({MANIFEST_NAME}))")
    else:
        where = f"corpus `{meta.get('corpus_name') or 'bundled (Jargon File)'}`"
    return (f"Study file `{meta.get('config')}`{' (--quick)' if meta.get('quick') else ''}; {where}; seeds "
            f"{meta.get('seeds')}; base {meta.get('base_steps')} steps, continued {meta.get('continued_steps')} "
            f"steps ({meta.get('tokens_per_step')} tokens a step).")


def markdown(meta: dict, data: dict) -> str:
    rows = data["rows"]
    n = len(meta.get("seeds") or []) or 1
    lines = [f"# Study `{meta.get('name')}`: the paper's comparisons at CPU scale", "", _source_line(meta), "",
             "**Losses.** The primary metric is the final held-out loss in eval mode (argmax loop counts, nats per "
             "token). The paper reports the final *training* loss (train mode: loop counts sampled, on data seen "
             "for the second time); the third table gives both that and the held-out loss in train mode. "
             "Differences are paired by seed (same base, data order and initial weights): mean, 95% t-interval "
             "of the per-seed differences, how many seeds lie above, and the paired t-test's p "
             f"(`*`: p < {ALPHA}; with {n} seeds a test has {n - 1} degree{'s' if n != 2 else ''} of freedom, "
             "and no correction is made for the number of comparisons).", ""]
    if data["missing"]:
        lines += [f"**Not finished ({len(data['missing'])} runs, left out):** {', '.join(data['missing'])}", ""]

    cont = [r for r in rows if r["arm"] in ("base", "continued")]
    if cont:
        with_start = any(r["start_loss"] is not None for r in cont)
        cols = ["variant", "seeds", "held-out loss: mean ± std [95% CI]", "per seed",
                "Δ vs dense (paired 95% CI; seeds above), p",
                *(["loss at step 0 (Δ vs dense)"] if with_start else []),
                "train FLOPs/token (× dense)", "inference FLOPs/token (× dense)", "mean loops (eval)",
                "width-path fraction (eval)", "paper 354M loss"]
        lines += ["## Continued pretraining (the paper's Tables 1 and 3)", "", _table_head(cols)]
        for r in cont:
            start = (f"{_f(r['start_loss'])} ({_f(r['start_vs_dense'], '{:+.4f}')})" if r["start_loss"] is not None
                     else "—")
            lines.append(_table_row([_name(r), str(len(r["seeds"])), _pm(r["loss"]), _seeds(r), _delta(r["vs_dense"]),
                                     *([start] if with_start else []), _flops(r, "train"), _flops(r, "eval"),
                                     _f(r["mean_loops"], "{:.2f}"), _f(r["width_fraction"], "{:.2f}"),
                                     _f(r["paper_loss_354m"], "{:.3f}")]))
        lines += ["", "The base row is the dense checkpoint every continued run starts from (it has seen half "
                  "their tokens); its Δ is against dense continued. Step-0 losses per seed are in report.json "
                  "(`per_seed.*.start`). FLOPs are the trainer's count per token (training: forward and backward "
                  "as published, every loop of every token; inference: at the last evaluation's loop mix). Wall "
                  "times are left out: on a shared machine they measure its load, not the variants' cost "
                  "(report.json keeps them as `wall_time_s`).", ""]

    for arm in ("scratch", "scratch_long"):
        arm_rows = [r for r in rows if r["arm"] == arm]
        if not arm_rows:
            continue
        title = ("From scratch for the base's tokens (the paper's Table 5)" if arm == "scratch"
                 else "From scratch for base + continued tokens (a continued run's total)")
        cols = ["variant", "seeds", "held-out loss: mean ± std [95% CI]", "per seed",
                "Δ vs dense from scratch (paired 95% CI; seeds above), p", "train FLOPs/token (× dense)",
                "mean loops (eval)", *(["paper 354M loss (Table 5)"] if arm == "scratch" else [])]
        lines += [f"## {title}", "", _table_head(cols)]
        for r in arm_rows:
            name = "dense (the base)" if arm == "scratch" and r["variant"] == REFERENCE else r["variant"]
            lines.append(_table_row([name, str(len(r["seeds"])), _pm(r["loss"]), _seeds(r), _delta(r["vs_dense"]),
                                     _flops(r, "train"), _f(r["mean_loops"], "{:.2f}"),
                                     *([_f(r["paper_loss_354m"], "{:.3f}")] if arm == "scratch" else [])]))
        lines.append("")

    lines += ["## Three losses", "", "Δ vs the dense run of the same arm and seed in each metric: "
              + "; ".join(f"**{k}**: {v}" for k, v in METRICS.items()) + ".", "",
              _table_head(["arm", "variant", "Δ held-out (eval mode)", "Δ held-out (train mode)",
                           "Δ training loss (the paper's metric)", "training loss per seed"])]
    for r in rows:
        if r["arm"] == "base" or r["variant"] == REFERENCE:
            continue
        lines.append(_table_row([r["arm"], r["variant"], _delta(r["vs_dense"]), _delta(r["vs_dense_train_mode"]),
                                 _delta(r["vs_dense_train"]), _seeds(r, "train")]))
    lines.append("")

    lines += _gap_section(data, meta)
    lines += ["## The paper's orderings and the questions of this study", "",
              _table_head(["claim (lower loss)", "source", "means", "holds?", "paired difference", "p",
                           "significant?"])]
    for c in data["claims"]:
        lines.append(_table_row([c["claim"], c["source"], f"{c['mean_a']:.4f} vs {c['mean_b']:.4f}",
                                 "yes" if c["holds"] else "no", paired_words(c, "higher", "lower"),
                                 p_text(c.get("p")), "yes" if c["significant"] else "no"]))
    lines += ["", "## In words", ""] + [f"- {s}" for s in statements(data)]
    lines += ["", "Plots: `final_loss.png` (per arm and variant: seeds as dots, mean and 95% t-interval), "
              "`delta_vs_dense.png` (continued: paired differences to dense), `gap_over_tokens.png` (the "
              "difference to dense over the phase, mean and seed range), `val_curves.png` (held-out loss "
              "against step)."]
    return "\n".join(lines) + "\n"


def _gap_section(data: dict, meta: dict) -> list[str]:
    out = []
    for arm, variants in data.get("gaps", {}).items():
        points = sorted({p["step"] for g in variants.values() for p in g["curve"]})
        if not points:
            continue
        last = points[-1]
        shown = sorted({s for s in points if s in (0, 100, 200)} | {min(points, key=lambda s: abs(s - f * last))
                                                                    for f in (0.25, 0.5, 0.75, 1.0)})
        out += [f"## The gap to dense over the phase ({ARM_TITLES[arm]})", "",
                "Mean over seeds of the per-seed difference to dense in held-out loss at each step, and its change "
                "from a quarter of the phase to the end (paired over seeds; negative: the gap shrank). Plot: "
                "`gap_over_tokens.png`.", "",
                _table_head(["variant", *[f"step {s}" for s in shown], "change from 25% to the end"])]
        for variant, gap in variants.items():
            at = {p["step"]: p["mean"] for p in gap["curve"]}
            change = gap["change"]
            words = "—" if change is None else (f"{change['gap_from']:+.4f} → {change['gap_end']:+.4f}: "
                                                f"{_delta(change['change'])}")
            out.append(_table_row([variant, *[_f(at.get(s), "{:+.4f}") for s in shown], words]))
        out.append("")
    return out


def _flops(row: dict, which: str) -> str:
    value, ratio = row[f"flops_{which}"], row.get(f"flops_{which}_vs_dense")
    return "—" if value is None else f"{value:.3g} ({_f(ratio, '{:.2f}')}×)"


def _table_head(cols: list[str]) -> str:
    return "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols)


def _table_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def statements(data: dict) -> list[str]:
    """The results in sentences: each variant against dense, the paper's orderings, the blend-in, from scratch."""
    out = []
    for r in data["rows"]:
        vd = r["vs_dense"]
        if vd is None or r["arm"] == "base":
            continue
        where = {"continued": "dense continued", "scratch": "dense from scratch (the base)",
                 "scratch_long": "dense from scratch (same tokens)"}[r["arm"]]
        direction = "above" if vd["mean_diff"] > 0 else "below"
        who = r["variant"] if r["arm"] == "continued" else label(r["arm"], r["variant"])
        out.append(f"{who}: {abs(vd['mean_diff']):.4f} {direction} {where}, "
                   f"{paired_words(vd, 'higher', 'lower')} ({p_text(vd['p'])}).")
    claims = data["claims"]
    chain = [c for c in claims if c["source"] == "Table 1 chain"]
    if chain:
        held = [c["claim"] for c in chain if c["holds"]]
        out.append(f"Table 1 chain: {len(held)} of {len(chain)} adjacent steps hold in the means"
                   f"{' (' + ', '.join(held) + ')' if held else ''}.")
    moe = [c for c in claims if c["source"] == "Table 1: MoE lowest"]
    if moe:
        beaten = [c["claim"].split(" < ")[1] for c in moe if not c["holds"]]
        out.append("MoE has the lowest mean loss of the continued variants." if not beaten else
                   f"MoE does not have the lowest mean loss (beaten by {', '.join(beaten)}).")
    for source in ("Table 3", "blend-in helps (departure)", "blend-in reaches dense (departure)",
                   "Table 5: from scratch, below dense (the base)", "Table 5: loss order",
                   "continued beats from scratch (equal tokens)"):
        group = [c for c in claims if c["source"] == source]
        if group:
            out.append(f"{source}: " + "; ".join(
                f"{c['claim']} {'holds' if c['holds'] else 'does not hold'} ({paired_words(c, 'higher', 'lower')})"
                for c in group) + ".")
    beat = [c for c in claims if c["source"] == "every continued run beats the base"]
    if beat:
        out.append(f"{sum(c['holds'] for c in beat)} of {len(beat)} continued variants end below the base.")
    return out


def published_manifest(manifest: dict) -> dict:
    """A corpus manifest without what belongs to the machine that built it (its paths, the command line)."""
    out = {k: v for k, v in manifest.items() if k not in ("argv", "trainer_overrides", "elapsed_s")}
    if isinstance(out.get("pinned_by"), dict) and out["pinned_by"].get("manifest"):
        out["pinned_by"] = {**out["pinned_by"], "manifest": Path(out["pinned_by"]["manifest"]).name}
    return out


REPORT_FILES = ("report.md", "report.json", "final_loss.png", "delta_vs_dense.png", "gap_over_tokens.png",
                "val_curves.png", MANIFEST_NAME)


def _is_report(path: Path) -> bool:
    """A directory holding only what `write_report` writes."""
    return path.is_dir() and all(p.name in REPORT_FILES for p in path.iterdir())


def write_report(study_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write report.md, report.json, the plots and the corpus manifest into ``out_dir`` (default
    STUDY_DIR/report); return report.md.

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
    if not any(r.finished for r in results if r.phase != "base"):
        raise StudyReadError(f"{study_dir}: no run past the base has finished yet; nothing to report")
    data = analyse(results, meta)
    with claim_output(out, "--out", "vffn-study") as lock:
        sweep_stale_partials(out, warn=lambda message: print(f"vffn-study: {message}", file=sys.stderr))
        tmp = make_partial_dir(out)
        try:
            (tmp / "report.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
            if meta.get("corpus_manifest"):
                (tmp / MANIFEST_NAME).write_text(json.dumps(meta["corpus_manifest"], indent=2) + "\n")
            plot(results, data, tmp, meta.get("tokens_per_step"))
            (tmp / "report.md").write_text(markdown(meta, data))
            lock.verify()
            publish_dir(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out / "report.md"
