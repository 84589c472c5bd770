"""`--help` for the Hydra-based commands (`vffn-pretrain`, `vffn-info`), printed without composing anything.

Hydra's own `--help` composes the whole config tree (a second or more); this lists the config groups and their
choices from `conf/`'s directory listing. `--hydra-help` and `--cfg job` still reach Hydra.
"""

from __future__ import annotations

import sys

from vffn_pretrain.config.paths import CONF_DIR

HELP_FLAGS = ("--help", "-h")


def wants_help(argv: list[str]) -> bool:
    return any(arg in HELP_FLAGS for arg in argv)


def print_usage(prog: str, summary: str) -> None:
    """`summary`: what the command does, in a line or two."""
    import yaml  # PyYAML, which OmegaConf depends on

    defaults = yaml.safe_load((CONF_DIR / "config.yaml").read_text())["defaults"]
    groups = [CONF_DIR / name for entry in defaults if isinstance(entry, dict)
              for name in entry if "/" not in name and not name.startswith("override")]
    lines = [f"usage: {prog} [KEY=VALUE | GROUP=CHOICE ...]", "", summary, "",
             f"Hydra overrides of {CONF_DIR / 'config.yaml'}; config groups and their choices:"]
    for group in groups:
        choices = sorted(p.stem for p in group.glob("*.yaml"))
        lines.append(f"  {group.name:<11} {', '.join(choices)}")
    lines += ["", "Every key of a group: --cfg job (prints the composed config); Hydra's own help: --hydra-help.",
              "Exit codes: 0 done, 1 error, 2 bad config or data, 3 saved on a stop signal (requeue), 130 interrupted."]
    print("\n".join(lines), file=sys.stdout)
