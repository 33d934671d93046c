"""Resource planning, search settings and their presets: pure functions, no Ray started."""

import math

import pytest

from tuner.plan import placement
from tuner.plan.placement import place
from tuner.search import build_parser
from tuner.settings import (
    DEFAULT_GPU_SHARE,
    DEFAULT_TIME_BUDGET_S,
    SMOKE,
    SearchSettings,
    fidelity_flags,
    from_args,
    with_default_budget,
)


def test_cpu_only_box_runs_one_cpu_trials_and_never_asks_for_a_gpu():
    p = place([{"CPU": 2.0, "memory": 8e9}])
    assert (p.gpu_per_trial, p.cpu_per_trial, p.concurrent) == (0.0, 1, 2)
    assert p.resources == {"cpu": 1, "gpu": 0.0}
    assert (p.gpus, p.cpus, p.nodes) == (0, 2.0, 1)
    assert "no GPU" in p.describe() and "2 trials at once" in p.describe()


def test_one_gpu_eight_cpus_packs_four_quarter_gpu_trials():
    p = place([{"GPU": 1.0, "CPU": 8.0}])
    assert (p.gpu_per_trial, p.cpu_per_trial, p.concurrent) == (DEFAULT_GPU_SHARE, 2, 4)
    assert p.resources == {"cpu": 2, "gpu": 0.25}


def test_four_gpus_sixteen_cpus_packs_sixteen_trials():
    p = place([{"GPU": 4.0, "CPU": 16.0}])
    assert (p.gpu_per_trial, p.cpu_per_trial, p.concurrent) == (0.25, 1, 16)


def test_two_gpu_nodes_add_up():
    p = place([{"GPU": 1, "CPU": 8}, {"GPU": 1, "CPU": 8}])
    assert (p.gpus, p.cpus, p.nodes) == (2, 16, 2)
    assert (p.gpu_per_trial, p.cpu_per_trial, p.concurrent) == (0.25, 2, 8)


def test_gpu_node_plus_cpu_only_node_places_trials_on_the_gpu_node_only():
    # Every trial asks for a GPU share, so the CPU-only node takes none: 4 slots, not 4 + 16.
    # (Mixing GPU and CPU trials would make the trials' speeds, hence ASHA's rungs, incomparable.)
    p = place([{"GPU": 1, "CPU": 8}, {"CPU": 16}])
    assert (p.gpu_per_trial, p.cpu_per_trial, p.concurrent) == (0.25, 2, 4)
    assert (p.gpus, p.cpus, p.nodes) == (1, 24, 2)


def test_gpus_per_trial_zero_on_a_gpu_box_plans_cpu_trials():
    p = place([{"GPU": 1, "CPU": 8}], gpus_per_trial=0)
    assert p.gpu_per_trial == 0 and p.resources["gpu"] == 0
    assert (p.cpu_per_trial, p.concurrent) == (1, 8)


def test_explicit_gpu_share_is_used():
    p = place([{"GPU": 2, "CPU": 16}], gpus_per_trial=0.5)
    assert (p.gpu_per_trial, p.cpu_per_trial, p.concurrent) == (0.5, 4, 4)
    assert "raised" not in p.describe()


@pytest.mark.parametrize("share", [1.5, 2, 4])
def test_more_than_one_gpu_per_trial_is_refused(share):
    # a trial trains on one device: a second GPU would sit idle, uncounted
    with pytest.raises(ValueError, match=r"a trial trains on one GPU; use a share in \(0, 1\]"):
        place([{"GPU": 4, "CPU": 16}], gpus_per_trial=share)


@pytest.mark.parametrize("share", [0.25, 1])
def test_gpus_per_trial_without_a_gpu_is_an_error(share):
    with pytest.raises(ValueError, match="no GPU"):
        place([{"CPU": 8}, {"CPU": 8}], gpus_per_trial=share)


def test_a_node_without_a_whole_gpu_is_an_error():
    with pytest.raises(ValueError, match="no node has a whole GPU"):
        place([{"GPU": 0.5, "CPU": 8}])


def per_gpu(p) -> int:
    """How many of the plan's trials Ray can put on one GPU."""
    return math.floor(1 / p.gpu_per_trial + 1e-9)


def test_eight_gpus_sixteen_cpus_use_every_gpu():
    # 0.25 would let Ray put the 16 trials on GPUs 0-3, four each, and leave 4-7 idle
    p = place([{"GPU": 8, "CPU": 16}])
    assert (p.gpu_per_trial, p.cpu_per_trial, p.concurrent) == (0.5, 1, 16)
    assert per_gpu(p) * 8 == p.concurrent  # every slot is taken, so every GPU holds 2
    assert "raised from 0.25: at most 2 on any GPU" in p.describe()


def test_max_concurrent_below_the_gpu_count_gives_each_trial_a_whole_gpu():
    # 4 trials at 0.25 would all land on GPU 0; at 1.0 Ray must use four GPUs
    p = place([{"GPU": 8, "CPU": 64}], max_concurrent=4)
    assert (p.gpu_per_trial, p.concurrent) == (1.0, 4)
    assert p.cpu_per_trial == 8  # the node's CPUs split among the trials its GPUs hold
    p = place([{"GPU": 8, "CPU": 64}], max_concurrent=12)
    # 12 at 0.5 would fill GPUs 0-5 and idle 6-7: one per GPU instead, all 8 busy
    assert (p.gpu_per_trial, p.concurrent) == (1.0, 8)
    p = place([{"GPU": 8, "CPU": 64}], max_concurrent=16)
    assert (p.gpu_per_trial, p.concurrent) == (0.5, 16)


def test_slots_count_whole_gpus():
    # a trial cannot straddle two GPUs: 3 per GPU at 0.3, so 4 GPUs fit 12 (not 4 / 0.3 = 13)
    p = place([{"GPU": 4, "CPU": 16}], gpus_per_trial=0.3)
    assert (p.gpu_per_trial, p.concurrent) == (0.3, 12)
    p = place([{"GPU": 4, "CPU": 64}], gpus_per_trial=0.3)
    assert (p.gpu_per_trial, p.cpu_per_trial, p.concurrent) == (0.3, 5, 12)


def test_mixed_gpu_and_gpu_less_nodes_count_only_the_gpu_nodes_slots():
    p = place([{"GPU": 2, "CPU": 8}, {"CPU": 64}, {"GPU": 2, "CPU": 8}])
    assert (p.gpu_per_trial, p.cpu_per_trial, p.concurrent) == (0.25, 1, 16)  # 4 GPUs x 4, not + 64 CPU slots
    assert (p.gpus, p.cpus, p.nodes) == (4, 80, 3)
    # a GPU node short of CPUs caps the trials per GPU everywhere, so no GPU node idles a GPU
    p = place([{"GPU": 4, "CPU": 4}, {"GPU": 4, "CPU": 32}, {"CPU": 16}])
    assert (p.gpu_per_trial, p.cpu_per_trial, p.concurrent) == (1.0, 1, 8)


def test_max_concurrent_caps_but_never_raises():
    assert place([{"GPU": 4, "CPU": 16}], max_concurrent=3).concurrent == 3
    assert place([{"GPU": 4, "CPU": 16}], max_concurrent=3).gpu_per_trial == 1.0  # never two on one GPU
    assert place([{"CPU": 2}], max_concurrent=1).concurrent == 1
    assert place([{"CPU": 2}], max_concurrent=50).concurrent == 2


def test_cpus_per_trial_is_honoured_and_too_many_is_an_error():
    assert place([{"CPU": 8}], cpus_per_trial=4).concurrent == 2
    p = place([{"GPU": 1, "CPU": 8}], cpus_per_trial=4)
    assert (p.cpu_per_trial, p.concurrent, p.gpu_per_trial) == (4, 2, 0.5)  # CPUs, not the GPU, limit it
    with pytest.raises(ValueError, match="no node can fit one trial"):
        place([{"CPU": 2}], cpus_per_trial=4)
    with pytest.raises(ValueError, match="no node can fit one trial"):
        place([{"CPU": 4}, {"CPU": 4}], cpus_per_trial=6)  # 8 in total, but no single node has 6
    with pytest.raises(ValueError, match="no node can fit one trial"):
        place([{"GPU": 1, "CPU": 8}], cpus_per_trial=16)


def test_big_cpu_box_gives_each_trial_a_few_threads():
    p = place([{"CPU": 64}])
    assert (p.cpu_per_trial, p.concurrent) == (8, 8)


def test_alive_nodes_reads_only_alive_nodes(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 2.0}},
                                               {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}])
    assert placement.alive_nodes() == [{"CPU": 2.0}]


# --- SearchSettings -------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("num_samples", 0), ("num_samples", -3), ("num_samples", 2.5), ("max_epochs", 0),
    ("confirm_seeds", 0), ("train_size", 0), ("eval_size", -1), ("max_concurrent", 0),
    ("cpus_per_trial", 0), ("confirm_epochs", 0), ("confirm_train_size", 0),
    ("gpus_per_trial", -0.5), ("gpus_per_trial", 1.5), ("gpus_per_trial", 2.5), ("gpus_per_trial", 2),
    ("train_size", 50_001), ("eval_size", 10_001), ("num_samples", True), ("train_size", True),
    ("seed", -1), ("seed", 1.5), ("fidelity_mode", "huge"),
])
def test_search_settings_reject_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        SearchSettings(**{field: value})


@pytest.mark.parametrize("g", [0, 0.1, 0.25, 1, 1.0])
def test_search_settings_accept_gpu_shares_up_to_one(g):
    assert SearchSettings(gpus_per_trial=g).gpus_per_trial == g


@pytest.mark.parametrize("g", [2, 4.0, 1.01])
def test_search_settings_refuse_more_than_one_gpu_per_trial(g):
    with pytest.raises(ValueError, match="a trial trains on one GPU"):
        SearchSettings(gpus_per_trial=g)


@pytest.mark.parametrize("max_epochs, grace, rf", [
    (1, 1, 2), (2, 1, 2), (3, 1, 2), (6, 1, 2), (7, 1, 3), (19, 1, 3), (20, 2, 3), (35, 3, 3),
])
def test_asha_grace_period_and_reduction_factor(max_epochs, grace, rf):
    s = SearchSettings(max_epochs=max_epochs)
    assert (s.grace_period, s.reduction_factor) == (grace, rf)


def test_search_settings_round_trip_and_bad_file(tmp_path):
    s = SearchSettings(num_samples=5, max_epochs=3, train_size=512, gpus_per_trial=0.5, fidelity_mode="smoke")
    s.save(tmp_path / "s.json")
    assert SearchSettings.load(tmp_path / "s.json") == s
    (tmp_path / "bad.json").write_text('{"num_samples": 5, "colour": "red"}')
    for name in ("bad.json", "missing.json"):
        with pytest.raises(ValueError, match="cannot read the saved search settings"):
            SearchSettings.load(tmp_path / name)


# --- settings.from_args: defaults < smoke preset < explicit flags; the default time budget -----

def settings(argv, has_gpu):
    args = build_parser().parse_args(argv)
    return with_default_budget(from_args(args), has_gpu, fidelity_flags(args))


def test_no_gpu_and_no_budget_flag_plans_to_the_default_time_budget():
    s = settings([], has_gpu=False)
    assert (s.fidelity_mode, s.time_budget_s, s.budget_plan) == ("time", DEFAULT_TIME_BUDGET_S, None)  # planned later
    # flags that don't change the cost per trial keep the budget
    s = settings(["--num-samples", "8", "--seed", "3", "--max-concurrent", "1"], has_gpu=False)
    assert (s.fidelity_mode, s.time_budget_s, s.num_samples, s.seed, s.max_concurrent) == ("time", 1200, 8, 3, 1)


@pytest.mark.parametrize("flag", ["--max-epochs", "--train-size", "--eval-size", "--confirm-seeds",
                                  "--confirm-epochs"])
def test_any_fidelity_flag_turns_the_default_time_budget_off(flag):
    s = settings([flag, "3"], has_gpu=False)
    assert (s.fidelity_mode, s.time_budget_s) == ("full", None)
    assert getattr(s, flag[2:].replace("-", "_")) == 3
    # ...unless a time budget is asked for: the flag is then fixed and the rest planned
    s = settings([flag, "3", "--time-budget", "1.5h"], has_gpu=False)
    assert (s.fidelity_mode, s.time_budget_s, getattr(s, flag[2:].replace("-", "_"))) == ("time", 5400, 3)


def test_a_time_budget_on_a_gpu_machine_is_planned_too():
    s = settings(["--time-budget", "90s"], has_gpu=True)
    assert (s.fidelity_mode, s.time_budget_s) == ("time", 90)


def test_a_gpu_gets_the_full_defaults():
    s = settings([], has_gpu=True)
    assert s == SearchSettings()
    assert (s.fidelity_mode, s.max_epochs, s.train_size, s.num_samples) == ("full", 20, None, 32)


@pytest.mark.parametrize("has_gpu", [False, True])
def test_smoke_preset_then_explicit_flags(has_gpu):
    s = settings(["--smoke-test"], has_gpu=has_gpu)
    assert s.fidelity_mode == "smoke"
    assert {k: getattr(s, k) for k in SMOKE} == SMOKE
    s = settings(["--smoke-test", "--max-epochs", "3", "--num-samples", "6"], has_gpu=has_gpu)
    assert (s.fidelity_mode, s.max_epochs, s.num_samples, s.train_size) == ("smoke", 3, 6, 512)


def test_from_args_rejects_what_settings_reject():
    with pytest.raises(ValueError, match="train_size"):
        settings(["--train-size", "60000"], has_gpu=True)
    with pytest.raises(ValueError, match="gpus_per_trial"):
        settings(["--gpus-per-trial", "1.5"], has_gpu=True)


def test_nodes_that_train_in_different_precisions_get_fp32_for_every_trial(capsys):
    """--precision auto on mixed nodes: one precision every trial's device has, said in one line."""
    from tuner.plan.placement import one_precision
    from tuner.settings import SearchSettings
    from tuner.worker import NodeInfo

    def node(amp, cuda):
        return NodeInfo("id", "10.0.0.1", "h", cuda, "2.14.1", amp, "code", True, None)

    auto = SearchSettings()
    mixed_cpus = [node("bf16", False), node("fp32", False)]  # an AVX512-BF16 CPU beside an AVX2 one
    assert one_precision(auto, mixed_cpus).precision == "fp32"
    assert "train in bf16 and fp32 under --precision auto: every trial and confirm run trains in fp32" in \
        capsys.readouterr().err
    mixed_gpus = [node("bf16", True), node("fp16", True)]  # an A100 beside a V100
    assert one_precision(auto, mixed_gpus).precision == "fp32"
    assert "train in bf16 and fp16" in capsys.readouterr().err
    # trials go to the GPU nodes only: a CPU-only node (the head, say) does not count
    assert one_precision(auto, [node("bf16", True), node("fp32", False)]) == auto
    assert one_precision(auto, [node("bf16", True), node("bf16", True)]) == auto
    chosen = SearchSettings(precision="bf16")  # the user's choice stands (a node without bf16 then fails loudly)
    assert one_precision(chosen, mixed_cpus) == chosen
    assert capsys.readouterr().err == ""
    assert SearchSettings(precision="fp32").trial_config().precision == "fp32"  # trials train in it
