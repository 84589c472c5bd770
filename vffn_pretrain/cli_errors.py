"""One-line errors for the Hydra-based commands (`vffn-pretrain`, `vffn-info`).

Hydra reports a bad override (an unknown key without `+`, a config group option that does not exist, a
malformed value) with exit status 1; the project's promise is 2 for a bad config. `precheck_overrides`
composes the config once before Hydra runs, so that such a command line fails with one line and exit 2.
"""

from __future__ import annotations

import sys

EXIT_BAD_CONFIG = 2


def fail(prog: str, message: str, code: int, *, show: bool = True):
    if show:
        print(f"{prog}: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def precheck_overrides(prog: str, conf_dir: str, argv: list[str], *, show: bool = True) -> None:
    """Exit 2 with one line if `argv` (Hydra overrides) do not compose. Command lines with Hydra flags (-m,
    --cfg, --help, ...) are left to Hydra."""
    if any(arg.startswith("-") for arg in argv):
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    try:
        with initialize_config_dir(config_dir=conf_dir, version_base=None):
            compose("config", overrides=argv)
    except (ConfigCompositionException, OverrideParseException, MissingConfigException) as e:
        reason = " ".join(str(e).split("Config search path")[0].split())
        fail(prog, f"bad config: {reason}", EXIT_BAD_CONFIG, show=show)
