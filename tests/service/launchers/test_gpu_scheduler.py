"""The GPU scheduler: distinct GPUs on one host, never a GPU leased twice; a lease is its
worker's, released by that worker's id, once."""

from __future__ import annotations

import collections
import threading

import pytest

from service.launchers.gpus import GpuScheduler, Lease


def test_a_worker_gets_distinct_gpus_on_one_host() -> None:
    scheduler = GpuScheduler({"a": [0, 1, 2], "b": [0, 1, 2, 3]})
    lease = scheduler.lease(1, 3)
    assert lease is not None
    assert len(set(lease.gpus)) == 3
    second = scheduler.lease(2, 3)
    assert second is not None
    assert second.host != lease.host  # the first host has no 3 free GPUs left
    assert scheduler.lease(3, 3) is None  # 1 free on b, 0 on a
    assert scheduler.capacity() == 4
    assert scheduler.lease(1, 3) == lease  # an owner holds one lease


def test_no_gpu_is_leased_twice_under_concurrent_requests() -> None:
    hosts = {"a": list(range(4)), "b": list(range(4))}
    scheduler = GpuScheduler(hosts)
    start = threading.Barrier(32)
    leases: list[Lease | None] = []
    lock = threading.Lock()

    def ask(owner: int) -> None:
        start.wait()
        lease = scheduler.lease(owner, 1)
        with lock:
            leases.append(lease)

    threads = [threading.Thread(target=ask, args=(owner,)) for owner in range(32)]
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
    first, second = scheduler.lease(1, 1), scheduler.lease(2, 1)
    assert first is not None
    assert second is not None
    assert scheduler.lease(3, 1) is None
    assert scheduler.release(1) == first
    assert scheduler.lease(3, 1) == first
    assert scheduler.owners() == {2, 3}


def test_a_lease_released_twice_never_frees_another_workers_gpu() -> None:
    # Counted leases: an ended worker released twice (a tick that rolled back and reaped
    # it again) counted down a GPU another worker held, and two workers shared it.
    scheduler = GpuScheduler({"a": [0]}, workers_per_gpu=2)
    assert scheduler.lease(1, 1) is not None
    assert scheduler.lease(2, 1) is not None
    assert scheduler.release(1) is not None
    assert scheduler.release(1) is None  # held by no one: changes nothing
    assert scheduler.in_use() == {("a", 0): 1}  # worker 2 still holds it
    assert scheduler.lease(3, 1) is not None
    assert scheduler.lease(4, 1) is None  # GPU 0 is full again: 2 and 3


def test_leases_held_again_after_a_restart_are_not_given_out() -> None:
    before = GpuScheduler({"a": [0, 1, 2]})
    held = before.lease(7, 2)
    assert held is not None
    after = GpuScheduler({"a": [0, 1, 2]})  # a new service process
    after.hold(7, held)
    after.hold(7, held)  # twice changes nothing
    lease = after.lease(8, 1)
    assert lease is not None
    assert not set(lease.gpus) & set(held.gpus)
    assert after.lease(9, 1) is None
    assert after.release(7) == held
    assert after.lease(9, 1) is not None


def test_workers_per_gpu_lets_workers_share() -> None:
    scheduler = GpuScheduler({"a": [0, 1]}, workers_per_gpu=2)
    leases = [scheduler.lease(owner, 1) for owner in range(4)]
    assert all(lease is not None for lease in leases)
    assert scheduler.in_use() == {("a", 0): 2, ("a", 1): 2}
    assert scheduler.lease(5, 1) is None
    with pytest.raises(ValueError, match="workers_per_gpu"):
        GpuScheduler({"a": [0]}, workers_per_gpu=0)


def test_cpu_workers_spread_over_hosts() -> None:
    scheduler = GpuScheduler({"a": [], "b": []})
    hosts = [lease.host for lease in (scheduler.lease(owner, 0) for owner in range(4)) if lease]
    assert sorted(hosts) == ["a", "a", "b", "b"]


def test_a_lease_reads_back_from_a_worker_row() -> None:
    lease = Lease("gpu1", (2, 3))
    assert Lease.parse("gpu1", lease.gpu_list()) == lease
    assert Lease.parse("cpu", "") == Lease("cpu", ())
