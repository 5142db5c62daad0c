"""SPT's search steps: joint (generators and gates on the same batch) and DARTS-style bi-level alternation.

Weights w = the prompt generators and the head; architecture a = the gate logits. A DARTS step (Liu et al. 2019,
Algorithm 1) first moves a on a D2 batch, then w on a D1 batch, each with its own optimiser:

- first order:  a <- a - η_a ∇_a L_D2(w, a)
- second order: a <- a - η_a [∇_a L_D2(w', a) - ξ ∇²_{a,w} L_D1(w, a) ∇_{w'} L_D2(w', a)],  w' = w - ξ ∇_w L_D1(w, a),
  the Hessian-vector product by central differences: (∇_a L_D1(w⁺, a) - ∇_a L_D1(w⁻, a)) / 2ε,
  w^± = w ± ε ∇_{w'} L_D2(w', a), ε = 0.01 / ‖∇_{w'} L_D2(w', a)‖ (the constant DARTS uses).
The virtual step w' is plain SGD with ξ (DARTS uses the weights' momentum SGD). Both finite-difference passes see
the same dropout masks. Gradients are taken with `torch.autograd.grad` for the group that steps only, so a gate step
never touches the generators' state and a generator step never touches the gates'.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from sptbench.training.loop import clip_gradients

LossFn = Callable[[nn.Module, dict], torch.Tensor]


def _batch_size(batch: dict) -> int:
    return int(batch["labels"].shape[0])


def _set_grads(params: Sequence[nn.Parameter], grads: Sequence[torch.Tensor | None]) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = None if g is None else g.detach()


def _apply(params, optimizer, scheduler, max_grad_norm: float | None) -> None:
    clip_gradients(params, max_grad_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def weight_step(model, batch, weights, optimizer, scheduler, max_grad_norm, loss_fn: LossFn) -> float:
    """One optimiser step of the weights (generators, head) on `batch`; the gates and their grads stay as they are."""
    loss = loss_fn(model, batch)
    _set_grads(weights, torch.autograd.grad(loss, weights, allow_unused=True))
    _apply(weights, optimizer, scheduler, max_grad_norm)
    return float(loss.detach())


def _rng_state() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


def unrolled_gate_grads(
    model, train_batch, val_batch, weights, gates, xi: float, loss_fn: LossFn
) -> list[torch.Tensor]:
    """Second-order DARTS gradient of the D2 loss w.r.t. the gates (see the module docstring). Weights are restored."""
    backup = [w.detach().clone() for w in weights]
    g_train = torch.autograd.grad(loss_fn(model, train_batch), weights, allow_unused=True)
    with torch.no_grad():
        for w, g in zip(weights, g_train, strict=True):
            if g is not None:
                w.sub_(xi * g)
    grads = torch.autograd.grad(loss_fn(model, val_batch), [*gates, *weights], allow_unused=True)
    d_gates = [torch.zeros_like(a) if g is None else g for a, g in zip(gates, grads[: len(gates)], strict=True)]
    d_w = grads[len(gates):]
    with torch.no_grad():
        for w, b in zip(weights, backup, strict=True):
            w.copy_(b)
    norm = math.sqrt(sum(float(g.pow(2).sum()) for g in d_w if g is not None))
    if norm == 0.0 or xi == 0.0:
        return d_gates
    eps = 0.01 / norm

    def shifted_gate_grad(scale: float, rng) -> list[torch.Tensor]:
        with torch.no_grad():
            for w, b, g in zip(weights, backup, d_w, strict=True):
                if g is not None:
                    w.copy_(b + scale * g)
        _set_rng_state(rng)
        out = torch.autograd.grad(loss_fn(model, train_batch), gates, allow_unused=True)
        return [torch.zeros_like(a) if g is None else g for a, g in zip(gates, out, strict=True)]

    rng = _rng_state()
    plus = shifted_gate_grad(eps, rng)
    minus = shifted_gate_grad(-eps, rng)
    with torch.no_grad():
        for w, b in zip(weights, backup, strict=True):
            w.copy_(b)
    return [d - xi * (p - m) / (2 * eps) for d, p, m in zip(d_gates, plus, minus, strict=True)]


def gate_step(
    model,
    val_batch,
    gates,
    optimizer,
    scheduler,
    max_grad_norm,
    loss_fn: LossFn,
    *,
    second_order: bool = False,
    train_batch: dict | None = None,
    weights: Sequence[nn.Parameter] = (),
    xi: float = 0.0,
    record: list | None = None,
) -> float:
    """One optimiser step of the gates on a D2 batch; the weights' values, grads and optimiser state stay as is.
    `record`: a list the gates' gradient (before clipping) is appended to (the search's diagnostics)."""
    if second_order:
        if train_batch is None:
            raise ValueError("second-order gate steps need the D1 batch")
        grads = unrolled_gate_grads(model, train_batch, val_batch, list(weights), list(gates), xi, loss_fn)
        loss = float("nan")
    else:
        val_loss = loss_fn(model, val_batch)
        grads = torch.autograd.grad(val_loss, gates, allow_unused=True)
        loss = float(val_loss.detach())
    _record(record, gates, grads)
    _set_grads(gates, grads)
    _apply(gates, optimizer, scheduler, max_grad_norm)
    return loss


def _record(record: list | None, gates: Sequence[nn.Parameter], grads: Sequence[torch.Tensor | None]) -> None:
    """Append the gates' gradient, one flat CPU tensor (a missing gradient as zeros), to `record`."""
    if record is not None:
        record.append(torch.cat([(torch.zeros_like(p) if g is None else g.detach()).flatten().float().cpu()
                                 for p, g in zip(gates, grads, strict=True)]))


class JointStep:
    """SPT: one backward on a training batch, then both optimisers step (gates with their own learning rate)."""

    def __init__(self, weights, gates, opt_w, sched_w, opt_a, sched_a, max_grad_norm, loss_fn: LossFn, after=None):
        self.weights, self.gates = list(weights), list(gates)
        self.opt_w, self.sched_w, self.opt_a, self.sched_a = opt_w, sched_w, opt_a, sched_a
        self.max_grad_norm, self.loss_fn, self.after = max_grad_norm, loss_fn, after
        self.samples_seen = 0
        self.gate_grads: list[torch.Tensor] = []  # per step, before clipping (diagnostics)

    def __call__(self, model, batch, step) -> float:
        loss = self.loss_fn(model, batch)
        params = [*self.weights, *self.gates]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        _record(self.gate_grads, self.gates, grads[len(self.weights):])
        _set_grads(params, grads)
        _apply(self.weights, self.opt_w, self.sched_w, self.max_grad_norm)
        _apply(self.gates, self.opt_a, self.sched_a, self.max_grad_norm)
        self.samples_seen += _batch_size(batch)
        if self.after is not None:
            self.after(step)
        return float(loss.detach())


class DartsStep:
    """SPT-DARTS: a gate step on the next D2 batch, then a weight step on the given D1 batch."""

    def __init__(
        self,
        weights,
        gates,
        opt_w,
        sched_w,
        opt_a,
        sched_a,
        max_grad_norm,
        loss_fn: LossFn,
        d2_batches: Iterator[dict],
        *,
        second_order: bool = False,
        unroll_lr: float | None = None,
        after=None,
    ):
        self.weights, self.gates = list(weights), list(gates)
        self.opt_w, self.sched_w, self.opt_a, self.sched_a = opt_w, sched_w, opt_a, sched_a
        self.max_grad_norm, self.loss_fn, self.d2_batches = max_grad_norm, loss_fn, d2_batches
        self.second_order, self.unroll_lr, self.after = second_order, unroll_lr, after
        self.samples_seen = 0  # D1 + D2 examples that went through a training forward pass
        self.d2_samples_seen = 0
        self.gate_grads: list[torch.Tensor] = []  # per step, before clipping (diagnostics)

    def __call__(self, model, batch, step) -> float:
        val_batch = next(self.d2_batches)
        xi = self.unroll_lr if self.unroll_lr is not None else self.opt_w.param_groups[0]["lr"]
        gate_step(
            model, val_batch, self.gates, self.opt_a, self.sched_a, self.max_grad_norm, self.loss_fn,
            second_order=self.second_order, train_batch=batch, weights=self.weights, xi=xi, record=self.gate_grads,
        )
        loss = weight_step(model, batch, self.weights, self.opt_w, self.sched_w, self.max_grad_norm, self.loss_fn)
        self.samples_seen += _batch_size(batch) + _batch_size(val_batch)
        self.d2_samples_seen += _batch_size(val_batch)
        if self.after is not None:
            self.after(step)
        return loss
