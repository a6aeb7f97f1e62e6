"""Secret scrubbing for anything logged (W&B itself is driven from search/tracking.py)."""
from __future__ import annotations

import re

SECRET_KEYS = re.compile(r"(api[_-]?key|token|secret|password)", re.I)


def scrub(config: dict) -> dict:
    """Drop anything that looks like a secret from a config before it is logged."""
    out = {}
    for k, v in config.items():
        if SECRET_KEYS.search(str(k)):
            continue
        out[k] = scrub(v) if isinstance(v, dict) else v
    return out
