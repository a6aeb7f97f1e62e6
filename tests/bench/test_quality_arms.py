"""bench/quality.py --arms: a subset of the protocol's phases, for a session that cannot run all of them.

The protocol takes ~8 h of a 2-core machine and its store lives with the machine; when the host changes, a
session may only have time for the phases one target line needs (the searched recipe: teachers, the best
fixed recipes, the sweep, the retrain). Bad --arms is refused before anything loads; the teachers always
run first (every arm is compared with them, the KD arms and the sweep learn from them); the line for the
best fixed recipe names the fixed recipes it was picked from and those this run left out.
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import quality  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TASKS = ["cola", "sst2", "mrpc", "stsb", "rte"]


def tiny_budget() -> "quality.Budget":
    return quality.Budget(tasks=tuple(TASKS), model="tiny", seeds=2, trials=4, epochs=1.0, max_train_examples=None,
                          max_dev_examples=None, max_length=64, lr=1e-4, pooling="mean", evals=2)


def test_arms_keep_the_given_order_with_the_teachers_first():
    assert quality.parse_arms(None) is None
    assert quality.parse_arms("kd_switch,sweep,searched") == ("teachers", "kd_switch", "sweep", "searched")
    assert quality.parse_arms("sweep, teachers ,searched") == ("teachers", "sweep", "searched")


@pytest.mark.parametrize("text, fault", [("kd_swich", "unknown phase kd_swich"), (",", "unknown phase (none given)"),
                                         ("searched", "needs sweep before it"),
                                         ("searched,sweep", "needs sweep before it"),
                                         ("sweep,sweep", "named twice")])
def test_bad_arms_are_refused(text, fault):
    with pytest.raises(quality.UserError, match=re.escape(fault)):
        quality.parse_arms(text)


def test_bad_arms_exit_2_with_one_line_before_loading_anything(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "bench" / "quality.py"), "--quick", "--storage", str(tmp_path / "s"),
                        "--arms", "bam,sweep"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "bench/quality.py: error: --arms bam,sweep: unknown phase bam; phases: " + ", ".join(quality.PHASE_KEYS)]
    assert not (tmp_path / "s").exists()


def test_only_the_selected_phases_run_in_the_given_order(tmp_path):
    budget = tiny_budget()
    p = quality.Protocol(budget=budget, storage=tmp_path, glue_dir=None, rates=quality.DEFAULT_RATES["tiny"],
                         arms=quality.parse_arms("kd_switch,sweep,searched,bam_linear"))
    assert [k for k, _, _ in p.phases()] == ["teachers", "kd_switch", "sweep", "searched", "bam_linear"]
    assert [k for k, _, _ in quality.Protocol(budget=budget, storage=tmp_path, glue_dir=None,
                                              rates=quality.DEFAULT_RATES["tiny"]).phases()] == list(quality.PHASE_KEYS)
    assert p.not_selected() == ["reference", "multitask", "lu_joint", "lu_sequential", "multitask_l3", "bam_l3",
                                "kd_switch_l3"]


def test_best_fixed_names_what_it_was_picked_from_and_the_report_what_was_left_out(tmp_path):
    budget = tiny_budget()
    p = quality.Protocol(budget=budget, storage=tmp_path, glue_dir=None, rates=quality.DEFAULT_RATES["tiny"],
                         arms=quality.parse_arms("bam_linear,kd_switch,sweep,searched"))
    row = {"label": "x", "n": 2, "tasks": {}, "glue_avg": {"mean": 70.0, "sd": 0.0}}
    table = {"bam_linear": row, "kd_switch": {**row, "glue_avg": {"mean": 71.0, "sd": 0.0}}}
    targets = p.targets([], table, TASKS)
    best = targets["searched_vs_best_fixed"]
    assert best["baseline"] == "kd_switch" and best["fixed_compared"] == ["bam_linear", "kd_switch"]
    assert best["fixed_missing"] == ["multitask", "lu_joint", "lu_sequential"]
    best.update(value=0.5, met=True)                    # as if the searched arm were in
    (line,) = [x for x in quality.target_lines(targets) if x.startswith("- searched recipe vs best fixed")]
    assert line == ("- searched recipe vs best fixed recipe, GLUE average: +0.50 [kd_switch, the best of bam_linear, "
                    "kd_switch; not in this run: multitask, lu_joint, lu_sequential] (target ≥ +0): met")
    result = {"table": {}, "targets": targets, "unreached": {}, "not_selected": p.not_selected(),
              "missing": ["reference", "multitask", "searched"], "report": {}, "group_reports": {}}
    text = quality.markdown_section(result, budget=budget, meta={"date": "d", "machine": "m", "compute": "c",
                                                                  "wall": "w"})
    assert "- not run yet: searched (the protocol resumes from its storage)" in text
    assert "- not in this run (`--arms`): reference, multitask" in text


def test_a_target_not_run_yet_names_the_arms_it_needs():
    budget = tiny_budget()
    p = quality.Protocol(budget=budget, storage=Path("unused"), glue_dir=None, rates=quality.DEFAULT_RATES["tiny"])
    lines = quality.target_lines(p.targets([], {}, TASKS))
    assert ("- searched recipe vs best fixed recipe, GLUE average: not run yet (target ≥ +0; needs arm searched and "
            "one of the fixed recipes (multitask, bam_linear, lu_joint, lu_sequential, kd_switch))") in lines
    assert ("- BAM (linear) vs plain multi-task, GLUE average: not run yet (target ≥ +0; needs arms multitask and "
            "bam_linear)") in lines
