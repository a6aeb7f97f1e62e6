"""What one command pays for its own embedded Ray: ``init_ray`` (search/ray_env.py) and ``ray.shutdown()``.

Every CLI command that runs trials starts the embedded local Ray and stops it at its end. A test suite whose
commands joined one shared cluster (issue 19's "session-scoped Ray fixture") would save at most this per
command. Each repeat is a fresh interpreter (as a command is), timing the start and the stop in wall seconds
and counting the CPU seconds of the interpreter and of every process Ray started and reaped (GCS, raylet,
dashboard and its agents, the idle workers Ray starts at boot):

    python bench/ray_start.py --repeats 5 --out bench/ray-start-<date>.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from host import describe  # bench/host.py (bench scripts run with bench/ on sys.path)

REPO = Path(__file__).resolve().parents[1]
ONE = r"""
import json, os, resource, time
t0 = time.time()
import ray
from search.ray_env import init_ray
t1 = time.time()
init_ray(address=None)
t2 = time.time()
ray.shutdown()
t3 = time.time()
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"import_s": t1 - t0, "start_s": t2 - t1, "stop_s": t3 - t2,
                  "cpu_s_self": me.ru_utime + me.ru_stime, "cpu_s_children": kids.ru_utime + kids.ru_stime}))
"""


def once() -> dict:
    t = time.time()
    r = subprocess.run([sys.executable, "-c", ONE], capture_output=True, text=True, cwd=REPO, timeout=300)
    if r.returncode != 0:
        raise SystemExit(f"ray_start: the probe failed ({r.returncode}): {r.stderr[-2000:]}")
    row = json.loads(r.stdout.strip().splitlines()[-1])
    row["process_wall_s"] = time.time() - t
    return {k: round(v, 3) for k, v in row.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    rows = [once() for _ in range(args.repeats)]
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), **describe(), "repeats": rows,
           "median": {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
