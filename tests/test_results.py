"""What the trial tables, the time budget's marking and the interrupt check read from Ray's results
(one helper each for the trial id and "cut short"), and the Optuna plots the search publishes."""

from types import SimpleNamespace

import optuna
import pandas as pd

from tuner import space
from tuner.publish import results, writer
from tuner.run import runner
from tuner.space import EPOCH_METRICS, METRIC, TIME_ATTR, optuna_distributions

CONFIG = {"lr": 0.01, "momentum": 0.9, "batch_size": 32}


class Grid(list):
    """The parts of Ray's ResultGrid the code reads."""

    @property
    def num_terminated(self):
        return sum(r.error is None for r in self)

    @property
    def num_errors(self):
        return sum(r.error is not None for r in self)


def result(n: int, epochs: int, done: bool | None, error=None):
    """Trial `n` of a grid, its history `epochs` long; done=None: it never reported."""
    history = pd.DataFrame([{TIME_ATTR: e, **{k: 10.0 * e for k in EPOCH_METRICS}, "diverged": False,
                             "peak_rss_mb": 300.0, "time_total_s": 2.0 * e} for e in range(1, epochs + 1)])
    metrics = None if done is None else {"trial_id": f"t{n}", "done": done}
    return SimpleNamespace(metrics=metrics, metrics_dataframe=history if epochs else None, error=error,
                           path=f"/ray/s5/train_s5_t{n}_{n}_batch_size=32", config=None if done is None else CONFIG)


def test_tables_budget_marking_and_interrupt_check_read_one_trial_id_and_end():
    finished, by_asha, cut, errored = (result(1, 3, True), result(2, 1, True), result(3, 2, False),
                                       result(4, 0, None, error=RuntimeError("no GPU")))
    grid = Grid([finished, by_asha, cut, errored])
    assert [space.ray_trial_id(r) for r in grid] == ["t1", "t2", "t3", "train_s5_t4_4_batch_size=32"]
    assert [space.cut_short(r) for r in grid] == [False, False, True, False]

    trials, epochs = results.tables(grid, max_epochs=3)
    assert list(trials["status"]) == ["finished", "stopped", "stopped", "errored"]
    assert list(epochs.columns) == ["trial_id", "epoch", *EPOCH_METRICS, "peak_rss_mb"]
    assert list(epochs["trial_id"]) == ["t1"] * 3 + ["t2"] + ["t3"] * 2
    marked = writer.mark_budget_stopped(trials, grid)
    assert list(marked["status"]) == ["finished", "stopped", writer.BUDGET_STOPPED, "errored"]
    assert list(marked["stopped_early"]) == [False, True, False, False]

    assert runner.unfinished(grid, num_samples=4)  # the cut trial
    assert not runner.unfinished(Grid([finished, by_asha, errored]), num_samples=3)
    assert runner.unfinished(Grid([finished, by_asha, errored]), num_samples=4)  # one never started


def test_published_study_names_its_metric_and_skips_a_trial_without_config(tmp_path):
    trials, epochs = results.tables(Grid([result(1, 3, True), result(2, 0, None, error=RuntimeError("x"))]), 3)
    results.build_study(trials, epochs, tmp_path / "study.db", "s")
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert study.metric_names == [METRIC]  # optuna-dashboard's name for the objective, not "Objective 0"
    assert [t.value for t in study.trials] == [30.0]


def study_of(n_trials: int) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for i in range(n_trials):
        study.add_trial(optuna.trial.create_trial(
            params={"lr": 0.01 * (i + 1), "momentum": 0.9 - 0.1 * i, "batch_size": [32, 512, 1024][i % 3]},
            distributions=optuna_distributions(), value=90.0 + i))
    return study


def test_write_plots_saves_what_optuna_can_draw(tmp_path, capsys, monkeypatch):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    assert results.write_plots(study_of(4), tmp_path) == [f"{name}.png" for name in results.PLOTS]
    assert all((tmp_path / f"{name}.png").stat().st_size > 1000 for name in results.PLOTS)

    def cannot(study):  # as older Optunas said of importances with a single complete trial
        raise ValueError("Cannot evaluate parameter importances with only a single trial.")

    monkeypatch.setattr(optuna.visualization.matplotlib, "plot_param_importances", cannot)
    assert list(results.plot_study(study_of(1))) == ["optimization_history", "parallel_coordinate"]
    assert "skipped param_importances plot: Cannot evaluate" in capsys.readouterr().out
