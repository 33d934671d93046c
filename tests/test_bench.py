"""The benchmarks run end to end at --quick sizes and print their tables (speeds are never asserted)."""

import json
import math

import numpy as np
import pytest
import torch

from bench import (
    accuracy_parity,
    bootstrap_methods,
    common,
    cpu_options,
    gpu_bench,
    gpu_paths,
    gpu_procs,
    gpu_report,
    memory,
    train_speed,
)
from mnist_net.data import N_TRAIN
from mnist_net.runtime import cpu_has_bf16
from tuner.space import BATCH_SIZES


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
    """Every section gpu.sh runs on a GPU, at tiny sizes on the CPU (CUDA graphs and compile aside)."""
    out = tmp_path / "out"
    argv = ["--device", "cpu", "--quick", "--images", "96", "--batches", "32", "--procs", "1,2",
            "--data-dir", str(tmp_path / "no-mnist"), "--out", str(out)]
    assert gpu_bench.main(argv) == 0
    printed = capsys.readouterr()
    assert "## 1. Training epoch" in printed.out
    assert "tuner DEFAULT_GPU_SHARE, batch 32" in printed.err and "checkpoint_every auto rule" in printed.err
    result = json.loads((out / "gpu_bench.json").read_text())
    assert result["data"].startswith("RANDOM")
    eager = [e for e in result["epochs"] if e["path"] == "eager"]
    assert {e["precision"] for e in eager} == ({"fp32", "bf16"} if cpu_has_bf16() else {"fp32"})
    assert all(e["images"] == 96 and e["batch"] == 32 and math.isfinite(e["last_loss"]) for e in eager)
    assert result["epochs"][-1]["path"] == "seed recipe"
    # model + momentum (two copies of 593,200 fp32 numbers) + scheduler: ~4.7 MB
    assert 4.6e6 < result["checkpoint"]["bytes"] < 5e6 and result["checkpoint"]["to_cpu_s"] > 0
    assert [(p["k"], p["batch"]) for p in result["procs"]] == [(1, 32), (2, 32)]
    assert all(p["images"] >= p["k"] * gpu_procs.SLICE_STEPS * 32 for p in result["procs"])
    text = (out / "gpu_bench.md").read_text()
    assert "## 3. K training processes" in text and "graphed path not run" in text


def test_gpu_bench_refuses_bad_lists_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        gpu_bench.main(["--device", "cpu", "--procs", "1,x", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_gpu_report_reads_targets_and_defaults_off_the_figures():
    epochs = [{"path": p, "precision": "bf16", "batch": b, "images": 60_000, "median_s": s, "images_per_s": 0}
              for p, b, s in [("eager", 512, 0.4), ("graphed", 512, 0.08), ("eager", 32, 2.0),
                              ("graphed", 32, 0.6)]]
    procs = [{"k": k, "batch": 32, "aggregate_images_per_s": a} for k, a in [(1, 100.0), (4, 350.0), (8, 420.0)]]
    result = {"epochs": epochs, "procs": procs, "checkpoint": {"to_cpu_s": 0.02}}
    targets = gpu_report.target_lines(result)
    assert targets[0].startswith("60k epoch at batch 512 <= 0.1 s: MET (0.080 s")
    assert targets[1].startswith("60k epoch at batch 32 <= 0.5 s: MISSED (0.600 s")
    assert targets[2].endswith("MET (best K=8: 4.20x)")
    informs = gpu_report.informs(result)
    assert "batch 512: fastest graphed bf16 0.080 s, 5.00x the best eager" in informs[1]
    # 0.02 s per save against a 0.08 s epoch: under 5% means one save per 5 epochs
    assert informs[-2].endswith("checkpoint every 5 epoch(s)") and "batch-512" in informs[-2]
    assert informs[-1].endswith("best aggregate at K=8 (4.20x one trial) -> share 1/8 = 0.125")


def test_gpu_bench_reads_idx_files(tmp_path, splits):
    """The IDX reader gpu_bench uses where mnist_net.data is not wanted agrees with torchvision's."""
    from mnist_net.data import DEFAULT_DATA_DIR

    images, labels, source = gpu_paths.load_train(DEFAULT_DATA_DIR)
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


def test_cpu_options_quick_reports_cpu_seconds_per_option(tmp_path, capsys):
    assert cpu_options.main(["--quick", "--results", str(tmp_path / "RESULTS.md")]) == 0
    out = capsys.readouterr().out
    rows = [line.strip("|").split("|") for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    train = [[c.strip() for c in r] for r in rows if len(r) == 6 and r[0].strip() in ("1", "2")]
    layouts = {(r[0], r[3]) for r in train}
    assert layouts == {(t, layout) for t in ("1", "2") for layout in ("channels_last", "NCHW")}
    assert all(float(r[4]) > 0 and float(r[5]) > 0 for r in train)
    assert not (tmp_path / "RESULTS.md").exists()


def test_proxy_designs_spend_the_same_images_on_average_differently_per_batch():
    from bench import proxy_study

    for design in proxy_study.DESIGNS:
        sizes = [proxy_study.images_per_epoch(design, b, 7700) for b in BATCH_SIZES]
        assert abs(sum(sizes) / len(sizes) - 7700) < 5, design
    steps = {b: proxy_study.images_per_epoch("equal-steps", b, 7700) / b for b in BATCH_SIZES}
    assert max(steps.values()) - min(steps.values()) < 0.1  # the same optimizer steps per epoch
    floor = {b: proxy_study.images_per_epoch("step-floor", b, 7700) for b in BATCH_SIZES}
    assert floor[32] == floor[256] < 7700 < floor[512] == 2 * floor[256] and floor[1024] == 4 * floor[256]


def test_proxy_study_quick_ranks_its_designs_against_the_reference(tmp_path, capsys):
    from bench import proxy_study

    assert proxy_study.main(["--quick", "--workers", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "proxy_study.json").read_text())
    assert set(report["result"]) == {*proxy_study.DESIGNS, "reference_top"}
    assert len(list((tmp_path / "runs").glob("*.json"))) == 12  # 3 trials x (3 designs + the reference)
    assert "Kendall τ vs reference" in (tmp_path / "proxy_study.md").read_text()


def test_bootstrap_methods_compares_both_intervals_on_saved_predictions(tmp_path, splits, capsys):
    labels = splits["test"].labels.numpy()[:1000]
    rng = np.random.default_rng(0)
    noisy = [np.where(rng.random(1000) < p, labels, (labels + 1) % 10) for p in (0.9, 0.6)]
    np.savez(tmp_path / "test_predictions.npz", best=noisy[0][None], seed_config=noisy[1][None])
    assert bootstrap_methods.main(["--results", str(tmp_path), "--images", "1000"]) == 0
    out = capsys.readouterr().out
    assert "best: n=1,000  BCa " in out and " percentile " in out
    assert float(out.split("bounds: ")[1].split()[0]) < 1.0  # n = 1k: the methods still nearly agree
