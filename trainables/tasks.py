"""The explicit GLUE task registry: text columns, labels, regression flag, metrics.

Two sources sit behind one interface (see ``data.py``): the classic ``glue_data/<TASK>/{train,dev}.tsv``
folder and the hub dataset ``nyu-mll/glue``. ``TsvLayout`` records each file's quirks.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TsvLayout:
    header: bool                      # CoLA has none
    n_columns: tuple[int, ...]        # accepted field counts (MNLI train 12, dev 16)
    text_columns: tuple[int, ...]     # field indices of text_a (and text_b)
    label_column: int                 # field index; -1 = last field


@dataclass(frozen=True)
class Task:
    name: str                         # canonical key: "cola", "sst2", ...
    dir_name: str                     # folder in glue_data: "CoLA", "SST-2", ...
    hub_config: str                   # config of nyu-mll/glue
    hub_text_columns: tuple[str, ...]
    labels: tuple[str, ...] | None    # label strings in id order; None = regression
    metrics: tuple[str, ...]
    primary: str                      # metric that the sweep and the KD switch watch
    tsv: TsvLayout
    dev_splits: tuple[str, ...] = ("dev",)
    hub_dev_splits: tuple[str, ...] = ("validation",)
    score_range: tuple[float, float] = (0.0, 5.0)   # regression: the scores' range, mapped to [0, 1] (BAM)

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_outputs(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_pair(self) -> bool:
        return len(self.tsv.text_columns) == 2


_BIN = ("0", "1")
_NLI2 = ("entailment", "not_entailment")

TASKS: dict[str, Task] = {
    "cola": Task("cola", "CoLA", "cola", ("sentence",), _BIN, ("mcc",), "mcc",
                 TsvLayout(header=False, n_columns=(4,), text_columns=(3,), label_column=1)),
    "sst2": Task("sst2", "SST-2", "sst2", ("sentence",), _BIN, ("accuracy",), "accuracy",
                 TsvLayout(header=True, n_columns=(2,), text_columns=(0,), label_column=1)),
    "mrpc": Task("mrpc", "MRPC", "mrpc", ("sentence1", "sentence2"), _BIN, ("accuracy", "f1"), "accuracy_f1",
                 TsvLayout(header=True, n_columns=(5,), text_columns=(3, 4), label_column=0)),
    "stsb": Task("stsb", "STS-B", "stsb", ("sentence1", "sentence2"), None, ("pearson", "spearman"),
                 "pearson_spearman",
                 TsvLayout(header=True, n_columns=(10,), text_columns=(7, 8), label_column=9)),
    "qqp": Task("qqp", "QQP", "qqp", ("question1", "question2"), _BIN, ("accuracy", "f1"), "accuracy_f1",
                TsvLayout(header=True, n_columns=(6,), text_columns=(3, 4), label_column=5)),
    "mnli": Task("mnli", "MNLI", "mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
                 ("accuracy",), "accuracy",
                 TsvLayout(header=True, n_columns=(12, 16), text_columns=(8, 9), label_column=-1),
                 dev_splits=("dev_matched", "dev_mismatched"),
                 hub_dev_splits=("validation_matched", "validation_mismatched")),
    "qnli": Task("qnli", "QNLI", "qnli", ("question", "sentence"), _NLI2, ("accuracy",), "accuracy",
                 TsvLayout(header=True, n_columns=(4,), text_columns=(1, 2), label_column=3)),
    "rte": Task("rte", "RTE", "rte", ("sentence1", "sentence2"), _NLI2, ("accuracy",), "accuracy",
                TsvLayout(header=True, n_columns=(4,), text_columns=(1, 2), label_column=3)),
    "wnli": Task("wnli", "WNLI", "wnli", ("sentence1", "sentence2"), _BIN, ("accuracy",), "accuracy",
                 TsvLayout(header=True, n_columns=(4,), text_columns=(1, 2), label_column=3)),
}

_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli"}


class UnknownTaskError(ValueError):
    pass


def get_task(name: str) -> Task:
    """Look a task up by its key, its GLUE folder name, or a common alias (case-insensitive)."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    tasks = all_tasks()
    if key in tasks:
        return tasks[key]
    for task in tasks.values():
        if task.dir_name.lower() == key:
            return task
    raise UnknownTaskError(f"unknown task {name!r}; known tasks: {', '.join(tasks)}")


def all_tasks() -> dict[str, Task]:
    """The GLUE tasks followed by the built-in synthetic ones (``synthetic.py``)."""
    from .synthetic import SYNTHETIC_TASKS   # lazy: synthetic imports this module

    return {**TASKS, **SYNTHETIC_TASKS}


def parse_tasks(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"rte,mrpc"`` -> ``("rte", "mrpc")``; rejects unknown and repeated tasks."""
    names = [s for s in (spec.split(",") if isinstance(spec, str) else spec) if str(s).strip()]
    if not names:
        raise UnknownTaskError("no task given")
    out: list[str] = []
    for n in names:
        key = get_task(str(n)).name
        if key in out:
            raise UnknownTaskError(f"task {n!r} given twice")
        out.append(key)
    return tuple(out)
