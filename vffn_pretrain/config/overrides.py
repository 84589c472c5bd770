"""Composing `conf/` with a command line's Hydra overrides, outside `@hydra.main`.

`compose_config` is how the tools that take overrides next to their own flags (`vffn-plan`, calibrate) compose;
`precheck_overrides` is for the Hydra-based commands (`vffn-pretrain`, `vffn-info`).

Hydra reports a bad override (an unknown key without `+`, a config group option that does not exist, a
malformed value) with exit status 1; the project's promise is 2 for a bad config. `precheck_overrides`
composes the config once before Hydra runs, so that such a command line fails with one line and exit 2.
"""

from __future__ import annotations

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
