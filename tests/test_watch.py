"""Watching a search: one smoke search (in-process, --mlflow to a file store) checked for its
progress line, its live Optuna study, TensorBoard events, MLflow runs and the checkpoints it
leaves; then --resume on a locked or corrupt study, and bad --mlflow URIs."""

import json
import re
import sqlite3
import struct
from pathlib import Path

import optuna
import pandas as pd
import pytest
import ray
from helpers_search import MAX_EPOCHS
from raysession import free_port

from tuner import search
from tuner.run import tracking
from tuner.space import METRIC, WHERE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def watched(searched):
    """The session's shared smoke search (tests/conftest.py), watched while it ran."""
    return searched


def test_progress_line_ends_with_every_trial_and_the_best(watched):
    assert watched.code == 0
    last = [s for s in re.split(r"[\r\n]", watched.err) if s.startswith("search ")][-1]
    t = watched.trials
    counts = t["status"].value_counts()
    ok = t[t["status"].isin(["finished", "stopped"])]
    top = ok.loc[ok["best_val_acc"].idxmax()]
    n, diverged = len(t), counts.get("diverged", 0)
    assert last.startswith(f"search {n}/{n} [{counts.get('finished', 0)} finished, {counts.get('stopped', 0)} "
                           f"stopped, 0 running" + (f", {diverged} diverged]" if diverged else "]"))
    assert f"best {top.best_val_acc:.2f}% (lr {top.lr:.3g}, m {top.momentum:.3f}, bs {top.batch_size})" in last
    assert re.search(r"\| \d+:\d\d < ETA 0:00$", last), last
    assert "Configuration for experiment" not in watched.err  # Ray's tables only with --verbose


def test_study_is_live_before_the_search_ends(watched):
    assert watched.seen and not watched.seen[0]["published"] and watched.seen[0]["running"]
    study = optuna.load_study(study_name=watched.name, storage=f"sqlite:///{watched.folder / 'study.db'}")
    assert study.metric_names == [METRIC]  # optuna-dashboard's name for the objective, kept when published
    epochs = pd.read_csv(watched.folder / "trial_epochs.csv")
    for ft, row in zip(study.trials, watched.trials.itertuples(), strict=True):
        where = {k: getattr(row, k) for k in WHERE}  # the node, device and precision it trained on
        assert ft.user_attrs == {"ray_trial_id": row.trial_id, "status": row.status, "epochs_run": row.epochs_run,
                                 **where}
        assert where["precision"] in ("bf16", "fp32") and where["device"].startswith("cpu (")
        mine = epochs[epochs["trial_id"] == row.trial_id]
        assert ft.intermediate_values == dict(zip(mine["epoch"], mine["val_acc"], strict=True))


def events(path: Path):
    """TensorBoard's record format (length, crc, event, crc), parsed with tensorboardX's protos."""
    from tensorboardX.proto import event_pb2

    data, i = path.read_bytes(), 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        event = event_pb2.Event()
        event.ParseFromString(data[i + 12:i + 12 + n])
        i += 12 + n + 4
        yield event


def test_tensorboard_events_hold_per_epoch_metrics_and_hyperparameters(watched):
    from tensorboardX.proto import plugin_hparams_pb2

    epochs = pd.read_csv(watched.folder / "trial_epochs.csv")
    for row in watched.trials.itertuples():
        (trial_dir,) = [p for p in watched.ray.iterdir() if f"_{row.trial_id}_" in p.name]
        scalars, hparams = {}, {}
        for event in events(next(trial_dir.glob("events.out.tfevents.*"))):
            for v in event.summary.value:
                if v.tag == "_hparams_/session_start_info":
                    info = plugin_hparams_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
                    given = info.session_start_info.hparams
                    hparams = {k: (x.number_value or x.string_value) for k, x in given.items()}
                elif v.tag.startswith("ray/tune/"):
                    scalars.setdefault(v.tag.removeprefix("ray/tune/"), {})[event.step] = v.simple_value
        mine = epochs[epochs["trial_id"] == row.trial_id]
        assert scalars["val_acc"] == pytest.approx(dict(zip(mine["epoch"], mine["val_acc"], strict=True)))
        assert {"train_loss", "val_loss", "lr"} <= set(scalars)
        assert hparams == pytest.approx({"lr": row.lr, "momentum": row.momentum, "batch_size": row.batch_size})


def test_mlflow_has_a_parent_run_and_one_nested_run_per_trial(watched):
    uri, parent = tracking.parent_of(watched.folder)
    client = tracking._client(uri)
    run = client.get_run(parent)
    assert run.info.run_name == watched.name and run.info.status == "FINISHED"
    assert run.data.params["max_epochs"] == str(MAX_EPOCHS) and run.data.params["fidelity_mode"] == "smoke"
    best = json.loads((watched.folder / "best_config.json").read_text())
    assert run.data.metrics["best_val_acc"] == pytest.approx(best["proxy_best"]["val_acc"])  # the search's own best
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    (confirm,) = [r for r in children if r.data.tags.get("stage") == "confirm"]  # the confirm stage's report
    assert confirm.info.run_name == f"{watched.name}-confirm"
    by_trial = {r.info.run_name.rsplit("_", 1)[-1]: r for r in children if r is not confirm}
    assert set(by_trial) == set(watched.trials["trial_id"])
    for row in watched.trials.itertuples():
        child = by_trial[row.trial_id]
        assert child.data.tags["status"] == row.status and float(child.data.params["lr"]) == pytest.approx(row.lr)
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_acc")]
        assert sorted(steps) == list(range(1, row.epochs_run + 1))
    final = tracking.log_final(uri, parent, {"verdict": "no significant difference", "diff_pp": 0.12})
    got = client.get_run(final)
    assert got.data.tags["mlflow.parentRunId"] == parent and got.data.tags["verdict"] == "no significant difference"
    assert got.data.metrics["diff_pp"] == pytest.approx(0.12)


def test_finished_search_keeps_only_the_best_trials_last_checkpoint(watched):
    best = json.loads((watched.folder / "best_config.json").read_text())["proxy_best"]  # the search's best
    left = sorted(p.parent.name for p in watched.ray.glob("*/checkpoint_*"))
    assert len(left) == 1 and f"_{best['trial_id']}_" in left[0]
    assert re.search(r"storage .*: [\d.]+ MB \(removed \d+ checkpoints", watched.err)


@pytest.mark.parametrize("damage", ["locked", "corrupt"])
def test_resume_with_a_locked_or_corrupt_study_says_so_and_changes_nothing(watched, damage, capfd, monkeypatch):
    """Refused in one line with exit 2 before Ray starts (stage 1 checks the study), the file as it was."""
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started"))
    db = watched.folder / "study.db"
    before = db.read_bytes()
    lock = sqlite3.connect(db, isolation_level=None)
    try:
        if damage == "locked":
            lock.execute("BEGIN EXCLUSIVE")
        else:
            db.write_bytes(b"not a database" * 100)
        capfd.readouterr()
        with pytest.raises(SystemExit) as info:
            search.main(["--resume", "--name", watched.name, "--out", str(watched.out), "--no-confirm"])
        code, err = info.value.code, capfd.readouterr().err
    finally:
        lock.close()
        damaged = db.read_bytes()
        db.write_bytes(before)
    assert code == 2
    lines = [line for line in err.splitlines() if str(db) in line]
    assert len(lines) == 1 and damage in lines[0] and "Traceback" not in err and err.count("\n") == 1
    assert damaged == (before if damage == "locked" else b"not a database" * 100)


@pytest.mark.parametrize("uri", ["http://127.0.0.1:{port}", "file:///proc/no-mlruns"])
def test_unusable_mlflow_uri_is_one_line_and_exit_2_before_ray(uri, tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started"))
    with pytest.raises(SystemExit) as info:
        search.main(["--smoke-test", "--out", str(tmp_path), "--mlflow", uri.format(port=free_port())])
    err = capfd.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "--mlflow" in err
    assert not any(tmp_path.iterdir())

