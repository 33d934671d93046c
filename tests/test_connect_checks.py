"""--address auto, ray:// and a driver machine without a Ray node fail in seconds, in one line,
before ray.init (which would retry a dead GCS for minutes, or wait 60 s for a local raylet).
No Ray is started: ray.init is replaced by a failure."""

import time

import pytest
import ray
from ray._private import services
from raysession import free_port

from tuner.run import cluster


@pytest.fixture(autouse=True)
def no_ray_init(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("ray.init was reached: the address was not checked first")

    monkeypatch.setattr(ray, "init", refuse)


def one_line_error(address: str) -> str:
    start = time.monotonic()
    with pytest.raises(ConnectionError) as err:
        cluster.connect(address)
    assert time.monotonic() - start < 30
    assert "\n" not in str(err.value)
    return str(err.value)


def test_auto_naming_a_dead_cluster_fails_fast(monkeypatch):
    stale = f"127.0.0.1:{free_port()}"  # what a stale /tmp/ray/ray_current_cluster would name
    monkeypatch.setattr(services, "get_ray_address_from_environment", lambda addr, temp_dir: stale)
    assert one_line_error("auto").startswith(f"no Ray cluster answers at {stale}")


def test_auto_with_no_cluster_says_how_to_start_one(monkeypatch):
    def none_found(addr, temp_dir):
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(services, "get_ray_address_from_environment", none_found)
    assert "ray start --head" in one_line_error("auto")


def test_a_driver_machine_without_a_ray_node_is_told_at_once(monkeypatch):
    monkeypatch.setattr(cluster, "check_gcs_address", lambda address: None)  # a live GCS elsewhere
    monkeypatch.setattr(services, "find_node_ids", lambda: [])
    assert "this machine runs no Ray node: run `ray start --address=10.0.0.5:6379` here" in \
        one_line_error("10.0.0.5:6379")


def test_ray_client_is_refused_in_one_line_before_ray_starts():
    address = f"ray://127.0.0.1:{free_port()}"
    line = one_line_error(address)
    assert line.startswith(f"--address {address}: Ray Client (ray://) is not supported; run the search on a node")
    assert "ray start --head" not in line  # the head runs already: never tell the user to start one
    assert not ray.is_initialized()
