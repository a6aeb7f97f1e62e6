"""The live table every long command shows (issue 20, item 1): on a terminal a table whose rows do not wrap,
with evaluations done of the run's, the best trial so far and the errored trials; elsewhere one plain line per
event; and while it runs, Ray's, Tune's and Optuna's console output goes to a file (stderr stays ours).
No Ray: Tune's callback hooks are called with stand-in trials."""
from __future__ import annotations

import io
import logging
import sys
from types import SimpleNamespace

from rich.console import Console

from search.progress import LiveTable, console_to_log, terminal

LONG = "train_driver_fn_5f2a1_00003"


def trial(tid: str, **params):
    return SimpleNamespace(trial_id=tid, config={"params": params, "loop": {"recipe": {"evals": 8}}})


def drive(table: LiveTable) -> None:
    a = trial(LONG, **{"optim.lr": 0.00031622, "anneal.schedule": "linear", "switch.criterion": "patience",
                       "sampling.kind": "annealed", "mtl.weighting": "uncertainty"})
    b = trial("b", **{"optim.lr": 0.003})
    table.setup()
    table.on_trial_start(0, [], a)
    table.on_trial_start(0, [], b)
    table.on_trial_result(0, [], a, {"training_iteration": 3, "glue_avg": 71.25, "switched": "rte"})
    table.on_trial_result(0, [], b, {"training_iteration": 1, "glue_avg": 60.0})
    table.on_trial_error(0, [], b)


def test_terminal_table_rows_do_not_wrap_and_title_has_best_and_errors():
    out = io.StringIO()
    table = LiveTable(title="sweep", total_trials=4, concurrency=2,
                      console=Console(file=out, force_terminal=True, width=110, color_system=None))
    drive(table)
    table.live.refresh()
    table.on_experiment_end([])
    text = out.getvalue()
    assert LONG in text                                     # the trial name on one line, not cut into the state
    assert "3/8" in text and "71.25" in text and "ERROR" in text
    assert "best 71.25 (train_driver_fn_5f2a1_00003)" in text and "errored: b" in text
    row = next(line for line in text.splitlines() if LONG in line and "best" not in line)
    assert "RUNNING" in row and "│ 1 " in row               # state and tasks switched on the trial's own line
    last = text[text.rindex("┏"):]                          # the last frame drawn: one line per trial
    assert len([line for line in last.splitlines() if line.startswith("│")]) == 2, last


def test_plain_lines_when_stdout_is_not_a_terminal():
    out = io.StringIO()
    table = LiveTable(title="sweep", total_trials=2, concurrency=2, console=Console(file=out, width=80))
    drive(table)
    table.on_experiment_end([])
    lines = out.getvalue().splitlines()
    assert table.live is None
    assert f"sweep {LONG}: evaluation 3/8  glue_avg 71.25  best 71.25  switched rte" in lines
    assert any(line.startswith("sweep b: ERROR after") for line in lines)
    assert lines[-1] == "sweep: ended; best 71.25 (train_driver_fn_5f2a1_00003); errored: b"
    assert all(len(line) < 200 for line in lines)            # no table art, no control codes


def test_eta_from_the_running_trials_rate_before_any_finished():
    table = LiveTable(title="sweep", total_trials=4, concurrency=2, console=Console(file=io.StringIO()))
    t = trial("a")
    table.on_trial_start(0, [], t)
    table.rows["a"]["t0"] -= 100.0                           # 2 of 8 evaluations in 100 s: 400 s a trial
    table.on_trial_result(0, [], t, {"training_iteration": 2, "glue_avg": 50.0})
    assert table._eta() == "13m20s"                          # 4 trials x 400 s over 2 slots


def test_console_to_log_takes_rays_output_and_leaves_stderr(tmp_path, capsys):
    log = tmp_path / "exp" / "driver.log"
    real = sys.stdout
    with console_to_log(log):
        print("Configuration for experiment sweep")          # what Tune prints
        logging.getLogger("ray.tune.utils.util").warning("The `callbacks.on_step_end` operation took 0.9 s")
        logging.getLogger("optuna").warning("A new study created in memory")
        print("bam-search: warning: kept on the console", file=sys.stderr)
        assert terminal() is real
    print("after")
    text = log.read_text()
    assert "Configuration for experiment" in text and "operation took" in text and "new study" in text
    captured = capsys.readouterr()
    assert "Configuration" not in captured.out and captured.out == "after\n"
    assert "kept on the console" in captured.err and "operation took" not in captured.err


def test_a_large_sweep_shows_what_fits_and_draws_at_the_refresh_rate_not_per_result():
    """256 trials on a 30-line terminal: running and errored trials and the best finished ones are drawn, the rest
    counted in one line; results do not draw the table (rich's refresh thread does, twice a second)."""
    import time
    out = io.StringIO()
    table = LiveTable(title="sweep", total_trials=256, concurrency=32,
                      console=Console(file=out, force_terminal=True, width=120, height=30, color_system=None))
    table.setup()
    renders = []
    real = table._render
    table._render = lambda: renders.append(1) or real()
    trials = [trial(f"t{i:03d}", **{"optim.lr": 1e-4 * (i + 1)}) for i in range(256)]
    t0 = time.monotonic()
    for i, t in enumerate(trials[:250]):                     # 250 finished, score i / 10
        table.on_trial_start(0, [], t)
        table.on_trial_result(0, [], t, {"training_iteration": 8, "glue_avg": i / 10})
        table.on_trial_complete(0, [], t) if i != 7 else table.on_trial_error(0, [], t)
    for t in trials[250:]:                                   # 6 running
        table.on_trial_start(0, [], t)
        table.on_trial_result(0, [], t, {"training_iteration": 2, "glue_avg": 1.0})
    elapsed = time.monotonic() - t0
    assert len(renders) <= 2 * elapsed + 2, (len(renders), elapsed)
    shown, more = table._shown()
    ids = [tid for tid, _ in shown]
    assert len(shown) == 30 - 8 - 1 and ids == sorted(ids)
    assert {f"t{i}" for i in range(250, 256)} <= set(ids) and "t007" in ids     # running, errored
    assert "t249" in ids and "t248" in ids and "t000" not in ids                 # the best finished
    assert more == "… 235 more trials not shown (235 done)"
    table.on_experiment_end([])
    last = out.getvalue()[out.getvalue().rindex("┏"):]
    assert "235 more trials not shown" in last and "t249" in last and "t000" not in last
