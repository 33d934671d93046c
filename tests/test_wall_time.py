"""The predicted wall time of a search without --time-budget (issue 15 item 11): pure, no Ray."""

from mnist_net.cli import format_duration
from tuner.plan import budget, search_plan
from tuner.settings import SearchSettings, Throughput
from tuner.space import BATCH_SIZES, Fidelity


def throughput(images_per_s: float) -> Throughput:
    return Throughput(train={b: images_per_s for b in BATCH_SIZES}, eval=10 * images_per_s, load_s=1.0)


def test_full_fidelity_is_the_settings_own():
    f = SearchSettings().fidelity()
    assert f == Fidelity(20, 50_000, 10_000, 3, 20, 50_000)
    f = SearchSettings(max_epochs=4, train_size=8500, confirm_epochs=2).fidelity()
    assert (f.max_epochs, f.train_size, f.eval_size, f.confirm_epochs) == (4, 8500, 10_000, 2)


def test_a_slow_gpu_at_full_fidelity_is_announced_in_hours():
    settings = SearchSettings()  # the GPU default: 32 trials, 20 epochs on 50k, no budget
    slow = search_plan.predicted_line(settings, throughput(1500), concurrent=4)  # a T4-like trial (not measured)
    expected = budget.predict(settings.fidelity(), throughput(1500), 32, 4,
                              configs=settings.top + 1)
    assert slow.startswith(f"predicted wall time {format_duration(expected.total_s)} (search ")
    assert expected.total_s > 3600 and "that is hours: --time-budget" in slow and "\n" not in slow
    fast = search_plan.predicted_line(settings, throughput(200_000), concurrent=16)
    assert "hours" not in fast and "32 trials, 16 at once" in fast


def test_a_time_budget_or_smoke_search_is_not_estimated_again():
    timed = SearchSettings(fidelity_mode="time", time_budget_s=60)
    assert search_plan.predict_wall_time(timed, None, "", 0) is None
