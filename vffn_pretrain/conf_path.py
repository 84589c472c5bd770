"""Where the Hydra config tree lives: `conf/` at the repository root (install the package editable)."""

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
