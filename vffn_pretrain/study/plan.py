"""The runs of a study: per seed, one base run, one continued run per variant, and the from-scratch arm.

Run directories under the study's output directory ``OUT``::

    OUT/base/seed{S}                 the base (``base_variant``, ``base_steps``), checkpoints in ./checkpoints
    OUT/continued/{variant}/seed{S}  ``train.init_from=OUT/base/seed{S}/checkpoints``, ``continued_steps``
    OUT/scratch/{variant}/seed{S}    from scratch for ``base_steps`` (the base's tokens; the paper's Table 5);
                                     not planned for ``base_variant``, whose run of that length is the base
    OUT/scratch_long/{variant}/seed{S}  from scratch for ``base_steps + continued_steps`` (the tokens a
                                     continued run has seen in all)

Every run of a seed gets ``train.seed=S`` (model init, data order (``data.seed`` follows it), Gumbel noise);
every continued run of a seed therefore sees exactly the same batches in the same order, with the same batch
size and LR schedule, and the continued runs see the base's data once more (the paper's second epoch). A
from-scratch run of a seed starts from the same initial shared weights as the base (the initialisation is keyed
by parameter name) and sees the base's batches first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vffn_pretrain.study.config import StudyConfig, StudyConfigError

PHASES = ("base", "continued", "scratch", "scratch_long")


@dataclass(frozen=True)
class PlannedRun:
    name: str                 # "base/seed1", "continued/kloop2/seed1", "scratch_long/versatile/seed1"
    phase: str                # one of PHASES
    variant: str
    seed: int
    steps: int
    run_dir: Path
    overrides: tuple[str, ...]
    after: str | None = None  # the run whose final checkpoint this one starts from
    ffn: str = ""             # the conf/ffn group of the variant
    kind: str = ""            # its FFN kind


def corpus_overrides(cfg: StudyConfig) -> list[str]:
    """Trainer overrides that select the study's corpus (none for the bundled one)."""
    if cfg.corpus_dir is None:
        return []
    d = Path(cfg.corpus_dir).expanduser().resolve()
    manifest = d / "manifest.json"
    if not manifest.is_file():
        name = cfg.corpus_name or "NAME"
        raise StudyConfigError(f"{cfg.path}: key 'corpus.dir' is {d}, which has no manifest.json; build it "
                               f"with `vffn-data corpus build {name} --out {d}` or pass --corpus DIR")
    try:
        vocab = int(json.loads(manifest.read_text())["tokenizer"]["vocab_size"])
    except (ValueError, KeyError, TypeError):
        raise StudyConfigError(f"{manifest}: not a corpus manifest (no tokenizer.vocab_size)") from None
    return [f"data.train_paths=[{d / 'train'}]", f"data.valid_paths=[{d / 'valid'}]",
            f"data.test_paths=[{d / 'test'}]", f"data.tokenizer={d / 'tokenizer.json'}",
            f"model.vocab_size={vocab}"]


def make_plan(cfg: StudyConfig, out: str | Path) -> list[PlannedRun]:
    """Runs in the order they should start: all bases first (they gate the continued runs), then per seed the
    long from-scratch runs (the longest first: a better packing of the jobs), the continued runs and the
    from-scratch runs of the base's length."""
    out = Path(out).resolve()
    common = [*corpus_overrides(cfg), *cfg.overrides]

    def run(phase: str, variant: str, seed: int, steps: int, after: str | None = None,
            extra: tuple[str, ...] = ()) -> PlannedRun:
        name = f"{phase}/seed{seed}" if phase == "base" else f"{phase}/{variant}/seed{seed}"
        run_dir = out / name
        label = "base" if phase == "base" else (variant if phase == "continued" else f"{phase}-{variant}")
        return PlannedRun(
            name=name, phase=phase, variant=variant, seed=seed, steps=steps, run_dir=run_dir, after=after,
            ffn=cfg.ffn_group(variant), kind=cfg.kind_of(variant),
            overrides=(*common, *cfg.overrides_of(variant), f"train.seed={seed}", f"train.max_steps={steps}",
                       *extra, f"run_dir={run_dir}", f"run_name={cfg.name}-{label}-seed{seed}"))

    runs = [run("base", cfg.base_variant, seed, cfg.base_steps) for seed in cfg.seeds]
    for seed in cfg.seeds:
        runs += [run("scratch_long", v, seed, cfg.base_steps + cfg.continued_steps) for v in cfg.from_scratch]
        base = out / "base" / f"seed{seed}" / "checkpoints"
        runs += [run("continued", v, seed, cfg.continued_steps, after=f"base/seed{seed}",
                     extra=(f"train.init_from={base}",)) for v in cfg.variants]
        runs += [run("scratch", v, seed, cfg.base_steps) for v in cfg.from_scratch if v != cfg.base_variant]
    return runs
