"""Issue 20 item 6, without Ray: the Pareto front (max score; min latency at batch 1 and parameters) on known
points, latency measured on the driver per architecture and cached in the experiment, ``best --pareto``.
Timings are never asserted (speed is not a test's business): only their structure."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from search import pareto
from search.cli import main
from search.pareto import architecture, pareto_front
from test_list_dry_run import _row, fake_experiment


def _p(score, ms, params) -> dict:
    return {"score": score, "ms_1": ms, "params": params}


def test_the_front_on_known_points():
    pts = [_p(80, 10, 100), _p(70, 5, 50), _p(75, 10, 100), _p(80, 12, 100), _p(60, 2, 60), _p(60, 6, 50)]
    # 2 is dominated by 0 (worse score, same rest); 3 by 0 (slower); 5 by 1 (worse score and slower)
    assert pareto_front(pts) == [0, 1, 4]


def test_ties_on_every_axis_all_stay_and_one_trial_is_its_own_front():
    assert pareto_front([_p(70, 5, 50), _p(70, 5, 50)]) == [0, 1]
    assert pareto_front([_p(70, 5, 50)]) == [0]
    assert pareto_front([]) == []
    # equal score and latency, fewer parameters: strictly better on one axis, so it dominates
    assert pareto_front([_p(70, 5, 50), _p(70, 5, 40)]) == [1]


def test_architecture_ignores_the_weights_and_the_method():
    a = {"model": "m", "tasks": ["b", "a"], "student": {"init": "extract", "num_layers": 2}, "anneal": {"p0": 0.1}}
    b = {"model": "m", "tasks": ["a", "b"], "student": {"init": "random", "num_layers": 2}, "optim": {"lr": 1}}
    assert pareto.architecture_key(architecture(a)) == pareto.architecture_key(architecture(b))
    c = {**a, "student": {"init": "extract", "num_layers": 3}}
    assert pareto.architecture_key(architecture(a)) != pareto.architecture_key(architecture(c))


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _recipe(layers: int) -> dict:
    return {"model": "tiny", "tasks": ["syn_noisy", "syn_pairmatch"], "precision": "fp32",
            "student": {"init": "random", "num_layers": layers},
            "data": {"max_dev_examples": 16, "max_length": 32}}


def test_two_architectures_are_measured_once_each_and_cached(tmp_path, cache_dir, one_thread):
    st = tmp_path / "st"
    (st / "experiments" / "e").mkdir(parents=True)
    calls = []

    def counted(recipe, **kw):
        calls.append(recipe["student"]["num_layers"])
        return pareto.measure(recipe, repeats=1, per_task=2, **kw)
    recipes = {"t2": _recipe(2), "t2b": {**_recipe(2), "optim": {"lr": 0.1}}, "t4": _recipe(4)}
    got = pareto.latencies(str(st), "e", recipes, measure_fn=counted)
    assert sorted(calls) == [2, 4]                                  # one measurement per architecture
    assert got["t2"]["params"] == got["t2b"]["params"] < got["t4"]["params"]
    assert (got["t2"]["num_layers"], got["t4"]["num_layers"]) == (2, 4)
    for f in got.values():
        assert set(f["ms_per_example"]) == {"1", "32"} and all(v > 0 for v in f["ms_per_example"].values())
    cached = json.loads((st / "experiments" / "e" / pareto.LATENCY_FILE).read_text())
    assert cached["machine"]["torch_threads"] == 1 and len(cached["architectures"]) == 2
    again = pareto.latencies(str(st), "e", recipes, measure_fn=counted)
    assert sorted(calls) == [2, 4] and again == got                 # read back, not measured again


def _fake_measure(recipe, **kw) -> dict:
    """Figures by depth (a test never times anything): deeper = more parameters and slower."""
    n = recipe["student"]["num_layers"]
    return {"params": 1_000_000 * n, "num_layers": n, "hidden_size": 32, "ms_per_example": {"1": float(n), "32": n / 4}}


@pytest.fixture
def sweep(tmp_path, monkeypatch):
    """A fake sweep over depths 2, 4, 4, 6 scoring 60, 70, 65, 72: trial 2 (as deep as trial 1, worse) is
    dominated."""
    monkeypatch.delenv("BAM_STORAGE", raising=False)
    monkeypatch.setattr(pareto, "measure", _fake_measure)
    st = tmp_path / "st"
    params = [{"student.num_layers": n} for n in (2, 4, 4, 6)]
    fake_experiment(st, "sw", job="student", params=params,
                    rows=[[_row(i, 10, s, 1.0)] for i, s in enumerate([60.0, 70.0, 65.0, 72.0])])
    return st


def test_best_pareto_json_lists_the_front(sweep, capsys):
    st = sweep
    assert main(["best", "sw", "--storage", str(st), "--pareto", "--json"]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert [r["trial_id"] for r in doc["front"]] == ["ab12c_00000", "ab12c_00001", "ab12c_00003"]   # by latency
    assert [r["num_layers"] for r in doc["front"]] == [2, 4, 6] and doc["metric"] == "glue_avg"
    assert {r["trial_id"]: r["on_front"] for r in doc["trials"]}["ab12c_00002"] is False
    assert doc["architectures"] == 3
    assert main(["best", "sw", "--storage", str(st), "--pareto"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].startswith("Pareto front of sw: 3 of 4 scored trials") and len(text) == 5
    assert f"latency measured on {pareto.machine_line(pareto.machine())}, cached in" in text[0]   # the CPU, named
    assert doc["machine"] == pareto.machine_line(pareto.machine())


def test_the_machine_names_its_speed_flags_and_digests_all_of_them(monkeypatch):
    """What a latency cache is keyed on (figures from another machine are measured again): the CPU's family,
    model and stepping, its speed flags by name and a digest of every flag, read from /proc/cpuinfo's
    tab-padded keys (the digest of no flags at all would make every machine the same)."""
    from search import host
    cpuinfo = {"model name": "AMD EPYC", "cpu family": "25", "model": "17", "stepping": "1",
               "flags": "fpu sse2 avx2 avx512f avx512_bf16"}
    monkeypatch.setattr(host, "_cpuinfo", lambda: dict(cpuinfo))
    m = pareto.machine()
    assert m["cpu"] == "AMD EPYC" and m["family_model_stepping"] == "25/17/1"
    assert m["cpu_flags"] == ["avx2", "avx512f", "avx512_bf16"]
    assert m["cpu_flags_sha"] == hashlib.sha256(cpuinfo["flags"].encode()).hexdigest()[:12]
    cpuinfo["flags"] += " amx_tile"
    assert pareto.machine()["cpu_flags_sha"] != m["cpu_flags_sha"]
    assert "CPU flags avx2/avx512f/avx512_bf16" in pareto.machine_line(m)


def test_pareto_with_export_is_refused_in_one_line(tmp_path, capsys):
    assert main(["best", "sw", "--storage", str(tmp_path), "--pareto", "--export", "x.yaml"]) == 2
    err = capsys.readouterr().err
    assert "--pareto" in err and len(err.strip().splitlines()) == 1


RANGE_SPACE = ("base:\n  student: {init: extract, num_layers: 3}\nparameters:\n"
               "  student.num_layers: {distribution: int_uniform, min: 2, max: 5}\n")


@pytest.mark.parametrize("space, file, deepest", [("compact", "compact.yaml", 6), (RANGE_SPACE, "range.yaml", 5)],
                         ids=["compact-values", "int-uniform-range"])
def test_a_space_deeper_than_the_base_model_is_refused_before_ray(space, file, deepest, tmp_path, monkeypatch,
                                                                  capsys):
    """A space's student.num_layers past a 4-layer base model (compact.yaml's values up to 6; an int_uniform
    range whose max is 5): one line naming the space's line, exit 2."""
    from transformers import BertConfig, BertModel

    from trainables.model import TINY, load_tokenizer
    monkeypatch.delenv("BAM_STORAGE", raising=False)
    tok = load_tokenizer("tiny")
    BertModel(BertConfig(vocab_size=len(tok), **{**TINY, "num_hidden_layers": 4}),
              add_pooling_layer=False).save_pretrained(tmp_path / "deep4")
    tok.save_pretrained(tmp_path / "deep4")
    if space != "compact":
        (tmp_path / file).write_text(space)
        space = str(tmp_path / file)
    capsys.readouterr()                                            # the save's progress bar
    argv = ["sweep", space, "--model", str(tmp_path / "deep4"), "--tasks", "syn_noisy",
            "--storage", str(tmp_path / "st"), "--dry-run"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{file}:" in err, err
    assert f"student.num_layers={deepest}" in err and "at most the base model's 4 layers" in err


def test_the_report_plots_the_front_and_chromium_shows_it(sweep, tmp_path):
    import shutil
    import subprocess

    from search.report import write_report
    assert pareto.architecture_count(str(sweep), "sw") == 3
    doc = pareto.pareto_data(str(sweep), "sw")
    runs = [{"group": g, "seed": s, "scores": {"syn_noisy": v + s}} for g, v in (("teachers", 60.0), ("student", 70.0))
            for s in (1, 2)]
    out = write_report(runs=runs, out_dir=tmp_path / "rep", title="t", pareto=doc)
    assert Path(out["pareto"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = Path(out["html"]).read_text()
    assert 'src="pareto.png"' in page and "Quality vs size and latency" in page
    assert page.count("<tr>") >= 3 and "ab12c_00002" not in page.split("Quality vs size")[1]   # dominated: off
    assert "](pareto.png)" in Path(out["markdown"]).read_text()
    assert json.loads(Path(out["json"]).read_text())["pareto"]["front"][0]["trial_id"] == "ab12c_00000"
    if not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed")
    probe = tmp_path / "rep" / "probe.html"                # the page's images, as the browser decodes them
    probe.write_text(page.replace("</body>", """<script>window.addEventListener('load', () => {
      document.title = 'IMGS:' + JSON.stringify([...document.images].map(i => [i.getAttribute('src'),
        i.naturalWidth]));});</script></body>"""))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(["chromium", *flags, "--virtual-time-budget=3000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    title = dom.split("<title>")[1].split("</title>")[0]
    imgs = dict(json.loads(title[5:].replace("&quot;", '"')))
    assert imgs.get("pareto.png", 0) > 100, title
