"""Helpers for tests that run Ray in a child process: find and end exactly what that child started.

A child started with `start_new_session=True` leads a new session whose id is its pid. Everything
it starts (Ray's gcs_server, raylet, dashboard, and the raylet's workers, which move into process
groups of their own) stays in that session, so the session id finds them all and nothing else:
no `ray stop`, which would also end other users' Ray clusters on the machine.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RAY_CLI = str(Path(sys.executable).parent / "ray")


def session_pids(sid: int) -> list[int]:
    """Live (not zombie) processes in session `sid`."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # exited while we looked
            continue
        fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def kill_session(sid: int, timeout: float = 30.0) -> None:
    """SIGKILL every process of session `sid` (by pid) until none is left."""
    deadline = time.monotonic() + timeout
    while pids := session_pids(sid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} of session {sid} survived SIGKILL")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float, alive=lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("the process that should listen there exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without Ray's settings (RAY_ADDRESS, RAY_AUTH_*), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(extra)
    return env


@contextmanager
def token_head(tmp: Path, num_cpus: int, **env: str) -> Iterator[tuple[str, dict[str, str], subprocess.Popen]]:
    """(address, env with its token (plus `env`), `ray start` process) of a token-auth head on loopback, in a
    session of its own; afterwards every process of it is killed by pid, never `ray stop`."""
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), **env)
    port = free_port()
    with open(tmp / "head.log", "w") as log:
        head = subprocess.Popen(
            [RAY_CLI, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
             f"--num-cpus={num_cpus}", "--include-dashboard=false", "--disable-usage-stats"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port, 90, alive=lambda: head.poll() is None)
        yield f"127.0.0.1:{port}", env, head
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # `ray start` and the node's daemons...
        kill_session(head.pid)  # ...and the workers, which live in process groups of their own
        head.wait(timeout=30)
        assert session_pids(head.pid) == [], "a process of the test cluster survived"


# --- for tests that place tasks on (fake) GPUs inside this process's Ray ---------------------------

def _remote_actor(cls):
    import ray  # here: the child-process helpers above never need Ray in this process
    import ray.cloudpickle

    # Ray's workers cannot import this tests-only module: ship its functions by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return ray.remote(num_cpus=0)(cls)


@_remote_actor
class Barrier:
    """Holds tasks until `n` have arrived, so that they hold their GPU shares at the same time."""

    def __init__(self, n: int):
        self.n, self.arrived = n, 0

    def arrive(self) -> None:
        self.arrived += 1

    def all_here(self) -> bool:
        return self.arrived >= self.n


def gpu_id_while_all_run(barrier) -> str:
    """A task body (wrap it with ray.remote): wait until every task of the barrier runs, then say
    which one GPU id Ray gave this one."""
    import ray

    ray.get(barrier.arrive.remote())
    deadline = time.monotonic() + 60
    while not ray.get(barrier.all_here.remote()):
        assert time.monotonic() < deadline, "the tasks never ran at the same time"
        time.sleep(0.05)
    ids = ray.get_gpu_ids()
    assert len(ids) == 1
    return str(ids[0])


# --- one local Ray for the tests that run searches and confirm stages in this process ----------------

_shared = False  # whether the Ray this process runs was started by shared_ray()


@contextmanager
def local_env():
    """This process's environment as a local search starts Ray in it: no RAY_ADDRESS, and RAY_AUTH_MODE (which
    ray.init sets) put back as it was afterwards. Yields the MonkeyPatch, for more changes undone alike."""
    import pytest

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.delenv("RAY_AUTH_MODE", raising=False)
        yield mp


def shared_ray() -> None:
    """A local Ray started as tuner.search starts one (cluster.connect with no --address), unless one is up. A
    search or confirm stage in this process uses it as a caller's Ray and leaves it running (tuner.run.cluster):
    the next test saves Ray's start and stop, ~5 s."""
    global _shared
    import ray

    if ray.is_initialized():
        return
    with local_env():
        ray.init(address="local", include_dashboard=False, logging_level="WARNING")
    _shared = True


def end_shared_ray() -> None:
    """Shut down the Ray shared_ray() started, if it is still up; another test's own Ray is left alone."""
    global _shared
    import ray

    if _shared and ray.is_initialized():
        ray.shutdown()
    _shared = False
