"""Load any checkpoint into one process at TP = PP = 1, for inference tools (`vffn-generate`, `vffn-export`).

The checkpoint carries its run's config in its common state; the model is rebuilt from it with every parallel
dimension set to 1 and the distributed checkpoint reshards into it. The padded vocabulary is kept as saved
(it is a multiple of `make_vocab_size_divisible_by` x the saved TP), so a checkpoint from any layout loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class LoadedModel:
    """`model`: the GPTModel (eval mode, fp32 on CPU unless the run config says otherwise) holding every layer;
    `cfg`: the run's validated config with parallel dimensions set to 1; `path`: the step directory loaded;
    `step`: the optimizer step it was saved at (the FFN layers' step-dependent settings are set for it)."""

    model: Any
    cfg: Any
    path: Path
    step: int = 0

    @property
    def padded_vocab_size(self) -> int:
        return self.cfg.model.padded_vocab_size(1)


def load_checkpoint_for_inference(checkpoint: str | Path, seed: int = 0) -> LoadedModel:
    """Collective over a world of one: initialises torch.distributed (gloo) and megatron's parallel state in
    this process if needed. Raises FileNotFoundError when `checkpoint` is neither a step directory nor a
    checkpoint.dir holding one."""
    from megatron.core import dist_checkpointing
    from omegaconf import OmegaConf

    from vffn_pretrain.config.run import load_run_config
    from vffn_pretrain.model.ffn import state as ffn_state
    from vffn_pretrain.model.gpt import build_model
    from vffn_pretrain.parallel.init import init_distributed, seed_all, setup_model_parallel
    from vffn_pretrain.training import dist_ckpt
    from vffn_pretrain.training.convert import resolve_checkpoint
    from vffn_pretrain.training.optim import wrap_ddp

    ckpt = resolve_checkpoint(checkpoint)
    init_distributed()
    common = dist_checkpointing.load_common_state_dict(str(ckpt))["common"]
    raw = dict(common["config"])
    saved_tp = int(raw["parallel"].get("tp", 1) or 1)
    raw["parallel"] = {**raw["parallel"], "tp": 1, "pp": 1, "vpp": None, "sp": False, "ep": 1,
                       "pipeline_layout": None, "distributed_optimizer": False}
    # The embedding was padded for the saved TP: pad for TP=1 to the same size.
    model_raw = dict(raw["model"])
    model_raw["make_vocab_size_divisible_by"] = int(model_raw.get("make_vocab_size_divisible_by", 128)) * saved_tp
    raw["model"] = model_raw
    cfg = load_run_config(OmegaConf.create(raw), world_size=1)
    setup_model_parallel(cfg.parallel)
    seed_all(seed)
    chunks = build_model(cfg.model, cfg.ffn, cfg.parallel, backend="local")
    ddp = wrap_ddp(chunks, cfg.parallel)
    dist_ckpt.load(ckpt, ddp)
    step = int(common.get("step", 0))
    # tau and the blend-in weight (docs/method.md §15) of the step the checkpoint was saved at.
    ffn_state.set_training_step(chunks, step, cfg.train.max_steps)
    return LoadedModel(chunks[0].eval(), cfg, ckpt, step)


class NoLoadableCheckpoint(FileNotFoundError):
    """`checkpoint` is no checkpoint, holds none, or none of those it holds loads (the message says which)."""


def load_newest_for_inference(checkpoint: str | Path, seed: int = 0, say=None) -> LoadedModel:
    """`checkpoint` itself when it is a step directory; else the newest complete checkpoint in it that loads,
    each one that does not reported through `say(line)` before the previous one is tried, as the trainer does
    on resume. NoLoadableCheckpoint when there is nothing to load."""
    from torch.distributed.checkpoint.api import CheckpointException

    from vffn_pretrain.training.checkpointing import CheckpointManager, load_error_text

    path = Path(checkpoint)
    if not path.exists():
        raise NoLoadableCheckpoint(f"{path}: no such file or directory")
    if not path.is_dir():
        raise NoLoadableCheckpoint(f"{path}: not a directory (give a checkpoint.dir or a step_* directory)")
    if (path / "metadata.json").is_file():
        candidates = [path]
    else:
        manager = CheckpointManager(path)
        manager.check_marker()
        candidates = manager.complete_checkpoints()
    if not candidates:
        raise NoLoadableCheckpoint(f"{path}: neither a checkpoint (no metadata.json) nor a checkpoint.dir holding "
                                   "a complete step_* checkpoint")
    failures = []
    for ckpt in candidates:
        try:
            return load_checkpoint_for_inference(ckpt, seed=seed)
        except (Exception, CheckpointException) as e:  # noqa: BLE001 - damaged: report it, fall back
            why = load_error_text(e, ckpt)
            failures.append(f"{ckpt.name}: {why}")
            if say is not None and ckpt != candidates[-1]:  # the last one's failure is in the error raised
                say(f"checkpoint {ckpt} failed to load ({why}); trying the previous one")
    raise NoLoadableCheckpoint(f"{path}: no checkpoint could be loaded ({'; '.join(failures)})")


def inference_tokenizer(cfg, padded_vocab_size: int, override: str | None = None):
    """The tokenizer of a loaded checkpoint: `override` (a tool's --tokenizer, when the run's tokenizer file has
    moved) or the run's `data.tokenizer`. ValueError, one line naming it (with the --tokenizer hint), when it
    cannot be loaded or has more ids than the model."""
    from vffn_pretrain.data.tokenizer import build_tokenizer

    spec = override if override is not None else cfg.data.tokenizer
    where = f"--tokenizer {spec}" if override is not None else f"the run's tokenizer (data.tokenizer={spec})"
    try:
        tokenizer = build_tokenizer(spec)
    except (ValueError, OSError) as e:
        hint = "" if override is not None else "; if the file has moved since training, pass --tokenizer PATH"
        raise ValueError(f"{where} cannot be loaded ({e}){hint}") from None
    if tokenizer.vocab_size > padded_vocab_size:
        raise ValueError(f"{where} has {tokenizer.vocab_size} ids, more than the model's {padded_vocab_size} "
                         f"(model.vocab_size={cfg.model.vocab_size}): not the tokenizer it was trained with")
    return tokenizer
