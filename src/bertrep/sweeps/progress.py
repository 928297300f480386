"""What a sweep prints while it runs, in place of Ray Tune's trial tables: one line per
trial started, finished or failed, named as the MLflow UI names its run, with the
stage's count and an estimate of the time left.

    quick-aufc trials  12/42 done, 2 running, 8m31s so far, ~21m01s left | stsb from
        sst2, k=3, seed 0: 1m04s, final/score 0.8120          (one line)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from ray import tune

INPUT_ERROR = "input_error"  # the result key of a trial whose config is bad input


def duration(seconds: float) -> str:
    """`45s`, `8m31s`, `1h02m`."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def time_left(elapsed: float, ended: int, remaining: int) -> str:
    """The rest at the pace so far (trials ended per second of the stage, which counts
    the trials running side by side); unknown before the first trial ends."""
    if remaining == 0:
        return "none left"
    if ended == 0:
        return "time left unknown"
    return f"~{duration(elapsed / ended * remaining)} left"


class Progress(tune.Callback):
    """Tune callback of one stage of a sweep (`sources` or `trials`) of `total` trials."""

    def __init__(self, label: str, total: int, clock: Callable[[], float] = time.monotonic) -> None:
        # Tune pickles its callbacks: the clock must be a module-level function.
        self.label, self.total, self.clock = label, total, clock
        self.begun = clock()
        self.started: dict[str, float] = {}
        self.done = self.failed = 0

    def _line(self, event: str) -> None:
        ended = self.done + self.failed
        elapsed = self.clock() - self.begun
        counts = f"{ended}/{self.total} done" + (f" ({self.failed} failed)" if self.failed else "")
        print(
            f"{self.label}  {counts}, {len(self.started)} running, {duration(elapsed)} so far, "
            f"{time_left(elapsed, ended, self.total - ended)} | {event}",
            flush=True,
        )

    @staticmethod
    def name(trial) -> str:
        return trial.config["trial"]["name"]

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.started[trial.trial_id] = self.clock()
        self._line(f"started {self.name(trial)}")

    def _took(self, trial) -> str:
        return duration(self.clock() - self.started.pop(trial.trial_id, self.clock()))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        took = self._took(trial)
        result = trial.last_result or {}
        if INPUT_ERROR in result:  # bad input: the same on any retry, so none
            self.failed += 1
            why = result[INPUT_ERROR]
            self._line(f"FAILED {self.name(trial)} after {took}, not retried: {why}")
            return
        self.done += 1
        score = result.get("score", math.nan)
        outcome = f"final/score {score:.4f}" if math.isfinite(score) else "no score"
        if result.get("diverged"):
            outcome += ", diverged"
        self._line(f"{self.name(trial)}: {took}, {outcome}")

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        took = self._took(trial)
        self._line(f"RETRYING {self.name(trial)}: its attempt failed after {took}")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        took = self._took(trial)
        self.failed += 1
        self._line(f"FAILED {self.name(trial)} after {took} (its run says why)")
