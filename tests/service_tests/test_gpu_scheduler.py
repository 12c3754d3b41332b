"""The GPU scheduler: distinct GPUs on one host, never a GPU leased twice."""

from __future__ import annotations

import collections
import threading

import pytest

from service.launchers.gpus import GpuScheduler, Lease


def test_a_worker_gets_distinct_gpus_on_one_host() -> None:
    scheduler = GpuScheduler({"a": [0, 1, 2], "b": [0, 1, 2, 3]})
    lease = scheduler.lease(3)
    assert lease is not None
    assert len(set(lease.gpus)) == 3
    second = scheduler.lease(3)
    assert second is not None
    assert second.host != lease.host  # the first host has no 3 free GPUs left
    assert scheduler.lease(3) is None  # 1 free on b, 0 on a
    assert scheduler.capacity() == 4


def test_no_gpu_is_leased_twice_under_concurrent_requests() -> None:
    hosts = {"a": list(range(4)), "b": list(range(4))}
    scheduler = GpuScheduler(hosts)
    start = threading.Barrier(32)
    leases: list[Lease | None] = []
    lock = threading.Lock()

    def ask() -> None:
        start.wait()
        lease = scheduler.lease(1)
        with lock:
            leases.append(lease)

    threads = [threading.Thread(target=ask) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    granted = [lease for lease in leases if lease is not None]
    assert len(granted) == 8  # every GPU once, the other 24 requests wait
    held = collections.Counter((lease.host, gpu) for lease in granted for gpu in lease.gpus)
    assert set(held.values()) == {1}
    assert len(held) == 8


def test_released_gpus_are_leased_again() -> None:
    scheduler = GpuScheduler({"a": [0, 1]})
    first, second = scheduler.lease(1), scheduler.lease(1)
    assert first is not None
    assert second is not None
    assert scheduler.lease(1) is None
    scheduler.release(first)
    again = scheduler.lease(1)
    assert again == first
    scheduler.release(again)
    scheduler.release(again)  # twice changes nothing
    assert scheduler.in_use() == {("a", second.gpus[0]): 1}


def test_leases_restored_after_a_restart_are_not_given_out() -> None:
    before = GpuScheduler({"a": [0, 1, 2]})
    held = before.lease(2)
    assert held is not None
    after = GpuScheduler({"a": [0, 1, 2]})  # a new service process
    after.restore(held)
    lease = after.lease(1)
    assert lease is not None
    assert not set(lease.gpus) & set(held.gpus)
    assert after.lease(1) is None


def test_workers_per_gpu_lets_workers_share() -> None:
    scheduler = GpuScheduler({"a": [0, 1]}, workers_per_gpu=2)
    leases = [scheduler.lease(1) for _ in range(4)]
    assert all(lease is not None for lease in leases)
    assert scheduler.in_use() == {("a", 0): 2, ("a", 1): 2}
    assert scheduler.lease(1) is None
    with pytest.raises(ValueError, match="workers_per_gpu"):
        GpuScheduler({"a": [0]}, workers_per_gpu=0)


def test_cpu_workers_spread_over_hosts() -> None:
    scheduler = GpuScheduler({"a": [], "b": []})
    hosts = [lease.host for lease in (scheduler.lease(0) for _ in range(4)) if lease]
    assert sorted(hosts) == ["a", "a", "b", "b"]
