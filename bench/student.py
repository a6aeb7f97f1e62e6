"""The student step inside a Ray Train worker against the same loop run directly in this process.

Same recipe (model, tasks, data, steps, threads), measured in one run: examples/s of training (evaluation
excluded), the ratio Ray/in-process, and each worker's peak RSS. The two sides alternate for ``--rounds``
rounds (in-process, Ray, in-process, Ray, ...) and the ratio is the median of the rounds' ratios, so a change
of load on the machine part-way does not land on one side only.

    python bench/student.py --glue-dir ../shared/data/glue --model minilm --steps 60 --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from startup import CpuSampler      # CPU seconds per kind of process (Ray's daemons, actors, this process)
from host import describe  # bench/host.py (bench scripts run with bench/ on sys.path)


def recipe(args) -> dict:
    return {"tasks": args.tasks.split(","), "model": args.model, "evals": 2, "teacher": {"use": False},
            "anneal": {"schedule": "none"}, "precision": args.precision,
            "optim": {"steps": args.steps, "batch_size": 32, "lr": 5e-5},
            "data": {"glue_dir": os.path.abspath(args.glue_dir), "max_train_examples": 2000, "max_dev_examples": 64,
                     "max_length": 128}}


def in_process(args, storage: str) -> dict:
    import torch

    from trainables.trial import setup_run
    from trainables.loop import run_training
    torch.set_num_threads(args.threads)
    run = setup_run({"recipe": recipe(args), "job": "student", "storage": storage,
                     "artifacts_dir": os.path.join(storage, "art-local"), "cache_dir": args.cache_dir})
    out = []
    run_training(run, report=lambda m, r: out.append(m))
    return out[-1]


def in_ray(args, storage: str, *, name: str) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from trainables.trial import train_fn_per_worker
    cfg = {"recipe": recipe(args), "job": "student", "storage": storage, "cache_dir": args.cache_dir,
           "artifacts_dir": os.path.join(storage, f"art-{name}"), "wandb": None}
    result = TorchTrainer(train_fn_per_worker, train_loop_config=cfg,
                          scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": args.threads}),
                          run_config=RunConfig(name=name, storage_path=os.path.join(storage, "ray"))).fit()
    return result.metrics


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--glue-dir", default=os.environ.get("BAM_GLUE_DIR", "../shared/data/glue"))
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--tasks", default="cola,sst2,mrpc,stsb,rte")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="auto", help="auto (bf16 where the CPU runs it natively) | bf16 | fp32")
    ap.add_argument("--cache-dir", default=os.environ.get("BAM_CACHE_DIR"))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import ray

    from search.ray_env import init_ray
    init_ray(address=None)
    rounds = []
    with tempfile.TemporaryDirectory() as storage:
        for i in range(args.rounds):
            with CpuSampler(every=0.5) as cpu_local:
                t0 = time.perf_counter()
                local = in_process(args, storage)
                wall_local = time.perf_counter() - t0
            with CpuSampler(every=0.5) as cpu_ray:
                t0 = time.perf_counter()
                remote = in_ray(args, storage, name=f"bench-{i}")
                wall_ray = time.perf_counter() - t0
            rounds.append({"wall_s": {"in_process": round(wall_local, 1), "ray": round(wall_ray, 1)},
                           # "driver (Tune)" is this process: the training itself on the in-process side
                           "cpu_s_by_process": {"in_process": cpu_local.by_kind(), "ray": cpu_ray.by_kind()},
                           "train_s": {"in_process": local.get("train_s"), "ray": remote.get("train_s")},"in_process_examples_per_s": local["examples_per_s"],
                           "ray_worker_examples_per_s": remote["examples_per_s"],
                           "ratio": remote["examples_per_s"] / local["examples_per_s"],
                           "in_process_peak_rss_mb": local["peak_rss_mb"], "ray_worker_peak_rss_mb": remote["peak_rss_mb"]})
            print(json.dumps(rounds[-1]), flush=True)
    ray.shutdown()
    import statistics
    out = {"ratio": statistics.median(r["ratio"] for r in rounds), "rounds": rounds,
           "in_process_examples_per_s": statistics.median(r["in_process_examples_per_s"] for r in rounds),
           "ray_worker_examples_per_s": statistics.median(r["ray_worker_examples_per_s"] for r in rounds),
           "in_process_peak_rss_mb": max(r["in_process_peak_rss_mb"] for r in rounds),
           "ray_worker_peak_rss_mb": max(r["ray_worker_peak_rss_mb"] for r in rounds),
           "steps": args.steps, "threads": args.threads, "precision": args.precision, "model": args.model, "tasks": args.tasks,
           **describe(), "date": time.strftime("%Y-%m-%d %H:%M")}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
