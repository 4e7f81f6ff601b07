"""The escrow core's error base: every refusal carries a stable ``reason`` code and a ``detail``.

The host maps errors to gRPC statuses in one place by their reason (DESIGN §8); the message never
carries a secret.
"""

from __future__ import annotations


class CoreError(ValueError):
    """A refusal with a stable reason code (e.g. MINT_EXPIRED) and a human-readable detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[object, ...]:
        """Pickle as (class, (reason, detail), the other attributes): a refusal raised in a worker
        process (escrow.host.workers) reaches the engine with its class and reason intact."""
        return (self.__class__, (self.reason, self.detail), self.__dict__)
