"""Composing `conf/` with a command line's Hydra overrides, outside `@hydra.main`.

`compose_config` is how the tools that take overrides next to their own flags (`vffn-plan`, calibrate) compose;
`precheck_overrides` is for the Hydra-based commands (`vffn-pretrain`, `vffn-info`).

Hydra reports a bad override (an unknown key without `+`, a config group option that does not exist, a
malformed value) with exit status 1; the project's promise is 2 for a bad config. `precheck_overrides`
composes the config once before Hydra runs, so that such a command line fails with one line and exit 2.
"""

from __future__ import annotations

import os

from vffn_pretrain.config.errors import ConfigError
from vffn_pretrain.config.paths import CONF_DIR
from vffn_pretrain.process.exits import EXIT_BAD_CONFIG, fail


def compose_config(overrides: list[str]):
    """The composed Hydra config; a bad override (Hydra's or OmegaConf's error) becomes a one-line ConfigError
    naming `overrides`."""
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            return compose("config", overrides=overrides)
    except Exception as e:
        if type(e).__module__.startswith(("hydra", "omegaconf")):
            raise ConfigError("overrides", str(e).splitlines()[0]) from None
        raise


def precheck_overrides(prog: str, conf_dir: str, argv: list[str], *, show: bool = True) -> None:
    """Exit 2 with one line if `argv` (Hydra's flags and overrides) would not run: a malformed flag or a
    combination Hydra refuses, a --config-path / --config-dir that is no directory, a --config-name found in
    none of them, an --experimental-rerun file that does not exist, or overrides that do not compose (for a
    sweep, -m, each swept value once). Help and shell completion are left to Hydra, and so is composing with
    another config directory or name once they exist."""
    from hydra import compose, initialize_config_dir

    try:
        flags = _hydra_flags(argv)
        _check_config_flags(flags, conf_dir)
    except BadHydraFlag as e:
        fail(prog, f"bad command line: {e}", EXIT_BAD_CONFIG, show=show)
    if (flags.help or flags.hydra_help or flags.shell_completion or flags.experimental_rerun
            or flags.config_path or flags.config_name or flags.config_dir):
        return
    overrides: list[str] = []
    try:
        lines = _command_lines(flags.overrides, sweep=flags.multirun)
        with initialize_config_dir(config_dir=conf_dir, version_base=None):
            for overrides in lines:
                compose("config", overrides=overrides)
    except Exception as e:  # noqa: BLE001 - anything Hydra or OmegaConf raise on the user's overrides
        reason = " ".join(str(e).split("Config search path")[0].split()) or type(e).__name__
        culprit = _culprit(conf_dir, overrides, reason)
        fail(prog, f"bad config: {culprit}{reason}", EXIT_BAD_CONFIG, show=show)


def _culprit(conf_dir: str, overrides: list[str], reason: str) -> str:
    """"OVERRIDE: " for the override without which the others compose, when the error `reason` names none of
    them (Python's "Exceeds the limit (4300 digits)" for a huge number, say); "" when none is found so."""
    from hydra import compose, initialize_config_dir

    if any(o.split("=", 1)[0].lstrip("+~") in reason for o in overrides):
        return ""
    try:
        with initialize_config_dir(config_dir=conf_dir, version_base=None):
            for i, override in enumerate(overrides):
                try:
                    compose("config", overrides=overrides[:i] + overrides[i + 1:])
                except Exception:  # noqa: BLE001 - the fault is elsewhere (too)
                    continue
                return f"{override if len(override) <= 80 else override[:60] + '...'}: "
    except Exception:  # noqa: BLE001 - no better line than the error itself
        pass
    return ""


def add_overrides(argv: list[str], extra: list[str]) -> list[str]:
    """`argv` with the `extra` overrides after the user's, arranged so that Hydra's parser reads the same flags:
    the flags, then `--`, then every override (an override after a flag that takes an optional value, or
    between a flag and its value, would change what the flag reads)."""
    if not extra:
        return list(argv)
    try:
        flags = _hydra_flags(argv)
    except BadHydraFlag:
        return [*argv, *extra]  # Hydra reports the user's own mistake
    given = list(flags.overrides)
    rest = list(argv)
    if given:
        starts = [k for k in range(len(argv) - len(given), -1, -1) if argv[k:k + len(given)] == given]
        if not starts:
            return [*argv, *extra]
        rest = argv[:starts[0]] + argv[starts[0] + len(given):]
    arranged = [*(a for a in rest if a != "--"), "--", *given, *extra]
    try:
        same = vars(_hydra_flags(arranged)) == {**vars(flags), "overrides": [*given, *extra]}
    except BadHydraFlag:
        same = False
    return arranged if same else [*argv, *extra]


class BadHydraFlag(ValueError):
    """One of Hydra's own flags is malformed or names a directory or config that does not exist."""


def _hydra_flags(argv: list[str]):
    """argv parsed by Hydra's own parser; BadHydraFlag (one line) instead of argparse's usage and exit, and for
    the combinations Hydra refuses with a traceback."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()

    def error(message: str):
        raise BadHydraFlag(f"{message} (see --hydra-help)")

    parser.error = error
    flags = parser.parse_args(argv)
    modes = [name for name, on in (("--run", flags.run), ("--multirun", flags.multirun), ("--cfg", flags.cfg),
                                   ("--info", flags.info), ("--shell-completion", flags.shell_completion)) if on]
    if len(modes) > 1:
        raise BadHydraFlag(f"{' and '.join(modes)} given together; only one of --run, --multirun, --cfg, --info "
                           "and --shell-completion can be")
    if flags.resolve and not (flags.cfg or flags.help):
        raise BadHydraFlag("--resolve is for --cfg or --help (it prints the config with its values resolved)")
    if flags.experimental_rerun is not None and not os.path.isfile(flags.experimental_rerun):
        raise BadHydraFlag(f"--experimental-rerun {flags.experimental_rerun}: no such file (a run's "
                           ".hydra/config.pickle)")
    return flags


def _check_config_flags(flags, conf_dir: str) -> None:
    """BadHydraFlag naming the flag when --config-path or --config-dir is no directory, or --config-name names
    no config in them. --config-path must be absolute: Hydra reads a relative one from the package when run as
    `vffn-pretrain` and from the module's folder when run as `python -m`, never from the current directory."""
    primary = conf_dir
    if flags.config_path is not None and not flags.config_path.startswith("pkg://"):
        if not os.path.isabs(flags.config_path):
            raise BadHydraFlag(f"--config-path {flags.config_path!r}: give an absolute path (Hydra does not read a "
                               "relative one from the current directory; --config-dir adds one that it does)")
        primary = flags.config_path
        if not os.path.isdir(primary):
            raise BadHydraFlag(f"--config-path {flags.config_path}: not a directory")
    extra = []
    if flags.config_dir is not None:
        extra = [os.path.abspath(flags.config_dir)]
        if not os.path.isdir(extra[0]):
            raise BadHydraFlag(f"--config-dir {flags.config_dir}: not a directory")
    if flags.config_name is not None and not (flags.config_path or "").startswith("pkg://"):
        name = flags.config_name if flags.config_name.endswith(".yaml") else flags.config_name + ".yaml"
        dirs = [primary, *extra]
        if not any(os.path.isfile(os.path.join(d, name)) for d in dirs):
            raise BadHydraFlag(f"--config-name {flags.config_name}: no {name} in {' or '.join(dirs)}")


MAX_SWEEP_CHECKS = 16


def _command_lines(overrides: list[str], *, sweep: bool) -> list[list[str]]:
    """The override lists to compose: `overrides` itself, or for a sweep (-m) its first job and, for each
    swept key, other values of it with the other keys at their first value (each value composed once, not
    every combination; at most MAX_SWEEP_CHECKS lists). A sweep with no values runs no job: nothing to check.
    Sweeps only a sweeper plugin enumerates (interval, glob) are left to it. ValueError for a sweep whose
    values cannot be listed (``range(0,10,0)``)."""
    if not sweep:
        return [overrides]
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    choices = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if not override.is_sweep_override():
            choices.append([override.input_line])
            continue
        try:
            values = list(itertools.islice(override.sweep_string_iterator(), MAX_SWEEP_CHECKS))
        except HydraException:
            return []
        except (ValueError, TypeError) as e:
            raise ValueError(f"{override.input_line}: {e}") from None
        if not values:
            return []
        key = override.get_key_element()
        choices.append([f"{key}={value}" for value in values])
    first = [values[0] for values in choices]
    lines = [first] + [[*first[:i], value, *first[i + 1:]] for i, values in enumerate(choices) for value in values[1:]]
    return lines[:MAX_SWEEP_CHECKS]
