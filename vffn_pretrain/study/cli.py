"""``vffn-study``: run the paper's comparisons as a seeded study, and report on it.

    vffn-study run conf/study/round2_cpu.yaml --out DIR [--quick] [--corpus DIR] [--jobs N] [--seeds S,...]
                   [--dry-run]
    vffn-study report DIR [--out REPORT_DIR]

``run`` trains what is not finished (rerun the same command to resume), then writes the report into
DIR/report when every run has finished. ``run --seeds 1,3`` trains only those seeds' runs (a seed's runs
depend on no other seed's): a long study split over sessions or machines, one seed at a time; the report is
written once every seed has finished. ``report`` writes report.md, report.json, corpus-manifest.json,
final_loss.png, delta_vs_dense.png, gap_over_tokens.png and val_curves.png from whatever runs have finished
(the others are listed as missing), reading each run in DIR (DIR/<run name>) even when DIR was moved or copied.

``run`` stops as a whole on Ctrl-C, SIGTERM or SIGHUP: the running trainers save and stop, no further run
starts, exit 130 (rerun the same command to resume); killed with kill -9 it leaves no trainer behind. --out
must not be, contain or lie inside the study file or the corpus it reads; ``report --out`` must not overlap
the files it reads and replaces only a report directory.

Exit status: 0 done (with --seeds: those seeds done; the report once every seed is); 1 some runs failed (or
are blocked by a failed base): the report is not written; or the output is in use by another command (another
vffn-study run, another report); 2 bad usage, a bad study file or record (the message names the file and key),
an output directory holding another study or over its inputs, or (report) a directory where no run past the
base has finished; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vffn_pretrain.process.streams import survive_closed_output


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vffn-study", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("run", help="train the study's runs (skipping finished ones), then write the report")
    p.add_argument("config", metavar="STUDY_YAML", help="a study file, e.g. conf/study/table1_cpu.yaml")
    p.add_argument("--out", required=True, metavar="DIR", help="study directory (runs, logs, report)")
    p.add_argument("--quick", action="store_true", help="the study file's tiny `quick:` form (tests, smoke)")
    p.add_argument("--corpus", default=None, metavar="DIR", help="a `vffn-data corpus build` output "
                   "[the study file's corpus.dir]")
    p.add_argument("--jobs", type=int, default=None, metavar="N", help="runs at a time [the study file's]")
    p.add_argument("--seeds", default=None, metavar="S,...", help="train only these seeds' runs (of the study "
                   "file's seeds) [all]")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their commands; train nothing")
    p = sub.add_parser("report", help="write the Markdown report and plots of a study directory")
    p.add_argument("study_dir", metavar="DIR")
    p.add_argument("--out", default=None, metavar="REPORT_DIR", help="where to write [DIR/report]")
    return parser


def _run(args) -> int:
    from vffn_pretrain.outputs.apart import check_apart
    from vffn_pretrain.study.config import load_study
    from vffn_pretrain.study.plan import make_plan
    from vffn_pretrain.study.report import write_report
    from vffn_pretrain.study.runner import StudyDirError, command, record_plan, run_plan, take_lock

    cfg = load_study(args.config, quick=args.quick, corpus_dir=args.corpus)
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    out = Path(args.out)
    check_apart({"--out": out}, {"the study file": cfg.path, "the corpus": cfg.corpus_dir})
    if out.exists() and not out.is_dir():
        raise StudyDirError(f"--out {out}: exists and is not a directory")
    plan = make_plan(cfg, out)
    selected = _selected(plan, args.seeds, cfg.seeds)
    if args.dry_run:
        for run in selected:
            print(f"{run.name}: {' '.join(command(run))}")
        return 0
    lock = take_lock(out)
    try:
        record_plan(out, plan, {"name": cfg.name, "config": _repo_relative(cfg.path), "quick": cfg.quick,
                                "corpus": cfg.corpus_dir, "corpus_name": cfg.corpus_name,
                                "corpus_manifest": _corpus_manifest(cfg.corpus_dir), "seeds": list(cfg.seeds),
                                "base_variant": cfg.base_variant, "base_steps": cfg.base_steps,
                                "continued_steps": cfg.continued_steps, "tokens_per_step": _tokens_per_step(cfg)},
                    log=lambda m: print(m, flush=True))
        status = run_plan(selected, out, jobs=args.jobs or cfg.jobs, threads=cfg.threads_per_job,
                          log=lambda m: print(m, flush=True))
    finally:
        lock.release()
    bad = {k: v for k, v in status.items() if v != "finished"}
    if bad:
        for name, why in bad.items():
            print(f"vffn-study: {name}: {why}", file=sys.stderr)
        print(f"vffn-study: {len(bad)} of {len(selected)} runs not finished; rerun the same command to retry",
              file=sys.stderr)
        return 1
    from vffn_pretrain.study.runner import is_finished

    others = [r for r in plan if r not in selected and not is_finished(r)]
    if others:
        seeds = sorted({r.seed for r in others})
        done = ", ".join(str(seed) for seed in sorted({r.seed for r in selected}))
        print(f"seeds {done} finished; {len(others)} runs of seeds {', '.join(map(str, seeds))} remain "
              "(the report is written when every seed has finished)")
        return 0
    path = write_report(out)
    print(f"study finished: report {path}")
    return 0


def _selected(plan: list, seeds_arg: str | None, study_seeds) -> list:
    """The runs of the seeds --seeds names (all runs without it); ValueError naming --seeds on a bad list."""
    if seeds_arg is None:
        return plan
    try:
        seeds = {int(s) for s in seeds_arg.split(",")}
    except ValueError:
        raise ValueError(f"--seeds must be a comma-separated list of integers, got {seeds_arg!r}") from None
    unknown = sorted(seeds - set(study_seeds))
    if unknown:
        raise ValueError(f"--seeds: {', '.join(map(str, unknown))} not among the study file's seeds "
                         f"{list(study_seeds)}")
    return [r for r in plan if r.seed in seeds]


def _repo_relative(path: str) -> str:
    """The study file as the report names it: relative to the repository when inside it, else its file name
    (never a path of the machine that ran the study)."""
    from vffn_pretrain.config.paths import REPO_ROOT

    p = Path(path).resolve()
    return str(p.relative_to(REPO_ROOT)) if p.is_relative_to(REPO_ROOT) else p.name


def _corpus_manifest(corpus_dir: str | None) -> dict | None:
    """The corpus's manifest as the report publishes it (None for the bundled corpus)."""
    from vffn_pretrain.study.report import published_manifest

    if corpus_dir is None:
        return None
    return published_manifest(json.loads((Path(corpus_dir).expanduser() / "manifest.json").read_text()))


def _tokens_per_step(cfg) -> int | None:
    """global batch x sequence length as the overrides set them (None when they leave the defaults)."""
    vals = {}
    for o in cfg.overrides:
        key, _, value = o.partition("=")
        vals[key.lstrip("+")] = value
    try:
        return int(vals["train.global_batch_size"]) * int(vals["train.seq_length"])
    except (KeyError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (also when called from Python)."""
    survive_closed_output()  # a reader that goes away (`| head`) does not stop the work
    from vffn_pretrain.outputs.lock import OutputInUse
    from vffn_pretrain.process.interrupts import EXIT_INTERRUPTED, interrupted, interruptible
    from vffn_pretrain.study.collect import StudyReadError
    from vffn_pretrain.study.config import StudyConfigError
    from vffn_pretrain.study.runner import StudyDirError

    args = build_parser().parse_args(argv)
    try:
        with interruptible():
            if args.command == "run":
                return _run(args)
            from vffn_pretrain.study.report import write_report

            path = write_report(args.study_dir, args.out)
        print(f"wrote {path}")
        data = json.loads((path.parent / "report.json").read_text())
        if data["missing"]:
            print(f"vffn-study: {len(data['missing'])} runs not finished and left out", file=sys.stderr)
        return 0
    except KeyboardInterrupt as stop:
        print(f"vffn-study: {interrupted(stop)}; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OutputInUse as err:  # another command writes this output: exit 1, as every tool
        print(f"vffn-study: error: {err}", file=sys.stderr)
        return 1
    except (StudyConfigError, StudyDirError, StudyReadError, ValueError, OSError) as err:
        print(f"vffn-study: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
