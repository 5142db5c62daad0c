"""The full-size random backbones (`*-large-random`: the paper's three at their real sizes, random weights, for
offline speed and memory checks) and their in-process byte-level BPE tokenizer (sptbench/models/bpe.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from sptbench.data.specs import load_spec, packaged_tasks
from sptbench.data.templates import prompt_setup
from sptbench.models import backbones
from sptbench.models.backbones import RANDOM_CONFIGS, load_backbone, tokenizer_sha256
from sptbench.models.bpe import SPECIALS, build_tokenizer, byte_level_bpe

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# (model type, layers, hidden, heads, parameters of the stock base model, RoBERTa's pooler included): the hub
# checkpoints' counts
LARGE = {
    "roberta-large-random": ("roberta", 24, 1024, 16, 355_359_744),
    "deberta-large-random": ("deberta", 24, 1024, 16, 405_163_008),
    "gpt2-large-random": ("gpt2", 36, 1280, 20, 774_030_080),
}


@pytest.mark.parametrize("name", sorted(LARGE))
def test_large_random_backbones_have_the_papers_sizes(name):
    from transformers import AutoModel

    model_type, layers, hidden, heads, count = LARGE[name]
    config = RANDOM_CONFIGS[name](len(byte_level_bpe()))
    assert config.model_type == model_type
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (layers, hidden, heads)
    assert config.vocab_size >= 50257 and config.pad_token_id == byte_level_bpe().pad_token_id
    with torch.device("meta"):  # no memory, no init time
        backbone = AutoModel.from_config(config)
    assert sum(p.numel() for p in backbone.parameters()) == count


def test_bpe_tokenizer_is_byte_level_with_roberta_specials_and_one_token_label_words():
    tok = byte_level_bpe()
    assert [tok.convert_tokens_to_ids(s) for s in SPECIALS] == [0, 1, 2, 3, 4]
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.mask_token_id) == (0, 1, 2, 4)
    ids = tok("Un film très réussi!", "Ok?")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and ids.count(2) == 3 and tok.unk_token_id not in ids  # bytes: no unknowns
    assert tok.decode(tok("Un film très réussi!", add_special_tokens=False)["input_ids"]) == "Un film très réussi!"
    words = 0
    for task in packaged_tasks():  # every packaged task's label words, as the prompt head puts them: one token each
        spec = load_spec(task)
        if spec.prompt:
            from sptbench.data.templates import label_word_ids

            label_word_ids(tok, prompt_setup(spec, "prompt"))
            words += len(spec.prompt["label_words"])
    assert words >= 20


@pytest.mark.slow  # a subprocess (3 s)
def test_bpe_tokenizer_is_the_same_in_every_process():
    """Training is deterministic: a fresh process builds the same tokenizer (its recorded sha256 is stable)."""
    code = ("from sptbench.models.bpe import build_tokenizer; from sptbench.models.backbones import tokenizer_sha256;"
            "print(tokenizer_sha256(build_tokenizer()))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == tokenizer_sha256(build_tokenizer()) == tokenizer_sha256(byte_level_bpe())


def test_a_random_backbone_loads_with_the_bpe_tokenizer(monkeypatch):
    """`load_backbone` gives a `*-random` name the BPE tokenizer (shrunk here to a tiny config of the same family,
    so that the test builds no large model), with the prompt head's label words and mask from it."""
    from transformers import RobertaConfig

    tiny = lambda v: RobertaConfig(vocab_size=max(v, 1000), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=64, max_position_embeddings=514, pad_token_id=1)
    monkeypatch.setitem(backbones.TINY_CONFIGS, "roberta-large-random", tiny)
    model, tok, info = load_backbone("roberta-large-random", 2, prompt=prompt_setup(load_spec("sst2"), "prompt"))
    assert tok is byte_level_bpe() and info.tokenizer_sha256 == tokenizer_sha256(build_tokenizer())
    assert model.head.label_word_ids.tolist() == [tok.convert_tokens_to_ids(w) for w in ("Ġterrible", "Ġgreat")]
    batch = tok(["It was <mask> .", "A fine film . It was <mask> ."], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(batch["input_ids"], batch["attention_mask"]).shape == (2, 2)
