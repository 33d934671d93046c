"""A live progress line for a search (a Ray Tune callback; tqdm, refreshed ~1/s), and a bar for the stages after it:

    search 12/32 [6 finished, 6 stopped, 2 running] best 98.71% (lr 0.0412, m 0.874, bs 64) | 4:02 < ETA 9:30

Stopped = ended early by ASHA; diverged and errored trials count as ended too. The ETA moves from the plan's
prediction towards the observed rate as trials end; without a plan it is the observed rate, once a trial has ended."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ray.tune import Callback
from tqdm.auto import tqdm

from tuner.space import METRIC, TIME_ATTR, status_from_result

REFRESH_S = 1.0  # Ray's controller loop steps many times a second; the line needs far fewer


def clock(seconds: float) -> str:
    """7 -> '0:07', 3725 -> '1:02:05'."""
    seconds = int(round(max(seconds, 0)))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def runs_bar(total: int, predicted_s: float | None, desc: str):
    """A tqdm bar for `total` runs of a later stage (confirm), noting the predicted time until a postfix replaces it."""
    fmt = "{desc} {n_fmt}/{total_fmt} runs |{bar:20}| {elapsed} elapsed{postfix}"
    bar = tqdm(total=total, desc=desc, bar_format=fmt, dynamic_ncols=True)
    if predicted_s is not None:
        bar.set_postfix_str(f"predicted {clock(predicted_s)}")  # tqdm puts ", " before it
    return bar


@dataclass
class Tally:
    """What the line says, from Ray's trials; pure, so it is tested without Ray."""

    total: int
    max_epochs: int
    expected_epochs: float  # all trials' epochs, as the plan expects ASHA to run them
    predicted_s: float | None = None  # the plan's search time, None = no plan (or a resume)
    hard_stop_s: float | None = None  # Tune's time_budget_s: the search never runs longer
    counts: dict = field(default_factory=dict)
    epochs_done: int = 0
    best: tuple[float, dict] | None = None

    def update(self, trials) -> None:
        counts, epochs = {"finished": 0, "stopped": 0, "diverged": 0, "errored": 0, "running": 0}, 0
        for t in trials:
            last = t.last_result or {}
            epochs += int(last.get(TIME_ATTR, 0) or 0)
            if t.status in ("ERROR", "TERMINATED"):
                counts[status_from_result(last, t.status == "ERROR", self.max_epochs)] += 1
            elif t.status == "RUNNING":
                counts["running"] += 1
            peak = (t.metric_analysis.get(METRIC) or {}).get("max")
            if peak is not None and not last.get("diverged") and (self.best is None or peak > self.best[0]):
                self.best = (float(peak), dict(t.config))
        self.counts, self.epochs_done = counts, epochs

    @property
    def ended(self) -> int:
        return sum(n for status, n in self.counts.items() if status != "running")

    def eta(self, elapsed: float) -> float | None:
        """Seconds left: the plan's total blended with the observed one, weighted by trials ended."""
        if self.ended >= self.total:
            return 0.0
        total, w = self.predicted_s, self.ended / self.total
        if self.ended and self.epochs_done:
            observed = elapsed * max(self.expected_epochs, self.epochs_done) / self.epochs_done
            total = observed if total is None else (1 - w) * total + w * observed
        if total is None:
            return None
        return max(min(total, self.hard_stop_s if self.hard_stop_s is not None else total) - elapsed, 0.0)

    def postfix(self, elapsed: float) -> str:
        c = self.counts
        parts = [f"[{c.get('finished', 0)} finished, {c.get('stopped', 0)} stopped, {c.get('running', 0)} running"
                 + "".join(f", {c[s]} {s}" for s in ("diverged", "errored") if c.get(s)) + "]"]
        if self.best is not None:
            acc, cfg = self.best
            parts.append(f"best {acc:.2f}% (lr {cfg.get('lr', 0):.3g}, m {cfg.get('momentum', 0):.3f}, "
                         f"bs {cfg.get('batch_size')})")
        eta = self.eta(elapsed)
        parts.append(f"| {clock(elapsed)} < ETA {'?' if eta is None else clock(eta)}")
        return " ".join(parts)


class SearchProgress(Callback):
    """Draws the Tally as one tqdm line; the bar is made in setup(), never pickled (Ray pickles it for a --resume)."""

    def __init__(self, tally: Tally, desc: str = "search"):
        self.tally, self.desc = tally, desc
        self._bar, self._start, self._drawn = None, 0.0, 0.0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_bar": None}

    def setup(self, **info) -> None:
        self._start = time.monotonic()
        # the whole line is the description: tqdm's own rate-based remaining time is not the plan's
        self._bar = tqdm(total=self.tally.total, desc=self.desc, dynamic_ncols=True, bar_format="{desc}")

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if time.monotonic() - self._drawn >= REFRESH_S:
            self._draw(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._draw(trials)

    def on_experiment_end(self, trials: list, **info) -> None:
        self._draw(trials)
        self.close()

    def close(self) -> None:
        """End the line (also after Ctrl-C: Tune then calls no on_experiment_end), so later output starts anew."""
        if self._bar is not None and not self._bar.disable:
            self._bar.close()  # tqdm: once; its desc (the line) stays readable

    def _draw(self, trials: list) -> None:
        if self._bar is None:
            return
        self.tally.update(trials)
        self._drawn = time.monotonic()
        self._bar.n = self.tally.ended
        self._bar.set_description_str(  # refreshes the line
            f"{self.desc} {self.tally.ended}/{self.tally.total} {self.tally.postfix(self._drawn - self._start)}")


def for_search(settings, resumed: bool) -> SearchProgress:
    """The search's line; a resume has no prediction for what is left, so it shows the observed rate."""
    from tuner.fidelity import expected_epochs

    plan = settings.budget_plan
    predicted = plan.predicted.search_s if plan is not None and plan.predicted is not None else None
    expected = expected_epochs(settings.max_epochs, settings.num_samples) * settings.num_samples
    return SearchProgress(Tally(total=settings.num_samples, max_epochs=settings.max_epochs,
                                expected_epochs=expected, predicted_s=None if resumed else predicted,
                                hard_stop_s=None if resumed else settings.search_time_budget_s))
