"""`vffn-scaling SWEEP_DIR [--out DIR] [--metric final_val_loss|final_train_loss] [--json]`

Reads every summary.json below SWEEP_DIR, fits scaling laws per FFN variant (see
:mod:`vffn_pretrain.scaling.compare`), prints the fitted parameters with 95% confidence intervals
and the equal-compute / equal-parameter comparisons, and writes into --out (default
SWEEP_DIR/scaling): loss_vs_compute.png, loss_vs_params.png and scaling_fits.json, each written whole
(FILE.partial-PID, then renamed). --out must not be, contain or lie inside a summary.json it reads; a second
vffn-scaling writing the same --out is refused (OUT.lock).
Exit status: 0 on success, 1 when another vffn-scaling writes --out, 2 when the sweep cannot be read (the
message names the directory, or the file and key that are wrong) or --out cannot be used, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vffn_pretrain.process.streams import survive_closed_output
from vffn_pretrain.scaling.summaries import METRICS, SummaryError, load_runs


def _fmt(est: dict) -> str:
    v, lo, hi = est["value"], est["lo"], est["hi"]
    if lo is None:  # no interval (exact fit)
        return f"{v:.4g}"
    return f"{v:.4g} [{lo:.4g}, {hi:.4g}]"


def _fit_line(name: str, fit: dict, keys: tuple[str, ...]) -> str:
    if "skipped" in fit:
        return f"  {name}: not fitted ({fit['skipped']})"
    params = ", ".join(f"{k}={_fmt(fit[k])}" for k in keys)
    ci = {
        "covariance": "",
        "bootstrap": ", CI by bootstrap",
        "none": ", as many points as parameters: no CI",
    }[fit["ci_method"]]
    return f"  {name}: {fit['form']}: {params}  (n={fit['n_points']}, rmse(log L)={fit['rmse_log']:.2g}{ci})"


def format_report(result: dict) -> str:
    lines = [f"{result['n_runs']} runs, metric {result['metric']}; 95% confidence intervals in brackets"]
    for s in result["skipped_runs"]:
        lines.append(f"skipped (stopped early, exit_code {s['exit_code']}): {s['path']}")
    for variant, v in result["variants"].items():
        lines.append(f"{variant} ({v['n_runs']} runs; models: {', '.join(v['models'])})")
        lines.append(_fit_line("loss vs compute C", v["loss_vs_compute"], ("a", "b", "c")))
        lines.append(_fit_line("loss vs params N", v["loss_vs_params"], ("a", "b", "c")))
        lines.append(_fit_line("Chinchilla L(N,D)", v["chinchilla"], ("E", "A", "alpha", "B", "beta")))
    scored = [r for r in result.get("runs", []) if r["downstream"]]
    if scored:
        lines.append(f"downstream scores (vffn-eval), next to {result['metric']}:")
        for r in scored:
            scores = ", ".join(f"{task} {name} {value:.4f}" for task, metrics in sorted(r["downstream"].items())
                               for name, value in sorted(metrics.items()) if not name.endswith("_stderr"))
            lines.append(f"  {r['variant']} {r['model']}: {result['metric']} {r['loss']:.4f}; {scores}")
    lines.append(result["equal_compute"]["text"])
    lines.append(result["equal_params"]["text"])
    for p in result["plots"]:
        lines.append(f"wrote {p}")
    return "\n".join(lines)


def run(sweep_dir: str | Path, out: str | Path | None = None, metric: str = "final_val_loss") -> dict:
    """Load, fit, compare and plot; returns the JSON-ready result (also written to scaling_fits.json)."""
    from vffn_pretrain.outputs.apart import check_apart
    from vffn_pretrain.outputs.atomic import sweep_stale_partials, write_json_atomic
    from vffn_pretrain.outputs.lock import claim_output

    runs = load_runs(sweep_dir, metric)
    # A summary with a non-zero exit_code belongs to a run that stopped early (requeued, diverged):
    # its loss is not the end of training, so it is left out and listed.
    skipped = [{"path": str(r.path), "exit_code": r.exit_code} for r in runs if not r.complete]
    runs = [r for r in runs if r.complete]
    if not runs:
        raise SummaryError(f"every run below {sweep_dir} stopped early (non-zero exit_code); nothing to fit")
    out_dir = Path(out) if out is not None else Path(sweep_dir) / "scaling"
    check_apart({"--out": out_dir}, {"the summary": [r.path for r in runs]})
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(20, "exists and is not a directory", str(out_dir))
    from vffn_pretrain.scaling.compare import analyse  # numpy, scipy and matplotlib: only for the work
    from vffn_pretrain.scaling.plot import plot_loss_vs_compute, plot_loss_vs_params

    result = analyse(runs, metric)
    compute_fits, param_fits = result.pop("_compute_fits"), result.pop("_param_fits")
    result["sweep_dir"] = str(sweep_dir)
    result["skipped_runs"] = skipped
    with claim_output(out_dir, "--out", "vffn-scaling"):
        out_dir.mkdir(exist_ok=True)
        for name in ("loss_vs_compute.png", "loss_vs_params.png", "scaling_fits.json"):
            sweep_stale_partials(out_dir / name)
        result["plots"] = [
            str(plot_loss_vs_compute(runs, compute_fits, metric, out_dir / "loss_vs_compute.png")),
            str(plot_loss_vs_params(runs, param_fits, metric, out_dir / "loss_vs_params.png")),
        ]
        write_json_atomic(out_dir / "scaling_fits.json", result, default=None)
    return result


def main(argv: list[str] | None = None) -> int:
    survive_closed_output()  # a reader that goes away (`| head`) does not stop the work
    parser = argparse.ArgumentParser(prog="vffn-scaling", description=__doc__.split("\n\n")[1])
    parser.add_argument("sweep_dir", help="directory searched (any depth) for run summary.json files")
    parser.add_argument("--out", default=None, help="output directory (default SWEEP_DIR/scaling)")
    parser.add_argument("--metric", choices=METRICS, default="final_val_loss")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of text")
    args = parser.parse_args(argv)
    if not Path(args.sweep_dir).is_dir():
        print(f"vffn-scaling: error: SWEEP_DIR {args.sweep_dir} is not a directory", file=sys.stderr)
        return 2
    from vffn_pretrain.outputs.apart import OutputOverlapsInput
    from vffn_pretrain.outputs.lock import OutputInUse
    from vffn_pretrain.process.interrupts import EXIT_INTERRUPTED, interrupted, interruptible

    try:
        with interruptible():
            result = run(args.sweep_dir, args.out, args.metric)
    except (SummaryError, OutputOverlapsInput) as e:
        print(f"vffn-scaling: error: {e}", file=sys.stderr)
        return 2
    except OutputInUse as e:
        print(f"vffn-scaling: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # --out names a file, or is not writable
        print(f"vffn-scaling: error: cannot write the results to --out {args.out or e.filename}: "
              f"{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        print(f"vffn-scaling: {interrupted(stop)}; the results are not complete", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
