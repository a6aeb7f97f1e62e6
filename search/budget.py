"""Checkpoints kept per trial (the best and the latest) and the experiment's disk budget.

While a trial runs, Ray Train keeps two of its checkpoints: the best by the sweep metric and the latest
(``CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=metric)``; Train never deletes the latest one).
The rest is done here, by a Tune callback in the driver process (``DiskBudget``):

* a trial that ends for good (finished or stopped by the scheduler) keeps only its best checkpoint. A failed trial
  keeps what Train keeps (best and latest: ``--retry-errored`` continues it from Train's own record of them), and a
  trial cut off by an interrupted sweep (Ctrl-C, ``pkill -INT``) is not touched: Tune saved it as unfinished, and
  ``resume`` continues its Train run, whose ``checkpoint_manager_snapshot.json`` names both checkpoints;
* best-weights snapshots and KD-switch soft labels (files under ``artifacts/<trial>/`` that checkpoints refer
  to by path, possibly from other trials after a PBT exploit) are deleted once no remaining checkpoint of the
  experiment refers to them; a running trial's file newer than its latest checkpoint is never touched (it
  belongs to the checkpoint being written);
* the experiment folder's bytes on disk are sampled after results (at most once a second; less often when the
  folder is so large that walking it would take over ~2% of the driver's time) and written to
  ``<experiment>/bam_disk.json``; above the budget, one warning line on stderr says so and what to change.

``check_budget`` refuses, before any compute, a sweep whose ended trials alone cannot fit the budget.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path

from ray.tune import Callback

from trainables.errors import UserError

DEFAULT_BUDGET = "20GB"
RECORD = "bam_disk.json"
TRIAL_OVERHEAD = 512 * 1024      # Tune's own files per trial (params, results, events, checkpoint pointers)
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


# ------------------------------------------------------------------------------------------------ sizes

def parse_size(text: str | int | None, *, flag: str = "--disk-budget") -> int | None:
    """``2GB``, ``500MB``, ``1.5GiB``, a plain number of bytes; ``none``/``off``/``0``: no budget."""
    if text is None or isinstance(text, int):
        return text or None
    s = str(text).strip().lower()
    if s in ("none", "off", "no", "0", "unlimited"):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)", s)
    if not m or m.group(2) not in _UNITS:
        raise UserError(f"{flag} {text!r}: expected a size such as 2GB, 500MB, 1.5GiB or none")
    n = int(float(m.group(1)) * _UNITS[m.group(2)])
    if n <= 0:
        raise UserError(f"{flag} {text!r}: must be more than 0 bytes (or none)")
    return n


def format_size(n: float | None) -> str:
    if n is None:
        return "none"
    for unit, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= f:
            return f"{n / f:.2f} {unit}"
    return f"{int(n)} B"


def disk_bytes(root: Path) -> int:
    """Bytes on disk under ``root`` as ``du`` counts them: allocated blocks, each hard-linked file once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [str(root)]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            total += getattr(st, "st_blocks", 0) * 512 or st.st_size
            if e.is_dir(follow_symlinks=False):
                stack.append(e.path)
    return total


# ------------------------------------------------------------------------------------------------ checkpoints

def train_runs(exp: Path, trial_id: str) -> list[Path]:
    """A trial's Ray Train runs: ``train-<id>``, and ``train-<id>-from-...`` after PBT exploits."""
    root = exp / "train"
    runs = [root / f"train-{trial_id}", *sorted(root.glob(f"train-{trial_id}-from-*"))]
    return [r for r in runs if r.is_dir()]


def trial_checkpoints(exp: Path, trial_id: str) -> list[Path]:
    """Every checkpoint folder of a trial: its Train runs' and the copies it inherited from PBT donors."""
    out = [c for r in train_runs(exp, trial_id) for c in sorted(r.glob("checkpoint-*")) if c.is_dir()]
    inherited = exp / "artifacts" / trial_id / "inherited"
    if inherited.is_dir():
        out += sorted(c for c in inherited.iterdir() if c.is_dir() and not c.name.startswith("."))
    return out


def all_checkpoints(exp: Path) -> list[Path]:
    out = [c for c in (exp / "train").glob("*/checkpoint-*") if c.is_dir()]
    out += [c for c in (exp / "artifacts").glob("*/inherited/*") if c.is_dir() and not c.name.startswith(".")]
    return out


def read_state(ckpt: Path) -> dict | None:
    try:
        return json.loads((ckpt / "state.json").read_text())
    except (OSError, ValueError):
        return None


def state_references(state: dict | None) -> set[str]:
    """The files outside its folder that a checkpoint's ``state.json`` refers to (snapshots, soft labels)."""
    if not state:
        return set()
    refs = {os.path.realpath(p) for p in (state.get("snapshot_files") or {}).values()}
    refs |= {os.path.realpath(r["path"]) for r in (state.get("soft_labels") or {}).values() if r.get("path")}
    return refs


def checkpoint_rank(ckpt: Path, metric: str) -> tuple[int, float, int]:
    """Sort key, larger is better: (complete, the metric at that checkpoint, step). NaN/missing rank lowest."""
    state = read_state(ckpt)
    complete = int(state is not None and (ckpt / "checksums.json").is_file())
    value = ((state or {}).get("last_metrics") or {}).get(metric)
    score = float(value) if isinstance(value, (int, float)) and math.isfinite(value) else float("-inf")
    return complete, score, int((state or {}).get("step") or 0)


def prune_trial(exp: Path, trial_id: str, *, metric: str) -> list[Path]:
    """An ended trial keeps only its best checkpoint (by ``metric``); returns the folders deleted."""
    ckpts = trial_checkpoints(exp, trial_id)
    if len(ckpts) <= 1:
        return []
    best = max(ckpts, key=lambda c: checkpoint_rank(c, metric))
    gone = [c for c in ckpts if c != best]
    for c in gone:
        shutil.rmtree(c, ignore_errors=True)
    return gone


class References:
    """Files referred to by the experiment's remaining checkpoints (state.json read once per version)."""

    def __init__(self):
        self._cache: dict[str, tuple[int, set[str]]] = {}

    def collect(self, exp: Path) -> set[str]:
        refs: set[str] = set()
        live: set[str] = set()
        for c in all_checkpoints(exp):
            refs |= self._of(c, live)
        for key in set(self._cache) - live:
            self._cache.pop(key)
        return refs

    def of(self, checkpoints: list[Path]) -> set[str]:
        """The files these checkpoints (say, one trial's) refer to."""
        return set().union(*(self._of(c) for c in checkpoints))

    def _of(self, ckpt: Path, live: set[str] | None = None) -> set[str]:
        p = ckpt / "state.json"
        try:
            mtime = p.stat().st_mtime_ns
        except OSError:
            return set()
        key = str(p)
        if live is not None:
            live.add(key)
        hit = self._cache.get(key)
        if hit is None or hit[0] != mtime:
            hit = (mtime, state_references(read_state(ckpt)))
            self._cache[key] = hit
        return hit[1]


def collect_garbage(exp: Path, trial_id: str, *, refs: set[str], newer_than_ns: int | None = None) -> int:
    """Delete a trial's snapshot and soft-label files that no remaining checkpoint refers to; bytes freed.

    ``newer_than_ns`` (a running trial): files modified at or after it are kept whatever they are."""
    freed = 0
    root = exp / "artifacts" / trial_id
    for sub in ("snapshots", "soft_labels"):
        d = root / sub
        if not d.is_dir():
            continue
        for f in d.iterdir():
            if f.name.startswith(".") or not f.is_file():      # a file being written (temporary name)
                continue
            if os.path.realpath(f) in refs:
                continue
            try:
                st = f.stat()
                if newer_than_ns is not None and st.st_mtime_ns >= newer_than_ns:
                    continue
                f.unlink()
                freed += st.st_blocks * 512
            except OSError:
                continue
    return freed


# ------------------------------------------------------------------------------------------------ before compute

def checkpoint_bytes(recipe) -> tuple[int, int] | None:
    """Estimated (checkpoint, best-weights snapshot) sizes for this recipe's model, from its parameter count
    (weights fp32 + AdamW's two moments; a snapshot is the weights). None when the model cannot be sized."""
    try:
        import torch

        from trainables.model import build_encoder, load_tokenizer
        st = recipe.student
        tok = load_tokenizer(recipe.model)
        with torch.device("meta"):
            enc = build_encoder(recipe.model, vocab_size=len(tok), num_layers=st.num_layers,
                                hidden_size=st.hidden_size, init="random")
        params = sum(p.numel() for p in enc.parameters())
    except Exception:  # noqa: BLE001 - an estimate only; the callback still measures
        return None
    return 12 * params + 64 * 1024, 4 * params


def check_budget(budget: int | None, *, recipe, trials: int, concurrent: int) -> dict | None:
    """Refuse, before any compute, a budget that cannot hold what the sweep keeps for certain: every ended
    trial's best checkpoint (and a best-weights snapshot when a KD switch can fire), plus the second
    checkpoint of each running trial. Returns the estimate (None when it cannot be made)."""
    sizes = checkpoint_bytes(recipe)
    if budget is None or sizes is None:
        return None
    ckpt, snap = sizes
    switching = any(recipe.switch_for(t).criterion != "never" for t in recipe.tasks)
    per_ended = ckpt + (snap if switching else 0) + TRIAL_OVERHEAD
    need = trials * per_ended + min(concurrent, trials) * ckpt
    est = {"checkpoint_bytes": ckpt, "snapshot_bytes": snap, "per_ended_trial": per_ended, "minimum": need}
    if need > budget:
        raise UserError(
            f"--disk-budget {format_size(budget)} cannot hold this sweep: each of the {trials} trials keeps its best "
            f"checkpoint (~{format_size(per_ended)} with {recipe.model}), at least {format_size(need)} in all; raise "
            f"--disk-budget or lower --num-samples")
    return est


# ------------------------------------------------------------------------------------------------ the callback

class DiskBudget(Callback):
    """Prunes ended trials, collects unreferenced files, samples the experiment's bytes on disk."""

    def __init__(self, *, experiment_dir: str | Path, metric: str, budget: int | None, grace_s: float = 5.0,
                 sample_every_s: float = 1.0, warn=None, shared: bool = True):
        self.exp = Path(experiment_dir)
        # shared: another trial's checkpoint may refer to a trial's files (PBT: a receiver's inherited copy and the
        # Train runs resumed from it name the donor's snapshots). Without PBT only a trial's own checkpoints do,
        # and a result never reads the rest of the experiment (issue 19: O(trials) folders per result).
        self.shared = shared
        self.metric, self.budget, self.grace_s, self.sample_every_s = metric, budget, grace_s, sample_every_s
        self._warn = warn
        self._refs = References()
        self._due: dict[str, float] = {}                 # trial id -> when to prune it
        self._ended: set[str] = set()                    # pruned (finished for good)
        self._failed: set[str] = set()                   # errored: checkpoints kept, unreferenced files collected
        self._restored: set[str] | None = None           # trials already finished when this run of the sweep began
        self.record = {"budget_bytes": budget, "metric": metric, "peak_bytes": 0, "last_bytes": 0, "samples": [],
                       "pruned_checkpoints": 0, "freed_files_bytes": 0, "warnings": []}
        self._last_sample = 0.0
        self._walk_s = 0.0                               # how long the last walk of the folder took
        self._warned_at: int | None = None

    def __getstate__(self):                              # Tune pickles callbacks with the experiment
        return {**self.__dict__, "_refs": References(), "_warn": None, "_restored": None}

    def __setstate__(self, state):                       # an experiment pickled by an older version lacks some
        self.__dict__.update({"_failed": set(), "_restored": None, "shared": True, **state})

    # --- Tune hooks

    def setup(self, **info):
        old = self.exp / RECORD
        if old.is_file():                                # a resumed experiment: keep the history
            try:
                prev = json.loads(old.read_text())
                for k in ("peak_bytes", "samples", "pruned_checkpoints", "freed_files_bytes", "warnings"):
                    self.record[k] = prev.get(k, self.record[k])
            except (OSError, ValueError):
                pass

    def on_trial_result(self, iteration, trials, trial, result, **info):
        ckpt = result.get("checkpoint_path")
        guard = None
        if ckpt:
            try:
                guard = (Path(ckpt) / "state.json").stat().st_mtime_ns
            except OSError:
                guard = None
        if guard is not None:                            # only files older than the checkpoint just reported
            self.record["freed_files_bytes"] += self._collect_running(trial.trial_id, guard)
        self._sample()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._due[trial.trial_id] = time.monotonic() + self.grace_s

    def on_trial_error(self, iteration, trials, trial, **info):
        # Its checkpoints stay as Train recorded them (a retried trial restores from that record); only files no
        # checkpoint refers to go, at the end.
        self._failed.add(trial.trial_id)

    def on_step_begin(self, iteration, trials, **info):
        if self._restored is None:                       # a resumed sweep: trials that had finished before it
            self._restored = {t.trial_id for t in trials if t.status == "TERMINATED"}
            for tid in sorted(self._restored - self._ended):
                self._due.setdefault(tid, 0.0)           # pruned now (a killed driver may not have pruned them)

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        ready = [t for t, due in self._due.items() if due <= now]
        if ready:
            self._prune(ready)
        self._sample()

    def on_experiment_end(self, trials, **info):
        # Only trials Tune reported finished: when a sweep is interrupted, Tune saves its state and then marks the
        # trials it stops TERMINATED, but resumes them later from their Train runs (pruning them broke that).
        self._prune(sorted(self._due), final=True)
        self._sample(force=True)

    # --- work

    def _collect_running(self, trial_id: str, guard: int) -> int:
        """``collect_garbage`` for a running trial. Every checkpoint of the experiment (O(trials) folders) is read
        only when the trial holds a file its own checkpoints do not refer to (after a new best or a KD switch):
        most results find none, so the driver's cost per result does not grow with the sweep (issue 19)."""
        root = self.exp / "artifacts" / trial_id
        files = [f for sub in ("snapshots", "soft_labels") if (root / sub).is_dir()
                 for f in (root / sub).iterdir() if not f.name.startswith(".")]
        own = self._refs.of(trial_checkpoints(self.exp, trial_id))
        if all(os.path.realpath(f) in own for f in files):
            return 0
        refs = self._refs.collect(self.exp) if self.shared else own
        return collect_garbage(self.exp, trial_id, refs=refs, newer_than_ns=guard)

    def _prune(self, trial_ids: list[str], *, final: bool = False) -> None:
        for tid in trial_ids:
            self._due.pop(tid, None)
            self.record["pruned_checkpoints"] += len(prune_trial(self.exp, tid, metric=self.metric))
            self._ended.add(tid)
        refs = self._refs.collect(self.exp) if self.shared or final else None
        for tid in sorted((self._ended | self._failed) if final else trial_ids):
            mine = refs if refs is not None else self._refs.of(trial_checkpoints(self.exp, tid))
            self.record["freed_files_bytes"] += collect_garbage(self.exp, tid, refs=mine)
        self._sample(force=True)

    def _sample(self, *, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last_sample < self._interval():
            return
        self._last_sample = now
        t0 = time.perf_counter()
        used = disk_bytes(self.exp)
        self._walk_s = time.perf_counter() - t0
        rec = self.record
        rec["last_bytes"] = used
        rec["peak_bytes"] = max(rec["peak_bytes"], used)
        rec["samples"] = (rec["samples"] + [[round(now, 3), used]])[-2000:]
        if self.budget is not None and used > self.budget and not self._due:
            self._over(used)
        self._write()

    def _interval(self) -> float:
        """``sample_every_s`` (0: every result), or longer in a large experiment: walking its folder (O(files), ~50 ms
        at 256 trials) then takes at most ~2% of the driver's time (issue 19)."""
        return self.sample_every_s and max(self.sample_every_s, 50 * getattr(self, "_walk_s", 0.0))

    def _over(self, used: int) -> None:
        if self._warned_at is not None and used < self._warned_at * 1.25:
            return                                        # once, then again only if it keeps growing
        self._warned_at = used
        msg = (f"bam-search: warning: experiment {self.exp.name} holds {format_size(used)} on disk, over "
               f"--disk-budget {format_size(self.budget)}, although ended trials keep only their best checkpoint "
               f"(running trials keep two); raise --disk-budget or lower --max-concurrent / --num-samples")
        self.record["warnings"].append({"time": time.time(), "bytes": used})
        (self._warn or (lambda m: print(m, file=sys.stderr, flush=True)))(msg)

    def _write(self) -> None:
        from trainables.storage import atomic_write
        try:
            atomic_write(self.exp / RECORD, json.dumps(self.record).encode())
        except OSError:
            pass
