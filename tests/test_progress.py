"""The progress output (tuner/run/progress.py) driven without Ray: the search's line and the confirm stage's bar,
on a terminal (redrawn in place) and off one (nohup, CI, a pipe: plain lines a log can hold, issue 23)."""

import pickle
import re
from types import SimpleNamespace

import pytest

from tuner.run import progress
from tuner.space import METRIC, TIME_ATTR


@pytest.fixture
def clock(monkeypatch):
    """progress's time.monotonic, set by the test: now[0] seconds (a monotonic clock's zero is arbitrary)."""
    now = [1000.0]
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


def trial(lr: float):
    """The parts of a Ray Trial that Tally.update reads; running, one epoch reported."""
    return SimpleNamespace(status="RUNNING", last_result={TIME_ATTR: 1, METRIC: 90.0}, config={
        "lr": lr, "momentum": 0.9, "batch_size": 64}, metric_analysis={METRIC: {"max": 90.0}})


def end(t, acc: float) -> None:
    t.status, t.last_result, t.metric_analysis = "TERMINATED", {TIME_ATTR: 2, METRIC: acc}, {METRIC: {"max": acc}}


def search_line(total: int) -> progress.SearchProgress:
    return progress.SearchProgress(progress.Tally(total=total, max_epochs=2, expected_epochs=2.0 * total))


def test_search_off_a_terminal_prints_a_line_per_trial_end_and_a_heartbeat_a_minute(clock, capsys):
    assert not progress.live()  # capsys's stderr is no terminal
    trials = [trial(0.01), trial(0.02), trial(0.03)]
    line = search_line(3)
    line.setup()
    for _ in range(150):  # Ray steps many times a second; nothing ends for 150 s
        line.on_step_end(0, trials)
        clock[0] += 1
    starts = capsys.readouterr().err
    assert starts.count("\n") == 3  # the first step, then a heartbeat at 1:00 and 2:00
    for i, t in enumerate(trials):
        clock[0] += 10
        end(t, 95.0 + i)
        line.on_trial_complete(0, trials, t)
        line.on_step_end(0, trials)  # within the minute: no heartbeat
    line.on_experiment_end(trials)  # the last trial's line said it all
    line.close()  # as the runner does after Ctrl-C too
    err = capsys.readouterr().err
    assert "\r" not in starts + err and err.endswith("\n")
    lines = err.splitlines()
    assert [s.split(" [")[0] for s in lines] == ["search 1/3", "search 2/3", "search 3/3"]
    assert lines[-1] == "search 3/3 [3 finished, 0 stopped, 0 running] best 97.00% (lr 0.03, m 0.900, bs 64) " \
                        "| 3:00 < ETA 0:00"
    assert pickle.loads(pickle.dumps(line)).tally.counts["finished"] == 3  # Ray pickles it for a --resume


def test_search_off_a_terminal_says_the_last_state_on_close(clock, capsys):
    trials = [trial(0.01)]
    line = search_line(1)
    line.setup()
    line.on_step_end(0, trials)
    clock[0], trials[0].metric_analysis = clock[0] + 30, {METRIC: {"max": 93.0}}
    line.on_step_end(0, trials)  # a better val_acc within the minute: drawn, not printed
    line.close()  # Ctrl-C: Tune calls no on_experiment_end
    assert [s.split("best ")[1][:6] for s in capsys.readouterr().err.splitlines()] == ["90.00%", "93.00%"]


def test_search_on_a_terminal_redraws_one_line(clock, capsys, monkeypatch):
    monkeypatch.setattr(progress, "live", lambda: True)
    trials = [trial(0.01), trial(0.02)]
    line = search_line(2)
    line.setup()
    for _ in range(5):
        line.on_step_end(0, trials)
        clock[0] += 1
    end(trials[0], 96.0)
    line.on_trial_complete(0, trials, trials[0])
    line.on_experiment_end(trials)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n")  # tqdm's close: the line stays
    assert err.count("\r") >= 6  # a redraw a second, and one per trial end
    assert err.split("\r")[-1].startswith("search 1/2 [1 finished, 0 stopped, 1 running] best 96.00%")
    assert pickle.loads(pickle.dumps(line))._bar is None  # the bar is not pickled


def test_runs_bar_off_a_terminal_prints_a_line_per_run(clock, capsys):
    bar = progress.runs_bar(3, 90.0, "confirm")
    bar.update(1)  # as tuner.confirm.runs: the runs read back from the store first
    bar.refresh()
    for seed in (2, 3):
        clock[0] += 65
        bar.update(1)
        bar.set_postfix_str(f"last: best seed {seed}, val 98.00%")
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.splitlines() == ["confirm 0/3 runs | 00:00 elapsed, predicted 1:30",
                                "confirm 1/3 runs | 00:00 elapsed, predicted 1:30",
                                "confirm 2/3 runs | 01:05 elapsed, last: best seed 2, val 98.00%",
                                "confirm 3/3 runs | 02:10 elapsed, last: best seed 3, val 98.00%"]


def test_runs_bar_on_a_terminal_counts_runs(capsys, monkeypatch):
    monkeypatch.setattr(progress, "live", lambda: True)
    bar = progress.runs_bar(3, 90.0, "confirm")
    bar.update(1)
    bar.set_postfix_str("best 98.1%")
    bar.update(2)
    bar.close()
    err = capsys.readouterr().err
    assert "\r" in err and re.search(r"confirm 3/3 runs \|.{20}\| 00:00 elapsed, best 98.1%\n$", err), err


def test_eta_starts_from_the_plan_and_moves_to_the_observed_rate():
    tally = progress.Tally(total=4, max_epochs=2, expected_epochs=8, predicted_s=100.0)
    assert tally.eta(10) == 90
    tally.counts, tally.epochs_done = {"finished": 2, "stopped": 0, "running": 2}, 4
    # observed total = 60 s x 8/4 epochs = 120 s; half the trials ended: (100 + 120) / 2 = 110
    assert tally.eta(60) == pytest.approx(50)
    tally.hard_stop_s = 80
    assert tally.eta(60) == pytest.approx(20)
