"""Plots from result records (matplotlib, Agg backend: files only, no display).

`plot_gates`: SPT's learned gate values α per layer as a heatmap, one row per run (task / method / seed), with the
chosen layers outlined. Reads only the records' `extra` (`alpha`, `candidate_layers`, `chosen_layers`).
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


def plot_gates(records: Iterable[dict], out_png: str | Path, *, title: str | None = None) -> Path:
    """Heatmap of α (rows: runs, sorted by task, method, seed; columns: layers) written to `out_png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in records if (r.get("extra") or {}).get("alpha")]
    if not rows:
        raise SptbenchError("no records with learned gates (extra.alpha: spt / spt_darts runs) to plot")
    rows.sort(key=_row_key)
    num_layers = 1 + max(
        max(r["extra"].get("candidate_layers") or range(len(r["extra"]["alpha"]))) for r in rows
    )
    grid = np.full((len(rows), num_layers), np.nan)
    for i, r in enumerate(rows):
        layers = r["extra"].get("candidate_layers") or list(range(len(r["extra"]["alpha"])))
        for layer, a in zip(layers, r["extra"]["alpha"], strict=True):
            grid[i, layer] = float(a)

    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * num_layers + 2.5, 0.9 + 0.4 * len(rows)))
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for i, r in enumerate(rows):
        for layer in range(num_layers):
            if not np.isnan(grid[i, layer]):
                ax.text(layer, i, f"{grid[i, layer]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if grid[i, layer] < 0.6 else "black")
        for layer in r["extra"].get("chosen_layers") or []:
            ax.add_patch(plt.Rectangle((layer - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_xticks(range(num_layers))
    ax.set_xlabel("layer (0 = input)")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([_row_label(r) for r in rows], fontsize=8)
    ax.set_title(title or "SPT gates α per layer (red: chosen layers)")
    fig.colorbar(image, ax=ax, label="α")
    fig.tight_layout()
    out = Path(out_png)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
