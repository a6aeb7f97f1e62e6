"""Throughput: the student's loop against a plain fine-tuning loop, same model, data and batch size (issue 9).

    python bench/throughput.py --glue-dir ../shared/data/glue            # MiniLM, SST-2 + MRPC, 2,000 each

In one run, side by side:
1. this machine's matrix-multiply peak (MiniLM's feed-forward shape) in fp32 and bf16;
2. per task (SST-2, MRPC): the reference loop (``bench/reference.py``: fp32, tokenises every batch, random
   batches padded to their longest, AdamW) against the product's loop (``trainables.loop``, precision
   ``auto``: bf16 where the CPU runs it natively, length-grouped pre-tokenised batches, fused AdamW), and the
   product's loop in fp32, and the product's loop (``auto``) with the reference's optimiser (constant rate, no
   warm-up, no layer-wise decay, no clipping), each for the same number of epochs from the same initial weights; real
   (non-padding) tokens per second of training and the dev metric after those epochs;
3. the five-task mixture (CoLA, SST-2, MRPC, STS-B, RTE): the product's loop against the reference run on
   each task in turn for the same number of steps;
4. model FLOP/s (6 x the encoder's and heads' matrix parameters x real tokens; attention scores, ~3% at
   these lengths, are left out) against the measured peak of the dtype used: the utilisation;
5. with ``--speed-repeats K``: per task, K more pairs of short timed runs (``--speed-steps`` each, reference
   then student, alternating), so the speed-up is a median over pairs measured side by side: on a shared host
   one run's speed varies by up to ~10% (bench/RESULTS.md section 9);
6. with ``--pack``: per task (and in each speed pair), the student (``auto``) again with ``pack: true`` on the
   same batches (same seed), right after the unpacked run: ``pack_speedup`` and the dev metric's difference.
Prints one JSON document; ``--out`` also writes it to a file.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from host import describe  # bench/host.py (bench scripts run with bench/ on sys.path)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def matmul_peak(dtype, *, seconds: float = 2.0) -> float:
    """FLOP/s of (4096 x 384) @ (384 x 1536) and back: MiniLM's feed-forward at 32 x 128 tokens."""
    import torch
    a = torch.randn(4096, 384).to(dtype)
    w1 = torch.randn(384, 1536).to(dtype)
    w2 = torch.randn(1536, 384).to(dtype)
    for _ in range(3):
        (a @ w1) @ w2
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        (a @ w1) @ w2
        n += 1
    return n * 2 * 2 * 4096 * 384 * 1536 / (time.perf_counter() - t0)


def matrix_params(model) -> int:
    """Parameters that take part in matrix multiplies per token (not embeddings, norms or biases)."""
    return sum(p.numel() for n, p in model.named_parameters() if p.ndim == 2 and "embeddings" not in n)


# The reference loop's optimiser in the student's recipe terms: AdamW (torch's default weight decay 0.01) at a
# constant rate, no warm-up, no layer-wise decay, no clipping; the student's default is BAM's (warm-up 10%,
# linear decay, layer-wise decay 0.9, clipping at 1).
REFERENCE_OPTIM = {"layer_decay": 1.0, "warmup": 0.0, "decay": "constant", "clip": 0.0, "weight_decay": 0.01}


def student_recipe(args, *, tasks, precision: str, epochs: float | None = None, steps: int | None = None,
                   optim_extra: dict | None = None, seed: int = 0, pack: bool = False) -> dict:
    optim = {"batch_size": args.batch_size, "lr": args.lr, **(optim_extra or {})}
    optim.update({"steps": steps} if steps else {"epochs": epochs})
    return {"tasks": list(tasks), "model": args.model, "seed": seed, "evals": 1, "precision": precision, "optim": optim,
            "teacher": {"use": False}, "anneal": {"schedule": "none"}, "pack": pack,
            "data": {"glue_dir": os.path.abspath(args.glue_dir), "max_train_examples": args.examples,
                     "max_length": args.max_length}}


def run_student(args, *, tasks, precision: str, storage: str, epochs=None, steps=None, optim_extra=None,
                seed: int = 0, pack: bool = False) -> dict:
    from trainables.trial import setup_run
    from trainables.loop import run_training
    recipe = student_recipe(args, tasks=tasks, precision=precision, epochs=epochs, steps=steps, optim_extra=optim_extra,
                            seed=seed, pack=pack)
    tag = f"{'-'.join(tasks)}-{precision}{'-refopt' if optim_extra else ''}{'-pack' if pack else ''}-s{seed}"
    run = setup_run({"recipe": recipe, "job": "student", "storage": storage, "cache_dir": args.cache_dir,
                     "artifacts_dir": os.path.join(storage, f"art-{tag}")})
    reports: list[dict] = []
    run_training(run, report=lambda m, r: reports.append(m))
    last = reports[-1]
    return {"tokens_per_s": last["tokens_per_s"], "examples_per_s": last["examples_per_s"],
            "train_s": last["train_s"], "steps": run.step, "real_tokens": run.tokens_seen,
            "dtype": str(run.amp).replace("torch.", "") if run.amp else "float32",
            "score": {t: last[f"{t}/score"] for t in tasks}, "matrix_params": matrix_params(run.model)}


def run_reference(args, *, task_name: str, epochs: int | None = None, max_steps: int | None = None,
                  seed: int = 0) -> dict:
    from reference import predict_reference, train_reference
    from trainables.data import load_examples
    from trainables.trial import build_model
    from trainables.metrics import compute_metrics
    from trainables.model import load_tokenizer
    from trainables.recipe import recipe_from_dict
    from trainables.tasks import get_task
    task = get_task(task_name)
    recipe = recipe_from_dict(student_recipe(args, tasks=[task_name], precision="fp32", epochs=1, seed=seed))
    tokenizer = load_tokenizer(args.model, cache_dir=args.cache_dir)
    model = build_model(recipe, tokenizer=tokenizer, tasks={task_name: task})   # same init as the student
    glue = os.path.abspath(args.glue_dir)
    train = load_examples(task=task_name, split="train", glue_dir=glue).subsample(
        max_examples=args.examples, seed=recipe.data.data_seed)
    out = train_reference(model=model, tokenizer=tokenizer, train=train, task=task, epochs=epochs or 10 ** 6,
                          batch_size=args.batch_size, lr=args.lr, max_length=args.max_length, max_steps=max_steps,
                          seed=seed)
    out["tokens_per_s"] = out["real_tokens"] / out["train_s"]
    out["matrix_params"] = matrix_params(model)
    if epochs:
        dev = load_examples(task=task_name, split=task.dev_splits[0], glue_dir=glue)
        preds = predict_reference(model=model, tokenizer=tokenizer, examples=dev, task=task,
                                  max_length=args.max_length)
        out["score"] = {task_name: compute_metrics(metrics=task.metrics, predictions=preds,
                                                   labels=dev.labels)["score"]}
    return out


def run_hf_trainer(args, *, task_name: str, storage: str, epochs: int | None = None, max_steps: int | None = None,
                   seed: int = 0) -> dict:
    """Hugging Face ``Trainer`` on the same examples (``bench/hf_trainer.py``), scored with the same metric code."""
    from hf_trainer import train_hf_trainer
    from trainables.data import load_examples
    from trainables.metrics import compute_metrics
    from trainables.model import resolve_model
    from trainables.tasks import get_task
    task = get_task(task_name)
    glue = os.path.abspath(args.glue_dir)
    train = load_examples(task=task_name, split="train", glue_dir=glue).subsample(max_examples=args.examples, seed=0)
    dev = load_examples(task=task_name, split=task.dev_splits[0], glue_dir=glue) if epochs else None
    out = train_hf_trainer(model_dir=resolve_model(args.model), train=train, dev=dev, task=task, epochs=epochs,
                           max_steps=max_steps, batch_size=args.batch_size, lr=args.lr, max_length=args.max_length,
                           seed=seed, output_dir=os.path.join(storage, f"hf-{task_name}-s{seed}"))
    preds = out.pop("predictions", None)
    if preds is not None:
        out["score"] = {task_name: compute_metrics(metrics=task.metrics, predictions=preds,
                                                   labels=dev.labels)["score"]}
    return out


def seed_scores(args, *, task: str, storage: str, first: tuple, log) -> dict:
    """Dev metric of the reference, the bf16 student and the bf16 student with the reference's optimiser over
    ``--score-seeds`` seeds (seed 0 is ``first``); per loop the scores, mean and sd, and each other loop's
    difference of means from the reference with Welch's p and 95% interval (the runs are independent)."""
    import statistics
    scores = {"reference": [first[0]["score"][task]], "student": [first[1]["score"][task]],
              "student_reference_optimiser": [first[2]["score"][task]]}
    if len(first) > 3:
        scores["hf_trainer"] = [first[3]["score"][task]]
    for seed in range(1, args.score_seeds):
        log(f"{task}: seed {seed}: reference")
        scores["reference"].append(run_reference(args, task_name=task, epochs=args.epochs, seed=seed)["score"][task])
        if "hf_trainer" in scores:
            log(f"{task}: seed {seed}: Hugging Face Trainer")
            scores["hf_trainer"].append(run_hf_trainer(args, task_name=task, storage=storage, epochs=args.epochs,
                                                       seed=seed)["score"][task])
        log(f"{task}: seed {seed}: students")
        scores["student"].append(run_student(args, tasks=[task], precision="auto", storage=storage,
                                             epochs=args.epochs, seed=seed)["score"][task])
        scores["student_reference_optimiser"].append(run_student(
            args, tasks=[task], precision="auto", storage=storage, epochs=args.epochs, optim_extra=REFERENCE_OPTIM,
            seed=seed)["score"][task])
    from search.stats import welch, welch_interval
    out = {k: {"scores": v, "mean": statistics.mean(v), "sd": statistics.stdev(v)} for k, v in scores.items()}
    for k in [k for k in out if k != "reference"]:
        # independent runs (each loop draws its own data order and dropout), so not paired by seed: the
        # difference of means, Welch's t-test over seeds and the interval it inverts
        out[k]["diff_vs_reference"] = out[k]["mean"] - out["reference"]["mean"]
        out[k]["welch_p_vs_reference"] = welch(v := scores[k], scores["reference"])["p"]
        out[k]["welch_ci95_vs_reference"] = welch_interval(v, scores["reference"])
    out["test"] = "Welch's t over seeds (independent runs)"
    return out


def hf_trainer_scores(args, *, log) -> dict:
    """``--hf-trainer-only``: per task, Hugging Face Trainer's full runs over ``--score-seeds`` seeds."""
    import statistics
    out = {}
    with tempfile.TemporaryDirectory() as storage:
        for t in args.tasks.split(","):
            runs = []
            for seed in range(args.score_seeds):
                log(f"{t}: seed {seed}: Hugging Face Trainer")
                runs.append(run_hf_trainer(args, task_name=t, storage=storage, epochs=args.epochs, seed=seed))
            scores = [r["score"][t] for r in runs]
            out[t] = {"hf_trainer": runs[0], "seeds": {"hf_trainer": {
                "scores": scores, "mean": statistics.mean(scores),
                "sd": statistics.stdev(scores) if len(scores) > 1 else 0.0}}}
    return out


def speed_pairs(args, *, task: str, storage: str, log) -> dict:
    """``--speed-repeats`` pairs of timed runs of ``--speed-steps`` steps, the reference then the student
    (precision auto), one after the other (then ``Trainer`` with ``--hf-trainer``); the speed-up of each pair,
    their median, minimum and maximum."""
    import statistics
    pairs = []
    for i in range(args.speed_repeats):
        log(f"{task}: speed pair {i + 1}/{args.speed_repeats}")
        ref = run_reference(args, task_name=task, max_steps=args.speed_steps)["tokens_per_s"]
        stu = run_student(args, tasks=[task], precision="auto", storage=storage, steps=args.speed_steps,
                          seed=100 + i)["tokens_per_s"]
        pairs.append({"reference_tokens_per_s": ref, "student_tokens_per_s": stu, "speedup": stu / ref})
        if args.pack:                                  # the same seed: the same batches, packed
            packed = run_student(args, tasks=[task], precision="auto", storage=storage, steps=args.speed_steps,
                                 seed=100 + i, pack=True)["tokens_per_s"]
            pairs[-1].update({"student_packed_tokens_per_s": packed, "pack_speedup": packed / stu})
        if args.hf_trainer:
            hf = run_hf_trainer(args, task_name=task, storage=storage, max_steps=args.speed_steps, seed=100 + i)
            pairs[-1].update({"hf_trainer_tokens_per_s": hf["tokens_per_s"],
                              "speedup_vs_hf_trainer": stu / hf["tokens_per_s"]})
    ups = [p["speedup"] for p in pairs]
    out = {"steps": args.speed_steps, "pairs": pairs, "speedup_median": statistics.median(ups),
           "speedup_min": min(ups), "speedup_max": max(ups)}
    if args.pack:
        out["pack_speedup_median"] = statistics.median(p["pack_speedup"] for p in pairs)
    if args.hf_trainer:
        hf_ups = [p["speedup_vs_hf_trainer"] for p in pairs]
        out.update({"speedup_vs_hf_trainer_median": statistics.median(hf_ups),
                    "speedup_vs_hf_trainer_min": min(hf_ups), "speedup_vs_hf_trainer_max": max(hf_ups)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--glue-dir", default=os.environ.get("BAM_GLUE_DIR", "../shared/data/glue"))
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--tasks", default="sst2,mrpc", help="single-task comparisons")
    ap.add_argument("--mixture", default="cola,sst2,mrpc,stsb,rte")
    ap.add_argument("--examples", type=int, default=2000, help="training examples per task")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--mixture-steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-dir", default=os.environ.get("BAM_CACHE_DIR"))
    ap.add_argument("--score-seeds", type=int, default=1,
                    help="dev metric of the reference and the bf16 students over this many seeds (initial weights of "
                         "the heads and data order); speed is measured on seed 0")
    ap.add_argument("--speed-repeats", type=int, default=0,
                    help="per task, this many more (reference, student) pairs of short timed runs, alternating")
    ap.add_argument("--speed-steps", type=int, default=30, help="training steps of each timed run of --speed-repeats")
    ap.add_argument("--no-mixture", action="store_true")
    ap.add_argument("--hf-trainer", action="store_true",
                    help="also Hugging Face Trainer (its speed options on) per task: speed and dev metric (needs accelerate)")
    ap.add_argument("--hf-trainer-only", action="store_true",
                    help="only Hugging Face Trainer's dev metric per task over --score-seeds seeds (its full runs)")
    ap.add_argument("--pack", action="store_true",
                    help="also the student (auto) with pack: true on the same batches, per task and speed pair")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    from trainables.trial import quiet_libraries
    quiet_libraries()
    t_start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f}s] {message}", file=sys.stderr, flush=True)

    peak = {"float32": matmul_peak(torch.float32), "bfloat16": matmul_peak(torch.bfloat16)}
    result = {**describe(),
              "date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__, "threads": args.threads,
              "model": args.model, "examples": args.examples, "epochs": args.epochs,
              "batch_size": args.batch_size, "lr": args.lr, "matmul_peak_tflops": {k: v / 1e12 for k, v in peak.items()},
              "tasks": {}}

    def utilisation(r: dict) -> float:
        dtype = r.get("dtype", "float32")
        return 6 * r["matrix_params"] * r["tokens_per_s"] / peak[dtype]

    if args.hf_trainer_only:
        result["tasks"] = hf_trainer_scores(args, log=log)
        args.tasks, args.mixture = "", ""
    with tempfile.TemporaryDirectory() as storage:
        for t in [t for t in args.tasks.split(",") if t]:
            log(f"{t}: reference")
            ref = run_reference(args, task_name=t, epochs=args.epochs)
            log(f"{t}: student (auto)")
            fast = run_student(args, tasks=[t], precision="auto", storage=storage, epochs=args.epochs)
            log(f"{t}: student (fp32)")
            fp32 = run_student(args, tasks=[t], precision="fp32", storage=storage, epochs=args.epochs)
            log(f"{t}: student (auto), the reference's optimiser")
            refopt = run_student(args, tasks=[t], precision="auto", storage=storage, epochs=args.epochs,
                                 optim_extra=REFERENCE_OPTIM)
            packed = None
            if args.pack:
                log(f"{t}: student (auto), packed")
                packed = run_student(args, tasks=[t], precision="auto", storage=storage, epochs=args.epochs, pack=True)
            hf = None
            if args.hf_trainer:
                log(f"{t}: Hugging Face Trainer")
                hf = run_hf_trainer(args, task_name=t, storage=storage, epochs=args.epochs)
            for r in (ref, fast, fp32, refopt, *([hf] if hf else []), *([packed] if packed else [])):
                r["utilisation"] = utilisation(r)
            result["tasks"][t] = {
                "reference": ref, "student": fast, "student_fp32": fp32, "student_reference_optimiser": refopt,
                "score_delta_same_optimiser": refopt["score"][t] - ref["score"][t],
                "speedup": fast["tokens_per_s"] / ref["tokens_per_s"],
                "speedup_fp32_student": fp32["tokens_per_s"] / ref["tokens_per_s"],
                "score_delta_vs_reference": fast["score"][t] - ref["score"][t],   # scores are in [0, 100]
                "score_delta_vs_fp32_student": fast["score"][t] - fp32["score"][t]}
            if packed:
                result["tasks"][t].update({"student_packed": packed,
                                           "pack_speedup": packed["tokens_per_s"] / fast["tokens_per_s"],
                                           "score_delta_packed": packed["score"][t] - fast["score"][t]})
            if hf:
                result["tasks"][t].update({"hf_trainer": hf, "speedup_vs_hf_trainer": fast["tokens_per_s"] / hf["tokens_per_s"],
                                           "score_delta_vs_hf_trainer": fast["score"][t] - hf["score"][t]})
            if args.speed_repeats > 0:
                result["tasks"][t]["speed_pairs"] = speed_pairs(args, task=t, storage=storage, log=log)
            if args.score_seeds > 1:
                result["tasks"][t]["seeds"] = seed_scores(args, task=t, storage=storage, first=(ref, fast, refopt, *([hf] if hf else [])),
                                                          log=log)
            print(json.dumps({t: {k: v for k, v in result["tasks"][t].items() if not isinstance(v, dict)}}),
                  file=sys.stderr, flush=True)

        if args.no_mixture:
            args.mixture = ""
        mix = [m for m in args.mixture.split(",") if m]
        if mix:
            log("mixture: reference")
            per_task = [run_reference(args, task_name=t, max_steps=max(1, args.mixture_steps // len(mix))) for t in mix]
            ref_mix = {"real_tokens": sum(r["real_tokens"] for r in per_task),
                       "train_s": sum(r["train_s"] for r in per_task), "matrix_params": per_task[0]["matrix_params"]}
            ref_mix["tokens_per_s"] = ref_mix["real_tokens"] / ref_mix["train_s"]
            log("mixture: student")
            stu_mix = run_student(args, tasks=mix, precision="auto", storage=storage, steps=args.mixture_steps)
            for r in (ref_mix, stu_mix):
                r["utilisation"] = utilisation(r)
            result["mixture"] = {"tasks": mix, "reference": ref_mix, "student": stu_mix,
                                 "speedup": stu_mix["tokens_per_s"] / ref_mix["tokens_per_s"]}
    result["wall_s"] = time.perf_counter() - t_start
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
