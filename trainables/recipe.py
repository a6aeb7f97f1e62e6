"""The one typed, frozen config schema. Unknown keys are rejected by their dotted path.

A recipe crosses from the driver to a trial inside a ``TrialConfig`` (as a plain dict, ``to_dict``).
All defaults live here. A field's allowed values are the names of its method family's registry (``setting``). ``apply_overrides`` takes dotted ``key=value`` strings (values parsed as YAML).
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import UserError
from .losses import KD_LOSSES, WEIGHTINGS
from .pooling import POOLING
from .precision import PRECISIONS
from .schedules import ANNEAL, LR_DECAYS, SAMPLERS
from .switch import CRITERIA
from .tasks import UnknownTaskError, parse_tasks


def setting(default=dataclasses.MISSING, *, choices=None, mutable: bool = False, factory=dataclasses.MISSING):
    """A recipe field. ``choices``: its allowed values (a method family's registry: its names); ``mutable``:
    the loop reads it at every step, so PBT may change it in the middle of a run."""
    return field(default=default, default_factory=factory, metadata={"choices": choices, "mutable": mutable})


@dataclass(frozen=True)
class Data:
    glue_dir: str | None = None          # None: BAM_GLUE_DIR, then the hub (synthetic tasks need neither)
    max_train_examples: int | None = None
    max_dev_examples: int | None = None
    max_length: int = 128
    data_seed: int = 0                   # the subsample of train examples


@dataclass(frozen=True)
class Optim:
    lr: float = setting(5e-5, mutable=True)
    weight_decay: float = setting(0.01, mutable=True)
    layer_decay: float = 0.9             # BAM: layer-wise LR decay
    warmup: float = setting(0.1, mutable=True)                 # fraction of steps
    decay: str = setting("linear", choices=LR_DECAYS)          # after warm-up: linear (to 0 at the end, BAM)
    clip: float = setting(1.0, mutable=True)                   # max gradient norm; 0: no clipping
    batch_size: int = 32                 # global batch (split over the Train workers)
    epochs: float = 3.0                  # passes over the union of the tasks' train sets
    steps: int | None = None             # overrides epochs when set


@dataclass(frozen=True)
class Anneal:
    schedule: str = setting("linear", choices=ANNEAL, mutable=True)   # lambda(p): weight of gold in the target
    w: float = setting(0.5, mutable=True)                     # constant: lambda = w
    p0: float = setting(0.5, mutable=True)                    # step / delayed_linear / sigmoid: where lambda rises
    k: float = setting(10.0, mutable=True)                    # exponential / sigmoid: steepness
    temperature: float = setting(1.0, mutable=True)           # T of the soft term (times T^2, Hinton); gold at T=1
    loss: str = setting("ce", choices=KD_LOSSES, mutable=True)  # regression always uses mse
    per_task: dict = setting(factory=dict, mutable=True)      # {task: {schedule: ..., ...}}


@dataclass(frozen=True)
class Sampling:
    method: str = setting("size_alpha", choices=SAMPLERS, mutable=True)   # BAM: size ** 0.75
    alpha: float = setting(0.75, mutable=True)
    alpha_end: float | None = setting(None, mutable=True)     # alpha moves linearly to alpha_end over training
    temperature: float = setting(1.0, mutable=True)
    weights: dict | None = setting(None, mutable=True)        # method=weights: {task: weight}
    batches: str = setting("single", choices=("single", "mixed"), mutable=True)   # single: MT-DNN; mixed: BAM


@dataclass(frozen=True)
class Switch:
    criterion: str = setting("never", choices=CRITERIA)    # per-task KD switch (Lu et al. 2022)
    patience: int = 3                    # evaluations without improvement
    min_delta: float = 0.0               # an improvement must exceed this (metric points)
    ema: float = 0.5                     # smoothing factor of the ema criterion
    at_step: int | None = None           # fixed_step
    gold_weight: float = setting(0.0, mutable=True)   # after the switch: g*gold + (1-g)*own snapshot predictions
    mode: str = setting("joint", choices=("joint", "sequential"))
    order: tuple = ()                    # sequential: task order (default: the recipe's task order)
    per_task: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Student:
    init: str = setting("pretrained", choices=("pretrained", "extract", "random"))   # check_student_shape
    num_layers: int | None = None        # extract: how many evenly spaced pretrained layers; random: any
    hidden_size: int | None = None       # random only (tiny: always built from its config, never extracted)
    hidden_distill: float = 0.0          # weight of hidden-state MSE to the teachers (XtremeDistil; their weights)
    unfreeze: str = setting("none", choices=("none", "gradual"))   # gradual: one layer per stage from the top
    pooling: str = setting("cls", choices=POOLING)
    dropout: float = 0.1


@dataclass(frozen=True)
class MTL:
    weighting: str = setting("static", choices=WEIGHTINGS)   # uncertainty (Kendall) | dwa (Liu et al.)
    weights: dict | None = setting(None, mutable=True)        # static loss weights {task: w}
    dwa_temperature: float = setting(2.0, mutable=True)
    pcgrad: bool = False                 # Yu et al.: shared (encoder) gradients only; needs sampling.batches mixed


@dataclass(frozen=True)
class Teacher:
    use: bool = True                     # False: plain multi-task, no KD at all
    model: str | None = None             # the teachers' model (default: the recipe's model)
    seeds: tuple = (0,)
    ensemble: bool = False               # mean of the seeds' probabilities (regression: values); else the first seed
    experiment: tuple = ()               # the `bam-search teachers` experiment(s) to take teachers from (NAME or A,B);
                                         # empty: the one stored teacher config per task and seed (several: refused)


@dataclass(frozen=True)
class EarlyStop:
    patience: int | None = 0             # stop after this many evaluations without a better dev score (the mean
                                         # over the evaluated tasks: a teacher's task score), min_delta 0; the
                                         # run's length (optim.epochs / steps) is then its most. 0 / null: off


@dataclass(frozen=True)
class Recipe:
    tasks: tuple = ("rte", "mrpc")
    model: str = "tiny"
    seed: int = 0
    precision: str = setting("auto", choices=PRECISIONS)   # auto: bf16 where safe
    pack: bool = False                   # pack each step's short examples into fewer rows (packing.py; BERT models)
    evals: int = 10                      # evaluations (and reports/checkpoints) per run
    data: Data = field(default_factory=Data)
    optim: Optim = field(default_factory=Optim)
    anneal: Anneal = field(default_factory=Anneal)
    sampling: Sampling = field(default_factory=Sampling)
    switch: Switch = field(default_factory=Switch)
    student: Student = field(default_factory=Student)
    mtl: MTL = field(default_factory=MTL)
    teacher: Teacher = field(default_factory=Teacher)
    early_stop: EarlyStop = field(default_factory=EarlyStop)

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    def anneal_for(self, task: str) -> Anneal:
        return dataclasses.replace(self.anneal, per_task={}, **(self.anneal.per_task.get(task) or {}))

    def switch_for(self, task: str) -> Switch:
        return dataclasses.replace(self.switch, per_task={}, **(self.switch.per_task.get(task) or {}))


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


# ------------------------------------------------------------------------------------------------ parsing

def _check_type(value, tp, path: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in typing.get_args(tp):
            try:
                return _check_type(value, arm, path)
            except UserError as e:
                errors.append(e)
        raise errors[0]                                  # `int | None`: "expected an integer", not "expected null"
    if tp is type(None):
        if value is None:
            return None
        raise UserError(f"{path}: expected null, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{path}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):                 # .nan passes every `<= 0` check below: refuse it here
                raise UserError(f"{path}: expected a finite number, got {value!r}")
            return float(value)
        raise UserError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise UserError(f"{path}: expected a string, got {value!r}")
    if tp is tuple or origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if isinstance(value, (list, tuple)):
            return tuple(value)
        raise UserError(f"{path}: expected a list, got {value!r}")
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise UserError(f"{path}: expected a mapping, got {value!r}")
    raise TypeError(f"unsupported type {tp} at {path}")


def _build(cls, data: dict, path: str):
    if not isinstance(data, dict):
        raise UserError(f"{path or 'recipe'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in known:
            raise UserError(f"unknown key {where!r} (known: {', '.join(sorted(known))})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, where)
            continue
        kwargs[key] = _check_type(value, tp, where)
        choices = known[key].metadata.get("choices")
        if choices is not None and kwargs[key] not in choices:
            raise UserError(f"{where}: {kwargs[key]!r} is not one of {', '.join(choices)}")
    return cls(**kwargs)


def recipe_from_dict(data: dict, *, source: str = "recipe") -> Recipe:
    """Build and validate a recipe; errors name the source and the dotted key."""
    try:
        recipe = _build(Recipe, data or {}, "")
        validate(recipe)
    except UserError as e:
        raise UserError(f"{source}: {e}") from None
    return recipe


def _check_per_task(per_task: dict, cls, tasks: tuple, path: str):
    for task, sub in per_task.items():
        if task not in tasks:
            raise UserError(f"{path}.{task}: task {task!r} is not in this run's tasks ({', '.join(tasks)})")
        if sub is not None and not isinstance(sub, dict):
            raise UserError(f"{path}.{task}: expected a mapping, got {sub!r}")
        if "per_task" in (sub or {}):
            raise UserError(f"{path}.{task}.per_task: per-task settings cannot nest")
        _build(cls, dict(sub or {}), f"{path}.{task}")


def _validate_anneal(r: Recipe, tasks: tuple) -> None:
    _check_per_task(r.anneal.per_task, Anneal, tasks, "anneal.per_task")
    for t in tasks:
        a = r.anneal_for(t)
        where = f"anneal.per_task.{t}" if t in r.anneal.per_task else "anneal"
        if not 0 <= a.w <= 1 or not 0 <= a.p0 <= 1:
            raise UserError(f"{where}: w and p0 must be in [0, 1]")
        if not 0 < abs(a.k) <= 100:
            raise UserError(f"{where}.k: must be non-zero with |k| <= 100")
        if a.temperature <= 0:
            raise UserError(f"{where}.temperature: must be > 0")


def _validate_switch(r: Recipe, tasks: tuple) -> None:
    _check_per_task(r.switch.per_task, Switch, tasks, "switch.per_task")
    if r.switch.order and sorted(r.switch.order) != sorted(tasks):
        raise UserError("switch.order: must list exactly this run's tasks")
    for t in tasks:
        sw = r.switch_for(t)
        where = f"switch.per_task.{t}" if t in r.switch.per_task else "switch"
        if sw.patience < 1:
            raise UserError(f"{where}.patience: must be >= 1")
        if not 0 < sw.ema <= 1:
            raise UserError(f"{where}.ema: must be in (0, 1]")
        if sw.criterion == "fixed_step" and sw.at_step is None:
            raise UserError(f"{where}.at_step: required by criterion fixed_step")
        if sw.at_step is not None and sw.at_step < 1:
            raise UserError(f"{where}.at_step: {sw.at_step} must be >= 1 (the training step of the switch)")
        if not 0 <= sw.gold_weight <= 1:
            raise UserError(f"{where}.gold_weight: must be in [0, 1]")
        if sw.criterion == "never" and r.switch.mode == "sequential":
            key = f"switch.per_task.{t}" if "criterion" in (r.switch.per_task.get(t) or {}) else "switch"
            fires = ", ".join(c for c in CRITERIA if c != "never")
            raise UserError(f"{key}.criterion: never with switch.mode sequential: {t} would never switch, and a "
                            f"task joins only when every task before it has switched; use one that fires: {fires}")


def _validate_early_stop(r: Recipe) -> None:
    p = r.early_stop.patience
    if p is None or p == 0:
        return
    if p < 0:
        raise UserError("early_stop.patience: must be >= 0 evaluations (0 or null: no early stopping)")
    if p > r.evals - 2:
        raise UserError(f"early_stop.patience: {p} leaves no room to stop early with evals {r.evals} (a run stops "
                        f"at the earliest after patience + 1 evaluations): at most {max(r.evals - 2, 0)}, or more "
                        "evals")
    if r.switch.mode == "sequential":
        raise UserError("early_stop.patience: not with switch.mode sequential (tasks join during the run, so their "
                        "mean dev score is not one quantity to watch)")


def validate(r: Recipe) -> None:
    """The checks a field's type and choices cannot express: ranges, tasks, companions (fixed_step: at_step)."""
    try:
        tasks = parse_tasks(list(r.tasks))
    except UnknownTaskError as e:
        raise UserError(f"tasks: {e}") from None
    if tasks != tuple(r.tasks):
        raise UserError(f"tasks: use canonical task names {', '.join(tasks)}")
    if r.evals < 1:
        raise UserError("evals: must be >= 1")
    o = r.optim
    for name in ("lr", "batch_size", "epochs"):
        if getattr(o, name) <= 0:
            raise UserError(f"optim.{name}: must be > 0")
    if not 0 < o.layer_decay <= 1:
        raise UserError("optim.layer_decay: must be in (0, 1]")
    if not 0 <= o.warmup < 1:
        raise UserError("optim.warmup: must be in [0, 1)")
    if o.weight_decay < 0 or o.clip < 0:
        raise UserError(f"optim.{'weight_decay' if o.weight_decay < 0 else 'clip'}: must be >= 0 (clip 0: no clipping)")
    if o.steps is not None and o.steps < 1:
        raise UserError(f"optim.steps: {o.steps} must be >= 1 (or null: the length from optim.epochs)")
    for key in ("max_train_examples", "max_dev_examples"):
        v = getattr(r.data, key)
        if v is not None and v < 1:
            raise UserError(f"data.{key}: must be >= 1 (or null for all)")
    for key, v in (("seed", r.seed), ("data.data_seed", r.data.data_seed)):
        if not 0 <= v < 2 ** 32:                      # numpy and torch seed generators take 0 .. 2^32-1
            raise UserError(f"{key}: {v} must be a whole number from 0 to 2^32-1")
    if r.data.max_length < 8:
        raise UserError("data.max_length: must be >= 8")
    _validate_anneal(r, tasks)
    s = r.sampling
    if s.alpha < 0 or (s.alpha_end is not None and s.alpha_end < 0):
        raise UserError("sampling.alpha: must be >= 0")
    if s.temperature <= 0:
        raise UserError("sampling.temperature: must be > 0")
    if s.method == "weights":
        w = s.weights or {}
        unknown = set(w) - set(tasks)
        if unknown:
            raise UserError(f"sampling.weights.{sorted(unknown)[0]}: task not in this run")
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf for v in w.values()) \
                or sum(w.values()) <= 0:
            raise UserError("sampling.weights: weights must be finite, >= 0 and sum to a positive number")
    if r.mtl.pcgrad and s.batches == "single":
        raise UserError("mtl.pcgrad: needs sampling.batches mixed (single-task batches give one task's gradient "
                        "per step, so there is nothing to project)")
    _validate_switch(r, tasks)
    _validate_early_stop(r)
    _validate_student(r)
    _validate_loss_weights(r, tasks)
    _validate_teacher_seeds(r.teacher.seeds)
    if not all(isinstance(n, str) and n for n in r.teacher.experiment):
        raise UserError(f"teacher.experiment: expected experiment names, got {list(r.teacher.experiment)!r}")


def _validate_loss_weights(r: Recipe, tasks: tuple) -> None:
    """``mtl.weights``: a finite number >= 0 per task of the run (a negative weight would maximise that loss)."""
    for t, w in (r.mtl.weights or {}).items():
        if t not in tasks:
            raise UserError(f"mtl.weights.{t}: task not in this run")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise UserError(f"mtl.weights.{t}: {w!r} must be a finite number >= 0 (a negative weight would "
                            "maximise that task's loss)")


def _validate_teacher_seeds(seeds: tuple) -> None:
    """The seeds of ``bam-search teachers --seeds N`` are 0..N-1: whole numbers >= 0, each once."""
    if not seeds:
        raise UserError("teacher.seeds: at least one seed")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise UserError(f"teacher.seeds: {s!r} is not a teacher seed (bam-search teachers --seeds N trains "
                            f"seeds 0..N-1): give whole numbers >= 0, e.g. [0] or [0, 1]")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"teacher.seeds: {list(seeds)} names a seed twice")


def check_student_shape(model: str, *, init: str, num_layers: int | None, hidden_size: int | None) -> None:
    """What ``student.init`` means (``model.build_encoder``): pretrained = the base model as it is; extract =
    some of its pretrained layers, evenly spaced, at its width; random = a fresh encoder of any size. ``tiny``
    has no pretrained weights (it is always built from its config), so it cannot be extracted from."""
    for key, v in (("num_layers", num_layers), ("hidden_size", hidden_size)):
        if v is not None and v < 1:
            raise UserError(f"student.{key}: must be >= 1 (or null: the base model's)")
    if init == "pretrained" and (num_layers or hidden_size):
        raise UserError(f"student.{'num_layers' if num_layers else 'hidden_size'}: init pretrained keeps the base "
                        "model as it is; for a compact student use init random (a fresh encoder of this size) or "
                        "init extract (fewer of the pretrained layers)")
    if init != "extract":
        return
    if model == "tiny":
        raise UserError("student.init: extract needs pretrained weights and model tiny has none (it is always "
                        "built from its config): use init random")
    if hidden_size is not None:
        raise UserError("student.hidden_size: init extract keeps the base model's width; use init random for "
                        "another width")
    if num_layers is None:
        raise UserError("student.num_layers: required by init extract (how many evenly spaced layers to keep)")


def _validate_student(r: Recipe) -> None:
    """The student's shape and init, and what hidden-state distillation (XtremeDistil) needs."""
    st = r.student
    check_student_shape(r.model, init=st.init, num_layers=st.num_layers, hidden_size=st.hidden_size)
    if st.hidden_distill < 0:
        raise UserError("student.hidden_distill: must be >= 0")
    if not 0 <= st.dropout < 1:
        raise UserError("student.dropout: must be in [0, 1)")
    if st.hidden_distill > 0 and not r.teacher.use:
        raise UserError("student.hidden_distill: needs teacher.use true (it distils the stored teachers' "
                        "hidden states)")
    if st.hidden_distill > 0 and r.teacher.ensemble and len(r.teacher.seeds) > 1:
        raise UserError("teacher.ensemble: not with student.hidden_distill > 0, which distils one teacher's "
                        "hidden states per task (seeds' encoders do not share a hidden space, so their states "
                        "cannot be averaged); set teacher.ensemble false (the first seed's) or hidden_distill 0")


# ------------------------------------------------------------------------------------------------ the fields

def _settings(cls=None, prefix: str = ""):
    """(dotted key, field, type) of every setting of the schema, sections walked in order."""
    cls = cls or Recipe
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _settings(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f, hints[f.name]


def method_families() -> dict[str, tuple[str, ...]]:
    """The allowed names of every setting that takes one (its registry), by dotted key: ``anneal.schedule``..."""
    return {key: tuple(f.metadata["choices"]) for key, f, _ in _settings() if f.metadata.get("choices")}


def is_mutable(key: str) -> bool:
    """May a parameter at dotted ``key`` change in the middle of a run (PBT)? ``anneal.per_task.rte.k``, a
    key inside a mapping (``mtl.weights.rte``) and the mapping itself follow the field's ``mutable``."""
    cls, parts = Recipe, key.split(".")
    while parts:
        name = parts.pop(0)
        f = next((f for f in dataclasses.fields(cls) if f.name == name), None)
        if f is None:
            return False
        tp = typing.get_type_hints(cls)[name]
        if dataclasses.is_dataclass(tp):
            cls = tp
            continue
        if not f.metadata.get("mutable"):
            return False
        if name != "per_task" or len(parts) < 2:
            return True
        parts.pop(0)                                    # the task: its settings are the section's
    return False


def mutable_keys() -> list[str]:
    """The mutable settings for messages: ``section.*`` when all of a section is, ``key.*`` for a mapping."""
    by_section: dict[str, list] = {}
    for key, f, tp in _settings():
        by_section.setdefault(key.rpartition(".")[0], []).append((key, f.metadata.get("mutable"), tp))
    out: list[str] = []
    for section, items in by_section.items():
        if section and all(mutable for _, mutable, _ in items):
            out.append(f"{section}.*")
            continue
        out += [key + (".*" if dict in (tp, *typing.get_args(tp)) else "") for key, mutable, tp in items if mutable]
    return out


# ------------------------------------------------------------------------------------------------ files

class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` (no dot) as a float, as YAML 1.2 and every ML config user expect."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _construct_mapping(loader, node, deep=False):
    """A key twice in one mapping is an error at the second key's line (YAML's last-wins would silently drop
    the first block)."""
    if isinstance(node, yaml.MappingNode):
        seen: dict = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}, first on line {seen[key] + 1}; YAML would silently keep only "
                    "the last: merge the two", key_node.start_mark)
            seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.construct_mapping = _construct_mapping


def safe_load(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise UserError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"override {text!r}: empty key")
    try:
        value = safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def set_dotted(data: dict, parts: list[str], value) -> None:
    node = data
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise UserError(f"override {'.'.join(parts)}: {p} is not a section")
        node = nxt
    node[parts[-1]] = value


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    import copy
    out = copy.deepcopy(data)
    for text in overrides or ():
        parts, value = parse_override(text)
        set_dotted(out, parts, value)
    return out


def load_yaml(path: str | Path) -> dict:
    """Safe-load a YAML mapping; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        data = safe_load(path.read_text())
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line}: invalid YAML ({getattr(e, 'problem', None) or e})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return data


def load_recipe(path: str | Path, *, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    data = load_yaml(path)
    if not data:                                 # every setting would silently be a default
        raise UserError(f"{path}: empty recipe (no settings); give at least tasks and model, e.g. from "
                        "bam-search best NAME --export FILE or recipes/")
    try:
        return recipe_from_dict(apply_overrides(data, overrides), source=str(path))
    except UserError as e:
        raise UserError(with_key_line(str(e), path=path, overrides=overrides)) from None


# ------------------------------------------------------------------------------------------------ line numbers

def yaml_key_lines(path: str | Path) -> dict[tuple[str, ...], int]:
    """The 1-based line of every mapping key of a YAML file, by its path of keys ({} if it does not parse).

    Composing builds nodes only (no Python objects), so this is as safe as ``safe_load``."""
    try:
        root = yaml.compose(Path(path).read_text(), Loader=_Loader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    out: dict[tuple[str, ...], int] = {}

    def walk(node, prefix: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode):
                    key = prefix + (str(k.value),)
                    out.setdefault(key, k.start_mark.line + 1)
                    walk(v, key)

    walk(root, ())
    return out


_ERROR_KEY = (re.compile(r"^unknown key '([^']+)'"), re.compile(r"^([A-Za-z_][\w.]*):"))


def error_key(message: str) -> str | None:
    """The dotted recipe key a schema error names at its start (``optim.lrr``), if any."""
    for rx in _ERROR_KEY:
        m = rx.match(message)
        if m:
            return m.group(1)
    return None


def key_line(lines: dict[tuple[str, ...], int], dotted: str | None, *, prefix: tuple[str, ...] = ()) -> int | None:
    """Line of ``dotted`` (or of its nearest enclosing section) in a file's ``yaml_key_lines``."""
    if not dotted:
        return None
    parts = tuple(dotted.split("."))
    while parts:
        if prefix + parts in lines:
            return lines[prefix + parts]
        parts = parts[:-1]
    return None


def with_key_line(message: str, *, path: str | Path, overrides=(), prefix: tuple[str, ...] = ()) -> str:
    """``<path>: <key>: ...`` -> ``<path>:<line>: <key>: ...`` when the key is in the file and not set by
    an override (an override's mistake has no line in the file)."""
    head = f"{path}: "
    if not message.startswith(head):
        return message
    inner = message[len(head):]
    key = error_key(inner)
    if key is None:
        return message
    for text in overrides or ():
        okey = text.split("=", 1)[0].strip()
        if key == okey or key.startswith(okey + ".") or okey.startswith(key + "."):
            return message
    line = key_line(yaml_key_lines(path), key, prefix=prefix)
    return f"{path}:{line}: {inner}" if line else message


def dump_recipe(recipe: Recipe, *, command: str) -> str:
    """YAML whose first line is the command that runs it (torchtune style)."""
    return f"# {command}\n" + yaml.safe_dump(recipe.to_dict(), sort_keys=False)


PAIR = "tasks+seed"          # a Tune param whose value sets several dotted keys at once (teachers' (task, seed) pairs)


def with_params(recipe: dict, params: dict) -> dict:
    """The base recipe with sampled values set at their dotted keys (a ``PAIR`` value: a dict of them)."""
    import copy
    out = copy.deepcopy(recipe)
    for key, value in params.items():
        for k, v in (value.items() if key == PAIR else [(key, value)]):
            set_dotted(out, k.split("."), v)
    return out
