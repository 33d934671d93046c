"""Helpers for tests that run tuner.search: in this process on a local Ray, or watched in a child."""

import io
import threading
import time
from contextlib import redirect_stderr
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import ray
from raysession import local_env

from tuner import search


def run_search(argv: list[str]) -> int:
    """tuner.search.main in this process: on the test's Ray if one is up (tests/conftest.py's local_ray), which it
    leaves running, else on a local Ray of its own that is shut down whatever happens."""
    was_up = ray.is_initialized()
    with local_env():
        try:
            return search.main(argv)
        finally:
            if not was_up and ray.is_initialized():
                ray.shutdown()


def wait_until(condition, timeout: float, what: str, alive=lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert alive(), f"gave up waiting for {what}: the process ended"
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f}s"
        time.sleep(0.1)


def watch_study(db: Path, name: str, done: threading.Event, seen: list) -> None:
    """Poll the study as optuna-dashboard would; record the first sight of a trial with
    intermediate values, and whether the search had published anything by then."""
    while not done.is_set():
        if db.is_file():
            try:
                s = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
                with_values = [t for t in s.get_trials(deepcopy=False) if t.intermediate_values]
                if with_values:
                    seen.append({"published": (db.parent / "best_config.json").exists(),
                                 "running": any(t.state.name == "RUNNING" for t in s.trials)})
                    return
            except (KeyError, Exception):  # created but not yet holding the study: poll again
                pass
        time.sleep(0.3)


# The shared smoke search (tests/conftest.py's `searched`): --max-epochs 3 gives ASHA a grace period
# of 1 and a reduction factor of 2: rungs at epochs 1 and 2, where a trial is stopped if its val_acc
# is below the median of those already recorded at that rung. The smoke preset's trials 2 and 3 (a
# sure learner, a sure non-learner) make an early stop certain on any CPU.
MAX_EPOCHS = 3
NUM_SAMPLES = 6


def shared_search(out: Path) -> SimpleNamespace:
    """One smoke search with its confirm stage and MLflow (a file store), its progress line captured
    and its live study polled while it runs: what every module that reads a finished search reads."""
    mlruns = f"file://{out.parent / 'mlruns'}"
    argv = ["--smoke-test", "--out", str(out), "--name", "smoke", "--num-samples", str(NUM_SAMPLES),
            "--max-epochs", str(MAX_EPOCHS), "--mlflow", mlruns]
    done, seen, err = threading.Event(), [], io.StringIO()
    watcher = threading.Thread(target=watch_study, args=(out / "smoke" / "study.db", "smoke", done, seen), daemon=True)
    watcher.start()
    try:
        with redirect_stderr(err):  # the progress line (tqdm writes to stderr)
            code = run_search(argv)
    finally:
        done.set()
        watcher.join()
    folder = out / "smoke"
    trials = pd.read_csv(folder / "trials.csv") if (folder / "trials.csv").is_file() else None
    return SimpleNamespace(code=code, out=out, folder=folder, argv=argv, err=err.getvalue(), seen=seen,
                           mlruns=mlruns, trials=trials, ray=out / "ray" / "smoke", name="smoke")
