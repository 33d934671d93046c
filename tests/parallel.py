"""The suite on two workers at once (pytest-xdist; `-n 2` in pyproject.toml, `-n 0` runs it in one process).

Much of the suite waits (Ray starting, child processes importing torch, a GCS probe's timeout): one process
kept 2 cores ~64 % busy. A worker takes whole groups, never single tests: a module (its module-scoped Ray or
cluster is started once), or the modules GROUPS joins because they share a session-scoped fixture (the smoke
search that five modules read is run once, by one worker). Each worker runs its own local Ray (address
"local", never a Ray another worker started), in its own temp folder.
"""

from __future__ import annotations

import os
from pathlib import Path

GROUPS = {**dict.fromkeys(("test_search", "test_watch", "test_notebook", "test_extend", "test_resume"), "searched"),
          # the trainable's Tune test leaves its local Ray to the trial-fault search
          **dict.fromkeys(("test_trainable", "test_trial_failures"), "trials")}
# Handed out first, the longest first (one process, 2026-12-06: ~150, 77, 62, 46, 43, 32, 31 s), so that
# no worker is left running a long group alone at the end. The order only balances the two workers.
LONGEST_FIRST = ("searched", "test_retrain", "test_cluster", "test_interrupt", "test_two_nodes", "trials", "test_bench")


def group(nodeid: str) -> str:
    """The unit a worker takes: tests/test_x.py::test_y -> "test_x", or its shared group."""
    module = Path(nodeid.split("::", 1)[0]).stem
    return GROUPS.get(module, module)


def in_worker() -> bool:
    return "PYTEST_XDIST_WORKER" in os.environ


def longest_first(items: list) -> None:
    """Sorts a worker's collection so that the groups come in LONGEST_FIRST order, each group's tests together
    and in their own order; the scheduler hands groups out in the order they first appear."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: (rank.get(group(item.nodeid), len(rank)), group(item.nodeid)))


def scheduler(config, log):
    """For `--dist loadfile` (pyproject.toml's): xdist's loadfile scheduler, with GROUPS as one file each and no
    reordering by test count. Another --dist gets xdist's own (None)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Groups(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group(nodeid)

    config.option.loadscopereorder = False
    return Groups(config, log)


def ensure_ray_token() -> None:
    """Writes ~/.ray/auth_token before the workers start, if it is missing: a local Ray with token auth (Ray 2.60's
    default) creates one when none exists, and two workers starting their first Ray at once could each write their
    own, one Ray then holding a token its file no longer has."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    path = Path("~/.ray/auth_token").expanduser()
    if not path.exists():
        from ray._private.authentication.authentication_token_setup import generate_and_save_token

        generate_and_save_token()  # what the first local ray.init would do
