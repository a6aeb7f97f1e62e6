"""The bad-input matrix: CLI flags, space YAML, recipe YAML, GLUE TSV files and teacher predictions that do not
match the data. Each runs the real CLI (``search.cli.main``, a few also as a subprocess) and must give: exit
code 2, exactly one line on stderr that names the file:line, flag or key at fault, no traceback, nothing on
stdout, nothing recorded in storage (no experiment, no registry line), and no Ray started.

A NaN loss part-way through a trial is not a user error: tests/trainables/test_nonfinite.py (the loop) and
tests/search/test_faults_ray.py (a real sweep: the trial errors with the reason, the sweep goes on).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from search.cli import main

# ---------------------------------------------------------------------------------------------- fixtures

GOOD_TSV = {   # small, well-formed copies of the classic glue_data layout (<dir>/<TASK>/{train,dev}.tsv)
    "RTE": ("index\tsentence1\tsentence2\tlabel\n",
            ["{i}\tA man is sleeping.\tA person rests.\tentailment", "{i}\tThe cat sat.\tNo cat exists.\tnot_entailment"]),
    "SST-2": ("sentence\tlabel\n", ["a fine , moving film\t1", "dull and long\t0"]),
    "STS-B": ("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n",
              ["{i}\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane takes off.\tAn airplane departs.\t4.800",
               "{i}\tmain-captions\tMSRvid\t2012test\t0002\tnone\tnone\tA man plays.\tA dog barks.\t0.250"]),
    "MRPC": ("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n",
             ["1\t{i}\t9{i}\tHe said it twice.\tHe repeated it.", "0\t{i}\t9{i}\tShares fell.\tIt rained."]),
    "CoLA": ("", ["gj04\t1\t\tThe sailors rode the breeze clear of the rocks.", "gj04\t0\t*\tThe more he reads, the."]),
}


def write_glue(root: Path) -> None:
    for task, (header, rows) in GOOD_TSV.items():
        for split in ("train", "dev"):
            lines = [rows[i % 2].format(i=i) for i in range(6)]
            (root / task).mkdir(parents=True, exist_ok=True)
            (root / task / f"{split}.tsv").write_text(header + "\n".join(lines) + "\n")


def set_line(path: Path, lineno: int, text: str | bytes) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[lineno - 1] = text.encode() if isinstance(text, str) else text
    path.write_bytes(b"\n".join(lines))


def plant_teachers(storage: Path, mode: str) -> None:
    """Registry line + prediction folder for syn_noisy (seed 0, tiny), made wrong in one way."""
    from trainables.data import load_examples
    from trainables.model import model_identity
    from trainables.teacher_store import BaselineRegistry, TeacherStore, teacher_key
    ex = load_examples(task="syn_noisy", split="train", glue_dir=None)
    fp = ex.fingerprint()
    key = teacher_key(task="syn_noisy", fingerprint=fp, model=model_identity("tiny"), teacher_config={}, seed=0)
    n = len(ex)
    ids, preds = ex.ids.copy(), np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32)
    meta_fp = fp
    if mode == "fewer_rows":
        ids, preds = ids[:-5], preds[:-5]
    elif mode == "other_ids":
        ids = ids + 1
    elif mode == "other_data":
        meta_fp = "0" * 64
    elif mode == "nan":
        preds[7, 1] = np.nan
    store = TeacherStore(storage)
    folder = Path(store.save(key=key, predictions=preds, ids=ids, meta={"task": "syn_noisy", "fingerprint": meta_fp}))
    if mode == "truncated":
        data = (folder / "predictions.npy").read_bytes()
        (folder / "predictions.npy").write_bytes(data[: len(data) // 2])
    elif mode == "folder_gone":
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
    elif mode == "no_sha256":                          # a meta.json without the files' checksums
        meta = json.loads((folder / "meta.json").read_text())
        del meta["sha256"]
        (folder / "meta.json").write_text(json.dumps(meta))
    BaselineRegistry(storage).append({"task": "syn_noisy", "seed": 0, "fingerprint": fp, "model": model_identity("tiny"),
                                      "model_name": "tiny", "key": key, "score": 50.0})


# ---------------------------------------------------------------------------------------------- the matrix
# id: (argv, setup, needles). Placeholders: {tmp} the test folder, {glue} a good GLUE copy, {st} the storage.
# setup: {relative path: text | bytes | (line, text) | None (delete)} and/or "teachers": mode.

T = ["teachers", "--model", "tiny", "--storage", "{st}"]
TG = T + ["--glue-dir", "{glue}"]
SW = ["sweep", "{tmp}/space.yaml", "--tasks", "syn_noisy", "--model", "tiny", "--set", "teacher.use=false",
      "--storage", "{st}"]
SMOKE = ["sweep", "smoke", "--tasks", "syn_noisy", "--model", "tiny", "--storage", "{st}"]
TR = ["train", "{tmp}/recipe.yaml", "--storage", "{st}"]
LR = "parameters:\n  optim.lr: {values: [0.001]}\n"

CASES: dict[str, tuple[list[str], dict, list[str]]] = {
    # --- command line
    "flag-unknown-command": (["bogus"], {}, ["bogus", "invalid choice"]),
    "flag-unknown-option": (T + ["--tasks", "syn_noisy", "--taks", "rte"], {}, ["--taks"]),
    "flag-bad-choice": (SMOKE + ["--scheduler", "hyperband"], {}, ["--scheduler", "hyperband"]),
    "flag-not-an-int": (SMOKE + ["--num-samples", "many"], {}, ["--num-samples", "many"]),
    "flag-num-samples-zero": (SMOKE + ["--num-samples", "0"], {}, ["--num-samples 0"]),
    "flag-seeds-zero": (T + ["--tasks", "syn_noisy", "--seeds", "0"], {}, ["--seeds 0"]),
    "flag-workers-zero": (T + ["--tasks", "syn_noisy", "--workers-per-trial", "0"], {}, ["--workers-per-trial 0"]),
    "flag-cpus-negative": (T + ["--tasks", "syn_noisy", "--cpus-per-worker", "-1"], {}, ["--cpus-per-worker -1"]),
    "flag-max-concurrent-zero": (SMOKE + ["--max-concurrent", "0"], {}, ["--max-concurrent 0"]),
    "flag-unknown-task": (T + ["--tasks", "syn_noisy,nope"], {}, ["--tasks", "nope"]),
    "flag-no-task": (T + ["--tasks", ","], {}, ["--tasks", "no task"]),
    "flag-task-twice": (T + ["--tasks", "rte,RTE", "--glue-dir", "{glue}"], {}, ["--tasks", "twice"]),
    "flag-glue-dir-missing": (T + ["--tasks", "rte", "--glue-dir", "{tmp}/missing"], {}, ["{tmp}/missing"]),
    "flag-set-unknown-key": (T + ["--tasks", "syn_noisy", "--set", "optim.lrr=1"], {}, ["optim.lrr"]),
    "flag-set-negative": (T + ["--tasks", "syn_noisy", "--set", "optim.lr=-1"], {}, ["optim.lr", "> 0"]),
    "flag-set-nan": (T + ["--tasks", "syn_noisy", "--set", "optim.lr=.nan"], {}, ["optim.lr", "finite"]),
    "flag-set-wrong-type": (T + ["--tasks", "syn_noisy", "--set", "optim.batch_size=big"], {}, ["optim.batch_size"]),
    "flag-set-no-equals": (T + ["--tasks", "syn_noisy", "--set", "optim.lr"], {}, ["optim.lr", "key=value"]),
    "flag-set-into-a-value": (T + ["--tasks", "syn_noisy", "--set", "model=tiny", "--set", "model.name=x"], {},
                              ["model", "not a section"]),
    "flag-epochs-zero": (T + ["--tasks", "syn_noisy", "--patience", "0", "--epochs", "0"], {}, ["optim.epochs"]),
    "flag-max-train-zero": (T + ["--tasks", "syn_noisy", "--max-train-examples", "0"], {}, ["data.max_train_examples"]),
    "flag-metric-unknown": (SMOKE + ["--metric", "accuracy"], {}, ["--metric", "accuracy"]),
    "flag-grace-period-zero": (SMOKE + ["--grace-period", "0"], {}, ["--grace-period 0", "evals (4)"]),
    "flag-grace-period-above-evals": (SMOKE + ["--grace-period", "5"], {}, ["--grace-period 5", "evals (4)"]),
    "flag-reduction-factor-one": (SMOKE + ["--reduction-factor", "1"], {}, ["--reduction-factor 1", "> 1"]),
    "flag-reduction-factor-with-median": (SMOKE + ["--scheduler", "median", "--reduction-factor", "3"], {},
                                          ["--reduction-factor", "--scheduler asha", "median"]),
    "flag-grace-period-with-pbt": (SMOKE + ["--scheduler", "pbt", "--searcher", "random", "--grace-period", "2"],
                                   {}, ["--grace-period", "asha or median", "pbt"]),
    "flag-sweep-set-unknown": (SMOKE + ["--set", "optim.lrr=1"], {}, ["command line", "optim.lrr"]),
    "flag-sweep-set-searched": (SMOKE + ["--set", "optim.lr=0.01"], {}, ["--set optim.lr", "smoke.yaml searches optim.lr"]),
    "flag-sweep-lr-searched": (SMOKE + ["--lr", "0.01"], {}, ["--lr", "searches optim.lr"]),
    "flag-storage-is-a-file": (["teachers", "--model", "tiny", "--tasks", "syn_noisy", "--storage", "{tmp}/afile"],
                               {"afile": "not a folder\n"}, ["--storage", "{tmp}/afile"]),
    "flag-status-unknown": (["status", "nothing-here", "--storage", "{st}"], {}, ["nothing-here"]),
    "flag-resume-unknown": (["resume", "nothing-here", "--storage", "{st}"], {}, ["nothing-here"]),
    "flag-best-unknown": (["best", "nothing-here", "--storage", "{st}"], {}, ["nothing-here"]),
    "flag-report-unknown": (["report", "nothing-here", "--storage", "{st}"], {}, ["nothing-here"]),
    "flag-spaces-unknown": (["spaces", "nope"], {}, ["nope", "no such file"]),
    # --- search-space YAML
    "space-missing": (["sweep", "{tmp}/nospace.yaml", "--tasks", "syn_noisy", "--storage", "{st}"], {},
                      ["{tmp}/nospace.yaml", "no such file"]),
    "space-invalid-yaml": (SW, {"space.yaml": "parameters:\n  optim.lr: {values: [0.001, 0.002}\n"},
                           ["{tmp}/space.yaml:2", "invalid YAML"]),
    "space-not-a-mapping": (SW, {"space.yaml": "- optim.lr\n"}, ["{tmp}/space.yaml", "mapping"]),
    "space-unknown-top-key": (SW, {"space.yaml": "description: x\nparamters:\n  optim.lr: {values: [0.001]}\n"},
                              ["{tmp}/space.yaml:2", "paramters"]),
    "space-unknown-param-key": (SW, {"space.yaml": LR + "  anneal.w: {valuez: [0.5]}\n"},
                                ["{tmp}/space.yaml:3", "anneal.w", "valuez"]),
    "space-unknown-distribution": (SW, {"space.yaml": LR + "  anneal.w:\n    distribution: normalish\n    mu: 0.5\n"},
                                   ["{tmp}/space.yaml:3", "normalish"]),
    "space-min-above-max": (SW, {"space.yaml": LR + "  anneal.w: {min: 0.9, max: 0.1}\n"},
                            ["{tmp}/space.yaml:3", "min 0.9 > max 0.1"]),
    "space-empty-values": (SW, {"space.yaml": LR + "  anneal.schedule: {values: []}\n"},
                           ["{tmp}/space.yaml:3", "non-empty list"]),
    "space-unknown-recipe-key": (SW, {"space.yaml": LR + "  anneal.schedul: {values: [linear]}\n"},
                                 ["{tmp}/space.yaml:3", "anneal.schedul"]),
    "space-bad-value": (SW, {"space.yaml": LR + "  anneal.schedule: {values: [linear, wavy]}\n"},
                        ["{tmp}/space.yaml:3", "wavy"]),
    "space-nested-out-of-range": (SW, {"space.yaml": LR + "  anneal:\n    parameters:\n      p0: {min: 0.5, max: 1.5}\n"},
                                  ["{tmp}/space.yaml:5", "anneal.p0=1.5"]),
    "space-no-parameters": (SW, {"space.yaml": "description: nothing to search\n"}, ["{tmp}/space.yaml", "no parameters"]),
    "space-bad-base": (SW, {"space.yaml": "base:\n  optim: {lrr: 1}\n" + LR}, ["{tmp}/space.yaml:2", "optim.lrr"]),
    "space-grid-continuous": (SW + ["--searcher", "grid"], {"space.yaml": LR + "  anneal.w: {min: 0.1, max: 0.9}\n"},
                              ["{tmp}/space.yaml", "anneal.w", "grid"]),
    # --- recipe YAML
    "recipe-missing": (["train", "{tmp}/norecipe.yaml", "--storage", "{st}"], {}, ["{tmp}/norecipe.yaml", "no such file"]),
    "recipe-invalid-yaml": (TR, {"recipe.yaml": "model: tiny\ntasks: [syn_noisy\nseed: 0\n"},
                            ["{tmp}/recipe.yaml:3", "invalid YAML"]),
    "recipe-unknown-key": (TR, {"recipe.yaml": "tasks: [syn_noisy]\nmodel: tiny\noptim:\n  lr: 0.001\n  lrr: 2\n"},
                           ["{tmp}/recipe.yaml:5", "optim.lrr"]),
    "recipe-wrong-type": (TR, {"recipe.yaml": "tasks: [syn_noisy]\noptim:\n  batch_size: big\n"},
                          ["{tmp}/recipe.yaml:3", "optim.batch_size"]),
    "recipe-per-task-not-a-task-of-the-run": (
        TR, {"recipe.yaml": "tasks: [syn_noisy]\nswitch:\n  per_task:\n    qqp: {criterion: patience}\n"},
        ["{tmp}/recipe.yaml:4", "switch.per_task.qqp"]),
    "recipe-fixed-step-without-step": (TR, {"recipe.yaml": "tasks: [syn_noisy]\nswitch:\n  criterion: fixed_step\n"},
                                       ["{tmp}/recipe.yaml:2", "switch.at_step"]),
    "recipe-not-a-mapping": (TR, {"recipe.yaml": "- syn_noisy\n"}, ["{tmp}/recipe.yaml", "mapping"]),
    "recipe-unknown-task": (TR, {"recipe.yaml": "model: tiny\ntasks: [syn_noisy, qqq]\n"},
                            ["{tmp}/recipe.yaml:2", "qqq"]),
    "recipe-switch-order": (TR, {"recipe.yaml": "tasks: [syn_noisy, syn_pairmatch]\nswitch:\n  mode: sequential\n"
                                                "  order: [syn_noisy]\n"}, ["{tmp}/recipe.yaml:4", "switch.order"]),
    "recipe-not-utf8": (TR, {"recipe.yaml": b"tasks: [syn_noisy]\nmodel: \xff\xfe\n"}, ["{tmp}/recipe.yaml", "UTF-8"]),
    # --- GLUE TSV files (a malformed copy under the test folder)
    "tsv-wrong-columns": (TG + ["--tasks", "rte"], {"glue/RTE/train.tsv": (3, "2\tonly one sentence\tentailment")},
                          ["{glue}/RTE/train.tsv:3", "3 columns"]),
    "tsv-unknown-label": (TG + ["--tasks", "rte"], {"glue/RTE/dev.tsv": (2, "0\ta\tb\tmaybe")},
                          ["{glue}/RTE/dev.tsv:2", "'maybe'"]),
    "tsv-score-not-a-number": (TG + ["--tasks", "stsb"], {"glue/STS-B/train.tsv": (
        3, "1\tg\tf\ty\t0\tn\tn\tA.\tB.\thigh")}, ["{glue}/STS-B/train.tsv:3", "'high'"]),
    "tsv-score-nan": (TG + ["--tasks", "stsb"], {"glue/STS-B/dev.tsv": (2, "0\tg\tf\ty\t0\tn\tn\tA.\tB.\tnan")},
                      ["{glue}/STS-B/dev.tsv:2", "finite"]),
    "tsv-header-only": (TG + ["--tasks", "sst2"], {"glue/SST-2/train.tsv": "sentence\tlabel\n"},
                        ["{glue}/SST-2/train.tsv", "no data rows"]),
    "tsv-missing-dev": (TG + ["--tasks", "mrpc"], {"glue/MRPC/dev.tsv": None}, ["{glue}/MRPC/dev.tsv", "no such file"]),
    "tsv-bad-header": (TG + ["--tasks", "mrpc"], {"glue/MRPC/train.tsv": (1, "Quality\t#1 ID\t#1 String\t#2 String")},
                       ["{glue}/MRPC/train.tsv:1", "header"]),
    "tsv-cola-row": (TG + ["--tasks", "cola"], {"glue/CoLA/train.tsv": (2, "gj04\t1\tmissing a column")},
                     ["{glue}/CoLA/train.tsv:2", "3 columns"]),
    "tsv-not-utf8": (TG + ["--tasks", "sst2"], {"glue/SST-2/dev.tsv": (3, b"caf\xe9 society\t1")},
                     ["{glue}/SST-2/dev.tsv:3", "UTF-8"]),
    # --- teacher predictions that do not match the data (checked before Ray)
    "teachers-missing": (SMOKE, {}, ["syn_noisy seed 0", "bam-search teachers --tasks syn_noisy"]),
    "teachers-fewer-rows": (SMOKE, {"teachers": "fewer_rows"}, ["task syn_noisy", "rows", "re-run"]),
    "teachers-other-ids": (SMOKE, {"teachers": "other_ids"}, ["task syn_noisy", "other example ids"]),
    "teachers-other-data": (SMOKE, {"teachers": "other_data"}, ["task syn_noisy", "other data"]),
    "teachers-truncated": (SMOKE, {"teachers": "truncated"}, ["predictions.npy", "checksum"]),
    "teachers-nan": (SMOKE, {"teachers": "nan"}, ["task syn_noisy", "1 non-finite"]),
    "teachers-folder-gone": (SMOKE, {"teachers": "folder_gone"}, ["no teacher predictions under this key"]),
    "teachers-train-recipe": (TR, {"teachers": "fewer_rows", "recipe.yaml": "tasks: [syn_noisy]\nmodel: tiny\n"},
                              ["task syn_noisy", "rows"]),
    # --- issue 21, items 2 and 4: what only a trial used to find; names that would leave the storage
    "flag-model-not-loadable": (T + ["--tasks", "syn_noisy", "--model", "minilmm"], {},
                                ["--model 'minilmm'", "cannot load it"]),
    "space-fractional-on-an-integer-key": (SW, {"space.yaml": LR + "  optim.batch_size: {distribution: uniform, "
                                                              "min: 16, max: 64}\n"},
                                           ["{tmp}/space.yaml:3", "optim.batch_size", "whole number", "int_uniform"]),
    "space-q-uniform-on-a-per-task-integer": (SW, {"space.yaml": LR + "  switch.per_task.syn_noisy.patience: "
                                                                 "{distribution: q_uniform, min: 1, max: 4, q: 1}\n"},
                                              ["{tmp}/space.yaml:3", "switch.per_task.syn_noisy.patience", "q_uniform"]),
    "recipe-relative-glue-dir-missing": (TR, {"recipe.yaml": "tasks: [rte]\nteacher: {use: false}\ndata:\n"
                                                             "  glue_dir: glue_data\n"},
                                         ["{tmp}/recipe.yaml:4", "data.glue_dir", "{tmp}/glue_data",
                                          "relative to that file"]),
    "recipe-sampling-weight-inf": (TR, {"recipe.yaml": "tasks: [syn_noisy]\nteacher: {use: false}\nsampling:\n"
                                                       "  method: weights\n  weights: {syn_noisy: .inf}\n"},
                                   ["{tmp}/recipe.yaml:5", "sampling.weights", "finite"]),
    "recipe-student-dropout": (TR, {"recipe.yaml": "tasks: [syn_noisy]\nteacher: {use: false}\nstudent:\n"
                                                   "  dropout: 1.5\n"}, ["{tmp}/recipe.yaml:4", "student.dropout"]),
    "teachers-weights-missing-for-hidden-distill": (
        TR, {"teachers": "ok", "recipe.yaml": "tasks: [syn_noisy]\nmodel: tiny\nstudent:\n  hidden_distill: 0.5\n"},
        ["model.pt", "teacher weights missing", "student.hidden_distill"]),
    "flag-name-escapes-the-storage": (T + ["--tasks", "syn_noisy", "--name", "../../escaped"], {},
                                      ["--name '../../escaped'", "not an experiment name"]),
    "flag-sweep-name-dot-dot": (SMOKE + ["--name", ".."], {}, ["--name '..'"]),
    "flag-status-absolute-path": (["status", "{tmp}/storage/experiments/x", "--storage", "{st}"], {},
                                  ["NAME '{tmp}/storage/experiments/x'", "not an experiment name"]),
    "flag-report-dot-dot": (["report", "../x", "--storage", "{st}"], {}, ["NAME '../x'"]),
    "flag-report-student-path": (["report", "x", "--student", "/abs/path", "--storage", "{st}"], {},
                                 ["--student '/abs/path'"]),
    "flag-resume-name-a-path": (["resume", "a/b", "--storage", "{st}"], {}, ["NAME 'a/b'"]),
    "flag-best-name-dot": (["best", ".", "--storage", "{st}"], {}, ["NAME '.'"]),
    # --- issue 21, items 5 and 6: tracebacks and silently accepted input (helper 21b)
    "space-constant-without-value": (SW, {"space.yaml": LR + "  anneal.w: {distribution: constant}\n"},
                                     ["{tmp}/space.yaml:3", "constant needs value"]),
    "space-normal-sigma-not-a-number": (SW, {"space.yaml": LR + "  anneal.w: {distribution: normal, mu: 0.5, "
                                                            "sigma: wide}\n"},
                                        ["{tmp}/space.yaml:3", "sigma 'wide'", "> 0"]),
    "space-normal-sigma-zero": (SW, {"space.yaml": LR + "  anneal.w: {distribution: normal, mu: 0.5, sigma: 0}\n"},
                                ["{tmp}/space.yaml:3", "sigma 0", "> 0"]),
    "space-q-uniform-q-zero": (SW, {"space.yaml": LR + "  anneal.w: {distribution: q_uniform, min: 0.1, max: 0.9, "
                                                   "q: 0}\n"}, ["{tmp}/space.yaml:3", "q 0", "> 0"]),
    "space-duplicate-parameter": (SW, {"space.yaml": LR + "  optim.lr: {values: [0.01]}\n"},
                                  ["{tmp}/space.yaml:3", "duplicate key 'optim.lr'", "line 2"]),
    "recipe-teacher-seeds-text": (TR, {"recipe.yaml": "tasks: [syn_noisy]\nmodel: tiny\nteacher:\n  seeds: [a]\n"},
                                  ["{tmp}/recipe.yaml:4", "teacher.seeds", "'a'"]),
    "recipe-teacher-seeds-nested": (TR, {"recipe.yaml": "tasks: [syn_noisy]\nmodel: tiny\nteacher:\n  seeds: [[0]]\n"},
                                    ["{tmp}/recipe.yaml:4", "teacher.seeds", "[0]"]),
    "recipe-teacher-seeds-negative": (TR, {"recipe.yaml": "tasks: [syn_noisy]\nmodel: tiny\nteacher:\n  seeds: [-1]\n"},
                                      ["{tmp}/recipe.yaml:4", "teacher.seeds", "-1", ">= 0"]),
    "recipe-data-seed-negative": (TR, {"recipe.yaml": "tasks: [syn_noisy]\nteacher: {use: false}\ndata:\n"
                                                      "  data_seed: -1\n"},
                                  ["{tmp}/recipe.yaml:4", "data.data_seed", "-1"]),
    "recipe-duplicate-key": (TR, {"recipe.yaml": "tasks: [syn_noisy]\nteacher: {use: false}\noptim:\n  lr: 0.001\n"
                                                 "optim:\n  epochs: 1\n"},
                             ["{tmp}/recipe.yaml:5", "duplicate key 'optim'", "line 3"]),
    "recipe-empty": (TR, {"recipe.yaml": "# nothing yet\n"}, ["{tmp}/recipe.yaml", "empty recipe"]),
    "recipe-loss-weight-negative": (TR, {"recipe.yaml": "tasks: [syn_noisy]\nteacher: {use: false}\nmtl:\n"
                                                        "  weights: {syn_noisy: -1}\n"},
                                    ["{tmp}/recipe.yaml:4", "mtl.weights.syn_noisy", ">= 0"]),
    "recipe-steps-negative": (TR, {"recipe.yaml": "tasks: [syn_noisy]\nteacher: {use: false}\noptim:\n  steps: -5\n"},
                              ["{tmp}/recipe.yaml:4", "optim.steps", ">= 1"]),
    "recipe-at-step-negative": (TR, {"recipe.yaml": "tasks: [syn_noisy]\nteacher: {use: false}\nswitch:\n"
                                                    "  criterion: fixed_step\n  at_step: -3\n"},
                                ["{tmp}/recipe.yaml:5", "switch.at_step", ">= 1"]),
    "recipe-num-layers-zero": (TR, {"recipe.yaml": "tasks: [syn_noisy]\nteacher: {use: false}\nstudent:\n"
                                                   "  init: random\n  num_layers: 0\n"},
                               ["{tmp}/recipe.yaml:5", "student.num_layers", ">= 1"]),
    "flag-sweep-seed-negative": (SMOKE + ["--set", "teacher.use=false", "--seed", "-1"], {}, ["--seed -1"]),
    "flag-storage-empty": (["teachers", "--model", "tiny", "--tasks", "syn_noisy", "--storage", ""], {},
                           ["--storage ''", "empty"]),
    "flag-perturbation-interval-without-pbt": (SMOKE + ["--set", "teacher.use=false", "--perturbation-interval", "2"],
                                               {}, ["--perturbation-interval", "pbt", "asha"]),
    "flag-pbt-synch-without-pbt": (SMOKE + ["--set", "teacher.use=false", "--pbt-synch"], {}, ["--pbt-synch", "pbt", "asha"]),
    "flag-reduction-factor-inf": (SMOKE + ["--reduction-factor", "inf"], {}, ["--reduction-factor inf", "finite"]),
    "flag-best-export-folder": (["best", "nothing-here", "--export", "{tmp}", "--storage", "{st}"], {},
                                ["--export {tmp}", "folder"]),
    "flag-best-export-under-a-file": (["best", "nothing-here", "--export", "{tmp}/afile/best.yaml", "--storage",
                                       "{st}"], {"afile": "not a folder\n"},
                                      ["--export {tmp}/afile/best.yaml", "not a folder"]),
    "flag-best-pareto-unknown": (["best", "nothing-here", "--pareto", "--storage", "{st}"], {}, ["nothing-here"]),
    "flag-best-pareto-with-export": (["best", "nothing-here", "--pareto", "--export", "b.yaml", "--storage", "{st}"],
                                     {}, ["--pareto", "--export"]),
    "space-compact-on-tiny": (["sweep", "compact", "--model", "tiny", "--tasks", "syn_noisy",
                               "--storage", "{st}", "--dry-run"], {},
                              ["compact.yaml", "extract needs pretrained weights and model tiny"]),
    "tsv-score-out-of-range": (TG + ["--tasks", "stsb"], {"glue/STS-B/train.tsv": (
        3, "1\tg\tf\ty\t0\tn\tn\tA.\tB.\t7.5")}, ["{glue}/STS-B/train.tsv:3", "'7.5'", "range 0 to 5"]),
    "tsv-no-header-line": (TG + ["--tasks", "rte"],
                           {"glue/RTE/train.tsv": (1, "0\tA dog runs.\tAn animal moves.\tentailment")},
                           ["{glue}/RTE/train.tsv:1", "header", "'A dog runs.'", "'sentence1'"]),
    "tsv-header-of-another-file": (TG + ["--tasks", "sst2"], {"glue/SST-2/dev.tsv": (1, "text\tlabel")},
                                   ["{glue}/SST-2/dev.tsv:1", "header", "'text'", "'sentence'"]),
    "tsv-dev-one-gold-value": (TG + ["--tasks", "rte"], {"glue/RTE/dev.tsv": "index\tsentence1\tsentence2\tlabel\n"
                               "0\ta\tb\tentailment\n1\tc\td\tentailment\n"},
                               ["{glue}/RTE/dev.tsv", "every dev example", "'entailment'"]),
    "teachers-meta-without-sha256": (SMOKE, {"teachers": "no_sha256"},
                                     ["meta.json", "corrupt teacher store", "sha256"]),
    # --- sweep --dry-run runs every check, with the same one-line errors (accepted: tests/search/test_list_dry_run.py)
    "flag-dry-run-num-samples-zero": (SMOKE + ["--dry-run", "--num-samples", "0"], {}, ["--num-samples 0"]),
    "flag-dry-run-storage-under-a-file": (SMOKE[:-1] + ["{tmp}/afile/st", "--dry-run", "--set", "teacher.use=false"],
                                          {"afile": "not a folder\n"}, ["--storage {tmp}/afile/st", "not writable"]),
    "teachers-missing-dry-run": (SMOKE + ["--dry-run"], {}, ["teacher predictions missing for syn_noisy seed 0"]),
    # the local Ray it would start can never hold the trial: refused as the real run refuses it (it said "2 at once")
    "flag-dry-run-gpus-without-gpu": (SMOKE + ["--dry-run", "--set", "teacher.use=false", "--gpus-per-worker", "0.5"],
                                      {}, ["--gpus-per-worker 0.5", "can never hold"]),
    "flag-dry-run-cpus-more-than-the-machine": (SMOKE + ["--dry-run", "--set", "teacher.use=false",
                                                         "--cpus-per-worker", "64"], {}, ["--cpus-per-worker 64",
                                                                                          "can never hold"]),
}

SUBPROCESS = ["flag-bad-choice", "recipe-unknown-key", "tsv-wrong-columns", "teachers-fewer-rows"]


def prepare(tmp: Path, case: str) -> tuple[list[str], list[str], Path]:
    argv, setup, needles = CASES[case]
    glue, st = tmp / "glue", tmp / "storage"
    write_glue(glue)
    st.mkdir()
    for rel, content in setup.items():
        if rel == "teachers":
            plant_teachers(st, content)
            continue
        path = tmp / rel
        if content is None:
            path.unlink()
        elif isinstance(content, tuple):
            set_line(path, *content)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    fill = {"{tmp}": str(tmp), "{glue}": str(glue), "{st}": str(st)}

    def sub(text: str) -> str:
        for k, v in fill.items():
            text = text.replace(k, v)
        return text
    return [sub(a) for a in argv], [sub(n) for n in needles], st


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} \
        if root.is_dir() else {}


def check(rc: int, out: str, err: str, needles: list[str]) -> None:
    assert rc == 2, (rc, err)
    lines = err.splitlines()
    assert len(lines) == 1, err                        # exactly one line: no usage block, no warning, no traceback
    assert lines[0].startswith("bam-search: error: "), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert "Traceback" not in err and out == "", out


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.delenv("BAM_STORAGE", raising=False)
    monkeypatch.delenv("BAM_GLUE_DIR", raising=False)          # synthetic tasks; GLUE only via --glue-dir
    monkeypatch.chdir(tmp_path)


def test_the_matrix_is_large_enough():
    kinds = {c.split("-")[0] for c in CASES}
    assert len(CASES) >= 30 and kinds == {"flag", "space", "recipe", "tsv", "teachers"}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(tmp_path, capsys, case):
    import ray
    argv, needles, st = prepare(tmp_path, case)
    before = files(st)
    try:
        rc = main(argv)
    except SystemExit as e:                            # argparse's own exit, with our one-line message
        rc = e.code
    out, err = capsys.readouterr()
    check(rc, out, err, needles)
    assert files(st) == before                         # nothing recorded: no experiment, no registry line
    assert not ray.is_initialized()                    # and nothing started


@pytest.mark.parametrize("case", SUBPROCESS)
def test_bad_input_as_a_process(tmp_path, case):
    argv, needles, st = prepare(tmp_path, case)
    env = {k: v for k, v in os.environ.items() if k not in ("BAM_STORAGE", "BAM_GLUE_DIR")}
    r = subprocess.run([sys.executable, "-m", "search.cli", *argv], capture_output=True, text=True, timeout=120,
                       env=env, cwd=tmp_path)
    check(r.returncode, r.stdout, r.stderr, needles)
    assert not (st / "experiments").exists() and not (st / "baselines.jsonl").exists() or case.startswith("teachers")
