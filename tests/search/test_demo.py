"""`bam-search demo --quick` end to end (real Ray, tiny model, synthetic tasks), then its report in Chromium."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo(tmp_path_factory, cache_dir):
    storage = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if k != "BAM_GLUE_DIR"}          # the built-in synthetic tasks
    r = subprocess.run([sys.executable, "-m", "search.cli", "demo", "--model", "tiny", "--quick", "--trials", "4",
                        "--storage", str(storage)], capture_output=True, text=True, timeout=1200, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return storage, r.stdout


def test_demo_artefacts(demo):
    from search.wandb_file import read_run
    from trainables.recipe import load_recipe
    storage, out = demo
    report = storage / "reports" / "demo-sweep"
    for line in ("report:", "recipe:", "W&B runs:"):
        assert line in out
    html = (report / "report.html").read_text()
    for task in ("syn_sentiment", "syn_pairmatch", "syn_similarity", "syn_noisy"):
        assert task in html
    assert "teachers" in html and "student" in html
    for png in ("bars.png", "curves.png"):
        data = (report / png).read_bytes()
        assert data[:8] == PNG and len(data) > 5000
        assert f'src="{png}"' in html
    recipe = load_recipe(report / "best_recipe.yaml")
    assert recipe.tasks == ("syn_sentiment", "syn_pairmatch", "syn_similarity", "syn_noisy")
    first = (report / "best_recipe.yaml").read_text().splitlines()[0]
    assert first.startswith("# bam-search train ") and " --seeds 3 --first-seed 1 " in first   # not the picked run
    assert "student (best of 4 trials, picked on these dev examples) " in out      # the headline: an optimistic pick
    trials = [d for d in (storage / "experiments" / "demo-sweep").iterdir() if (d / "params.json").exists()]
    assert len(trials) == 4
    runs = [read_run(p) for p in (storage / "wandb").rglob("run-*.wandb")]
    assert sum(r["run"]["job_type"] == "teacher" for r in runs) == 4
    assert sum(r["run"]["job_type"] == "student" for r in runs) == 4
    comparison = json.loads((report / "comparison.json").read_text())
    assert {row["task"] for row in comparison["tasks"]} == set(recipe.tasks)
    assert comparison["picked"] == {"student": {"trials": 4, "experiment": "demo-sweep", "metric": "glue_avg"}}


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_renders_in_chromium(demo, tmp_path):
    storage, _ = demo
    page = storage / "reports" / "demo-sweep" / "report.html"
    # the page's images, measured by the browser itself: naturalWidth > 0 means the PNG decoded
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", """<script>
      window.addEventListener('load', () => {
        const imgs = [...document.images].map(i => [i.getAttribute('src'), i.naturalWidth, i.naturalHeight]);
        document.title = 'IMGS:' + JSON.stringify(imgs);
      });</script></body>"""))
    for png in ("bars.png", "curves.png"):
        shutil.copy(page.parent / png, tmp_path / png)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(["chromium", *flags, "--virtual-time-budget=3000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    title = dom.split("<title>")[1].split("</title>")[0]
    assert title.startswith("IMGS:"), title
    imgs = json.loads(title[5:].replace("&quot;", '"'))
    assert {src for src, _, _ in imgs} >= {"bars.png", "curves.png"}
    assert all(w > 100 and h > 100 for _, w, h in imgs), imgs
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", *flags, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == PNG and shot.stat().st_size > 20000
