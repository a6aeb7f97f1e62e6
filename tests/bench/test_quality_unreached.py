"""bench/quality.py: an arm whose runs never reached a task is named, not compared (RESULTS 15, stop 27).

Lu et al.'s sequential setting joins a task only once the previous ones switched; at the protocol's budget
each of its 3 runs switched CoLA, SST-2 and MRPC and ended before STS-B and RTE joined, and the report
stopped at "no score for rte". A GLUE average over the 3 tasks it reached would not be comparable with the
others' over 5 (nor one over the seeds that got further), so the arm gets no row, no target line and is no
candidate for the best fixed recipe; a line under the table says what it reached and what it never did.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import quality  # noqa: E402

TASKS = ["cola", "sst2", "mrpc", "stsb", "rte"]


def trial(scores: dict, step: int) -> dict:
    row = {f"{t}/score": v for t, v in scores.items()} | {"step": step}
    return {"trial_id": f"t{step}", "best_row": row, "selected_step": step}


def test_an_arm_that_scored_every_task_is_compared():
    runs = [trial(dict.fromkeys(TASKS, 50.0), 900), trial(dict.fromkeys(TASKS, 60.0), 938)]
    assert quality.arm_unreached(runs, TASKS) is None


def test_an_arm_with_a_run_that_never_reached_a_task_is_not_compared_and_says_what_it_reached():
    three = {"cola": 10.0, "sst2": 88.0, "mrpc": 80.0}
    runs = [trial(three, 938), trial({**three, "cola": 14.0}, 880), trial({**three, "stsb": 40.0}, 938)]
    u = quality.arm_unreached(runs, TASKS)
    # stsb reached by one run of three: still not every run's, so the arm is out (no survivor's average)
    assert u["missed"] == {"stsb": 2, "rte": 3} and u["runs"] == 3
    assert u["reached"] == {"cola": [10.0, 14.0, 10.0], "sst2": [88.0] * 3, "mrpc": [80.0] * 3}
    (line,) = quality.unreached_lines({"lu_sequential": u})
    assert "Lu et al., sequential (lu_sequential): **not compared**" in line
    assert "never reached STS-B in 2 of 3 runs, RTE in 3 of 3 runs." in line and "not a candidate for the best fixed recipe" in line
    assert "CoLA 11.33 ± 2.31 (10.00, 14.00, 10.00)" in line and "steps 938, 880, 938" in line


def test_the_unreached_arm_is_left_out_of_best_fixed_and_of_not_run_yet(tmp_path):
    """The best fixed recipe is picked among the table's arms; an unreached arm is not one, nor 'not run yet'."""
    budget = quality.Budget(tasks=tuple(TASKS), model="tiny", seeds=2, trials=4, epochs=1.0, max_train_examples=None,
                            max_dev_examples=None, max_length=64, lr=1e-4, pooling="mean", evals=2)
    p = quality.Protocol(budget=budget, storage=tmp_path, glue_dir=None, rates=quality.DEFAULT_RATES["tiny"])
    row = {"label": "x", "n": 2, "tasks": {}, "glue_avg": {"mean": 70.0, "sd": 0.0}}
    targets = p.targets([], {"multitask": row, "kd_switch": {**row, "glue_avg": {"mean": 71.0, "sd": 0.0}}}, TASKS)
    assert targets["searched_vs_best_fixed"]["baseline"] == "kd_switch"
    u = quality.arm_unreached([trial({"cola": 1.0}, 10)], TASKS)
    result = {"table": {}, "targets": targets, "unreached": {"lu_sequential": u}, "missing": ["searched"],
              "report": {}, "group_reports": {}}
    text = quality.markdown_section(result, budget=budget, meta={"date": "d", "machine": "m", "compute": "c",
                                                                  "wall": "w"})
    assert "- not run yet: searched (" in text and "lu_sequential): **not compared**" in text
