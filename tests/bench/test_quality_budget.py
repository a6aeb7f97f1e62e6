"""bench/quality.py gives the compact arms and Lu et al.'s sequential arm their own epochs and evaluations (stop 28:
at the students' 3 epochs the compact arms were unconverged and the sequential arm never reached RTE in 2 of 3
runs), and every other student arm the shared budget."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import quality  # noqa: E402


def test_each_arm_gets_its_own_budget(tmp_path):
    budget = quality.Budget(tasks=("syn_noisy", "syn_pairmatch"), model="tiny", seeds=2, trials=2, epochs=3.0,
                            max_train_examples=100, max_dev_examples=50, max_length=64, lr=1e-4, pooling="mean",
                            evals=6, compact_epochs=10.0, compact_evals=10, sequential_epochs=6.0,
                            sequential_evals=36)
    p = quality.Protocol(budget=budget, storage=tmp_path, glue_dir=None, rates=quality.DEFAULT_RATES["tiny"])
    got = {k: p.student_recipe(k) for k, arm in quality.ARMS.items() if arm.kind == "student"}
    for key, r in got.items():
        want = {"lu_sequential": (6.0, 36)}.get(key, (10.0, 10) if quality.ARMS[key].compact else (3.0, 6))
        assert (r["optim"]["epochs"], r["evals"]) == want, key
        assert r["optim"]["lr"] == 1e-4, key
    assert got["lu_sequential"]["switch"]["order"] == ["syn_noisy", "syn_pairmatch"]
    assert all(got[k]["student"]["num_layers"] == 3 for k in ("multitask_l3", "bam_l3", "kd_switch_l3"))


def test_the_defaults_and_quick_set_them(tmp_path):
    args = quality.parse_args(["--quick", "--storage", str(tmp_path)])
    budget, _, _ = quality.configure(args)
    assert (budget.compact_epochs, budget.compact_evals) == (budget.epochs, budget.evals)      # --quick: as students
    assert (budget.sequential_epochs, budget.sequential_evals) == (budget.epochs, 3 * budget.evals)
    full, _, _ = quality.configure(quality.parse_args(["--storage", str(tmp_path), "--glue-dir", str(tmp_path)]))
    assert (full.compact_epochs, full.compact_evals, full.sequential_epochs, full.sequential_evals) == (10, 10, 6, 36)


def test_paths_written_to_results_name_no_machine():
    """The report's path in RESULTS.md: repository-relative, else under ~, never the user's home spelt out."""
    assert quality._rel(quality.REPO / "bench" / "x.png") == "bench/x.png"
    assert quality._rel(Path.home() / ".cache" / "r.html") == "~/.cache/r.html"


def test_an_interrupted_phase_keeps_its_time(tmp_path):
    """Run 4 (RESULTS 15): the sweep was interrupted after ~1 h and finished in a second invocation; the report's
    'took ... in all (summed over every invocation that ran them)' counted only the second."""
    import pytest
    from rich.console import Console
    budget = quality.Budget(tasks=("syn_noisy",), model="tiny", seeds=1, trials=1, epochs=1.0,
                            max_train_examples=10, max_dev_examples=10, max_length=16, lr=1e-4, pooling="mean", evals=1)
    p = quality.Protocol(budget=budget, storage=tmp_path, glue_dir=None, rates=quality.DEFAULT_RATES["tiny"],
                         console=Console(quiet=True))
    p.state, p._pending, p._total, p.estimates = quality.State(tmp_path), {"sweep"}, 1, {"sweep": 60.0}
    p.t0 = quality.time.time()
    p.done = lambda key: False
    p.left_share = lambda key: 1.0

    def interrupted():
        quality.time.sleep(0.05)
        raise quality.Interrupted()

    with pytest.raises(quality.Interrupted):
        p.phase(1, "sweep", "sweep", run=interrupted)
    first = quality.State(tmp_path).data["phases"]["sweep"]
    assert first["runs"] == 1 and first["seconds"] >= 0.05
    p.phase(1, "sweep", "sweep", run=lambda: quality.time.sleep(0.02))
    both = quality.State(tmp_path).data["phases"]["sweep"]
    assert both["runs"] == 2 and both["seconds"] >= first["seconds"] + 0.02
