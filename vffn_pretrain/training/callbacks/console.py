"""Megatron-style log lines, and a progress bar when stdout is a terminal."""

from __future__ import annotations

import sys
from typing import Any

from vffn_pretrain.training.callbacks.base import Callback, stream_target


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def format_log_line(r: dict[str, Any]) -> str:
    parts = [
        f"step {r['step']:>6d}/{r['max_steps']}",
        f"tokens {r['consumed_tokens']:.3e}",
        f"loss {r['loss']:.4f}",
        f"lr {r['lr']:.3e}",
        f"grad_norm {r['grad_norm']:.3f}" if r.get("grad_norm") is not None else "grad_norm n/a",
    ]
    if r.get("tau") is not None:
        parts.append(f"tau {r['tau']:.3f}")
    if r.get("mean_loops") is not None:
        parts.append(f"loops {r['mean_loops']:.2f}")
    if r.get("graph_work_fraction") is not None and r["graph_work_fraction"] < 1.0:
        parts.append(f"graph {r['graph_work_fraction']:.2f}")
    parts += [
        f"tok/s {r['tokens_per_sec']:.0f}",
        f"TFLOP/s/dev {r['tflops_per_device']:.3f}",
        f"MFU {r['mfu'] * 100:.1f}%" if isinstance(r.get("mfu"), float) else f"MFU {r.get('mfu', 'unknown')}",
        f"skipped {r['skipped_steps']}",
        f"ETA {_fmt_time(r.get('eta_s'))}",
    ]
    return " | ".join(parts)


def format_checkpoint_line(r: dict[str, Any]) -> str:
    written = r.get("checkpoint_write_s")
    background = f", written in the background in {written:.2f} s" if written is not None else ""
    return f"saved checkpoint {r['checkpoint']} (training blocked {r['checkpoint_blocking_s']:.2f} s{background})"


class ConsoleLogger(Callback):
    optional = True

    def target(self) -> str:
        return stream_target(self.stream)

    def __init__(self, progress_bar: str | bool = "auto", stream=None):
        self.stream = stream or sys.stdout
        use_bar = self.stream.isatty() if progress_bar == "auto" else bool(progress_bar)
        self.bar = None
        self._use_bar = use_bar

    def _print(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, file=self.stream, flush=True)

    def on_train_start(self, info):
        self._print(
            f"vffn-pretrain: {info['run_name']} | {info['params_total']:,} parameters "
            f"({info['params_non_embedding']:,} non-embedding) | {info['flops_per_token_train']:.3e} training "
            f"FLOPs/token | world {info['world_size']} (TP {info['tp']} PP {info['pp']} DP {info['dp']}) | "
            f"device {info['device']}"
        )
        self._print(f"run dir {info['run_dir']} | checkpoints {info['checkpoint_dir']}"
                    + (f" | resumed from step {info['start_step']}" if info["start_step"] else ""))
        if info.get("mfu_peak"):
            self._print(f"MFU against {info['mfu_peak']}")
        if self._use_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=info["max_steps"], initial=info["start_step"], file=self.stream,
                            dynamic_ncols=True, unit="step")

    def on_log(self, record):
        if self.bar is not None:
            self.bar.n = record["step"]
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", refresh=False)
            self.bar.refresh()
        self._print(format_log_line(record))

    def on_eval(self, record):
        loops = f" | val_mean_loops {record['val_mean_loops']:.2f}" if record.get("val_mean_loops") else ""
        self._print(f"eval at step {record['step']}: val_loss {record['val_loss']:.4f} | "
                    f"val_ppl {record['val_ppl']:.2f}{loops}")

    def on_checkpoint(self, record):
        self._print(format_checkpoint_line(record))

    def on_message(self, text):
        self._print(text)

    def on_train_end(self, summary):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        lines = ["", "=== run summary ==="]
        for key, value in summary.items():
            if isinstance(value, float):
                value = f"{value:.4f}"
            lines.append(f"{key:>24}: {value}")
        self._print("\n".join(lines))
