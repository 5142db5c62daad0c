"""BitFit (sptbench/methods/bitfit.py), by hand: which parameters train and how many, on the tiny backbones. The
generated tests (sptbench/testing) hold it to its declared subset."""

from __future__ import annotations

import pytest

from sptbench.core.errors import SptbenchError
from tests.helpers import build

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

HEAD = 32 * 2 + 2  # hidden 32, two labels
# tiny-bert (hidden 32, 4 layers, intermediate 64), per layer: query, key, value (3 x 32), attention output dense
# (32), its LayerNorm beta (32), intermediate dense (64), output dense (32), its LayerNorm beta (32) = 288;
# plus the embedding LayerNorm's beta (32)
BERT = 4 * (3 * 32 + 32 + 32 + 64 + 32 + 32) + 32
# tiny-gpt2 (hidden 32, inner 128), per block: ln_1 (32), c_attn (3 x 32), attn c_proj (32), ln_2 (32), c_fc (128),
# mlp c_proj (32) = 352; plus ln_f (32)
GPT2 = 4 * (32 + 96 + 32 + 32 + 128 + 32) + 32


# tiny-qwen2 (hidden 32, 4 query heads and 2 key/value heads of 8), per layer: the query, key and value biases
# (32 + 16 + 16); Qwen2 has no other bias (o_proj, the MLP and RMSNorm have none)
QWEN2 = 4 * (32 + 16 + 16)


@pytest.mark.parametrize("backbone,trainable,tensors", [("tiny-bert", BERT, 33), ("tiny-gpt2", GPT2, 25),
                                                        ("tiny-qwen2", QWEN2, 12)])
def test_bitfit_trains_every_backbone_bias_and_nothing_else(backbone, trainable, tensors):
    model = build(backbone, "bitfit")
    counts = model.count_parameters()
    assert BERT == 1184 and counts["trainable"] == trainable
    assert counts["stored"] == trainable + HEAD and counts["trainable_with_head"] == trainable + HEAD
    names = {n for n, p in model.named_parameters() if p.requires_grad} - {"head.weight", "head.bias"}
    assert names and all(n.startswith("backbone.") and n.endswith(".bias") for n in names)
    assert not any(p.requires_grad for n, p in model.backbone.named_parameters() if not n.endswith(".bias"))
    assert len(names) == tensors
    assert set(model.export_state()) == names | {"head.weight", "head.bias"}
    assert model.first_trainable_layer() == 0  # the embedding LayerNorm's bias trains (Qwen2: layer 0's biases)


def test_bitfit_on_a_backbone_without_biases_is_a_one_line_error():
    with pytest.raises(SptbenchError, match="bitfit: the llama backbone has no bias terms to train"):
        build("tiny-llama", "bitfit")
