"""Faults a search must survive, injected into real tiny searches (CPU, MNIST subsets), and the
security properties of the code. README "Reliability and security" cites each test here.

Killing the driver with SIGKILL and resuming is tests/test_resume.py; a corrupt data file and the
pickle checksum are tests/test_download.py; bad flags are tests/test_cli_errors.py.
"""

import ast
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
import ray
import torch
from ray import cloudpickle, tune
from raysession import clean_env, kill_session, session_pids

from mnist_net import download, files
from mnist_net.config import TrainConfig
from mnist_net.data import DEFAULT_DATA_DIR, load_splits
from tuner import cluster, publish, resources, search
from tuner.settings import SearchSettings
from tuner.space import CHANCE_ACC, PARAMS, SEED_CONFIG
from tuner.trainable import train_s5

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "mnist_net").rglob("*.py"), *(ROOT / "tuner").rglob("*.py")])
HUGE_LR = 1e5  # two SGD steps at this lr leave non-finite weights behind
MAX_FAILURES = 2  # tuner.search.build_tuner's FailureConfig

# Ray's workers unpickle the fault-injecting trainable below: send it by value, as this
# test module is not importable there.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def run_search(argv: list[str]) -> int:
    """tuner.search.main in this process, on a local Ray that is shut down whatever happens."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.delenv("RAY_AUTH_MODE", raising=False)  # ray.init sets it; put it back afterwards
        try:
            return search.main(argv)
        finally:
            if ray.is_initialized():
                ray.shutdown()


def wait_until(condition, timeout: float, what: str, alive=lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert alive(), f"gave up waiting for {what}: the process ended"
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f}s"
        time.sleep(0.1)


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
def test_ctrl_c_saves_the_search_prints_how_to_resume_and_resume_finishes_it(tmp_path):
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
    """One real search of 4 trials (2 epochs, 1024 train / 200 val images, 2 at a time) on the local
    Ray that the search itself starts (cluster.connect), published as tuner.search does."""
    tmp = tmp_path_factory.mktemp("faults")
    marks, out = tmp / "marks", tmp / "results"
    (marks / "attempts").mkdir(parents=True)
    (marks / "claims").mkdir()
    name, storage = "faults", cluster.resolve_storage(None, out)
    settings = SearchSettings(num_samples=4, max_epochs=2, train_size=1024, eval_size=200,
                              max_concurrent=2, budget="smoke")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.delenv("RAY_AUTH_MODE", raising=False)  # Ray's own default: token auth on
        try:
            cluster.connect(None, dashboard=False)
            plan = resources.plan(resources.alive_nodes(), max_concurrent=settings.max_concurrent)
            base = TrainConfig(epochs=settings.max_epochs, train_split="train", train_size=settings.train_size,
                               eval_size=settings.eval_size, seed=settings.seed)
            trainable = tune.with_resources(
                tune.with_parameters(faulty_train_s5, marks=str(marks), base=base,
                                     data_dir=str(DEFAULT_DATA_DIR)), plan.resources)
            start = time.time()
            grid = search.build_tuner(trainable, settings, plan, storage, name).fit()
            summary = out / name
            summary.mkdir()
            settings.save(summary / "search_settings.json")  # as tuner.search.run does
            best = publish.write_search_results(grid, settings, plan, storage, summary, out, name,
                                                time.time() - start)
            yield SimpleNamespace(grid=grid, best=best, marks=marks, out=out, summary=summary, name=name,
                                  settings=settings, plan=plan, storage=storage,
                                  trials=pd.read_csv(summary / "trials.csv"),
                                  epochs=pd.read_csv(summary / "trial_epochs.csv"))
        finally:
            ray.shutdown()


@pytest.mark.slow
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
        assert not cluster.unfinished(searched.grid, searched.settings.num_samples)

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
        --out). tuner.search.run says so in one line and exits 1; every file is either its
        complete new version or byte for byte the previous search's, and no temp file is left."""
        out = searched.out
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "ray" not in p.relative_to(out).parts}
        disk = FillingDisk(out / fails_on)
        monkeypatch.setattr(files, "atomic_path", disk)
        monkeypatch.setattr(search, "build_tuner", lambda *args: FinishedTuner(searched.grid, disk))
        monkeypatch.setattr(search.cluster, "disconnect", lambda: None)  # the class's Ray stays up
        args = search.build_parser().parse_args(["--out", str(out), "--name", searched.name, "--no-retrain"])
        capsys.readouterr()
        code = search.run(args, searched.settings, searched.plan, searched.storage, out, searched.name)
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


def test_atomic_write_that_fails_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "trials.csv"
    path.write_bytes(b"old complete table\n")
    with pytest.raises(OSError, match="No space left"):
        with files.atomic_path(path) as tmp:
            tmp.write_bytes(b"half a ta")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert path.read_bytes() == b"old complete table\n"
    new = tmp_path / "new.json"
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_path(new) as tmp:
            tmp.write_bytes(b"{")
            raise KeyboardInterrupt  # Ctrl-C mid-write
    assert not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trials.csv"]
    files.write_json(new, {"ok": 1})
    assert json.loads(new.read_text()) == {"ok": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.json", "trials.csv"]


# --- data ----------------------------------------------------------------------------------------

ACQUIRE = """
import json, os, sys, time
from pathlib import Path
from mnist_net import download, files

root, good, log, ready, n = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5])

def slow_copy(raw):
    start = time.time()
    time.sleep(1)  # the other processes reach the lock meanwhile
    for name in download.MD5:
        files.write_bytes(raw / name, (good / name).read_bytes())
    with open(log, "a") as fh:
        fh.write(json.dumps({"fetch": [start, time.time()]}) + "\\n")

download._FETCHERS["slow-copy"] = slow_copy
(ready / str(os.getpid())).touch()
while len(list(ready.iterdir())) < n:  # start together, imports done
    time.sleep(0.01)
with open(log, "a") as fh:
    fh.write(json.dumps({"call": time.time()}) + "\\n")
print(download.ensure_mnist(root, sources=("slow-copy",)))
"""


def test_processes_acquiring_mnist_at_once_fetch_it_once(tmp_path):
    """The thread version is tests/test_download.py::test_concurrent_callers_fetch_once."""
    good = download.ensure_mnist(DEFAULT_DATA_DIR)
    root, log, ready = tmp_path / "data", tmp_path / "log", tmp_path / "ready"
    ready.mkdir()
    n = 3
    procs = [subprocess.Popen([sys.executable, "-c", ACQUIRE, str(root), str(good), str(log), str(ready), str(n)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(n)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * n, outputs
    raw = download.raw_dir(root)
    assert [o.strip() for o, _ in outputs] == [str(raw)] * n
    events = [json.loads(line) for line in log.read_text().splitlines()]
    fetches = [e["fetch"] for e in events if "fetch" in e]
    calls = [e["call"] for e in events if "call" in e]
    assert len(fetches) == 1 and len(calls) == n
    assert max(calls) < fetches[0][1]  # all three were waiting while the one fetch ran
    assert download.invalid_files(raw) == []
    assert sorted(p.name for p in raw.iterdir()) == sorted(download.MD5)  # no temp files either


def test_a_corrupt_data_file_is_reacquired_before_training_reads_it(tmp_path, splits, monkeypatch):
    """tests/test_download.py checks ensure_mnist on truncated and altered files; this checks that
    load_splits, which every trainer calls, goes through it."""
    good = download.ensure_mnist(DEFAULT_DATA_DIR)
    raw = download.raw_dir(tmp_path)
    raw.mkdir(parents=True)
    for name in download.MD5:
        shutil.copy(good / name, raw / name)
    images = raw / "train-images-idx3-ubyte"
    data = bytearray(images.read_bytes())
    data[16 + 6 * 784 + 400] ^= 0xFF  # one pixel of image 6, in the middle of the digit's box
    images.write_bytes(bytes(data))
    fetched = []

    def copy_good(into):
        fetched.append(into)
        for name in download.MD5:
            files.write_bytes(into / name, (good / name).read_bytes())

    monkeypatch.setitem(download._FETCHERS, "torchvision", copy_good)
    loaded = load_splits(tmp_path)
    assert fetched == [raw]
    assert torch.equal(loaded["train"].images, splits["train"].images)


# --- security ------------------------------------------------------------------------------------

def calls_to(module: str, names: set[str]) -> list[tuple[Path, ast.Call, dict]]:
    """Every call `module.name(...)` (or `name(...)` after `from module import name`) in SOURCES,
    with the module's simple `x = ...` assignments to look up a variable argument."""
    found = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), filename=str(path))
        imported = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    and node.module == module for a in node.names if a.name in names}
        assigned = {t.id: node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                    for t in node.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            if (isinstance(f, ast.Attribute) and f.attr in names and isinstance(f.value, ast.Name)
                    and f.value.id == module) or (isinstance(f, ast.Name) and f.id in imported):
                found.append((path, node, assigned))
    return found


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{node.lineno}"


def test_every_torch_load_is_weights_only():
    loads = calls_to("torch", {"load"})
    assert loads, "no torch.load found: is SOURCES right?"
    for path, call, _ in loads:
        kw = {k.arg: k.value for k in call.keywords}
        assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, \
            f"{where(path, call)}: torch.load without weights_only=True can run code from the file"


def test_every_subprocess_gets_an_argument_list_and_no_shell():
    assert calls_to("os", {"system", "popen"}) == [], "os.system/os.popen run a shell"
    assert calls_to("subprocess", {"getoutput", "getstatusoutput"}) == [], "these run a shell"
    runs = calls_to("subprocess", {"run", "Popen", "call", "check_call", "check_output"})
    assert runs, "no subprocess call found: is SOURCES right?"
    for path, call, assigned in runs:
        shell = {k.arg: k.value for k in call.keywords}.get("shell")
        assert shell is None or (isinstance(shell, ast.Constant) and shell.value is False), where(path, call)
        args = call.args[0] if call.args else {k.arg: k.value for k in call.keywords}.get("args")
        if isinstance(args, ast.Name):
            args = assigned.get(args.id)
        assert isinstance(args, ast.List), f"{where(path, call)}: pass an argument list, not a string"


def test_no_pickle_is_loaded_but_the_checksummed_one():
    """pickle.load(s)/Unpickler appear only in mnist_net/download.py, whose pickle_to_idx checks the
    SHA-256 first (tests/test_download.py::test_tampered_pickle_is_refused_before_unpickling)."""
    users = {where(p, c) for p, c, _ in calls_to("pickle", {"load", "loads", "Unpickler"})}
    assert users == set(), f"unpickling outside download.pickle_to_idx: {users}"
    subclasses = [f"{p.relative_to(ROOT)}:{n.name}" for p in SOURCES for n in ast.walk(ast.parse(p.read_text()))
                  if isinstance(n, ast.ClassDef) and any(ast.unparse(b) == "pickle.Unpickler" for b in n.bases)]
    assert subclasses == ["mnist_net/download.py:NumpyOnlyUnpickler"]


def listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of the TCP sockets process `pid` listens on, from /proc (Linux)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            address, port = fields[1].split(":")
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.append(("*" if set(address) == {"0"} else address[:width], int(port, 16)))
    return found


@pytest.fixture(scope="class")
def local_ray():
    """The local Ray that tuner.search starts (cluster.connect with no --address)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.delenv("RAY_AUTH_MODE", raising=False)
        try:
            cluster.connect(None, dashboard=False)
            node = ray._private.worker._global_node
            yield SimpleNamespace(node=node, auth_mode=os.environ.get("RAY_AUTH_MODE"),
                                  gcs=ray.get_runtime_context().gcs_address)
        finally:
            ray.shutdown()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
class TestLocalRay:
    """What can reach the local Ray that tuner.search starts."""

    def test_no_dashboard_listens(self, local_ray):
        # Ray still runs its dashboard process for the job and state APIs, without the web server
        assert not local_ray.node.webui_url
        for proc in local_ray.node.all_processes.get("dashboard", []):
            assert listening(proc.process.pid) == []

    def test_token_auth_is_on_and_a_wrong_token_is_refused(self, local_ray):
        assert local_ray.auth_mode == "token"
        # Ray binds its gRPC servers to every interface whatever it is asked: the token guards them
        gcs_port = int(local_ray.gcs.rsplit(":", 1)[1])
        gcs_pid = local_ray.node.all_processes["gcs_server"][0].process.pid
        assert ("*", gcs_port) in listening(gcs_pid)
        join = "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); print(ray.nodes())"
        for token, ok in ((None, True), ("0" * 32, False)):
            env = clean_env(RAY_AUTH_MODE="token", RAY_gcs_server_port_wait_time_s="1")  # one try, not 20
            if token:
                env["RAY_AUTH_TOKEN"] = token
            done = subprocess.run([sys.executable, "-c", join, local_ray.gcs], env=env, capture_output=True,
                                  text=True, timeout=120)
            assert (done.returncode == 0) == ok, done.stderr[-2000:]
            if not ok:
                assert "Authentication token is missing or incorrect" in done.stderr


def test_no_finished_trial_means_no_best_config():
    """When every trial errored or diverged there is nothing to choose: a named error, not an index crash."""
    from tuner.results import NoFinishedTrial, best_trial

    trials = pd.DataFrame({"trial_id": ["a", "b"], "status": ["errored", "diverged"],
                           "best_val_acc": [float("nan"), CHANCE_ACC]})
    with pytest.raises(NoFinishedTrial, match="all errored or diverged"):
        best_trial(trials)
    trials.loc[1, "status"] = "stopped"
    assert best_trial(trials)["trial_id"] == "b"
