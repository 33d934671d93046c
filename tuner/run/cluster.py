"""Connecting to Ray: a local one, or an existing cluster whose address is checked in bounded steps (token auth on)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

CONNECT_TIMEOUT_S = 5
HTTP_PROBE_S = 2
GCS_PROBE_MS = 3000  # for the GCS's reply, after the ~4 s the probe allows for connecting
GCS_PROBE_LIMIT_S = 20  # the probe process in all, Python and Ray's imports included
TOKEN_FILE = Path("~/.ray/auth_token").expanduser()
# Ray Client cannot carry a search: ray[tune] installs no grpc, so no head serves ray://, and the driver writes
# the study, the results and the confirm runs on its own disk: it belongs on a node of the cluster.
CLIENT_REFUSED = ("--address {address}: Ray Client (ray://) is not supported; run the search on a node of the "
                  "cluster (one that ran `ray start`) with --address HEAD_IP:6379")


# Whether this process's Ray was started (or joined) by connect(): disconnect() ends only that one. Ray's own
# connection is process-wide state, so this is too.
_connected_here = False


def connect(address: str | None, dashboard: bool = False) -> None:
    """Start a local Ray or join `address`; ConnectionError (one line) says what is wrong. Joining checks the address in
    ~20 s: ray.init retries a non-GCS address for minutes (URL, no listener, dashboard, bad token, dead "auto", ...).
    A Ray this process already runs (a notebook's, a script's) is used as it is and left running; not with --address."""
    global _connected_here
    import ray

    if ray.is_initialized():
        if address:
            raise ConnectionError(f"--address {address}: this process already runs Ray (ray.init was called); drop "
                                  "--address to search on that Ray, or call ray.shutdown() first")
        return
    start_or_join(address, dashboard)
    _connected_here = True  # only once ray.init has succeeded: a refused address leaves nothing to end


def start_or_join(address: str | None, dashboard: bool) -> None:
    """ray.init: a local Ray, or `address` once it has passed the bounded checks."""
    import ray

    if not address:
        # Ray 2.60 turns token auth on for a local Ray; we keep it: its gRPC servers bind every interface whatever
        # we ask (127.0.0.1 maps to the node IP) and the token guards them. No dashboard unless asked, then on loopback.
        ray.init(address="local", include_dashboard=dashboard, dashboard_host="127.0.0.1",
                 configure_logging=True, logging_level="WARNING")
        return
    if address.startswith("ray://"):
        raise ConnectionError(CLIENT_REFUSED.format(address=address))
    address = resolve_auto(address)
    check_gcs_address(address)
    check_local_node(address)
    speak_token_auth()
    try:
        ray.init(address=address, logging_level="WARNING")
    except Exception as err:  # Ray raises ConnectionError, AuthenticationError, RuntimeError...
        raise ConnectionError(join_error(address, err)) from None


def join_error(address: str, err: BaseException) -> str:
    """Ray's first line plus a token hint (Ray often says only "Failed to connect"; a bad token shows in the cause)."""
    hint = ""
    if not token_available():
        hint = ("; if the cluster uses token authentication, put its token in ~/.ray/auth_token "
                "(or set RAY_AUTH_TOKEN_PATH) and RAY_AUTH_MODE=token")
    elif "InvalidAuthToken" in f"{err} {err.__cause__}":
        hint = ("; the cluster rejected our auth token: use the token the cluster was started with "
                "(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)")
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    return f"cannot join the Ray cluster at {address}: {first}{hint}"


def check_gcs_address(address: str) -> None:
    """Fail in seconds unless Ray's GCS answers at host:port and accepts our token."""
    if address.lower().startswith(("http://", "https://")):
        raise ConnectionError(f"--address takes Ray's GCS host:port (port 6379 unless `ray start --head "
                              f"--port` chose another), not the dashboard URL {address}")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        raise ConnectionError(f"--address {address!r} is not host:port (e.g. 127.0.0.1:6379)")
    try:
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S)
    except OSError as err:
        raise ConnectionError(f"no Ray cluster answers at {address} ({err.strerror or err}); "
                              "start one with `ray start --head` or drop --address for a local Ray") from None
    with sock:
        # An HTTP server answers an HTTP request with "HTTP/"; the GCS (gRPC) with HTTP/2 frames.
        sock.settimeout(HTTP_PROBE_S)
        try:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            reply = sock.recv(5)
        except OSError:  # silent or closed: the GCS probe below says what it is
            reply = b""
    if reply.startswith(b"HTTP/"):
        raise ConnectionError(f"{address} is an HTTP server (Ray's dashboard listens on 8265), not Ray's "
                              "GCS port (default 6379); use the address `ray start --head` printed")
    probe_gcs(address)


def resolve_auto(address: str) -> str:
    """"auto" -> ray.init's pick ($RAY_ADDRESS, else /tmp/ray/ray_current_cluster), so the checks see a stale one."""
    if address != "auto":
        return address
    from ray._private import services

    try:
        found = services.get_ray_address_from_environment("auto", None)
    except ConnectionError:
        raise ConnectionError("--address auto: no Ray cluster runs on this machine; start one with "
                              "`ray start --head`, or give its host:port") from None
    return found if found and found != "auto" else address


def check_local_node(address: str) -> None:
    """A driver joins through a Ray node on its machine; without one, ray.init seeks a local raylet for 60 s."""
    try:
        from ray._private.services import find_node_ids
        local = find_node_ids()
    except (ImportError, AttributeError, OSError):  # a Ray without this private helper: ray.init decides
        return
    if not local:
        raise ConnectionError(f"the Ray cluster at {address} answers, but this machine runs no Ray node: run "
                              f"`ray start --address={address}` here first, or run the search on a cluster node")


def speak_token_auth() -> None:
    """A token is on hand: speak token auth, as `ray start` clusters in Ray >= 2.59 expect."""
    if token_available() and not os.environ.get("RAY_AUTH_MODE"):
        os.environ["RAY_AUTH_MODE"] = "token"


# ray.init's handshake (cluster id, token) by Ray's standalone GCS client, bounded; in a child, its C++ logs stay there.
PROBE = """import sys
try:
    from ray._raylet import InnerGcsClient
    standalone = InnerGcsClient.standalone
except (ImportError, AttributeError):
    sys.exit(3)  # a Ray without this private client: ray.init checks alone
try:
    standalone(sys.argv[1], None, int(sys.argv[2]))
except Exception as err:
    print((str(err).strip() or type(err).__name__).splitlines()[0])
    sys.exit(1)
"""


def probe_gcs(address: str) -> None:
    """A bounded handshake: says in seconds (ray.init retries for minutes) if the GCS is there and takes our token."""
    speak_token_auth()
    env = {**os.environ, "RAY_gcs_rpc_server_connect_timeout_s": "2"}  # Ray's default 5, twice
    try:
        done = subprocess.run([sys.executable, "-c", PROBE, address, str(GCS_PROBE_MS)], env=env,
                              capture_output=True, text=True, timeout=GCS_PROBE_LIMIT_S)
    except subprocess.TimeoutExpired:
        raise ConnectionError(f"{address} answers, but no Ray GCS replied within {GCS_PROBE_LIMIT_S} s; "
                              "use the address `ray start --head` printed (port 6379 by default)") from None
    if done.returncode in (0, 3):
        return
    error = (done.stdout.strip() or done.stderr.strip() or "no reply").splitlines()[-1][:150]
    if "InvalidAuthToken" in error:
        raise ConnectionError(join_error(address, RuntimeError(error)))
    raise ConnectionError(f"{address} answers, but not as Ray's GCS ({error}); "
                          "use the address `ray start --head` printed (port 6379 by default)")


def token_available() -> bool:
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or TOKEN_FILE.is_file())


def disconnect() -> None:
    """End the Ray connect() started or joined; a caller's Ray stays up."""
    global _connected_here
    import ray

    if _connected_here and ray.is_initialized():
        ray.shutdown()
    _connected_here = False
