"""Shared fixtures: the real MNIST splits, loaded once, and small seeded subsets of them.

The suite is a CPU suite on every machine: GPUs are hidden (CUDA_VISIBLE_DEVICES="") before
torch or Ray is imported, so tests and the processes they start (which inherit the
environment: searches, `ray start`, Ray's workers) see no GPU, and a machine with GPUs runs
the same tests with the same results. S5_TEST_GPUS=1 keeps the GPUs visible. S5_CPU_BF16=0
runs the suite as a CPU without native bf16 would (fp32 under precision "auto").
"""

import os

if os.environ.get("S5_TEST_GPUS") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ.setdefault("MPLBACKEND", "Agg")  # plots render headless, before pyplot is imported

# First of the imports: mnist_net's __init__ sets OMP_WAIT_POLICY (idle OpenMP threads sleep; on 2
# shared cores spinning made each step ~10x slower), which torch reads once, when it loads libgomp.
import mnist_net  # noqa: E402, F401

# isort: split
import pytest  # noqa: E402

# Ray's log handler keeps the stderr it sees at import: import it here, under pytest's
# session-long capture, not inside a test whose capfd stream closes afterwards and turns
# Ray's later warnings into "--- Logging error ---" tracebacks in another test.
import ray  # noqa: E402, F401
import torch  # noqa: E402

from mnist_net.data import DEFAULT_DATA_DIR, Split, load_splits  # noqa: E402

# isort: split
import parallel  # noqa: E402
import raysession  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def splits() -> dict[str, Split]:
    """train/val/train+val/test on the CPU; acquires MNIST into the cache if it is missing."""
    return load_splits(DEFAULT_DATA_DIR)


@pytest.fixture(scope="session")
def small(splits):
    """small("val", 200) -> a fixed seeded subset of that split (keeps CPU tests fast)."""

    def make(name: str, size: int, seed: int = 0) -> Split:
        return splits[name].subset(size, seed)

    return make


@pytest.fixture
def local_ray():
    """A local Ray, started as tuner.search starts one and kept for the next test that asks for it: the searches
    and confirm stages these tests run in this process use it as a caller's Ray (raysession.shared_ray)."""
    raysession.shared_ray()


def pytest_runtest_setup(item):
    """A test that does not ask for local_ray runs with no shared Ray up: it may start a Ray of its own, or check
    that a command refuses before Ray starts, which a Ray up would hide. Ended before its fixtures..."""
    if "local_ray" not in item.fixturenames:
        raysession.end_shared_ray()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    """...and again before its body: the session's smoke search (`searched`) may have started it meanwhile."""
    if "local_ray" not in item.fixturenames:
        raysession.end_shared_ray()


def pytest_sessionfinish(session, exitstatus):
    raysession.end_shared_ray()


def pytest_configure(config):
    if not parallel.in_worker() and getattr(config.option, "numprocesses", None):
        parallel.ensure_ray_token()  # in the controller, before the workers start


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    return parallel.scheduler(config, log)


def pytest_collection_modifyitems(config, items):
    if parallel.in_worker():
        parallel.longest_first(items)


@pytest.fixture(scope="session")
def searched(tmp_path_factory):
    """One real smoke search, run once for the modules that only read a finished search (the "searched" group of
    tests/parallel.py's GROUPS, one worker's): tests/helpers_search.shared_search, on the shared local Ray."""
    from helpers_search import shared_search

    raysession.shared_ray()
    return shared_search(tmp_path_factory.mktemp("searched") / "results")
