"""Helpers for tests that run tuner.search: in this process on a local Ray, or watched in a child."""

import time

import pytest
import ray

from tuner import search


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
