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

    @classmethod
    def parse(cls, host: str, gpus: str) -> Lease:
        """The lease a worker row records (``gpus`` as ``"0,1"``)."""
        return cls(host, tuple(int(g) for g in gpus.split(",") if g))

    def gpu_list(self) -> str:
        """The GPUs as a worker row records them: ``"0,1"``."""
        return ",".join(map(str, self.gpus))


class GpuScheduler:
    """Leases GPUs of several hosts to workers; safe to call from several threads.

    A lease is owned by its worker's id: it is released by that id, once, and
    releasing it again changes nothing (a lease is never counted down twice).

    Args:
        hosts: each host's GPU ids.
        workers_per_gpu: how many workers may share one GPU (1: none share).
    """

    def __init__(self, hosts: Mapping[str, Sequence[int]], workers_per_gpu: int = 1) -> None:
        if workers_per_gpu < 1:
            raise ValueError(f"workers_per_gpu must be >= 1, got {workers_per_gpu}")
        self._hosts = {host: tuple(gpus) for host, gpus in hosts.items()}
        self._per_gpu = workers_per_gpu
        self._held: dict[int, Lease] = {}
        self._lock = threading.Lock()

    def capacity(self) -> int:
        """The most GPUs one worker can get (those of the largest host)."""
        return max((len(gpus) for gpus in self._hosts.values()), default=0)

    def lease(self, owner: int, count: int) -> Lease | None:
        """``count`` distinct free GPUs on one host for ``owner``, or None while none has
        that many. An owner holds one lease: asking again returns the one it holds.

        With ``count == 0`` the host running the fewest workers is chosen.
        """
        with self._lock:
            if owner in self._held:
                return self._held[owner]
            used = self._used()
            workers = collections.Counter(lease.host for lease in self._held.values())
            best: tuple[tuple[int, int], Lease] | None = None
            for host, gpus in self._hosts.items():
                free = sorted(
                    (g for g in gpus if used[host, g] < self._per_gpu), key=lambda g: used[host, g]
                )
                if len(free) < count:
                    continue
                chosen = tuple(sorted(free[:count]))
                load = (sum(used[host, g] for g in chosen), workers[host])
                if best is None or load < best[0]:
                    best = (load, Lease(host, chosen))
            if best is None:
                return None
            self._held[owner] = best[1]
            return best[1]

    def hold(self, owner: int, lease: Lease) -> None:
        """Hold ``lease`` for ``owner`` again after a restart (an adopted worker keeps its
        GPUs); holding it twice changes nothing."""
        with self._lock:
            self._held[owner] = lease

    def release(self, owner: int) -> Lease | None:
        """Free what ``owner`` holds: the lease, or None when it holds none (released already)."""
        with self._lock:
            return self._held.pop(owner, None)

    def owners(self) -> set[int]:
        """The workers holding a lease."""
        with self._lock:
            return set(self._held)

    def in_use(self) -> dict[tuple[str, int], int]:
        """How many workers hold each (host, GPU)."""
        with self._lock:
            return {key: n for key, n in self._used().items() if n}

    def _used(self) -> collections.Counter[tuple[str, int]]:
        return collections.Counter(
            (lease.host, gpu) for lease in self._held.values() for gpu in lease.gpus
        )
