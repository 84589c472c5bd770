"""The bad-input catalogue: every command-line tool, fed what a hurried user types.

Each case calls the tool's real entry point in this process and asserts the promise of the README: a non-zero
exit with the documented code (2 bad config or usage, 1 other errors), no Python traceback, one line of error
naming the offending key, flag or file, and nothing half-written left behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.faults.clis import run_cli
from tests.training import trainer_runs as cases

# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Damaged and odd inputs, made once."""
    from data_tools.cli import main as vffn_data

    d = tmp_path_factory.mktemp("bad")
    good = cases.make_dataset(d)
    (d / "afile").write_text("not a directory\n")
    (d / "empty.jsonl").write_text("")
    (d / "words.jsonl").write_text('{"body": "1 2 3"}\n{"body": "4 5"}\n')
    (d / "ids.jsonl").write_text('{"text": "1 2 3"}\n{"text": "7 8"}\n')
    (d / "adir").mkdir()
    (d / "foreign").mkdir()  # another application's directory
    (d / "foreign" / "config.yaml").write_text("app: {port: 80}\n")
    (d / "foreign2").mkdir()
    (d / "foreign2" / "summary.json").write_text('{"score": 1}\n')
    trunc = d / "trunc"
    for ext in (".bin", ".idx"):
        (d / f"trunc{ext}").write_bytes(Path(good + ext).read_bytes())
    (d / "trunc.bin").write_bytes((d / "trunc.bin").read_bytes()[:-10])
    assert vffn_data(["tokenize", "--input", str(d / "ids.jsonl"), "--output-prefix", str(d / "other"),
                      "--tokenizer", "null:600", "--workers", "0"]) == 0
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    IndexedDatasetBuilder(str(d / "empty.bin"), dtype=np.uint16).finalize(str(d / "empty.idx"))
    return {"dir": str(d), "good": good, "trunc": str(trunc), "other": str(d / "other"), "empty_ds": str(d / "empty"),
            "afile": str(d / "afile"), "adir": str(d / "adir"), "empty": str(d / "empty.jsonl"),
            "words": str(d / "words.jsonl"), "ids": str(d / "ids.jsonl")}


def _fill(argv: list[str], files: dict, tmp: Path) -> list[str]:
    return [a.format(tmp=tmp, **files) for a in argv]


def _nothing_left(tmp: Path) -> list[str]:
    return sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*"))


# ------------------------------------------------------------------------------------------------ vffn-pretrain
TRAIN = [*cases.BASE, "data.paths={good}", "data.cache_dir={tmp}/cache", "run_dir={tmp}/run"]

PRETRAIN_CASES = [
    # (id, overrides, exit code, text the error must contain)
    ("unknown-key", ["train.lr_max=1"], 2, "train.lr_max"),
    ("unknown-group-option", ["model=huge"], 2, "model/huge"),
    ("unknown-top-level-key", ["+foo=1"], 2, "`foo`"),
    ("negative-steps", ["train.max_steps=-5"], 2, "train.max_steps"),
    ("zero-batch", ["train.micro_batch_size=0"], 2, "train.micro_batch_size"),
    ("infinite-lr", ["train.lr=inf"], 2, "train.lr"),
    ("nan-beta", ["train.beta2=nan"], 2, "train.beta2"),
    ("string-for-int", ["train.seq_length=long"], 2, "train.seq_length"),
    ("bad-split", ["data.split=abc"], 2, "data.split"),
    ("negative-eval-iters", ["train.eval_iters=-1"], 2, "train.eval_iters"),
    ("run-dir-is-a-file", ["run_dir={afile}"], 2, "run_dir"),
    ("run-dir-holds-another-config", ["run_dir={dir}/foreign"], 2,
     "`run_dir`: {dir}/foreign/config.yaml is not the config of a vffn-pretrain run"),
    ("run-dir-holds-another-summary", ["run_dir={dir}/foreign2"], 2,
     "`run_dir`: {dir}/foreign2/summary.json is not the summary of a vffn-pretrain run"),
    ("checkpoint-dir-under-a-file", ["checkpoint.dir={afile}/ckpts"], 2, "checkpoint.dir"),
    ("cache-dir-is-a-file", ["data.cache_dir={afile}"], 2, "data.cache_dir"),
    ("missing-prefix", ["data.paths={tmp}/nowhere"], 2, "nowhere.idx"),
    ("prefix-is-a-directory", ["data.paths={adir}"], 2, "data.paths"),
    ("truncated-bin", ["data.paths={trunc}"], 2, "trunc.bin"),
    ("empty-dataset", ["data.paths={empty_ds}"], 2, "empty dataset"),
    ("other-tokenizer", ["data.paths={other}", "data.tokenizer=null:512"], 2, "data.tokenizer"),
    ("missing-tokenizer-file", ["data.tokenizer={tmp}/tok.json"], 2, "tok.json"),
    ("missing-init-from", ["train.init_from={tmp}/dense", "checkpoint.resume=false"], 2, "train.init_from"),
    # /sys refuses new directories to every user, root included (a read-only place that exists everywhere).
    ("run-dir-cannot-be-written", ["run_dir=/sys/vffn-run"], 2, "`run_dir`: /sys/vffn-run cannot be written"),
    ("checkpoint-dir-cannot-be-written", ["checkpoint.dir=/sys/vffn-checkpoints"], 2,
     "`checkpoint.dir`: /sys/vffn-checkpoints cannot be written"),
    # A name the file system refuses (a component over 255 bytes): an OSError traceback before.
    *[(f"{key.replace('.', '-').replace('_', '-')}-name-too-long", [f"{key}={{tmp}}/{'x' * 300}"], 2,
       f"`{key}`: {{tmp}}/{'x' * 300}: File name too long") for key in ("run_dir", "checkpoint.dir", "data.cache_dir")],
    ("empty-tokenizer-file", ["data.tokenizer=tiktoken:{empty}"], 2, "`data.tokenizer`: "),  # was data.paths
    # Hydra's own flags (Hydra would print its multi-line report, or a traceback, and exit 1).
    ("config-name-missing", ["--config-name", "nope"], 2, "--config-name nope: no nope.yaml in"),
    ("config-dir-missing", ["--config-dir", "{dir}/nowhere"], 2, "--config-dir {dir}/nowhere: not a directory"),
    ("config-path-missing", ["--config-path", "/nonexistent-conf"], 2, "--config-path /nonexistent-conf: not a"),
    ("sweep-with-a-bad-value", ["ffn=dense,mlp", "-m"], 2, "Could not find 'ffn/mlp'"),
    ("two-modes", ["-m", "--cfg", "job"], 2, "--multirun and --cfg given together"),
    ("unknown-flag", ["--resume-from", "x"], 2, "unrecognized arguments: --resume-from"),
    # megatron-core would try to allocate hundreds of TiB for the sample indices (a MemoryError traceback).
    ("data-request-beyond-memory", ["train.max_steps=1000000000000"], 2,
     "`train.max_steps`: 8,000,000,000,000 train samples"),
]


@pytest.mark.parametrize("overrides, code, named", [c[1:] for c in PRETRAIN_CASES],
                         ids=[c[0] for c in PRETRAIN_CASES])
def test_vffn_pretrain(overrides, code, named, files, tmp_path, capsys, monkeypatch):
    argv = _fill([*TRAIN, "logging.wandb.enabled=false", *overrides], files, tmp_path)
    out = run_cli("vffn-pretrain", argv, capsys, monkeypatch)
    assert out.code == code, out.out
    # The data plan ("[data] train: ...") may come first when the error is found after it.
    error = out.one_line_error(ignore_prefix="[data] ")
    assert error.startswith("vffn-pretrain: ") and named.format(tmp=tmp_path, **files) in error
    # No run directory (no config.yaml, lock or metrics); the sample-index cache holds only complete files.
    assert not any(p.startswith("run") for p in _nothing_left(tmp_path)), _nothing_left(tmp_path)


# ------------------------------------------------------------------------------------------------ vffn-data
TOK = ["tokenize", "--output-prefix", "{tmp}/out", "--tokenizer", "null:100", "--workers", "0"]

DATA_CASES = [
    ("empty-input", [*TOK, "--input", "{empty}"], 1, "the input is empty"),
    ("wrong-text-key", [*TOK, "--input", "{words}"], 1, "--text-key 'text'"),
    ("ids-out-of-range", ["tokenize", "--output-prefix", "{tmp}/out", "--tokenizer", "null:3", "--workers", "0",
                          "--input", "{ids}"], 1, "token_out_of_range"),
    ("missing-input", [*TOK, "--input", "{tmp}/nope.jsonl"], 1, "nope.jsonl"),
    ("directory-as-input", [*TOK, "--input", "{adir}"], 1, "adir"),
    ("negative-workers", [*TOK, "--input", "{ids}", "--workers", "-3"], 1, "--workers"),
    ("workers-not-a-number", [*TOK, "--input", "{ids}", "--workers", "many"], 2, "--workers"),
    ("nan-chunk", [*TOK, "--input", "{ids}", "--chunk-mb", "nan"], 1, "--chunk-mb"),
    ("inf-chunk", [*TOK, "--input", "{ids}", "--chunk-mb", "inf"], 1, "--chunk-mb"),
    ("zero-chunk", [*TOK, "--input", "{ids}", "--chunk-mb", "0"], 1, "--chunk-mb"),
    ("nan-max-doc", [*TOK, "--input", "{ids}", "--max-doc-mb", "nan"], 1, "--max-doc-mb"),
    ("negative-max-doc", [*TOK, "--input", "{ids}", "--max-doc-mb", "-1"], 1, "--max-doc-mb"),
    ("document-too-long-strict", [*TOK, "--input", "{ids}", "--max-doc-mb", "0.000001", "--strict"], 1,
     "ids.jsonl:1: document_too_long: document of 5e-06 MB is over --max-doc-mb 1e-06"),
    ("missing-tokenizer", ["tokenize", "--output-prefix", "{tmp}/out", "--tokenizer", "{tmp}/tok.json",
                           "--input", "{ids}"], 1, "tok.json"),
    ("output-under-a-file", ["tokenize", "--output-prefix", "{afile}/out", "--tokenizer", "null:100",
                             "--workers", "0", "--input", "{ids}"], 1, "afile"),
    ("unknown-format", [*TOK, "--input", "{ids}", "--format", "csv"], 2, "--format"),
    ("train-tokenizer-tiny-vocab", ["train-tokenizer", "--input", "{ids}", "--vocab-size", "-5", "--output",
                                    "{tmp}/tok.json"], 1, "--vocab-size"),
    ("train-tokenizer-zero-min-frequency", ["train-tokenizer", "--input", "{ids}", "--vocab-size", "300",
                                            "--min-frequency", "0", "--output", "{tmp}/tok.json"], 1,
     "--min-frequency"),
    ("merge-empty-datasets", ["merge", "--input", "{empty_ds}", "--output-prefix", "{tmp}/m"], 1, "no documents"),
    ("merge-missing-prefix", ["merge", "--input", "{good}", "{tmp}/gone", "--output-prefix", "{tmp}/m"], 1,
     "gone.idx"),
    ("inspect-missing", ["inspect", "{tmp}/gone"], 1, "gone.idx"),
    ("inspect-truncated", ["inspect", "{trunc}"], 1, "trunc.bin"),
    ("inspect-sample-out-of-range", ["inspect", "{good}", "--sample", "100000"], 1, "--sample"),
    ("inspect-negative-chars", ["inspect", "{good}", "--sample-chars", "-4"], 1, "--sample-chars"),
    ("corpus-unknown-name", ["corpus", "build", "nope", "--out", "{tmp}/c"], 1, "unknown corpus 'nope'"),
    ("corpus-package-not-in-deb-dir", ["corpus", "build", "debian-docs-en", "--out", "{tmp}/c", "--deb-dir",
                                       "{adir}"], 3, "package python3.11-doc: no python3.11-doc_*.deb"),
    ("corpus-out-is-a-file", ["corpus", "build", "debian-docs-en", "--out", "{afile}", "--deb-dir", "{adir}"], 1,
     "afile: exists and is not a directory"),
    ("corpus-zero-limit", ["corpus", "build", "debian-docs-en", "--out", "{tmp}/c", "--deb-dir", "{adir}",
                           "--limit-files", "0"], 1, "--limit-files"),
    ("corpus-split-too-large", ["corpus", "build", "debian-docs-en", "--out", "{tmp}/c", "--deb-dir", "{adir}",
                                "--valid-per-mille", "990", "--test-per-mille", "10"], 1, "--valid-per-mille"),
    ("corpus-no-action", ["corpus"], 2, "ACTION"),
    ("no-subcommand", [], 2, "COMMAND"),
]


# ------------------------------------------------------------------------------------------------ vffn-generate
GENERATE_CASES = [
    ("missing-checkpoint", ["--checkpoint", "{tmp}/ckpts"], 2, "ckpts"),
    ("checkpoint-is-a-file", ["--checkpoint", "{afile}"], 2, "afile"),
    ("empty-checkpoint-dir", ["--checkpoint", "{adir}"], 2, "adir"),
    ("nan-temperature", ["--checkpoint", "{adir}", "--temperature", "nan"], 2, "--temperature"),
    ("negative-temperature", ["--checkpoint", "{adir}", "--temperature", "-1"], 2, "--temperature"),
    ("infinite-temperature", ["--checkpoint", "{adir}", "--temperature", "inf"], 2, "--temperature"),
    ("zero-top-k", ["--checkpoint", "{adir}", "--top-k", "0"], 2, "--top-k"),
    ("negative-max-new-tokens", ["--checkpoint", "{adir}", "--max-new-tokens", "-1"], 2, "--max-new-tokens"),
    ("negative-seed", ["--checkpoint", "{adir}", "--seed", "-7"], 2, "--seed"),
    ("float-top-k", ["--checkpoint", "{adir}", "--top-k", "2.5"], 2, "--top-k"),
    # bytes that are not UTF-8 ($'\xff\xfe' in bash) reach Python as lone surrogates: a tokenizer traceback before
    ("prompt-not-utf8", ["--checkpoint", "{adir}", "--prompt", "\udcff\udcfe"], 2, "--prompt: is not UTF-8 text"),
]


# vffn-data and vffn-generate cases share one check: the exit code, the one error line naming the flag or
# file, and nothing left behind.
ARGV_CASES = [("vffn-data", *c) for c in DATA_CASES] + [("vffn-generate", *c) for c in GENERATE_CASES]


@pytest.mark.parametrize("tool, argv, code, named", [(c[0], *c[2:]) for c in ARGV_CASES],
                         ids=[f"{c[0]}-{c[1]}" for c in ARGV_CASES])
def test_vffn_data_and_generate(tool, argv, code, named, files, tmp_path, capsys, monkeypatch):
    out = run_cli(tool, _fill(argv, files, tmp_path), capsys, monkeypatch)
    assert out.code == code, out.out
    assert named.format(**files) in out.error_line()
    assert _nothing_left(tmp_path) == []


def test_vffn_pretrain_refuses_a_run_dir_that_is_its_config_directory(files, tmp_path, capsys, monkeypatch):
    """run_dir = the --config-path directory (or conf/, or a --config-dir): the run would write its config.yaml
    over the primary config, and its summary and checkpoints among the config groups. (On a copy of conf/: were
    the check gone, this test must not overwrite the repository's.)"""
    import shutil

    from vffn_pretrain.config.paths import CONF_DIR

    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    before = {p: p.read_bytes() for p in conf.rglob("*") if p.is_file()}
    argv = _fill([*TRAIN, "logging.wandb.enabled=false"], files, tmp_path) + [f"run_dir={conf}", "--config-path",
                                                                              str(conf)]
    out = run_cli("vffn-pretrain", argv, capsys, monkeypatch)
    assert out.code == 2, out.out
    assert out.one_line_error() == (f"vffn-pretrain: bad config: config key `run_dir`: {conf} is a directory the "
                                    "config was composed from; the run would write its config.yaml over the "
                                    "primary config there: choose another run_dir")
    assert {p: p.read_bytes() for p in conf.rglob("*") if p.is_file()} == before


def test_vffn_pretrain_out_of_host_memory_is_one_line(files, tmp_path, capsys, monkeypatch):
    """A MemoryError anywhere (here: building the datasets) is one line and exit 1, not a traceback."""
    import vffn_pretrain.data.builder as builder

    def no_memory(*_args, **_kwargs):
        raise MemoryError("Unable to allocate 843. TiB for an array")

    monkeypatch.setattr(builder, "build_datasets", no_memory)
    out = run_cli("vffn-pretrain", _fill([*TRAIN, "logging.wandb.enabled=false"], files, tmp_path), capsys, monkeypatch)
    assert out.code == 1, out.out
    assert out.one_line_error(ignore_prefix="[data] ") == (
        "vffn-pretrain: error: out of memory (Unable to allocate 843. TiB for an array); the checkpoints already "
        "saved are intact")


# ------------------------------------------------------------------------------------------------ vffn-info
INFO_CASES = [
    ("unknown-key", ["model.layers=3"], 2, "model.layers"),
    ("negative-layers", ["model.num_layers=-1"], 2, "model.num_layers"),
    ("string-for-int", ["model.hidden_size=wide"], 2, "model.hidden_size"),
    ("bad-ffn-kind", ["ffn.kind=mlp"], 2, "ffn.kind"),
    ("loop-mix-wrong-length", ["+info.eval_loop_mix=[0.5,0.5]"], 2, "info.eval_loop_mix"),
    ("loop-mix-nan", ["+info.eval_loop_mix=[nan,0.5,0.25,0.25]"], 2, "info.eval_loop_mix"),
    ("loop-mix-negative", ["+info.eval_loop_mix=[-0.5,1.0,0.25,0.25]"], 2, "info.eval_loop_mix"),
    ("config-name-missing", ["--config-name", "nope"], 2, "--config-name nope: no nope.yaml in"),
    ("overrides-around-a-flag", ["model=tiny", "--cfg", "job", "ffn=dense"], 2, "unrecognized arguments: ffn=dense"),
    ("bad-cfg-choice", ["--cfg", "everything"], 2, "argument --cfg/-c: invalid choice: 'everything'"),
    # Hydra alone: a traceback each.
    ("group-given-a-number", ["model=720"], 2, "Config group override must be a string or a list. Got int"),
    ("sweep-step-zero", ["-m", "train.seed=range(0,10,0)"], 2, "train.seed=range(0,10,0): range() arg 3"),
    ("resolve-alone", ["--resolve"], 2, "--resolve is for --cfg or --help"),
    ("relative-config-path", ["--config-path", "../conf"], 2, "--config-path '../conf': give an absolute path"),
    ("rerun-file-missing", ["--experimental-rerun", "/nonexistent/config.pickle"], 2,
     "--experimental-rerun /nonexistent/config.pickle: no such file"),
]


@pytest.mark.parametrize("argv, code, named", [c[1:] for c in INFO_CASES], ids=[c[0] for c in INFO_CASES])
def test_vffn_info(argv, code, named, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = run_cli("vffn-info", argv, capsys, monkeypatch)
    assert out.code == code, out.out
    assert named in out.one_line_error()
    assert _nothing_left(tmp_path) == []


# ------------------------------------------------------------------------------------------------ vffn-scaling
def _sweep(tmp: Path, summary: str | None) -> Path:
    sweep = tmp / "sweep"
    (sweep / "0").mkdir(parents=True)
    if summary is not None:
        (sweep / "0" / "summary.json").write_text(summary)
    return sweep


SCALING_CASES = [
    ("missing-dir", None, ["{tmp}/nowhere"], 2, "nowhere"),
    ("no-summaries", None, ["{tmp}/sweep"], 2, "sweep"),
    ("empty-summary", "", ["{tmp}/sweep"], 2, "summary.json"),
    ("summary-not-json", "{{not json", ["{tmp}/sweep"], 2, "summary.json"),
    ("summary-missing-keys", json.dumps({"x": 1}), ["{tmp}/sweep"], 2, "summary.json"),
    ("unknown-metric", "", ["{tmp}/sweep", "--metric", "bleu"], 2, "--metric"),
]


@pytest.mark.parametrize("summary, argv, code, named", [c[1:] for c in SCALING_CASES],
                         ids=[c[0] for c in SCALING_CASES])
def test_vffn_scaling(summary, argv, code, named, files, tmp_path, capsys, monkeypatch):
    sweep = _sweep(tmp_path, summary)
    before = _nothing_left(tmp_path)
    out = run_cli("vffn-scaling", _fill(argv, files, tmp_path), capsys, monkeypatch)
    assert out.code == code, out.out
    assert named.format(**files) in out.error_line()
    assert _nothing_left(tmp_path) == before and sweep.is_dir()
