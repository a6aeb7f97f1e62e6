"""Pareto choice of recipes: quality (the trial's one-checkpoint score) vs student size and inference latency.

Latency depends on the student's architecture, not on its weights, so it is measured here, on the driver,
when the user asks (``best --pareto``, the report): one architecture at a time, every trial on one machine at
one moment (trials timing themselves on busy workers would not compare). Each distinct architecture is
measured once and the figures are cached in ``experiments/NAME/latency.json`` with the machine they were
taken on; a second call reads them back (another machine measures afresh).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import statistics
import time

LATENCY_FILE = "latency.json"
BATCH_SIZES = (1, 32)


# ------------------------------------------------------------------------------------------------ the front

def dominates(a: dict, b: dict, *, maximise=("score",), minimise=("ms_1", "params")) -> bool:
    """``a`` is at least as good as ``b`` on every axis and strictly better on one."""
    ge = all(a[k] >= b[k] for k in maximise) and all(a[k] <= b[k] for k in minimise)
    gt = any(a[k] > b[k] for k in maximise) or any(a[k] < b[k] for k in minimise)
    return ge and gt


def pareto_front(points: list[dict], *, maximise=("score",), minimise=("ms_1", "params")) -> list[int]:
    """Indices of the points no other point dominates (ties on every axis: all of them stay), in order."""
    return [i for i, p in enumerate(points)
            if not any(dominates(q, p, maximise=maximise, minimise=minimise) for j, q in enumerate(points) if j != i)]


# ------------------------------------------------------------------------------------------------ architecture

def architecture(recipe: dict) -> dict:
    """What latency depends on: the base model, the student's depth, width and pooling, its heads (tasks), the
    inputs' length cap and the precision it runs at. The weights (``student.init``) do not matter."""
    st = recipe.get("student") or {}
    return {"model": recipe.get("model"), "num_layers": st.get("num_layers"), "hidden_size": st.get("hidden_size"),
            "pooling": st.get("pooling", "cls"), "tasks": sorted(recipe.get("tasks") or []),
            "max_length": (recipe.get("data") or {}).get("max_length"), "precision": recipe.get("precision")}


def architecture_key(arch: dict) -> str:
    return hashlib.sha256(json.dumps(arch, sort_keys=True, default=str).encode()).hexdigest()[:12]


def machine() -> dict:
    """Where latency figures were taken (``search/host.py``): CPU model, family/model/stepping, the speed flags by
    name and a digest of all of them, cores, Python, torch's version, kernels and threads. Figures from another
    machine are not comparable, so a cache taken elsewhere is measured again."""
    from .host import host
    h = host()
    keep = ("cpu", "family_model_stepping", "cpu_flags", "cpu_flags_sha", "cores", "threads_per_core", "python",
            "torch", "torch_cpu_capability", "torch_threads")
    return {**{k: h.get(k) for k in keep}, "device": "cpu"}


def machine_line(m: dict) -> str:
    """``machine()`` as one line: ``host_line``'s, and the threads torch ran on."""
    from .host import host_line
    return f"{host_line(m)}, {m.get('torch_threads')} torch threads"


# ------------------------------------------------------------------------------------------------ measuring

def _inputs(r, tokenizer, *, cache_dir, per_task: int) -> list[tuple]:
    """(task, tokenised dev split cut to ``per_task`` examples): real dev examples, tokenised as a trial does
    (same subsample, same length cap), so the lengths are the trial's."""
    import numpy as np

    from trainables.data import load_examples, tokenize_split
    from trainables.tasks import get_task
    d, out = r.data, []
    for t in r.tasks:
        ex = load_examples(task=t, split=get_task(t).dev_splits[0], glue_dir=d.glue_dir)
        split = tokenize_split(ex.subsample(max_examples=d.max_dev_examples, seed=d.data_seed),
                               tokenizer=tokenizer, max_length=d.max_length, cache_dir=cache_dir)
        out.append((t, split, np.arange(min(per_task, len(split)))))
    return out


def _student(r, tokenizer):
    """The student as a trial builds it (``trial.build_model``), but with random weights of the same shape:
    ``extract`` and ``pretrained`` load weights that latency does not depend on (a base model's folder is
    read for its config only)."""
    import dataclasses

    import torch

    from trainables.model import set_attention
    from trainables.trial import build_model
    from trainables.tasks import get_task
    shaped = dataclasses.replace(r, student=dataclasses.replace(r.student, init="random"))   # same shape
    model = build_model(shaped, tokenizer=tokenizer, tasks={t: get_task(t) for t in r.tasks})
    set_attention(model, torch.device("cpu"))          # the kernel a trial evaluates with on a CPU
    return model.eval()


def measure(recipe: dict, *, cache_dir=None, repeats: int = 5, per_task: int = 32) -> dict:
    """Parameters and ms per example at batch 1 and 32 of ``recipe``'s student on this CPU: the median of
    ``repeats`` timed passes over the same dev examples after one warm-up pass, ``inference_mode``, eval()."""
    import torch

    from trainables.model import load_tokenizer
    from trainables.precision import autocast_dtype
    from trainables.recipe import recipe_from_dict
    from trainables.trial import quiet_libraries
    quiet_libraries()
    r = recipe_from_dict(recipe, source="a trial's recipe")
    tokenizer = load_tokenizer(r.model, cache_dir=cache_dir)
    model = _student(r, tokenizer)
    amp = autocast_dtype(r.precision, torch.device("cpu"))
    inputs = _inputs(r, tokenizer, cache_dir=cache_dir, per_task=per_task)
    n = sum(len(idx) for _, _, idx in inputs)
    out = {"params": sum(p.numel() for p in model.parameters()), "num_layers": model.num_layers,
           "hidden_size": model.encoder.config.hidden_size, "ms_per_example": {}}
    for bs in BATCH_SIZES:
        batches = [(t, split.collate(idx[i:i + bs])) for t, split, idx in inputs for i in range(0, len(idx), bs)]

        def one_pass() -> float:
            start = time.perf_counter()
            with torch.inference_mode(), torch.autocast("cpu", dtype=amp, enabled=amp is not None):
                for t, b in batches:
                    model(task=t, input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                          token_type_ids=b["token_type_ids"])
            return time.perf_counter() - start
        one_pass()                                     # warm-up: allocator, kernels, caches
        out["ms_per_example"][str(bs)] = 1000 * statistics.median(one_pass() for _ in range(repeats)) / n
    return out


def latencies(storage: str, name: str, recipes: dict[str, dict], *, measure_fn=None) -> dict:
    """``{trial_id: figures}`` for ``recipes`` (trial id -> its full recipe), each distinct architecture
    measured once; cached in ``experiments/NAME/latency.json`` (reused when taken on this machine)."""
    from trainables.storage import Storage
    st = Storage.resolve(storage)
    cache_dir = os.environ.get("BAM_CACHE_DIR") or (str(st.local / "cache") if st.local else None)   # a trial's
    here = machine()
    cache = {"machine": here, "architectures": {}}
    if st.is_file("experiments", name, LATENCY_FILE):
        try:
            found = json.loads(st.read_bytes("experiments", name, LATENCY_FILE))
            if found.get("machine") == here:
                cache = found
        except ValueError:
            pass                                       # a torn file: measured again
    archs, out, fresh = cache["architectures"], {}, False
    for trial_id, recipe in recipes.items():
        arch = architecture(recipe)
        key = architecture_key(arch)
        if key not in archs:
            archs[key] = {"architecture": arch, **(measure_fn or measure)(recipe, cache_dir=cache_dir),
                          "measured": datetime.datetime.now().isoformat(timespec="seconds")}
            fresh = True
        out[trial_id] = {"architecture_key": key, **archs[key]}
    if fresh:
        st.write_bytes("experiments", name, LATENCY_FILE, data=(json.dumps(cache, indent=2) + "\n").encode())
    return out


# ------------------------------------------------------------------------------------------------ the data

def _scored(storage: str, name: str) -> tuple[str, list[dict], dict[str, dict]]:
    """(the experiment's metric, its summarized trials with a score, trial id -> its full recipe)."""
    from trainables.recipe import with_params

    from .results import experiment_metric, summarize, trial_results
    metric = experiment_metric(storage, name)
    trials = trial_results(storage, name)
    recipes = {t["trial_id"]: with_params(t["params"]["loop"]["recipe"], t["params"].get("params") or {})
               for t in trials}
    return metric, [s for s in summarize(trials, metric=metric) if s["best"] is not None], recipes


def architecture_count(storage: str, name: str) -> int:
    """How many distinct student architectures the scored trials have (nothing measured): the report plots
    quality vs latency only when there is more than one."""
    _, scored, recipes = _scored(storage, name)
    return len({architecture_key(architecture(recipes[s["trial_id"]])) for s in scored})


def pareto_data(storage: str, name: str, *, measure_fn=None) -> dict:
    """Every scored trial of experiment ``name`` with its score (the experiment's metric at its selected
    evaluation, as ``best`` ranks them), parameters and latency, and which are on the Pareto front (maximise
    the score, minimise ms per example at batch 1 and parameters); the front sorted by latency."""
    metric, scored, recipes = _scored(storage, name)
    if not scored:
        from trainables.errors import UserError
        raise UserError(f"experiment {name!r} has no finished evaluation yet")
    figures = latencies(storage, name, {s["trial_id"]: recipes[s["trial_id"]] for s in scored}, measure_fn=measure_fn)
    rows = []
    for s in scored:
        f = figures[s["trial_id"]]
        rows.append({"trial_id": s["trial_id"], "score": s["best"], "params": f["params"],
                     "ms_1": f["ms_per_example"]["1"], "ms_32": f["ms_per_example"]["32"],
                     "num_layers": f["num_layers"], "hidden_size": f["hidden_size"],
                     "architecture_key": f["architecture_key"], "selected_step": s["selected_step"]})
    on = set(pareto_front(rows))
    for i, row in enumerate(rows):
        row["on_front"] = i in on
    front = sorted((r for r in rows if r["on_front"]), key=lambda r: (r["ms_1"], -r["score"]))
    return {"experiment": name, "metric": metric, "axes": {"maximise": [metric], "minimise": [
        "ms per example at batch 1", "parameters"]}, "trials": rows, "front": front,
            "architectures": len({r["architecture_key"] for r in rows}), "latency_file": LATENCY_FILE,
            "machine": machine_line(machine())}


def front_table(doc: dict) -> tuple[list[str], list[list[str]]]:
    """The front as (header, rows of text), fastest first: ``best --pareto`` and the report."""
    header = ["trial", doc["metric"], "params (M)", "ms/example, batch 1", "ms/example, batch 32", "layers",
              "hidden size"]
    return header, [[r["trial_id"], f"{r['score']:.2f}", f"{r['params'] / 1e6:.2f}", f"{r['ms_1']:.3f}",
                     f"{r['ms_32']:.3f}", str(r["num_layers"]), str(r["hidden_size"])] for r in doc["front"]]


def pareto_lines(doc: dict) -> list[str]:
    """``best --pareto``: the front, fastest first."""
    m = doc["metric"]
    header, rows = front_table(doc)
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return [f"Pareto front of {doc['experiment']}: {len(doc['front'])} of {len(doc['trials'])} scored trials "
            f"(max {m}; min ms/example at batch 1, parameters); {doc['architectures']} architecture(s), "
            f"latency measured on {doc.get('machine', 'this machine')}, cached in experiments/{doc['experiment']}/"
            f"{LATENCY_FILE}",
            *["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
              for row in table]]
