"""What a layer search learned, in numbers: the gates' separation and spread, their gradients' signal-to-noise; and
the result every search (gates or single path) returns."""

from __future__ import annotations

import time
from collections.abc import Sequence


def gate_diagnostics(alpha: Sequence[float], grads: Sequence, k: int) -> dict:
    """How much the search learned: per gate, the mean and SD of its gradient over the search steps and their
    ratio (signal-to-noise: a gradient whose sign flips batch to batch has |mean| << SD); the separation (the K-th
    largest α minus the (K+1)-th: how decided the top-K choice is) and the spread (largest minus smallest α)."""
    import torch

    ranked = sorted(alpha, reverse=True)
    out = {
        "separation": round(ranked[k - 1] - ranked[k], 6) if k < len(ranked) else None,
        "spread": round(ranked[0] - ranked[-1], 6),
    }
    if grads:
        g = torch.stack(list(grads))
        mean, sd = g.mean(0), g.std(0) if len(grads) > 1 else torch.zeros(g.shape[1])
        out["grad_mean"] = [float(f"{x:.4g}") for x in mean.tolist()]
        out["grad_std"] = [float(f"{x:.4g}") for x in sd.tolist()]
        out["grad_snr"] = [round(abs(m) / s, 4) if s > 0 else None for m, s in zip(mean.tolist(), sd.tolist(),
                                                                                   strict=True)]
        out["steps"] = len(grads)
    return out


def search_result(model, inj, alpha: list[float], trajectory: list[dict], grads: Sequence, k: int, result,
                  samples_seen: int, t_start: float, split: tuple[int, int] | None) -> dict:
    """What a search returns to `_fit`: α per candidate layer, its trajectory, the diagnostics and the stage's cost
    (`split`: the D1 and D2 sizes of a DARTS-style search, else None)."""
    return {
        "num_layers": len(model.layers),
        "layers": list(inj.prompt_layers),
        "alpha": alpha,
        "trajectory": trajectory,
        "diagnostics": gate_diagnostics(alpha, grads, k),
        "cost": {
            "wall_s": round(time.perf_counter() - t_start, 3),
            "train_s": round(result.train_time_s, 3),
            "eval_s": round(result.eval_time_s, 3),
            "steps": result.steps_run,
            "samples_seen": samples_seen,
            "d1_size": split[0] if split else None,
            "d2_size": split[1] if split else None,
        },
    }
