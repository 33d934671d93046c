"""bench/gpu.sh's verdict section (issue 15 item 12) on the CPU at tiny sizes, and its scipy-free
statistics checked against scipy."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from bench import gpu_verdict, verdict_stats
from mnist_net.data import DEFAULT_DATA_DIR


def test_the_verdict_section_trains_both_configs_per_seed_and_pairs_them(tmp_path, capsys):
    configs = tmp_path / "best_config.json"
    configs.write_text(json.dumps({"config": {"lr": 0.05, "momentum": 0.9, "batch_size": 64},
                                   "seed_config": {"lr": 0.01, "momentum": 0.9, "batch_size": 512}}))
    code = gpu_verdict.main(["--device", "cpu", "--quick", "--configs", str(configs), "--train-images", "256",
                             "--test-images", "200", "--data-dir", str(DEFAULT_DATA_DIR), "--out", str(tmp_path)])
    assert code == 0
    result = json.loads((tmp_path / "gpu_verdict.json").read_text())
    assert [r["seed"] for r in result["runs"]["best"]] == [1, 2] == [r["seed"] for r in result["runs"]["seed_config"]]
    assert result["configs"]["best"] == {"lr": 0.05, "momentum": 0.9, "batch_size": 64}
    assert len(result["mcnemar"]) == 2 and result["recipe"] == {"epochs": 1, "train_images": 256, "seeds": 2}
    assert result["verdict"].startswith("best - seed config: ") and result["verdict"] in capsys.readouterr().err


def test_no_mnist_under_data_dir_is_one_line_naming_the_readme(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        gpu_verdict.main(["--device", "cpu", "--data-dir", str(tmp_path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "bench/README.md" in err and err.count("\n") == 1


@pytest.mark.parametrize("b, c", [(0, 0), (3, 0), (12, 7), (40, 61), (150, 149)])
def test_mcnemar_matches_scipys_binomial_test(b, c):
    a = [True] * b + [False] * c + [True] * 5
    other = [False] * b + [True] * c + [True] * 5
    found = verdict_stats.mcnemar(a, other)
    expected = stats.binomtest(b, b + c, 0.5).pvalue if b + c else 1.0
    assert (found["b"], found["c"]) == (b, c) and found["pvalue"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("n", [2, 3, 5, 12])
def test_paired_t_interval_matches_scipy(n):
    rng = np.random.default_rng(n)
    a, b = list(99 + rng.normal(0, 0.1, n)), list(99 + rng.normal(0, 0.1, n))
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    low, high = verdict_stats.paired_t_ci(a, b)
    assert (low, high) == (pytest.approx(ci.low, abs=2e-3), pytest.approx(ci.high, abs=2e-3))
    assert math.isnan(verdict_stats.paired_t_ci(a[:1], b[:1])[0])
