"""What can reach the local Ray that tuner.search starts (no --address): no dashboard web server,
token authentication on. Read from /proc (Linux). README "Reliability and security" cites these
tests; joining an existing cluster is tests/test_cluster.py.
"""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
from raysession import clean_env, local_env

from tuner.run import cluster


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
def searchs_ray():
    """The local Ray that tuner.search starts (cluster.connect with no --address)."""
    with local_env():
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

    def test_no_dashboard_listens(self, searchs_ray):
        # Ray still runs its dashboard process for the job and state APIs, without the web server
        assert not searchs_ray.node.webui_url
        for proc in searchs_ray.node.all_processes.get("dashboard", []):
            assert listening(proc.process.pid) == []

    def test_token_auth_is_on_and_a_wrong_token_is_refused(self, searchs_ray):
        assert searchs_ray.auth_mode == "token"
        # Ray binds its gRPC servers to every interface whatever it is asked: the token guards them
        gcs_port = int(searchs_ray.gcs.rsplit(":", 1)[1])
        gcs_pid = searchs_ray.node.all_processes["gcs_server"][0].process.pid
        assert ("*", gcs_port) in listening(gcs_pid)
        join = "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); print(ray.nodes())"
        for token, ok in ((None, True), ("0" * 32, False)):
            env = clean_env(RAY_AUTH_MODE="token", RAY_gcs_server_port_wait_time_s="1")  # one try, not 20
            if token:
                env["RAY_AUTH_TOKEN"] = token
            done = subprocess.run([sys.executable, "-c", join, searchs_ray.gcs], env=env, capture_output=True,
                                  text=True, timeout=120)
            assert (done.returncode == 0) == ok, done.stderr[-2000:]
            if not ok:
                assert "Authentication token is missing or incorrect" in done.stderr
