"""What a single-task run does between updates: score its eval split every `eval_every`
updates, or, with `early_stopping` = p > 0, stop on a held-out part of its training
examples (never on the evaluation split).

    target, watch = watcher(ctx, model, target)   # with early stopping: 90% of the train
    steps, diverged = optimise(ctx, model, [target], cfg.max_steps, "train", watch)
    steps = watch.finish(steps, diverged)          # the best weights back, and their step

Early stopping holds out a tenth of the training examples (the same ones for every seed),
scores them every `eval_every` updates and at the last, stops after p scores without a
better one and restores the trained weights of the best (logged: dev/<metric> per score,
train/best_step); the run's final score and tables are then logged at that step. The
frozen prefix of the held-out examples is cached like the training examples'.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from bertrep import tracking
from bertrep.data.encode import Encoded
from bertrep.training.loop import DATA_SEED, Context, TaskData, evaluate, log_eval
from bertrep.training.prefix import prefix_states

DEV_FRACTION = 0.1
BEST_STEP = tracking.phase_metric(tracking.TRAIN_PHASE, "best_step")


def dev_metric(metric: str) -> str:
    return tracking.phase_metric("dev", metric)


def split_dev(data: Encoded) -> tuple[Encoded, Encoded]:
    """(the examples trained on, the held-out tenth): a fixed draw, whatever the seed."""
    held = max(1, round(DEV_FRACTION * len(data)))
    order = np.random.default_rng(DATA_SEED).permutation(len(data))
    return data.subset(np.sort(order[held:])), data.subset(np.sort(order[:held]))


@dataclasses.dataclass
class Periodic:
    """The eval split scored every `eval_every` updates (0: never), for the record."""

    ctx: Context
    model: torch.nn.Module
    target: TaskData

    def __call__(self, step: int) -> bool:
        every, last = self.ctx.cfg.eval_every, self.ctx.cfg.max_steps
        if every and 0 < step < last and step % every == 0:
            log_eval(self.ctx, self.model, self.target, step)
        return False

    def finish(self, steps: int, diverged: str) -> int:
        return steps


@dataclasses.dataclass
class EarlyStopping:
    ctx: Context
    model: torch.nn.Module
    target: TaskData
    dev: Encoded
    dev_prefix: list | None = None
    best: float = -math.inf
    best_step: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    worse: int = 0  # scores since the best

    def __call__(self, step: int) -> bool:
        cfg = self.ctx.cfg
        if step == 0 or (step % cfg.eval_every and step != cfg.max_steps):
            return False
        metric = self.target.spec.metric
        score = evaluate(self.ctx, self.model, self.target, self.dev, self.dev_prefix)[metric]
        self.ctx.metrics.log({dev_metric(metric): score}, step)
        if score > self.best:
            self.best, self.best_step, self.worse = score, step, 0
            self.best_state = {n: p.detach().to("cpu", copy=True) for n, p in self._trained()}
        else:
            self.worse += 1
        return self.worse >= cfg.early_stopping

    def finish(self, steps: int, diverged: str) -> int:
        """The trained weights of the best score back, and the update they are of (as
        they are where nothing was scored, or where the loss diverged: a diverged run
        is not rescued by an earlier state)."""
        if self.best_state is None or diverged:
            return steps
        with torch.no_grad():
            for name, p in self._trained():
                p.copy_(self.best_state[name])
        self.ctx.metrics.log({BEST_STEP: self.best_step}, self.best_step)
        return self.best_step

    def _trained(self):
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]


def watcher(ctx: Context, model, target: TaskData) -> tuple[TaskData, Periodic | EarlyStopping]:
    """(the task data to train on, what to call after each update)."""
    cfg = ctx.cfg
    if not cfg.early_stopping:
        return target, Periodic(ctx, model, target)
    train, dev = split_dev(target.train)
    scores = cfg.max_steps // cfg.eval_every + 1
    prefix = prefix_states(
        ctx.accelerator.unwrap_model(model),
        dev,
        ctx.pad_id,
        ctx.runtime.prefix_cache_gb,
        ctx.runtime.prefix_disk_gb,
        uses=len(dev) * scores,
    )
    target = dataclasses.replace(target, train=train)
    return target, EarlyStopping(ctx, model, target, dev, prefix)
