"""bench/import_profile.py: reading CPython's import-time logs of Ray's processes and replaying them."""
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import import_profile  # noqa: E402

# the format CPython writes with -X importtime: self and cumulative microseconds, the name indented by depth
LOG = """\
import time: self [us] | cumulative | imported package
import time:       100 |        100 |   _io
import time:        50 |        150 | io
import time:       200 |        200 |     pandas._libs
import time:       300 |        500 |   pandas
import time:       400 |        900 | ray.data
some other line a worker printed
import time:        10 |         10 | json
"""


def test_parse_counts_modules_self_time_roots_and_watched_packages():
    rec = import_profile.parse(LOG)
    assert rec["modules"] == 6
    assert rec["import_s"] == pytest.approx((100 + 50 + 200 + 300 + 400 + 10) / 1e6)
    assert rec["roots"] == ["io", "ray.data", "json"]            # depth 0 only, in order
    assert rec["packages_s"] == {"pandas": 0.0005, "ray.data": 0.0009}


def test_read_logs_names_processes_by_pid_and_groups_by_kind(tmp_path):
    (tmp_path / "worker-ab12-01000000-111.err").write_text(LOG)
    (tmp_path / "worker-cd34-01000000-222.err").write_text(LOG.replace("| json", "| csv"))
    (tmp_path / "worker-ef56-01000000-333.err").write_text("no imports logged\n")
    (tmp_path / "worker-ab12-01000000-111.out").write_text(LOG)            # stdout files are not read
    procs = import_profile.read_logs(tmp_path, {111: "TrainController"})
    assert [(p["pid"], p["actor"]) for p in procs] == [(111, "TrainController"), (222, "(task / idle)")]
    kinds = import_profile.by_kind(procs)
    assert kinds["TrainController"]["processes"] == 1 and kinds["TrainController"]["modules"] == 6
    assert kinds["TrainController"]["packages"] == ["pandas", "ray.data"]
    table = import_profile.markdown(kinds, {"TrainController": {"processes": 1, "cpu_s": 4.0}})
    assert "| TrainController | 1 | 6 | 0.00 |  | 4.0 | pandas, ray.data |" in table


def test_replay_imports_in_a_fresh_interpreter_and_counts_failures():
    bare = import_profile.replay_cpu([], repeats=1)
    r = import_profile.replay_cpu(["json", "__main__", "json", "no_such_module_bam"], repeats=2)
    assert r["failed_imports"] == 1 and len(r["cpu_s_runs"]) == 2
    assert r["modules"] > bare["modules"]                          # json and what it imports
    assert r["cpu_s"] >= 0
    out = subprocess.run([sys.executable, "-c", "import sys; print('json' in sys.modules)"], capture_output=True,
                         text=True).stdout.strip()
    assert out == "False"                                         # so the count above is the replay's own


def test_reference_sets_each_include_what_they_name():
    assert import_profile.REFERENCE_SETS["python (nothing)"] == []
    assert all(mods[0] in ("ray", "torch") for name, mods in import_profile.REFERENCE_SETS.items() if mods)
    table = import_profile.reference_markdown({"ray": {"cpu_s": 0.4, "modules": 900}})
    assert table.splitlines()[-1] == "| ray | 0.40 | 900 |"
