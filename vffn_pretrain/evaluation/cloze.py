"""The offline `jargon_cloze` task's data: a 4-way multiple-choice cloze over held-out text of the bundled corpus.

Documents are the bundled corpus's (the Jargon File split at blank lines, as the trainer reads it); only the
validation range of the default `data.split` ("969,30,1", documents in file order) is used, so a model trained
on the bundled corpus never saw them. Each document with enough words gives one item: the context is its
beginning, the answer the next SPAN words, and the three distractors are SPAN-word spans from the same position
of other held-out documents (chosen with a fixed seed). A model that models the text beats chance (25%).

    python -m vffn_pretrain.evaluation.cloze      # rewrites tasks/jargon_cloze.jsonl (deterministic)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TASK_FILE = Path(__file__).resolve().parent / "tasks" / "jargon_cloze.jsonl"
SPLIT = "969,30,1"  # conf/data/default.yaml's data.split
SPAN = 4  # words per choice
MIN_CONTEXT, MAX_CONTEXT = 8, 48  # words of context
SEED = 13


def held_out_documents() -> list[str]:
    """The bundled corpus's validation-split documents, as text."""
    from vffn_pretrain.data.assets import BUNDLED_CORPUS, BUNDLED_SPLIT_ON_BLANK_LINES
    from vffn_pretrain.data.checks import split_document_ranges
    from vffn_pretrain.data.tokenizing.readers import iter_chunks, resolve_inputs

    docs = [raw for chunk in iter_chunks(resolve_inputs([str(BUNDLED_CORPUS)]),
                                         split_on_blank_lines=BUNDLED_SPLIT_ON_BLANK_LINES)
            for raw in chunk.payload]
    begin, end = split_document_ranges(len(docs), SPLIT)[1]
    return [d.decode("utf-8", errors="replace") for d in docs[begin:end]]


def build_items() -> list[dict]:
    """[{"context": str, "choices": [4 x str], "label": int}] in document order."""
    rng = random.Random(SEED)
    docs = [d.split() for d in held_out_documents()]
    usable = [w for w in docs if len(w) >= MIN_CONTEXT + SPAN]
    items = []
    for i, words in enumerate(usable):
        cut = min(max(MIN_CONTEXT, (2 * len(words)) // 3 - SPAN), MAX_CONTEXT, len(words) - SPAN)
        answer = " ".join(words[cut:cut + SPAN])
        others = [j for j in range(len(usable)) if j != i]
        distractors: list[str] = []
        while len(distractors) < 3:
            other = usable[rng.choice(others)]
            start = min(cut, len(other) - SPAN)
            span = " ".join(other[start:start + SPAN])
            if span != answer and span not in distractors:
                distractors.append(span)
        label = rng.randrange(4)
        choices = distractors[:label] + [answer] + distractors[label:]
        items.append({"context": " ".join(words[:cut]), "choices": choices, "label": label})
    return items


def write_task_file(path: Path = TASK_FILE) -> int:
    items = build_items()
    path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items))
    return len(items)


if __name__ == "__main__":
    print(f"{write_task_file()} items -> {TASK_FILE}")
