"""Tests for SPT, SPT-DARTS, LPT (sptbench/methods/spt/) and plots.py."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from sptbench.core.errors import SptbenchError
from sptbench.methods import spt
from sptbench.methods.registry import build_config, get_method
from sptbench.methods.spt.darts import DartsStep, JointStep, gate_step, unrolled_gate_grads, weight_step
from sptbench.methods.spt.gated_prompts import GatedPrompts
from sptbench.methods.spt.prompt_generator import PromptGenerator, masked_adaptive_pool
from sptbench.models.backbones import load_backbone
from sptbench.models.classifier import pool
from tests.conftest import TINY_FAMILIES

FAMILIES = TINY_FAMILIES
TEXTS = ["a", "the film was long and rather dull , sadly", "good fun", "an utterly charming , witty comedy ."]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def backbones():
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_backbone(name, 2)
        model, tokenizer, _ = cache[name]
        model = copy.deepcopy(model)
        model.freeze_backbone()
        return model, tokenizer

    return get


def encode(tokenizer, texts):
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids")


def ce_loss(model, batch):
    logits = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")).logits
    return F.cross_entropy(logits.float(), batch["labels"])


def make_batch(tokenizer, texts, labels):
    ids, mask, types = encode(tokenizer, texts)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor(labels)}
    if types is not None:
        batch["token_type_ids"] = types
    return batch


def randomize_(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial generator weights, biases and gate logits (fresh ones are zero or 0.5 in places)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def cfg_spt(**kw) -> spt.SptConfig:
    return build_config(get_method("spt"), kw)


def direct_forward(model, prompt_layers: dict[int, tuple[PromptGenerator, float]], ids, mask, types):
    """Reference computation, written out: at each prompt layer l the prompt becomes α PG_l(tokens) + (1-α) P_prev
    (P_prev = 0 where there is none); prompts sit in front and are attended like tokens; pooling reads tokens only."""
    fam, bb = model.family, model.backbone
    tm = mask.bool()
    tokens = fam.embed(bb, ids, None, types, tm)
    prompt = None
    for i, layer in enumerate(model.layers):
        if i in prompt_layers:
            gen, alpha = prompt_layers[i]
            new = gen(tokens, tm)
            prompt = new if alpha == 1.0 else alpha * new + (1 - alpha) * (0 if prompt is None else prompt)
        m = 0 if prompt is None else prompt.shape[1]
        hidden = tokens if prompt is None else torch.cat([prompt, tokens], 1)
        key_mask = torch.cat([tm.new_ones(tm.shape[0], m), tm], 1)
        out = fam.run_layer(bb, layer, hidden, fam.layer_mask(key_mask, hidden.dtype))
        prompt, tokens = (out[:, :m], out[:, m:]) if m else (None, out)
    hidden = fam.final(bb, tokens if prompt is None else torch.cat([prompt, tokens], 1))
    m = 0 if prompt is None else prompt.shape[1]
    return model.head(pool(hidden[:, m:], tm, model.pooling))


# ---------------------------------------------------------------------------------------------------- generator


@pytest.mark.parametrize("how", ["avg", "max"])
def test_masked_pooling_equals_adaptive_pooling_of_each_unpadded_sequence(how):
    torch.manual_seed(0)
    lengths, m = [1, 3, 7, 10, 23], 5
    x = torch.randn(len(lengths), 25, 6)
    right = torch.zeros(len(lengths), 25, dtype=torch.bool)
    left = torch.zeros_like(right)
    for b, n in enumerate(lengths):
        right[b, :n] = True
        left[b, 25 - n:] = True
    ref_fn = F.adaptive_avg_pool1d if how == "avg" else F.adaptive_max_pool1d
    got_right = masked_adaptive_pool(x, right, m, how)
    x_left = torch.stack([torch.cat([x[b, n:], x[b, :n]]) for b, n in enumerate(lengths)])  # same tokens, left pad
    got_left = masked_adaptive_pool(x_left, left, m, how)
    for b, n in enumerate(lengths):
        ref = ref_fn(x[b, :n].T[None], m)[0].T  # torch's adaptive pooling of the real tokens alone
        torch.testing.assert_close(got_right[b], ref, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(got_left[b], ref, atol=1e-6, rtol=1e-6)
    assert masked_adaptive_pool(x, torch.zeros_like(right), m, how).abs().max() == 0  # no tokens: zeros


def test_prompt_generator_shapes_and_parts():
    gen = PromptGenerator(hidden=8, num_tokens=3, bottleneck=4, pooling="max", activation="tanh")
    out = gen(torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool))
    assert out.shape == (2, 3, 8)
    assert sum(p.numel() for p in gen.parameters()) == 8 * 4 + 4 + 4 * 8 + 8
    with pytest.raises(ValueError):
        PromptGenerator(8, 3, 4, pooling="mean")


# ---------------------------------------------------------------------------------------------------- the gates


@pytest.mark.parametrize("family", ["tiny-bert", "tiny-gpt2"])
def test_hard_gates_at_every_layer_equal_deep_generated_prompts(backbones, family):
    model, tok = backbones(family)
    model.eval()
    ids, mask, types = encode(tok, TEXTS)
    spt.apply_spt(model, cfg_spt())  # learnable gates everywhere
    inj = spt.gates_of(model)
    randomize_(inj)
    with torch.no_grad():
        inj.gate_logits.fill_(60.0)  # sigmoid(60) == 1.0 in float32: hard gates
    ref = direct_forward(model, {i: (inj.generators[str(i)], 1.0) for i in range(4)}, ids, mask, types)
    torch.testing.assert_close(model(ids, mask, types).logits, ref, atol=1e-5, rtol=1e-5)
    # the same with hard gates (gated=False), the re-training form
    hard, _ = backbones(family)
    hard.eval()
    spt.apply_spt(hard, cfg_spt(layers="0,1,2,3"))
    spt.gates_of(hard).generators.load_state_dict(inj.generators.state_dict())
    hard.head.load_state_dict(model.head.state_dict())
    torch.testing.assert_close(hard(ids, mask, types).logits, ref, atol=1e-5, rtol=1e-5)
    # and a gate that is not hard changes the result (the test can fail)
    with torch.no_grad():
        inj.gate_logits.fill_(0.0)
    assert not torch.allclose(model(ids, mask, types).logits, ref, atol=1e-3)


def test_gate_only_at_the_input_is_prompt_tuning_with_a_generator(backbones):
    """A gate only at layer 0 = prompt tuning whose m prompt vectors are α_0 · PG_0(E), E the embedding-module output
    of the tokens, inserted in front of the token hidden states before layer 0 and carried through every layer
    like tokens (no later insertion)."""
    model, tok = backbones("tiny-roberta")
    model.eval()
    ids, mask, types = encode(tok, TEXTS)
    inj = spt.add_prompts(model, cfg_spt(), [0], gated=True)
    randomize_(inj, seed=3)
    alpha = float(torch.sigmoid(inj.gate_logits[0].detach()))
    assert 0.05 < alpha < 0.95
    ref = direct_forward(model, {0: (inj.generators["0"], alpha)}, ids, mask, types)
    torch.testing.assert_close(model(ids, mask, types).logits, ref, atol=1e-5, rtol=1e-5)
    # the prompt enters once: re-inserting at layer 2 as well is a different model
    ref2 = direct_forward(model, {0: (inj.generators["0"], alpha), 2: (inj.generators["0"], 1.0)}, ids, mask, types)
    assert not torch.allclose(ref, ref2, atol=1e-4)


def test_gate_rejects_a_propagated_prompt_of_another_length():
    inj = GatedPrompts(8, [0, 1], num_tokens=3, bottleneck=4)
    tokens, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)
    assert inj.layer_prompt(1, tokens, mask, torch.zeros(2, 3, 8)).shape == (2, 3, 8)
    assert inj.layer_prompt(2, tokens, mask, torch.zeros(2, 3, 8)) is None  # not a prompt layer: propagate
    with pytest.raises(ValueError, match="prompt positions"):
        inj.layer_prompt(1, tokens, mask, torch.zeros(2, 4, 8))


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_invariance_right_padded_mixed_lengths(backbones, family):
    model, tok = backbones(family)
    model.eval()
    spt.apply_spt(model, cfg_spt(pooling="max" if family in ("tiny-bert", "tiny-deberta") else "avg"))
    randomize_(spt.gates_of(model), seed=1)
    ids, mask, types = encode(tok, TEXTS)
    assert (mask == 0).any()
    batched = model(ids, mask, types).logits
    for i, text in enumerate(TEXTS):
        alone = model(*encode(tok, [text])).logits
        torch.testing.assert_close(batched[i:i + 1], alone, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------- search steps


def _search_model(backbones, family="tiny-bert"):
    model, tok = backbones(family)
    spt.apply_spt(model, cfg_spt())
    inj = spt.gates_of(model)
    gates = [inj.gate_logits]
    weights = [p for p in model.parameters() if p.requires_grad and p is not inj.gate_logits]
    return model, tok, inj, gates, weights


def _snap(params):
    return [p.detach().clone() for p in params]


def _identical(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_spt_joint_step_trains_gates_and_generators(backbones):
    model, tok, inj, gates, weights = _search_model(backbones)
    model.train()
    batch = make_batch(tok, TEXTS, [0, 1, 1, 0])
    opt_w, opt_a = torch.optim.AdamW(weights, lr=1e-2), torch.optim.AdamW(gates, lr=1e-1, weight_decay=0.0)
    step = JointStep(weights, gates, opt_w, None, opt_a, None, 1.0, ce_loss)
    # gradients reach every gate logit
    loss = ce_loss(model, batch)
    (g,) = torch.autograd.grad(loss, gates)
    assert g.shape == (4,) and (g != 0).all()
    before_a, before_w = _snap(gates), _snap(weights)
    step(model, batch, 1)
    assert not torch.equal(gates[0], before_a[0])
    assert all(not torch.equal(p, q) for p, q in zip(weights, before_w, strict=True))
    assert step.samples_seen == 4


def test_darts_d1_step_leaves_gates_and_d2_step_leaves_generators_bit_identical(backbones):
    model, tok, inj, gates, weights = _search_model(backbones)
    model.train()
    d1 = make_batch(tok, TEXTS[:2], [0, 1])
    d2 = make_batch(tok, TEXTS[2:], [1, 0])
    opt_w, opt_a = torch.optim.AdamW(weights, lr=1e-2), torch.optim.AdamW(gates, lr=1e-1, weight_decay=0.0)

    a0, w0 = _snap(gates), _snap(weights)
    weight_step(model, d1, weights, opt_w, None, 1.0, ce_loss)
    assert _identical(gates, a0) and all(p.grad is None for p in gates) and not opt_a.state
    assert not _identical(weights, w0)

    w1, state_w = _snap(weights), copy.deepcopy(opt_w.state_dict())
    gate_step(model, d2, gates, opt_a, None, 1.0, ce_loss)
    assert _identical(weights, w1) and all(p.grad is None for p in weights)
    assert not _identical(gates, a0)
    torch.testing.assert_close(opt_w.state_dict(), state_w, atol=0, rtol=0)

    a2 = _snap(gates)
    gate_step(model, d2, gates, opt_a, None, 1.0, ce_loss, second_order=True, train_batch=d1, weights=weights, xi=0.05)
    assert _identical(weights, w1) and all(p.grad is None for p in weights)
    assert not _identical(gates, a2)

    # the full alternation: one DARTS step moves both groups, D2 batches come from their own stream
    stream = iter([d2, d2])
    darts = DartsStep(weights, gates, opt_w, None, opt_a, None, 1.0, ce_loss, stream)
    a3, w3 = _snap(gates), _snap(weights)
    darts(model, d1, 1)
    assert not _identical(gates, a3) and not _identical(weights, w3)
    assert darts.samples_seen == 4 and darts.d2_samples_seen == 2


def test_second_order_gate_gradient_matches_the_exact_unrolled_gradient(backbones):
    """Finite-difference Hessian-vector product vs autograd through the virtual step (float64, no dropout)."""
    model, tok, inj, gates, weights = _search_model(backbones)
    model.double().eval()
    randomize_(inj, seed=2)
    d1 = make_batch(tok, TEXTS[:2], [0, 1])
    d2 = make_batch(tok, TEXTS[2:], [1, 0])
    xi = 0.5
    approx = unrolled_gate_grads(model, d1, d2, weights, gates, xi, ce_loss)[0]

    names = {id(p): n for n, p in model.named_parameters()}
    with sdpa_kernel(SDPBackend.MATH):  # double backward: the CPU flash kernel has no second derivative
        g_train = torch.autograd.grad(ce_loss(model, d1), weights, create_graph=True)  # depends on the gates
        unrolled = {names[id(w)]: w - xi * g for w, g in zip(weights, g_train, strict=True)}
        inputs = (d2["input_ids"], d2["attention_mask"], d2["token_type_ids"])
        logits = torch.func.functional_call(model, unrolled, inputs).logits
    (exact,) = torch.autograd.grad(F.cross_entropy(logits, d2["labels"]), gates)
    (first_order,) = torch.autograd.grad(ce_loss(model, d2), gates)
    torch.testing.assert_close(approx, exact, rtol=1e-3, atol=1e-7)
    assert not torch.allclose(first_order, exact, rtol=1e-3, atol=1e-7)  # the second-order term matters here


# ---------------------------------------------------------------------------------------------------- selection


def test_top_k_picks_the_k_largest_alphas():
    alpha = [0.2, 0.9, 0.5, 0.7, 0.1, 0.8]
    layers = list(range(6))
    assert spt.select_layers(alpha, layers, k=1) == [1]
    assert spt.select_layers(alpha, layers, k=3) == [1, 3, 5]
    assert spt.select_layers(alpha, layers, k=10) == layers
    assert spt.select_layers(alpha, layers) == [1]  # default: a quarter of 6 layers, at least one
    assert spt.select_layers([0.5] * 4, [0, 1, 2, 3], k=2) == [0, 1]  # ties: the lower layer
    assert spt.select_layers(alpha, layers, select="threshold", threshold=0.6) == [1, 3, 5]
    assert spt.select_layers(alpha, layers, select="threshold", threshold=0.95) == [1]  # none pass: the largest
    assert [spt.default_top_k(n) for n in (1, 4, 6, 12, 24, 32)] == [1, 1, 1, 3, 6, 8]


def test_d1_d2_split_is_disjoint_stratified_and_seeded():
    rows = [{"sentence": f"s{i}", "label": i % 2} for i in range(32)]
    d1, d2 = spt.split_d1_d2(rows, 0.5, seed=13)
    assert len(d1) == len(d2) == 16
    assert sorted(r["sentence"] for r in d1 + d2) == sorted(r["sentence"] for r in rows)
    assert sum(r["label"] for r in d1) == 8
    assert spt.split_d1_d2(rows, 0.5, seed=13) == (d1, d2)
    assert spt.split_d1_d2(rows, 0.5, seed=21) != (d1, d2)
    tiny1, tiny2 = spt.split_d1_d2(rows[:3], 0.1, seed=0)
    assert tiny1 and tiny2 and len(tiny1) + len(tiny2) == 3


def test_configs_validate():
    with pytest.raises(SptbenchError):
        build_config(get_method("spt"), {"top_k": "0"})
    with pytest.raises(SptbenchError):
        build_config(get_method("spt_darts"), {"d1_fraction": "1.0"})
    with pytest.raises(SptbenchError):
        build_config(get_method("lpt"), {"pooling": "mean"})
    assert build_config(get_method("spt"), {"layers": "3,1"}).layers == (3, 1)


# ---------------------------------------------------------------------------------------------------- re-training


def test_retraining_does_no_backward_work_below_the_first_chosen_layer(backbones):
    def backward_calls(layers):
        model, tok = backbones("tiny-bert")
        spt.add_prompts(model, cfg_spt(), layers, gated=False)
        model.train()
        calls = [0] * len(model.layers)
        records_grad = [None] * len(model.layers)

        def on_backward(i):
            return lambda mod, grad_in, grad_out: calls.__setitem__(i, calls[i] + 1)

        def on_forward(i):
            def hook(mod, inputs, out):
                records_grad[i] = (out[0] if isinstance(out, tuple) else out).grad_fn is not None
            return hook

        for i, layer in enumerate(model.layers):
            layer.register_full_backward_hook(on_backward(i))
            layer.register_forward_hook(on_forward(i))
        ce_loss(model, make_batch(tok, TEXTS, [0, 1, 1, 0])).backward()
        return calls, records_grad, model

    calls, graph, model = backward_calls([2, 3])
    assert model.first_trainable_layer() == 2
    assert calls == [0, 0, 1, 1] and graph == [False, False, True, True]
    calls, graph, _ = backward_calls([0])  # the hooks do see work where there is some
    assert calls == [1, 1, 1, 1] and graph == [True] * 4


def test_lpt_is_one_hard_prompt_layer_in_the_middle(backbones):
    model, _ = backbones("tiny-deberta")
    method = get_method("lpt")
    method.apply(model, build_config(method, {}))
    inj = spt.gates_of(model)
    assert inj.prompt_layers == (2,) and inj.gate_logits is None and model.first_trainable_layer() == 2
    per_generator = 32 * 32 + 32 + 32 * 32 + 32
    assert model.count_parameters()["trainable"] == per_generator
    other, _ = backbones("tiny-deberta")
    with pytest.raises(SptbenchError):
        method.apply(other, build_config(method, {"layer": "4"}))


# ---------------------------------------------------------------------------------------------------- fit


def _accuracy(spec, predictions, references):
    """Stands in for sptbench.data.metrics in the fit tests: importing `evaluate` alone takes ~10 s on 2 cores."""
    acc = sum(int(p == r) for p, r in zip(predictions, references, strict=True)) / len(references)
    return {"accuracy": acc, "score": acc}


@pytest.fixture(scope="module")
def fit_context():
    from sptbench.data.specs import load_spec
    from sptbench.data.tasks import TaskData
    from sptbench.methods.registry import FitContext
    from sptbench.training.loop import TrainConfig, encode_rows, train

    patch = pytest.MonkeyPatch()
    patch.setattr("sptbench.training.loop.compute_metrics", _accuracy)

    spec = load_spec("sst2")
    _, tokenizer, _ = load_backbone("tiny-bert", 2)
    words = ["good", "bad", "great", "awful", "fine", "dull", "fun", "boring"]
    rows = [{"sentence": " ".join(words[(i + j) % 8] for j in range(2 + i % 5)), "label": i % 2} for i in range(16)]
    task = TaskData(spec, rows[:12], rows[12:], rows[12:], "mirror", "test", "sha256:0", {})

    def make(method_name: str, tcfg: TrainConfig, **overrides):
        method = get_method(method_name)

        def build_model():
            torch.manual_seed(0)
            model, _, _ = load_backbone("tiny-bert", 2)
            model.freeze_backbone()
            return model

        def run_train(model, train_enc, dev_enc, tcfg_=None, **kw):
            return train(model, train_enc, dev_enc, spec, tcfg_ or tcfg, pad_id=tokenizer.pad_token_id, progress=False,
                         **kw)

        return method, FitContext(
            task=task, method_cfg=build_config(method, overrides), tcfg=tcfg, tokenizer=tokenizer,
            build_model=build_model, encode=lambda r: encode_rows(r, tokenizer, spec), train=run_train,
            log=lambda msg: None,
        )

    yield make
    patch.undo()


@pytest.mark.parametrize("method_name, overrides", [("spt", {}), ("spt_darts", {"second_order": "true"})])
def test_fit_end_to_end_on_tiny_bert(fit_context, method_name, overrides):
    from sptbench.training.loop import TrainConfig

    tcfg = TrainConfig(max_steps=6, batch_size=4, eval_batch_size=8, lr=1e-2, eval_every=3, seed=13)
    method, ctx = fit_context(method_name, tcfg, search_steps=4, top_k=2, gate_lr=0.5, **overrides)
    out = method.fit(ctx)
    ex = out.extra
    assert ex["candidate_layers"] == [0, 1, 2, 3]
    assert len(ex["alpha"]) == 4 and len(set(ex["alpha"])) > 1  # the gates moved apart
    assert ex["chosen_layers"] == spt.select_layers(ex["alpha"], [0, 1, 2, 3], k=2)
    assert [t["step"] for t in ex["alpha_trajectory"]] == [0, 3, 4]
    assert ex["alpha_trajectory"][0]["alpha"] == [0.5] * 4
    assert ex["alpha_trajectory"][-1]["alpha"] == ex["alpha"]  # final α: the end of the search
    # spt: 4 batches of 4 from 12 rows; DARTS: D1 and D2 have 6 rows each (batches 4, 2, 4, 2), one of each per step
    expected_seen = 16 if method_name == "spt" else 12 + 12
    assert ex["search_samples_seen"] == out.stages["search"]["samples_seen"] == expected_seen
    assert ex["search_wall_s"] > 0 and ex["retrain_wall_s"] > 0 and ex["search_steps"] == 4
    if method_name == "spt_darts":
        assert out.stages["search"]["d1_size"] == 6 and out.stages["search"]["d2_size"] == 6
    # the returned model is the re-trained one: hard prompts at the chosen layers, no gates
    inj = spt.gates_of(out.model)
    assert list(inj.prompt_layers) == ex["chosen_layers"] and inj.gate_logits is None
    assert out.model.count_parameters()["trainable"] == 2 * (32 * 32 + 32 + 32 * 32 + 32)
    assert out.result.steps_run == 6 and out.stages["retrain"]["steps"] == 6
    # a saved model rebuilds from the declared final config (`layers` = the chosen layers), which the record keeps
    assert out.final_config["layers"] == ex["chosen_layers"]
    assert out.record_extra()["final_config"] == out.final_config and "final_config" not in ex
    state = out.model.export_state()
    rebuilt = ctx.build_model()
    method.apply(rebuilt, build_config(method, out.final_config))
    rebuilt.import_state(state)
    rebuilt.eval(), out.model.eval()
    batch = make_batch(ctx.tokenizer, TEXTS, [0, 1, 1, 0])
    torch.testing.assert_close(rebuilt(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits,
                               out.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits)


def test_fit_with_fixed_layers_skips_the_search(fit_context):
    from sptbench.training.loop import TrainConfig

    tcfg = TrainConfig(max_steps=2, batch_size=4, eval_batch_size=8, eval_every=2, seed=13)
    method, ctx = fit_context("spt", tcfg, layers="1")
    out = method.fit(ctx)
    assert out.extra["chosen_layers"] == [1] and "search" not in out.stages and "alpha" not in out.extra


# ---------------------------------------------------------------------------------------------------- plot


def test_plot_gates_writes_a_png(tmp_path):
    from sptbench.reports.plots import plot_gates
    from tests.helpers import make_record

    records = [
        make_record(method__name=m, task__name=t, protocol__seed=s,
                    extra={"alpha": [0.1 * (i + s % 3) for i in range(6)], "candidate_layers": list(range(6)),
                           "chosen_layers": [5]})
        for m in ("spt", "spt_darts") for t in ("rte", "sst2") for s in (13, 21)
    ]
    records.append(make_record(method__name="lpt", extra={}))  # no gates: skipped
    out = plot_gates(records, tmp_path / "sub" / "gates.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    with pytest.raises(SptbenchError):
        plot_gates([{"extra": {}}], tmp_path / "none.png")
    by_task = plot_gates(records, tmp_path / "by_task.png", by="task")
    assert by_task.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_gate_trajectories_writes_a_png_per_run_panel(tmp_path):
    from sptbench.reports.plots import plot_gate_trajectories
    from tests.helpers import make_record

    g = torch.Generator().manual_seed(3)
    trajectory = [{"step": s, "alpha": torch.rand(4, generator=g).tolist(), "dev_score": None} for s in (0, 20, 40)]
    records = [make_record(method__name="spt", protocol__seed=s,
                           extra={"alpha": trajectory[-1]["alpha"], "candidate_layers": [0, 1, 2, 3],
                                  "chosen_layers": [2], "alpha_trajectory": trajectory}) for s in (13, 21)]
    out = plot_gate_trajectories(records, tmp_path / "traj.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 2000
    old = [make_record(method__name="spt", extra={"alpha": [0.5], "candidate_layers": [0], "chosen_layers": [0],
                                                  "alpha_trajectory": trajectory[:1]})]
    with pytest.raises(SptbenchError, match="no records with an α trajectory"):
        plot_gate_trajectories(old, tmp_path / "none.png")


def test_gate_grid_by_task_averages_over_seeds_and_counts_choices():
    from sptbench.reports.plots import gate_grid
    from tests.helpers import make_record

    g = torch.Generator().manual_seed(0)
    runs = []
    for seed in (13, 21, 42):
        alpha = torch.rand(4, generator=g).tolist()
        runs.append(make_record(method__name="spt", task__name="rte", protocol__seed=seed,
                                extra={"alpha": alpha[1:], "candidate_layers": [1, 2, 3],
                                       "chosen_layers": [1 + max(range(3), key=lambda i: alpha[1 + i])]}))
    labels, alphas, chosen, counts = gate_grid(runs, by="task")
    assert labels == ["rte · spt (n=3)"] and counts == [3]
    expected = [sum(r["extra"]["alpha"][i] for r in runs) / 3 for i in range(3)]
    assert math.isnan(alphas[0][0]) and alphas[0][1:] == pytest.approx(expected)
    assert sum(chosen[0]) == 3 and chosen[0][0] == 0
    assert [r["extra"]["chosen_layers"][0] for r in runs].count(2) == chosen[0][2]
    per_run = gate_grid(runs, by="run")
    assert len(per_run[0]) == 3 and per_run[1][0][1:] == pytest.approx(runs[0]["extra"]["alpha"])
    # the tested record of the test-once protocol repeats its run: counted once
    tested = {**runs[0], "selection": {"tested": True}, "created": "2099-01-01T00:00:00+00:00"}
    assert gate_grid([*runs, tested], by="task")[1:] == (alphas, chosen, counts)
    with pytest.raises(SptbenchError, match="Choices: run, task"):
        gate_grid(runs, by="seed")


def test_search_stage_config_is_what_apply_builds_without_layers(backbones):
    model, _ = backbones("tiny-bert")
    spt.apply_spt(model, cfg_spt(num_tokens=4, bottleneck=8))
    inj = spt.gates_of(model)
    assert inj.prompt_layers == (0, 1, 2, 3) and inj.gate_logits.shape == (4,)
    assert torch.allclose(inj.alphas(), torch.full((4,), 0.5))
    assert model.first_trainable_layer() == 0
    counts = model.count_parameters()
    assert counts["trainable"] == 4 * (32 * 8 + 8 + 8 * 32 + 32) + 4


# ---------------------------------------------------------------------------------------------------- variants


def test_stochastic_gate_straight_through_reaches_the_logits_and_evaluation_is_deterministic(backbones):
    model, tok = backbones("tiny-bert")
    spt.apply_spt(model, cfg_spt(gate="stochastic"))
    inj = spt.gates_of(model)
    torch.manual_seed(3)
    randomize_(inj, seed=2)
    batch = make_batch(tok, TEXTS, [0, 1, 1, 0])
    model.train()
    (g,) = torch.autograd.grad(ce_loss(model, batch), [inj.gate_logits])
    assert g.shape == (4,) and (g != 0).any()  # straight-through: the hard decision's gradient is the soft one's
    gates = [inj._gate(i, 64, torch.float32).flatten() for i in range(4)]
    assert all(torch.allclose(x, x.round(), atol=1e-6) for x in gates)  # hard decisions in the forward
    assert any(0 < float(x.round().mean()) < 1 for x in gates)  # sampled per example
    model.eval()
    ids, mask, types = encode(tok, TEXTS)
    first, second = model(ids, mask, types).logits, model(ids, mask, types).logits
    assert torch.equal(first, second)
    deterministic, _ = backbones("tiny-bert")
    spt.apply_spt(deterministic, cfg_spt())
    deterministic.load_state_dict(model.state_dict())
    deterministic.eval()
    torch.testing.assert_close(first, deterministic(ids, mask, types).logits)  # evaluation mixes with α itself


def test_stochastic_gate_temperature_is_annealed_over_the_search(fit_context):
    from sptbench.training.loop import TrainConfig

    seen = []
    real = GatedPrompts.set_gate_temperature

    def spy(self, value):
        seen.append(value)
        real(self, value)

    patch = pytest.MonkeyPatch()
    patch.setattr(GatedPrompts, "set_gate_temperature", spy)
    try:
        tcfg = TrainConfig(max_steps=5, batch_size=4, eval_batch_size=8, eval_every=5, seed=13)
        method, ctx = fit_context("spt", tcfg, search_steps=5, gate="stochastic", gate_temperature_start=2.0,
                                  gate_temperature_end=0.5)
        method.fit(ctx)
    finally:
        patch.undo()
    assert seen[0] == 2.0 and seen[4] == pytest.approx(0.5)  # λ of the first and of the last search step
    assert all(a > b for a, b in zip(seen[:4], seen[1:5], strict=True))


def test_candidates_without_the_input_layer(fit_context, backbones):
    model, _ = backbones("tiny-bert")
    spt.apply_spt(model, cfg_spt(candidates="no_input"))
    assert spt.gates_of(model).prompt_layers == (1, 2, 3)
    from sptbench.training.loop import TrainConfig

    tcfg = TrainConfig(max_steps=2, batch_size=4, eval_batch_size=8, eval_every=2, seed=13)
    method, ctx = fit_context("spt", tcfg, search_steps=2, candidates="no_input")
    out = method.fit(ctx)
    assert out.extra["candidate_layers"] == [1, 2, 3] and 0 not in out.extra["chosen_layers"]
    assert out.extra["top_k"] == 1  # a quarter of the backbone's 4 layers, not of the 3 candidates


@pytest.mark.parametrize("family", FAMILIES)
def test_naive_generator_reads_the_summary_token(backbones, family):
    """LPT's naive generator: the prompt depends on the first token (GPT-2: the last real one) and nothing else;
    batch invariant under padding."""
    from sptbench.methods.spt.prompt_generator import NaivePromptGenerator

    model, tok = backbones(family)
    get_method("lpt").apply(model, build_config(get_method("lpt"), {"generator": "naive", "num_tokens": 5}))
    gen = next(iter(spt.gates_of(model).generators.values()))
    assert isinstance(gen, NaivePromptGenerator) and gen.summary == ("last" if model.family.causal else "first")
    g = torch.Generator().manual_seed(4)
    tokens, mask = torch.randn(3, 7, 32, generator=g), torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    out = gen(tokens, mask)
    assert out.shape == (3, 5, 32)
    pick = [6, 3, 1] if gen.summary == "last" else [0, 0, 0]
    changed = tokens.clone()
    for b in range(3):  # change every token but the summary one: the prompt stays
        keep = changed[b, pick[b]].clone()
        changed[b] = torch.randn(7, 32, generator=g)
        changed[b, pick[b]] = keep
    torch.testing.assert_close(gen(changed, mask), out)
    model.eval()
    ids, amask, types = encode(tok, TEXTS)
    batched = model(ids, amask, types).logits
    for i, text in enumerate(TEXTS):
        torch.testing.assert_close(batched[i:i + 1], model(*encode(tok, [text])).logits, atol=1e-5, rtol=0)


def test_plot_layers_curves_and_chosen_layers(tmp_path):
    from sptbench.reports.plots import chosen_layer_counts, layer_curves, plot_layers
    from tests.helpers import make_record

    rng = __import__("random").Random(5)
    records, expected = [], {}
    for layer in (0, 2, 4):
        for seed in (13, 21):
            score = round(rng.uniform(0.5, 0.9), 4)
            rec = make_record(method__name="lpt", method__config={"layer": layer}, task__name="sst2",
                              protocol__seed=seed)
            rec["metrics"]["test"] = {"accuracy": score, "score": score}
            records.append(rec)
            expected.setdefault(layer, []).append(100 * score)
    untested = make_record(method__name="lpt", method__config={"layer": 5}, task__name="sst2",
                           selection={"tested": False})
    untested["metrics"]["test"] = {}
    spt_run = make_record(method__name="spt", task__name="sst2", extra={"alpha": [0.5] * 6, "chosen_layers": [2]})
    curves = layer_curves([*records, untested, spt_run])
    assert curves == {"sst2": {k: pytest.approx(v) for k, v in expected.items()}}
    out = plot_layers([*records, untested, spt_run], tmp_path / "layers.png")
    assert out.stat().st_size > 1000 and out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SptbenchError, match="layer grid"):
        plot_layers([spt_run], tmp_path / "none.png")
    # a seed's sampled split is its own point; another setting of the same seeds is refused, not folded in
    sampled = [{**r, "protocol": {**r["protocol"], "split_source": "sample"}} for r in records]
    assert [len(v) for v in layer_curves(records + sampled)["sst2"].values()] == [4, 4, 4]
    other = [{**r, "protocol": {**r["protocol"], "shots": None, "train_size": 1000}} for r in records]
    with pytest.raises(SptbenchError, match="16shot.*n1000"):
        layer_curves(records + other)
    # a search run counts once: its tested record (test-once protocol) repeats its untested one
    searches = []
    for seed, layer in ((13, 2), (21, 4), (42, 2)):
        run = make_record(method__name="spt", task__name="sst2", protocol__seed=seed, selection={"tested": False},
                          extra={"alpha": [0.5] * 6, "chosen_layers": [layer]})
        searches.append(run)
    tested = {**searches[1], "selection": {"tested": True}, "created": "2099-01-01T00:00:00+00:00"}
    assert chosen_layer_counts([*searches, tested]) == {"sst2": {"spt": {2: 2, 4: 1}}}
