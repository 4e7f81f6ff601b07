"""CPU-bound proof work in worker processes: the escrow engine's ``work`` hook served by a process pool.

The engine runs every expensive check and proof (verify_open, verify_mint, verify_redeem, verify_pole,
split_deposit) as ``work(fn, *args)``: a pure function of picklable arguments. ``ProofPool.run`` sends
it to one of N spawned worker processes and waits for its result, so proofs of different requests run
on different cores instead of one interpreter's lock; refusals come back as the same CoreError with
the same reason (CoreError pickles its reason and detail).

The workers are trusted code in the emulated model (they compute only on what the enclave hands them
and return results the enclave uses as its own): a real deployment would keep them inside the enclave
boundary (several enclave threads), which the emulation does not model. Each worker builds the fixed-base
tables once when it starts (about 2 s and 45 MB each), and exits by itself once the server is gone,
however the server ended.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
MAX_WORKERS = 64


PARENT_POLL_S = 0.5


def _start_worker(parent_pid: int) -> None:
    """A worker's initializer: leave with the server, then build the tables."""
    threading.Thread(
        target=_exit_with_parent, args=(parent_pid,), name="proof-worker-parent", daemon=True
    ).start()
    _warm()


def _exit_with_parent(parent_pid: int) -> None:
    """End this worker once the server is gone. A worker holds both ends of the pool's call queue, so a
    server killed with SIGKILL (or crashing) would otherwise leave it blocked on that queue forever,
    45 MB of tables each; the orphan is re-parented, which is what this notices."""
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_S)
    os._exit(0)


def _warm() -> None:
    """Build the tables a worker needs before its first request (a prove and a verify of two values)."""
    from escrow.core.settlement import AMOUNT_BITS
    from zk import bn254, pedersen, rangeproof

    proof = rangeproof.prove([1, 2], [3, 4], AMOUNT_BITS, b"escrow.v1/warm-up")
    commitments = [bn254.point_to_bytes(pedersen.commit(1, 3)), bn254.point_to_bytes(pedersen.commit(2, 4))]
    rangeproof.verify(commitments, proof, AMOUNT_BITS, b"escrow.v1/warm-up")


class ProofPool:
    """N worker processes (spawned, so no state is shared with the server's interpreter)."""

    def __init__(self, workers: int) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
            raise ValueError(f"proof workers is an integer in [1, {MAX_WORKERS}]")
        self.workers = workers
        context = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=_start_worker, initargs=(os.getpid(),)
        )
        for future in [self._pool.submit(_ready) for _ in range(workers)]:
            future.result()  # every worker is up and warm before the server answers

    def worker_pids(self) -> list[int]:
        """The worker processes' ids (for tests and operators)."""
        return sorted(self._pool._processes or {})

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker; its exception, if any, is raised here."""
        return self._pool.submit(fn, *args).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _ready() -> int:
    return os.getpid()
