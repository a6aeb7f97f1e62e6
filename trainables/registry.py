"""Method-family registries: a dict of name -> function. Two helpers: look a name up, call an entry with the
settings its signature names (so a registry entry declares what it needs by its keyword parameters).

Imports nothing of the project.
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable


def choose(registry: dict[str, Callable], name: str, family: str) -> Callable:
    """``registry[name]``; ValueError ``unknown <family> <name>`` otherwise."""
    try:
        return registry[name]
    except KeyError:
        raise ValueError(f"unknown {family} {name!r} (one of {', '.join(registry)})") from None


@functools.lru_cache(maxsize=None)
def _keywords(fn: Callable) -> frozenset[str]:
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return frozenset(n for n, p in inspect.signature(fn).parameters.items() if p.kind in kinds)


def call_with(fn: Callable, *args, **available):
    """``fn(*args, **kw)`` where ``kw`` holds those of ``available`` that ``fn`` names as parameters; the rest
    is ignored (pass a config's fields with ``**vars(config)``)."""
    names = _keywords(fn)
    return fn(*args, **{k: v for k, v in available.items() if k in names})
