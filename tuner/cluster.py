"""Connecting to Ray (local or an existing cluster, token auth kept on) and experiment storage."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from mnist_net.files import prepare_out_dir

CONNECT_TIMEOUT_S = 5
TOKEN_FILE = Path("~/.ray/auth_token").expanduser()


def resolve_storage(storage: str | None, out: Path) -> str:
    """Ray's storage as an absolute path (made and checked writable) or a URI left as is."""
    if storage is None:
        return str(prepare_out_dir(out / "ray"))
    if "://" in storage:
        return storage.rstrip("/")
    return str(prepare_out_dir(storage))


def connect(address: str | None, dashboard: bool = False) -> None:
    """Start a local Ray or join `address`; ConnectionError says what to do."""
    import ray

    if not address:
        # Ray 2.60 turns token auth on for a local Ray by default; we leave it on. Its gRPC
        # servers bind every interface whatever we ask (Ray maps 127.0.0.1 to the node IP),
        # so the token is what guards them. No dashboard unless asked for, then on loopback.
        ray.init(address="local", include_dashboard=dashboard, dashboard_host="127.0.0.1",
                 configure_logging=True, logging_level="WARNING")
        return
    if address != "auto" and "://" not in address:
        check_reachable(address)
    if token_available() and not os.environ.get("RAY_AUTH_MODE"):
        # A token is on hand: speak token auth, as `ray start` clusters in Ray >= 2.59 expect.
        os.environ["RAY_AUTH_MODE"] = "token"
    try:
        ray.init(address=address, logging_level="WARNING")
    except Exception as err:  # Ray raises ConnectionError, AuthenticationError, RuntimeError...
        # Ray's own message only says "Failed to connect"; a rejected token shows in the cause.
        rejected = "InvalidAuthToken" in f"{err} {err.__cause__}"
        if not token_available():
            hint = ("; if the cluster uses token authentication, put its token in ~/.ray/auth_token "
                    "(or set RAY_AUTH_TOKEN_PATH) and RAY_AUTH_MODE=token")
        elif rejected:
            hint = ("; the cluster rejected our auth token: use the token the cluster was started with "
                    "(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)")
        else:
            hint = ""
        raise ConnectionError(f"cannot join the Ray cluster at {address}: "
                              f"{str(err).splitlines()[0][:200]}{hint}") from None


def check_reachable(address: str) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConnectionError(f"--address {address!r} is not host:port (e.g. 127.0.0.1:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise ConnectionError(f"no Ray cluster answers at {address} ({err.strerror or err}); "
                              "start one with `ray start --head` or drop --address for a local Ray") from None


def token_available() -> bool:
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or TOKEN_FILE.is_file())


def disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def can_restore(storage: str, name: str | None) -> bool:
    from ray import tune

    return bool(name) and tune.Tuner.can_restore(f"{storage}/{name}")


def newest_experiment(storage: str) -> str | None:
    """The most recently modified restorable experiment in a local storage folder."""
    if "://" in storage or not Path(storage).is_dir():
        return None
    folders = sorted((p for p in Path(storage).iterdir() if p.is_dir()),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    return next((p.name for p in folders if can_restore(storage, p.name)), None)


def unfinished(grid, num_samples: int) -> bool:
    """True when the run was interrupted: fewer trials than asked for, or one not yet ended.

    On Ctrl-C, Ray 2.60 stops the running trials and marks them TERMINATED like finished ones;
    only a trial that ended on its own (returned, or was stopped by the scheduler) has
    done=True in its last result.
    """
    if len(grid) < num_samples or grid.num_terminated + grid.num_errors < len(grid):
        return True
    return any(r.error is None and not (r.metrics or {}).get("done") for r in grid)
