"""PNG plots of a sweep: loss vs training compute and loss vs non-embedding parameters, one colour
per variant, measured runs as dots and the fitted ``a x^-b + c`` curves as lines."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vffn_pretrain.outputs.atomic import partial_path  # noqa: E402
from vffn_pretrain.scaling.compare import compute_points, param_points  # noqa: E402
from vffn_pretrain.scaling.fit import PowerLawFit  # noqa: E402
from vffn_pretrain.scaling.summaries import Run  # noqa: E402


def _plot(
    path: Path,
    runs: list[Run],
    fits: dict[str, PowerLawFit | str],
    x_of,
    metric: str,
    xlabel: str,
    title: str,
    point_filter=None,
) -> Path:
    variants = sorted({r.variant for r in runs})
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    xs_all = [x_of(r) for r in runs]
    # draw fitted curves a little past the data so the trend is visible
    grid = np.geomspace(min(xs_all) / 1.5, max(xs_all) * 1.5, 200)
    for i, variant in enumerate(variants):
        colour = colours(i % 10)
        vruns = [r for r in runs if r.variant == variant]
        used = point_filter(vruns) if point_filter else vruns
        ax.scatter([x_of(r) for r in used], [r.loss(metric) for r in used], color=colour, s=22, zorder=3)
        # runs left out of the fit (off the compute frontier, or not the longest run of a size)
        unused = [r for r in vruns if r not in used]
        if unused:
            ax.scatter(
                [x_of(r) for r in unused],
                [r.loss(metric) for r in unused],
                color=colour,
                s=14,
                alpha=0.35,
                zorder=2,
            )
        fit = fits.get(variant)
        if isinstance(fit, PowerLawFit):
            label = f"{variant}: {fit.a.value:.3g}·x^-{fit.b.value:.3f} + {fit.c.value:.3f}"
            ax.plot(grid, fit.predict(grid), color=colour, lw=1.4, label=label)
        else:
            ax.plot([], [], color=colour, marker="o", ls="", label=f"{variant} (no fit)")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = partial_path(path)  # a reader (or a crash) never sees half a picture
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def plot_loss_vs_compute(runs: list[Run], fits: dict, metric: str, path: Path) -> Path:
    return _plot(
        path,
        runs,
        fits,
        lambda r: r.compute,
        metric,
        "training compute C [FLOPs] (flops_per_token_train × tokens)",
        "Loss vs compute",
        point_filter=lambda vruns: compute_points(vruns, metric),
    )


def plot_loss_vs_params(runs: list[Run], fits: dict, metric: str, path: Path) -> Path:
    return _plot(
        path,
        runs,
        fits,
        lambda r: r.params_non_embedding,
        metric,
        "non-embedding parameters N",
        "Loss vs parameters (longest run per size)",
        point_filter=param_points,
    )
