"""Atomic file writes (mnist_net.files): an exception or Ctrl-C mid-write leaves the old file
whole (or absent) and no temp file. README "Reliability and security" cites this test; the
disk filling while a search publishes its results is tests/test_trial_failures.py.
"""

import errno
import json
import os

import pytest

from mnist_net import files


def test_atomic_write_that_fails_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "trials.csv"
    path.write_bytes(b"old complete table\n")
    with pytest.raises(OSError, match="No space left"):
        with files.atomic_path(path) as tmp:
            tmp.write_bytes(b"half a ta")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert path.read_bytes() == b"old complete table\n"
    new = tmp_path / "new.json"
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_path(new) as tmp:
            tmp.write_bytes(b"{")
            raise KeyboardInterrupt  # Ctrl-C mid-write
    assert not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trials.csv"]
    files.write_json(new, {"ok": 1})
    assert json.loads(new.read_text()) == {"ok": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.json", "trials.csv"]
