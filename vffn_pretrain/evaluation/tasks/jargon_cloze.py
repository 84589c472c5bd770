"""Loader of the `jargon_cloze` task (named by jargon_cloze.yaml): the JSON lines file next to this one.
Kept free of vffn_pretrain imports: lm-evaluation-harness imports it by file path."""

from pathlib import Path


def load(**unused):
    import json

    import datasets

    rows = [json.loads(line) for line in (Path(__file__).parent / "jargon_cloze.jsonl").read_text().splitlines()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
