"""A dense model's plain (non-sharded) state dict renamed for an FFN variant, for tests. The trainer converts
through distributed checkpoints instead (`training.convert.load_dense_into`); both use the renames of
`model.ffn.convert.dense_to_variant_key_map`."""

from __future__ import annotations

from vffn_pretrain.model.ffn.convert import dense_to_variant_key_map


def convert_dense_state_dict(state_dict: dict, kind: str) -> dict:
    """A dense model's (regular) state dict with its keys renamed for `kind`; values are not copied."""
    return {_rename(k, kind): v for k, v in state_dict.items()}


def _rename(key: str, kind: str) -> str:
    for old, new in dense_to_variant_key_map(kind).items():
        if old in key:
            return key.replace(old, new)
    return key
