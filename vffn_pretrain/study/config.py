"""A study file (conf/study/*.yaml): what to train, with which seeds, on which data.

Keys (all required unless a default is given)::

    name: table1_cpu
    corpus: {name: debian-docs-en, dir: PATH}   # a `vffn-data corpus build` output; null: the bundled corpus
    seeds: [1, 2, 3]                            # each seed: base init, data order, Gumbel noise
    base_variant: dense                         # the FFN the base is trained with [dense]
    variants: [dense, kloop2, ...]              # variants continued from the base: conf/ffn/<name>.yaml groups
                                                # or names defined in variant_ffn
    variant_ffn: {versatile_blend: versatile}   # variants that are a conf/ffn group plus overrides: name -> group
                                                # (the name: letters, digits, _ . -) [{}]
    variant_overrides: {versatile: [...]}       # extra overrides of a variant's runs; a variant of variant_ffn
                                                # gets its group's, then its own [{}]
    from_scratch: [dense, versatile, ...]       # the from-scratch arm (the paper's Table 5): each variant trained
                                                # without init_from for base_steps and for base_steps +
                                                # continued_steps (base_variant's first is the base itself) [[]]
    base_steps: 300                             # optimizer steps of the base (one "epoch" E)
    continued_steps: 300                        # optimizer steps of every continued run (E again)
    overrides: [model.hidden_size=64, ...]      # trainer overrides shared by every run
    jobs: 2                                     # runs at a time [1]
    threads_per_job: 1                          # OMP/torch threads per run [1]
    quick: {...}                                # keys replaced by `--quick` (a tiny form for tests) [{}]

Problems are :class:`StudyConfigError` naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from vffn_pretrain.config.paths import CONF_DIR

FFN_CONF_DIR = CONF_DIR / "ffn"
KEYS = {"name", "corpus", "seeds", "base_variant", "variants", "variant_ffn", "from_scratch", "base_steps",
        "continued_steps", "overrides", "variant_overrides", "jobs", "threads_per_job", "quick"}
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


class StudyConfigError(ValueError):
    """A study file that cannot be read or has a wrong key."""


@dataclass(frozen=True)
class StudyConfig:
    path: str
    name: str
    corpus_name: str | None
    corpus_dir: str | None
    seeds: tuple[int, ...]
    base_variant: str
    variants: tuple[str, ...]
    base_steps: int
    continued_steps: int
    overrides: tuple[str, ...]
    variant_overrides: dict[str, tuple[str, ...]] = field(default_factory=dict)
    jobs: int = 1
    threads_per_job: int = 1
    quick: bool = False
    variant_ffn: dict[str, str] = field(default_factory=dict)
    from_scratch: tuple[str, ...] = ()

    def ffn_group(self, variant: str) -> str:
        """The conf/ffn group a variant is built from (the variant itself unless variant_ffn names one)."""
        return self.variant_ffn.get(variant, variant)

    def overrides_of(self, variant: str) -> tuple[str, ...]:
        """`ffn=<group>` and the variant's extra overrides: its group's, then (a variant_ffn name) its own."""
        group = self.ffn_group(variant)
        own = self.variant_overrides.get(variant, ()) if variant != group else ()
        return (f"ffn={group}", *self.variant_overrides.get(group, ()), *own)

    def kind_of(self, variant: str) -> str:
        """The FFN kind of a variant (the `kind:` of its conf/ffn group)."""
        return group_kind(self.ffn_group(variant))

    def variant_names(self) -> tuple[str, ...]:
        """Every variant a run of this study trains: the base's, the continued ones, the from-scratch ones."""
        return tuple(dict.fromkeys([self.base_variant, *self.variants, *self.from_scratch]))


def group_kind(group: str) -> str:
    """The `kind:` of the conf/ffn group `group` (kloop4 -> kloop)."""
    return str(OmegaConf.load(FFN_CONF_DIR / f"{group}.yaml").kind)


def load_study(path: str | Path, *, quick: bool = False, corpus_dir: str | None = None) -> StudyConfig:
    """Read and check a study file; ``quick`` applies its ``quick:`` block, ``corpus_dir`` replaces corpus.dir."""
    path = Path(path)
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except FileNotFoundError:
        raise StudyConfigError(f"{path}: no such study file") from None
    except Exception as e:  # YAML syntax, interpolation errors
        raise StudyConfigError(f"{path}: not a readable study file ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise StudyConfigError(f"{path}: expected a mapping at the top level")

    def bad(key: str, why: str) -> StudyConfigError:
        return StudyConfigError(f"{path}: key {key!r} {why}")

    unknown = sorted(set(raw) - KEYS)
    if unknown:
        raise bad(unknown[0], f"is not a study key (known: {', '.join(sorted(KEYS))})")
    quick_block = raw.get("quick") or {}
    if not isinstance(quick_block, dict) or set(quick_block) - (KEYS - {"quick", "name"}):
        raise bad("quick", "must be a mapping of study keys (not name or quick)")
    if quick:
        raw = {**raw, **quick_block}
    for key in ("name", "seeds", "variants", "base_steps", "continued_steps", "overrides"):
        if key not in raw:
            raise bad(key, "is missing")

    def positive_int(key: str, value) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad(key, f"must be a positive integer, got {value!r}")
        return value

    def str_list(key: str, value) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad(key, f"must be a list of strings, got {value!r}")
        return tuple(value)

    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds) or len(set(seeds)) != len(seeds):
        raise bad("seeds", f"must be a non-empty list of distinct integers, got {seeds!r}")

    def is_group(name) -> bool:
        return isinstance(name, str) and (FFN_CONF_DIR / f"{name}.yaml").is_file()

    derived = raw.get("variant_ffn") or {}
    if not isinstance(derived, dict):
        raise bad("variant_ffn", "must map variant names to conf/ffn groups")
    for name, group in derived.items():
        if not isinstance(name, str) or not name or set(name) - NAME_CHARS or is_group(name):
            raise bad("variant_ffn", f"has the name {name!r}: a variant name is letters, digits, _ . - and not "
                                     "already a conf/ffn group")
        if not is_group(group):
            raise bad(f"variant_ffn.{name}", f"names {group!r}, which is not a conf/ffn group")
    variants = str_list("variants", raw["variants"])
    from_scratch = str_list("from_scratch", raw.get("from_scratch") or [])
    base_variant = raw.get("base_variant", "dense")
    for key, names in (("variants", variants), ("base_variant", (base_variant,)), ("from_scratch", from_scratch)):
        if not names and key != "from_scratch":
            raise bad(key, "must name at least one variant")
        for v in names:
            if key == "base_variant" and not is_group(v):
                raise bad(key, f"names {v!r}, which is not a conf/ffn group")
            if not (is_group(v) or v in derived):
                raise bad(key, f"names {v!r}, which is not a conf/ffn group or a variant_ffn name")
        if len(set(names)) != len(names):
            raise bad(key, "lists a variant twice")
    vo = raw.get("variant_overrides") or {}
    if not isinstance(vo, dict):
        raise bad("variant_overrides", "must map variant names to lists of overrides")
    for v in vo:  # a variant left out (as --quick does) keeps its entry unused; a typo is an error
        if not (is_group(v) or v in derived):
            raise bad("variant_overrides", f"names {v!r}, which is not a conf/ffn group or a variant_ffn name")
    corpus = raw.get("corpus")
    if corpus is not None and (not isinstance(corpus, dict) or not corpus.get("dir")):
        raise bad("corpus", "must be null (the bundled corpus) or {name: ..., dir: PATH}")
    return StudyConfig(
        path=str(path),
        name=str(raw["name"]),
        corpus_name=None if corpus is None else str(corpus.get("name") or ""),
        corpus_dir=corpus_dir or (None if corpus is None else str(corpus["dir"])),
        seeds=tuple(seeds),
        base_variant=base_variant,
        variants=variants,
        base_steps=positive_int("base_steps", raw["base_steps"]),
        continued_steps=positive_int("continued_steps", raw["continued_steps"]),
        overrides=str_list("overrides", raw["overrides"]),
        variant_overrides={k: str_list(f"variant_overrides.{k}", v) for k, v in vo.items()},
        jobs=positive_int("jobs", raw.get("jobs", 1)),
        threads_per_job=positive_int("threads_per_job", raw.get("threads_per_job", 1)),
        quick=quick,
        variant_ffn={str(k): str(v) for k, v in derived.items()},
        from_scratch=from_scratch,
    )
