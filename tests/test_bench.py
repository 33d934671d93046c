"""The benchmarks run end to end at --quick sizes and print their tables (speeds are never asserted)."""

import json

import pytest
import torch

from bench import accuracy_parity, common, gpu_bench, memory, train_speed
from mnist_net.data import N_TRAIN
from mnist_net.runtime import cpu_has_bf16


def table_rows(text: str) -> dict[str, list[str]]:
    """First cell -> the other cells, for every markdown table row in `text`."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_train_speed_quick_prints_and_records_its_table(tmp_path, capsys):
    results = tmp_path / "RESULTS.md"
    assert train_speed.main(["--quick", "--record", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    expected = ["seed", "fast fp32", "+ channels_last"] + (["+ bf16"] if cpu_has_bf16() else [])
    assert [k for k in rows if k != "variant"] == expected
    assert rows["seed"][3:5] == ["1.00x", "1.00x"]  # the baseline's ratios to itself
    assert all(float(rows[k][1]) > 0 for k in expected)
    recorded = results.read_text()
    assert recorded.startswith("# Benchmark results")
    assert "## train_speed" in recorded and "load average" in recorded and "torchvision" in recorded
    assert "`python -m bench.train_speed --quick --record --results" in recorded
    assert table_rows(recorded).keys() == rows.keys()


def test_accuracy_parity_quick_prints_its_table_and_records_nothing(tmp_path, capsys):
    results = tmp_path / "RESULTS.md"
    assert accuracy_parity.main(["--quick", "--results", str(results)]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert {"1", "mean", "sd across seeds", "train img/s"} <= rows.keys()
    for acc in rows["1"][:2]:
        assert 0 <= float(acc) <= 100
    assert not results.exists()  # --quick records only with --record


def test_memory_quick_measures_both_paths_in_fresh_processes(tmp_path, capsys):
    assert memory.main(["--quick", "--results", str(tmp_path / "RESULTS.md")]) == 0
    rows = table_rows(capsys.readouterr().out)
    for path in ("seed", "fast"):
        images, baseline, peak = (float(x) for x in rows[path][:3])
        assert images == memory.QUICK["images"]
        assert 0 < baseline <= peak
    assert float(rows["seed"][4]) > 0  # the seed path's DataLoader workers were measured
    assert not (tmp_path / "RESULTS.md").exists()


def test_gpu_bench_smoke_on_cpu_with_random_data(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--device", "cpu", "--quick", "--procs", "2", "--data-dir", str(tmp_path / "no-mnist"),
            "--out", str(out)]
    assert gpu_bench.main(argv) == 0
    assert "## Time per training epoch" in capsys.readouterr().out
    result = json.loads((out / "gpu_bench.json").read_text())
    assert result["data"].startswith("RANDOM")
    paths = [e["path"] for e in result["epochs"]]
    assert paths[0].startswith("seed recipe") and "fast fp32 NCHW" in paths
    assert all(e["images"] == gpu_bench.QUICK["images"] for e in result["epochs"])
    [procs] = result["procs"]
    assert procs["k"] == 2 and procs["images"] == 2 * gpu_bench.QUICK["proc_images"]
    assert "## K training processes" in (out / "gpu_bench.md").read_text()


def test_gpu_bench_reads_idx_files(tmp_path, splits):
    """The IDX reader gpu_bench uses where mnist_net.data is not wanted agrees with torchvision's."""
    from mnist_net.data import DEFAULT_DATA_DIR

    images, labels, source = gpu_bench.load_train(DEFAULT_DATA_DIR)
    assert source.startswith("MNIST from")
    assert torch.equal(images[:N_TRAIN], splits["train"].images)
    assert torch.equal(labels[N_TRAIN:], splits["val"].labels)


def test_seed_path_subset_is_the_fast_paths_subset(splits):
    train = splits["train"]
    idx = common.subset_indices(N_TRAIN, 300, seed=0)
    assert torch.equal(train.images[idx], train.subset(300, seed=0).images)


@pytest.mark.parametrize(("argv", "record"), [([], True), (["--no-record"], False), (["--quick"], False),
                                              (["--quick", "--record"], True)])
def test_full_runs_record_and_quick_runs_do_not(argv, record):
    assert common.wants_record(train_speed.build_parser().parse_args(argv)) is record


def test_help_states_the_defaults():
    text = train_speed.build_parser().format_help()
    assert f"default: {train_speed.IMAGES}" in text and f"default: {train_speed.REPEATS}" in text
