"""`bench/quality.py --quick` (protocol v2) end to end (real Ray, tiny model): every arm, then a second run
that resumes without redoing any phase, then a changed budget in the same storage refused before any compute.

Two tasks and two seeds keep it to the fewest Ray rounds that still give every group a test (Welch's t over
seeds needs 2 runs per group).
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
GROUPS = ["reference", "teachers", "multitask", "bam_linear", "lu_joint", "lu_sequential", "kd_switch",
          "multitask_l3", "bam_l3", "kd_switch_l3", "searched"]
LABELS = ["reference fine-tune (plain loop)", "single-task teachers (early-stopped)", "plain multi-task (no KD)",
          "BAM, linear annealing", "Lu et al., joint (gold until each switch)", "Lu et al., sequential",
          "BAM + per-task KD switch (joint)", "compact: plain multi-task", "compact: BAM, linear annealing",
          "compact: BAM + per-task KD switch", "searched recipe (bam_full sweep, retrained)"]
TARGET_LINES = ["teachers vs reference fine-tune, GLUE average", "BAM (linear) vs plain multi-task, GLUE average",
                "compact BAM+switch vs compact plain multi-task, GLUE average",
                "searched recipe vs best fixed recipe, GLUE average", "searched recipe vs teachers, GLUE average"]


def tasks() -> list[str]:
    return ["rte", "stsb"] if os.environ.get("BAM_GLUE_DIR") else ["syn_noisy", "syn_similarity"]


def quality(storage: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "bench" / "quality.py"), "--quick", "--tasks", ",".join(tasks()),
                           "--no-wandb", "--storage", str(storage), *extra],
                          capture_output=True, text=True, timeout=1500, cwd=REPO, env=os.environ.copy())


def snapshot(storage: Path) -> dict:
    """Every file of the experiments and the registry, with its size and mtime."""
    files = [p for d in ("experiments", "reference") for p in (storage / d).rglob("*") if p.is_file()]
    files.append(storage / "baselines.jsonl")
    return {str(p.relative_to(storage)): (p.stat().st_size, p.stat().st_mtime_ns) for p in files}


@pytest.fixture(scope="module")
def first(tmp_path_factory, cache_dir):
    storage = tmp_path_factory.mktemp("quality")
    r = quality(storage)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return storage, r.stdout


def test_table_has_every_group_and_task(first):
    from trainables.tasks import get_task
    storage, out = first
    result = json.loads((storage / "quality.json").read_text())
    assert list(result["table"]) == GROUPS
    for g in GROUPS:
        entry = result["table"][g]
        # the searched recipe is retrained on seeds after the sweep's (0): its best trial was picked on this dev set
        assert entry["n"] == 2 and entry["seeds"] == ([1, 2] if g == "searched" else [0, 1])
        assert set(entry["tasks"]) == set(tasks())
        for t in tasks():
            cell = entry["tasks"][t]
            assert len(cell["scores"]) == 2 and all(math.isfinite(s) for s in cell["scores"])
            assert math.isfinite(cell["mean"]) and math.isfinite(cell["sd"]) and cell["sd"] >= 0
            assert cell["mean"] == pytest.approx(sum(cell["scores"]) / 2)
            if g != "teachers":
                teachers = result["table"]["teachers"]["tasks"][t]["mean"]
                assert cell["delta"] == pytest.approx(cell["mean"] - teachers)
                assert cell["test"] in ("welch_t", "bootstrap")     # independent runs: never a paired t
                assert cell["p_holm"] is None or 0 <= cell["p"] <= cell["p_holm"] <= 1
        avg = entry["glue_avg"]
        assert avg["mean"] == pytest.approx(sum(entry["tasks"][t]["mean"] for t in tasks()) / len(tasks()))
    assert [t["label"] for t in result["targets"].values()] == TARGET_LINES
    assert all(t["value"] is not None and isinstance(t["met"], bool) for t in result["targets"].values())
    assert result["missing"] == []
    # what each arm's encoder saw: students at their selected step, the reference all its epochs
    for g in GROUPS:
        seen = result["table"][g]["seen"]
        assert set(seen["passes"]) == set(tasks()) and all(v > 0 for v in seen["passes"].values()), (g, seen)
    assert all(v == pytest.approx(1.0) for v in result["table"]["reference"]["seen"]["passes"].values())
    assert all(0 < v <= 3.0 + 1e-9 for v in result["table"]["teachers"]["seen"]["passes"].values())

    md = (storage / "quality.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| arm")]
    assert [r.split(" | ")[0][2:] for r in rows] == LABELS
    header = next(line for line in md.splitlines() if line.startswith("| arm"))
    assert [c.strip() for c in header.strip("|").split("|")] == \
        ["arm", "n", *[get_task(t).dir_name for t in tasks()], "GLUE avg", "encoder saw (selected checkpoint)"]
    assert all(r.count("|") == len(tasks()) + 5 and "nan" not in r for r in rows)
    for label in TARGET_LINES:       # the wording runs are compared by
        assert sum(line.startswith(f"- {label}: ") for line in md.splitlines()) == 1, label

    report = storage / "reports" / "quality"
    html = (report / "report.html").read_text()
    assert all(g in html for g in GROUPS)
    for png in ("bars.png", "curves.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (storage / "reports" / "quality-kd_switch" / "curves.png").is_file()
    assert "phase 13/13" in out


def test_second_run_resumes_without_redoing(first, tmp_path):
    storage, _ = first
    before = snapshot(storage)
    state_before = json.loads((storage / "quality-state.json").read_text())
    results = tmp_path / "RESULTS.md"
    results.write_text("# head\n<!-- quality-protocol-v2:begin -->\nOLD BLOCK\n<!-- quality-protocol-v2:end -->\ntail\n")
    r = quality(storage, "--update-results", str(results))
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    # the table and the figures' paths land between the markers; the figures are copied next to RESULTS.md
    text = results.read_text()
    assert text.startswith("# head\n<!-- quality-protocol-v2:begin -->\nRun: ") and text.endswith("-->\ntail\n")
    assert "OLD BLOCK" not in text and text.count("| searched recipe") == 1
    figures = tmp_path / "figures" / "quality-v2"
    for png in ("bars.png", "curves.png", "curves-kd_switch.png"):
        assert (figures / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(figures / png) in text
    assert str(storage) not in text.split("figures:")[1]
    for key in [g for g in GROUPS if g != "searched"] + ["sweep", "searched"]:
        assert f"{key}: complete in" in r.stdout and "skipped" in r.stdout, r.stdout[-3000:]
    assert snapshot(storage) == before                        # no trial ran, no teacher was added
    state = json.loads((storage / "quality-state.json").read_text())
    assert {k: v["runs"] for k, v in state["phases"].items() if k != "report"} == \
        {k: v["runs"] for k, v in state_before["phases"].items() if k != "report"}
    assert state["phases"]["report"]["runs"] == state_before["phases"]["report"]["runs"] + 1
    assert json.loads((storage / "quality.json").read_text())["table"].keys() == set(GROUPS)


def test_changed_budget_refused_before_compute(first):
    storage, _ = first
    before = snapshot(storage)
    r = quality(storage, "--seeds", "3")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "quality-budget.json" in r.stderr and "seeds=2" in r.stderr
    assert "Traceback" not in r.stderr
    assert snapshot(storage) == before


def test_results_file_without_markers_refused_before_compute(first, tmp_path):
    storage, _ = first
    before = snapshot(storage)
    results = tmp_path / "RESULTS.md"
    results.write_text("# no markers here\n")
    r = quality(storage, "--update-results", str(results))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert str(results) in r.stderr and "quality-protocol-v2:begin" in r.stderr
    assert snapshot(storage) == before and results.read_text() == "# no markers here\n"


def test_partial_reports_the_arms_done_and_names_the_rest(first, tmp_path):
    """--partial runs nothing: with only the teachers complete it writes their row and every target line as
    "not run yet", naming the missing arms (a protocol that spans sessions commits what it has)."""
    import shutil
    storage, _ = first
    part = tmp_path / "part"
    shutil.copytree(storage, part)
    for d in (part / "experiments").iterdir():
        if d.name != "q-teachers":
            shutil.rmtree(d)
    shutil.rmtree(part / "reference")
    before = snapshot(part)
    r = quality(part, "--partial")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    result = json.loads((part / "quality.json").read_text())
    assert list(result["table"]) == ["teachers"] and result["missing"] == GROUPS[:1] + GROUPS[2:]
    md = (part / "quality.md").read_text()
    for label in TARGET_LINES:
        assert f"- {label}: not run yet" in md
    assert snapshot(part) == before                          # nothing trained
