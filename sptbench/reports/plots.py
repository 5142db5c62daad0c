"""Plots from result records (matplotlib, Agg backend: files only, no display).

`plot_gates`: SPT's learned gate values α per layer as a heatmap, one row per run (task / method / seed) or per task and
method (α averaged over seeds, each cell saying in how many seeds the layer was chosen), with the chosen layers
outlined. Reads only the records' `extra` (`alpha`, `candidate_layers`, `chosen_layers`).
`plot_layers`: LPT's test score against its prompt layer over a layer grid, SPT's chosen layers marked (analysis).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sptbench.core.errors import SptbenchError


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


def _searches(records: Iterable[dict]) -> list[dict]:
    """The ok runs with learned gates (`extra.alpha`), each once: the tested record of the test-once protocol
    repeats its untested one (same key) and a rerun replaces the run (tables' keep-the-latest)."""
    from sptbench.records.keys import latest_per_key

    rows = latest_per_key([r for r in records if r.get("status") == "ok" and (r.get("extra") or {}).get("alpha")])[0]
    for r in rows:
        if (problem := _gate_problem(r["extra"])) is not None:
            raise SptbenchError(f"run {r.get('run_id')}: {problem}")
    return rows


def _gate_problem(extra: dict) -> str | None:
    """What is wrong with a record's gate fields (`extra` is free-form in the schema), or None."""
    def layers(value) -> bool:
        return isinstance(value, list) and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1000
                                               for x in value)

    alpha = extra["alpha"]
    if not isinstance(alpha, list) or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in alpha):
        return f"extra.alpha must be a list of numbers, got {alpha!r:.60}"
    for key in ("candidate_layers", "chosen_layers"):
        if extra.get(key) is not None and not layers(extra[key]):
            return f"extra.{key} must be a list of layer indices, got {extra[key]!r:.60}"
    if extra.get("candidate_layers") is not None and len(extra["candidate_layers"]) != len(alpha):
        return "extra.alpha and extra.candidate_layers differ in length"
    candidates = extra.get("candidate_layers") or list(range(len(alpha)))
    stray = [x for x in extra.get("chosen_layers") or [] if x not in candidates]
    if stray:
        return f"extra.chosen_layers has layer {stray[0]}, which is not a candidate layer {candidates!r:.60}"
    return None


def gate_grid(
    records: Iterable[dict], by: str = "run"
) -> tuple[list[str], list[list[float]], list[list[int]], list[int]]:
    """Rows of α per layer (NaN where a layer was no candidate), how often each layer was chosen, and runs per row.

    by="run": one row per record. by="task": one row per task and method, α averaged over its runs (seeds)."""
    import math

    if by not in ("run", "task"):
        raise SptbenchError(f"unknown grouping '{by}'. Choices: run, task")
    rows = sorted(_searches(records), key=_row_key)
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

    out = _image_path(out_png)
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
    _save(fig, out, dpi=120)
    return out


def plot_gate_trajectories(records: Iterable[dict], out_png: str | Path, *, max_panels: int = 30) -> Path:
    """α per layer against the search step (`extra.alpha_trajectory`), one panel per run (sorted as `plot_gates`),
    the chosen layers drawn solid and the others dashed: whether the gates move, and when they stop."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = _image_path(out_png)
    runs = [r for r in _searches(records) if len((r.get("extra") or {}).get("alpha_trajectory") or []) > 1]
    if not runs:
        raise SptbenchError("no records with an α trajectory of at least two points (spt / spt_darts searches)")
    runs = sorted(runs, key=_row_key)[:max_panels]
    cols = min(3, len(runs))
    rows = -(-len(runs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.6 * rows), squeeze=False, sharey=True)
    for ax, rec in zip(axes.flat, runs, strict=False):
        extra = rec["extra"]
        steps = [point["step"] for point in extra["alpha_trajectory"]]
        colors = plt.cm.tab20 if len(extra["candidate_layers"]) > 10 else plt.cm.tab10  # one colour per layer
        for i, layer in enumerate(extra["candidate_layers"]):
            values = [point["alpha"][i] for point in extra["alpha_trajectory"]]
            chosen = layer in extra.get("chosen_layers", [])
            ax.plot(steps, values, "-" if chosen else "--", linewidth=2 if chosen else 1, label=f"layer {layer}",
                    color=colors(i % colors.N))
        ax.set_title(_row_label(rec), fontsize=8)
        ax.set_xlabel("search step", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(runs):]:
        ax.axis("off")
    axes[0][0].set_ylabel("α")
    axes[0][0].legend(fontsize=6, ncol=2)
    fig.suptitle("SPT gate trajectories (solid: chosen layers)", fontsize=10)
    fig.tight_layout()
    _save(fig, out, dpi=110)
    return out


def _image_path(out_png: str | Path) -> Path:
    """`out_png` as a Path, checked before any plotting: its suffix must name an image format matplotlib writes."""
    from matplotlib.backend_bases import FigureCanvasBase

    out = Path(out_png)
    formats = FigureCanvasBase.get_supported_filetypes()
    if out.suffix.lower().lstrip(".") not in formats:
        choices = ", ".join(sorted(formats))
        raise SptbenchError(f"{out}: unknown image format '{out.suffix}'; use a suffix from: {choices}")
    return out


def _save(fig, out: Path, dpi: int) -> None:
    """Render the figure in memory, then replace `out` atomically (a write-protected file is refused, as for
    tables); the figure is closed either way."""
    import io

    import matplotlib.pyplot as plt

    from sptbench.records.io import write_bytes_atomic

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, dpi=dpi, format=out.suffix.lower().lstrip("."))
    finally:
        plt.close(fig)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SptbenchError(f"cannot create the folder of {out}: {err.strerror or err}") from None
    write_bytes_atomic(out, buffer.getvalue())


def layer_curves(records: Iterable[dict], method: str = "lpt") -> dict[str, dict[int, list[float]]]:
    """task -> prompt layer -> test scores (%) of the tested `method` runs with that layer (one per split: the latest
    tested record of each configuration; untested grid points of the test-once protocol are left out). The records
    must be of one backbone, setting and head (refused otherwise: their seeds would overwrite each other)."""
    from sptbench.records.keys import latest_per_key, regime_of
    from sptbench.reports.tables import cell_metric

    tested = [rec for rec in records if rec.get("status") == "ok" and rec["method"]["name"] == method
              and (rec.get("selection") or {}).get("tested") is not False]
    regimes = sorted({(r["backbone"]["id"], *regime_of(r)) for r in tested})
    if len(regimes) > 1:  # one curve per (task, layer): several regimes would overwrite each other's seeds
        raise SptbenchError(f"{method}'s layer grid spans {len(regimes)} backbone/setting/head combinations ("
                            + ", ".join(" ".join(r) for r in regimes) + "): give one table (e.g. .../16shot.yaml)")
    curves: dict[str, dict[int, dict[tuple, float]]] = {}
    for rec in latest_per_key(tested)[0]:
        layer, score = (rec["method"]["config"] or {}).get("layer"), cell_metric(rec)
        if isinstance(layer, int) and score is not None:  # one score per split and layer: the dev-selected lr
            by_split = curves.setdefault(rec["task"]["name"], {}).setdefault(layer, {})
            by_split[rec["protocol"]["seed"], rec["protocol"]["split_source"]] = 100 * score
    return {t: {layer: list(s.values()) for layer, s in sorted(c.items())} for t, c in sorted(curves.items())}


def chosen_layer_counts(records: Iterable[dict]) -> dict[str, dict[str, dict[int, int]]]:
    """task -> method (spt, spt_darts) -> layer -> in how many runs the search chose it. Each run counts once: the
    tested record of the test-once protocol repeats its untested one (same key), and a rerun replaces the run."""
    out: dict[str, dict[str, dict[int, int]]] = {}
    for rec in _searches(records):
        if not rec["extra"].get("chosen_layers"):
            continue
        counts = out.setdefault(rec["task"]["name"], {}).setdefault(rec["method"]["name"], {})
        for layer in rec["extra"]["chosen_layers"]:
            counts[layer] = counts.get(layer, 0) + 1
    return out


def plot_layers(records: Iterable[dict], out_png: str | Path) -> Path:
    """One panel per task: LPT's test score against its prompt layer (mean ± std over seeds, each layer's learning
    rate chosen on dev), with the layers SPT / SPT-DARTS chose marked (how many runs chose each). Analysis only: a
    layer picked by looking at this plot is picked on test."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out = _image_path(out_png)
    records = list(records)
    curves, chosen = layer_curves(records), chosen_layer_counts(records)
    if not curves:
        raise SptbenchError("no tested lpt records with an explicit `layer` (a layer grid) in the given paths")
    fig, axes = plt.subplots(1, len(curves), figsize=(3.2 * len(curves), 3.0), squeeze=False)
    for ax, (task, by_layer) in zip(axes[0], curves.items(), strict=True):
        layers = list(by_layer)
        means = [float(np.mean(v)) for v in by_layer.values()]
        stds = [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in by_layer.values()]
        ax.errorbar(layers, means, yerr=stds, marker="o", capsize=3, label="lpt at layer (mean ± std)")
        bottom = min(m - s for m, s in zip(means, stds, strict=True))
        for offset, (method, marker) in enumerate((("spt", "v"), ("spt_darts", "^"))):
            for layer, n in sorted(chosen.get(task, {}).get(method, {}).items()):
                y = bottom - 1.0 - 1.2 * offset
                ax.scatter([layer], [y], marker=marker, color=f"C{1 + offset}", s=30 + 20 * n,
                           label=f"{method} chose (size: runs)" if layer == min(chosen[task][method]) else None)
                ax.annotate(str(n), (layer, y), textcoords="offset points", xytext=(6, -3), fontsize=7)
        ax.set_title(task)
        ax.set_xlabel("prompt layer (0 = input)")
        ax.set_xticks(layers)
    axes[0][0].set_ylabel("test score (%)")
    legend: dict[str, object] = {}  # every panel's entries once (a panel may lack SPT's markers)
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    # below the panels: inside one, it covered that panel's markers
    fig.legend(list(legend.values()), list(legend), fontsize=7, loc="lower center", ncol=len(legend), frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    _save(fig, out, dpi=130)
    return out
