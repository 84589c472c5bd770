"""Fixtures for the data tests: a 1-rank gloo process group, the bundled corpus as text and tokenized."""

from __future__ import annotations

import gzip
import re
import socket
import warnings

import pytest

warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gloo_group():
    """A world of one: megatron-core's dataset builder needs a process group. Reuses one that another fixture
    already set up, and only destroys the group it created itself."""
    import torch.distributed as dist

    created = False
    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
        created = True
    yield
    if created:
        dist.destroy_process_group()


@pytest.fixture(scope="session")
def jargon_text() -> str:
    """The bundled corpus, decoded independently of the data tools."""
    from vffn_pretrain.data.assets import BUNDLED_CORPUS

    return gzip.decompress(BUNDLED_CORPUS.read_bytes()).decode("utf-8")


@pytest.fixture(scope="session")
def jargon_blocks(jargon_text) -> list[str]:
    """The corpus's blank-line-separated blocks, split with a regex (an independent reference for the reader)."""
    return [b for b in re.split(r"\n(?:[ \t\r\f\v]*\n)+", jargon_text.rstrip("\n")) if b.strip()]


@pytest.fixture(scope="session")
def jargon_prefix(tmp_path_factory) -> str:
    """The bundled corpus tokenized with the bundled tokenizer, in-process."""
    from vffn_pretrain.data.assets import BUNDLED_CORPUS
    from vffn_pretrain.data.tokenizing.pipeline import TokenizeOptions, run_tokenize

    prefix = str(tmp_path_factory.mktemp("jargon") / "jargon")
    run_tokenize(TokenizeOptions(inputs=[str(BUNDLED_CORPUS)], output_prefix=prefix, split_on_blank_lines=True))
    return prefix
