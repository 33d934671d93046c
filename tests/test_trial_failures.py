"""Faults injected into the trials of one real tiny search (CPU, 1,024 train / 200 val images):
a retried trial, an errored one, a diverging lr, the disk filling while the results are
published; and no best config when no trial finished. README "Reliability and security" cites
these tests.
"""

import errno
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
import raysession
from ray import cloudpickle, tune

from mnist_net import files
from mnist_net.config import TrainConfig
from mnist_net.data import DEFAULT_DATA_DIR
from tuner import search
from tuner.plan import placement
from tuner.plan.search_plan import SearchPlan
from tuner.publish import writer
from tuner.run import cluster, runner
from tuner.run.storage import resolve_storage
from tuner.run.trainable import train_s5
from tuner.settings import SearchSettings
from tuner.space import CHANCE_ACC, PARAMS, SEED_CONFIG

HUGE_LR = 1e5  # two SGD steps at this lr leave non-finite weights behind
MAX_FAILURES = 2  # tuner.search.build_tuner's FailureConfig

# Ray's workers unpickle the fault-injecting trainable below: send it by value, as this
# test module is not importable there.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


# --- trial faults: one search, each trial given a fault ------------------------------------------

def faulty_train_s5(config: dict, marks: str, **kwargs) -> None:
    """train_s5 with an injected fault. The seed config's trial (trial 1) trains at HUGE_LR; of the
    others, the first to start always raises, the second raises on its first attempt only, the
    rest are left alone. Each attempt is logged in `marks`/attempts/<trial id>."""
    folder, trial_id = Path(marks), tune.get_context().get_trial_id()
    log = folder / "attempts" / trial_id
    if log.exists():
        role = log.read_text().split()[0]
    elif {p: config[p] for p in PARAMS} == SEED_CONFIG:
        role = "diverges"
    else:
        role = "plain"
        # fails_once first: the smoke preset's second trial, the one sure to learn, then still
        # finishes, so the best config is above chance on any CPU (bf16 or fp32)
        for claim in ("fails_once", "always_fails"):
            try:
                os.close(os.open(folder / "claims" / claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
            role = claim
            break
    with open(log, "a") as fh:
        fh.write(f"{role}\n")
    attempt = len(log.read_text().split())
    if role == "always_fails" or (role == "fails_once" and attempt == 1):
        raise RuntimeError(f"injected fault: {role}, attempt {attempt}")
    train_s5({**config, "lr": HUGE_LR} if role == "diverges" else config, **kwargs)


@pytest.fixture(scope="class")
def searched(tmp_path_factory):
    """One real search of 4 trials (2 epochs, 1024 train / 200 val images, 2 at a time) on the tests' local Ray
    (started as tuner.search starts one), published as tuner.search does."""
    tmp = tmp_path_factory.mktemp("faults")
    marks, out = tmp / "marks", tmp / "results"
    (marks / "attempts").mkdir(parents=True)
    (marks / "claims").mkdir()
    name, storage = "faults", resolve_storage(None, out)
    settings = SearchSettings(num_samples=4, max_epochs=2, train_size=1024, eval_size=200,
                              max_concurrent=2, fidelity_mode="smoke")
    with raysession.local_env():  # Ray's own default: token auth on
        try:
            raysession.shared_ray()  # the class asks for local_ray: the Ray the tests before it used
            cluster.connect(None, dashboard=False)  # a caller's Ray: used as it is and left running
            plan = placement.place(placement.alive_nodes(), max_concurrent=settings.max_concurrent)
            base = TrainConfig(epochs=settings.max_epochs, train_split="train", train_size=settings.train_size,
                               eval_size=settings.eval_size, seed=settings.seed)
            trainable = tune.with_resources(
                tune.with_parameters(faulty_train_s5, marks=str(marks), base=base,
                                     data_dir=str(DEFAULT_DATA_DIR)), plan.resources)
            start = time.time()
            grid = runner.build_tuner(trainable, settings, plan, storage, name).fit()
            summary = out / name
            summary.mkdir()
            settings.save(summary / "search_settings.json")  # as tuner.search.start_summary does
            best = writer.write_search_results(grid, SearchPlan(settings, plan), storage, summary, out, name,
                                               time.time() - start)
            yield SimpleNamespace(grid=grid, best=best, marks=marks, out=out, summary=summary, name=name,
                                  settings=settings, plan=plan, storage=storage,
                                  trials=pd.read_csv(summary / "trials.csv"),
                                  epochs=pd.read_csv(summary / "trial_epochs.csv"))
        finally:
            cluster.disconnect()


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
class TestTrialFaults:
    """Each trial of the `searched` search was given one fault (see faulty_train_s5)."""

    @staticmethod
    def role(searched, role: str) -> tuple[pd.Series, list[str]]:
        """(the trials.csv row of the trial given `role`, its attempts)."""
        logs = [p for p in (searched.marks / "attempts").iterdir() if p.read_text().split()[0] == role]
        assert len(logs) == 1, logs
        rows = searched.trials[searched.trials["trial_id"] == logs[0].name]
        return rows.iloc[0], logs[0].read_text().split()

    def test_every_trial_is_in_the_tables(self, searched):
        trials = searched.trials
        assert list(trials["trial"]) == [1, 2, 3, 4]
        logs = {p.name: p.read_text().split()[0] for p in (searched.marks / "attempts").iterdir()}
        assert sorted(logs) == sorted(trials["trial_id"])
        assert sorted(logs.values()) == ["always_fails", "diverges", "fails_once", "plain"]
        assert not runner.unfinished(searched.grid, searched.settings.num_samples)

    def test_a_trial_that_fails_once_is_retried_and_finishes(self, searched):
        row, attempts = self.role(searched, "fails_once")
        assert attempts == ["fails_once", "fails_once"]
        assert row["status"] in ("finished", "stopped") and pd.isna(row["error"])
        assert row["epochs_run"] >= 1 and row["best_val_acc"] > 0
        # only the trial that always fails ends in error; every other one terminated normally
        assert searched.grid.num_errors == 1
        assert searched.grid.num_terminated == 3

    def test_a_trial_that_always_fails_is_errored_and_the_rest_complete(self, searched):
        row, attempts = self.role(searched, "always_fails")
        assert attempts == ["always_fails"] * (1 + MAX_FAILURES)
        assert row["status"] == "errored" and row["epochs_run"] == 0 and pd.isna(row["best_val_acc"])
        assert row["error"] == "RuntimeError: injected fault: always_fails, attempt 3"  # the cause, not Ray's wrapper
        others = searched.trials[searched.trials["trial_id"] != row["trial_id"]]
        assert set(others["status"]) <= {"finished", "stopped", "diverged"} and others["error"].isna().all()
        best = searched.best
        ok = searched.trials[searched.trials["status"].isin(["finished", "stopped"])]
        assert best["trial_id"] == ok.loc[ok["best_val_acc"].idxmax(), "trial_id"] != row["trial_id"]
        assert best["search"]["status_counts"]["errored"] == 1
        # an errored trial's empty best_epoch must not turn the others' epochs into floats
        epochs_text = (searched.summary / "trials.csv").read_text().splitlines()
        col = epochs_text[0].split(",").index("best_epoch")
        assert all("." not in line.split(",")[col] for line in epochs_text[1:])
        study = optuna.load_study(study_name=searched.name, storage=f"sqlite:///{searched.summary / 'study.db'}")
        mine = [t for t in study.trials if t.user_attrs["ray_trial_id"] == row["trial_id"]]
        assert [(t.state, t.value) for t in mine] == [(optuna.trial.TrialState.FAIL, None)]

    def test_a_diverging_lr_ends_its_trial_at_chance_after_one_epoch(self, searched):
        row, attempts = self.role(searched, "diverges")
        assert attempts == ["diverges"] and row["trial"] == 1  # the seed's config, given HUGE_LR
        assert searched.settings.max_epochs == 2
        assert (row["status"], row["epochs_run"], row["best_val_acc"], row["last_val_acc"]) == \
            ("diverged", 1, CHANCE_ACC, CHANCE_ACC)
        epoch = searched.epochs[searched.epochs["trial_id"] == row["trial_id"]]
        assert list(epoch["epoch"]) == [1] and pd.isna(epoch["val_loss"].iloc[0])
        study = optuna.load_study(study_name=searched.name, storage=f"sqlite:///{searched.summary / 'study.db'}")
        mine = [t for t in study.trials if t.user_attrs["ray_trial_id"] == row["trial_id"]]
        assert [(t.state, t.value, t.user_attrs["status"]) for t in mine] == \
            [(optuna.trial.TrialState.COMPLETE, CHANCE_ACC, "diverged")]
        assert searched.best["trial_id"] != row["trial_id"] and searched.best["val_acc"] > CHANCE_ACC
        assert study.best_trial.user_attrs["ray_trial_id"] == searched.best["trial_id"]

    @pytest.mark.parametrize("fails_on", ["faults/trials.csv", "faults/study.db", "best_config.json"])
    def test_disk_full_while_publishing_keeps_every_earlier_file(self, searched, fails_on, monkeypatch, capsys):
        """The search finished; writing its results fails with ENOSPC at `fails_on` (relative to
        --out). tuner.search.run_stages says so in one line and exits 1; every file is either its
        complete new version or byte for byte the previous search's, and no temp file is left."""
        out = searched.out
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "ray" not in p.relative_to(out).parts}
        disk = FillingDisk(out / fails_on)
        monkeypatch.setattr(files, "atomic_path", disk)
        monkeypatch.setattr(runner, "build_tuner", lambda *args: FinishedTuner(searched.grid, disk))
        monkeypatch.setattr(search.cluster, "disconnect", lambda: None)  # the class's Ray stays up
        exp = search.Experiment(searched.settings, {}, searched.name, out, searched.storage, str(DEFAULT_DATA_DIR),
                                 confirm=False)
        capsys.readouterr()
        code = search.run_stages(exp, SearchPlan(searched.settings, searched.plan), time.monotonic())
        err = capsys.readouterr().err
        assert code == 1 and disk.failed
        errors = [line for line in err.splitlines() if "error" in line.lower()]
        assert errors == [f"error: cannot write the search's results to {searched.summary}: No space left on "
                          f"device. Ray's experiment in {searched.storage}/{searched.name} is complete; free "
                          f"space and rerun: python -m tuner.search --resume --name {searched.name} "
                          f"--out {out}"], err
        assert "Traceback" not in err
        assert list(out.rglob(".*.tmp")) == []
        after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "ray" not in p.relative_to(out).parts}
        assert sorted(after) == sorted(before)
        untouched = [p for p in before if p not in disk.written]
        assert out / fails_on in untouched and out / "best_config.json" in untouched
        for p in untouched:
            assert after[p] == before[p], p
        for p in disk.written:  # replaced whole: the same table, a readable JSON
            if p.suffix == ".csv":
                assert after[p] == before[p], p
            if p.suffix == ".json":
                assert json.loads(after[p]).keys() == json.loads(before[p]).keys()


class FillingDisk:
    """files.atomic_path whose rename fails with ENOSPC at `target` once armed: the temp file is
    written, then the disk is full. Records the files written before."""

    def __init__(self, target: Path):
        self.target, self.armed, self.failed, self.written = target, False, False, []
        self.real = files.atomic_path

    @contextmanager
    def __call__(self, path):
        with self.real(path) as tmp:
            yield tmp
            if self.armed and Path(path) == self.target:
                self.failed = True
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
        if self.armed:
            self.written.append(Path(path))


class FinishedTuner:
    """Stands in for the Tuner: its fit() returns an already finished grid, then the disk fills."""

    def __init__(self, grid, disk: FillingDisk):
        self.grid, self.disk = grid, disk

    def fit(self):
        self.disk.armed = True  # search_settings.json was written before the search started
        return self.grid


# --- no trial finished ---------------------------------------------------------------------------

def test_no_finished_trial_means_no_best_config():
    """When every trial errored or diverged there is nothing to choose: a named error, not an index crash."""
    from tuner.publish.results import NoFinishedTrial, best_trial

    trials = pd.DataFrame({"trial_id": ["a", "b"], "status": ["errored", "diverged"],
                           "best_val_acc": [float("nan"), CHANCE_ACC]})
    with pytest.raises(NoFinishedTrial, match="all errored or diverged"):
        best_trial(trials)
    trials.loc[1, "status"] = "stopped"
    assert best_trial(trials)["trial_id"] == "b"
