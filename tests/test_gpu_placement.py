"""Where Ray puts GPU trials, and the device a trial then uses, on a real local Ray with fake GPUs.

Ray lends GPU ids it is told exist. They are ids no machine has (90, 91), so torch in the
workers sees no GPU here and on a machine with GPUs alike: the tests read the same everywhere.
"""

from collections import Counter

import pytest
import ray
from raysession import Barrier, gpu_id_while_all_run

from tuner import worker
from tuner.plan import placement

FAKE_GPUS = "90,91"


@pytest.fixture(scope="module")
def fake_gpu_ray():
    """A local Ray with 4 CPUs and 2 (fake) GPUs; 4 CPUs, so that 4 half-GPU trials fit."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)
        # Ray refuses num_gpus=2 when CUDA_VISIBLE_DEVICES (blanked by conftest) lists fewer ids
        mp.setenv("CUDA_VISIBLE_DEVICES", FAKE_GPUS)
        ray.init(address="local", num_cpus=4, num_gpus=2, include_dashboard=False, logging_level="WARNING")
        try:
            yield placement.alive_nodes()
        finally:
            ray.shutdown()


def gpu_ids(n: int, share: float, cpus: int = 1) -> Counter:
    barrier = Barrier.remote(n)
    task = ray.remote(gpu_id_while_all_run)
    refs = [task.options(num_cpus=cpus, num_gpus=share).remote(barrier) for _ in range(n)]
    return Counter(ray.get(refs, timeout=120))


def test_the_plans_share_spreads_trials_over_both_gpus(fake_gpu_ray):
    p = placement.place(fake_gpu_ray)
    assert (p.gpus, p.gpu_per_trial, p.cpu_per_trial, p.concurrent) == (2, 0.5, 1, 4)
    assert gpu_ids(p.concurrent, p.gpu_per_trial, p.cpu_per_trial) == Counter({"90": 2, "91": 2})


def test_a_small_share_lets_ray_pile_trials_onto_the_first_gpu(fake_gpu_ray):
    # Why the plan raises the share: at 0.25 Ray fills GPU 90 before it uses GPU 91.
    assert gpu_ids(4, 0.25) == Counter({"90": 4})
    p = placement.place(fake_gpu_ray, max_concurrent=2)
    assert p.gpu_per_trial == 1.0
    assert gpu_ids(2, p.gpu_per_trial) == Counter({"90": 1, "91": 1})


@ray.remote
def device_here() -> tuple[str, str | None, str]:
    """(what assigned_device says or raises, CUDA_VISIBLE_DEVICES, torch's view of CUDA) in a task."""
    import os

    import torch

    try:
        outcome = str(worker.assigned_device())
    except ValueError as err:
        outcome = f"ValueError: {err}"
    return outcome, os.environ.get("CUDA_VISIBLE_DEVICES"), str(torch.cuda.is_available())


def test_a_gpu_share_without_cuda_is_one_clear_error(fake_gpu_ray):
    outcome, visible, cuda = ray.get(device_here.options(num_cpus=1, num_gpus=0.5).remote())
    assert visible in ("90", "91") and cuda == "False"  # Ray lent a GPU that torch cannot see
    assert outcome.startswith(f"ValueError: this trial was given GPU(s) ['{visible}'] by Ray, but torch "
                              "here has no CUDA (torch ")
    assert "run with --gpus-per-trial 0" in outcome and "\n" not in outcome


def test_no_gpu_share_means_cpu_whatever_cuda_visible_devices_says(fake_gpu_ray):
    outcome, visible, _ = ray.get(device_here.options(num_cpus=1, num_gpus=0).remote())
    # Ray 2.60 no longer blanks CUDA_VISIBLE_DEVICES for a worker without a GPU: "auto" would
    # have picked GPU 0 on a machine with GPUs, uncounted by Ray.
    assert visible == FAKE_GPUS
    assert outcome == "cpu"
