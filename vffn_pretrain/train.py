"""`vffn-pretrain [hydra overrides]` (also `python -m vffn_pretrain.train`): pretraining, under torchrun at any
world size or as a plain single process.

Exit codes: 0 done; 1 an error (a failed checkpoint save, the run_dir locked by another trainer); 2 the run
diverged (train.max_skipped_steps NaN/Inf steps in a row) or a bad config or bad data (an unknown key, a wrong
value, a missing or damaged dataset, a checkpoint of another model); 3 a SIGTERM/SIGUSR1/SIGINT arrived, a
checkpoint was saved, and the same command will resume (requeue); 130 a second Ctrl-C aborted the run.
Expected failures print one line naming the key or file, without a traceback.
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

from vffn_pretrain.config.errors import ConfigError
from vffn_pretrain.config.overrides import precheck_overrides
from vffn_pretrain.config.paths import CONF_DIR
from vffn_pretrain.config.usage import print_usage, wants_help
from vffn_pretrain.process.exits import EXIT_BAD_CONFIG, fail


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
    from vffn_pretrain.config.run import load_run_config
    from vffn_pretrain.parallel.init import launcher_world_size
    from vffn_pretrain.training.errors import RunError
    from vffn_pretrain.training.signals import EXIT_INTERRUPTED
    from vffn_pretrain.training.trainer import run

    try:
        run_cfg = load_run_config(cfg, world_size=launcher_world_size(),
                                  multirun_dir=_multirun_dir())
        code = run(run_cfg)
    except ConfigError as e:
        _fail(f"bad config: {e}", EXIT_BAD_CONFIG)
    except RunError as e:
        _fail(f"error: {e}", e.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted before training started; nothing was saved", EXIT_INTERRUPTED)
    if code:
        sys.exit(code)
    return code


def _fail(message: str, code: int):
    fail("vffn-pretrain", message, code, show=_is_rank0())


def main() -> None:
    import warnings

    warnings.filterwarnings("ignore")
    if wants_help(sys.argv[1:]):
        print_usage("vffn-pretrain", "Pretrain a megatron-core GPT with VersatileFFN layers (or a baseline FFN); "
                                     "resumes from run_dir's latest checkpoint.")
        return
    precheck_overrides("vffn-pretrain", str(CONF_DIR), sys.argv[1:], show=_is_rank0())
    _hydra_main()


if __name__ == "__main__":
    main()
