"""`vffn-pretrain [hydra overrides]` (also `python -m vffn_pretrain.train`): pretraining, under torchrun at any
world size or as a plain single process.

Exit codes: 0 done (or nothing left to train: the run's results are left as they were); 1 an error (a failed
checkpoint save, a full disk, the run_dir or checkpoint.dir locked by another trainer); 2 the run did not
succeed (train.max_skipped_steps NaN/Inf steps in a row, no optimizer step succeeded, a non-finite final loss)
or a bad config or bad data (an unknown key, a wrong value, a directory that cannot be written, a missing or
damaged dataset, a checkpoint of another model, no loadable checkpoint); 3 a SIGTERM/SIGUSR1/SIGHUP/SIGINT
arrived, a checkpoint was saved (or, before training began, there was nothing new to save), and the same command
will resume (requeue); 130 Ctrl-C before training began, or a second Ctrl-C. Expected failures print one line
naming the key or file, without a traceback. `vffn_pretrain.training.signals` says what each signal does when.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from vffn_pretrain.config.errors import ConfigError
from vffn_pretrain.config.overrides import precheck_overrides
from vffn_pretrain.config.paths import CONF_DIR
from vffn_pretrain.config.usage import print_usage, wants_help
from vffn_pretrain.process.exits import EXIT_BAD_CONFIG, fail, run_and_exit_quickly
from vffn_pretrain.process.streams import survive_closed_output

if TYPE_CHECKING:
    from omegaconf import DictConfig


def _multirun_dir() -> str | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        hc = HydraConfig.get()
    except ValueError:
        return None
    return hc.runtime.output_dir if hc.mode == RunMode.MULTIRUN else None


def _check_run_dir_holds_nothing_else(run_dir) -> None:
    """ConfigError naming run_dir when the run would write over files that are not a run's: run_dir is a
    directory the config was composed from (conf/, --config-path, --config-dir: its config.yaml is the primary
    config), or holds a config.yaml that is not a run's config (one with Hydra's `defaults`, or without the
    model, ffn and train groups) or a summary.json that is not a run's summary, where no run has been (no
    metrics.jsonl, checkpoints/ or lock)."""
    run_dir = Path(run_dir)
    try:
        _check_files_of(run_dir)
    except OSError as e:  # a name the file system refuses (too long), a file on the way: the key's problem
        raise ConfigError("run_dir", f"{run_dir}: {e.strerror or e}") from None


def _check_files_of(run_dir) -> None:
    import json

    from omegaconf import OmegaConf

    try:
        from hydra.core.hydra_config import HydraConfig

        sources = HydraConfig.get().runtime.config_sources
    except ValueError:  # not run by Hydra (a test calling the task)
        sources = []
    for source in sources:
        if source.provider in ("main", "command-line") and source.path and not source.path.startswith("pkg://"):
            if run_dir.resolve() == Path(source.path.removeprefix("file://")).resolve():
                raise ConfigError("run_dir", f"{run_dir} is a directory the config was composed from; the run would "
                                             "write its config.yaml over the primary config there: choose another "
                                             "run_dir")
    config, summary = run_dir / "config.yaml", run_dir / "summary.json"
    if any((run_dir / mark).exists() for mark in ("metrics.jsonl", "checkpoints", "vffn-pretrain.lock")):
        return  # an earlier run's directory: its files are the run's own, even damaged ones
    if config.exists():
        try:
            loaded = OmegaConf.to_container(OmegaConf.load(config))
            ours = isinstance(loaded, dict) and "defaults" not in loaded and {"model", "ffn", "train"} <= set(loaded)
        except Exception:  # noqa: BLE001 - unreadable YAML, a directory: not a run's config either way
            ours = False
        if not ours:
            raise ConfigError("run_dir", f"{config} is not the config of a vffn-pretrain run; the run would write its "
                                         "own over it: choose another run_dir")
    if summary.exists():
        try:
            ours = "exit_code" in json.loads(summary.read_text())
        except (OSError, ValueError, TypeError):
            ours = False
        if not ours:
            raise ConfigError("run_dir", f"{summary} is not the summary of a vffn-pretrain run; the run would write "
                                         "its own over it: choose another run_dir")


def _is_rank0() -> bool:
    """Rank 0 prints the one-line errors. A RANK that is not a number (empty, junk) counts as rank 0: an error
    must never go unsaid (the launcher's own check reports the bad RANK)."""
    try:
        return int(os.environ.get("RANK", "0")) == 0
    except ValueError:
        return True


def _task(cfg: DictConfig) -> int:
    """The Hydra task: validate the config, then train."""
    logging.basicConfig(level=logging.INFO if _is_rank0() else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("megatron", "torch.distributed", "py.warnings"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    logging.getLogger("torch").setLevel(logging.WARNING)  # e.g. its fake-tensor cache statistics at exit
    from vffn_pretrain.config.run import load_run_config
    from vffn_pretrain.parallel.launcher_env import launcher_world_size
    from vffn_pretrain.training.errors import RunError
    from vffn_pretrain.training.signals import EXIT_INTERRUPTED, StoppedBeforeTraining

    try:
        world_size = launcher_world_size()
    except ValueError as e:
        _fail(f"bad environment: {e}", EXIT_BAD_CONFIG)
    run_cfg = None
    try:
        run_cfg = load_run_config(cfg, world_size=world_size, multirun_dir=_multirun_dir())
        _check_run_dir_holds_nothing_else(run_cfg.run_dir)
        if os.environ.get("VFFN_CONFIG_CHECK") == "1":
            return 0  # launch/torchrun.sh checks the config once, before it starts the workers
        # Imported only now: the trainer brings in megatron-core (seconds), which the check above does not need.
        from vffn_pretrain.training.trainer import run

        code = run(run_cfg)
    except ConfigError as e:
        _fail(f"bad config: {e}", EXIT_BAD_CONFIG)
    except RunError as e:
        _fail(f"error: {e}", e.exit_code)
    except StoppedBeforeTraining as e:
        _fail(e.message(), e.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted before training started; nothing was saved", EXIT_INTERRUPTED)
    except MemoryError as e:  # the host's memory, not a device's: one line, the checkpoints as they were
        _fail(f"error: out of memory{f' ({e})' if str(e) else ''}; the checkpoints already saved are intact", 1)
    except Exception as e:
        from vffn_pretrain.parallel.collective_failure import describe

        lost = describe(e, run_cfg.parallel.collective_timeout_min if run_cfg else None) if world_size > 1 else None
        if lost is None:
            raise
        _fail(f"error: {lost}", 1)
    if code:
        sys.exit(code)
    return code


def _fail(message: str, code: int):
    fail("vffn-pretrain", message, code, show=_is_rank0())


def cli() -> None:
    """The `vffn-pretrain` command (and `python -m vffn_pretrain.train`): `main`, then a quick exit."""
    run_and_exit_quickly(main)


def main() -> None:
    """The command's body; returns, or raises SystemExit with the exit code (tests call it in-process)."""
    import warnings

    from vffn_pretrain.training.signals import STOP, StoppedBeforeTraining

    survive_closed_output()  # a reader that goes away (`| head`) must not stop the run
    warnings.filterwarnings("ignore")
    logging.raiseExceptions = False  # a log line that cannot be written (a full disk) is not a traceback
    if wants_help(sys.argv[1:]):
        print_usage("vffn-pretrain", "Pretrain a megatron-core GPT with VersatileFFN layers (or a baseline FFN); "
                                     "resumes from run_dir's latest checkpoint.")
        return
    try:
        # First: a signal during the imports below is handled too (signals.py says how), and one that arrives
        # while the handlers are being installed is the same one line.
        STOP.install()
        import hydra  # here, not at the top: the stop signals are handled while it (and torch) load

        precheck_overrides("vffn-pretrain", str(CONF_DIR), sys.argv[1:], show=_is_rank0())
        hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)(_task)()
    except StoppedBeforeTraining as e:
        _fail(e.message(), e.exit_code)


if __name__ == "__main__":
    cli()
