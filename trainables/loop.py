"""THE loop: one inner training loop for teachers (one task, gold only) and the BAM student.

Each step: p = step/total; pick the task (single-task batches) or the task mix (mixed batches) from
``sampling_weights``; target = annealed mix of gold and teacher, or, after a task's KD switch, of gold and
the task's own snapshot predictions; weighted loss; manual gradient all-reduce across Train workers.
Every ``total/evals`` steps: evaluate the joined tasks (all, unless ``switch.mode`` is sequential) on dev,
update each task's ``TaskSwitch``, fire switches (a sequential run's next task joins), report metrics with a
checkpoint that resumes the run exactly.
"""
from __future__ import annotations

import math
import resource
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import schedules
from .data import ExampleStream, TaskData, TokenizedSplit, eval_batches
from .dev_predictions import compact
from .errors import UserError
from .losses import WEIGHTINGS, hidden_mse, pcgrad, task_loss, weigh_task_loss
from .metrics import compute_metrics, glue_average
from .model import MultiTaskModel, layer_depths, set_attention, set_dropout
from .precision import autocast_dtype
from .recipe import Recipe
from .artifacts import ensure_local, publish
from .teacher_store import atomic_save_npy, load_checked_npy
from .switch import TaskSwitch


class NonFiniteLoss(RuntimeError):
    pass




# --------------------------------------------------------------------------------------------- distributed

class World:
    """Rank/size and the few collectives the loop needs; size 1 does no communication."""

    def __init__(self):
        import torch.distributed as dist
        self.dist = dist if dist.is_available() and dist.is_initialized() else None
        self.size = self.dist.get_world_size() if self.dist else 1
        self.rank = self.dist.get_rank() if self.dist else 0

    def allreduce_grads(self, params: list[nn.Parameter]) -> None:
        """Average gradients over workers. A parameter no worker has a gradient for (the head of a task no worker
        sampled this step) keeps ``grad = None``, as with one worker, so AdamW neither moves nor decays it."""
        if self.size == 1:
            return
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                          for p in params] + [torch.tensor([float(p.grad is not None) for p in params])])
        self.dist.all_reduce(flat)
        had = flat[-len(params):] if params else flat[:0]
        flat /= self.size
        i = 0
        for k, p in enumerate(params):
            n = p.numel()
            p.grad = flat[i:i + n].view_as(p).to(p.dtype) if had[k] > 0 else None
            i += n

    def gather(self, obj):
        if self.size == 1:
            return [obj]
        out = [None] * self.size
        self.dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        if self.size == 1:
            return obj
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]


# --------------------------------------------------------------------------------------------- the run

class Run:
    """State of one training run (teacher or student) on one Train worker."""

    def __init__(self, *, recipe: Recipe, data: dict[str, TaskData], model: MultiTaskModel, world: World,
                 device: torch.device, artifacts_dir: str | Path, hidden_teachers: dict | None = None,
                 keep_best_weights: bool = False, store=None):
        """``keep_best_weights``: keep each task's best-evaluation weights (``best_weights``) even without a
        KD switch: a teacher predicts its train set with them. ``store``: the URI storage that artifacts are
        copied to and fetched from (``artifacts.py``); None with local storage."""
        self.r, self.data, self.model, self.world, self.device = recipe, data, model, world, device
        self.keep_best_weights = keep_best_weights
        self.artifacts, self.store = Path(artifacts_dir), store
        self.tasks = list(recipe.tasks)
        self.sizes = {t: len(data[t].train) for t in self.tasks}
        o = recipe.optim
        total_examples = sum(self.sizes.values())
        self.total = o.steps or max(1, math.ceil(o.epochs * total_examples / o.batch_size))
        self.eval_steps = {max(1, round(self.total * i / recipe.evals)) for i in range(1, recipe.evals + 1)}
        self.amp = autocast_dtype(recipe.precision, device)
        self.attention = set_attention(model, device)
        set_dropout(model, device)
        self.scaler = torch.amp.GradScaler(device.type) if self.amp == torch.float16 else None
        self.hidden_teachers = hidden_teachers or {}
        for enc in self.hidden_teachers.values():
            set_attention(enc, device)
        self._add_loss_modules()
        model.to(device)
        self.params = [p for p in model.parameters()]
        self.opt = self._optimizer()
        self.step = 0
        self.streams = {t: ExampleStream(data[t].train.lengths, batch_size=o.batch_size,
                                         seed=recipe.seed * 1000 + i) for i, t in enumerate(self.tasks)}
        self.rng = np.random.default_rng([recipe.seed, 7])      # task choice: identical on every rank
        self.switch = {t: TaskSwitch.from_config(recipe.switch_for(t)) for t in self.tasks}
        order = list(recipe.switch.order or self.tasks)
        self.active = order[:1] if recipe.switch.mode == "sequential" else list(self.tasks)
        self.order = order
        self.joined_at: dict[str, int] = {t: 0 for t in self.active}   # sequential: the step each task joined
        self.soft_labels: dict[str, dict] = {}                  # task -> {"path", "sha256", "step"}
        self._soft_cache: dict[str, np.ndarray] = {}
        self.snapshots: dict[int, dict] = {}                    # eval step -> CPU state dict (best of some task)
        self.snapshot_files: dict[int, str] = {}
        self.snapshot_sha: dict[int, str] = {}                 # eval step -> sha256 of its snapshot file
        self.loss_history: list[dict[str, float]] = []          # DWA: mean loss per task per eval window
        self._window: dict[str, list[tuple]] = {t: [] for t in self.tasks}   # (step, mean loss, examples)
        self.evals: list[dict] = []
        self.examples_seen = 0
        self.tokens_seen = 0
        self.last_metrics: dict | None = None
        self.last_dev: dict | None = None                       # the last evaluation's dev predictions

    def _add_loss_modules(self) -> None:
        """Parameters some losses train with the model: uncertainty weights, hidden-state projections."""
        model = self.model
        if WEIGHTINGS[self.r.mtl.weighting].learns_log_vars:
            model.log_vars = nn.ParameterDict({t: nn.Parameter(torch.zeros(())) for t in self.tasks})
        if self.r.student.hidden_distill > 0:
            if not self.hidden_teachers:
                raise UserError("student.hidden_distill > 0 needs teacher weights in the store")
            ht = next(iter(self.hidden_teachers.values())).encoder.config.hidden_size   # a MultiTaskModel
            model.projections = nn.ModuleList(nn.Linear(model.encoder.config.hidden_size, ht)
                                              for _ in range(model.num_layers))   # student layer i -> teacher's

    def _optimizer(self) -> torch.optim.AdamW:
        """AdamW with layer-wise lr decay (one group per depth scale), no weight decay on biases and norms."""
        o, model = self.r.optim, self.model
        depths = layer_depths(model)
        groups: dict[float, list] = {}
        for name, p in model.named_parameters():
            scale = schedules.layer_lr_scale(depths[name], num_layers=model.num_layers, decay=o.layer_decay)
            no_decay = p.ndim < 2
            groups.setdefault((scale, no_decay), []).append(p)
        return torch.optim.AdamW(
            [{"params": ps, "lr": o.lr * s, "base_lr": o.lr * s, "weight_decay": 0.0 if nd else o.weight_decay}
             for (s, nd), ps in groups.items()], lr=o.lr, fused=self.device.type in ("cpu", "cuda"))

    # ----------------------------------------------------------------------------------- targets

    def progress(self) -> float:
        return self.step / self.total

    def task_progress(self, task: str) -> float:
        """Progress over ``task``'s own span, from the step it joined to the end: a task that joins a sequential
        run late anneals its λ from 0 at its joining step, as every task of a joint run does from step 0."""
        start = self.joined_at.get(task, 0)
        return (self.step - start) / max(1, self.total - start)

    def target_source(self, task: str, index: np.ndarray) -> tuple[torch.Tensor | None, float]:
        """(predictions to distil from, weight of gold) for these train examples of ``task``."""
        if task in self.soft_labels:
            preds = self._soft(task)
            return torch.from_numpy(preds[index]), self.r.switch_for(task).gold_weight
        teacher = self.data[task].teacher
        if teacher is None or not self.r.teacher.use:
            return None, 1.0
        lam = schedules.anneal_lambda(self.task_progress(task), **vars(self.r.anneal_for(task)))
        return torch.from_numpy(teacher[index]), lam

    def _soft(self, task: str) -> np.ndarray:
        if task not in self._soft_cache:
            ref = self.soft_labels[task]
            self._soft_cache[task] = load_checked_npy(ensure_local(ref["path"], self.store, sha256=ref["sha256"]),
                                                      ref["sha256"])
        return self._soft_cache[task]

    def current_weights(self) -> dict[str, float]:
        sizes = {t: self.sizes[t] for t in self.active}
        return schedules.sampling_weights(sizes, p=self.progress(), **vars(self.r.sampling))

    # ----------------------------------------------------------------------------------- one step

    def _task_batches(self) -> dict[str, np.ndarray]:
        """This step's batch over all workers, task -> example indices: the same on every worker (one seeded
        stream per task, one task-choice generator); each worker trains its share ``[rank::size]``."""
        weights = self.current_weights()
        names = list(weights)
        probs = np.asarray([weights[t] for t in names])
        B = self.r.optim.batch_size
        if self.r.sampling.batches == "single":
            task = names[int(self.rng.choice(len(names), p=probs))]
            counts = {task: B}
        else:
            counts = {t: int(c) for t, c in zip(names, self.rng.multinomial(B, probs)) if c > 0}
        return {t: self.streams[t].take(c) for t, c in counts.items()}

    def _weighted(self, loss: torch.Tensor, task: str) -> torch.Tensor:
        """The task's loss under the recipe's MTL weighting (``losses.WEIGHTINGS``) and static weight."""
        return weigh_task_loss(loss, task, tasks=self.tasks, history=self.loss_history,
                               log_vars=getattr(self.model, "log_vars", None),
                               regression=self.data[task].task.is_regression, **vars(self.r.mtl))

    def _forward_loss(self, task: str, index: np.ndarray) -> torch.Tensor:
        td = self.data[task]
        batch = td.train.collate(index)
        dev = self.device
        want_hidden = self.r.student.hidden_distill > 0 and task in self.hidden_teachers
        with torch.autocast(dev.type, dtype=self.amp, enabled=self.amp is not None):
            out = self.model(task=task, input_ids=batch["input_ids"].to(dev),
                             attention_mask=batch["attention_mask"].to(dev),
                             token_type_ids=batch["token_type_ids"].to(dev), hidden_states=want_hidden,
                             pack=self.r.pack)
            logits, states = out if want_hidden else (out, None)
        teacher, lam = self.target_source(task, index)
        a = self.r.anneal_for(task)
        loss = task_loss(logits=logits, gold=batch["labels"].to(dev), teacher=None if teacher is None else teacher.to(dev),
                         lam=lam, regression=td.task.is_regression, temperature=a.temperature, kind=a.loss)
        if want_hidden:
            with torch.no_grad(), torch.autocast(dev.type, dtype=self.amp, enabled=self.amp is not None):
                t_out = self.hidden_teachers[task].encoder(
                    input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev),
                    token_type_ids=batch["token_type_ids"].to(dev), output_hidden_states=True)
            loss = loss + self.r.student.hidden_distill * hidden_mse(
                states, t_out.hidden_states, self.model.projections, attention_mask=batch["attention_mask"].to(dev))
        self.examples_seen += len(index)
        self.tokens_seen += int(batch["attention_mask"].sum())
        return loss

    def _set_frozen(self) -> None:
        if self.r.student.unfreeze != "gradual":
            return
        L = self.model.num_layers
        n = schedules.unfrozen_layers(self.progress(), num_layers=L)
        for name, p in self.model.encoder.named_parameters():
            if name.startswith("embeddings"):
                p.requires_grad_(n > L)
            elif "layer." in name:
                i = int(name.split("layer.")[1].split(".")[0])
                p.requires_grad_(i >= L - n)

    def _shared_params(self) -> list[nn.Parameter]:
        """What PCGrad projects: every trained parameter but the task heads and the uncertainty log-variances
        (a task's own parameters get only its own gradient, which no other task's can conflict with)."""
        own = {id(p) for m in (self.model.heads, getattr(self.model, "log_vars", None)) if m is not None
               for p in m.parameters()}
        return [p for p in self.params if p.requires_grad and id(p) not in own]

    @staticmethod
    def _take_shared_grad(shared: list[nn.Parameter], used: set[int]) -> torch.Tensor:
        """One task's gradient on ``shared``, flat; their ``.grad`` is cleared for the next task's backward and
        the indices of those that got one are added to ``used``."""
        flat = []
        for k, p in enumerate(shared):
            if p.grad is not None:
                used.add(k)
            flat.append((p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float())
            p.grad = None
        return torch.cat(flat)

    def _step_tasks(self, local) -> list[str]:
        """The tasks of this step on any worker, in the recipe's order (a worker's share of a task may be empty)."""
        present = set(local)
        if self.world.size > 1:
            present = present.union(*self.world.gather(sorted(present)))
        return [t for t in self.tasks if t in present]

    def _project_shared(self, task_grads: dict[str, torch.Tensor], shared: list[nn.Parameter], used: set[int]) -> None:
        """PCGrad (Yu et al. 2020) on the shared parameters: each task's gradient is first averaged over the
        workers, so every worker projects the same gradients in the same order and stays in step."""
        names = self._step_tasks(task_grads)
        zero = torch.zeros(sum(p.numel() for p in shared), device=self.device)
        grads = torch.stack([task_grads.get(t, zero) for t in names])
        if self.world.size > 1:
            self.world.dist.all_reduce(grads)
            grads /= self.world.size
            used = set().union(*self.world.gather(sorted(used)))   # a gradient on any worker is one on all
        flat = pcgrad(list(grads), generator=torch.Generator().manual_seed(self.step))
        i = 0
        for k, p in enumerate(shared):
            p.grad = flat[i:i + p.numel()].view_as(p).to(p.dtype).clone() if k in used else None
            i += p.numel()

    def train_step(self) -> dict[str, float]:
        self.model.train()
        self._set_frozen()
        mult = schedules.lr_multiplier(self.step, total=self.total, warmup=self.r.optim.warmup,
                                       decay=self.r.optim.decay)
        for g in self.opt.param_groups:
            g["lr"] = g["base_lr"] * mult
        self.opt.zero_grad(set_to_none=True)
        batch = self._task_batches()
        n_step = sum(len(v) for v in batch.values())
        parts = {t: mine for t, idx in batch.items() if len(mine := idx[self.world.rank::self.world.size])}
        losses: dict[str, float] = {}
        shared = self._shared_params() if self.r.mtl.pcgrad else []
        task_grads: dict[str, torch.Tensor] = {}
        used: set[int] = set()
        for task, index in parts.items():
            loss = self._forward_loss(task, index)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"non-finite loss ({loss.item()}) on task {task} at step {self.step}")
            losses[task] = float(loss.detach())
            self._window[task].append((self.step, losses[task], len(index)))
            # each example's share of the whole step's batch (summed over workers, then averaged by allreduce):
            # the same gradient as one worker taking the whole batch, however the examples fall on the workers
            loss = self._weighted(loss, task) * len(index) * self.world.size / n_step
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            if shared:                          # heads and log_vars accumulate; shared gradients are kept apart
                task_grads[task] = self._take_shared_grad(shared, used)
        if shared:
            self._project_shared(task_grads, shared, used)
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        projected = {id(p) for p in shared}     # averaged over workers before projection
        self.world.allreduce_grads([p for p in self.params if p.requires_grad and id(p) not in projected])
        if self.r.optim.clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in self.params if p.grad is not None], self.r.optim.clip)
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.step += 1
        return losses

    def close_window(self) -> dict[str, float]:
        """Each task's mean training loss since the last evaluation (DWA's history), over every worker's examples:
        per step the example-weighted mean of the workers' shares, then the mean over steps, as one worker."""
        per_step: dict[tuple[str, int], list[float]] = {}
        for window in self.world.gather(self._window):
            for t, items in window.items():
                for step, loss, n in items:
                    acc = per_step.setdefault((t, step), [0.0, 0])
                    acc[0] += loss * n
                    acc[1] += n
        means: dict[str, list[float]] = {}
        for (t, _), (total, n) in sorted(per_step.items()):
            means.setdefault(t, []).append(total / n)
        self._window = {t: [] for t in self.tasks}
        return {t: float(np.mean(v)) for t, v in means.items()}

    # ----------------------------------------------------------------------------------- evaluation

    @torch.no_grad()
    def predict(self, task: str, split: TokenizedSplit, *, batch_size: int = 64) -> np.ndarray:
        """Predictions for every example of ``split`` (sharded over ranks, gathered in order)."""
        self.model.eval()
        batches = eval_batches(split.lengths, batch_size=batch_size)
        mine = []
        for b in batches[self.world.rank::self.world.size]:
            batch = split.collate(b)
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                out = self.model(task=task, input_ids=batch["input_ids"].to(self.device),
                                 attention_mask=batch["attention_mask"].to(self.device),
                                 token_type_ids=batch["token_type_ids"].to(self.device))
            mine.append((b, out.float().cpu().numpy()))
        pieces = [x for part in self.world.gather(mine) for x in part]
        shape = (len(split),) + pieces[0][1].shape[1:]
        preds = np.zeros(shape, dtype=np.float32)
        for idx, out in pieces:
            preds[idx] = out
        return preds

    def evaluate(self) -> dict:
        """Dev scores of the joined tasks (all of them in joint mode): a sequential run's later tasks are
        neither trained nor evaluated before they join. The predictions scored are kept, compact, in
        ``last_dev`` (``{"step", "tasks"}``, the format of ``dev_predictions.py``) for the report's bootstrap."""
        scores, metrics, dev = {}, {}, {}
        for t in self.active:
            td = self.data[t]
            split_scores = []
            dev[t] = {"metrics": list(td.task.metrics), "splits": {}}
            for name, split in td.dev.items():
                preds = self.predict(t, split)
                m = compute_metrics(metrics=td.task.metrics, predictions=preds, labels=split.labels)
                for k, v in m.items():
                    metrics[f"{t}/{name}/{k}" if len(td.dev) > 1 else f"{t}/{k}"] = v
                split_scores.append(m["score"])
                dev[t]["splits"][name] = {"ids": np.asarray(split.ids), "gold": np.asarray(split.labels),
                                          "pred": compact(preds, regression=td.task.is_regression)}
            scores[t] = float(np.mean(split_scores))
        self.last_dev = {"step": self.step, "tasks": dev}
        return {"scores": scores, "metrics": metrics}

    def after_eval(self, scores: dict[str, float]) -> list[str]:
        """Update switch states; keep best-weights snapshots; fire switches. Returns the tasks that switched."""
        fired, bests = [], []
        for t in self.tasks:
            if t not in self.active:
                continue
            new_best, fire = self.switch[t].observe(step=self.step, score=scores[t])
            if new_best and (self.keep_best_weights or
                             (self.switch[t].criterion != "never" and not self.switch[t].switched)):
                bests.append(t)
            if fire:
                fired.append(t)
        if bests:
            self.snapshots[self.step] = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        for t in fired:
            self._switch(t)
        # forget snapshots no unswitched task refers to (with keep_best_weights: no task)
        live = {self.switch[t].best_step for t in self.tasks if self.keep_best_weights or not self.switch[t].switched}
        for s in list(self.snapshots):
            if s not in live:                        # the file stays: an older checkpoint may refer to it
                self.snapshots.pop(s)
                self.snapshot_files.pop(s, None)
                self.snapshot_sha.pop(s, None)
        if self.r.switch.mode == "sequential":       # the next task joins once every joined one has switched:
            for t in self.order:                      # trained from the next step, reported from the next eval
                if t not in self.active and all(self.switch[a].switched for a in self.active):
                    self.active.append(t)
                    self.joined_at[t] = self.step
        return fired

    def best_weights(self, task: str) -> dict | None:
        """A CPU copy of the weights at ``task``'s best evaluation, if kept (for its KD switch or by
        ``keep_best_weights``)."""
        return self.snapshots.get(self.switch[task].best_step)

    def _switch(self, task: str) -> None:
        sw = self.switch[task]
        current = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.snapshots[sw.best_step])
        preds = self.predict(task, self.data[task].train)
        self.model.load_state_dict(current)
        sw.switched_at = self.step
        path = self.artifacts / "soft_labels" / f"{task}-step{sw.best_step}.npy"
        sha = None
        if self.world.rank == 0:
            sha = atomic_save_npy(path, preds)
            publish(path, self.store)
        sha = self.world.broadcast(sha)
        self.soft_labels[task] = {"path": str(path), "sha256": sha, "step": sw.best_step}
        self._soft_cache[task] = preds

    # ------------------------------------------------------------------- state (checkpoint.py writes it to disk)

    def state(self) -> dict:
        """Everything but tensors, as JSON; best-weights snapshots and soft labels by file reference."""
        return {
            "step": self.step, "total": self.total,
            "streams": {t: s.state() for t, s in self.streams.items()},
            "rng": self.rng.bit_generator.state,
            "switch": {t: s.to_dict() for t, s in self.switch.items()},
            "active": self.active, "joined_at": self.joined_at, "soft_labels": self.soft_labels,
            "snapshot_files": {str(k): v for k, v in self.snapshot_files.items()},
            "snapshot_sha256": {str(k): v for k, v in self.snapshot_sha.items()},
            "loss_history": self.loss_history, "evals": self.evals,
            "examples_seen": self.examples_seen, "tokens_seen": self.tokens_seen,
            "last_metrics": self.last_metrics,
        }

    def tensor_state(self) -> dict:
        """The model's, optimiser's and gradient scaler's state."""
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None}

    def load_state(self, st: dict, *, tensors: dict, snapshots: dict[int, dict]) -> None:
        """Back to a saved ``state()`` and ``tensor_state()``, with the snapshots ``st`` refers to, loaded."""
        self.model.load_state_dict(tensors["model"])
        self.opt.load_state_dict(tensors["optimizer"])
        if self.scaler is not None and tensors.get("scaler"):
            self.scaler.load_state_dict(tensors["scaler"])
        self.step = st["step"]
        for t, s in st["streams"].items():
            self.streams[t].load_state(s)
        self.rng.bit_generator.state = st["rng"]
        self.switch = {t: TaskSwitch.from_dict(d) for t, d in st["switch"].items()}
        self.active = st["active"]
        self.joined_at = st.get("joined_at") or {t: 0 for t in self.active}   # older checkpoints: none joined late
        self.soft_labels = st["soft_labels"]
        self._soft_cache = {}
        self.snapshot_files = {int(k): v for k, v in st["snapshot_files"].items()}
        self.snapshot_sha = {int(k): v for k, v in (st.get("snapshot_sha256") or {}).items()}
        self.snapshots = snapshots
        self.loss_history, self.evals = st["loss_history"], st["evals"]
        self.examples_seen, self.tokens_seen = st["examples_seen"], st["tokens_seen"]
        self.last_metrics = st.get("last_metrics")


# --------------------------------------------------------------------------------------------- driving

Reporter = Callable[[dict, "Run | None"], None]


def eval_metrics(run: Run, ev: dict, *, fired: list[str], train_time: float) -> dict:
    """One evaluation's report. ``TASK/score`` and ``glue_avg`` (their mean) are this evaluation's: one model,
    one score, what runs are ranked and reported by. ``TASK/best`` and ``glue_avg_best`` are each task's best
    evaluation so far and their mean: from different checkpoints, an extra, never a run's score. Per-task keys
    and the averages cover the evaluated tasks, ``joined``: in a sequential run a task that has not joined
    has no ``TASK/*`` key at all, so neither ranks nor early stopping count it; ``joined_now`` names the task
    that joins at this step (trained from the next step, reported from the next evaluation)."""
    scores = ev["scores"]
    metrics = dict(ev["metrics"])
    for t in scores:
        metrics[f"{t}/score"] = scores[t]
        metrics[f"{t}/best"] = run.switch[t].best
        metrics[f"{t}/switched"] = int(run.switch[t].switched)
        metrics[f"{t}/loss"] = run.loss_history[-1].get(t, float("nan"))
        metrics[f"{t}/joined_at"] = run.joined_at[t]
        metrics[f"{t}/lambda"] = schedules.anneal_lambda(run.task_progress(t), **vars(run.r.anneal_for(t)))
    metrics["glue_avg"] = glue_average(scores)
    metrics["glue_avg_best"] = glue_average({t: run.switch[t].best for t in scores})
    metrics["lambda"] = schedules.anneal_lambda(run.progress(), **vars(run.r.anneal))   # the recipe's own anneal
    for t, w in run.current_weights().items():
        if t in scores:
            metrics[f"{t}/sampling_weight"] = w
    for t in scores:                               # what the encoder saw of each joined task (global batch)
        metrics[f"{t}/examples_seen"] = run.streams[t].seen
    metrics["joined"] = ",".join(scores)
    metrics["joined_now"] = ",".join(t for t in run.active if t not in scores)
    metrics["switched"] = ",".join(t for t in run.tasks if run.switch[t].switched)
    metrics["switched_now"] = ",".join(fired)
    metrics["step"] = run.step
    metrics["progress"] = run.progress()
    metrics["examples_per_s"] = run.examples_seen * run.world.size / max(train_time, 1e-9)
    metrics["tokens_per_s"] = run.tokens_seen * run.world.size / max(train_time, 1e-9)
    metrics["train_s"] = train_time
    metrics["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return metrics


def early_stop(run: Run) -> dict | None:
    """The recipe's ``early_stop`` read off the run's evaluations (so a resumed run knows it had stopped): the
    watched value is the mean dev score of the evaluated tasks (a teacher's: its task's score), bettered only by
    a strictly higher one (min_delta 0, as ``TaskSwitch`` picks a teacher's best weights). ``{"best_step",
    "since_best", "stop"}``: ``stop`` after ``patience`` evaluations in a row without a better value. None: off."""
    patience = run.r.early_stop.patience
    if not patience:
        return None
    best, best_step, since = None, None, 0
    for e in run.evals:
        value = glue_average(e["scores"])
        if best is None or value > best:
            best, best_step, since = value, e["step"], 0
        else:
            since += 1
    return {"best_step": best_step, "since_best": since, "stop": since >= patience}


def stopped_early(run: Run) -> bool:
    """Did ``run`` stop at an evaluation before its last step (its ``early_stop`` patience ran out)?"""
    state = early_stop(run)
    return bool(state and state["stop"] and run.step < run.total)


def run_training(run: Run, *, report: Reporter, should_stop: Callable[[], bool] = lambda: False,
                 on_step: Callable[[Run], None] | None = None) -> dict:
    """Train to the end, evaluating ``evals`` times; ``report(metrics, run)`` after each evaluation and
    ``on_step(run)`` (if given) after each optimiser step. With ``early_stop.patience`` the run ends at the
    evaluation that runs out of patience (its report says ``stopped_early`` 1); the best weights are the
    ``Run.best_weights`` a teacher keeps."""
    t0 = time.perf_counter()
    train_time = 0.0
    while run.step < run.total and not should_stop() and not stopped_early(run):
        ts = time.perf_counter()
        run.train_step()
        train_time += time.perf_counter() - ts
        if on_step is not None:
            on_step(run)
        if run.step in run.eval_steps:
            run.loss_history.append(run.close_window())
            ev = run.evaluate()
            fired = run.after_eval(ev["scores"])
            metrics = eval_metrics(run, ev, fired=fired, train_time=train_time)
            run.evals.append({"step": run.step, "scores": ev["scores"], "switched_now": fired})
            if (state := early_stop(run)) is not None:
                metrics.update({"early_stop_best_step": state["best_step"], "stopped_early": int(stopped_early(run))})
            run.last_metrics = metrics
            report(metrics, run)
    return {"wall_s": time.perf_counter() - t0, "train_s": train_time}
