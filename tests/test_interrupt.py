"""Ctrl-C during a real search (a child `python -m tuner.search`, CPU, MNIST subsets): the search
saves its state, says how to resume, leaves nothing running, and --resume finishes it.
README "Reliability and security" cites these tests.

Killing the driver with SIGKILL and resuming is tests/test_resume.py.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers_search import run_search, wait_until
from ray import tune
from raysession import clean_env, kill_session, session_pids

ROOT = Path(__file__).resolve().parents[1]


# --- Ctrl-C --------------------------------------------------------------------------------------

RAY_STOP_LINE = "Stop signal received"  # Ray's SIGINT handler logs this, then restores the default one


def interrupt_search(tmp_path: Path, presses: int) -> tuple[Path, str]:
    """Start a 3-trial smoke search in a child process and press Ctrl-C `presses` times once a trial
    has a checkpoint; check it exits 130 with the resume line and leaves nothing running.
    Returns (--out, the child's output)."""
    out = (tmp_path / "results").resolve()
    argv = [sys.executable, "-m", "tuner.search", "--smoke-test", "--no-retrain", "--name", "i",
            "--out", str(out), "--max-epochs", "3", "--max-concurrent", "1", "--num-samples", "3"]
    log = tmp_path / "search.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(argv, cwd=ROOT, env=clean_env(), stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its session holds every Ray process it starts
    try:
        wait_until(lambda: any((out / "ray" / "i").glob("*/checkpoint_*")), 300,
                   "trial checkpoint", alive=lambda: proc.poll() is None)
        for press in range(presses):
            os.kill(proc.pid, signal.SIGINT)  # the driver only, as a terminal's Ctrl-C reaches it
            if press + 1 < presses:  # the next press lands while Ray saves and stops the trials
                wait_until(lambda: RAY_STOP_LINE in log.read_text(), 60, "Ray's stop message",
                           alive=lambda: proc.poll() is None)
        code = proc.wait(timeout=120)
        # ray.shutdown() ends the local Ray: nothing of the search outlives it for long
        deadline = time.monotonic() + 60
        while (left := session_pids(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert left == [], [Path(f"/proc/{pid}/cmdline").read_bytes()[:200] for pid in left]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        kill_session(proc.pid)
    text = log.read_text()
    assert code == 130, text
    hint = [line for line in text.splitlines() if line.startswith("search interrupted")]
    assert hint == [f"search interrupted; its state is saved. Resume with: python -m tuner.search "
                    f"--resume --name i --out {out}"], text
    assert "Traceback" not in text
    assert not (out / "i" / "trials.csv").exists() and not (out / "best_config.json").exists()
    assert tune.Tuner.can_restore(str(out / "ray" / "i"))
    return out, text


@pytest.mark.slow
def test_ctrl_c_saves_the_search_prints_how_to_resume_and_resume_finishes_it(tmp_path, local_ray):
    """Ray 2.60 catches the first SIGINT itself: Tuner.fit stops the trials, saves the experiment
    and *returns*, with the stopped trials marked TERMINATED as if finished. The search must see
    the interruption (before the fix it published a 1-trial search as complete and exited 0)."""
    out, text = interrupt_search(tmp_path, presses=1)
    assert RAY_STOP_LINE in text
    assert run_search(["--resume", "--name", "i", "--out", str(out), "--no-retrain"]) == 0
    trials = pd.read_csv(out / "i" / "trials.csv")
    assert list(trials["trial"]) == [1, 2, 3]
    assert set(trials["status"]) <= {"finished", "stopped"} and trials["error"].isna().all()
    epochs = pd.read_csv(out / "i" / "trial_epochs.csv")
    for row in trials.itertuples():  # every epoch once: the interrupted trial went on, not over
        assert list(epochs[epochs["trial_id"] == row.trial_id]["epoch"]) == list(range(1, row.epochs_run + 1))
    assert json.loads((out / "best_config.json").read_text())["search"]["trials"] == 3

    # What the disk-full error advises: --resume of a finished experiment writes its results again
    (out / "i" / "trials.csv").unlink()
    (out / "best_config.json").unlink()
    assert run_search(["--resume", "--name", "i", "--out", str(out), "--no-retrain"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "i" / "trials.csv"), trials)
    assert (out / "best_config.json").is_file()


@pytest.mark.slow
def test_a_second_ctrl_c_skips_rays_last_save_and_still_exits_130(tmp_path):
    """The second SIGINT meets Python's default handler, which Ray put back: KeyboardInterrupt out of
    Tuner.fit while it saves and stops trials. The search catches it; Ray's experiment state from
    its last periodic save stays restorable."""
    interrupt_search(tmp_path, presses=2)


def test_ctrl_c_in_the_confirm_stage_says_how_to_confirm_later(tmp_path, capfd, monkeypatch):
    """The search is published when its confirm stage starts: Ctrl-C there ends in one line naming
    the retrain command (its saved runs are reused), exit 130, no traceback."""
    from tuner import search
    from tuner.confirm import stage
    from tuner.plan import placement, search_plan
    from tuner.settings import SearchSettings

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stage, "confirm_search", interrupted)
    exp = search.Experiment(SearchSettings(), {}, "s5-x", tmp_path, str(tmp_path / "ray"), "/data")
    placement = placement.Placement(gpus=0, cpus=2, nodes=1, gpu_per_trial=0.0, cpu_per_trial=1, concurrent=2)
    assert search.confirm_stage(exp, search_plan.SearchPlan(SearchSettings(), placement), time.monotonic()) == 130
    err = capfd.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    assert err.strip().endswith(f"python -m tuner.retrain --search s5-x --results {tmp_path}")
