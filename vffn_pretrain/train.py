"""`vffn-pretrain [hydra overrides]` (also `python -m vffn_pretrain.train`): pretraining, under torchrun at any
world size or as a plain single process.

Exit codes: 0 done; 1 an error; 2 the run diverged (train.max_skipped_steps NaN/Inf steps in a row) or a bad
config; 3 a SIGTERM/SIGUSR1 arrived, a checkpoint was saved, and the same command will resume (requeue).
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

from vffn_pretrain.conf_path import CONF_DIR
from vffn_pretrain.config_errors import ConfigError

EXIT_BAD_CONFIG = 2


def _multirun_dir() -> str | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        hc = HydraConfig.get()
    except ValueError:
        return None
    return hc.runtime.output_dir if hc.mode == RunMode.MULTIRUN else None


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
def _hydra_main(cfg: DictConfig) -> int:
    logging.basicConfig(level=logging.INFO if _is_rank0() else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("megatron", "torch.distributed", "py.warnings"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from vffn_pretrain.config import load_run_config
    from vffn_pretrain.parallel.init import launcher_world_size

    try:
        run_cfg = load_run_config(cfg, world_size=launcher_world_size(),
                                  multirun_dir=_multirun_dir())
    except ConfigError as e:
        if _is_rank0():
            print(f"vffn-pretrain: bad config: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_CONFIG)

    from vffn_pretrain.training.trainer import run

    code = run(run_cfg)
    if code:
        sys.exit(code)
    return code


def main() -> None:
    import warnings

    warnings.filterwarnings("ignore")
    _hydra_main()


if __name__ == "__main__":
    main()
