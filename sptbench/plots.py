"""Plots from result records (matplotlib, Agg backend: files only, no display).

`plot_gates`: SPT's learned gate values α per layer as a heatmap, one row per run (task / method / seed) or per task and
method (α averaged over seeds, each cell saying in how many seeds the layer was chosen), with the chosen layers
outlined. Reads only the records' `extra` (`alpha`, `candidate_layers`, `chosen_layers`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sptbench.errors import SptbenchError


def _row_label(record: dict) -> str:
    method = (record.get("method") or {}).get("name")
    task = (record.get("task") or {}).get("name")
    seed = (record.get("protocol") or {}).get("seed")
    parts = [str(p) for p in (task, method) if p]
    if seed is not None:
        parts.append(f"seed {seed}")
    return " · ".join(parts) or str(record.get("run_id", "run"))


def _row_key(record: dict) -> tuple:
    return (
        str((record.get("task") or {}).get("name", "")),
        str((record.get("method") or {}).get("name", "")),
        (record.get("protocol") or {}).get("seed") or 0,
    )


def gate_grid(
    records: Iterable[dict], by: str = "run"
) -> tuple[list[str], list[list[float]], list[list[int]], list[int]]:
    """Rows of α per layer (NaN where a layer was no candidate), how often each layer was chosen, and runs per row.

    by="run": one row per record. by="task": one row per task and method, α averaged over its runs (seeds)."""
    import math

    if by not in ("run", "task"):
        raise SptbenchError(f"unknown grouping '{by}'. Choices: run, task")
    rows = sorted((r for r in records if (r.get("extra") or {}).get("alpha")), key=_row_key)
    if not rows:
        raise SptbenchError("no records with learned gates (extra.alpha: spt / spt_darts runs) to plot")
    num_layers = 1 + max(max(r["extra"].get("candidate_layers") or range(len(r["extra"]["alpha"]))) for r in rows)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(_row_key(r) if by == "run" else _row_key(r)[:2], []).append(r)
    labels, alphas, chosen, counts = [], [], [], []
    for runs in groups.values():
        sums, seen, picks = [0.0] * num_layers, [0] * num_layers, [0] * num_layers
        for r in runs:
            layers = r["extra"].get("candidate_layers") or list(range(len(r["extra"]["alpha"])))
            for layer, a in zip(layers, r["extra"]["alpha"], strict=True):
                sums[layer] += float(a)
                seen[layer] += 1
            for layer in r["extra"].get("chosen_layers") or []:
                picks[layer] += 1
        label = _row_label(runs[0])
        labels.append(label if by == "run" else f"{label.split(' · seed')[0]} (n={len(runs)})")
        alphas.append([sums[i] / seen[i] if seen[i] else math.nan for i in range(num_layers)])
        chosen.append(picks)
        counts.append(len(runs))
    return labels, alphas, chosen, counts


def plot_gates(records: Iterable[dict], out_png: str | Path, *, by: str = "run", title: str | None = None) -> Path:
    """Heatmap of α (rows: runs, or task and method with `by="task"`; columns: layers) written to `out_png`.
    Outlined: layers chosen in at least half of a row's runs; with `by="task"` each cell also says k/n chosen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.backend_bases import FigureCanvasBase

    out = Path(out_png)
    formats = FigureCanvasBase.get_supported_filetypes()
    if out.suffix.lower().lstrip(".") not in formats:
        choices = ", ".join(sorted(formats))
        raise SptbenchError(f"{out}: unknown image format '{out.suffix}'; use a suffix from: {choices}")
    labels, alphas, chosen, counts = gate_grid(records, by)
    grid = np.array(alphas, dtype=float)
    num_layers = grid.shape[1]
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * num_layers + 2.5, 0.9 + 0.4 * len(labels)))
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(len(labels)):
        for layer in range(num_layers):
            if not np.isnan(grid[i, layer]):
                text = f"{grid[i, layer]:.2f}" + (f"\n{chosen[i][layer]}/{counts[i]}" if by == "task" else "")
                ax.text(layer, i, text, ha="center", va="center", fontsize=6 if by == "task" else 7,
                        color="white" if grid[i, layer] < 0.6 else "black")
            if chosen[i][layer] and 2 * chosen[i][layer] >= counts[i]:
                ax.add_patch(plt.Rectangle((layer - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_xticks(range(num_layers))
    ax.set_xlabel("layer (0 = input)")
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    default = "SPT gates α per layer (red: chosen layers)" if by == "run" else (
        "SPT gates: mean α over seeds, k/n = chosen in k of n seeds (red: in at least half)")
    ax.set_title(title or default, fontsize=9)
    fig.colorbar(image, ax=ax, label="α")
    fig.tight_layout()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120)
    except OSError as err:
        raise SptbenchError(f"cannot write {out}: {err.strerror or err}") from None
    finally:
        plt.close(fig)
    return out
