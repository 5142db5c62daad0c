"""Tests for sptbench/data/metrics.py: local evaluate metrics agree with scikit-learn and never need the hub."""

from __future__ import annotations

import random

import evaluate
import pytest
from sklearn.metrics import accuracy_score, f1_score

from sptbench.data import metrics, specs


def random_labels(n: int, num_labels: int, rng: random.Random) -> list[int]:
    return [rng.randrange(num_labels) for _ in range(n)]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", ["mrpc", "qqp", "rte", "trec", "mnli"])
def test_metrics_equal_scikit_learn_on_random_predictions(name: str, seed: int) -> None:
    spec = specs.load_spec(name)
    rng = random.Random(seed)  # several seeded draws: agreement must not depend on one lucky draw
    for n in (1, 7, 500):
        preds = random_labels(n, spec.num_labels, rng)
        refs = random_labels(n, spec.num_labels, rng)
        result = metrics.compute_metrics(spec, preds, refs)
        assert set(result) == {*spec.metrics, "score"}
        assert result["accuracy"] == pytest.approx(accuracy_score(refs, preds))
        if "f1" in spec.metrics:
            expected_f1 = f1_score(refs, preds, pos_label=1, average="binary", zero_division=0)
            assert result["f1"] == pytest.approx(expected_f1)
            assert result["score"] == pytest.approx((result["accuracy"] + expected_f1) / 2)
        else:
            assert result["score"] == result["accuracy"]


def test_f1_scores_label_one_not_label_zero() -> None:
    spec = specs.load_spec("mrpc")
    result = metrics.compute_metrics(spec, [1, 1, 0, 0], [1, 0, 0, 0])
    assert result == {"accuracy": 0.75, "f1": pytest.approx(2 / 3), "score": pytest.approx((0.75 + 2 / 3) / 2)}
    assert metrics.compute_metrics(spec, [0, 0], [0, 0])["f1"] == 0.0  # no positives anywhere: sklearn's 0.0


def test_metrics_are_local_evaluate_metrics_and_never_load_from_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_hub(*args, **kwargs):
        raise AssertionError("evaluate.load would need the hub")

    monkeypatch.setattr(evaluate, "load", no_hub)
    classes = metrics._metric_classes()
    assert all(issubclass(cls, evaluate.Metric) for cls in classes.values())
    assert metrics.compute_metrics(specs.load_spec("qqp"), [1, 0, 1], [1, 0, 0])["accuracy"] == pytest.approx(2 / 3)


def test_selection_score() -> None:
    assert metrics.selection_score(specs.load_spec("qqp"), {"accuracy": 0.8, "f1": 0.6}) == pytest.approx(0.7)
    assert metrics.selection_score(specs.load_spec("sst2"), {"accuracy": 0.9}) == 0.9
    with pytest.raises(KeyError, match="needs \\['f1'\\]"):
        metrics.selection_score(specs.load_spec("mrpc"), {"accuracy": 0.9})


def test_bad_inputs_are_rejected() -> None:
    spec = specs.load_spec("rte")
    with pytest.raises(ValueError, match="2 predictions for 3 references"):
        metrics.compute_metrics(spec, [0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="no predictions"):
        metrics.compute_metrics(spec, [], [])
