"""SPT's single-path search (`search: single_path`): one-shot layer search by sampling, scored alone on dev.

Each step draws one candidate layer (seeded) and trains the prompt generator of that layer, with the shared head, on
the batch: exactly LPT at that layer for that step (no prompt positions below it). After the budget every layer's
prompt is evaluated alone on dev and α_l is its mean probability of the gold label there (ties of the top-K: the lower
layer, as for the gates). This is single-path one-shot search (Guo et al. 2020, "Single Path One-Shot Neural
Architecture Search with Uniform Sampling") applied to SPT's layer choice: the layer is chosen on held-out data, as
LPT's layer is when chosen on dev, at one search's cost instead of one run per layer. `spt_darts` with this search
trains on D1 and scores on D2 (its held-out half of train) instead of dev.
"""

from __future__ import annotations

import random

import torch

from sptbench.methods.spt.diagnostics import search_result
from sptbench.training.loop import clip_gradients, evaluate, loss_on, optimizer_for


class SinglePathStep:
    """One optimiser step of the sampled layer's generator and the head (the other generators get no gradient)."""

    def __init__(self, inj, weights, tcfg, seed: int, after=None):
        self.inj, self.weights, self.tcfg, self.after = inj, list(weights), tcfg, after
        self.optimizer, self.scheduler = optimizer_for(self.weights, tcfg)
        self.rng = random.Random(seed)
        self.samples_seen = 0
        self.gate_grads: list[torch.Tensor] = []  # no gates to learn: the diagnostics have no gradients

    def __call__(self, model, batch, step) -> torch.Tensor:
        self.inj.active = self.rng.choice(self.inj.prompt_layers)
        loss = loss_on(model, batch)
        loss.backward()
        clip_gradients(self.weights, self.tcfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.samples_seen += int(batch["labels"].shape[0])
        if self.after is not None:
            self.after(step)
        return loss.detach()


def single_path_search(ctx, tcfg, model, inj, t_start: float, *, k: int, rows: tuple[list, list],
                       darts: bool) -> dict:
    """Train by sampled single layers on `rows[0]`, then score every layer alone on the held-out `rows[1]`; returns
    what `search` does (`k`: the layers to be chosen, for the diagnostics)."""
    import dataclasses

    train_rows, held_rows = rows
    weights = [p for p in model.parameters() if p.requires_grad and p is not inj.gate_logits]
    step_fn = SinglePathStep(inj, weights, tcfg, seed=tcfg.seed)
    one_eval = dataclasses.replace(tcfg, eval_every=tcfg.max_steps)  # one evaluation, at the end: nothing restored
    ctx.log(f"[spt] search (single path{', D2 scores' if darts else ''}): {len(train_rows)} rows, "
            f"{tcfg.max_steps} steps")
    result = ctx.train(model, ctx.encode(train_rows), ctx.encode(ctx.task.dev), one_eval, step_fn=step_fn)
    held = ctx.encode(held_rows)
    pad_id = ctx.tokenizer.pad_token_id or 0
    scores = []
    for layer in inj.prompt_layers:
        inj.active = layer
        scores.append(evaluate(model, held, ctx.task.spec, tcfg.eval_batch_size, pad_id))
    inj.active = None
    alpha = [round(float(s["gold_prob"]), 6) for s in scores]
    trajectory = [{"step": result.steps_run, "alpha": alpha, "dev_score": None,
                   "held_out_score": [round(float(s["score"]), 6) for s in scores]}]
    split = (len(train_rows), len(held_rows)) if darts else None
    return search_result(model, inj, alpha, trajectory, [], k, result, step_fn.samples_seen, t_start, split)
