"""A live progress line for a search (a Ray Tune callback; tqdm, refreshed ~1/s), and a bar for the stages after it:

    search 12/32 [6 finished, 6 stopped, 2 running] best 98.71% (lr 0.0412, m 0.874, bs 64) | 4:02 < ETA 9:30

Stopped = ended early by ASHA; diverged and errored trials count as ended too. The ETA moves from the plan's
prediction towards the observed rate as trials end; without a plan it is the observed rate, once a trial has ended.

Off a terminal (nohup, CI, a pipe: see `live`) nothing is redrawn, since a log keeps every carriage return: the same
text is a plain line when a trial ends and once a minute between, and the confirm stage prints a line per run."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from ray.tune import Callback
from tqdm.auto import tqdm

from tuner.space import METRIC, TIME_ATTR, expected_epochs, status_from_result

REFRESH_S = 1.0  # Ray's controller loop steps many times a second; the line needs far fewer
HEARTBEAT_S = 60.0  # off a terminal every line stays in the log: between trial ends, one a minute shows it is alive


def live() -> bool:
    """Whether progress may redraw one line in place: tqdm's stream (stderr) is a terminal, or tqdm.auto drew a
    notebook widget. Decided here only, so tests can force it."""
    notebook = any(c.__module__ == "tqdm.notebook" for c in tqdm.__mro__)  # tqdm.auto's pick, made at its import
    return notebook or bool(sys.stderr is not None and sys.stderr.isatty())


def clock(seconds: float) -> str:
    """7 -> '0:07', 3725 -> '1:02:05'."""
    seconds = int(round(max(seconds, 0)))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def runs_bar(total: int, predicted_s: float | None, desc: str):
    """A tqdm bar for `total` runs of a later stage (confirm), noting the predicted time until a postfix replaces it;
    off a terminal, RunLines."""
    fmt = "{desc} {n_fmt}/{total_fmt} runs |{bar:20}| {elapsed} elapsed{postfix}"
    bar = tqdm(total=total, desc=desc, bar_format=fmt, dynamic_ncols=True) if live() else RunLines(total, desc)
    if predicted_s is not None:
        bar.set_postfix_str(f"predicted {clock(predicted_s)}")  # tqdm puts ", " before it
    return bar


class RunLines:
    """runs_bar off a terminal: the bar's text as a plain line whenever it is news, never redrawn. The tqdm calls
    tuner.confirm.runs makes: a run's line comes with its postfix (set after update), or at refresh()/close()."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.n, self.postfix = total, desc, 0, ""
        self._start, self._said = time.monotonic(), None

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, s: str) -> None:
        self.postfix = s
        self.refresh()

    def refresh(self) -> None:
        if (self.n, self.postfix) == self._said:
            return
        self._said = (self.n, self.postfix)
        elapsed = tqdm.format_interval(time.monotonic() - self._start)
        print(f"{self.desc} {self.n}/{self.total} runs | {elapsed} elapsed" + (self.postfix and f", {self.postfix}"),
              file=sys.stderr, flush=True)

    def close(self) -> None:
        self.refresh()


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
    """Draws the Tally as one tqdm line, or off a terminal as plain lines (`_say`); set up in setup(), never
    pickled (Ray pickles it for a --resume)."""

    def __init__(self, tally: Tally, desc: str = "search"):
        self.tally, self.desc = tally, desc
        self._bar, self._live, self._start, self._drawn = None, None, 0.0, 0.0  # _live None: not set up
        self._line, self._said, self._said_at = "", None, 0.0  # off a terminal: the last line composed, and printed

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_bar": None, "_live": None}

    def setup(self, **info) -> None:
        self._start, self._live, self._said = time.monotonic(), live(), None
        if self._live:  # the whole line is the description: tqdm's own rate-based remaining time is not the plan's
            self._bar = tqdm(total=self.tally.total, desc=self.desc, dynamic_ncols=True, bar_format="{desc}")

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if time.monotonic() - self._drawn >= REFRESH_S:
            self._draw(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        # Tune calls this while the trial still reads RUNNING: off a terminal its line comes on the next step
        self._draw(trials)

    def on_experiment_end(self, trials: list, **info) -> None:
        self._draw(trials)
        self.close()

    def close(self) -> None:
        """End the line (also after Ctrl-C: Tune then calls no on_experiment_end), so later output starts anew;
        off a terminal, print the last state if no line said it yet."""
        if self._bar is not None and not self._bar.disable:
            self._bar.close()  # tqdm: once; its desc (the line) stays readable
        elif self._live is False and self._said != self._state():
            self._say()

    def _draw(self, trials: list) -> None:
        if self._live is None:
            return
        self.tally.update(trials)
        self._drawn = now = time.monotonic()
        self._line = f"{self.desc} {self.tally.ended}/{self.tally.total} {self.tally.postfix(now - self._start)}"
        if self._bar is not None:
            self._bar.n = self.tally.ended
            self._bar.set_description_str(self._line)  # refreshes the line
        elif self._said is None or self.tally.ended != self._said[0] or now - self._said_at >= HEARTBEAT_S:
            self._say()

    def _state(self) -> tuple:
        return self.tally.ended, sorted(self.tally.counts.items()), self.tally.best

    def _say(self) -> None:
        self._said, self._said_at = self._state(), time.monotonic()
        print(self._line, file=sys.stderr, flush=True)


def for_search(settings, resumed: bool) -> SearchProgress:
    """The search's line; a resume has no prediction for what is left, so it shows the observed rate."""
    plan = settings.budget_plan
    predicted = plan.predicted.search_s if plan is not None and plan.predicted is not None else None
    expected = expected_epochs(settings.max_epochs, settings.num_samples) * settings.num_samples
    return SearchProgress(Tally(total=settings.num_samples, max_epochs=settings.max_epochs,
                                expected_epochs=expected, predicted_s=None if resumed else predicted,
                                hard_stop_s=None if resumed else settings.search_time_budget_s))
