"""Selective Prompt Tuning (Zhu & Tan, EMNLP 2023): `spt`, `spt_darts`, and the `lpt` baseline (Liu et al., 2022).

SPT puts an LPT-style prompt generator behind a learnable gate at every layer (`GatedPrompts`), learns the gates
(search), keeps the K layers with the largest gate values (select) and re-trains fresh generators at those layers
only (re-train). `spt` learns gates and generators jointly on the training set; `spt_darts` alternates generator
steps on a split D1 and gate steps on the rest D2 (DARTS bi-level). `lpt` is one hard prompt layer, no search.
The paper's full text was not available: most details here are reconstructions, listed in docs/spt.md.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from sptbench.core.errors import SptbenchError
from sptbench.methods.registry import FitContext, FitResult, config_dict, register_method
from sptbench.methods.spt.diagnostics import search_result

if TYPE_CHECKING:  # the torch side (this folder's other modules) loads when a model is built
    from sptbench.methods.spt.gated_prompts import GatedPrompts
    from sptbench.models.classifier import Classifier

DEFAULT_LR = 3e-3  # prompt generators (and the head); the gates have their own `gate_lr`


# ---------------------------------------------------------------------------------------------------- configs


@dataclass
class PromptGeneratorConfig:
    """The prompt generator at each prompt layer."""

    num_tokens: int = field(default=10, metadata={"size": True, "help": "m, prompt positions per example"})
    bottleneck: int = field(default=32, metadata={"size": True,
        "help": "r, the generator's inner width (paper-scale runs used 256; 32 suits small backbones)"})
    pooling: Literal["avg", "max"] = field(default="avg", metadata={
        "help": "adaptive avg or max pooling of the down-projected real tokens to m positions (pooled generator)"})
    activation: Literal["relu", "tanh", "gelu"] = field(default="relu", metadata={
        "help": "relu, tanh or gelu, between pooling and the up-projection"})
    generator: Literal["pooled", "naive"] = field(default="pooled", metadata={
        "help": "pooled (down-project every real token, pool to m positions, up-project) or naive (Late Prompt "
                "Tuning's public code: the first token's state, GPT-2 the last real token's, down, act, up to m x d)"})

    def validate(self) -> None:
        from sptbench.methods.spt.prompt_generator import ACTIVATIONS, GENERATORS, POOLINGS

        if self.num_tokens < 1:
            raise SptbenchError(f"num_tokens must be >= 1, got {self.num_tokens}")
        if self.bottleneck < 1:
            raise SptbenchError(f"bottleneck must be >= 1, got {self.bottleneck}")
        if self.pooling not in POOLINGS:
            raise SptbenchError(f"pooling must be one of {', '.join(POOLINGS)}, got '{self.pooling}'")
        if self.activation not in ACTIVATIONS:
            raise SptbenchError(f"activation must be one of {', '.join(ACTIVATIONS)}, got '{self.activation}'")
        if self.generator not in GENERATORS:
            raise SptbenchError(f"generator must be one of {', '.join(GENERATORS)}, got '{self.generator}'")


@dataclass
class SptConfig(PromptGeneratorConfig):
    """SPT: gated generators at every layer, joint search on train, top-K selection, re-training."""

    temperature: float = field(default=1.0, metadata={"help": "τ in α = sigmoid(a / τ)"})
    gate_init: float = field(default=0.0, metadata={"help": "initial gate logit a (0: α = 0.5 everywhere)"})
    gate_lr: float = field(default=1e-2, metadata={
        "help": "the gates' learning rate (AdamW, linear warmup/decay like the generators')"})
    gate_weight_decay: float = field(default=0.0, metadata={
        "help": "weight decay on the gate logits (0: no pull towards α = 0.5)"})
    select: Literal["topk", "threshold"] = field(default="topk", metadata={
        "help": "topk (the K largest α) or threshold (every α >= threshold; the largest if none is)"})
    top_k: int | None = field(default=None, metadata={"help": "K; none = a quarter of the layers, at least 1"})
    threshold: float = field(default=0.5, metadata={"help": "the α cut for select=threshold"})
    search_steps: int | None = field(default=None, metadata={
        "help": "optimisation steps of the search; none = the run's max_steps"})
    layers: tuple[int, ...] | None = field(default=None, metadata={
        "help": "skip the search and re-train prompts at these layers (also how a saved model is rebuilt: the "
                "record's extra.final_config sets it to the chosen layers)"})
    gate: Literal["deterministic", "stochastic"] = field(default="deterministic", metadata={
        "help": "deterministic (mix with α = sigmoid(a / τ)) or stochastic (a relaxed-Bernoulli sample per example "
                "with a straight-through hard decision in training, α in evaluation; docs/spt.md)"})
    gate_temperature_start: float = field(default=1.0, metadata={
        "help": "the stochastic gate's relaxation temperature λ at the start of the search (annealed geometrically)"})
    gate_temperature_end: float = field(default=0.1, metadata={
        "help": "the stochastic gate's relaxation temperature λ at the end of the search"})
    search: Literal["gates", "single_path"] = field(default="gates", metadata={
        "help": "gates (learn the gates α, the paper's SPT) or single_path (each step trains the prompt of one "
                "random candidate layer, LPT there, with a shared head; then every layer's prompt is scored alone "
                "on dev and α is its mean gold-label probability; docs/spt.md)"})
    gate_budget: float = field(default=0.0, metadata={
        "help": "λ of a budget term λ (Σ α - K)² added to the search loss, pushing the gates towards K open ones so "
                "that they compete (0: none; docs/spt.md)"})
    candidates: Literal["all", "no_input"] = field(default="all", metadata={
        "help": "all layers, or no_input (every layer but 0: the input layer's gate can only scale the prompt, a "
                "possible bias towards it, docs/spt.md)"})

    def validate(self) -> None:
        from sptbench.methods.spt.gated_prompts import GATES

        super().validate()
        if self.gate not in GATES:
            raise SptbenchError(f"gate must be one of {', '.join(GATES)}, got '{self.gate}'")
        if self.gate_temperature_start <= 0 or self.gate_temperature_end <= 0:
            raise SptbenchError("gate_temperature_start and gate_temperature_end must be > 0")
        if self.candidates not in ("all", "no_input"):
            raise SptbenchError(f"candidates must be all or no_input, got '{self.candidates}'")
        if self.temperature <= 0:
            raise SptbenchError(f"temperature must be > 0, got {self.temperature}")
        if self.gate_lr <= 0:
            raise SptbenchError(f"gate_lr must be > 0, got {self.gate_lr}")
        if self.search not in ("gates", "single_path"):
            raise SptbenchError(f"search must be gates or single_path, got '{self.search}'")
        if self.gate_budget < 0:
            raise SptbenchError(f"gate_budget must be >= 0, got {self.gate_budget}")
        if self.select not in ("topk", "threshold"):
            raise SptbenchError(f"select must be topk or threshold, got '{self.select}'")
        if self.top_k is not None and self.top_k < 1:
            raise SptbenchError(f"top_k must be >= 1, got {self.top_k}")
        if not 0.0 < self.threshold < 1.0:
            raise SptbenchError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.search_steps is not None and self.search_steps < 1:
            raise SptbenchError(f"search_steps must be >= 1, got {self.search_steps}")
        if self.layers is not None and not self.layers:
            raise SptbenchError("layers, when given, must name at least one layer")

    def check_layers(self, num_layers: int) -> None:
        """Options against the backbone's depth: top_k and layers must exist there (never silently clamped)."""
        if self.layers is None and self.select == "topk" and self.top_k is not None and self.top_k > num_layers:
            raise SptbenchError(f"top_k={self.top_k} is more than the backbone's {num_layers} layers")
        bad = [x for x in self.layers or () if not 0 <= x < num_layers]
        if bad:
            raise SptbenchError(f"layers {bad} out of range: this backbone has layers 0..{num_layers - 1}")


@dataclass
class SptDartsConfig(SptConfig):
    """SPT-DARTS: the search alternates gate steps on D2 and generator steps on D1 (bi-level, DARTS-style)."""

    d1_fraction: float = field(default=0.5, metadata={
        "help": "share of the training set in D1 (generators); D2 (gates) is the rest; split per label, seeded"})
    second_order: bool = field(default=False, metadata={
        "help": "unrolled second-order gate gradient (finite-difference Hessian-vector product) instead of first "
                "order"})
    unroll_lr: float | None = field(default=None, metadata={
        "help": "ξ of the virtual generator step; none = the generators' current learning rate"})

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.d1_fraction < 1.0:
            raise SptbenchError(f"d1_fraction must be in (0, 1), got {self.d1_fraction}")


@dataclass
class LptConfig(PromptGeneratorConfig):
    """Late Prompt Tuning: one instance-aware prompt generator at one layer, no search."""

    layer: int | None = field(default=None, metadata={
        "help": "the prompt layer; none = the middle layer (layers // 2)"})

    def validate(self) -> None:
        super().validate()
        if self.layer is not None and self.layer < 0:
            raise SptbenchError(f"layer must be >= 0, got {self.layer}")

    def check_layers(self, num_layers: int) -> None:
        """The prompt layer must exist in the backbone."""
        if self.layer is not None and self.layer >= num_layers:
            raise SptbenchError(f"layer {self.layer} out of range: this backbone has layers 0..{num_layers - 1}")


# ---------------------------------------------------------------------------------------------------- building


def add_prompts(model: Classifier, cfg: PromptGeneratorConfig, layers: Sequence[int], *, gated: bool) -> GatedPrompts:
    """Add generators at `layers` (learnable gates if `gated`, else hard gates) to a model; returns the injection."""
    from sptbench.methods.spt.gated_prompts import GatedPrompts

    n = len(model.layers)
    bad = [x for x in layers if not 0 <= x < n]
    if bad:
        raise SptbenchError(f"prompt layers {bad} out of range: this backbone has layers 0..{n - 1}")
    inj = GatedPrompts(
        model.family.hidden_size(model.backbone),
        layers,
        num_tokens=cfg.num_tokens,
        bottleneck=cfg.bottleneck,
        pooling=cfg.pooling,
        activation=cfg.activation,
        gated=gated,
        temperature=getattr(cfg, "temperature", 1.0),
        gate_init=getattr(cfg, "gate_init", 0.0),
        generator=cfg.generator,
        causal=model.family.causal,
        gate=getattr(cfg, "gate", "deterministic") if gated else "deterministic",
    )
    param = next(model.head.parameters())
    return model.add_injection(inj.to(device=param.device))


def apply_spt(model: Classifier, cfg: SptConfig) -> None:
    """With `layers`: the re-trained model (hard prompts there). Without: the search-stage model (gates everywhere)."""
    cfg.check_layers(len(model.layers))
    if cfg.layers is not None:
        add_prompts(model, cfg, cfg.layers, gated=False)
    else:
        add_prompts(model, cfg, candidate_layers(len(model.layers), cfg), gated=True)


def candidate_layers(num_layers: int, cfg: SptConfig) -> list[int]:
    """The layers the search may choose: all, or all but the input layer (`candidates: no_input`)."""
    if cfg.candidates == "no_input":
        if num_layers < 2:
            raise SptbenchError("candidates=no_input needs a backbone with at least 2 layers")
        return list(range(1, num_layers))
    return list(range(num_layers))


def lpt_layer(num_layers: int, cfg: LptConfig) -> int:
    return num_layers // 2 if cfg.layer is None else cfg.layer


def apply_lpt(model: Classifier, cfg: LptConfig) -> None:
    add_prompts(model, cfg, [lpt_layer(len(model.layers), cfg)], gated=False)


def gates_of(model: Classifier) -> GatedPrompts:
    from sptbench.methods.spt.gated_prompts import GatedPrompts

    found = [inj for inj in model.injections if isinstance(inj, GatedPrompts)]
    if len(found) != 1:
        raise ValueError(f"expected one GatedPrompts injection, found {len(found)}")
    return found[0]


# ---------------------------------------------------------------------------------------------------- selection


def default_top_k(num_layers: int) -> int:
    """A quarter of the layers, at least one (8 of 32, as in the authors' later re-run)."""
    return max(1, num_layers // 4)


def select_layers(
    alpha: Sequence[float], layers: Sequence[int], *, select: str = "topk", k: int | None = None,
    threshold: float = 0.5,
) -> list[int]:
    """The chosen prompt layers, ascending: the K largest α (ties: the lower layer), or every α >= threshold."""
    if len(alpha) != len(layers) or not layers:
        raise ValueError("alpha and layers must be non-empty and of the same length")
    ranked = sorted(range(len(layers)), key=lambda i: (-alpha[i], layers[i]))
    if select == "topk":
        k = default_top_k(len(layers)) if k is None else k
        keep = ranked[: min(k, len(layers))]
    elif select == "threshold":
        keep = [i for i in ranked if alpha[i] >= threshold] or ranked[:1]
    else:
        raise ValueError(f"unknown selection {select!r}")
    return sorted(layers[i] for i in keep)


def split_d1_d2(rows: list[dict], d1_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Split training rows into D1 (generators) and D2 (gates), per label, seeded; each gets at least one row."""
    if len(rows) < 2:
        raise SptbenchError("spt_darts needs at least 2 training examples to split into D1 and D2")
    rng = random.Random(seed)
    by_label: dict = {}
    for i, row in enumerate(rows):
        by_label.setdefault(row["label"], []).append(i)
    d1: list[int] = []
    for label in sorted(by_label, key=str):
        idx = by_label[label]
        rng.shuffle(idx)
        d1.extend(idx[: round(len(idx) * d1_fraction)])
    d1_set = set(d1)
    d2 = [i for i in range(len(rows)) if i not in d1_set]
    if not d1 or not d2:  # tiny sets: split without stratifying so that neither side is empty
        order = list(range(len(rows)))
        rng.shuffle(order)
        n1 = min(max(1, round(len(rows) * d1_fraction)), len(rows) - 1)
        d1, d2 = order[:n1], order[n1:]
    return [rows[i] for i in sorted(d1)], [rows[i] for i in sorted(d2)]


# ---------------------------------------------------------------------------------------------------- stages


def _alpha_list(inj: GatedPrompts) -> list[float]:
    return [round(float(a), 6) for a in inj.alphas().detach().cpu()]


def _search_optimizers(model, inj, cfg: SptConfig, tcfg) -> tuple:
    """(weights, gates, weights' optimiser and schedule, gates' optimiser and schedule): the gates with their own
    learning rate and weight decay."""
    from sptbench.training.loop import optimizer_for

    gates = [inj.gate_logits]
    weights = [p for p in model.parameters() if p.requires_grad and p is not inj.gate_logits]
    opt_w, sched_w = optimizer_for(weights, tcfg)
    opt_a, sched_a = optimizer_for(gates, tcfg, lr=cfg.gate_lr, weight_decay=0.0)
    for group in opt_a.param_groups:
        group["weight_decay"] = cfg.gate_weight_decay
    return weights, gates, opt_w, sched_w, opt_a, sched_a


def _search_loss(cfg: SptConfig, inj, k: int):
    """The search's loss: the training loss, plus with `gate_budget` λ (Σα - K)², the gates competing for K open
    places (the budget has no gradient for the weights)."""
    from sptbench.training.loop import loss_on

    if cfg.gate_budget <= 0:
        return loss_on
    return lambda model, batch: loss_on(model, batch) + cfg.gate_budget * (inj.alphas().sum() - k) ** 2


def search(ctx, cfg: SptConfig, *, darts: bool) -> dict:
    """Learn the gates; returns final α per layer, the α trajectory and the stage's cost. Dev monitors only."""
    from sptbench.methods.spt.darts import DartsStep, JointStep
    from sptbench.training.loop import forever

    t_start = time.perf_counter()
    tcfg = dataclasses.replace(
        ctx.tcfg, max_steps=cfg.search_steps or ctx.tcfg.max_steps, patience=None
    )  # the whole budget, no early stop on dev
    model = ctx.build_model()
    apply_spt(model, dataclasses.replace(cfg, layers=None))
    inj = gates_of(model)
    k = cfg.top_k or default_top_k(len(model.layers))
    if cfg.search == "single_path":
        from sptbench.methods.spt.single_path import single_path_search

        rows = split_d1_d2(ctx.task.train, cfg.d1_fraction, tcfg.seed) if darts else (ctx.task.train, ctx.task.dev)
        return single_path_search(ctx, tcfg, model, inj, t_start, k=k, rows=rows, darts=darts)
    weights, gates, opt_w, sched_w, opt_a, sched_a = _search_optimizers(model, inj, cfg, tcfg)
    loss_on = _search_loss(cfg, inj, k)
    trajectory = [{"step": 0, "alpha": _alpha_list(inj), "dev_score": None}]
    final: dict = {}

    def anneal(step: int) -> None:  # the stochastic gate's λ for the next step: geometric from start to end
        start, end = cfg.gate_temperature_start, cfg.gate_temperature_end
        inj.set_gate_temperature(start * (end / start) ** min(1.0, step / max(1, tcfg.max_steps - 1)))

    anneal(0)

    def after(step: int) -> None:
        anneal(step)
        if step == tcfg.max_steps:
            final["alpha"] = _alpha_list(inj)  # the gates at the end of the search, not at the best dev step

    def on_eval(step: int, dev: dict) -> None:
        trajectory.append({"step": step, "alpha": _alpha_list(inj), "dev_score": round(float(dev["score"]), 6)})

    if darts:
        d1_rows, d2_rows = split_d1_d2(ctx.task.train, cfg.d1_fraction, tcfg.seed)
        pad_id = ctx.tokenizer.pad_token_id or 0
        d2 = forever(ctx.encode(d2_rows), tcfg.batch_size, seed=tcfg.seed + 1, group_by_length=tcfg.group_by_length,
                     pad_id=pad_id, sampler=tcfg.sampler)
        step_fn = DartsStep(weights, gates, opt_w, sched_w, opt_a, sched_a, tcfg.max_grad_norm, loss_on, d2,
                            second_order=cfg.second_order, unroll_lr=cfg.unroll_lr, after=after)
        train_rows = d1_rows
    else:
        step_fn = JointStep(weights, gates, opt_w, sched_w, opt_a, sched_a, tcfg.max_grad_norm, loss_on, after=after)
        train_rows, d2_rows = ctx.task.train, []
    rows = f"D1 {len(train_rows)} rows, D2 {len(d2_rows)} rows" if darts else f"{len(train_rows)} rows"
    ctx.log(f"[spt] search ({'darts' if darts else 'joint'}): {rows}, {tcfg.max_steps} steps")
    result = ctx.train(model, ctx.encode(train_rows), ctx.encode(ctx.task.dev), tcfg, step_fn=step_fn, on_eval=on_eval)
    alpha = final.get("alpha") or trajectory[-1]["alpha"]
    train_loss = {h["step"]: h["train_loss"] for h in result.history}
    for point in trajectory[1:]:
        point["train_loss"] = train_loss.get(point["step"])
    split = (len(train_rows), len(d2_rows)) if darts else None
    return search_result(model, inj, alpha, trajectory, step_fn.gate_grads, k, result, step_fn.samples_seen, t_start,
                         split)


def retrain(ctx, cfg: PromptGeneratorConfig, layers: Sequence[int]):
    """Fresh model, fresh generators with hard gates at `layers`, trained on train with dev selection."""
    t_start = time.perf_counter()
    model = ctx.build_model()
    add_prompts(model, cfg, layers, gated=False)
    ctx.log(f"[spt] re-train: prompts at layers {list(layers)}")
    result = ctx.train(model, ctx.encode(ctx.task.train), ctx.encode(ctx.task.dev))
    cost = {
        "wall_s": round(time.perf_counter() - t_start, 3),
        "train_s": round(result.train_time_s, 3),
        "eval_s": round(result.eval_time_s, 3),
        "steps": result.steps_run,
        "samples_seen": result.samples_seen,
    }
    return model, result, cost


def _fit(ctx: FitContext, *, darts: bool) -> FitResult:
    cfg: SptConfig = ctx.method_cfg
    extra: dict = {}
    stages: dict = {}
    if cfg.layers is not None:
        chosen = sorted(set(cfg.layers))
        extra["chosen_layers"] = chosen
        extra["search"] = "skipped (layers given)"
    else:
        found = search(ctx, cfg, darts=darts)
        num_layers = found["num_layers"]  # K is a quarter of the backbone's layers, whatever the candidates
        k = cfg.top_k if cfg.top_k is not None else default_top_k(num_layers)
        chosen = select_layers(found["alpha"], found["layers"], select=cfg.select, k=k, threshold=cfg.threshold)
        ctx.log(f"[spt] α = {found['alpha']} -> layers {chosen}")
        extra.update(
            candidate_layers=found["layers"],
            alpha=found["alpha"],
            chosen_layers=chosen,
            top_k=k if cfg.select == "topk" else None,
            alpha_trajectory=found["trajectory"],
            gate_diagnostics=found["diagnostics"],
            search_wall_s=found["cost"]["wall_s"],
            search_samples_seen=found["cost"]["samples_seen"],
            search_steps=found["cost"]["steps"],
        )
        stages["search"] = found["cost"]
    model, result, cost = retrain(ctx, cfg, chosen)
    extra["retrain_wall_s"] = cost["wall_s"]
    stages["retrain"] = cost
    # the config that rebuilds the final model: hard prompts at the chosen layers
    return FitResult(model=model, result=result, extra=extra, stages=stages,
                     final_config={**config_dict(cfg), "layers": list(chosen)})


def fit_spt(ctx: FitContext) -> FitResult:
    """search (joint) -> select -> re-train."""
    return _fit(ctx, darts=False)


def fit_spt_darts(ctx: FitContext) -> FitResult:
    """search (DARTS alternation on D1/D2) -> select -> re-train."""
    return _fit(ctx, darts=True)


register_method(
    "spt", SptConfig, apply_spt,
    "Selective Prompt Tuning: gated prompt generators at every layer learned jointly, top-K layers re-trained",
    fit=fit_spt, default_lr=DEFAULT_LR,
)
register_method(
    "spt_darts", SptDartsConfig, apply_spt,
    "SPT-DARTS: gates learned on a held-out part of train (bi-level, DARTS-style), top-K layers re-trained",
    fit=fit_spt_darts, default_lr=DEFAULT_LR,
)
register_method(
    "lpt", LptConfig, apply_lpt,
    "Late Prompt Tuning: one instance-aware prompt generator at one layer (default the middle)",
    default_lr=DEFAULT_LR,
)
