"""ETAs for runs that nothing measured on their backbone (sptbench/sweep/eta.py estimates the others from recorded
runs of the same method and backbone): a measured speed elsewhere, scaled.

A run's time is modelled as training + evaluation + a fixed part (loading):

    train = max_steps x batch_size x (seconds per training example)
    eval  = (evaluations x dev examples + test examples, unless deferred) x (seconds per evaluated example)

with each speed taken from the most specific measurement there is and scaled to the run's backbone by its parameter
count (compute per example grows with it; `backbone_parameters` reads it from the config, no weights):

1. Recorded runs of other methods on this very backbone, in the run's setting and mode, on the device the runs will
   use (else the bench's), their training time scaled by the method costs of a bench file (`--eta-from`:
   `ratios.train_vs_floor`, each method's throughput over the frozen-backbone floor).
2. `--eta-from BENCH.yaml` (`sptbench bench` records: the hardware the sweep will run on, told): the run's method's
   training and evaluation speed on the bench's backbone and device (input length: the bench's). On a GPU a step
   below the bench's batch size takes the bench's step time (small steps are launch-bound), not less.
3. Recorded runs of the same method on another backbone (same task and setting where there are any; on the device
   these runs will use where known): their per-example training and evaluation times and fixed part.

Only measurements in the run's mode count (frozen layers, dtype: a frozen-layer cache or bf16 is another speed).
Dev and test sizes come from records of the task in the same setting, else from the task data where the sweep reads
a local mirror; where neither exists the evaluation is left out and the rule says so. Each estimate names its source.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sptbench.core import safe_yaml
from sptbench.core.errors import SptbenchError
from sptbench.records.keys import setting_name

SCALED = "scaled"  # every rule of this module starts with it: format_plan counts them as estimated


@dataclass(frozen=True)
class Speed:
    """Measured seconds per example on one backbone and device."""

    method: str
    backbone: str
    params: int
    device: str | None
    train_s: float  # per training example
    eval_s: float | None  # per evaluated example
    fixed_s: float = 0.0  # per run, outside training and evaluation (loading)
    cost: float | None = None  # the method's throughput over the frozen-backbone floor (bench ratio)
    task: str | None = None
    setting: str | None = None
    mode: tuple[str | None, str | None] = (None, None)  # (frozen_layers, dtype) it ran with
    batch: int | None = None  # a bench's batch size: on a GPU, smaller batches take its step time (launch-bound)


def read_bench(paths: Iterable[str]) -> list[Speed]:
    """The speeds in `sptbench bench` record files (one line for a file that holds none)."""
    out = []
    for path in paths:
        text = safe_yaml.read_text(Path(path), "bench file")
        found = 0
        for _, doc in safe_yaml.iter_documents(text, str(path)):
            try:
                if not isinstance(doc, dict) or "bench_version" not in doc:
                    continue
                got = doc["throughput"]
                out.append(Speed(
                    method=doc["method"]["name"], backbone=doc["backbone"]["id"],
                    params=int(doc["backbone"]["num_parameters"]), device=got.get("device"),
                    train_s=1.0 / float(got["train_samples_per_s"]),
                    eval_s=1.0 / float(got["eval_samples_per_s"]) if got.get("eval_samples_per_s") else None,
                    cost=(doc.get("ratios") or {}).get("train_vs_floor"),
                    mode=(doc.get("frozen_layers", "dropout"), got.get("dtype")),  # older files: the default
                    batch=int(doc["shape"]["batch_size"]),
                ))
                found += 1
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
                raise SptbenchError(f"{path}: not a `sptbench bench` record ({type(e).__name__}: {e})") from None
        if not found:
            raise SptbenchError(f"{path}: no `sptbench bench` records (--eta-from takes the YAML `sptbench bench "
                                "--out` writes)")
    return out


def record_speeds(records: Iterable[dict]) -> list[Speed]:
    """Per-example speeds of ok records that say their backbone's size, budget and times."""
    out = []
    for rec in records:
        time, tr = rec.get("time") or {}, rec.get("training") or {}
        got, proto = rec.get("throughput") or {}, rec.get("protocol") or {}
        try:
            samples = int(tr["max_steps"]) * int(tr["batch_size"])
            wall, train_s, eval_s = float(time["wall_s"]), float(time["train_s"]), float(time["eval_s"])
            params = int(rec["backbone"]["num_parameters"])
        except (KeyError, TypeError, ValueError):
            continue
        if rec.get("status") != "ok" or samples <= 0 or params <= 0:
            continue
        rate = got.get("eval_samples_per_s")
        out.append(Speed(
            method=rec["method"]["name"], backbone=rec["backbone"]["id"], params=params, device=got.get("device"),
            train_s=train_s / samples, eval_s=1.0 / rate if isinstance(rate, int | float) and rate > 0 else None,
            fixed_s=max(0.0, wall - train_s - eval_s), task=rec["task"]["name"],
            setting=setting_name(proto.get("shots"), proto.get("train_size")),
            mode=(tr.get("frozen_layers"), tr.get("dtype")),
        ))
    return out


def eval_sizes(records: Iterable[dict]) -> dict[tuple[str, str], tuple[float, float]]:
    """(task, setting) -> mean (dev, test) examples over the records of it."""
    sizes: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for rec in records:
        proto = rec.get("protocol") or {}
        if isinstance(proto.get("n_dev"), int) and isinstance(proto.get("n_test"), int):
            key = (rec["task"]["name"], setting_name(proto.get("shots"), proto.get("train_size")))
            sizes.setdefault(key, []).append((proto["n_dev"], proto["n_test"]))
    return {k: (statistics.mean(d for d, _ in v), statistics.mean(t for _, t in v)) for k, v in sizes.items()}


@functools.cache
def data_sizes(task: str, data_dir: str, shots: int | None, train_size: int | None, seed: int,
               split_source: str) -> tuple[int, int]:
    """(dev, test) examples of a task's data from a local mirror (loaded once per process; preflight shares it)."""
    return tuple(len(split) for split in _load(task, data_dir, shots, train_size, seed, split_source)[1:])


@functools.cache
def _load(task: str, data_dir: str, shots: int | None, train_size: int | None, seed: int, split_source: str):
    from sptbench.data.tasks import load_task

    data = load_task(task, data_dir=data_dir, shots=shots, seed=seed, split_source=split_source,
                     train_size=train_size)
    return data.train, data.dev, data.test


class Scaler:
    """Estimates for runs without a measurement on their backbone, from bench files and other backbones' records."""

    def __init__(self, records: list[dict], bench: list[Speed] | None = None, device: str | None = None,
                 bench_name: str = "bench"):
        self.bench, self.bench_name, self.device = bench or [], bench_name, device
        self.recorded = record_speeds(records)
        self.sizes = eval_sizes(records)

    def estimate(self, spec) -> tuple[float, str] | None:
        """(seconds, rule) for `spec`, or None where nothing measured can be scaled to its backbone."""
        from sptbench.models.backbones import backbone_parameters

        params = backbone_parameters(spec.model)
        if params is None:
            return None
        steps, batch, evals, mode = spec_budget(spec)
        train_samples = steps * batch
        speed, how = self._other_methods_here(spec, mode)
        if speed is None and self.bench:
            speed, how = self._bench_speed(spec.method, mode)
        if speed is None and train_samples == 0 and self.bench:  # trains nothing: only the evaluation speed counts
            speed, how = self.bench[0], f"{self.bench_name} (its evaluation speed)"
        if speed is None:
            speed, how = self._recorded_speed(spec, mode)
        if speed is None:
            return None
        size = params / speed.params
        if steps and speed.batch and speed.device and not speed.device.startswith("cpu") and batch < speed.batch:
            train_samples = steps * speed.batch  # a GPU step below the bench's batch is launch-bound: its step time
            how += f", batch {batch} at the bench's batch-{speed.batch} step time"
        seconds = (train_samples * speed.train_s + speed.fixed_s) * size
        n = self._eval_examples(spec, evals)
        if n is not None and speed.eval_s is not None:
            seconds += n * speed.eval_s * size
        else:
            how += ", training only (eval size unknown)"
        where = f" on {speed.device}" if speed.device else ""
        return seconds, f"{SCALED} from {how}: {speed.backbone}{where} x{size:.3g} size"

    def _bench_speed(self, method: str, mode: tuple) -> tuple[Speed | None, str]:
        """The bench's speed of `method`, measured in the run's mode (frozen layers, dtype) where the bench has it."""
        mine = [s for s in self.bench if s.method == method]
        same = [s for s in mine if s.mode == mode]
        if not mine:
            return None, ""
        return (same or mine)[0], self.bench_name + ("" if same else f" ({'/'.join(map(str, mine[0].mode))})")

    def _cost_ratio(self, method: str, other: str) -> float | None:
        """How much longer a training example of `method` takes than one of `other`, from the bench ratios (each
        method's throughput over the frozen-backbone floor); None without both."""
        costs = {s.method: s.cost for s in self.bench if s.cost}
        return costs[other] / costs[method] if method in costs and other in costs else None

    def _other_methods_here(self, spec, mode: tuple) -> tuple[Speed | None, str]:
        """Recorded runs of other methods on this very backbone, in this mode and setting, on the device these runs
        will use (else the bench's), their training time scaled by the bench's method costs."""
        setting = setting_name(spec.shots, spec.train_size)
        devices = {self.device} if self.device else {s.device for s in self.bench}
        mine = [s for s in self.recorded if s.backbone == spec.model and s.mode == mode and s.setting == setting
                and s.device in devices and s.method != spec.method and self._cost_ratio(spec.method, s.method)]
        mine.sort(key=lambda s: s.task != spec.task)
        if not mine:
            return None, ""
        return self._mean(mine, spec.method), (
            f"recorded {mine[0].method} x{self._cost_ratio(spec.method, mine[0].method):.3g} method cost "
            f"({self.bench_name})")

    def _recorded_speed(self, spec, mode: tuple) -> tuple[Speed | None, str]:
        """Recorded runs of the run's method on other backbones in its mode (frozen layers, dtype): same task and
        setting, else setting, else any; on the device these runs will use where there are some."""
        setting = setting_name(spec.shots, spec.train_size)
        same = [s for s in self.recorded if s.method == spec.method and s.backbone != spec.model and s.mode == mode]
        for level, label in (([s for s in same if (s.task, s.setting) == (spec.task, setting)], "task/setting"),
                             ([s for s in same if s.setting == setting], "setting"), (same, "method")):
            here = [s for s in level if s.device == self.device] or level
            if here:
                return self._mean(here, spec.method), f"recorded {spec.method} runs ({label})"
        return None, ""

    def _mean(self, speeds: list[Speed], method: str) -> Speed:
        """The mean speed of the runs like the first (same method, backbone, device and task), its training time
        scaled to `method` by the bench's method costs where it is another method's."""
        first = speeds[0]
        pick = [s for s in speeds if (s.method, s.backbone, s.device, s.task) == (first.method, first.backbone,
                                                                                  first.device, first.task)]
        ratio = 1.0 if first.method == method else self._cost_ratio(method, first.method)
        return Speed(
            method=method, backbone=first.backbone, params=first.params, device=first.device,
            train_s=statistics.mean(s.train_s for s in pick) * ratio,
            eval_s=statistics.mean(e) if (e := [s.eval_s for s in pick if s.eval_s]) else None,
            fixed_s=statistics.mean(s.fixed_s for s in pick),
        )

    def _eval_examples(self, spec, evals: int) -> float | None:
        setting = setting_name(spec.shots, spec.train_size)
        sizes = self.sizes.get((spec.task, setting))
        if sizes is None and spec.data_dir:
            try:
                sizes = data_sizes(spec.task, spec.data_dir, spec.shots, spec.train_size, spec.seed, spec.split_source)
            except SptbenchError:
                sizes = None  # preflight reports it
        if sizes is None:
            return None
        dev, test = sizes
        return evals * dev + (0 if getattr(spec, "defer_test", False) else test)


def spec_budget(spec) -> tuple[int, int, int, tuple[str, str]]:
    """A planned run's steps, batch size, dev evaluations (every `eval_every` steps and at the end) and mode (frozen
    layers, dtype)."""
    from sptbench.methods.registry import get_method
    from sptbench.run.runner import train_config

    method = get_method(spec.method)
    tcfg = train_config(spec, method)
    mode = (tcfg.frozen_layers, spec.dtype)
    if method.trains == "nothing" and spec.head == "prompt":  # zero_shot: one dev evaluation, no training
        return 0, tcfg.batch_size, 1, mode
    return tcfg.max_steps, tcfg.batch_size, math.ceil(tcfg.max_steps / tcfg.eval_every), mode


def bench_label(paths: list[str]) -> str:
    return "bench " + ", ".join(Path(p).name for p in paths)
