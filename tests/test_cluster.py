"""Joining a Ray cluster (a search on a token-auth `ray start` cluster of two nodes: tests/test_two_nodes.py):
a two-node cluster with GPUs on one node only, and every wrong --address failing fast.

The token cluster is a real `ray start --head` in its own session; teardown kills that session's
processes by pid, never `ray stop` (which would also stop every other Ray cluster on the machine).
"""

import http.server
import secrets
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import ray
from raysession import clean_env, session_pids, token_head

from mnist_net.data import DEFAULT_DATA_DIR
from tuner.plan import placement
from tuner.run import cluster as cluster_api

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds Ray's processes in /proc")

ROOT = Path(__file__).resolve().parents[1]
# A hang check, not a speed target: ray.init alone retried a wrong address for minutes.
FAIL_FAST_S = 30


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(address, env with its token, head process) of a 2-CPU head node on loopback."""
    with token_head(tmp_path_factory.mktemp("cluster"), num_cpus=2) as head:
        yield head


def search(args, env, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuner.search", "--data-dir", str(DEFAULT_DATA_DIR), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def one_line_error(address: str, env: dict, out: Path) -> str:
    """`python -m tuner.search --address ADDRESS`: exit 2 within FAIL_FAST_S and one line on stderr."""
    start = time.monotonic()
    r = search(["--smoke-test", "--address", address, "--out", str(out)], env, timeout=120)
    assert time.monotonic() - start < FAIL_FAST_S, r.stderr[-3000:]
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert r.stderr.count("\n") == 1, r.stderr[-3000:]  # Ray's C++ warnings are kept off it
    assert not (out / "best_config.json").exists()
    return r.stderr.strip()


@pytest.mark.slow
def test_no_token_is_refused_with_a_hint(cluster, tmp_path):
    address, _, head = cluster
    home = tmp_path / "home"  # no ~/.ray/auth_token there
    home.mkdir()
    line = one_line_error(address, clean_env(HOME=str(home)), tmp_path / "out")
    assert line.startswith(f"python -m tuner.search: error: cannot join the Ray cluster at {address}: ")
    assert "put its token in ~/.ray/auth_token" in line
    assert session_pids(head.pid)


@pytest.mark.slow
def test_wrong_token_is_refused_and_says_so(cluster, tmp_path):
    address, _, head = cluster
    wrong = tmp_path / "wrong_token"
    wrong.write_text(secrets.token_hex(32))
    line = one_line_error(address, clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(wrong)),
                          tmp_path / "out")
    assert line.startswith(f"python -m tuner.search: error: cannot join the Ray cluster at {address}: ")
    assert "rejected our auth token" in line
    assert session_pids(head.pid)


# --- addresses that are not a Ray cluster: no Ray is started for these --------------------------

def test_a_dashboard_url_is_refused_before_connecting():
    for url in ("http://127.0.0.1:8265", "https://ray.example.org:8265/"):
        with pytest.raises(ConnectionError, match="--address takes Ray's GCS host:port .* not the dashboard URL"):
            cluster_api.connect(url)
    assert not ray.is_initialized()


@contextmanager
def http_server():
    """A plain HTTP server on a free loopback port, as a mistyped port or the dashboard would be."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_http_server_is_named_as_such(tmp_path):
    with http_server() as address:
        line = one_line_error(address, clean_env(), tmp_path / "out")
    assert line == (f"python -m tuner.search: error: {address} is an HTTP server (Ray's dashboard listens "
                    "on 8265), not Ray's GCS port (default 6379); use the address `ray start --head` printed")


@pytest.mark.slow
def test_a_silent_listener_is_not_a_gcs(tmp_path):
    """Something that accepts connections and never answers: Ray's client alone waited for minutes."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as listener:
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        line = one_line_error(address, clean_env(), tmp_path / "out")
    assert line.startswith(f"python -m tuner.search: error: {address} answers, but not as Ray's GCS (")
    assert line.endswith("use the address `ray start --head` printed (port 6379 by default)")


# --- two nodes, GPUs on one: the plan, the placement and the storage both share ----------------

FAKE_GPUS = "90,91"  # ids no machine has: torch in the workers sees no GPU, here or on a GPU box


@pytest.fixture(scope="module")
def two_nodes():
    """(cluster, GPU node id, env for a search joining it): a head with 1 CPU and no GPU and a node
    with 2 CPUs and 2 (fake) GPUs, processes of this test.

    These nodes run without token auth, and a search joining them must not speak it either
    (RAY_AUTH_MODE=disabled overrides ~/.ray/auth_token): with a token, the driver refuses the
    raylets' calls and Tune's actors are cancelled before they start. Ray caches the auth mode per
    process (RayConfig, the token loader): an earlier in-process local ray.init left it, and
    RAY_AUTH_MODE=token, behind. So the mode is set and the cache refreshed (Ray's own test helper)
    here, and both are put back afterwards, or a later test's local Ray would refuse this process.
    """
    from ray._private.authentication_test_utils import reset_auth_token_state
    from ray.cluster_utils import Cluster

    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.delenv("RAY_ADDRESS", raising=False)
            mp.setenv("RAY_AUTH_MODE", "disabled")
            reset_auth_token_state()
            nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
            try:
                # each raylet reads CUDA_VISIBLE_DEVICES when it starts (conftest blanked it for the head)
                mp.setenv("CUDA_VISIBLE_DEVICES", FAKE_GPUS)
                gpu_node = nodes.add_node(num_cpus=2, num_gpus=2)
                mp.setenv("CUDA_VISIBLE_DEVICES", "")
                nodes.wait_for_nodes()
                yield nodes, gpu_node.node_id, clean_env(RAY_AUTH_MODE="disabled")
            finally:
                nodes.shutdown()
    finally:
        reset_auth_token_state()  # the environment is back as it was: make Ray read it again


@ray.remote
def where_am_i(folder: str) -> tuple[str, list[str]]:
    """(node id, GPU ids) of this task; leaves a file in `folder`, the storage the nodes share."""
    node, gpus = ray.get_runtime_context().get_node_id(), [str(g) for g in ray.get_gpu_ids()]
    time.sleep(1)  # hold the GPU while the other task is placed
    Path(folder, f"{node}-{gpus[0]}").write_text("written on the GPU node")
    return node, gpus


@pytest.mark.slow
def test_gpu_trials_go_to_the_gpu_node_and_spread_over_its_gpus(two_nodes, tmp_path):
    nodes, gpu_node, _ = two_nodes
    ray.init(address=nodes.address, logging_level="WARNING")
    try:
        p = placement.place(placement.alive_nodes())
        refs = [where_am_i.options(num_cpus=p.cpu_per_trial, num_gpus=p.gpu_per_trial).remote(str(tmp_path))
                for _ in range(p.concurrent)]
        placed = ray.get(refs, timeout=120)
    finally:
        ray.shutdown()
    assert (p.gpus, p.cpus, p.nodes, p.gpu_per_trial, p.cpu_per_trial, p.concurrent) == (2, 3, 2, 1.0, 1, 2)
    assert {node for node, _ in placed} == {gpu_node}
    assert sorted(g for _, gpus in placed for g in gpus) == ["90", "91"]
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(f"{gpu_node}-{g}" for g in ("90", "91"))


@pytest.mark.slow
def test_a_search_whose_gpu_trials_find_no_cuda_ends_with_their_error(two_nodes, tmp_path):
    """The search plans from the cluster's nodes, its trials get a GPU each on the GPU node, torch
    there has no CUDA: every trial errors, and the search's last line says why."""
    nodes, _, env = two_nodes
    out, storage = tmp_path / "out", tmp_path / "shared"
    r = search(["--smoke-test", "--num-samples", "2", "--max-epochs", "1", "--no-retrain", "--name", "g",
                "--address", nodes.address, "--out", str(out), "--storage", str(storage)], env)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "plan: 2 GPU, 3 CPU on 2 node(s); each trial 1 GPU + 1 CPU" in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no trial finished with a val_acc (all errored or diverged); first error: "
                           "ValueError: this trial was given GPU(s) ['9"), last
    assert "but torch here has no CUDA" in last
    trials = pd.read_csv(out / "g" / "trials.csv")
    assert list(trials["status"]) == ["errored", "errored"]
    assert len(list((storage / "g").glob("train_s5_*"))) == 2  # the trials' folders, in the shared storage
