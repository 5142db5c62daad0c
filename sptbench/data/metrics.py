"""Task metrics (accuracy, binary F1) computed through `evaluate`, offline.

`evaluate.load("accuracy")` fetches the metric script from the hub, so it fails without network. Instead the
metrics are local `evaluate.Metric` subclasses, instantiated directly: same `compute()` API and input checks,
no download (checked with evaluate 0.4.6). `evaluate` imports `datasets` (seconds), so both load on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from sptbench.data.specs import SELECTION_METRICS, TaskSpec

POSITIVE_LABEL = 1  # binary F1 scores label id 1 (duplicate / equivalent), as GLUE does


@cache
def _metric_classes() -> dict[str, type]:
    """Build the `evaluate.Metric` subclasses once, importing evaluate lazily."""
    import datasets
    import evaluate

    features = datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")})

    def info(self: Any) -> Any:
        return evaluate.MetricInfo(
            description=f"sptbench local {self.__class__.__name__}",
            citation="",
            inputs_description="",
            features=features,
        )

    class Accuracy(evaluate.Metric):
        """Share of predictions equal to the reference."""

        _info = info

        def _compute(self, predictions: Sequence[int], references: Sequence[int]) -> dict[str, float]:
            correct = sum(int(p == r) for p, r in zip(predictions, references, strict=True))
            return {"accuracy": correct / len(references)}

    class BinaryF1(evaluate.Metric):
        """F1 of the positive class; 0.0 when it has no true positives (scikit-learn's zero_division=0)."""

        _info = info

        def _compute(self, predictions: Sequence[int], references: Sequence[int]) -> dict[str, float]:
            pairs = list(zip(predictions, references, strict=True))
            tp = sum(p == POSITIVE_LABEL and r == POSITIVE_LABEL for p, r in pairs)
            fp = sum(p == POSITIVE_LABEL and r != POSITIVE_LABEL for p, r in pairs)
            fn = sum(p != POSITIVE_LABEL and r == POSITIVE_LABEL for p, r in pairs)
            return {"f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0}

    return {"accuracy": Accuracy, "f1": BinaryF1}


def warm_up() -> None:
    """Import evaluate (and datasets) and build the metric classes now. Runs call this before their clock starts, so
    that the one-time import (seconds on a small machine) lands in no record's `eval_s` or `wall_s`."""
    _metric_classes()


def compute_metrics(spec: TaskSpec, predictions: Sequence[int], references: Sequence[int]) -> dict[str, float]:
    """The spec's metrics on label ids, plus "score": the selection metric's value (fractions in [0, 1])."""
    predictions = [int(p) for p in predictions]
    references = [int(r) for r in references]
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        raise ValueError("no predictions to score")
    classes = _metric_classes()
    results: dict[str, float] = {}
    for name in spec.metrics:
        metric = classes[name](keep_in_memory=True)
        results[name] = float(metric.compute(predictions=predictions, references=references)[name])
    results["score"] = selection_score(spec, results)
    return results


def selection_score(spec: TaskSpec, metrics: dict) -> float:
    """The number dev selection maximises: the selection metric, or the mean of its parts (acc_f1)."""
    parts = SELECTION_METRICS[spec.selection_metric]
    missing = [p for p in parts if p not in metrics]
    if missing:
        raise KeyError(f"selection metric '{spec.selection_metric}' needs {missing}; got {sorted(metrics)}")
    return sum(float(metrics[p]) for p in parts) / len(parts)
