"""GPU Ray tasks on a real local Ray with fake GPU ids (as test_gpu_placement.py): workers are never
reused by GPU tasks, runs spread evenly over the GPUs, Ray's NOSET mode maps to the right index,
and the GPU memory measurement of alive_nodes."""

import os
import sys
import time
from collections import Counter

import pytest
import ray
from raysession import Barrier, gpu_id_while_all_run

from mnist_net.config import TrainConfig
from tuner import worker
from tuner.plan import placement, search_plan

FAKE_GPUS = "90,91"


@pytest.fixture(scope="module")
def six_cpus_two_gpus():
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.setenv("CUDA_VISIBLE_DEVICES", FAKE_GPUS)  # Ray refuses more GPUs than ids listed
        # the workers cannot import this test module: send its functions by value
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        ray.init(address="local", num_cpus=6, num_gpus=2, include_dashboard=False, logging_level="WARNING")
        try:
            yield placement.alive_nodes()
        finally:
            ray.shutdown()


def worker_pid() -> int:
    return os.getpid()


def test_rays_options_reuse_gpu_workers_and_refuse_max_calls(six_cpus_two_gpus):
    # The defect of issue 15 item 1, in Ray itself: why task_resources goes to the decorator.
    task = ray.remote(worker_pid).options(num_cpus=1, num_gpus=1)
    assert len({ray.get(task.remote()) for _ in range(3)}) == 1  # one worker, three GPU tasks
    with pytest.raises(ValueError, match="max_calls"):
        ray.remote(worker_pid).options(max_calls=1)


def test_a_gpu_task_never_runs_twice_in_one_worker(six_cpus_two_gpus):
    p = placement.place(six_cpus_two_gpus, max_concurrent=2)
    opts = placement.task_options(p, "run")
    assert opts == {"num_cpus": 3, "num_gpus": 1.0, "name": "run", "max_calls": 1}
    task = ray.remote(**opts)(worker_pid)
    assert len({ray.get(task.remote()) for _ in range(3)}) == 3
    assert "max_calls" not in placement.task_resources(1, 0.0, "cpu run")  # CPU workers keep their cache


def fake_calibration_task(data_dir, base, threads, batch_sizes=()) -> dict:
    time.sleep(0.2)
    return {"pid": os.getpid()}


def test_calibration_tasks_on_gpus_each_get_a_fresh_worker(six_cpus_two_gpus, monkeypatch):
    monkeypatch.setattr(search_plan, "calibration_task", fake_calibration_task)
    runs = search_plan.calibration_runs("/nowhere", TrainConfig(), 1, 1.0, 4)  # 4 tasks, 2 GPUs
    assert len({r["pid"] for r in runs}) == 4


def test_six_runs_on_two_gpus_land_three_and_three(six_cpus_two_gpus):
    p = placement.place(six_cpus_two_gpus, max_concurrent=6)  # what the confirm stage asks for 6 runs
    assert (p.gpu_per_trial, p.cpu_per_trial, p.concurrent) == (pytest.approx(1 / 3), 1, 6)
    barrier = Barrier.remote(6)
    refs = [ray.remote(**placement.task_options(p, f"run{i}"))(gpu_id_while_all_run).remote(barrier)
            for i in range(6)]
    assert Counter(ray.get(refs, timeout=120)) == Counter({"90": 3, "91": 3})


def device_without_set_cuda_visible_devices() -> tuple[str, str]:
    import torch

    torch.cuda.is_available = lambda: True  # this worker exits after the task (max_calls=1)
    return str(worker.assigned_device()), str(ray.get_gpu_ids()[0])


def test_noset_cuda_visible_devices_trains_on_the_assigned_gpu(six_cpus_two_gpus):
    opts = placement.task_resources(1, 1.0, "noset")
    env = {"env_vars": {worker.NOSET_ENV: "1"}}
    refs = [ray.remote(**opts, runtime_env=env)(device_without_set_cuda_visible_devices).remote()
            for _ in range(2)]
    found = dict((gpu, device) for device, gpu in ray.get(refs, timeout=120))
    # every GPU stays visible ("90,91"): GPU 91 is torch's cuda:1, not "cuda" (= cuda:0)
    assert all(device == f"cuda:{FAKE_GPUS.split(',').index(gpu)}" for gpu, device in found.items())


def fake_free_memory() -> int:
    return 7 * 10**9


def test_alive_nodes_adds_each_gpu_nodes_free_memory(six_cpus_two_gpus, monkeypatch):
    assert placement.GPU_FREE_KEY not in six_cpus_two_gpus[0]  # no CUDA in the workers: not measured
    monkeypatch.setattr(placement, "free_gpu_memory", fake_free_memory)
    nodes = placement.alive_nodes()
    assert nodes[0][placement.GPU_FREE_KEY] == 7 * 10**9
    assert placement.place(nodes).memory_cap == 2  # 7 GB x 0.9 / 2.5 GB
