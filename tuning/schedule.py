"""How a sweep's trials are judged in one Tune run of several tasks.

- PerTaskASHA: ASHA for each task apart: a rung compares a task's trials with each other, never
  CoLA's MCC with SST-2's accuracy. Rungs are counted in evaluations, which come every
  eval_every steps (or each epoch), so a long task prunes within an epoch.
- SweepBest: a Ray actor holding each task's best dev metric so far, over all its trials: a
  trial uploads its model only when it beats it.
"""

from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler


class PerTaskASHA(FIFOScheduler):
    """One ASHAScheduler per task (trial.config["task"]), on the trials' `objective`."""

    def __init__(self, grace_period: int, reduction_factor: int):
        super().__init__()
        self.grace_period, self.reduction_factor = grace_period, reduction_factor
        self.by_task: dict[str, ASHAScheduler] = {}

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # each task's ASHA has its own: objective, max

    def of(self, trial) -> ASHAScheduler:
        name = trial.config["task"]
        if name not in self.by_task:
            self.by_task[name] = ASHAScheduler(
                time_attr="training_iteration",
                metric="objective",
                mode="max",
                grace_period=self.grace_period,
                reduction_factor=self.reduction_factor,
                max_t=10_000,
            )
        return self.by_task[name]

    def on_trial_add(self, tune_controller, trial):
        self.of(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        return self.of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        self.of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        self.of(trial).on_trial_remove(tune_controller, trial)


class SweepBest:
    """Each task's best dev metric so far in the sweep (a Ray actor: the trials share it)."""

    def __init__(self):
        self.best: dict[str, float] = {}

    def offer(self, task: str, value: float) -> bool:
        """Whether value beats the task's best so far, which it then is."""
        if task in self.best and value <= self.best[task]:
            return False
        self.best[task] = value
        return True
