"""An append's cost against the table's size (issue 38 item 5): `append_record` to an empty table and to a ~40 MB
one (about 10,000 records) should cost about the same, since only the table's last record is read. Skipped by
default; run with

    python -m pytest tests/benchmarks/test_bench_append.py -n 0 --benchmark-only -s

and read the printed ratio (the goal: under 2). No timed assertion: a shared machine's load moves these numbers.
"""

from __future__ import annotations

import statistics
import time

import pytest

from sptbench.records.build import new_run_id
from sptbench.records.io import append_record, dump_record
from tests.helpers import make_record

TARGET_BYTES = 40 * 2**20


def _median_append(path, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        rec = make_record(run_id=new_run_id())
        t0 = time.perf_counter()
        append_record(path, rec)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@pytest.mark.parametrize("rounds", [20])
def test_append_cost_does_not_grow_with_the_table(benchmark, tmp_path, rounds):
    big = tmp_path / "big.yaml"
    one = dump_record(make_record(run_id=new_run_id()))
    big.write_text(one * (TARGET_BYTES // len(one)))  # the same record repeated: appends read none of it but the tail
    empty = tmp_path / "empty.yaml"
    result = {}

    def measure() -> None:
        result["empty"] = _median_append(empty, rounds)
        result["big"] = _median_append(big, rounds)

    benchmark.pedantic(measure, rounds=1, iterations=1)
    ratio = result["big"] / result["empty"]
    benchmark.extra_info.update({k: round(v * 1e3, 3) for k, v in result.items()} | {"ratio": round(ratio, 2)})
    print(f"\nappend: {result['empty'] * 1e3:.2f} ms to an empty table, {result['big'] * 1e3:.2f} ms to a "
          f"{big.stat().st_size / 2**20:.0f} MB one (median of {rounds}): ratio {ratio:.2f}")
