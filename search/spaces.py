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
"""
from __future__ import annotations

from pathlib import Path

from trainables.errors import UserError
from trainables.recipe import error_key, load_yaml, recipe_from_dict, with_params, yaml_key_lines

DISTRIBUTIONS = ("constant", "categorical", "uniform", "log_uniform_values", "int_uniform", "q_uniform",
                 "q_log_uniform_values", "normal")
SPACE_KEYS = {"description", "base", "parameters", "metric", "method", "program", "name"}
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


def check_param(name: str, spec: dict, where: str) -> str:
    kind = _kind(name, spec, where)
    if kind == "categorical":
        if not isinstance(spec.get("values"), list) or not spec["values"]:
            raise UserError(f"{where}: parameter {name}: values must be a non-empty list")
    elif kind in ("uniform", "log_uniform_values", "int_uniform", "q_uniform", "q_log_uniform_values"):
        lo, hi = spec.get("min"), spec.get("max")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)):
            raise UserError(f"{where}: parameter {name}: min and max must be numbers")
        if lo > hi:
            raise UserError(f"{where}: parameter {name}: min {lo} > max {hi}")
        if kind.startswith("log") or kind == "q_log_uniform_values":
            if lo <= 0:
                raise UserError(f"{where}: parameter {name}: log_uniform_values needs min > 0")
        if kind == "int_uniform" and not all(isinstance(v, int) for v in (lo, hi)):
            raise UserError(f"{where}: parameter {name}: int_uniform needs integer min and max")
    elif kind == "normal":
        if "mu" not in spec or "sigma" not in spec:
            raise UserError(f"{where}: parameter {name}: normal needs mu and sigma")
    return kind


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
            "kinds": kinds, "metric": data.get("metric")}


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


def list_spaces() -> list[Path]:
    return sorted(SPACES_DIR.glob("*.yaml"))
