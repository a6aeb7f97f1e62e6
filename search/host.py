"""The machine beside every figure: what decides speed on a CPU (model, family, flags, cores and threads per core,
caches, hypervisor) and the software (Python, torch and the CPU kernels torch picked). One reader for the
product's latency figures (``search/pareto.py``) and every bench script, so figures name their machine the same
way.

Figures from two hosts are compared only as ratios measured side by side in one run (DEVELOPERS.md); this
is what lets a reader tell two hosts of the same "AMD EPYC" name apart.
"""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from pathlib import Path

SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def _cpuinfo() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, v in
            (ln.split(":", 1) for ln in text.split("\n\n")[0].splitlines() if ":" in ln)}


def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in out.splitlines() if ":" in ln)}


def host() -> dict:
    """A JSON-ready description of this machine."""
    info, ls = _cpuinfo(), _lscpu()
    flags = set(info.get("flags", "").split())
    out = {"cpu": info.get("model name") or platform.processor() or platform.machine(),
           "family_model_stepping": "/".join(info.get(k, "?") for k in ("cpu family", "model", "stepping")),
           "cores": os.cpu_count(), "threads_per_core": ls.get("Thread(s) per core"),
           "cpu_flags": [f for f in SPEED_FLAGS if f in flags],
           # every flag, digested: two hosts with the same model name and speed flags can still differ
           "cpu_flags_sha": hashlib.sha256(info["flags"].encode()).hexdigest()[:12] if info.get("flags") else "",
           "l2": ls.get("L2 cache"), "l3": ls.get("L3 cache"), "bogomips": info.get("bogomips"),
           "hypervisor": ls.get("Hypervisor vendor"), "python": platform.python_version()}
    try:
        import torch
        out.update(torch=torch.__version__, torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
                   torch_threads=torch.get_num_threads())
    except ImportError:
        pass
    return out


def host_line(h: dict | None = None) -> str:
    """One line for RESULTS.md: 'AMD EPYC (25/17/1), 2 cores (1 thread/core), CPU flags avx2/avx512f/...'."""
    h = h or host()
    line = (f"{h['cpu']} ({h['family_model_stepping']}), {h['cores']} cores"
            + (f" ({h['threads_per_core']} thread/core)" if h.get("threads_per_core") else "")
            + f", CPU flags {'/'.join(h['cpu_flags']) or 'none of ' + '/'.join(SPEED_FLAGS)}"
            + (f", L3 {h['l3']}" if h.get("l3") else "") + f", Python {h['python']}")
    return line + (f", torch {h['torch']} ({h['torch_cpu_capability']})" if "torch" in h else "")
