"""What each Ray process of a trial imports, and what those imports cost in CPU (issue 19, start-up).

``bench/startup.py --imports`` starts its local Ray with ``PYTHONPROFILEIMPORTTIME=1`` in the environment, so
every Python process Ray starts writes CPython's import-time log (``-X importtime``) to its ``worker-*-<pid>.err``
file. This module reads those logs, names each process by its actor class (the State API's pid -> class), and
replays each kind's imports in a fresh interpreter to measure their CPU seconds: import times in the logs are
wall time on a shared machine, CPU seconds of a replay are what the imports cost a core.

    python bench/startup.py --trials 2 --imports --json bench/startup-imports.json
"""
from __future__ import annotations

import re
import resource
import statistics
import subprocess
import sys
from pathlib import Path

LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)\s*$")
WATCH = ("torch", "transformers", "ray.train", "ray.data", "pandas", "ray.tune", "pyarrow", "sympy", "scipy")


def parse(text: str) -> dict:
    """One process's import-time log -> modules imported, their summed self time (s), the top-level imports in
    order (what a fresh interpreter must import to end with the same modules), and the cumulative time of the
    packages in ``WATCH`` where the process imported them."""
    modules, self_us, roots, watched = 0, 0, [], {}
    for line in text.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        own, cumulative, indent, name = int(m[1]), int(m[2]), len(m[3]), m[4]
        modules += 1
        self_us += own
        if indent <= 1:
            roots.append(name)
        if name in WATCH and name not in watched:
            watched[name] = round(cumulative / 1e6, 6)
    return {"modules": modules, "import_s": round(self_us / 1e6, 6), "roots": roots, "packages_s": watched}


def pid_of(path: Path) -> int | None:
    m = re.search(r"-(\d+)\.err$", path.name)
    return int(m[1]) if m else None


def read_logs(logs_dir: Path, actors: dict[int, str]) -> list[dict]:
    """Every worker process's parsed log, with its actor class (``(task / idle)`` when it ran no actor)."""
    out = []
    for f in sorted(Path(logs_dir).glob("worker-*.err")):
        pid = pid_of(f)
        rec = parse(f.read_text(errors="replace"))
        if pid is None or not rec["modules"]:
            continue
        out.append({"pid": pid, "actor": actors.get(pid, "(task / idle)"), **rec})
    return out


def by_kind(procs: list[dict]) -> dict[str, dict]:
    """Per actor class: processes, median modules and import seconds (wall, from the logs), and the roots of
    the process that imported the most (the replay's module list)."""
    kinds: dict[str, list[dict]] = {}
    for p in procs:
        kinds.setdefault(p["actor"], []).append(p)
    out = {}
    for kind, ps in kinds.items():
        top = max(ps, key=lambda p: p["modules"])
        out[kind] = {"processes": len(ps), "modules": int(statistics.median(p["modules"] for p in ps)),
                     "import_wall_s": round(statistics.median(p["import_s"] for p in ps), 2),
                     "packages": sorted(top["packages_s"]), "roots": top["roots"]}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["modules"]))


REPLAY = """
import importlib, sys
failed = 0
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except BaseException:
        failed += 1
print(len(sys.modules), failed)
"""


def replay_cpu(roots: list[str], *, repeats: int = 3, python: str = sys.executable) -> dict:
    """CPU seconds (user + system) of a fresh interpreter importing ``roots`` in order, the median of
    ``repeats`` runs, and the modules it ends with; an import that fails in a bare interpreter is counted."""
    seen: set[str] = set()
    names = [r for r in roots if r != "__main__" and not (r in seen or seen.add(r))]
    cpu, mods, failed = [], 0, 0
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = subprocess.run([python, "-c", REPLAY, *names], capture_output=True, text=True, timeout=300)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if r.returncode == 0 and r.stdout.split():
            mods, failed = (int(x) for x in r.stdout.split()[:2])
    return {"cpu_s": round(statistics.median(cpu), 2), "cpu_s_runs": [round(c, 2) for c in cpu],
            "modules": mods, "failed_imports": failed}


# what the per-trial processes' imports are made of, each replayed on its own (every set includes ``ray``, which
# every Ray worker imports anyway)
REFERENCE_SETS = {
    "python (nothing)": [],
    "ray": ["ray"],
    "ray + ray.data (pandas, pyarrow)": ["ray", "ray.data"],
    "ray.train": ["ray", "ray.train"],
    "ray.train.torch (torch)": ["ray", "ray.train.torch"],
    "torch": ["torch"],
    "torch + transformers' BERT": ["torch", "transformers.models.bert.modeling_bert"],
}


def reference_cpu(*, repeats: int = 3, python: str = sys.executable) -> dict[str, dict]:
    return {name: replay_cpu(mods, repeats=repeats, python=python) for name, mods in REFERENCE_SETS.items()}


def markdown(kinds: dict[str, dict], cpu_by_kind: dict[str, dict] | None = None) -> str:
    """One row per process kind: processes, modules, import wall s (log), import CPU s (replay), the process's
    whole CPU s in the run where sampled, and which of the heavy packages it imported."""
    lines = ["| process (actor class) | processes | modules | imports, wall s (log) | imports, CPU s (replay) "
             "| whole process, CPU s (run) | heavy packages imported |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for kind, k in kinds.items():
        run = (cpu_by_kind or {}).get(kind)
        per = f"{run['cpu_s'] / max(1, run['processes']):.1f}" if run and run.get("processes") else ""
        rep = k.get("replay", {}).get("cpu_s")
        lines.append(f"| {kind} | {k['processes']} | {k['modules']} | {k['import_wall_s']:.2f} | "
                     f"{'' if rep is None else f'{rep:.2f}'} | {per} | {', '.join(k['packages'])} |")
    return "\n".join(lines)


def reference_markdown(sets: dict[str, dict]) -> str:
    lines = ["| imports (fresh interpreter) | CPU s, median | modules |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {r['cpu_s']:.2f} | {r['modules']} |" for name, r in sets.items()]
    return "\n".join(lines)
