"""Issue 21, items 5 and 6, beyond the rows of test_bad_input_matrix.py: the edges of each new check (what is
still accepted next to what is refused) and the cases a matrix row cannot reach (a path this user may not
write to, a failing write, a dev set cut to one gold value by data.max_dev_examples)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from search.cli import main
from search.results import check_export, export_recipe
from search.spaces import check_param
from trainables.data import check_dev_labels, load_examples, read_glue_tsv
from trainables.errors import UserError
from trainables.recipe import load_recipe, recipe_from_dict, safe_load
from trainables.tasks import get_task
from trainables.teacher_store import StoreError, TeacherStore

# ---------------------------------------------------------------------------------------------- best --export


def test_export_to_a_folder_it_may_not_write_is_one_line_before_the_experiment_is_read(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("os.access", lambda path, mode: False)     # tests run as root: chmod would not stop it
    rc = main(["best", "nothing-here", "--export", str(tmp_path / "out" / "best.yaml"), "--storage", str(tmp_path)])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(err) == 1 and f"cannot write in {tmp_path}" in err[0] and "permission denied" in err[0]


def test_export_to_new_folders_is_accepted_and_a_failed_write_is_one_line(tmp_path, monkeypatch):
    check_export(str(tmp_path / "a" / "b" / "best.yaml"))          # atomic_write creates the folders
    with pytest.raises(UserError, match="empty"):
        check_export("")

    def refuse(path, data):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr("trainables.storage.atomic_write", refuse)
    with pytest.raises(UserError, match=r"best.yaml: cannot write the recipe \(Permission denied\)"):
        export_recipe({"tasks": ["syn_noisy"]}, tmp_path / "best.yaml", command="x", source="test")


# ---------------------------------------------------------------------------------------------- YAML keys

def test_a_duplicate_key_is_refused_at_its_second_line_but_merge_keys_still_work(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("tasks: [syn_noisy]\nteacher: {use: false}\noptim:\n  lr: 0.001\n  epochs: 1\n  lr: 0.01\n")
    with pytest.raises(UserError, match=rf"^{path}:6: invalid YAML \(duplicate key 'lr', first on line 4"):
        load_recipe(path)
    assert safe_load("a: &x {b: 1, c: 2}\nd:\n  <<: *x\n  b: 3\n")["d"] == {"b": 3, "c": 2}


# ---------------------------------------------------------------------------------------------- recipe ranges

@pytest.mark.parametrize("patch, needle", [
    ({"seed": 2 ** 32}, "seed: 4294967296"),
    ({"teacher": {"seeds": [0, 0]}}, "names a seed twice"),
    ({"teacher": {"seeds": [True]}}, "teacher.seeds: True"),
    ({"mtl": {"weights": {"syn_noisy": float("inf")}}}, "mtl.weights.syn_noisy"),
    ({"optim": {"steps": 0}}, "optim.steps: 0"),
    ({"switch": {"criterion": "fixed_step", "at_step": 0}}, "switch.at_step: 0"),
])
def test_recipe_ranges(patch, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(")):
        recipe_from_dict({"tasks": ["syn_noisy"], **patch})


def test_recipe_values_next_to_the_refused_ones_are_accepted():
    r = recipe_from_dict({"tasks": ["syn_noisy"], "seed": 2 ** 32 - 1, "data": {"data_seed": 0},
                          "teacher": {"seeds": [0, 3]}, "mtl": {"weights": {"syn_noisy": 0}},
                          "optim": {"steps": 1}, "switch": {"criterion": "fixed_step", "at_step": 1}})
    assert r.teacher.seeds == (0, 3) and r.optim.steps == 1


# ---------------------------------------------------------------------------------------------- space distributions

@pytest.mark.parametrize("spec, needle", [
    ({"distribution": "normal", "mu": "middle", "sigma": 0.1}, "mu 'middle'"),
    ({"distribution": "normal", "mu": 0.5, "sigma": -1}, "sigma -1"),
    ({"distribution": "q_log_uniform_values", "min": 1e-5, "max": 1e-3, "q": -1e-5}, "q -1e-05"),
    ({"distribution": "q_uniform", "min": 0.1, "max": 0.9, "q": "step"}, "q 'step'"),
    ({"min": float("nan"), "max": 0.9}, "finite numbers"),
])
def test_space_distribution_parameters(spec, needle):
    with pytest.raises(UserError, match=needle):
        check_param("anneal.w", spec, "space.yaml:3")


def test_space_distributions_that_were_fine_stay_fine():
    assert check_param("w", {"distribution": "normal", "mu": 0, "sigma": 0.1}, "s") == "normal"
    assert check_param("w", {"distribution": "q_uniform", "min": 0.1, "max": 0.9}, "s") == "q_uniform"   # q: 1
    assert check_param("w", {"distribution": "constant", "value": 0.5}, "s") == "constant"


# ---------------------------------------------------------------------------------------------- GLUE files

def _tsv(tmp_path: Path, task: str, split: str, lines: list[str]) -> Path:
    path = tmp_path / get_task(task).dir_name / f"{split}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_stsb_scores_at_the_ends_of_the_range_are_read_and_outside_it_refused(tmp_path):
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    rows = [f"{i}\tg\tf\ty\t0\tn\tn\tA.\tB.\t{s}" for i, s in enumerate(["0.000", "5.000", "2.5"])]
    ex = read_glue_tsv(_tsv(tmp_path, "stsb", "train", [head, *rows]), task=get_task("stsb"), split="train")
    assert ex.labels.tolist() == [0.0, 5.0, 2.5]
    path = _tsv(tmp_path, "stsb", "dev", [head, *rows, "3\tg\tf\ty\t0\tn\tn\tA.\tB.\t-0.1"])
    with pytest.raises(UserError, match=rf"^{path}:5: score '-0.1' is outside STS-B's range 0 to 5$"):
        read_glue_tsv(path, task=get_task("stsb"), split="dev")


MNLI_TEXT = "index\tpromptID\tpairID\tgenre\ts1b\ts2b\ts1p\ts2p\tsentence1\tsentence2"


@pytest.mark.parametrize("task, split, header, row", [
    ("mnli", "train", MNLI_TEXT + "\tlabel1\tgold_label", "0\tp\tq\tg\tb\tb\tp\tp\tA.\tB.\tneutral\tneutral"),
    ("mnli", "dev_matched", MNLI_TEXT + "\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label",
     "0\tp\tq\tg\tb\tb\tp\tp\tA.\tB.\tneutral\tneutral\tneutral\tneutral\tneutral\tneutral"),
    ("qqp", "train", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "0\t1\t2\tWhy?\tHow?\t1"),
    ("qnli", "train", "index\tquestion\tsentence\tlabel", "0\tWhy?\tBecause.\tentailment"),
    ("wnli", "train", "index\tsentence1\tsentence2\tlabel", "0\tA.\tB.\t1"),
    ("mrpc", "train", "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String", "1\t1\t2\tA.\tB."),
])
def test_every_classic_glue_header_is_accepted(tmp_path, task, split, header, row):
    assert len(read_glue_tsv(_tsv(tmp_path, task, split, [header, row]), task=get_task(task), split=split)) == 1


def test_a_header_of_the_wrong_task_is_refused(tmp_path):
    path = _tsv(tmp_path, "qnli", "train", ["index\tsentence1\tsentence2\tlabel", "0\tA.\tB.\tentailment"])
    with pytest.raises(UserError, match=rf"^{path}:1: header column 2 is 'sentence1', QNLI expects 'question'"):
        read_glue_tsv(path, task=get_task("qnli"), split="train")


def test_a_dev_set_cut_to_one_gold_value_is_refused_and_names_the_cut(tmp_path):
    head = "index\tsentence1\tsentence2\tlabel"
    rows = [f"{i}\tA{i}.\tB.\t{'entailment' if i else 'not_entailment'}" for i in range(40)]
    _tsv(tmp_path, "rte", "dev", [head, *rows])
    ex = load_examples(task="rte", split="dev", glue_dir=str(tmp_path))
    check_dev_labels(ex, max_examples=None, seed=0, glue_dir=str(tmp_path))        # both labels: fine
    seed = next(s for s in range(100) if 1 not in ex.subsample(max_examples=3, seed=s).labels)   # 1: not_ent.
    with pytest.raises(UserError, match=r"RTE/dev.tsv: every dev example \(the 3 kept by data.max_dev_examples\) "
                                        r"has the gold value 'entailment'"):
        check_dev_labels(ex, max_examples=3, seed=seed, glue_dir=str(tmp_path))


def test_a_regression_dev_set_with_one_score_is_refused(tmp_path):
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    _tsv(tmp_path, "stsb", "dev", [head] + [f"{i}\tg\tf\ty\t0\tn\tn\tA.\tB.\t2.5" for i in range(3)])
    ex = load_examples(task="stsb", split="dev", glue_dir=str(tmp_path))
    with pytest.raises(UserError, match=r"gold value 0.5 \(on the \[0, 1\] scale\)"):
        check_dev_labels(ex, max_examples=None, seed=0, glue_dir=str(tmp_path))


# ---------------------------------------------------------------------------------------------- teacher store

@pytest.mark.parametrize("meta, needle", [
    ("{not json", "corrupt teacher store: corrupt meta.json"),
    (json.dumps({"sha256": {"predictions.npy": "ab"}}), "no sha256 of ids.npy;"),
    (json.dumps({"sha256": "ab"}), "no sha256 of predictions.npy and ids.npy"),
    (json.dumps(["a list"]), "no sha256 of predictions.npy and ids.npy"),
])
def test_a_meta_json_without_checksums_is_a_corrupt_store(tmp_path, meta, needle):
    store = TeacherStore(tmp_path)
    folder = Path(store.save(key="k", predictions=np.zeros((2, 2)), ids=np.arange(2), meta={}))
    (folder / "meta.json").write_text(meta)
    with pytest.raises(StoreError, match=needle):
        store.meta("k")
