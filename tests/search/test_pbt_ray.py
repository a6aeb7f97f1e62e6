"""PBT with real Ray Tune + Train V2: an exploited trial continues from the donor's Train checkpoint, KD-switch
state and recorded soft labels included (search/pbt.py, trainables/tune_bridge.py).

Two trials: one learns (lr 3e-3), one cannot (lr 1e-6). Both switch every task to KD at the same step (the 4th evaluation), each
against soft labels from its own best weights. PBT must clone the good trial into the bad one; afterwards the
bad trial's checkpoints refer to the good trial's soft labels and carry its switch state and step.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
TASKS = "syn_noisy,syn_pairmatch"
SPACE = {
    "description": "PBT test: a good and a bad learning rate, KD switch at a fixed step",
    "base": {"evals": 8, "teacher": {"use": False}, "optim": {"epochs": 2, "warmup": 0.0},
             "switch": {"criterion": "fixed_step", "at_step": 45}},
    "parameters": {"optim.lr": {"values": [3.0e-3, 1.0e-6]}},
}


def rows_of(trial_dir: Path) -> list[dict]:
    return [json.loads(l) for l in (trial_dir / "result.json").read_text().splitlines() if l.strip()]


def test_pbt_exploit_carries_weights_switch_state_and_soft_labels(tmp_path, cache_dir):
    space = tmp_path / "pbt.yaml"
    space.write_text("# bam-search sweep pbt.yaml --scheduler pbt --searcher grid\n" + yaml.safe_dump(SPACE))
    storage = tmp_path / "storage"
    r = subprocess.run([sys.executable, "-m", "search.cli", "sweep", str(space), "--tasks", TASKS, "--model", "tiny",
                        "--scheduler", "pbt", "--searcher", "grid", "--num-samples", "1", "--perturbation-interval", "2",
                        "--storage", str(storage), "--name", "pbt", "--no-wandb", "--quiet"],
                       capture_output=True, text=True, timeout=900, env=os.environ.copy())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    exp = storage / "experiments" / "pbt"
    trials = {d.name: d for d in exp.iterdir() if (d / "params.json").exists()}
    assert len(trials) == 2

    # every exploit left a copy of the donor's Train checkpoint with the receiver, and a new Train run
    copies = sorted((exp / "artifacts").glob("*/inherited/*"))
    assert copies, "PBT never exploited a trial"
    switched_copies = []
    for copy in copies:
        receiver = copy.parent.parent.name
        pointer = json.loads((copy / "bam_checkpoint.json").read_text())
        assert pointer["inherited_by"] == receiver and pointer["trial_id"] != receiver
        assert (exp / "train" / f"train-{receiver}-from-{pointer['lineage']}").is_dir()
        state = json.loads((copy / "state.json").read_text())
        if state["soft_labels"]:
            switched_copies.append((copy, receiver, pointer["trial_id"], state))
    assert switched_copies, "no exploit after the KD switch (at_step 45, the 4th of 8 evaluations)"

    # the receiver continued from the donor's KD state: every later checkpoint of the new Train run has the
    # donor's switch state and distils from the donor's soft labels (by reference, the files still there)
    for copy, receiver, donor, donor_state in switched_copies:
        assert all(s["switched_at"] is not None for s in donor_state["switch"].values())
        run = exp / "train" / f"train-{receiver}-from-{copy.name}"
        later = [json.loads((c / "state.json").read_text()) for c in sorted(run.glob("checkpoint-*"))]
        for state in later:
            assert state["step"] > donor_state["step"]
            assert {t: s["switched_at"] for t, s in state["switch"].items()} == \
                   {t: s["switched_at"] for t, s in donor_state["switch"].items()}
            assert state["soft_labels"] == donor_state["soft_labels"]
            for task, ref in state["soft_labels"].items():
                assert f"/artifacts/{donor}/" in ref["path"] or f"/artifacts/{receiver}/inherited/" in ref["path"], ref
                assert Path(ref["path"]).is_file(), (task, ref)

    # both trials ran to the end (an exploit of a finished donor re-reports its last evaluation) with every task
    # switched. (Tune may drop an exploited trial's rows before the exploit from its result.json: not checked.)
    for trial in trials.values():
        last = rows_of(trial)[-1]
        assert last["training_iteration"] >= 8 and last["step"] == good_steps(trials)
        assert last["switched"] == "syn_noisy,syn_pairmatch"


def good_steps(trials: dict) -> int:
    """The last step of a full run (the same for every trial: same data, batch size and epochs)."""
    return max(row["step"] for d in trials.values() for row in rows_of(d))
