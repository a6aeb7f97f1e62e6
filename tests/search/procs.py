"""The process table from /proc (Linux), for tests that kill or find Ray's processes."""
from __future__ import annotations

from pathlib import Path


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line)."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue
            out[int(d.name)] = (ppid, cmd)
    return out


def descendants(root: int, procs: dict[int, tuple[int, str]] | None = None) -> dict[int, str]:
    """Every process under ``root`` (not ``root`` itself): pid -> command line."""
    procs = processes() if procs is None else procs
    mine, todo = {}, [root]
    while todo:
        pid = todo.pop()
        for child, (ppid, cmd) in procs.items():
            if ppid == pid and child not in mine:
                mine[child] = cmd
                todo.append(child)
    return mine
