"""The report's plots (matplotlib, Agg), from the runs and the analysis of `analysis.analyse`.

* ``final_loss.png``: final held-out loss per variant, one panel per arm (seeds as dots, mean with its 95%
  t-interval);
* ``delta_vs_dense.png``: each continued variant's per-seed difference to dense, with the 95% t-interval of the
  paired differences;
* ``gap_over_tokens.png``: the difference to dense (mean over seeds, the seeds' range shaded) against the tokens
  of the phase, continued and (when run) from scratch: does the gap shrink?
* ``val_curves.png``: validation loss against step, per arm, averaged over seeds.
"""

from __future__ import annotations

from pathlib import Path

from vffn_pretrain.study.analysis import BLEND_SUFFIX, REFERENCE, arms
from vffn_pretrain.study.collect import RunResult

ARM_TITLES = {"base": "dense base", "continued": "continued from the base", "scratch": "from scratch, base tokens",
              "scratch_long": "from scratch, base + continued tokens"}


def _colours(variants) -> dict[str, str]:
    """One colour per variant, shared by its blend-in twin (drawn dashed)."""
    plain = list(dict.fromkeys(v.removesuffix(BLEND_SUFFIX) for v in variants))
    return {v: f"C{plain.index(v.removesuffix(BLEND_SUFFIX)) % 10}" for v in variants}


def plot(results: list[RunResult], data: dict, out_dir: Path, tokens_per_step: int | None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = arms(results)
    variants = [v for arm in groups.values() for v in arm]
    colour = _colours(variants)
    paths = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        paths.append(out_dir / name)
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)

    panels = [a for a in ("continued", "scratch", "scratch_long") if a in groups]
    widths = [len(groups[a]) + (a == "continued" and "base" in groups) for a in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6, 0.8 * sum(widths) + 2.5 * len(panels)), 4),
                             squeeze=False, gridspec_kw={"width_ratios": widths})
    for ax, arm in zip(axes[0], panels):
        items = ([("base", groups["base"][REFERENCE])] if arm == "continued" and "base" in groups else []) \
            + list(groups[arm].items())
        for i, (name, runs) in enumerate(items):
            losses = [r.final_val_loss for r in runs]
            row = next(r for r in data["rows"] if r["arm"] == ("base" if name == "base" else arm)
                       and r["variant"] == (REFERENCE if name == "base" else name))
            ci = row["loss"]["ci95"]
            ax.scatter([i] * len(losses), losses, s=12, color="grey", zorder=2)
            ax.errorbar([i], [row["loss"]["mean"]], yerr=None if ci is None else [[ci], [ci]], fmt="o", capsize=5,
                        color="black" if name == "base" else colour[name], zorder=3)
        ax.set_xticks(range(len(items)), [n for n, _ in items], rotation=35, ha="right")
        ax.set_title(ARM_TITLES[arm], fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("final held-out loss (eval mode)")
    save(fig, "final_loss.png")

    cont = groups.get("continued", {})
    if REFERENCE in cont and len(cont) > 1:
        rows = [r for r in data["rows"] if r["arm"] == "continued" and r["vs_dense"]]
        dense = {r.seed: r.final_val_loss for r in cont[REFERENCE]}
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows) + 2), 4))
        for i, row in enumerate(rows):
            diffs = [r.final_val_loss - dense[r.seed] for r in cont[row["variant"]] if r.seed in dense]
            vd = row["vs_dense"]
            ax.scatter([i] * len(diffs), diffs, s=12, color="grey", zorder=2)
            ax.errorbar([i], [vd["mean_diff"]], yerr=None if vd["ci95"] is None else [[vd["ci95"]], [vd["ci95"]]],
                        fmt="o", capsize=5, color=colour[row["variant"]], zorder=3)
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xticks(range(len(rows)), [r["variant"] for r in rows], rotation=30, ha="right")
        ax.set_ylabel("final held-out loss − dense (same seed)")
        ax.set_title("Continued: paired difference to dense (95% t-interval)")
        ax.grid(axis="y", alpha=0.3)
        save(fig, "delta_vs_dense.png")

    gap_arms = [a for a in ("continued", "scratch_long") if data.get("gaps", {}).get(a)]
    if gap_arms:
        fig, axes = plt.subplots(1, len(gap_arms), figsize=(6.5 * len(gap_arms), 4.2), squeeze=False)
        scale = tokens_per_step / 1e6 if tokens_per_step else None
        for ax, arm in zip(axes[0], gap_arms):
            for variant, gap in data["gaps"][arm].items():
                curve = gap["curve"]
                if not curve:
                    continue
                x = [p["step"] * scale if scale else p["step"] for p in curve]
                style = "--" if variant.endswith(BLEND_SUFFIX) else "-"
                ax.plot(x, [p["mean"] for p in curve], style, color=colour[variant], label=variant)
                ax.fill_between(x, [p["min"] for p in curve], [p["max"] for p in curve], color=colour[variant],
                                alpha=0.12, lw=0)
            ax.axhline(0.0, color="black", lw=0.8)
            ax.set_xlabel("tokens of the phase (M)" if scale else "step")
            ax.set_ylabel("held-out loss − dense (same seed)")
            ax.set_title(f"{ARM_TITLES[arm]}: gap to dense (mean; band: seed range)", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            # The first evaluations after conversion are far above the rest: zoom on the later part.
            late = [p for g in data["gaps"][arm].values() for p in g["curve"][len(g["curve"]) // 10:]]
            if late:
                lo, hi = min(p["min"] for p in late), max(p["max"] for p in late)
                pad = 0.1 * (hi - lo or 1e-3)
                ax.set_ylim(min(lo, 0.0) - pad, max(hi, 0.0) + pad)
        save(fig, "gap_over_tokens.png")

    curve_arms = [a for a in ARM_TITLES if a in groups]
    fig, axes = plt.subplots(1, len(curve_arms), figsize=(5 * len(curve_arms), 4), squeeze=False)
    for ax, arm in zip(axes[0], curve_arms):
        for variant, runs in groups[arm].items():
            steps = sorted(set.intersection(*[{s for s, _ in r.curve} for r in runs]))
            if steps:
                mean = [sum(dict(r.curve)[s] for r in runs) / len(runs) for s in steps]
                ax.plot(steps, mean, "--" if variant.endswith(BLEND_SUFFIX) else "-",
                        color="black" if arm == "base" else colour[variant], label=variant)
        ax.set_title(f"{ARM_TITLES[arm]} (mean over seeds)", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("held-out loss (eval mode)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    save(fig, "val_curves.png")
    return paths
