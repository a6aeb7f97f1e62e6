"""User mistakes: one line on stderr, exit code 2, no traceback, before Ray starts."""
import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "search.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=cwd)


@pytest.mark.parametrize("args, needle", [
    (["teachers", "--tasks", "rte,nope", "--model", "tiny", "--storage", "{tmp}"], "nope"),
    (["teachers", "--tasks", "rte", "--glue-dir", "{tmp}/missing", "--storage", "{tmp}"], "missing"),
    (["teachers", "--tasks", "syn_noisy", "--set", "optim.lrr=1", "--storage", "{tmp}"], "optim.lrr"),
    (["sweep", "{tmp}/nospace.yaml", "--tasks", "syn_noisy", "--storage", "{tmp}"], "nospace.yaml"),
    (["train", "{tmp}/norecipe.yaml", "--storage", "{tmp}"], "norecipe.yaml"),
    (["status", "nothing-here", "--storage", "{tmp}"], "nothing-here"),
    (["teachers", "--tasks", "rte", "--glue-dir", "{tmp}/glue", "--storage", "{tmp}"], "RTE/train.tsv:3"),
    # train's --glue-dir is used (it was once ignored in favour of BAM_GLUE_DIR)
    (["train", "{repo}/recipes/multitask.yaml", "--set", "tasks=[rte]", "--glue-dir", "{tmp}/missing", "--storage", "{tmp}"],
     "missing"),
    # nothing listens there: one line at once, not minutes of Ray's GCS retries
    (["sweep", "smoke", "--tasks", "syn_noisy", "--model", "tiny", "--set", "teacher.use=false",
      "--address", "127.0.0.1:1", "--storage", "{tmp}"], "no Ray cluster answers there"),
])
def test_user_errors_are_one_line_exit_2(tmp_path, args, needle):
    glue = tmp_path / "glue" / "RTE"
    glue.mkdir(parents=True)
    (glue / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tonly three\tentailment\n")
    (glue / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    repo = str(Path(__file__).resolve().parents[2])
    args = [a.replace("{tmp}", str(tmp_path)).replace("{repo}", repo) for a in args]
    r = run_cli(*args)
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip() and "Warning" not in l and "warn(" not in l]
    assert len(lines) == 1 and lines[0].startswith("bam-search: error:"), r.stderr
    assert needle in lines[0]
    assert "Traceback" not in r.stderr


def test_help_shows_examples():
    r = run_cli("--help")
    assert r.returncode == 0 and "examples:" in r.stdout and "bam-search sweep" in r.stdout
    r = run_cli("sweep", "--help")
    assert "example:" in r.stdout and "--scheduler" in r.stdout


def test_version():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip().startswith("bam-search ")


def test_spaces_lists_and_shows():
    r = run_cli("spaces")
    assert r.returncode == 0 and "bam_full" in r.stdout and "smoke" in r.stdout
    r = run_cli("spaces", "anneal")
    assert r.returncode == 0 and "schedule" in r.stdout
