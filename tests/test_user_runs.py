"""User runs stay out of the committed reproduction tables (issue 37 item 5): `run` and `sweep` write under the
git-ignored `results/local` by default; the packaged sweep files that write the committed tables say so."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from sptbench.core import safe_yaml
from sptbench.core.run_schema import LOCAL_RESULTS_DIR, RunSpec
from sptbench.records.io import read_records
from tests.helpers import run_cli

REPO = Path(__file__).resolve().parents[1]


def _main_command() -> list[str]:
    """The README's main command, as argv (without the leading `sptbench`)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Main command\s+```bash\n(.*?)\n```", text, re.S)
    assert block, "README has no '## Main command' bash block"
    argv = shlex.split(block.group(1))
    assert argv[:2] == ["sptbench", "run"] and "--results-dir" not in argv
    return argv[1:]


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_main_command_with_defaults_leaves_a_clean_clone_clean(tmp_path, data_dir, monkeypatch, capsys, one_thread):
    """The README's main command (tiny backbone and budget, everything else as written) run from a clone-like repo
    with the committed tables tracked: the record lands in results/local and `git status` stays clean."""
    clone = tmp_path / "clone"
    table = Path("results/v1/minilm-l6/16shot.yaml")
    (clone / table.parent).mkdir(parents=True)
    shutil.copy(REPO / ".gitignore", clone / ".gitignore")
    (clone / table).write_text((REPO / table).read_text(encoding="utf-8")[:20000].rsplit("\n---", 1)[0] + "\n")
    _git(clone, "init", "-q")
    _git(clone, "add", "-A")
    _git(clone, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clone")
    before = (clone / table).read_bytes()
    argv = _main_command()
    argv[argv.index("--model") + 1] = "tiny-bert"
    argv[argv.index("--data-dir") + 1] = str(data_dir)
    monkeypatch.chdir(clone)
    code, out, err = run_cli([*argv, "--max-steps", "2", "--eval-every", "2", "--quiet"], capsys)
    assert code == 0, err
    assert _git(clone, "status", "--porcelain", "--untracked-files=all") == ""
    assert (clone / table).read_bytes() == before
    (rec,) = read_records([clone / LOCAL_RESULTS_DIR])
    assert rec["method"]["name"] == "spt" and rec["backbone"]["id"] == "tiny-bert"
    assert f"{LOCAL_RESULTS_DIR}/v1/tiny-bert/16shot.yaml" in out
    code, out, _ = run_cli(["table"], capsys)  # the readers' default is where runs go by default
    assert code == 0 and "spt" in out and "subj" in out


def test_readers_without_paths_say_what_to_name_when_nothing_ran_yet(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for command in ("table", "validate"):
        code, _, err = run_cli([command], capsys)
        assert code == 2 and "no records in results/local/v1" in err and "results/v1" in err


def test_run_and_readers_default_to_the_local_results():
    assert RunSpec(method="head", task="sst2").results_dir == LOCAL_RESULTS_DIR == "results/local"
    assert "results/local/" in (REPO / ".gitignore").read_text().split("\n")


def test_packaged_sweeps_that_wrote_the_committed_tables_still_write_there():
    """Every committed table under results/v1 has a packaged sweep file (of its backbone) that writes `results`, so
    the documented reproduction commands keep their targets; the tuned sweeps keep results/tuned."""
    sweeps = {p.stem: safe_yaml.load_file(p, "sweep") for p in (REPO / "sweeps").glob("*.yaml")}
    for backbone in (p.name for p in (REPO / "results" / "v1").iterdir() if p.is_dir()):
        writers = [n for n, s in sweeps.items() if s.get("model") == backbone and s.get("results_dir") == "results"]
        assert writers, f"no packaged sweep writes results/v1/{backbone}"
    for name in ("cpu-16shot-tuned", "cpu-1k-tuned"):
        assert sweeps[name]["results_dir"] == "results/tuned"
    assert "results_dir" not in sweeps["reference"]  # scripts/reference_check.sh passes --results-dir
