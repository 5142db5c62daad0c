"""Long runs (training/resume.py, training/loop.py, training/monitor.py): a run killed after step k and rerun resumes
from its checkpoint and gives the uninterrupted run's record bit for bit; gradient accumulation, gradient
checkpointing and fp16 loss scaling; an out-of-memory step retried in smaller micro-batches; progress lines."""

from __future__ import annotations

import pytest
import torch

import sptbench.training.loop as train_mod
from sptbench.core.errors import SptbenchError
from sptbench.records.io import read_table
from sptbench.records.schema import validate_record
from sptbench.run.runner import RunSpec, run

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: no oversubscribed cores

FAST = {"max_steps": 8, "eval_every": 3, "batch_size": 4}
SAME = ("metrics", "params", "training", "method")


def spec(tmp_path, data_dir, **kw) -> RunSpec:
    base = dict(method="lora", task="rte", shots=4, seed=13, model="tiny-bert", data_dir=str(data_dir),
                results_dir=str(tmp_path), train_overrides=dict(FAST), progress=False)
    base.update(kw)
    return RunSpec(**base)


class Killed(Exception):
    """Stands for a kill (Slurm time limit, preemption): the process ends mid-run, nothing recorded."""


def _kill_at(monkeypatch, step: int) -> None:
    """Make the training step raise once `step` steps ran (the checkpoint of an earlier step is on disk)."""
    real = train_mod.DefaultStep.__call__

    def call(self, model, batch, at):
        if at == step:
            raise Killed
        return real(self, model, batch, at)

    monkeypatch.setattr(train_mod.DefaultStep, "__call__", call)


SLOW_METHODS = [pytest.param(m, marks=pytest.mark.slow) for m in ("lora", "prompt_tuning")]


@pytest.mark.parametrize("method", ["head", *SLOW_METHODS])
def test_killed_run_resumes_to_the_identical_record(tmp_path, data_dir, monkeypatch, method):
    whole = run(spec(tmp_path / "a", data_dir, method=method)).record
    resumable = spec(tmp_path / "b", data_dir, method=method, checkpoint_every=2)
    with monkeypatch.context() as patch:
        _kill_at(patch, 6)  # steps 1-5 ran, the state of step 4 is saved; step 5 is done again
        with pytest.raises(Killed):
            run(resumable)
    assert not list((tmp_path / "b").rglob("v1/**/*.yaml"))  # the kill left no record
    assert [p.name for p in (tmp_path / "b" / "checkpoints").rglob("*.pt")] == ["train-1.pt"]
    resumed = run(resumable).record
    for section in SAME:
        assert resumed[section] == whole[section], section
    assert resumed["outcome"]["history"] == whole["outcome"]["history"]  # every dev evaluation, bit for bit
    assert resumed["outcome"]["resumed_at"] == [4] and "resumed_at" not in whole["outcome"]
    assert validate_record(resumed) == []
    assert not list((tmp_path / "b" / "checkpoints").rglob("*.pt"))  # recorded: the state is removed


@pytest.mark.slow
class Toy(torch.nn.Module):
    """Embeddings, dropout (so the RNG matters) and a linear head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(50, 8)
        self.drop = torch.nn.Dropout(0.3)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        m = attention_mask.unsqueeze(-1).float()
        return self.head(self.drop((self.emb(input_ids) * m).sum(1) / m.sum(1)))


def _toy_train(tmp_path, sampler: str, **kw):
    import random

    import numpy as np

    from sptbench.data.specs import load_spec
    from sptbench.training.resume import Checkpointing

    random.seed(5), np.random.seed(5)  # as the runner seeds every stream; Toy() seeds torch

    g = torch.Generator().manual_seed(1)
    rows = [{"input_ids": torch.randint(1, 50, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist(),
             "label": i % 2} for i in range(23)]
    model = Toy()
    tcfg = train_mod.TrainConfig(max_steps=9, batch_size=5, eval_every=2, lr=0.05, seed=3, sampler=sampler,
                                 grad_accum=2)
    ckpt = Checkpointing(tmp_path / "train-1.pt", 3)
    res = train_mod.train(model, rows[:17], rows[17:], load_spec("sst2"), tcfg, progress=False, checkpoint=ckpt, **kw)
    return model, res


@pytest.mark.parametrize("sampler", ["python", "torch"])
def test_a_killed_training_loop_resumes_bit_for_bit(tmp_path, monkeypatch, sampler):
    import random

    import numpy as np

    whole, res = _toy_train(tmp_path / "a", sampler)
    after = (random.random(), float(np.random.rand()), float(torch.rand(())))  # the RNG streams after training
    with monkeypatch.context() as patch:
        _kill_at(patch, 8)  # state saved at step 6 (every 3); steps 7 and 8 are done again
        with pytest.raises(Killed):
            _toy_train(tmp_path / "b", sampler)
    resumed, res2 = _toy_train(tmp_path / "b", sampler)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == after
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert res2.history == res.history and res2.best_step == res.best_step and res2.resumed_at == [6]
    assert (res2.samples_seen, res2.tokens_seen, res2.steps_run) == (res.samples_seen, res.tokens_seen, 9)


@pytest.mark.slow
def test_a_finished_training_call_resumes_without_training(tmp_path, data_dir, monkeypatch):
    resumable = spec(tmp_path, data_dir, checkpoint_every=100)
    real = train_mod.evaluate
    calls = []

    def evaluate_then_die(model, encoded, spec_, batch_size, pad_id=0):  # the kill comes at the test evaluation
        calls.append(len(encoded))
        if len(calls) == 4:  # dev at steps 3, 6 and 8, then test
            raise Killed
        return real(model, encoded, spec_, batch_size, pad_id)

    with monkeypatch.context() as patch:
        patch.setattr("sptbench.run.runner.evaluate", evaluate_then_die)
        patch.setattr(train_mod, "evaluate", evaluate_then_die)
        with pytest.raises(Killed):
            run(resumable)
    steps = []
    monkeypatch.setattr(train_mod, "_take_step", lambda *a: steps.append(a[3]))
    rec = run(resumable).record
    assert steps == [] and rec["outcome"]["resumed_at"] == [8] and rec["outcome"]["steps_run"] == 8


@pytest.mark.slow
def test_a_checkpoint_of_another_model_is_refused(tmp_path, data_dir, monkeypatch):
    from sptbench.training.resume import save_state

    resumable = spec(tmp_path, data_dir, checkpoint_every=2)
    with monkeypatch.context() as patch:
        _kill_at(patch, 3)
        with pytest.raises(Killed):
            run(resumable)
    (path,) = (tmp_path / "checkpoints").rglob("train-1.pt")
    state = torch.load(path, weights_only=True)
    state["trainable"] = {"other.weight": torch.zeros(2)}
    save_state(path, {k: v for k, v in state.items() if k != "version"})
    with pytest.raises(SptbenchError, match="another model"):
        run(resumable)


@pytest.mark.slow
def test_gradient_accumulation_keeps_the_batch_and_is_in_the_key(tmp_path, data_dir):
    one = run(spec(tmp_path, data_dir, train_overrides={**FAST, "grad_accum": 1})).record
    two = run(spec(tmp_path, data_dir, train_overrides={**FAST, "grad_accum": 2})).record
    assert two["training"]["grad_accum"] == 2 and one["training"]["grad_accum"] == 1
    assert two["throughput"]["train_samples_per_s"] and one["outcome"]["steps_run"] == two["outcome"]["steps_run"]
    # the same batches, so the same loss up to float rounding and dropout draws: close, not equal
    l1 = [h["train_loss"] for h in one["outcome"]["history"]]
    l2 = [h["train_loss"] for h in two["outcome"]["history"]]
    assert l1[0] == pytest.approx(l2[0], abs=0.1)
    with pytest.raises(SptbenchError, match="grad_accum"):
        run(spec(tmp_path, data_dir, train_overrides={**FAST, "grad_accum": 5}))


def test_accumulated_gradient_equals_the_whole_batch_gradient():
    """Without dropout, the micro-batches' scaled losses give the whole batch's gradient (up to rounding)."""
    from sptbench.core.run_schema import TrainConfig
    from sptbench.training.batches import _collate

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Flatten(), torch.nn.Linear(8 * 6, 3))

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, input_ids, attention_mask):
            return self.m(torch.nn.functional.pad(input_ids, (0, 6 - input_ids.shape[1])))

    wrap = Wrap()
    gen = torch.Generator().manual_seed(1)
    items = [{"input_ids": torch.randint(1, 50, (6,), generator=gen).tolist(), "label": i % 3} for i in range(7)]
    batch = _collate(items, 0)
    grads = []
    for accum in (1, 3):
        for p in wrap.parameters():
            p.grad = None
        step = train_mod.DefaultStep(wrap.parameters(), TrainConfig(grad_accum=accum, max_grad_norm=None, lr=0.0,
                                                                    weight_decay=0.0), False, 0, 1)
        step.optimizer.zero_grad = lambda set_to_none=True: None  # keep the gradient to compare it
        step(wrap, batch, 1)
        grads.append(torch.cat([p.grad.flatten() for p in wrap.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6) and grads[0].abs().sum() > 0


@pytest.mark.slow
def test_gradient_checkpointing_gives_the_same_numbers(tmp_path, data_dir, monkeypatch):
    from torch.utils import checkpoint as ckpt

    used = []
    real = ckpt.checkpoint
    monkeypatch.setattr(ckpt, "checkpoint", lambda *a, **k: used.append(1) or real(*a, **k))
    plain = run(spec(tmp_path, data_dir, train_overrides={**FAST, "max_steps": 4})).record
    assert not used
    recomputed = run(spec(tmp_path, data_dir, gradient_checkpointing=True,
                          train_overrides={**FAST, "max_steps": 4})).record
    assert used  # the layers ran under torch's checkpoint ...
    assert recomputed["metrics"] == plain["metrics"]  # ... and gave the same numbers (hence not in the key)
    assert recomputed["outcome"]["history"] == plain["outcome"]["history"]


@pytest.mark.slow  # fp16 autocast on a CPU is slow
def test_fp16_scales_the_loss_and_is_recorded(tmp_path, data_dir, monkeypatch):
    scaled = []
    real = torch.amp.GradScaler.scale
    monkeypatch.setattr(torch.amp.GradScaler, "scale", lambda self, x: scaled.append(1) or real(self, x))
    rec = run(spec(tmp_path, data_dir, dtype="fp16", train_overrides={**FAST, "max_steps": 3})).record
    assert scaled and rec["status"] == "ok" and rec["training"]["dtype"] == "fp16"
    assert rec["metrics"]["dev"]["score"] is not None


def test_out_of_memory_is_retried_with_half_the_micro_batch(tmp_path, data_dir, monkeypatch):
    real = train_mod.loss_on
    sizes = []

    def tight(model, batch):  # a device that holds 2 rows at once
        sizes.append(batch["labels"].shape[0])
        if batch["labels"].shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, batch)

    monkeypatch.setattr(train_mod, "loss_on", tight)
    rec = run(spec(tmp_path, data_dir, train_overrides={**FAST, "max_steps": 3})).record
    assert rec["status"] == "ok" and rec["outcome"]["steps_run"] == 3
    assert rec["outcome"]["oom_retries"] == [{"step": 1, "grad_accum": 2, "micro_batch": 2}]
    assert rec["training"]["grad_accum"] == 1  # the key keeps what was asked; the retry is recorded beside it
    assert sizes[:3] == [4, 2, 2] and max(sizes[3:]) == 2
    (stored,) = read_table(next(tmp_path.rglob("v1/**/*.yaml")))
    assert stored["outcome"]["oom_retries"] == rec["outcome"]["oom_retries"]


def test_out_of_memory_with_one_row_fails_clearly(tmp_path, data_dir, monkeypatch):
    def never(model, batch):
        raise torch.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr(train_mod, "loss_on", never)
    with pytest.raises(SptbenchError, match="out of memory at step 1 .batch 4.: CUDA out of memory"):
        run(spec(tmp_path, data_dir))


def test_sweep_runs_print_progress_lines(tmp_path, data_dir, capsys):
    run(spec(tmp_path, data_dir, method="head", sweep={"name": "s", "config_index": 0, "configs": 1},
             train_overrides={**FAST, "max_steps": 4, "eval_every": 2}))
    lines = [line for line in capsys.readouterr().err.splitlines() if "step " in line]
    assert len(lines) == 2 and lines[0].startswith("head rte seed 13: step 2/4 loss ")
    assert " dev " in lines[0] and "(best " in lines[0] and " ETA " in lines[0] and lines[-1].endswith("ETA 0m00s")


def test_loggers_are_off_by_default_and_need_their_extra(tmp_path, data_dir):
    from sptbench.training.monitor import make_backend

    assert make_backend("none", tmp_path, "x", {}) is None
    try:
        import wandb  # noqa: F401
    except ImportError:
        with pytest.raises(SptbenchError, match="sptbench\\[wandb\\]"):
            make_backend("wandb", tmp_path, "x", {})


@pytest.mark.slow
def test_tensorboard_logger_writes_the_curves(tmp_path, data_dir):
    pytest.importorskip("tensorboard")
    run(spec(tmp_path, data_dir, logger="tensorboard", train_overrides={**FAST, "max_steps": 3}))
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*"))


def test_out_of_memory_in_evaluation_halves_its_batch(capsys):
    from sptbench.data.specs import load_spec

    model = Toy().eval()
    real = model.forward

    def tight(input_ids, attention_mask, token_type_ids=None):
        if input_ids.shape[0] > 3:
            raise torch.OutOfMemoryError("CUDA out of memory.")
        return real(input_ids, attention_mask)

    g = torch.Generator().manual_seed(2)
    rows = [{"input_ids": torch.randint(1, 50, (5,), generator=g).tolist(), "label": i % 2} for i in range(10)]
    want = train_mod.evaluate(model, rows, load_spec("sst2"), 2)
    model.forward = tight
    assert train_mod.evaluate(model, rows, load_spec("sst2"), 16) == want
    assert "retrying with batches of 2" in capsys.readouterr().err
    model.forward = lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError("no"))
    with pytest.raises(SptbenchError, match="one example at a time"):
        train_mod.evaluate(model, rows, load_spec("sst2"), 2)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["spt", "spt_darts"])
def test_a_multi_stage_run_resumes_its_last_stage_to_the_identical_record(tmp_path, data_dir, monkeypatch, method):
    """The search stage (its own step) is recomputed from the seed; the re-training stage resumes from its file."""
    overrides = {"search_steps": 4}
    whole = run(spec(tmp_path / "a", data_dir, method=method, method_overrides=overrides)).record
    resumable = spec(tmp_path / "b", data_dir, method=method, method_overrides=overrides, checkpoint_every=2)
    with monkeypatch.context() as patch:
        _kill_at(patch, 5)  # the re-training stage's step 5 (the search does not use the default step)
        with pytest.raises(Killed):
            run(resumable)
    resumed = run(resumable).record
    for section in SAME:
        assert resumed[section] == whole[section], section
    untimed = lambda extra: {k: v for k, v in extra.items() if not k.endswith("_s")}  # noqa: E731
    assert untimed(resumed["extra"]) == untimed(whole["extra"])  # the search's gates, choice, trajectory
    assert resumed["outcome"]["history"] == whole["outcome"]["history"]
    assert resumed["outcome"]["resumed_at"] == [4]


@pytest.mark.slow
def test_a_requeued_array_job_resumes_from_its_checkpoint(tmp_path, data_dir, monkeypatch):
    """An array job killed mid-run, then requeued through submitit's `checkpoint` hook, records the uninterrupted
    run's numbers in its own run file."""
    pytest.importorskip("submitit")
    from sptbench.records.runfiles import run_files
    from sptbench.sweep.launch import RunJob, cluster_spec

    whole = run(spec(tmp_path / "a", data_dir, method="head")).record
    job_spec = cluster_spec(spec(tmp_path / "b", data_dir, method="head"))  # run file, checkpoints every eval (3)
    job = RunJob(frozenset())
    with monkeypatch.context() as patch:
        _kill_at(patch, 5)
        assert job(job_spec)["status"] == "failed"
    summary = job.checkpoint(job_spec).result()  # what the requeued job runs
    assert summary["status"] == "ok"
    (path,) = run_files(tmp_path / "b")
    (resumed,) = read_table(path)
    assert resumed["run_id"] == summary["run_id"] and resumed["outcome"]["resumed_at"] == [3]
    assert resumed["metrics"] == whole["metrics"] and resumed["outcome"]["history"] == whole["outcome"]["history"]
