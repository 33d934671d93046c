"""The suite's split over two workers (tests/parallel.py): groups name real modules, whole modules stay together."""

from pathlib import Path

import parallel

TESTS = Path(__file__).resolve().parent
MODULES = {p.stem for p in TESTS.glob("test_*.py")}


def test_every_grouped_or_ranked_name_is_a_module_or_a_group_of_them():
    assert set(parallel.GROUPS) <= MODULES  # a renamed module would silently leave its group
    groups = {parallel.group(f"tests/{m}.py::t") for m in MODULES}
    assert set(parallel.LONGEST_FIRST) <= groups


def test_a_module_is_one_unit_and_the_shared_search_readers_are_one():
    assert parallel.group("tests/test_model.py::test_a") == parallel.group("tests/test_model.py::TestX::test_b[1]")
    readers = {parallel.group(f"tests/{m}.py::t") for m in ("test_search", "test_watch", "test_notebook",
                                                               "test_extend", "test_resume")}
    assert readers == {"searched"}


def test_a_worker_sorts_the_longest_groups_first_keeping_each_groups_order():
    class Item:
        def __init__(self, nodeid):
            self.nodeid = nodeid

    ids = ["tests/test_model.py::a", "tests/test_retrain.py::b", "tests/test_model.py::c", "tests/test_search.py::d",
           "tests/test_extend.py::e", "tests/test_retrain.py::f"]
    items = [Item(i) for i in ids]
    parallel.longest_first(items)
    assert [i.nodeid[-1] for i in items] == ["d", "e", "b", "f", "a", "c"]
