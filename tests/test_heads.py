"""The prompt head (docs/heads.md): stock LM logits at the mask, every method, padding, truncation, label words, CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from sptbench.cli.main import main
from sptbench.core.errors import SptbenchError
from sptbench.data.specs import load_spec, packaged_tasks
from sptbench.data.templates import PromptSetup, encode_prompt_rows, parse_template, prompt_setup
from sptbench.methods.registry import build_config, get_method
from sptbench.models.backbones import _tiny, load_backbone
from sptbench.records.io import read_records
from sptbench.records.keys import record_key
from sptbench.records.schema import validate_record
from tests.conftest import TINY_DECODERS, TINY_FAMILIES

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SST2 = prompt_setup(load_spec("sst2"), "prompt")


def build(name: str, method: str | None = None, setup=SST2, seed: int = 0):
    """A tiny backbone with the prompt head, frozen, with `method` applied (as the runner builds it)."""
    torch.manual_seed(seed)
    model, tok, _ = load_backbone(name, len(setup.labels), prompt=setup)
    model.freeze_backbone()
    if method is not None:
        m = get_method(method)
        m.apply(model, build_config(m))
    return model.eval(), tok


def padded_logits_equal_alone(model, tok, causal: bool, lengths: list[int], seed: int) -> list[torch.Tensor]:
    """A random prompt batch of `lengths`, right-padded and (causal LMs) left-padded: each row's logits equal its
    unpadded forward alone (atol 1e-5); returns the padded batch's logits per side. GPT-2's and Llama's positions
    count real tokens, so left padding is invariant too."""
    out = []
    for left in [False, True] if causal else [False]:
        ids_p, mask_p = random_prompt_batch(seed, tok, causal, lengths, left=left)
        with torch.no_grad():
            padded = model(ids_p, mask_p).logits
            for i in range(len(lengths)):
                real = mask_p[i].bool()
                alone = model(ids_p[i : i + 1, real], mask_p[i : i + 1, real]).logits
                torch.testing.assert_close(padded[i : i + 1], alone, atol=1e-5, rtol=1e-5)
        out.append(padded)
    return out


def random_prompt_batch(seed: int, tok, causal: bool, lengths: list[int], left: bool = False):
    """Fresh random token ids with one mask token each (encoders) at a random position, padded right (or left)."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        row = torch.randint(1000, len(tok), (n,), generator=g)
        if not causal:
            row[int(torch.randint(0, n, (1,), generator=g))] = tok.mask_token_id
        span = slice(width - n, width) if left else slice(0, n)
        ids[i, span], mask[i, span] = row, 1
    return ids, mask


def stock_label_logits(name: str, ids, mask, word_ids, causal: bool, mask_id: int):
    """The stock *ForMaskedLM / GPT2LMHeadModel (same seeded weights) at the mask / last real position."""
    lm = _tiny(name, lm=True)[0].eval()
    with torch.no_grad():
        logits = lm(input_ids=ids, attention_mask=mask).logits
    rows = torch.arange(ids.shape[0])
    at = mask.sum(1) - 1 if causal else (ids == mask_id).long().argmax(1)
    return logits[rows, at][:, word_ids]


@pytest.mark.parametrize("method", [None, "lora", "adapter"])
@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_prompt_head_equals_stock_lm_logits(name, method):
    """No method, or one that is the identity at init: the label-word logits of the stock LM at the mask."""
    model, tok = build(name, method)
    causal = model.family.causal
    seed = 7 + TINY_FAMILIES.index(name) * 10 + [None, "lora", "adapter"].index(method)
    ids, mask = random_prompt_batch(seed, tok, causal, [9, 4, 13, 2])
    with torch.no_grad():
        ours = model(ids, mask).logits
    expected = stock_label_logits(name, ids, mask, model.head.label_word_ids, causal, tok.mask_token_id)
    assert ours.shape == (4, 2)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


PROMPT_METHODS = ["prompt_tuning", "p_tuning_v2", "lpt", "spt"]


@pytest.mark.parametrize("method", PROMPT_METHODS)
@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_prompt_methods_read_the_template_mask_and_are_batch_invariant(name, method):
    model, tok = build(name, method)
    causal = model.family.causal
    lengths = [11, 3, 7]
    ids, mask = random_prompt_batch(100 + PROMPT_METHODS.index(method), tok, causal, lengths)
    seen = {}

    def capture(module, args):
        _, tokens, token_mask, input_ids = args
        seen.update(n=tokens.shape[1], at=module.read_positions(token_mask, input_ids))

    model.head.register_forward_pre_hook(capture)
    with torch.no_grad():
        together = model(ids, mask).logits
    # the head sees the token positions only (prompts cut off) and reads the template's mask / last real token
    assert seen["n"] == ids.shape[1]
    expected_at = mask.sum(1) - 1 if causal else (ids == tok.mask_token_id).long().argmax(1)
    assert seen["at"].tolist() == expected_at.tolist()
    for padded in padded_logits_equal_alone(model, tok, causal, lengths, 100 + PROMPT_METHODS.index(method)):
        torch.testing.assert_close(padded, together, atol=1e-5, rtol=1e-5)


def test_vocab_loss_is_cross_entropy_over_the_vocabulary():
    model, tok = build("tiny-bert", "prompt_tuning", setup=prompt_setup(load_spec("sst2"), "prompt", "vocab"))
    ids, mask = random_prompt_batch(3, tok, False, [6, 9])
    labels = torch.tensor([1, 0])
    model.train()
    model.head.lm_head.eval()  # the comparison below runs the head alone: same (no) dropout
    torch.manual_seed(0)
    logits = model(ids, mask).logits
    assert logits.shape == (2, 3)  # the label words + the rest of the vocabulary
    hidden = {}
    model.head.lm_head.register_forward_hook(lambda m, i, o: hidden.update(vocab=o))
    torch.manual_seed(0)
    model(ids, mask)
    vocab = hidden["vocab"][:, 0]
    target = model.head.label_word_ids[labels]
    torch.testing.assert_close(F.cross_entropy(logits, labels), F.cross_entropy(vocab, target))
    model.eval()
    assert model(ids, mask).logits.shape == (2, 2)  # evaluation compares the label words only


def test_truncation_keeps_template_and_mask():
    _, tok = build("tiny-bert")
    long = " ".join(["wonderful"] * 400)
    (enc,) = encode_prompt_rows([{"sentence": long, "label": 1}], tok, SST2, 32, causal=False)
    pieces = tok.convert_ids_to_tokens(enc["input_ids"])
    assert len(pieces) == 32 and pieces[-5:] == ["it", "was", "[MASK]", ".", "[SEP]"] and pieces.count("[MASK]") == 1
    rte = prompt_setup(load_spec("rte"), "prompt")
    (pair,) = encode_prompt_rows([{"sentence1": long, "sentence2": "short one", "label": 0}], tok, rte, 24,
                                 causal=False)
    pieces = tok.convert_ids_to_tokens(pair["input_ids"])
    assert len(pieces) == 24 and pieces[-6:] == ["?", "[MASK]", ",", "short", "one", "[SEP]"]  # the longest is cut
    (causal,) = encode_prompt_rows([{"sentence": long, "label": 1}], tok, SST2, 16, causal=True)
    pieces = tok.convert_ids_to_tokens(causal["input_ids"])
    assert len(pieces) == 16 and pieces[-2:] == ["it", "was"]  # read at the last position: cut at the mask
    text_mask = encode_prompt_rows([{"sentence": "a [MASK] b <mask>", "label": 0}], tok, SST2, 32, causal=False)
    assert text_mask[0]["input_ids"].count(tok.mask_token_id) == 1  # text never spells the mask token


def test_multi_token_label_word_fails_at_load():
    spec = load_spec("sst2")
    template = parse_template("<s1> It was <mask> .", 1, "test")
    bad = PromptSetup("sst2", template, ("sentence",), spec.labels, ("terrible", "zygomorphic"))
    with pytest.raises(SptbenchError) as err:
        load_backbone("tiny-bert", 2, prompt=bad)
    msg = str(err.value)
    assert "\n" not in msg and "' zygomorphic'" in msg and "'positive'" in msg and "##" in msg


def test_causal_template_needs_text_before_the_mask():
    _, tok = build("tiny-gpt2")
    trec = prompt_setup(load_spec("trec"), "prompt")
    with pytest.raises(SptbenchError, match="text after <mask>"):
        encode_prompt_rows([{"sentence": "who ?", "label": 0}], tok, trec, 32, causal=True)
    ok = prompt_setup(load_spec("trec"), "prompt", template="causal")
    (enc,) = encode_prompt_rows([{"sentence": "who ?", "label": 0}], tok, ok, 32, causal=True)
    assert tok.convert_ids_to_tokens(enc["input_ids"])[-3:] == ["answer", "is", "a"]


@pytest.mark.slow  # a fresh process importing torch + transformers
def test_minilm_with_prompt_head_is_one_line_exit_2(data_dir, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "sptbench.cli", "run", "--method", "lora", "--task", "sst2", "--shots", "16",
         "--model", "minilm-l6", "--head", "prompt", "--data-dir", str(data_dir), "--results-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs a masked or causal LM checkpoint" in lines[0], out.stderr


def test_params_prompt_tuning_trains_the_prompt_alone(capsys):
    assert main(["params", "--head", "prompt", "--method", "prompt_tuning", "--model", "tiny-roberta"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| prompt_tuning"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:4] == ["640", "640", "640"]  # 20 prompt vectors x 32: no head trains, none is stored


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_run_with_prompt_head_records_it(name, data_dir, tmp_path):
    method = {"tiny-bert": "lora", "tiny-roberta": "prompt_tuning", "tiny-deberta": "adapter", "tiny-gpt2": "lpt",
              "tiny-mpnet": "p_tuning_v2", "tiny-llama": "spt", "tiny-deberta-v1": "p_tuning_v2",
              "tiny-qwen2": "ia3", "tiny-gemma3": "dept"}[name]
    args = ["run", "--method", method, "--task", "sst2", "--shots", "16", "--model", name, "--head", "prompt",
            "--max-steps", "2", "--eval-every", "2", "--data-dir", str(data_dir), "--results-dir",
            str(tmp_path / "r"), "--quiet"]
    if name == "tiny-bert":
        args += ["--prompt-loss", "vocab", "--save-dir", str(tmp_path / "saved")]
    assert main(args) == 0
    (rec,) = read_records([tmp_path / "r" / "v1"])
    assert validate_record(rec) == []
    assert rec["head"] == {"kind": "prompt", "loss": "vocab" if name == "tiny-bert" else "label_words",
                           "template_name": "default", "template": "<s1> It was <mask> .",
                           "label_words": ["terrible", "great"]}
    assert rec["params"]["trainable"] == rec["params"]["trainable_with_head"] == rec["params"]["stored"] > 0
    assert record_key(rec) != record_key({**rec, "head": {"kind": "linear"}})
    if name == "tiny-bert":  # the saved run rebuilds with its prompt head (from the record) and scores the same
        from sptbench.data.tasks import load_task
        from sptbench.run.persist import load_trained
        from sptbench.training.loop import evaluate

        model, tok = load_trained(tmp_path / "saved")
        task = load_task("sst2", data_dir=data_dir, shots=16, seed=13)
        enc = encode_prompt_rows(task.test, tok, prompt_setup(task.spec, "prompt", "vocab"), 128, causal=False)
        assert model.head_kind == "prompt"
        assert evaluate(model, enc, task.spec, 64) == rec["metrics"]["test"]


def test_zero_shot_trains_nothing_and_needs_the_prompt_head(data_dir, tmp_path, capsys):
    base = ["run", "--method", "zero_shot", "--task", "sst2", "--shots", "16", "--model", "tiny-bert",
            "--data-dir", str(data_dir), "--results-dir", str(tmp_path), "--quiet"]
    assert main(base) == 2
    assert "works with --head prompt" in capsys.readouterr().err
    assert main([*base, "--head", "prompt"]) == 0
    (rec,) = read_records([tmp_path / "v1"])
    assert rec["outcome"]["steps_run"] == 0 and rec["params"]["trainable"] == 0 and rec["metrics"]["dev"]


def test_head_method_refuses_the_prompt_head():
    with pytest.raises(SptbenchError, match="zero_shot"):
        build("tiny-bert", "head")


@pytest.mark.parametrize("task", sorted(packaged_tasks()))
def test_every_task_has_a_template_a_causal_lm_can_read(task):
    """A causal LM reads the label after the last token: for every packaged task the template it gets by default
    ends at `<mask>` (the task's `causal` template where its default puts text after the mask), the rows encode,
    and the encoders' default template is unchanged."""
    spec = load_spec(task)
    setup = prompt_setup(spec, "prompt", causal=True)
    parts = setup.template.parts
    assert not any(p.kind == "text" for p in parts[setup.template.mask_at + 1:]), setup.template.text
    tok = _tiny("tiny-llama", lm=True)[1]
    row = {"label": 0, **{c: f"words of {c} here" for c in spec.text_columns}}
    [encoded] = encode_prompt_rows([row], tok, setup, spec.max_length, causal=True)
    assert encoded["input_ids"] and encoded["label"] == 0
    templates = spec.prompt["templates"]
    assert prompt_setup(spec, "prompt").template.name == next(iter(templates))  # encoders: the first, as before
    if "causal" in templates:
        assert setup.template.name == "causal"


def test_contextual_calibration_makes_the_content_free_input_uniform(monkeypatch, data_dir, tmp_path):
    """zero_shot with calibration=content_free (Zhao et al. 2021): with one content-free input, the calibrated
    label-word distribution on that input is uniform; the saved model rebuilds with the same calibration."""
    import sptbench
    import sptbench.methods.reference as reference
    from sptbench.data.templates import encode_prompt_rows

    monkeypatch.setattr(reference, "CONTENT_FREE", ("N/A",))
    saved = tmp_path / "saved"
    args = ["run", "--method", "zero_shot", "--head", "prompt", "--task", "sst2", "--shots", "4", "--model",
            "tiny-llama", "--set", "calibration=content_free", "--data-dir", str(data_dir), "--results-dir",
            str(tmp_path / "r"), "--save-dir", str(saved), "--quiet"]
    assert main(args) == 0
    [rec] = read_records([tmp_path / "r"])
    assert rec["method"]["config"]["calibration"] == "content_free"
    model = sptbench.load(saved)
    assert model.head.calibration.tolist() == pytest.approx(rec["extra"]["content_free_log_probs"], abs=1e-6)
    spec = load_spec("sst2")
    setup = prompt_setup(spec, "prompt", causal=True)
    [row] = encode_prompt_rows([{"label": 0, "sentence": "N/A"}], model.tokenizer, setup, spec.max_length, causal=True)
    ids = torch.tensor([row["input_ids"]])
    with torch.no_grad():
        probs = model(ids, torch.ones_like(ids)).logits.softmax(-1)[0]
    assert probs.tolist() == pytest.approx([0.5, 0.5], abs=1e-5)


@pytest.mark.parametrize("name", TINY_DECODERS)
def test_causal_prompt_head_computes_only_the_label_words(name, monkeypatch):
    """Causal LMs' linear LM head is sliced to the label words at eval (never the vocabulary), with the same logits."""
    model, tok = build(name, None)
    model.eval()
    ids, mask = random_prompt_batch(31 + TINY_FAMILIES.index(name), tok, True, [6, 11, 3])
    with torch.no_grad():
        sliced = model(ids, mask).logits
        head = model.head
        full = head.family.lm_logits(model.backbone, head.lm_head, torch.randn(1, 1, head.lm_head.in_features))
        calls = []
        monkeypatch.setattr(head.lm_head, "forward", lambda x: calls.append(x.shape) or full)
        again = model(ids, mask).logits
    assert calls == []  # the vocabulary-sized head was never called
    torch.testing.assert_close(again, sliced)
    expected = stock_label_logits(name, ids, mask, head.label_word_ids, True, tok.mask_token_id)
    torch.testing.assert_close(sliced, expected, atol=1e-5, rtol=1e-5)
