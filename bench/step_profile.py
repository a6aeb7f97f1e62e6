"""Where a student training step's time goes, by kind of kernel (issue 19, "the step").

The product's own step (``Run.train_step``: the recipe's precision, length-grouped batches, fused AdamW, the
CPU attention and dropout) on one task, profiled with ``torch.profiler`` after a warm-up. The casts autocast
makes (``aten::copy_`` under ``aten::_to_copy``) are split into casts of a parameter-shaped tensor (the
weights and biases autocast re-casts to bf16 every step: what keeping bf16 weight copies between steps could
save) and casts of everything else (activations: what it cannot).

    python bench/step_profile.py --glue-dir ../shared/data/glue --tasks sst2,mrpc --steps 10
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict

from host import describe  # bench/host.py (bench scripts run with bench/ on sys.path)

KINDS = (  # (kind, predicate on the op name), first match wins; self CPU time is summed per kind
    ("matmul", lambda n: n in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::baddbmm")),
    ("cast (copy_)", lambda n: n == "aten::copy_"),
    ("random (dropout draws)", lambda n: n in ("aten::random_", "aten::bernoulli_", "aten::uniform_")),
    ("optimiser", lambda n: "adam" in n.lower() or n.startswith("aten::_foreach")),
    ("softmax", lambda n: "softmax" in n),
    ("layer norm", lambda n: "layer_norm" in n),
    ("gelu", lambda n: "gelu" in n),
    ("elementwise", lambda n: n in ("aten::mul", "aten::add", "aten::add_", "aten::div", "aten::sub", "aten::mul_",
                                    "aten::where", "aten::gt", "aten::lt", "aten::ge", "aten::masked_fill",
                                    "aten::addcmul_", "aten::fill_", "aten::zero_", "aten::bitwise_and")),
)


def profile_task(args, task: str, storage: str) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from trainables.trial import setup_run
    torch.set_num_threads(args.threads)
    recipe = {"tasks": [task], "model": args.model, "evals": 1, "teacher": {"use": False},
              "anneal": {"schedule": "none"}, "precision": args.precision, "pack": args.pack,
              "optim": {"steps": args.warmup + 2 * args.steps + 1, "batch_size": args.batch_size, "lr": 5e-5},
              "data": {"glue_dir": os.path.abspath(args.glue_dir), "max_train_examples": 2000, "max_dev_examples": 32,
                       "max_length": 128}}
    run = setup_run({"recipe": recipe, "job": "student", "storage": storage,
                     "artifacts_dir": os.path.join(storage, "art"), "cache_dir": args.cache_dir})
    shapes = {tuple(p.shape) for p in run.model.parameters()}
    for _ in range(args.warmup):
        run.train_step()
    t0 = time.perf_counter()
    for _ in range(args.steps):                       # unprofiled: the step's own time
        run.train_step()
    unprofiled = (time.perf_counter() - t0) / args.steps
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.steps):
            run.train_step()
    wall = time.perf_counter() - t0
    by_kind: dict[str, float] = defaultdict(float)
    weight_cast = other_cast = 0.0
    for ev in prof.key_averages(group_by_input_shape=True):
        us = ev.self_cpu_time_total
        kind = next((k for k, pred in KINDS if pred(ev.key)), "other")
        by_kind[kind] += us
        if ev.key == "aten::copy_":
            first = tuple(ev.input_shapes[0]) if ev.input_shapes and ev.input_shapes[0] else ()
            if first in shapes:
                weight_cast += us
            else:
                other_cast += us
    total = sum(by_kind.values())
    top = sorted(((ev.key, ev.self_cpu_time_total) for ev in prof.key_averages()), key=lambda x: -x[1])[:12]
    return {"task": task, "steps": args.steps, "s_per_step": unprofiled, "wall_s_per_step_profiled": wall / args.steps,
            "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE", ""),
            "share": {k: round(v / total, 4) for k, v in sorted(by_kind.items(), key=lambda x: -x[1])},
            "cast_of_parameter_shaped": round(weight_cast / total, 4), "cast_of_other": round(other_cast / total, 4),
            "parameter_bytes_fp32": sum(p.numel() * 4 for p in run.model.parameters()),
            "top_ops_share": [(k, round(v / total, 4)) for k, v in top]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--glue-dir", default=os.environ.get("BAM_GLUE_DIR", "../shared/data/glue"))
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--tasks", default="sst2,mrpc")
    ap.add_argument("--steps", type=int, default=10, help="profiled steps, after --warmup")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--pack", action="store_true")
    ap.add_argument("--cache-dir", default=os.environ.get("BAM_CACHE_DIR"))
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bam-step-profile-") as storage:
        rows = [profile_task(args, t, storage) for t in args.tasks.split(",")]
    doc = {"date": time.strftime("%Y-%m-%d %H:%M"), **describe(),
           "args": {k: v for k, v in vars(args).items() if k not in ("glue_dir", "cache_dir")}, "tasks": rows}
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
