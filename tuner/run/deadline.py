"""The search's hard stop under a --time-budget, re-planned as the trials report: the budget less the time spent
before the search, the publishing, and the confirm stage predicted at the speeds the trials measure (not only the
calibration's). A TimeoutStopper, so a --resume counts the time left as Ray's own does."""

from __future__ import annotations

import pandas as pd
from ray.tune.stopper import TimeoutStopper

from mnist_net.cli import format_duration, say
from tuner.plan.budget import hard_stop, planned_confirm_time, search_speeds

_FIRED: list[float] = []  # the hard stops that fired in this process: the driver runs Tune's controller, and a
# restored experiment's stopper is Ray's own unpickled copy, so the runner asks here (fired) rather than an instance
REPLAN_EVERY = 5  # epochs reported between re-plans: a median over a handful is steady enough
MOVE = (0.5, 1.5)  # the hard stop stays within these multiples of the plan's, whatever a few epochs say


class LearningStop(TimeoutStopper):
    """Stops every trial at the hard stop, which moves as the trials' epochs teach the confirm stage's cost."""

    def __init__(self, settings) -> None:
        super().__init__(settings.search_time_budget_s)
        self.settings, self.rows = settings, []

    @property
    def hard_stop_s(self) -> float:
        return self._timeout_seconds

    def __call__(self, trial_id: str, result: dict) -> bool:
        batch = (result.get("config") or {}).get("batch_size")
        if result.get("images_per_s") and batch:
            self.rows.append({"batch_size": batch, "images_per_s": result["images_per_s"],
                              "eval_seconds": result.get("eval_seconds")})
            if len(self.rows) % REPLAN_EVERY == 0:
                self.replan()
        return False

    def stop_all(self) -> bool:
        if super().stop_all():
            _FIRED.append(self._timeout_seconds)
            return True
        return False

    def replan(self) -> None:
        s, b = self.settings, self.settings.budget_plan
        if b is None or b.fidelity is None:  # the smoke preset: its budget only stops the search
            return
        confirm_s = planned_confirm_time(b.fidelity, search_speeds(s, pd.DataFrame(self.rows)), b.tasks or 1, s.top + 1)
        stop = hard_stop(s.time_budget_s, b.spent_before_search_s, confirm_s)
        stop = min(max(stop, MOVE[0] * b.search_time_budget_s), MOVE[1] * b.search_time_budget_s)
        if abs(stop - self._timeout_seconds) >= 0.02 * b.search_time_budget_s:  # say only what matters
            say(f"time budget: the trials' speeds predict the confirm stage at {format_duration(confirm_s)} "
                f"(planned {format_duration(b.predicted.confirm_s)}); the search's hard stop moves to "
                f"{format_duration(stop)}")
        self._budget += stop - self._timeout_seconds  # what TimeoutStopper counts down
        self._timeout_seconds = stop


def fired() -> bool:
    """Whether a LearningStop stopped a search in this process (since the last clear)."""
    return bool(_FIRED)


def clear() -> None:
    _FIRED.clear()
