"""Helpers of scripts/gpu_check.sh: the synthetic tasks its runs train on, and the checks it makes of their records.

    python scripts/gpu_check_helpers.py tasks DIR                 # write the check's tasks (with their data) in DIR
    python scripts/gpu_check_helpers.py resume WHOLE RESUMED TOL  # the resumed record equals the uninterrupted one
    python scripts/gpu_check_helpers.py oom RESULTS               # the record says its step was retried smaller
    python scripts/gpu_check_helpers.py finite RESULTS            # every record ran ok with a finite training loss
    python scripts/gpu_check_helpers.py merged RESULTS N          # N records in the tables, no run file left

Each check prints one line starting `ok:` and exits 0, or prints one line naming what is wrong and exits 1.
RESULTS is a results folder (`--results-dir`); its records are read from `RESULTS/v1/**/*.yaml`.
"""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

# Words of the in-process BPE tokenizer's corpus (sptbench/models/bpe.py), so that every backbone's tokenizer
# splits the synthetic texts into ordinary tokens.
POSITIVE = "great charming thoughtful warmth loved best fine good".split()
NEGATIVE = "terrible predictable rushed drags little dark long short".split()
FILLER = ("the film is a and its second half the story was but audiences music colours final scene "
          "quiet drama about family that learns to live with told humour the acting plot made sense").split()

# The prompt head reads SST-2's template and label words (single tokens for every backbone's tokenizer).
SPEC = """\
name: {name}
version: 1
text_columns: [sentence]
labels: [negative, positive]
metrics: [accuracy]
selection_metric: accuracy
max_length: {max_length}
data: {name}-data
mirror: {{train: train.jsonl, test: test.jsonl, note: "scripts/gpu_check.sh: synthetic sentences"}}
prompt:
  template: "<s1> It was <mask> ."
  label_words: [terrible, great]
"""


def _sentence(rng: random.Random, label: int, words: int) -> str:
    cue = POSITIVE if label else NEGATIVE
    text = [rng.choice(cue) if rng.random() < 0.2 else rng.choice(FILLER) for _ in range(words)]
    return " ".join(text) + " ."


def _write_task(root: Path, name: str, max_length: int, words: int, train: int, test: int) -> None:
    rng = random.Random(13)
    data = root / f"{name}-data"
    data.mkdir(parents=True, exist_ok=True)
    for file, n in (("train.jsonl", train), ("test.jsonl", test)):
        rows = [{"sentence": _sentence(rng, i % 2, words), "label": ["negative", "positive"][i % 2]} for i in range(n)]
        (data / file).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / f"{name}.yaml").write_text(SPEC.format(name=name, max_length=max_length))


def tasks(folder: str) -> None:
    """`gpucheck`: short sentences (16 per class for 16-shot runs, 64 test); `gpucheck_long`: ~600-word texts cut
    at 512 tokens, a pool of 600 (dev 60, so `--train-size` up to 540), 32 test: the out-of-memory part's."""
    root = Path(folder)
    _write_task(root, "gpucheck", 64, 12, 200, 64)
    _write_task(root, "gpucheck_long", 512, 600, 600, 32)
    print(f"ok: tasks gpucheck, gpucheck_long in {root}")


def records(results: str) -> list[dict]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from sptbench.records.io import read_table

    out = []
    for path in sorted(Path(results).glob("v1/**/*.yaml")):
        if path.parent.name != "runs":
            out.extend(read_table(path))
    return out


def _one(results: str) -> dict:
    recs = records(results)
    if len(recs) != 1:
        fail(f"{results}: {len(recs)} records, expected 1")
    if recs[0].get("status") != "ok":
        fail(f"{results}: run {recs[0].get('status')}: {recs[0].get('error')}")
    return recs[0]


def fail(message: str) -> None:
    print(f"FAILED: {message}")
    sys.exit(1)


def _numbers(d, prefix=""):
    """Flatten nested metrics to {path: value}."""
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _numbers(v, f"{prefix}{k}.")
    else:
        yield prefix.rstrip("."), d


def resume(whole_dir: str, resumed_dir: str, tol: str) -> None:
    """The resumed run's record: `outcome.resumed_at` set, metrics and dev history equal to the uninterrupted run's
    (within TOL on a GPU, whose kernels are not all deterministic; TOL 0: bit for bit)."""
    whole, resumed = _one(whole_dir), _one(resumed_dir)
    at = resumed["outcome"].get("resumed_at")
    if not at:
        fail(f"the rerun did not resume from a checkpoint (outcome.resumed_at: {at})")
    if whole["outcome"].get("resumed_at"):
        fail("the uninterrupted run says it resumed")
    limit = float(tol)
    a, b = dict(_numbers(whole["metrics"])), dict(_numbers(resumed["metrics"]))
    if a.keys() != b.keys():
        fail(f"metrics differ in their keys: {sorted(a)} vs {sorted(b)}")
    worst = 0.0
    for key, value in a.items():
        other = b[key]
        if isinstance(value, (int, float)) and isinstance(other, (int, float)):
            worst = max(worst, abs(value - other))
        elif value != other:
            fail(f"metrics.{key}: {value} uninterrupted vs {other} resumed")
    exact = whole["metrics"] == resumed["metrics"] and whole["outcome"]["history"] == resumed["outcome"]["history"]
    if limit == 0 and not exact:
        fail(f"resumed record differs from the uninterrupted one (largest metric difference {worst:g}; "
             f"metrics {whole['metrics']} vs {resumed['metrics']})")
    if worst > limit:
        fail(f"resumed metrics differ by {worst:g} > {limit:g}: {whole['metrics']} vs {resumed['metrics']}")
    test = resumed["metrics"].get("test", {})
    same = "identical record (metrics and dev history)" if exact else f"metrics within {worst:g}"
    print(f"ok: resumed at step {at}, {same}; test {test}")


def oom(results: str) -> None:
    rec = _one(results)
    retries = rec["outcome"].get("oom_retries") or []
    if not retries:
        fail(f"no out-of-memory retry recorded (outcome.oom_retries empty; batch {rec['training']['batch_size']} fit)")
    last = retries[-1]
    print(f"ok: {len(retries)} out-of-memory retr{'y' if len(retries) == 1 else 'ies'}, batch "
          f"{rec['training']['batch_size']} trained as {last['grad_accum']} micro-batches of {last['micro_batch']} "
          f"(from step {last['step']}); steps run {rec['outcome'].get('steps_run')}")


def _losses(rec: dict) -> list:
    return [h.get("train_loss", h.get("loss")) for h in rec["outcome"].get("history") or []]


def finite(results: str) -> None:
    recs = records(results)
    if not recs:
        fail(f"{results}: no records")
    lines = []
    for rec in recs:
        name = f"{rec['method']['name']} {rec['backbone']['id']} {rec['training'].get('dtype')}"
        if rec.get("status") != "ok":
            fail(f"{name}: run {rec.get('status')}: {rec.get('error')}")
        losses = [x for x in _losses(rec) if x is not None]
        dev = rec["metrics"]["dev"].get("loss")
        if not losses or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in [*losses, dev]):
            fail(f"{name}: training loss {losses}, dev loss {dev}: not all finite")
        lines.append(f"{name}: train loss {losses[-1]:.4f}, dev loss {dev:.4f}")
    print("ok: " + "; ".join(lines))


def merged(results: str, expected: str) -> None:
    left = sorted(Path(results).glob("v1/*/runs/*.yaml"))
    if left:
        fail(f"run files not merged: {[str(p) for p in left]}")
    recs = records(results)
    if len(recs) != int(expected):
        fail(f"{len(recs)} records in the tables under {results}, expected {expected}")
    print(f"ok: {len(recs)} records merged into {sorted({str(p) for p in Path(results).glob('v1/**/*.yaml')})}")


if __name__ == "__main__":
    commands = {"tasks": tasks, "resume": resume, "oom": oom, "finite": finite, "merged": merged}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])
