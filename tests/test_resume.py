"""An interrupted search resumes: finished trials are kept as they were, an interrupted one continues
from its checkpoint. The first run is a real `python -m tuner.search` killed with SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers_search import MAX_EPOCHS, run_search
from raysession import clean_env, kill_session, session_pids

from mnist_net.config import TrainConfig
from mnist_net.engine import fit
from tuner.run.trainable import to_train_config
from tuner.settings import SMOKE
from tuner.space import PARAMS

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds Ray's processes in /proc")]

ROOT = Path(__file__).resolve().parents[1]
# The session search's preset (tests/helpers_search.py), checkpointing every epoch: the 2nd checkpoint, at epoch 2,
# forces Ray to snapshot the experiment state. (The default, "auto", skipped epoch 2 once, beside another test
# worker: a slower save pushed the next past the epoch's end, and the kill window never came.) Epochs of 2,048
# images (the preset's 512 take ~0.3 s) leave time to kill a trial mid-run (1,024 did not on a VM training
# ~1,400 images/s per trial: trial 2 ran its 3 epochs between two looks); TPE's proposals do not depend on it.
# 4 trials: the 4th is TPE's first proposal, after the 3 fixed points.
TRAIN_SIZE = 2048
TRIALS = 4
# An experiment the flat layout (tuner/*.py, commit 4997d4a, before the stage folders) saved, made there by
# `python -m tuner.search --smoke-test --no-confirm --num-samples 4 --max-epochs 2 --train-size 1024
# --eval-size 200 --max-concurrent 1 --name old --out /tmp/s5-flat-layout-4997d4a/results` stopped with Ctrl-C
# after 3 trials had ended, the 4th started; the ended trials' checkpoints were then removed (a resume never
# loads them): 25 kB. Optuna pickles its SQLite study by absolute URL, so an experiment resumes where it was
# saved: the test puts that folder back, as a link to where it unpacks the experiment.
FLAT_LAYOUT = ROOT / "tests" / "data" / "experiment-flat-layout-4997d4a.tar.gz"
SAVED_AT = Path("/tmp/s5-flat-layout-4997d4a")


def snapshot(experiment: Path) -> dict[str, dict] | None:
    """What a resume will see: Ray's experiment state, {trial_id: {status, iteration, checkpoint}}."""
    # one file per driver session (a resume writes a new one); the names sort by start time
    files = sorted(experiment.glob("experiment_state-*.json"))
    if not files:
        return None
    try:
        data = json.loads(files[-1].read_text())
    except (OSError, ValueError):  # being rewritten right now
        return None
    state = {}
    for trial_json, meta_json in data["trial_data"]:
        trial, last = json.loads(trial_json), json.loads(meta_json)["last_result"]
        state[trial["trial_id"]] = {"status": trial["status"], "iteration": last.get("training_iteration"),
                                    "checkpoint": last.get("checkpoint_dir_name")}
    return state


def ready_to_kill(experiment: Path, state) -> tuple[str, str] | None:
    """(a trial that finished every epoch, a running trial with a checkpoint), or None yet.

    The running trial's result log must hold no more epochs than the snapshot: one logged after
    the snapshot would be trained and logged again on resume (Ray restarts from the snapshot).
    """
    if not state:
        return None
    done = [t for t, s in state.items() if s["status"] == "TERMINATED" and s["iteration"] == MAX_EPOCHS]
    running = [t for t, s in state.items() if s["status"] == "RUNNING" and s["checkpoint"]
               and s["iteration"] < MAX_EPOCHS and len(results(experiment, t)) == s["iteration"]]
    return (done[0], running[0]) if done and running else None


def results(experiment: Path, trial_id: str) -> list[dict]:
    folder = next(experiment.glob(f"train_s5_{trial_id}_*"))
    records = []
    for line in (folder / "result.json").read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:  # the line being written right now
            pass
    return records


def uninterrupted_val_acc(config: dict, splits) -> list[float]:
    """The val_acc per epoch of the same trial run without a break, here, one thread like the trial."""
    base = TrainConfig(epochs=MAX_EPOCHS, train_split="train", train_size=TRAIN_SIZE,
                       eval_size=SMOKE["eval_size"], seed=0)  # what the search gives its trials
    cfg = to_train_config(config, base)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        history = fit(cfg, splits["train"].subset(cfg.train_size, cfg.seed),
                      splits["val"].subset(cfg.eval_size, cfg.seed), device=torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    return [e.val_acc for e in history.epochs]


def test_killed_search_resumes_with_finished_trials_kept(tmp_path, splits, searched, capfd, local_ray):
    """SIGKILL mid-trial, then --resume: the ended trial is kept, the interrupted one goes on from its
    checkpoint, and TPE proposes what the uninterrupted session search (tests/conftest.py, the same
    preset and seed) proposed, config for config: the seed's config and the smoke points
    are not replayed (a resume used to enqueue them again)."""
    out = tmp_path / "results"
    experiment = out / "ray" / "r"
    argv = ["--smoke-test", "--num-samples", str(TRIALS), "--max-concurrent", "1", "--max-epochs",
            str(MAX_EPOCHS), "--train-size", str(TRAIN_SIZE), "--checkpoint-every", "1", "--no-retrain", "--name", "r",
            "--out", str(out)]
    log = tmp_path / "first_run.log"
    with open(log, "w") as fh:
        # its own session: the search, the local Ray it starts and Ray's workers are all in it
        proc = subprocess.Popen([sys.executable, "-m", "tuner.search", *argv], cwd=ROOT, env=clean_env(),
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while ready_to_kill(experiment, snapshot(experiment)) is None:
            # One trial at a time, so trial 1 finishes before trial 2 starts. Trial 2 is RUNNING
            # with a checkpoint from its 2nd epoch's forced snapshot until the one at its 3rd.
            # (If ASHA stops trial 2 at epoch 1 or 2, trial 3 gets the same chance.)
            assert proc.poll() is None, f"the search ended before it could be interrupted:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no trial finished in time:\n{log.read_text()}"
            time.sleep(0.05)
        assert session_pids(proc.pid), "the search should be running"
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes in its group...
        # ...but Ray's workers sit in process groups of their own: left alone, the trial
        # actor keeps training as an orphan for a while and writes checkpoints nobody records.
        kill_session(proc.pid)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        kill_session(proc.pid)
    assert session_pids(proc.pid) == []

    at_kill = snapshot(experiment)  # re-read: the state the resume will see
    pair = ready_to_kill(experiment, at_kill)
    assert pair, f"the trial moved on between the last look and the kill: {at_kill}"
    done, interrupted = pair
    k = at_kill[interrupted]["iteration"]
    done_before = (next(experiment.glob(f"train_s5_{done}_*")) / "result.json").read_bytes()
    interrupted_before = results(experiment, interrupted)
    assert [r["training_iteration"] for r in interrupted_before] == list(range(1, k + 1))
    assert not (out / "r" / "trials.csv").exists()  # it never got that far

    capfd.readouterr()
    assert run_search(["--resume", "--name", "r", "--out", str(out), "--no-retrain"]) == 0
    said = "".join(capfd.readouterr())
    # as quiet as a new search: no Ray table, no Optuna log line
    assert "Using an existing study" not in said and "Trial status" not in said, said

    final = snapshot(experiment)
    assert len(final) == TRIALS and {s["status"] for s in final.values()} == {"TERMINATED"}
    trials = pd.read_csv(out / "r" / "trials.csv")
    assert list(trials["trial"]) == list(range(1, TRIALS + 1))
    assert set(trials["status"]) <= {"finished", "stopped", "diverged"}
    # proposal for proposal (TPE's first 10 trials are seeded random draws: the same at any concurrency)
    pd.testing.assert_frame_equal(trials[list(PARAMS)], searched.trials[list(PARAMS)].iloc[:TRIALS])

    # the finished trial was kept, not rerun: its result log is byte for byte the same
    assert (next(experiment.glob(f"train_s5_{done}_*")) / "result.json").read_bytes() == done_before

    # the interrupted one went on from its checkpoint at epoch k: k+1.. MAX_EPOCHS, never epoch 1 again
    after = results(experiment, interrupted)
    iterations = [r["training_iteration"] for r in after]
    assert iterations == list(range(1, MAX_EPOCHS + 1)), iterations
    assert [r["val_acc"] for r in after[:k]] == [r["val_acc"] for r in interrupted_before]
    resumed = after[k:]
    assert [r["iterations_since_restore"] for r in resumed] == list(range(1, MAX_EPOCHS - k + 1))
    # Ray numbers the iterations whatever the trainable does; the weights tell whether it really
    # went on from epoch k: the resumed run scores exactly what an unbroken one does, epoch by epoch
    # (fit seeds each epoch's batches by (seed, epoch); the checkpoint holds weights, momentum, lr).
    assert [r["val_acc"] for r in after] == uninterrupted_val_acc(after[0]["config"], splits)
    row = trials[trials["trial_id"] == interrupted].iloc[0]
    assert (row["status"], row["epochs_run"]) == ("finished", MAX_EPOCHS)
    epochs = pd.read_csv(out / "r" / "trial_epochs.csv")
    assert list(epochs[epochs["trial_id"] == interrupted]["epoch"]) == list(range(1, MAX_EPOCHS + 1))


def test_an_experiment_saved_by_the_flat_layout_resumes(tmp_path, local_ray):
    """Ray pickled that experiment's searcher and progress callback as tuner.searcher and tuner.progress:
    their old paths still import (tuner/__init__.py), so the stage folders' code resumes it to the end."""
    if SAVED_AT.exists() or SAVED_AT.is_symlink():
        pytest.skip(f"{SAVED_AT} is in use (another run of this test?)")
    out = tmp_path / "results"
    with tarfile.open(FLAT_LAYOUT) as tar:
        tar.extractall(out, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    SAVED_AT.symlink_to(tmp_path)
    try:
        resumed_flat_layout(out)
    finally:
        SAVED_AT.unlink()


def resumed_flat_layout(out: Path) -> None:
    pickled = (out / "ray" / "old" / "tuner.pkl").read_bytes()
    assert b"tuner.searcher" in pickled and b"tuner.progress" in pickled
    before = snapshot(out / "ray" / "old")
    ended = {t: s["iteration"] for t, s in before.items() if s["status"] == "TERMINATED"}
    assert len(before) == 4 and len(ended) == 3
    assert run_search(["--resume", "--name", "old", "--out", str(SAVED_AT / "results"), "--no-confirm"]) == 0
    trials = pd.read_csv(out / "old" / "trials.csv")
    assert sorted(trials["trial_id"]) == sorted(before) and (trials["status"] != "errored").all()
    assert {r.trial_id: r.epochs_run for r in trials.itertuples() if r.trial_id in ended} == ended
    assert (trials["epochs_run"] >= 1).all()  # the interrupted 4th trial trained after the resume
