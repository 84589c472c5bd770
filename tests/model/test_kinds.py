"""The one table of FFN kinds (`model.kinds`) and the one config -> counting-shapes adapter (`model.shapes`): the
table against the method's description of each kind, the adapter's per-layer shapes and defaults, and that the
package asks the table instead of comparing kind names."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from vffn_pretrain.info import info_from_config
from vffn_pretrain.model.config import ModelConfig
from vffn_pretrain.model.counting import FFNShape, count_params
from vffn_pretrain.model.ffn.config import FFNConfig
from vffn_pretrain.model.kinds import FFN_KINDS, KINDS, SHARED_WEIGHT_KINDS, traits
from vffn_pretrain.model.shapes import counting_shapes, ffn_shapes
from vffn_pretrain.scaling.ladder import ffn_shape

PACKAGE = Path(__file__).resolve().parents[2] / "vffn_pretrain"

# Written from docs/method.md (§3-§6 versatile, §9.4 moe, §10 Table 3 ablations), not from the code:
# (width path, adaptive depth, fixed loops, shares the dense weights in one VersatileFFN module, moe, loop count)
METHOD = {
    "dense": (False, False, False, False, False, 1),
    "kloop": (False, False, True, True, False, 3),  # `loops` (3 below)
    "moe": (False, False, False, False, True, 1),
    "versatile": (True, True, False, True, False, 5),  # `max_loops` (5 below)
    "width_only": (True, False, False, True, False, 1),
    "depth_only": (False, True, False, True, False, 5),
}


def test_table_matches_the_method():
    assert set(FFN_KINDS) == set(METHOD) and list(KINDS) == list(FFN_KINDS)
    settings = FFNConfig(max_loops=5, loops=3)
    for kind, (width, adaptive, fixed, shared, moe, loops) in METHOD.items():
        t = traits(kind)
        assert (t.width_path, t.adaptive_depth, t.fixed_loops, t.shared_weights, t.moe) == (
            width, adaptive, fixed, shared, moe), kind
        assert t.loop_count(settings) == loops, kind
        assert t.has_router == (width or moe) and t.has_loop_head == adaptive, kind
        assert t.plain == (kind == "dense") and t.width_folded == (kind == "width_only"), kind
    assert set(SHARED_WEIGHT_KINDS) == {"kloop", "versatile", "width_only", "depth_only"}
    assert traits("versatile").settings == ("num_experts", "top_k", "max_loops")
    assert traits("kloop").settings == ("loops",) and traits("dense").settings == ()
    with pytest.raises(ValueError, match="unknown FFN kind 'mlp'"):
        traits("mlp")


def test_kinds_counting_and_shapes_import_without_torch():
    code = ("import sys; import vffn_pretrain.model.kinds, vffn_pretrain.model.counting, "
            "vffn_pretrain.model.shapes, vffn_pretrain.model.ffn.config, vffn_pretrain.info; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_shapes_are_per_layer_for_a_mixed_model():
    model = ModelConfig(num_layers=4, hidden_size=64, num_attention_heads=4, vocab_size=1000)
    mixed = FFNConfig(kind="versatile", layers="dense*2,versatile,kloop", num_experts=4, top_k=1, max_loops=3,
                      loops=2)
    m, f = counting_shapes(model, mixed, tp=2, seq_length=32)
    assert (m.num_layers, m.d_model, m.d_ff, m.seq_length, m.vocab_size) == (4, 64, 256, 32, 1024)  # 128 x TP 2
    assert [s.kind for s in f] == ["dense", "dense", "versatile", "kloop"]
    assert f[2] == FFNShape("versatile", num_experts=4, top_k=1, max_loops=3, loops=2)
    assert f[3].loops == 2 and f[0] is f[1]
    uniform = ffn_shapes(FFNConfig(kind="kloop"), 4)
    assert isinstance(uniform, FFNShape) and uniform.loops == FFNConfig().loops  # FFNConfig's default, as trained
    assert FFNConfig(kind="kloop", layers="kloop*4").counting_shape(4) == uniform


def test_ladder_variant_defaults_are_the_training_defaults(tmp_path):
    """A conf/ffn group that leaves a key out gets FFNConfig's default (what training uses), not FFNShape's."""
    (tmp_path / "k.yaml").write_text("kind: kloop\nlayers: null\n")
    assert ffn_shape("k", tmp_path).loops == FFNConfig().loops == 4


def test_padded_vocab_follows_make_vocab_size_divisible_by():
    assert ModelConfig(vocab_size=50_280).padded_vocab_size(1) == 50_304  # 393 x 128
    assert ModelConfig(vocab_size=50_280, make_vocab_size_divisible_by=256).padded_vocab_size(2) == 50_688  # 99 x 512
    cfg = {"model": {"num_layers": 2, "hidden_size": 64, "ffn_hidden_size": 256, "num_attention_heads": 4,
                     "vocab_size": 50_280, "seq_length": 32, "make_vocab_size_divisible_by": 256},
           "ffn": {"kind": "dense"}, "parallel": {"tp": 2}}
    report = info_from_config(cfg)
    assert report["vocab_size_padded"] == 50_688  # vffn-info pads as the model does
    m, f = counting_shapes(ModelConfig(num_layers=2, hidden_size=64, ffn_hidden_size=256, num_attention_heads=4,
                                       vocab_size=50_280, make_vocab_size_divisible_by=256),
                           FFNConfig(kind="dense"), tp=2, seq_length=32)
    assert report["params_total"] == count_params(m, f)["params_total"]


# The two files allowed to name kinds in comparisons: the HF model file is copied into exports and must stand
# alone, and the float64 reference is the independent statement each kind's math is tested against.
STANDALONE = {"export/modeling_vffn.py", "testing/ffn_reference.py"}
KIND_COMPARISON = re.compile(r'(==|!=|\bin\b|\bnot in\b)\s*[(\[{]?\s*"(' + "|".join(METHOD) + r')"')


def test_the_package_asks_the_table_instead_of_comparing_kind_names():
    found = [f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}"
             for path in sorted(PACKAGE.rglob("*.py")) if str(path.relative_to(PACKAGE)) not in STANDALONE
             for n, line in enumerate(path.read_text().splitlines(), 1) if KIND_COMPARISON.search(line)]
    assert not found, "compare traits (vffn_pretrain.model.kinds), not kind names:\n" + "\n".join(found)
