"""The ledger's chain: entry headers, hashes, enclave signatures, and the checks an auditor repeats.

An entry is (header, payload, signature) (docs/ledger.md):

  header  = canonical body of [chain_id: 32, height: u64, prev_hash: 32, time_ms: u64, kind: text,
            payload_hash: 32] (escrow.core.encoding), payload_hash = SHA-256(payload)
  entry_hash = SHA-256(header); the signature is outside the hash
  signature  = ECDSA P-256 (deterministic, low-s, r || s) by the enclave's ledger key over
               signed_message("ledger-entry", chain_id, header)

GENESIS has height 0, a zero prev_hash and a zero chain_id (its own entry hash becomes the chain id, so
it cannot name it); it is signed with the zero chain id. Every later entry names the chain id, the
previous entry's hash and the next height, and its time never decreases. What each kind's payload
holds, and which key signs it after a KEY rotation, is the business of the modules that build them:
this module checks the chain and the signatures under the key it is told.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from escrow.core.encoding import U64, BodyError, Fixed, Text, decode, encode
from escrow.core.errors import CoreError
from escrow.core.signing import SignatureError, p256_sign, p256_verify, signed_message

KINDS = ("GENESIS", "KEY", "POLE", "MINT", "OPEN", "SETTLE", "REDEEM")
ZERO32 = bytes(32)
MAX_PAYLOAD_BYTES = 1 << 20
HEADER_SCHEMA = (
    ("chain_id", Fixed(32)),
    ("height", U64),
    ("prev_hash", Fixed(32)),
    ("time_ms", U64),
    ("kind", Text(16)),
    ("payload_hash", Fixed(32)),
)


class LedgerError(CoreError):
    """An entry or a chain that does not hold; ``reason`` is stable, ``height`` names the entry."""

    def __init__(self, reason: str, detail: str, height: int | None = None) -> None:
        super().__init__(reason, detail)
        if height is not None:
            self.args = (f"{reason} (entry {height}): {detail}",)
        self.height = height


@dataclass(frozen=True)
class Header:
    """A parsed entry header."""

    chain_id: bytes
    height: int
    prev_hash: bytes
    time_ms: int
    kind: str
    payload_hash: bytes

    def to_bytes(self) -> bytes:
        """The canonical header bytes (what entry_hash and the signature cover)."""
        if self.kind not in KINDS:
            raise LedgerError("ENTRY_KIND_UNKNOWN", f"kind {self.kind!r}", self.height)
        return encode(HEADER_SCHEMA, self.__dict__)

    @classmethod
    def from_bytes(cls, data: bytes) -> Header:
        """Strictly parse header bytes."""
        try:
            header = cls(**decode(HEADER_SCHEMA, data, max_len=256))
        except BodyError as e:
            raise LedgerError("ENTRY_MALFORMED", str(e)) from None
        if header.kind not in KINDS:
            raise LedgerError("ENTRY_KIND_UNKNOWN", f"kind {header.kind!r}", header.height)
        return header


@dataclass(frozen=True)
class Entry:
    """One ledger entry as stored and served: the exact header bytes, the payload, the signature."""

    header: bytes
    payload: bytes
    signature: bytes

    @property
    def parsed(self) -> Header:
        return Header.from_bytes(self.header)

    @property
    def entry_hash(self) -> bytes:
        """SHA-256(header)."""
        return hashlib.sha256(self.header).digest()


@dataclass(frozen=True)
class Head:
    """Where the chain stands: its id (zero before GENESIS), the last height, hash and time."""

    chain_id: bytes = ZERO32
    height: int = -1  # -1: no entry yet
    entry_hash: bytes = ZERO32
    time_ms: int = 0


def make_entry(
    head: Head, kind: str, payload: bytes, time_ms: int, ledger_key: ec.EllipticCurvePrivateKey
) -> Entry:
    """The next entry after ``head`` (GENESIS when the chain is empty), signed; ``head`` is unchanged.

    Raises LedgerError if the kind does not fit the position or time would go backwards."""
    if not isinstance(payload, bytes) or len(payload) > MAX_PAYLOAD_BYTES:
        raise LedgerError("ENTRY_MALFORMED", f"payload must be bytes, at most {MAX_PAYLOAD_BYTES}")
    if (kind == "GENESIS") != (head.height < 0):
        raise LedgerError("ENTRY_OUT_OF_PLACE", "GENESIS comes first and only first", head.height + 1)
    if time_ms < head.time_ms:
        raise LedgerError("ENTRY_TIME_BACKWARDS", f"{time_ms} < {head.time_ms}", head.height + 1)
    header = Header(
        chain_id=head.chain_id,
        height=head.height + 1,
        prev_hash=head.entry_hash,
        time_ms=time_ms,
        kind=kind,
        payload_hash=hashlib.sha256(payload).digest(),
    ).to_bytes()
    signature = p256_sign(ledger_key, signed_message("ledger-entry", head.chain_id, header))
    return Entry(header=header, payload=payload, signature=signature)


def advance(head: Head, entry: Entry) -> Head:
    """The head after ``entry`` (which must be the next one); GENESIS fixes the chain id."""
    h = entry.parsed
    chain_id = entry.entry_hash if h.kind == "GENESIS" else head.chain_id
    return Head(chain_id=chain_id, height=h.height, entry_hash=entry.entry_hash, time_ms=h.time_ms)


def check_entry(head: Head, entry: Entry, ledger_key: bytes) -> Head:
    """Check that ``entry`` is the valid next entry after ``head`` under the 65-byte ledger key;
    returns the new head or raises LedgerError with a stable reason."""
    if not isinstance(entry.header, bytes) or not isinstance(entry.payload, bytes):
        raise LedgerError("ENTRY_MALFORMED", "header and payload are bytes", head.height + 1)
    h = entry.parsed
    expected_height = head.height + 1
    if h.height != expected_height:
        raise LedgerError("ENTRY_HEIGHT", f"height {h.height}, expected {expected_height}", h.height)
    if (h.kind == "GENESIS") != (expected_height == 0):
        raise LedgerError("ENTRY_OUT_OF_PLACE", "GENESIS comes first and only first", h.height)
    if h.chain_id != head.chain_id:
        raise LedgerError("ENTRY_CHAIN_ID", "entry names another chain", h.height)
    if h.prev_hash != head.entry_hash:
        raise LedgerError("ENTRY_CHAIN_BROKEN", "prev_hash is not the previous entry's hash", h.height)
    if h.time_ms < head.time_ms:
        raise LedgerError("ENTRY_TIME_BACKWARDS", f"{h.time_ms} < {head.time_ms}", h.height)
    if len(entry.payload) > MAX_PAYLOAD_BYTES or hashlib.sha256(entry.payload).digest() != h.payload_hash:
        raise LedgerError("ENTRY_PAYLOAD_HASH", "payload does not match the header's hash", h.height)
    try:
        p256_verify(ledger_key, signed_message("ledger-entry", head.chain_id, entry.header), entry.signature)
    except SignatureError as e:
        raise LedgerError("ENTRY_SIGNATURE_INVALID", f"{e.reason}: {e.detail}", h.height) from None
    return advance(head, entry)


def check_chain(entries: Iterable[Entry], key_for: Callable[[Header], bytes]) -> Head:
    """Replay a whole chain from GENESIS; ``key_for(header)`` names the ledger key that must have
    signed each entry (the GENESIS key, then whatever KEY entries rotate to). Returns the head."""
    head = Head()
    for entry in entries:
        head = check_entry(head, entry, key_for(entry.parsed))
    if head.height < 0:
        raise LedgerError("LEDGER_EMPTY", "no GENESIS entry")
    return head
