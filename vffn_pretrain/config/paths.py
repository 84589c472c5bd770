"""Where the repository's files live: `conf/` (the Hydra config tree) at the repository root (install the
package editable)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_ROOT / "conf"
