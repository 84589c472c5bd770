"""Forward+backward time and activation memory of one FFN layer per kind, relative to dense (docs/method.md §13).

Usage: python benchmarks/ffn_layer.py [--d 512 --d-ff 2048 --seq 512 --batch 8 --rounds 5] [--json]
       [--no-token-sparse-rows]

Each row is the whole MLP slot of a transformer layer (pre-norm, FFN, residual): dense, kloop4, moe (shared dense
expert + 8 experts of d_ff/8, top-2), versatile in training mode (fwd+bwd), and in eval mode (forward only, under
no_grad) with the loop head as initialised and forced to 1 and to L_max loops; eval rows are compared with the
dense forward. Kinds are timed in interleaved rounds, so drift in machine load hits all alike.

Times: on GPU, wall-clock median. On CPU, where this benchmark usually shares the cores with other jobs, the
primary figure is the process CPU time per step (median over rounds), which load from other processes inflates
far less than wall-clock time; the wall-clock minimum is printed next to it. The default is one intra-op thread
on CPU: with several, idle OpenMP threads spin and that spinning is charged as CPU time whenever the cores are
contended (--threads 2 uses both cores; then run it on a quiet machine). FLOP ratios come from
vffn_pretrain.model.counting (docs/method.md §13 accounting: versatile training costs L_max + k/N dense passes forward,
and the backward of the same without token-sparse recursion or of E[l] + P(l < L_max) * k/N with it, at the
sampled loop mix shown; eval costs E[l] + P(l < L_max) * k/N at the measured loop mix). "time/FLOP" is the time ratio divided by the FLOP ratio: 1.0
means the layer costs exactly what its arithmetic costs relative to dense. The "§7" columns use the cheaper
accounting with the width path reusing loop 1's activations (k/N of one fc2 instead of k/N of a whole FFN),
which is what the implementation computes at TP=1.

Token-sparse recursion (second table): versatile training with and without ffn.token_sparse_recursion at three
sampled loop mixes (uniform, 70/10/10/10 and 10/10/10/70). The mix is imposed by zeroing the loop head and adding
log(mix) to the Gumbel noise, so the counts are a sample of that categorical and the straight-through gradient
is not degenerate. "x all-token" is the all-token time (or memory) over the token-sparse one at the same mix,
next to the ratio the FLOP model predicts (counting.ffn_train_step_multiplier).

Memory: on GPU, peak allocated bytes during the step; on CPU (no allocator statistics) the bytes of the
distinct tensors autograd saves for the backward pass (the activation memory of the layer), "-" for eval.

On Linux CPU the script re-executes itself with glibc malloc tunables that keep freed memory in the process:
by default glibc hands every block over 32 MiB back to the OS and page-faults it in again on the next step,
which charges the layers with the most activation memory ~10-30 % extra time that a GPU caching allocator never
pays (--no-malloc-tuning turns this off).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings

if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402


def build_block(kind_cfg, d: int, d_ff: int, params_dtype=torch.float32, *, backend: str = "auto"):
    """The MLP slot of one transformer layer as a module: pre-norm, FFN, bias-dropout-add (residual), with
    `backend` (auto: the one the trainer would pick; its name is the block's `backend_name`), on the GPU when
    there is one."""
    from megatron.core.transformer.spec_utils import build_module

    from vffn_pretrain.model.backend import select_backend
    from vffn_pretrain.model.config import ModelConfig
    from vffn_pretrain.model.ffn import build_ffn_slot
    from vffn_pretrain.model.gpt import build_transformer_config
    from vffn_pretrain.parallel.config import ParallelConfig

    model = ModelConfig(num_layers=1, hidden_size=d, ffn_hidden_size=d_ff, num_attention_heads=8, vocab_size=128)
    config = build_transformer_config(model, ParallelConfig(), ffn=kind_cfg, params_dtype=params_dtype)
    chosen = select_backend(backend)
    slot = build_ffn_slot(kind_cfg.kind, kind_cfg, chosen)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = build_module(slot.pre_mlp_layernorm, config=config, hidden_size=d,
                                     eps=config.layernorm_epsilon)
            self.mlp = build_module(slot.mlp, config=config)
            if hasattr(self.mlp, "set_layer_number"):
                self.mlp.set_layer_number(1)

        def forward(self, h):
            return slot.mlp_bda(self.training, False)(self.mlp(self.norm(h)), h, 0.0)

    block = Block()
    block.backend_name = chosen.name
    if torch.cuda.is_available():
        block.cuda()
    return block


class SavedBytes:
    """Bytes of the distinct storages autograd saves for backward while the context is active."""

    def __init__(self):
        self.seen, self.bytes = set(), 0

    def pack(self, t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self.seen:
            self.seen.add(ptr)
            self.bytes += t.untyped_storage().nbytes()
        return t

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def run_once(block, h, grad, training: bool, seed: int):
    """(wall seconds, process CPU seconds, memory bytes or None) of one step."""
    from vffn_pretrain.model import noise

    noise.seed_microbatch(0, (seed, 0))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    block.train(training)
    start, cpu_start = time.perf_counter(), time.process_time()
    if training:
        x = h.detach().requires_grad_(True)
        with SavedBytes() as saved:
            out = block(x)
        out.backward(grad)
        block.zero_grad(set_to_none=True)
    else:
        saved = None
        with torch.no_grad():
            block(h)
    if cuda:
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    if cuda:
        return seconds, cpu_seconds, torch.cuda.max_memory_allocated() - base
    return seconds, cpu_seconds, None if saved is None else saved.bytes


MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184"


def maybe_reexec_with_malloc_tuning(disabled: bool) -> None:
    """Re-run this script with MALLOC_TUNABLES set (Linux CPU only; see the module docstring)."""
    if disabled or torch.cuda.is_available() or not sys.platform.startswith("linux"):
        return
    if os.environ.get("GLIBC_TUNABLES", "") == MALLOC_TUNABLES:
        return
    env = dict(os.environ, GLIBC_TUNABLES=MALLOC_TUNABLES)
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--d-ff", type=int, default=2048)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="parameters and activations")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: 1 on CPU, see the module docstring)")
    parser.add_argument("--no-malloc-tuning", action="store_true", help="keep glibc's default malloc settings")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--no-token-sparse-rows", action="store_true",
                        help="skip the token-sparse recursion table (six more training rows)")
    args = parser.parse_args(argv)
    if argv is None:
        maybe_reexec_with_malloc_tuning(args.no_malloc_tuning)
    if args.threads or not torch.cuda.is_available():
        torch.set_num_threads(args.threads or 1)

    from megatron.core import parallel_state as ps

    from vffn_pretrain.model.counting import FFNShape, ffn_flops_multiplier, ffn_train_step_multiplier
    from vffn_pretrain.model.ffn import state
    from vffn_pretrain.model.ffn.config import FFNConfig
    from vffn_pretrain.parallel.config import ParallelConfig
    from vffn_pretrain.parallel.init import init_distributed, seed_all, setup_model_parallel

    init_distributed()
    setup_model_parallel(ParallelConfig())
    seed_all(0)
    kinds = {
        "dense": FFNConfig(kind="dense"),
        "kloop4": FFNConfig(kind="kloop", loops=4),
        "moe": FFNConfig(kind="moe"),
        "versatile": FFNConfig(kind="versatile"),
    }
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    blocks = {name: build_block(cfg, args.d, args.d_ff, dtype) for name, cfg in kinds.items()}
    sparse_rows = []
    if not args.no_token_sparse_rows:
        for variant, on in (("sparse", True), ("all-token", False)):
            blocks[f"versatile {variant}"] = build_block(FFNConfig(kind="versatile", token_sparse_recursion=on),
                                                         args.d, args.d_ff, dtype)
            with torch.no_grad():
                blocks[f"versatile {variant}"].mlp.loop_head.weight.zero_()
        for mix_name, mix in LOOP_MIXES.items():
            for variant in ("all-token", "sparse"):
                sparse_rows.append((f"{mix_name} {variant}", f"versatile {variant}", True, None, mix))
    L = kinds["versatile"].max_loops
    rows = [  # (row name, block, training, force_loops, sampled loop mix)
        ("dense", "dense", True, None, None), ("kloop4", "kloop4", True, None, None),
        ("moe", "moe", True, None, None), ("versatile", "versatile", True, None, None),
        ("dense eval", "dense", False, None, None), ("versatile eval", "versatile", False, None, None),
        ("versatile eval l=1", "versatile", False, 1, None), (f"versatile eval l={L}", "versatile", False, L, None),
    ] + sparse_rows
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda") if cuda else torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(args.seq, args.batch, args.d, generator=gen).to(dev, dtype)
    grad = torch.randn(args.seq, args.batch, args.d, generator=gen).to(dev, dtype)
    wall = {r[0]: [] for r in rows}
    cpu = {r[0]: [] for r in rows}
    mems, mixes = {}, {}
    for rnd in range(args.warmup + args.rounds):
        for name, block_name, training, force, mix in rows:
            block = blocks[block_name]
            state.set_inference_overrides([block], force_loops=force)
            if mix is not None:
                impose_loop_mix(block.mlp, mix)
            state.collect_stats([block])  # reset
            seconds, cpu_seconds, mem = run_once(block, h, grad, training, rnd)
            if rnd >= args.warmup:
                wall[name].append(seconds)
                cpu[name].append(cpu_seconds)
                mems[name] = mem
                if block_name.startswith("versatile"):
                    hist = state.collect_stats([block])[1]["loop_hist"]
                    mixes[name] = [c / sum(hist) for c in hist]
    ps.destroy_model_parallel()

    def primary(name):  # the time the ratios use
        return statistics.median(wall[name]) if cuda else statistics.median(cpu[name])

    shape = {n: FFNShape(c.kind, num_experts=c.num_experts, top_k=c.top_k, max_loops=c.max_loops, loops=c.loops)
             for n, c in kinds.items()}
    result = {"shape": {"d": args.d, "d_ff": args.d_ff, "tokens": args.seq * args.batch, "device": str(dev),
                        "dtype": args.dtype,
                        "threads": torch.get_num_threads(), "rounds": args.rounds,
                        "time": "wall median" if cuda else "process CPU median",
                        "malloc": os.environ.get("GLIBC_TUNABLES", "default")}, "rows": []}
    for name, block_name, training, _, imposed in rows:
        if imposed is not None:
            continue
        base = "dense" if training else "dense eval"
        mix = mixes.get(name)
        if training:  # what the layer computes: with token-sparse recursion the backward follows the sampled mix
            sparse = kinds[block_name].token_sparse_recursion
            flops, flops_reuse = (ffn_train_step_multiplier(shape[block_name], loop_mix=mix, token_sparse=sparse,
                                                            width_reuse=reuse) for reuse in (False, True))
        else:
            flops = ffn_flops_multiplier(shape[block_name], training=False, loop_mix=mix)
            flops_reuse = ffn_flops_multiplier(shape[block_name], training=False, loop_mix=mix, width_reuse=True)
        ratio = primary(name) / primary(base)
        mem, dense_mem = mems.get(name), mems.get("dense")
        result["rows"].append({
            "name": name, "mode": "train fwd+bwd" if training else "eval fwd",
            "ms": 1000 * primary(name), "wall_min_ms": 1000 * min(wall[name]),
            "time_ratio": ratio, "wall_min_ratio": min(wall[name]) / min(wall[base]),
            "flop_ratio": flops, "time_per_flop": ratio / flops,
            "flop_ratio_reuse": flops_reuse, "time_per_flop_reuse": ratio / flops_reuse,
            "mem_mb": None if mem is None else mem / 2**20,
            "mem_ratio": None if mem is None or not dense_mem else mem / dense_mem,
            "loop_mix": mix,
        })
    result["token_sparse"] = token_sparse_rows(sparse_rows, primary, mems, mixes, shape["versatile"])
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    s = result["shape"]
    print(f"FFN layer, d={s['d']} d_ff={s['d_ff']} tokens={s['tokens']} on {s['device']} ({s['threads']} threads); "
          f"time = {s['time']} of {s['rounds']} rounds; malloc: {s['malloc']}")
    print(f"{'layer':<20}{'mode':<15}{'ms':>9}{'time x':>8}{'wall x':>8}{'FLOP x':>8}{'time/FLOP':>10}"
          f"{'FLOP x §7':>10}{'t/F §7':>8}{'act MB':>8}{'mem x':>7}  loop mix")
    for r in result["rows"]:
        mem = "-" if r["mem_mb"] is None else f"{r['mem_mb']:.0f}"
        memx = "-" if r["mem_ratio"] is None else f"{r['mem_ratio']:.2f}"
        mix = "" if r["loop_mix"] is None else "[" + ", ".join(f"{p:.2f}" for p in r["loop_mix"]) + "]"
        print(f"{r['name']:<20}{r['mode']:<15}{r['ms']:>9.1f}{r['time_ratio']:>8.2f}{r['wall_min_ratio']:>8.2f}"
              f"{r['flop_ratio']:>8.2f}{r['time_per_flop']:>10.2f}{r['flop_ratio_reuse']:>10.2f}"
              f"{r['time_per_flop_reuse']:>8.2f}{mem:>8}{memx:>7}  {mix}")
    if result["token_sparse"]:
        print("\nToken-sparse recursion, versatile training (fwd+bwd) at imposed loop mixes")
        print(f"{'mix':<12}{'variant':<11}{'ms':>9}{'time x dense':>14}{'x all-token':>13}{'theory':>8}"
              f"{'act MB':>8}{'mem x dense':>13}{'mem x all-tok':>15}  sampled mix")
        for r in result["token_sparse"]:
            speed = "" if r["speedup"] is None else f"{r['speedup']:.2f}"
            theory = "" if r["theory_speedup"] is None else f"{r['theory_speedup']:.2f}"
            memx = "" if r["mem_vs_all_token"] is None else f"{r['mem_vs_all_token']:.2f}"
            mix = "[" + ", ".join(f"{p:.2f}" for p in r["loop_mix"]) + "]"
            print(f"{r['mix']:<12}{r['variant']:<11}{r['ms']:>9.1f}{r['time_vs_dense']:>14.2f}{speed:>13}"
                  f"{theory:>8}{r['mem_mb']:>8.0f}{r['mem_vs_dense']:>13.2f}{memx:>15}  {mix}")
    return 0


LOOP_MIXES = {"uniform": [0.25, 0.25, 0.25, 0.25], "1-heavy": [0.7, 0.1, 0.1, 0.1],
              "Lmax-heavy": [0.1, 0.1, 0.1, 0.7]}


def impose_loop_mix(mlp, mix: list[float]) -> None:
    """Sample the loop counts of `mlp` (a VersatileFFN with a zeroed loop head) from Categorical(mix): Gumbel
    noise plus log(mix) is the Gumbel-max trick with logits log(mix)."""
    original = type(mlp)._noise
    log_mix = torch.log(torch.tensor(mix))

    def noise_with_mix(hidden):
        return original(mlp, hidden) + log_mix.to(hidden.device)

    mlp._noise = noise_with_mix


def token_sparse_rows(rows, primary, mems, mixes, versatile_shape) -> list[dict]:
    """The second table: each imposed-mix row against dense and against the all-token row at its mix."""
    from vffn_pretrain.model.counting import ffn_train_step_multiplier

    out = []
    for name, _, _, _, mix in rows:
        mix_name, variant = name.rsplit(" ", 1)
        all_token = f"{mix_name} all-token"
        sparse = variant == "sparse"
        theory = None
        if sparse:
            # FLOP model at the mix actually sampled; §7 width accounting (what TP=1 computes)
            theory = (ffn_train_step_multiplier(versatile_shape, loop_mix=mixes[name], width_reuse=True)
                      / ffn_train_step_multiplier(versatile_shape, loop_mix=mixes[name], token_sparse=True,
                                                  width_reuse=True))
        mem = mems[name]
        out.append({
            "mix": mix_name, "variant": variant, "imposed_mix": mix, "loop_mix": mixes[name],
            "ms": 1000 * primary(name), "time_vs_dense": primary(name) / primary("dense"),
            "speedup": primary(all_token) / primary(name) if sparse else None, "theory_speedup": theory,
            "mem_mb": (mem or 0) / 2**20, "mem_vs_dense": (mem or 0) / (mems["dense"] or 1),
            "mem_vs_all_token": (mem / mems[all_token]) if sparse and mem and mems[all_token] else None,
        })
    return out


if __name__ == "__main__":
    sys.exit(main())
