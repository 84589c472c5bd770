"""build_datasets with two gloo ranks: rank 0 prepares the data (tokenizes the bundled corpus, builds the
indices) once, both ranks see the same samples, and an error on rank 0 reaches rank 1 instead of hanging it."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import traceback

from tests.data.conftest import _free_port


def _rank_main(rank: int, port: int, workdir: str, cases: list) -> None:
    """Run build_datasets for each (name, paths) case; write what each rank saw to rankN.json."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch.distributed as dist

    results: dict = {}
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
        import vffn_pretrain.data.tokenizing.pipeline as pipeline
        from vffn_pretrain.data.builder import build_datasets
        from vffn_pretrain.data.config import DataConfig
        from vffn_pretrain.data.tokenizer import build_tokenizer

        calls = []
        original = pipeline.run_tokenize
        pipeline.run_tokenize = lambda opts: (calls.append(opts.output_prefix), original(opts))[1]
        for name, paths in cases:
            result = results[name] = {}
            cfg = DataConfig.from_dict({"paths": paths, "cache_dir": os.path.join(workdir, name, "cache")})
            try:
                train, _, _ = build_datasets(cfg, seq_length=16, seed=5, num_samples=(64, 8, 0),
                                             tokenizer=build_tokenizer(None), padded_vocab_size=8192)
                result["samples"] = [train[i]["tokens"].tolist() for i in range(8)]
            except ValueError as err:
                result["error"] = str(err)
            result["tokenize_calls"] = len(calls)
            calls.clear()
        dist.destroy_process_group()
    except Exception:
        results["crash"] = traceback.format_exc()
    with open(os.path.join(workdir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)


def test_two_ranks_prepare_once_agree_and_share_errors(tmp_path):
    cases = [("good", None), ("bad", str(tmp_path / "missing"))]
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, port, str(tmp_path), cases)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)  # about 6 s normally; generous for a heavily loaded machine
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
    assert not hung, "a rank hung"
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert "crash" not in r0 and "crash" not in r1, r0.get("crash") or r1.get("crash")

    # Only rank 0 tokenized the bundled corpus; both ranks see the same samples; one set of cached indices.
    assert (r0["good"]["tokenize_calls"], r1["good"]["tokenize_calls"]) == (1, 0)
    assert r0["good"]["samples"] == r1["good"]["samples"]
    assert len(list((tmp_path / "good" / "cache" / "indices").glob("*shuffle_index.npy"))) == 3

    # An error found on rank 0 is raised on both ranks (rank 1 does not wait forever at a barrier).
    assert r0["bad"]["error"] == r1["bad"]["error"]
    assert r0["bad"]["error"].startswith("data.paths:") and "file not found" in r0["bad"]["error"]
