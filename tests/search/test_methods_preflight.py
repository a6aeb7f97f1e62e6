"""Method settings the driver refuses before Ray starts, and the report on a sequential trial (issue 17)."""
import pytest

from search import results
from search.cli import main
from trainables.errors import UserError


def _refused(capsys, argv) -> str:
    import ray
    assert main(argv) == 2
    assert not ray.is_initialized()
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("bam-search: error:"), err
    return err[0]


def test_a_task_metric_a_sequential_trial_may_not_report_yet_is_refused(tmp_path, capsys):
    """kd_switch.yaml samples switch.mode sequential: only the first task of the order is reported from the
    start, so ranking trials on the second task's score would error those trials mid-sweep."""
    line = _refused(capsys, ["sweep", "kd_switch", "--tasks", "syn_noisy,syn_pairmatch", "--model", "tiny",
                             "--metric", "syn_pairmatch/score", "--storage", str(tmp_path)])
    assert "--metric 'syn_pairmatch/score'" in line and "syn_noisy/score" in line
    assert not (tmp_path / "experiments").exists()


def test_extracting_more_layers_than_the_base_model_has_is_refused(tmp_path, capsys):
    """MiniLM-L6: 6 layers is the base model itself (the full-size point of spaces/compact.yaml); 7 is refused."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("tasks: [syn_noisy]\nmodel: minilm\nteacher: {use: false}\n"
                      "student: {init: extract, num_layers: 7}\n")
    line = _refused(capsys, ["train", str(recipe), "--storage", str(tmp_path / "st")])
    assert "student.num_layers" in line and "6 layers" in line and "not 7" in line


def test_a_task_a_trial_never_reached_is_named_not_a_key_error():
    trial = {"trial_id": "t1", "best_row": {"step": 5, "syn_noisy/score": 61.0, "syn_noisy/best": 63.0}}
    assert results.best_scores(trial, ["syn_noisy"]) == {"syn_noisy": 61.0}     # that evaluation's, not the best
    with pytest.raises(UserError, match=r"trial t1 has no score for syn_pairmatch at its selected evaluation "
                                        r"\(step 5\): it never reached that task"):
        results.best_scores(trial, ["syn_noisy", "syn_pairmatch"])


def test_a_space_that_samples_pack_on_a_model_that_cannot_pack_is_refused(tmp_path, capsys):
    """``pack: true`` packs BERT encoders only: a space drawing pack from [false, true] on a DistilBERT base
    model would fail every trial that draws true; refused at the space's line before Ray starts."""
    from transformers import DistilBertConfig, DistilBertModel

    from trainables.model import load_tokenizer
    tok = load_tokenizer("tiny")
    DistilBertModel(DistilBertConfig(vocab_size=len(tok), dim=32, hidden_dim=64, n_layers=2, n_heads=2,
                                     max_position_embeddings=128)).save_pretrained(tmp_path / "distil")
    tok.save_pretrained(tmp_path / "distil")
    (tmp_path / "packs.yaml").write_text("base:\n  teacher: {use: false}\nparameters:\n"
                                         "  optim.lr: {values: [1.0e-4]}\n  pack: {values: [false, true]}\n")
    capsys.readouterr()
    line = _refused(capsys, ["sweep", str(tmp_path / "packs.yaml"), "--model", str(tmp_path / "distil"),
                             "--tasks", "syn_noisy", "--storage", str(tmp_path / "st"), "--dry-run"])
    assert "packs.yaml:5" in line and "pack=True" in line and "distilbert" in line, line
    assert not (tmp_path / "st" / "experiments").exists()


def test_early_stopping_on_an_average_is_refused_for_a_space_that_samples_sequential(tmp_path, capsys):
    """ASHA compares trials at each rung by glue_avg; a sequential trial averages only the tasks joined so far
    (a 90 on its first task against a joint trial's 66 over both), so the space's line and the fix are named."""
    line = _refused(capsys, ["sweep", "kd_switch", "--tasks", "syn_noisy,syn_pairmatch", "--model", "tiny",
                             "--storage", str(tmp_path)])
    assert "spaces/kd_switch.yaml:15: switch.mode samples sequential" in line, line
    assert "scheduler asha (the default of --scheduler)" in line and "--scheduler none" in line
    line = _refused(capsys, ["sweep", "kd_switch", "--tasks", "syn_noisy,syn_pairmatch", "--model", "tiny",
                             "--scheduler", "median", "--storage", str(tmp_path)])
    assert "scheduler median (--scheduler)" in line
    assert not (tmp_path / "experiments").exists()


def test_a_space_whose_trials_are_all_sequential_is_refused_with_asha_and_runs_with_none(tmp_path, capsys):
    space = tmp_path / "seq.yaml"
    space.write_text("base:\n  teacher: {use: false}\n  switch: {criterion: patience, mode: sequential}\n"
                     "parameters:\n  optim.lr: {values: [1.0e-4, 3.0e-4]}\n")
    args = ["sweep", str(space), "--tasks", "syn_noisy,syn_pairmatch", "--model", "tiny", "--storage", str(tmp_path)]
    line = _refused(capsys, args)
    assert line.startswith("bam-search: error: switch.mode: sequential, which scheduler asha"), line
    assert main([*args, "--scheduler", "none", "--dry-run"]) == 0
    assert main(["sweep", str(space), "--tasks", "syn_noisy", "--model", "tiny", "--storage", str(tmp_path),
                 "--dry-run"]) == 0                                              # one task: nothing to compare
    assert main([*args, "--metric", "syn_noisy/score", "--dry-run"]) == 0      # the first task: always reported
