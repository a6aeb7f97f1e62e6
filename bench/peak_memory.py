"""Wall time and peak memory of a command and every process it starts (Ray's GCS, raylet, workers included).

    python bench/peak_memory.py --out run.json -- bam-search demo

The embedded Ray is started by the command itself, so all of its processes descend from it. Every 0.5 s the
process tree is walked (/proc) and the resident set sizes are summed; the peak of that sum, the peak of the
largest single process, and the peak per kind of process (by its title, e.g. ``ray::_RayTrainWorker__execute``)
are written with the wall time and the exit code. RSS counts shared pages once per process, so the sum is an
upper bound of what the machine needed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from host import describe  # bench/host.py (bench scripts run with bench/ on sys.path)



PAGE = os.sysconf("SC_PAGE_SIZE")


def processes() -> dict[int, tuple[int, int, list[str]]]:
    """pid -> (parent pid, resident bytes, command line), read from /proc (Linux)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            rss = int((d / "statm").read_text().split()[1]) * PAGE
            cmd = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, IndexError, ValueError):
            continue
        out[int(d.name)] = (ppid, rss, [c for c in cmd if c])
    return out


def kind(cmd: list[str]) -> str:
    """``ray::<actor or task>`` for Ray workers, else the program and its script (``python dashboard.py``)."""
    if not cmd:
        return "?"
    if cmd[0].startswith("ray::"):
        return cmd[0].split()[0]
    script = next((c for c in cmd[1:] if c.endswith(".py") or c == "-m"), "")
    if script == "-m" and len(cmd) > cmd.index("-m") + 1:
        script = cmd[cmd.index("-m") + 1]
    return f"{cmd[0].rsplit('/', 1)[-1]} {script.rsplit('/', 1)[-1]}".strip()


def sample(root: int, stats: dict, stop: threading.Event) -> None:
    while not stop.is_set():
        procs = processes()
        tree, todo = set(), [root]
        while todo:
            pid = todo.pop()
            tree.add(pid)
            todo += [c for c, (pp, _, _) in procs.items() if pp == pid and c not in tree]
        total = 0
        for pid in tree & set(procs):
            _, rss, cmd = procs[pid]
            total += rss
            k = kind(cmd)
            stats["peak_by_kind_mb"][k] = max(stats["peak_by_kind_mb"].get(k, 0), rss / 2**20)
            stats["peak_process_mb"] = max(stats["peak_process_mb"], rss / 2**20)
        stats["peak_total_mb"] = max(stats["peak_total_mb"], total / 2**20)
        stats["peak_processes"] = max(stats["peak_processes"], len(tree & set(procs)))
        stop.wait(0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file for the figures")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("no command")
    stats = {"command": cmd, "date": time.strftime("%Y-%m-%d %H:%M"), **describe(),
             "memory_gib": round(os.sysconf('SC_PHYS_PAGES') * PAGE / 2**30),
             "peak_total_mb": 0.0, "peak_process_mb": 0.0, "peak_processes": 0, "peak_by_kind_mb": {}}
    t0 = time.time()
    proc = subprocess.Popen(cmd)
    stop = threading.Event()
    th = threading.Thread(target=sample, args=(proc.pid, stats, stop), daemon=True)
    th.start()
    rc = proc.wait()
    stop.set()
    th.join()
    stats.update(wall_s=round(time.time() - t0, 1), returncode=rc)
    stats["peak_by_kind_mb"] = dict(sorted(((k, round(v)) for k, v in stats["peak_by_kind_mb"].items()),
                                           key=lambda kv: -kv[1]))
    for k in ("peak_total_mb", "peak_process_mb"):
        stats[k] = round(stats[k])
    with open(args.out, "w") as f:
        json.dump(stats, f, indent=1)
    print(json.dumps({k: v for k, v in stats.items() if k != "peak_by_kind_mb"}), file=sys.stderr)
    sys.exit(rc)


if __name__ == "__main__":
    main()
