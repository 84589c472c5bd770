"""The `vffn-data` console script: stop signals are handled from its first instruction (`process/entry.py`)."""

from vffn_pretrain.process.entry import run


def main() -> None:
    run("vffn-data", "data_tools.cli:main")
