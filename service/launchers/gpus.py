"""Which GPUs a new worker gets: distinct devices on one host, never one already leased."""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Mapping, Sequence

__all__ = ["GpuScheduler", "Lease"]


@dataclasses.dataclass(frozen=True)
class Lease:
    """``gpus`` on ``host``, held by one worker until it ends."""

    host: str
    gpus: tuple[int, ...]


class GpuScheduler:
    """Leases GPUs of several hosts to workers; safe to call from several threads.

    Args:
        hosts: each host's GPU ids.
        workers_per_gpu: how many workers may share one GPU (1: none share).
    """

    def __init__(self, hosts: Mapping[str, Sequence[int]], workers_per_gpu: int = 1) -> None:
        if workers_per_gpu < 1:
            raise ValueError(f"workers_per_gpu must be >= 1, got {workers_per_gpu}")
        self._hosts = {host: tuple(gpus) for host, gpus in hosts.items()}
        self._per_gpu = workers_per_gpu
        self._used: collections.Counter[tuple[str, int]] = collections.Counter()
        self._workers: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def capacity(self) -> int:
        """The most GPUs one worker can get (those of the largest host)."""
        return max((len(gpus) for gpus in self._hosts.values()), default=0)

    def lease(self, count: int) -> Lease | None:
        """``count`` distinct free GPUs on one host, or None while none has that many.

        With ``count == 0`` the host running the fewest workers is chosen.
        """
        with self._lock:
            best: tuple[tuple[int, int], Lease] | None = None
            for host, gpus in self._hosts.items():
                free = sorted(
                    (g for g in gpus if self._used[host, g] < self._per_gpu),
                    key=lambda g: self._used[host, g],
                )
                if len(free) < count:
                    continue
                chosen = tuple(sorted(free[:count]))
                load = (sum(self._used[host, g] for g in chosen), self._workers[host])
                if best is None or load < best[0]:
                    best = (load, Lease(host, chosen))
            if best is None:
                return None
            self._take(best[1])
            return best[1]

    def restore(self, lease: Lease) -> None:
        """Hold a lease again after a restart (an adopted worker keeps its GPUs)."""
        with self._lock:
            self._take(lease)

    def release(self, lease: Lease) -> None:
        """Free a lease; releasing one that is not held changes nothing."""
        with self._lock:
            if self._workers[lease.host] == 0:
                return
            self._workers[lease.host] -= 1
            for gpu in lease.gpus:
                if self._used[lease.host, gpu] > 0:
                    self._used[lease.host, gpu] -= 1

    def in_use(self) -> dict[tuple[str, int], int]:
        """How many workers hold each (host, GPU)."""
        with self._lock:
            return {key: n for key, n in self._used.items() if n}

    def _take(self, lease: Lease) -> None:
        self._workers[lease.host] += 1
        for gpu in lease.gpus:
            self._used[lease.host, gpu] += 1
