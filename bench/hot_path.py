"""The training step of two commits, side by side: did a change move the hot path?

    python bench/hot_path.py --base 869ad7b --head HEAD --glue-dir ../shared/data/glue

Each commit is checked out once (``git worktree``) under ``--store`` (default ~/.cache/bam-bench/hot-path,
outside the work tree). Rounds alternate base, head, base, head, ...: each round is a fresh process that builds
the student of one recipe (MiniLM by default, two GLUE tasks, mixed batches, BAM's linear annealing without
teachers, so no store is needed) with that commit's own code and times ``--steps`` training steps after
``--warmup`` untimed ones. Reported: real tokens/s per round, the median per commit, and their ratio
(head / base), with the CPU flags. Prints one JSON document; ``--out`` also writes it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from host import describe  # bench/host.py (bench scripts run with bench/ on sys.path)

ROUND = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
cfg, warmup, steps = json.loads(sys.argv[1]), int(sys.argv[3]), int(sys.argv[4])
try:
    from trainables.trial import setup_run          # after the issue-16 split
except ImportError:
    from trainables.driver import setup_run         # before it
run = setup_run(cfg)
for _ in range(warmup):
    run.train_step()
tokens0, t0 = run.tokens_seen, time.perf_counter()
for _ in range(steps):
    run.train_step()
dt = time.perf_counter() - t0
print("RESULT " + json.dumps({"tokens_per_s": (run.tokens_seen - tokens0) / dt, "s_per_step": dt / steps}))
"""


def worktree(store: Path, rev: str) -> tuple[Path, str]:
    sha = subprocess.check_output(["git", "rev-parse", rev], text=True).strip()
    path = store / sha[:12]
    if not path.is_dir():
        subprocess.check_call(["git", "worktree", "add", "--detach", str(path), sha], stdout=subprocess.DEVNULL)
    return path, sha


def one_round(tree: Path, cfg: dict, *, threads: int, warmup: int, steps: int, timeout: int) -> dict:
    """One fresh process with ``tree`` first on the path, running that commit's own loop."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cfg = {**cfg, "artifacts_dir": str(Path(cfg["artifacts_dir"]) / tree.name)}
    out = subprocess.run([sys.executable, "-c", ROUND, json.dumps(cfg), str(threads), str(warmup), str(steps)],
                         cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if out.returncode or line is None:
        raise SystemExit(f"round in {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])




def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--head", default="HEAD")
    ap.add_argument("--glue-dir", default=os.environ.get("BAM_GLUE_DIR", "../shared/data/glue"))
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--tasks", default="sst2,mrpc")
    ap.add_argument("--examples", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3, help="rounds per commit (alternating)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--store", default=str(Path.home() / ".cache" / "bam-bench" / "hot-path"))
    ap.add_argument("--timeout", type=int, default=900, help="seconds per round")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    store = Path(a.store)
    store.mkdir(parents=True, exist_ok=True)
    trees = {"base": worktree(store, a.base), "head": worktree(store, a.head)}
    recipe = {"tasks": a.tasks.split(","), "model": a.model, "teacher": {"use": False},
              "sampling": {"batches": "mixed"}, "optim": {"steps": a.warmup + a.steps + 1}, "evals": 1,
              "data": {"glue_dir": str(Path(a.glue_dir).resolve()), "max_train_examples": a.examples}}
    cfg = {"recipe": recipe, "job": "student", "storage": str(store / "storage"),
           "cache_dir": str(store / "cache"), "artifacts_dir": str(store / "artifacts")}
    rounds = []
    for i in range(a.rounds):
        for side in ("base", "head"):
            r = one_round(trees[side][0], cfg, threads=a.threads, warmup=a.warmup, steps=a.steps, timeout=a.timeout)
            rounds.append({"side": side, "round": i, **r})
            print(f"[{time.strftime('%H:%M:%S')}] {side} round {i}: {r['tokens_per_s']:.0f} tokens/s", file=sys.stderr)
    med = {s: statistics.median(r["tokens_per_s"] for r in rounds if r["side"] == s) for s in trees}
    shown = {**recipe, "data": {**recipe["data"], "glue_dir": a.glue_dir}}    # as given: no path of this machine
    doc = {"base": trees["base"][1], "head": trees["head"][1], "recipe": shown, "steps": a.steps,
           "threads": a.threads, "rounds": rounds, "median_tokens_per_s": med,
           "ratio_head_over_base": med["head"] / med["base"], **describe(), "date": time.strftime("%Y-%m-%d %H:%M")}
    text = json.dumps(doc, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
