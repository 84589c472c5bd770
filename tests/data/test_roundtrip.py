"""Round trip: the bundled corpus, tokenized, read back through megatron-core's IndexedDataset and GPTDataset
and decoded, is the original text (the byte-level tokenizer does no normalisation)."""

from __future__ import annotations

import numpy as np

from tests.data.documents import read_docs
from vffn_pretrain.data.tokenizer import build_tokenizer


def test_indexed_dataset_decodes_to_the_original_blocks(jargon_prefix, jargon_blocks):
    tok = build_tokenizer(None)
    docs = read_docs(jargon_prefix)
    assert len(docs) == len(jargon_blocks)
    for ids, block in zip(docs, jargon_blocks):
        assert ids[-1] == tok.eod and tok.eod not in ids[:-1]
        assert tok.detokenize(ids[:-1]) == block


def test_gpt_dataset_samples_reassemble_into_the_original_documents(jargon_prefix, jargon_blocks, gloo_group,
                                                                    tmp_path):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    tok = build_tokenizer(None)
    seq = 64
    config = GPTDatasetConfig(random_seed=7, sequence_length=seq, blend=([jargon_prefix], None), split="1,0,0",
                              path_to_cache=str(tmp_path / "cache"), tokenizer=tok, reset_position_ids=False,
                              reset_attention_mask=False, eod_mask_loss=False, create_attention_mask=False)
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [None, None, None], lambda: True, config).build()

    # ds[j] is sample shuffle_index[j]; put the samples back in sample order, which walks the documents in
    # document_index order. Consecutive samples overlap by one token (input + shifted label).
    by_sample = {}
    for j in range(len(train)):
        item = train[j]
        assert item["loss_mask"].sum() == seq and (item["position_ids"] == np.arange(seq)).all()
        assert (item["labels"][:-1] == item["tokens"][1:]).all()
        by_sample[int(train.shuffle_index[j])] = np.append(item["tokens"].numpy(), item["labels"][-1].item())
    stream = np.concatenate([by_sample[k][:-1] for k in range(len(by_sample))] + [by_sample[len(by_sample) - 1][-1:]])

    # Reference: the original blocks in the order megatron-core's document index visits them.
    order = train.document_index
    expected_docs = [jargon_blocks[d] for d in order]
    # The stream starts at document order[0] and stops mid-document (the last partial sample is dropped).
    eods = np.flatnonzero(stream == tok.eod)
    assert len(eods) >= len(expected_docs) - 3
    start = 0
    for n, end in enumerate(eods):
        assert tok.detokenize(stream[start:end].tolist()) == expected_docs[n]
        start = end + 1
    assert expected_docs[len(eods)].startswith(tok.detokenize(stream[start:].tolist()))
    assert sorted(order.tolist()) == list(range(len(jargon_blocks)))
