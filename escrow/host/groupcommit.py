"""Group commit: many callers' changes in one store transaction, one COMMIT, one fsync (DESIGN §10).

Each caller of ``GroupCommit.submit(change)`` wants its change durable before it returns (the engine
acknowledges only after its persist ocall returned). With one transaction per change, concurrent callers
queue on the store lock and each pays a whole fsync. Here they share one:

- ``submit`` appends the change to a queue and waits. Whichever waiting caller finds no commit in
  progress becomes the *leader* (no thread of its own is needed): it takes up to ``max_batch`` queued
  changes in arrival order and, in ONE ``store.transaction()``, applies each inside a savepoint of its
  own (``Transaction.savepoint``), then COMMITs once. It then wakes the callers of that batch: each
  returns, or raises its own exception if its savepoint failed (that change alone was rolled back; the
  others commit). If the COMMIT itself fails (or the transaction is lost), every caller of the batch
  raises. A leader leads until its own change is done, then hands over to a waiting caller.
- Changes that arrive while a batch commits wait for the next one, so batches form by themselves under
  concurrency and a lone caller commits at once (no added latency, no timer).

Crash consistency (kill -9 at any instant). Let B_1, B_2, ... be the batches in commit order; batch k's
transaction contains exactly its changes that applied, each whole (a failed savepoint leaves nothing).

1. A caller returns success only after the COMMIT of the batch that holds its change returned, and with
   ``synchronous=FULL`` a returned COMMIT is durable. So every acknowledged change is in the store.
2. A kill before B_k's commit record is durable loses B_k as a whole (SQLite's WAL makes a transaction
   atomic: a frame set without its commit record is ignored on recovery; a kill after that point is
   case 3). None of B_k's callers has returned yet,
   so nothing in it was acknowledged, and the engine had not yet taken any of them into its in-memory
   state (it does so only after persist returns). The restart replays the store as of B_{k-1}: the same
   state as if those requests had never arrived, which is what their clients see (no answer; they
   retry, DESIGN §8).
3. A kill after B_k's COMMIT but before its callers woke keeps B_k, unacknowledged: the same "committed
   but not answered" case as with one transaction per change (a retry gets the recorded answer).
4. Changes in one batch do not depend on each other in ways the engine did not already order: the
   engine persists a ledger entry under its global lock and a session's change under that session's
   lock, so two changes that touch the same rows are never in flight together; arrival order is kept
   anyway, so a batch applies them in the order they were submitted.

Any partial batch on disk is therefore impossible, and the store after a restart is a prefix of the
batches, each containing only whole changes: exactly the states one-transaction-per-change could reach.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from escrow.host.store import Store, StoreError, Transaction

MAX_BATCH = 256
C = TypeVar("C")


@dataclass
class _Waiter(Generic[C]):
    change: C
    done: bool = False
    error: BaseException | None = None


class GroupCommit(Generic[C]):
    """Leader/follower group commit of ``apply(tx, change)`` calls into ``store`` (see the module docstring).

    ``commits`` counts successful COMMITs, ``batches`` every batch tried, ``largest_batch`` the most
    changes one batch held."""

    def __init__(self, store: Store, apply: Callable[[Transaction, C], None], *, max_batch: int = MAX_BATCH):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._store, self._apply, self._max_batch = store, apply, max_batch
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[_Waiter[C]] = deque()
        self._leading = False
        self.commits = 0
        self.batches = 0
        self.largest_batch = 0

    def pending(self) -> int:
        """How many changes wait for a batch (not counting the one being committed)."""
        with self._cond:
            return len(self._queue)

    def submit(self, change: C) -> None:
        """Apply ``change`` and return once the COMMIT that holds it returned; raise its own exception if it
        failed, or the COMMIT's if the batch failed."""
        waiter = _Waiter(change)
        with self._cond:
            self._queue.append(waiter)
            while self._leading and not waiter.done:
                self._cond.wait()
            if not waiter.done:
                self._leading = True
        if not waiter.done:
            self._lead(waiter)
        if waiter.error is not None:
            raise waiter.error

    def _lead(self, own: _Waiter[C]) -> None:
        """Commit batches until ``own`` is done, then let a waiting caller lead."""
        try:
            while not own.done:
                with self._cond:
                    batch = [self._queue.popleft() for _ in range(min(len(self._queue), self._max_batch))]
                if not batch:  # own is queued until its batch is done, so this cannot happen: never spin
                    raise AssertionError("group commit: the leader's own change left the queue unfinished")
                errors, fatal = self._commit(batch)
                with self._cond:
                    for waiter, error in zip(batch, errors, strict=True):
                        waiter.error, waiter.done = error, True
                    self._cond.notify_all()
                if fatal is not None:
                    raise fatal  # e.g. KeyboardInterrupt in the leader: its waiters got a StoreError
        finally:
            with self._cond:
                self._leading = False
                self._cond.notify_all()

    def _commit(self, batch: list[_Waiter[C]]) -> tuple[list[BaseException | None], BaseException | None]:
        """One transaction for the batch: each change in its own savepoint, one COMMIT. Returns each change's
        exception (None when committed) and an exception that is not an Exception to re-raise."""
        errors: list[BaseException | None] = [None] * len(batch)
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        try:
            with self._store.transaction() as tx:
                for i, waiter in enumerate(batch):
                    try:
                        with tx.savepoint():
                            self._apply(tx, waiter.change)
                    except Exception as e:  # this change alone is rolled back
                        errors[i] = e
            self.commits += 1
        except BaseException as e:  # the COMMIT (or the transaction) failed: nothing in the batch committed
            errors = [error if error is not None else _batch_failed(e, len(batch)) for error in errors]
            return errors, None if isinstance(e, Exception) else e
        return errors, None


def _batch_failed(cause: BaseException, size: int) -> StoreError:
    """A waiter's own exception for a failed batch (one object per thread that raises it)."""
    what = (
        f"{cause.reason}: {cause.detail}"
        if isinstance(cause, StoreError)
        else f"{type(cause).__name__}: {cause}"
    )
    error = StoreError("STORE_FAILED", f"the commit of a batch of {size} changes failed ({what})")
    error.__cause__ = cause
    return error
