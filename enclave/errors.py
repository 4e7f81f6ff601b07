"""The enclave layer's exceptions; attestation failures carry a stable reason code."""

from __future__ import annotations


class EnclaveError(Exception):
    """Base class of every error raised by the enclave package."""


class AttestationError(EnclaveError):
    """A quote or its collateral failed a check; ``reason`` is a stable code such as
    PCK_CHAIN_UNTRUSTED, REPORT_SIGNATURE_INVALID, DEBUG_ENCLAVE or COLLATERAL_EXPIRED."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class QuoteFormatError(AttestationError):
    """Bytes that are not a well-formed quote of a supported version and TEE type."""


class SealingError(EnclaveError):
    """A sealed blob that cannot be opened here: tampered, moved, another enclave, older ISVSVN, debug."""


class RollbackError(EnclaveError):
    """Sealed state older than the platform's monotonic counter: the data directory was rolled back."""


class PlatformError(EnclaveError):
    """The emulated platform's directory is missing, incomplete or inconsistent."""


class BoundaryError(EnclaveError):
    """A call across the trusted/untrusted boundary was malformed; the trusted side refused it."""
