"""The host beside every bench figure: ``search/host.py``'s description of the machine, and ``describe()`` for a
bench JSON. Figures from two hosts are compared only as ratios measured side by side in one run (DEVELOPERS.md).
"""
from __future__ import annotations

from search.host import SPEED_FLAGS, host, host_line  # noqa: F401  (the bench scripts' names for them)


def describe() -> dict:
    """``{"machine": host_line(), "host": host()}`` with one reading of the machine, for a bench JSON."""
    h = host()
    return {"machine": host_line(h), "host": h}


if __name__ == "__main__":
    import json
    print(json.dumps(host(), indent=1))
    print(host_line())
