"""Where a task's data is read from: its own folder (the spec's `data`), else the data search path.

The data search path is `--data-dir A:B` (os.pathsep-separated) when given, else $SPTBENCH_DATA_PATH's folders
followed by $SPTBENCH_DATA_DIR's; the first folder that holds `<task>/<mirror.train>` is the task's mirror, and the
first that holds `lm-bff-16-shot/<lm_bff.dir>/<K>-<seed>/` its LM-BFF splits. No folder at all: the Hugging Face hub.
A task with its own `data` folder reads its files there (`<data>/<mirror.train>`, and its few-shot splits from
`<data>/<lm_bff.dir>/<K>-<seed>/`), whatever the search path says (docs/tasks.md).
"""

from __future__ import annotations

import os
from pathlib import Path

from sptbench.core.errors import SptbenchError
from sptbench.core.paths import check_name
from sptbench.data.specs import TaskSpec

DATA_DIR_ENV = "SPTBENCH_DATA_DIR"
DATA_PATH_ENV = "SPTBENCH_DATA_PATH"
LM_BFF_FOLDER = "lm-bff-16-shot"


def env_data_path() -> str | None:
    """The data search path from the environment: $SPTBENCH_DATA_PATH's entries, then $SPTBENCH_DATA_DIR; None if
    neither is set (the hub)."""
    entries = [e for e in os.environ.get(DATA_PATH_ENV, "").split(os.pathsep) if e.strip()]
    if os.environ.get(DATA_DIR_ENV, "").strip():
        entries.append(os.environ[DATA_DIR_ENV])
    return os.pathsep.join(dict.fromkeys(entries)) or None


def data_roots(data_dir: str | Path | None) -> list[Path]:
    """The data search path's folders, absolute and in order: `data_dir` (one folder or several joined by
    os.pathsep), else the environment's (`env_data_path`); each must be a folder."""
    chosen = str(data_dir) if data_dir is not None else env_data_path()
    roots = []
    for entry in (chosen or "").split(os.pathsep):
        if not entry.strip():
            continue
        root = Path(entry).expanduser()
        if not root.is_dir():
            raise SptbenchError(f"data dir '{root}' does not exist or is not a folder")
        roots.append(root.resolve())
    return list(dict.fromkeys(roots))


def task_folder(spec: TaskSpec, roots: list[Path]) -> Path | None:
    """The folder holding the task's mirror files: its own `data` folder, else the first root holding
    `<task>/<mirror.train>`; None when there are no roots (the hub). Roots that all lack it: one line naming them."""
    own = spec.data_folder
    if own is not None:
        if not own.is_dir():
            raise SptbenchError(f"{spec.path}: the task's data folder '{spec.data}' ({own}) is not a folder")
        return own
    if not roots:
        return None
    name = check_name(spec.name, "task")  # names from a spec stay inside the data dir
    for root in roots:
        if (root / name / spec.mirror["train"]).is_file():
            return root / name
    if len(roots) == 1:
        return roots[0] / name  # the reader names the missing file
    raise SptbenchError(f"no data folder holds {spec.name}/{spec.mirror['train']}; searched: "
                        f"{', '.join(map(str, roots))}")


def lm_bff_folder(spec: TaskSpec, roots: list[Path], seed: int) -> Path:
    """The folder of one few-shot split (`train` and `dev` files): in the task's own data folder, else the first
    root holding `lm-bff-16-shot/<dir>/<K>-<seed>`."""
    cfg = spec.lm_bff
    split = f"{cfg['shots']}-{seed}"
    folder = check_name(cfg["dir"], "lm_bff.dir")
    own = spec.data_folder
    if own is not None:
        return own / folder / split
    if not roots:
        raise SptbenchError(
            f"split_source 'lm-bff' reads the published splits from <data dir>/{LM_BFF_FOLDER}: pass --data-dir or "
            f"set {DATA_PATH_ENV} (or give the task its own 'data' folder)"
        )
    candidates = [root / LM_BFF_FOLDER / folder / split for root in roots]
    return next((c for c in candidates if c.is_dir()), candidates[0])


def empty_text_note(label: str, wheres: list[str]) -> str:
    """The record's data note for one file (or hub split) with rows whose text is empty."""
    return (f"empty texts: {len(wheres)} row(s) of {label} have an empty text (first: {wheres[0]}); kept as given "
            "(--strict-data refuses them)")
