"""Search spaces in the parameter syntax of W&B sweep configs, mapped onto Ray Tune distributions.

    # bam-search sweep spaces/anneal.yaml --tasks rte,mrpc
    description: teacher-annealing schedules
    base: {optim: {epochs: 3}}            # optional recipe defaults for this space
    parameters:
      anneal.schedule: {values: [linear, cosine, sigmoid]}
      anneal:                             # nested keys, as W&B writes them
        parameters:
          p0: {distribution: uniform, min: 0.1, max: 0.7}
      optim.lr: {distribution: log_uniform_values, min: 1.0e-5, max: 1.0e-4}

W&B's sweep keys mean what they say there (flags on the command line win; ``search/preflight.py`` merges):
``method`` grid | random | bayes -> searcher grid | random | optuna (Optuna's TPE); ``metric: {name, goal}``
-> --metric (goal maximize: every metric bam-search reports is higher-is-better); ``early_terminate: {type:
hyperband, min_iter | max_iter + s, eta}`` -> ASHA with grace period min_iter (or max_iter / eta^s) and
reduction factor eta (W&B's default 3); ``name`` -> the experiment's name; ``values`` + ``probabilities`` ->
a weighted categorical (random search). ``program`` and anything else W&B knows but bam-search cannot honour
are refused in one line naming file:line.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

from trainables.errors import UserError
from trainables.recipe import error_key, load_yaml, recipe_from_dict, with_params, yaml_key_lines

DISTRIBUTIONS = ("constant", "categorical", "uniform", "log_uniform_values", "int_uniform", "q_uniform",
                 "q_log_uniform_values", "normal")
SPACE_KEYS = {"description", "base", "parameters", "metric", "method", "program", "name", "early_terminate"}
METHODS = {"grid": "grid", "random": "random", "bayes": "optuna"}   # W&B method -> searcher (bayes: Optuna's TPE)
HYPERBAND_KEYS = ("type", "min_iter", "max_iter", "s", "eta")
HYPERBAND_ETA = 3                                                    # W&B's default eta
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
PARAM_KEYS = {"value", "values", "distribution", "min", "max", "q", "mu", "sigma", "parameters", "probabilities"}
SPACES_DIR = Path(__file__).resolve().parent.parent / "spaces"


def parameter_lines(path: str | Path) -> dict[str, int]:
    """Line of each parameter of a space file by its flattened name (``anneal.p0`` for nested ones)."""
    out = {}
    for keys, line in yaml_key_lines(path).items():
        if keys[0] == "parameters" and len(keys) > 1:
            out.setdefault(".".join(k for k in keys[1:] if k != "parameters"), line)
    return out


def flatten_parameters(params: dict, *, prefix: str = "", where: str,
                       lines: dict[str, int] | None = None) -> dict[str, dict]:
    out = {}
    if not isinstance(params, dict):
        raise UserError(f"{where}: parameters{'.' + prefix if prefix else ''} must be a mapping")
    for key, spec in params.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        at = f"{where}:{lines[name]}" if lines and name in lines else where
        if not isinstance(spec, dict):
            raise UserError(f"{at}: parameter {name}: expected a mapping such as {{values: [...]}}")
        unknown = set(spec) - PARAM_KEYS
        if unknown:
            raise UserError(f"{at}: parameter {name}: unknown key {sorted(unknown)[0]!r}")
        if "parameters" in spec:
            out.update(flatten_parameters(spec["parameters"], prefix=name, where=where, lines=lines))
        else:
            out[name] = spec
    return out


def _kind(name: str, spec: dict, where: str) -> str:
    dist = spec.get("distribution")
    if dist is None:
        if "value" in spec:
            return "constant"
        if "values" in spec:
            return "categorical"
        if "min" in spec and "max" in spec:
            both_int = all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("min", "max"))
            return "int_uniform" if both_int else "uniform"
        raise UserError(f"{where}: parameter {name}: needs value, values, or a distribution with min/max")
    if dist not in DISTRIBUTIONS:
        raise UserError(f"{where}: parameter {name}: unknown distribution {dist!r} (one of {', '.join(DISTRIBUTIONS)})")
    return dist


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_param(name: str, spec: dict, where: str) -> str:
    kind = _kind(name, spec, where)
    if "probabilities" in spec and kind != "categorical":
        raise UserError(f"{where}: parameter {name}: probabilities go with values (a categorical), not {kind}")
    if kind == "constant" and "value" not in spec:
        raise UserError(f"{where}: parameter {name}: distribution constant needs value (e.g. {{value: 0.5}})")
    if kind == "categorical":
        if not isinstance(spec.get("values"), list) or not spec["values"]:
            raise UserError(f"{where}: parameter {name}: values must be a non-empty list")
        if "probabilities" in spec:
            check_probabilities(name, spec, where)
    elif kind in ("uniform", "log_uniform_values", "int_uniform", "q_uniform", "q_log_uniform_values"):
        lo, hi = spec.get("min"), spec.get("max")
        if not all(_number(v) for v in (lo, hi)):
            raise UserError(f"{where}: parameter {name}: min and max must be finite numbers")
        if lo > hi:
            raise UserError(f"{where}: parameter {name}: min {lo} > max {hi}")
        if kind.startswith("log") or kind == "q_log_uniform_values":
            if lo <= 0:
                raise UserError(f"{where}: parameter {name}: log_uniform_values needs min > 0")
        if kind == "int_uniform" and not all(isinstance(v, int) for v in (lo, hi)):
            raise UserError(f"{where}: parameter {name}: int_uniform needs integer min and max")
        if kind.startswith("q_") and not (_number(spec.get("q", 1)) and spec.get("q", 1) > 0):
            raise UserError(f"{where}: parameter {name}: q {spec['q']!r} must be a number > 0 (values are rounded "
                            f"to multiples of q)")
    elif kind == "normal":
        if "mu" not in spec or "sigma" not in spec:
            raise UserError(f"{where}: parameter {name}: normal needs mu and sigma")
        if not _number(spec["mu"]):
            raise UserError(f"{where}: parameter {name}: mu {spec['mu']!r} must be a finite number")
        if not (_number(spec["sigma"]) and spec["sigma"] > 0):
            raise UserError(f"{where}: parameter {name}: sigma {spec['sigma']!r} must be a number > 0")
    return kind


def check_probabilities(name: str, spec: dict, where: str) -> None:
    """W&B's categorical with probabilities: one number >= 0 per value, summing to 1."""
    p, n = spec["probabilities"], len(spec["values"])
    if not isinstance(p, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in p):
        raise UserError(f"{where}: parameter {name}: probabilities must be a list of numbers, one per value")
    if len(p) != n:
        raise UserError(f"{where}: parameter {name}: {len(p)} probabilities for {n} values (one per value)")
    if not all(math.isfinite(x) and x >= 0 for x in p):
        raise UserError(f"{where}: parameter {name}: probabilities must be finite and >= 0")
    if abs(sum(p) - 1) > 1e-6:
        raise UserError(f"{where}: parameter {name}: probabilities sum to {sum(p):g}, not 1")


def examples_of(spec: dict, kind: str) -> list:
    """Values of the parameter that the recipe schema must accept (checked before Ray starts)."""
    if kind == "constant":
        return [spec["value"]]
    if kind == "categorical":
        return list(spec["values"])
    if kind == "normal":
        return [spec["mu"]]
    return [spec["min"], spec["max"]]


def load_space(path: str | Path, *, base_recipe: dict) -> dict:
    """Load and check a space: every parameter's example values must make a valid recipe with the space's
    ``base`` under ``base_recipe`` (what the command line set, which wins over the space's base)."""
    path = Path(path)
    if not path.exists() and (SPACES_DIR / path).exists():
        path = SPACES_DIR / path
    if not path.exists() and (SPACES_DIR / f"{path}.yaml").exists():
        path = SPACES_DIR / f"{path}.yaml"
    data = load_yaml(path)
    where = str(path)
    keys = yaml_key_lines(path)                      # errors name the file and the line of the key at fault
    lines = parameter_lines(path)

    def at(name: str) -> str:
        return f"{where}:{lines[name]}" if name in lines else where

    unknown = set(data) - SPACE_KEYS
    if unknown:
        bad = sorted(unknown)[0]
        line = keys.get((str(bad),))
        raise UserError(f"{where}{f':{line}' if line else ''}: unknown key {bad!r} "
                        f"(known: {', '.join(sorted(SPACE_KEYS))})")
    sweep = sweep_keys(data, where=where, keys=keys)   # W&B's method, metric, early_terminate, name
    params = flatten_parameters(data.get("parameters") or {}, where=where, lines=lines)
    if not params:
        raise UserError(f"{where}: no parameters")
    if not isinstance(data.get("base") or {}, dict):
        line = keys.get(("base",))
        raise UserError(f"{where}{f':{line}' if line else ''}: base must be a mapping of recipe keys")
    base: dict = {}
    for k, v in (data.get("base") or {}).items():
        base = with_params(base, {k: v}) if "." in k else {**base, k: _merge(base.get(k), v)}
    base = _merge(base, with_params(base_recipe, {}))   # the command line (flags, --set) beats the space's base
    kinds = {}
    for name, spec in params.items():
        kinds[name] = check_param(name, spec, at(name))
    # the first value of each together (a mistake of the command line, the base or a parameter), then every
    # value on its own
    try:
        recipe_from_dict(with_params(base, {n: examples_of(s, kinds[n])[0] for n, s in params.items()}), source=where)
    except UserError as e:
        raise UserError(_attribute(str(e), where=where, keys=keys, params=list(params), at=at)) from None
    for name, spec in params.items():
        for value in examples_of(spec, kinds[name]):
            recipe_from_dict(with_params(base, {name: value}), source=f"{at(name)}: parameter {name}={value!r}")
    return {"path": str(path), "description": data.get("description", ""), "base": base, "parameters": params,
            "kinds": kinds, "where": {n: at(n) for n in params}, "sweep": sweep}


# ------------------------------------------------------------------------------- W&B's top-level sweep keys

def sweep_keys(data: dict, *, where: str, keys: dict) -> dict[str, tuple]:
    """What the space's W&B keys set, each as (value, origin): ``origin`` names file:line and the key, for
    errors and for recording which source won. Keys: searcher, metric, scheduler, grace_period,
    reduction_factor, max_iter, name. A key bam-search cannot honour is refused here."""
    def at(*path: str) -> str:
        line = keys.get(path) or keys.get(path[:1])
        return f"{where}:{line}" if line else where
    out: dict[str, tuple] = {}
    if "program" in data:
        raise UserError(f"{at('program')}: program: bam-search runs its own trainable in every trial "
                        f"(trainables/trial.py), not a W&B agent's script; remove program")
    if "method" in data:
        method = data["method"]
        if method not in METHODS:
            raise UserError(f"{at('method')}: method {method!r}: one of grid, random, bayes (Optuna's TPE)")
        out["searcher"] = (METHODS[method], f"{at('method')}: method {method}")
    if "metric" in data:
        out["metric"] = _metric_key(data["metric"], at)
    if "early_terminate" in data:
        out.update(_early_terminate_key(data["early_terminate"], at))
    if "name" in data:
        name = data["name"]
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise UserError(f"{at('name')}: name {name!r}: the experiment's folder (experiments/NAME) takes "
                            f"letters, digits, '.', '_' and '-' (at most 100)")
        out["name"] = (name, f"{at('name')}: name")
    return out


def _metric_key(metric, at) -> tuple:
    """``metric: {name, goal}``: every metric bam-search reports is higher-is-better, so goal maximize."""
    if not isinstance(metric, dict):
        raise UserError(f"{at('metric')}: metric must be a mapping such as {{name: glue_avg, goal: maximize}}")
    extra = sorted(set(metric) - {"name", "goal"}, key=str)
    if extra:
        raise UserError(f"{at('metric', str(extra[0]))}: metric.{extra[0]}: not supported (bam-search takes "
                        f"metric.name and metric.goal)")
    name, goal = metric.get("name"), metric.get("goal")
    if not isinstance(name, str) or not name:
        raise UserError(f"{at('metric', 'name')}: metric.name: the metric to rank trials on, e.g. glue_avg")
    if goal is None:
        raise UserError(f"{at('metric')}: metric.goal missing: W&B's default is minimize, but {name} is "
                        f"higher-is-better; write goal: maximize")
    if goal == "minimize":
        raise UserError(f"{at('metric', 'goal')}: metric.goal minimize: every metric bam-search reports "
                        f"({name} among them) is higher-is-better and the best trial is the highest; "
                        f"write goal: maximize")
    if goal != "maximize":
        raise UserError(f"{at('metric', 'goal')}: metric.goal {goal!r}: maximize (or W&B's minimize)")
    return name, f"{at('metric', 'name')}: metric.name"


def _early_terminate_key(et, at) -> dict[str, tuple]:
    """W&B's hyperband stopping as ASHA: its first band (min_iter, or max_iter / eta^s) is ASHA's grace
    period, eta its reduction factor; max_iter must be the recipe's evals (checked in preflight)."""
    if not isinstance(et, dict):
        raise UserError(f"{at('early_terminate')}: early_terminate must be a mapping such as "
                        f"{{type: hyperband, min_iter: 1, eta: 2}}")
    if et.get("type") != "hyperband":
        raise UserError(f"{at('early_terminate', 'type')}: early_terminate.type {et.get('type')!r}: only "
                        f"hyperband (run as ASHA); or choose with --scheduler")
    extra = sorted(set(et) - set(HYPERBAND_KEYS), key=str)
    if extra:
        raise UserError(f"{at('early_terminate', str(extra[0]))}: early_terminate.{extra[0]}: not supported "
                        f"(ASHA takes {', '.join(HYPERBAND_KEYS)})")
    for k in ("min_iter", "max_iter", "s"):
        v = et.get(k)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise UserError(f"{at('early_terminate', k)}: early_terminate.{k} {v!r}: a whole number >= 1 (evaluations)")
    eta = et.get("eta", HYPERBAND_ETA)
    if not isinstance(eta, (int, float)) or isinstance(eta, bool) or not eta > 1:
        raise UserError(f"{at('early_terminate', 'eta')}: early_terminate.eta {eta!r}: must be > 1 (ASHA keeps "
                        f"1/eta of the trials per rung)")
    has_min, has_max = "min_iter" in et, "max_iter" in et or "s" in et
    if has_min == has_max or ("max_iter" in et) != ("s" in et):
        raise UserError(f"{at('early_terminate')}: early_terminate: give min_iter, or max_iter with s (not both)")
    out = {"scheduler": ("asha", f"{at('early_terminate')}: early_terminate"),
           "reduction_factor": (eta, f"{at('early_terminate', 'eta')}: early_terminate.eta"
                                     + ("" if "eta" in et else f" (W&B's default {HYPERBAND_ETA})"))}
    if has_min:
        return {**out, "grace_period": (et["min_iter"],
                                        f"{at('early_terminate', 'min_iter')}: early_terminate.min_iter")}
    grace = int(et["max_iter"] / eta ** et["s"])           # W&B's first band
    if grace < 1:
        raise UserError(f"{at('early_terminate', 's')}: early_terminate: max_iter / eta^s = "
                        f"{et['max_iter'] / eta ** et['s']:g}, below one evaluation; lower s or eta")
    return {**out, "grace_period": (grace, f"{at('early_terminate', 's')}: early_terminate max_iter/eta^s"),
            "max_iter": (et["max_iter"], f"{at('early_terminate', 'max_iter')}: early_terminate.max_iter")}


def _attribute(message: str, *, where: str, keys: dict, params: list[str], at) -> str:
    """Name the origin of a recipe error found while loading a space: one of its parameters (file:line),
    its ``base`` section (file:line), or else the command line (--tasks, --set, ...)."""
    inner = message[len(where) + 2:] if message.startswith(f"{where}: ") else message
    key = error_key(inner)
    if key is None:
        return message
    for p in params:
        if key == p or key.startswith(p + ".") or p.startswith(key + "."):
            return f"{at(p)}: parameter {p}: {inner}"
    line = keys.get(("base", *key.split(".")))
    if line:
        return f"{where}:{line}: {inner}"
    return f"command line (--tasks, --set, ...): {inner}"


def _merge(a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            out[k] = _merge(a.get(k), v)
        return out
    return b


def trial_count(space: dict, *, searcher: str, num_samples: int) -> int:
    """Trials a sweep runs: ``num_samples``, times every combination of the categorical values under grid."""
    n = num_samples
    if searcher == "grid":
        for name, spec in space["parameters"].items():
            if space["kinds"][name] == "categorical":
                n *= len(spec["values"])
    return n


def to_tune(space: dict, *, searcher: str) -> dict:
    """Tune distributions for each parameter (grid: categorical values become grid_search)."""
    from ray import tune
    out = {}
    for name, spec in space["parameters"].items():
        kind = space["kinds"][name]
        if kind == "constant":
            out[name] = spec["value"]
        elif kind == "categorical" and "probabilities" in spec:
            out[name] = weighted_choice(spec["values"], spec["probabilities"],
                                        searcher=searcher,
                                        where=f"{space.get('where', {}).get(name, space['path'])}: parameter {name}")
        elif kind == "categorical":
            out[name] = tune.grid_search(spec["values"]) if searcher == "grid" else tune.choice(spec["values"])
        elif searcher == "grid":
            raise UserError(f"{space['path']}: parameter {name}: the grid searcher takes only value/values")
        elif kind == "uniform":
            out[name] = tune.uniform(spec["min"], spec["max"])
        elif kind == "log_uniform_values":
            out[name] = tune.loguniform(spec["min"], spec["max"])
        elif kind == "int_uniform":
            out[name] = tune.randint(spec["min"], spec["max"] + 1)
        elif kind == "q_uniform":
            out[name] = tune.quniform(spec["min"], spec["max"], spec.get("q", 1))
        elif kind == "q_log_uniform_values":
            out[name] = tune.qloguniform(spec["min"], spec["max"], spec.get("q", 1))
        elif kind == "normal":
            out[name] = tune.randn(spec["mu"], spec["sigma"])
    return out


class Weighted:
    """A Tune sampler for a categorical domain: each value with its probability (W&B's ``probabilities``).
    Tune's random search (BasicVariantGenerator) calls ``sample``; Optuna and the grid are refused before."""

    def __init__(self, probabilities: list[float]):
        total = float(sum(probabilities))
        self.probabilities = [float(x) / total for x in probabilities]

    def sample(self, domain, config=None, size: int = 1, random_state=None):
        from ray.tune.search.sample import _BackwardsCompatibleNumpyRng
        if not isinstance(random_state, _BackwardsCompatibleNumpyRng):
            random_state = _BackwardsCompatibleNumpyRng(random_state)
        picks = random_state.choice(len(domain.categories), size=size, p=self.probabilities)
        items = [domain.categories[int(i)] for i in picks]        # by index: keeps each value's own type
        return items if size > 1 else domain.cast(items[0])

    def __str__(self) -> str:
        return f"Weighted({self.probabilities})"


def weighted_choice(values: list, probabilities: list, *, searcher: str, where: str):
    """``values`` with ``probabilities``: a Tune categorical sampled with those weights (random search only)."""
    from ray.tune.search.sample import Categorical
    if searcher == "grid":
        raise UserError(f"{where}: probabilities: the grid searcher runs every value once; use --searcher random "
                        f"(method: random) or drop probabilities")
    if searcher != "random":
        raise UserError(f"{where}: probabilities: Optuna's TPE (--searcher optuna, method: bayes, the default) "
                        f"takes no prior weights; use --searcher random (method: random) or drop probabilities")
    domain = Categorical(values)
    domain.set_sampler(Weighted(probabilities))
    return domain


def list_spaces() -> list[Path]:
    return sorted(SPACES_DIR.glob("*.yaml"))
