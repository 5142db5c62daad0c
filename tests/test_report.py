"""`sptbench report`: the report's data against the table, compare and plot functions it reuses (hand-made records),
the self-contained page, the CLI; and (slow) the page in a real headless Chromium built from the committed
results: no JavaScript error, nothing fetched, one Pareto point per (method, backbone, regime), clicks open
records."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import shutil
from pathlib import Path

import pytest
import yaml

from sptbench.core.errors import SptbenchError
from sptbench.records.io import read_records
from sptbench.reports.compare import Side, compare
from sptbench.reports.report import build_report, collection_of, load, report_csv, restrict
from sptbench.reports.report_html import render_html, script_json
from sptbench.reports.selection import dev_selection
from sptbench.reports.tables import build_table
from tests.conftest import REPO
from tests.helpers import make_record, run_cli

pytest.importorskip("plotly")


def rec(method: str, task: str, seed: int, test: float, dev: float, **config) -> dict:
    r = make_record(method__name=method, method__config=dict(config), task__name=task, protocol__seed=seed)
    r["metrics"] = {"selection_metric": "accuracy", "dev": {"accuracy": dev, "score": dev},
                    "test": {"accuracy": test, "score": test}}
    r["outcome"]["history"] = [{"step": s, "train_loss": 0.5, "dev_score": dev} for s in range(10)]
    return r


def write_table(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(yaml.safe_dump(r, sort_keys=False, explicit_start=True) for r in records))


def hand_made(seed: int = 7) -> list[dict]:
    """Two tasks x three seeds: `lora` over an lr grid of two (dev decides), `prompt_tuning` once, `spt` with
    learned gates over four layers; seeded random scores."""
    rng = random.Random(seed)
    records = []
    for task in ("sst2", "trec"):
        for s in (13, 21, 42):
            for lr in (1e-3, 1e-4):
                r = rec("lora", task, s, round(rng.uniform(0.5, 0.9), 4), round(rng.uniform(0.4, 0.9), 4))
                r["training"]["lr"] = lr
                records.append(r)
            records.append(rec("prompt_tuning", task, s, round(rng.uniform(0.5, 0.9), 4), 0.6))
            gated = rec("spt", task, s, round(rng.uniform(0.5, 0.9), 4), 0.6)
            gated["extra"] = {"alpha": [round(rng.random(), 3) for _ in range(4)],
                              "candidate_layers": [0, 1, 2, 3], "chosen_layers": [rng.randrange(4)]}
            records.append(gated)
    return records


@pytest.fixture
def results(tmp_path) -> Path:
    """A results folder with two collections: `tuned/v1/...` (the hand-made grid) and `v1/...` (one method)."""
    root = tmp_path / "results"
    write_table(root / "tuned" / "v1" / "bert-base-uncased" / "16shot.yaml", hand_made())
    write_table(root / "v1" / "bert-base-uncased" / "16shot.yaml",
                [rec("lora", "sst2", s, 0.7 + s / 1000, 0.6) for s in (13, 21)])
    return root


def test_collections_are_the_folders_above_the_tables():
    given = Path("results")
    assert collection_of(Path("results/tuned/v1/minilm-l6/16shot.yaml"), given) == "results/tuned"
    assert collection_of(Path("results/v1/minilm-l6/16shot.yaml"), given) == "results"
    assert collection_of(Path("results/reference/minilm-l6-16shot.yaml"), given) == "results/reference/minilm-l6-16shot"


def test_the_report_holds_what_table_and_compare_compute(results):
    """Each section is `table --select-by-dev` and `compare --select-by-dev` of its own collection's records (never
    mixed across collections), every number names the runs behind it, and those runs are embedded, compacted."""
    report = build_report(load([results]))
    assert [(s["collection"], s["setting"], s["head"]) for s in report["sections"]] == [
        (str(results / "tuned"), "16shot", "linear"), (str(results), "16shot", "linear")]
    tuned = read_records([results / "tuned"])
    section = report["sections"][0]
    winners, sizes = dev_selection(tuned)
    table = build_table(winners, selected=True, grid_sizes=sizes)
    assert [r["label"] for r in section["rows"]] == table.rows == ["lora", "prompt_tuning", "spt"]
    for (row, task), cell in table.cells.items():
        shown = section["cells"][row][task]
        assert shown["mean"] == pytest.approx(cell.mean) and shown["std"] == pytest.approx(cell.std)
        runs = [r for r in tuned if r["run_id"] in shown["runs"]]
        assert len(runs) == 3 and {r["task"]["name"] for r in runs} == {task}
        if row == "lora":  # the dev winner of each seed's lr grid, never its loser
            for r in runs:
                rivals = [x for x in tuned if x["method"]["name"] == "lora" and x["task"]["name"] == task
                          and x["protocol"]["seed"] == r["protocol"]["seed"]]
                assert r["metrics"]["dev"]["score"] == max(x["metrics"]["dev"]["score"] for x in rivals)
    # spt has learned gates: it is compared with every other method
    pairs = {(c["a"], c["b"]): c for c in section["comparisons"]["pairs"]}
    assert set(pairs) == {("spt", "lora"), ("spt", "prompt_tuning")}
    direct = compare(tuned, Side("spt"), Side("lora"), select=True)
    assert pairs["spt", "lora"]["overall"]["mean"] == pytest.approx(direct.overall.mean)
    assert pairs["spt", "lora"]["overall"]["low"] == pytest.approx(direct.overall.low)
    assert pairs["spt", "lora"]["p_holm"] >= pairs["spt", "lora"]["overall"]["p"]
    gates = section["gates"]
    assert gates["layers"] == 4 and [(r["task"], r["method"], r["count"]) for r in gates["rows"]] == [
        ("sst2", "spt", 3), ("trec", "spt", 3)]
    referenced = {run for row in section["rows"] for run in row["runs"]}
    assert referenced <= set(report["records"])
    shown = report["records"][next(iter(referenced))]
    assert shown["outcome"]["history"].startswith("[10 entries") and shown["_source"].endswith("16shot.yaml")
    assert report["sections"][1]["comparisons"]["pairs"] == []  # one method: nothing to pair


def test_malformed_gates_leave_out_the_gates_not_the_section(tmp_path):
    records = hand_made(5)
    next(r for r in records if r["method"]["name"] == "spt")["extra"]["alpha"] = "high"
    write_table(tmp_path / "v1" / "bert-base-uncased" / "16shot.yaml", records)
    (section,) = build_report(load([tmp_path]))["sections"]
    assert section["gates"]["rows"] == [] and "extra.alpha must be a list of numbers" in section["gates"]["problem"]
    assert [r["label"] for r in section["rows"]] == ["lora", "prompt_tuning", "spt"]


def test_filters_and_csv(results):
    loaded = restrict(load([results]), ["trec"], ["lora", "spt"])
    report = build_report(loaded)
    assert [s["collection"] for s in report["sections"]] == [str(results / "tuned")]  # v1 has no trec
    lines = list(csv.DictReader(io.StringIO(report_csv(report))))
    assert {(x["method"], x["task"]) for x in lines} == {("lora", "trec"), ("spt", "trec")}
    row = next(x for x in lines if x["method"] == "spt")
    cell = report["sections"][0]["cells"]["spt"]["trec"]
    assert float(row["mean"]) == pytest.approx(cell["mean"], abs=1e-4) and row["n"] == "3"
    with pytest.raises(SptbenchError, match="unknown task in these records 'mnli'"):
        restrict(load([results]), ["mnli"], None)


def test_the_page_is_self_contained_and_escapes_record_text(results):
    """Nothing is loaded from elsewhere (no src or href attribute, no stylesheet link), and text from records
    cannot end the data's script element."""
    records = hand_made(3)
    records[2]["method"]["config"]["note"] = "</script><script>alert(1)</script> <!--"
    write_table(results / "tuned" / "v1" / "bert-base-uncased" / "16shot.yaml", records)
    page = render_html(build_report(load([results])))
    body = page.split("<script>", 1)[0] + page.split("</head>", 1)[1]  # all but plotly's bundle
    assert not re.search(r"\b(src|href)\s*=", body) and "<link" not in body
    data = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S).group(1)
    assert "<" not in data
    parsed = json.loads(data)
    assert any(r["method"]["config"].get("note", "").startswith("</script>") for r in parsed["records"].values())
    assert json.loads(script_json({"x": float("nan")})) == {"x": None}


def test_cli_report(results, tmp_path, capsys):
    out, table = tmp_path / "r" / "report.html", results / "v1" / "bert-base-uncased" / "16shot.yaml"
    code, stdout, err = run_cli(["report", str(results), "--out", str(out), "--csv", str(tmp_path / "r.csv")], capsys)
    assert code == 0, err
    assert "2 sections" in stdout and out.read_text().startswith("<!DOCTYPE html>")
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 1 + 3 * 2 + 1  # header, 3 methods x 2 tasks, v1
    before = table.read_text()
    code, _, err = run_cli(["report", str(results), "--out", str(table)], capsys)
    assert code == 2 and "is a results table: not overwritten" in err and table.read_text() == before
    code, _, err = run_cli(["report", str(results), "--out", str(out), "--methods", "bitfit"], capsys)
    assert code == 2 and err.count("\n") == 1 and "unknown method in these records 'bitfit'" in err


# ---------------------------------------------------------------------------------------------------- the browser


def _chromium():
    """A headless Chromium driven by selenium; skipped when absent, unless SPTBENCH_REQUIRE_BROWSER is set (CI)."""
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium")
    if missing:
        if os.environ.get("SPTBENCH_REQUIRE_BROWSER"):
            pytest.fail(f"the browser test needs {', '.join(missing)} (.ci/run installs them)")
        pytest.skip(f"no {', '.join(missing)} (apt-get install chromium chromium-driver; pip install selenium)")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def expected_points(root: Path, measured: str | None = None) -> set[tuple]:
    """(collection, backbone, setting, head, method) of every ok, tested record with a test score, read here
    independently of the report's code: what the Pareto plots must show, one point each (with `measured`, only
    those with that throughput measure)."""
    from sptbench.records.io import read_table, table_files

    out = set()
    for table in table_files([root]):
        parts = table.relative_to(root).parts
        where = parts[: parts.index("v1")] if "v1" in parts else (table.stem,)
        for r in read_table(table):
            test = (r.get("metrics") or {}).get("test") or {}
            if measured is not None and r["throughput"][measured] is None:
                continue
            if r["status"] == "ok" and (r.get("selection") or {}).get("tested") is not False and test:
                p = r["protocol"]
                out.add((where, r["backbone"]["id"], p["shots"], p["train_size"],
                         (r.get("head") or {}).get("kind", "linear"), r["method"]["name"]))
    return out


@pytest.mark.slow
def test_the_report_in_a_real_browser(tmp_path, capsys):
    """The report of the committed results in headless Chromium: no JavaScript error, no request but the page,
    one Pareto point per (method, backbone, regime) of each collection, and clicking a point, a table cell and a
    comparison opens the records behind it. A screenshot is saved (tmp_path/report.png)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    page = tmp_path / "report.html"
    code, _, err = run_cli(["report", str(REPO / "results"), "--out", str(page)], capsys)
    assert code == 0, err
    driver = _chromium()
    try:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": (
            "window.__errors = []; window.addEventListener('error', e => window.__errors.push(String(e.message)));"
            "window.addEventListener('unhandledrejection', e => window.__errors.push(String(e.reason)));")})
        driver.get(page.as_uri())
        assert driver.execute_script("return document.body.dataset.ready") == "true"
        severe = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert driver.execute_script("return window.__errors") == [] and severe == []
        points = driver.find_elements(By.CSS_SELECTOR, ".pareto .scatterlayer .trace path.point")
        assert len(points) == len(expected_points(REPO / "results")) > 10

        def opened() -> str:
            view = driver.find_element(By.ID, "record-view")
            assert view.get_attribute("hidden") is None
            run = driver.find_element(By.CSS_SELECTOR, "#record-body .record").get_attribute("data-run")
            assert run in driver.find_element(By.ID, "record-body").text  # the record: its id, config, versions
            for part in ("training options", "data", "versions", "git"):
                assert driver.find_element(By.XPATH, f"//div[@id='record-body']//h3[text()='{part}']")
            driver.find_element(By.ID, "record-close").click()
            return run

        ActionChains(driver).move_to_element(points[0]).click().perform()
        first = opened()
        driver.find_elements(By.CSS_SELECTOR, "td.cell")[5].click()
        assert opened()
        driver.find_elements(By.CSS_SELECTOR, ".compare tr.cell")[0].click()
        assert opened()
        fetched = {json.loads(entry["message"])["message"]["params"]["request"]["url"].split(":")[0]
                   for entry in driver.get_log("performance")
                   if json.loads(entry["message"])["message"]["method"] == "Network.requestWillBeSent"}
        assert fetched <= {"file", "data", "blob"}, fetched  # no network at view time
        from selenium.webdriver.support.ui import Select

        for axis, measure in (("throughput", "train_samples_per_s"), ("memory", "peak_memory_mb")):
            Select(driver.find_element(By.ID, "pareto-axis")).select_by_value(axis)
            shown = driver.find_elements(By.CSS_SELECTOR, ".pareto .scatterlayer .trace path.point")
            assert len(shown) == len(expected_points(REPO / "results", measure)), axis
        driver.find_element(By.XPATH, "//fieldset[legend='methods']//input[@value='spt']").click()  # filter out
        assert driver.execute_script("return window.__errors") == []
        left = driver.find_elements(By.CSS_SELECTOR, ".pareto .scatterlayer .trace path.point")
        assert len(left) == len({p for p in expected_points(REPO / "results", "peak_memory_mb") if p[-1] != "spt"})
        ActionChains(driver).move_to_element(left[0]).click().perform()
        driver.save_screenshot(str(tmp_path / "report.png"))
        assert (tmp_path / "report.png").stat().st_size > 10_000 and first
    finally:
        driver.quit()
