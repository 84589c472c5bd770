"""The runs of a study: per seed, one base run and one continued run per variant.

Run directories under the study's output directory ``OUT``::

    OUT/base/seed{S}                the base (``base_variant``, ``base_steps``), checkpoints in ./checkpoints
    OUT/continued/{variant}/seed{S} ``train.init_from=OUT/base/seed{S}/checkpoints``, ``continued_steps``

Every run of a seed gets ``train.seed=S`` (model init, data order (``data.seed`` follows it), Gumbel noise);
every continued run of a seed therefore sees exactly the same batches in the same order, with the same batch
size and LR schedule, and the continued runs see the base's data once more (the paper's second epoch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vffn_pretrain.study.config import StudyConfig, StudyConfigError


@dataclass(frozen=True)
class PlannedRun:
    name: str                 # "base/seed1", "continued/kloop2/seed1"
    phase: str                # "base" | "continued"
    variant: str
    seed: int
    steps: int
    run_dir: Path
    overrides: tuple[str, ...]
    after: str | None = None  # the run whose final checkpoint this one starts from


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
    """Runs in the order they should start: all bases first (they gate everything), then by seed, variant."""
    out = Path(out).resolve()
    common = [*corpus_overrides(cfg), *cfg.overrides]
    runs = []
    for seed in cfg.seeds:
        run_dir = out / "base" / f"seed{seed}"
        runs.append(PlannedRun(
            name=f"base/seed{seed}", phase="base", variant=cfg.base_variant, seed=seed, steps=cfg.base_steps,
            run_dir=run_dir,
            overrides=(*common, f"ffn={cfg.base_variant}", f"train.seed={seed}", f"train.max_steps={cfg.base_steps}",
                       f"run_dir={run_dir}", f"run_name={cfg.name}-base-seed{seed}")))
    for seed in cfg.seeds:
        base_dir = out / "base" / f"seed{seed}"
        for variant in cfg.variants:
            run_dir = out / "continued" / variant / f"seed{seed}"
            runs.append(PlannedRun(
                name=f"continued/{variant}/seed{seed}", phase="continued", variant=variant, seed=seed,
                steps=cfg.continued_steps, run_dir=run_dir, after=f"base/seed{seed}",
                overrides=(*common, f"ffn={variant}", f"train.seed={seed}",
                           f"train.max_steps={cfg.continued_steps}", f"train.init_from={base_dir / 'checkpoints'}",
                           f"run_dir={run_dir}", f"run_name={cfg.name}-{variant}-seed{seed}",
                           *cfg.variant_overrides.get(variant, ()))))
    return runs
