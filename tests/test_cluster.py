"""A search on an existing multi-process Ray cluster with token authentication on.

The cluster is a real `ray start --head` in its own session; teardown kills that session's processes
by pid, never `ray stop` (which would also stop every other Ray cluster on the machine).
"""

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from raysession import RAY_CLI, clean_env, free_port, kill_session, session_pids, wait_for_port

from mnist_net.data import DEFAULT_DATA_DIR

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds Ray's processes in /proc")]

ROOT = Path(__file__).resolve().parents[1]
# A client the cluster refuses keeps retrying for ~20-40 s; one attempt is enough here.
ONE_ATTEMPT = {"RAY_gcs_server_port_wait_time_s": "1"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(address, env with its token, head process) of a 2-CPU head node on loopback."""
    tmp = tmp_path_factory.mktemp("cluster")
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    port = free_port()
    with open(tmp / "head.log", "w") as log:
        head = subprocess.Popen(
            [RAY_CLI, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
             "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port, 90, alive=lambda: head.poll() is None)
        yield f"127.0.0.1:{port}", env, head
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # `ray start` and the node's daemons...
        kill_session(head.pid)  # ...and the workers, which live in process groups of their own
        head.wait(timeout=30)
        assert session_pids(head.pid) == [], "a process of the test cluster survived"


def search(args, env, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuner.search", "--data-dir", str(DEFAULT_DATA_DIR), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_search_runs_on_a_token_auth_cluster(cluster, tmp_path):
    address, env, head = cluster
    out = tmp_path / "results"
    r = search(["--smoke-test", "--no-retrain", "--num-samples", "2", "--max-epochs", "1",
                "--address", address, "--out", str(out), "--name", "c"], env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    trials = pd.read_csv(out / "c" / "trials.csv")
    assert len(trials) == 2 and (trials["status"] == "finished").all()
    assert trials["best_val_acc"].between(0, 100).all()
    best = json.loads((out / "best_config.json").read_text())
    assert "0 GPU, 2 CPU on 1 node(s)" in best["search"]["plan"]  # the head's --num-cpus=2
    # The trials ran in that cluster, not in a Ray the search started: their workers' logs are in
    # the head's session folder (Ray names it after the pid of `ray start`).
    sessions = list((Path(tempfile.gettempdir()) / "ray").glob(f"session_*_{head.pid}"))
    assert len(sessions) == 1
    folder = next((out / "ray" / "c").glob("train_s5_*"))
    pid = json.loads((folder / "result.json").read_text().splitlines()[0])["pid"]
    assert list((sessions[0] / "logs").glob(f"worker-*-{pid}.out"))
    assert session_pids(head.pid)  # and the cluster outlived the search that used it


def last_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and r.stdout == ""
    # Ray's C++ client logs its failed attempt on stderr first; our one-line error comes last.
    line = r.stderr.splitlines()[-1]
    assert line.startswith("python -m tuner.search: error: cannot join the Ray cluster at 127.0.0.1:")
    return line


def test_no_token_is_refused_with_a_hint(cluster, tmp_path):
    address, _, head = cluster
    home = tmp_path / "home"  # no ~/.ray/auth_token there
    home.mkdir()
    r = search(["--smoke-test", "--address", address, "--out", str(tmp_path / "out")],
               clean_env(HOME=str(home), **ONE_ATTEMPT), timeout=120)
    line = last_line_error(r)
    assert "put its token in ~/.ray/auth_token" in line
    assert not (tmp_path / "out" / "best_config.json").exists()
    assert session_pids(head.pid)


def test_wrong_token_is_refused_and_says_so(cluster, tmp_path):
    address, _, head = cluster
    wrong = tmp_path / "wrong_token"
    wrong.write_text(secrets.token_hex(32))
    r = search(["--smoke-test", "--address", address, "--out", str(tmp_path / "out")],
               clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(wrong), **ONE_ATTEMPT), timeout=120)
    line = last_line_error(r)
    assert "rejected our auth token" in line
    assert session_pids(head.pid)
