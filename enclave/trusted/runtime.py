"""The code inside the emulated enclave: its keys, its sealed state, its reports, its ecall table.

Everything the host hands in arrives as bytes through :meth:`TrustedEnclave.ecall` and is parsed and
checked here; everything handed out is bytes. The emulated CPU services the enclave may use (the
sealing root from which EGETKEY derives keys, the monotonic counter, the identity fixed at EINIT) are
given at construction by the platform, never by an ecall.

Sealed state (MRSIGNER policy, slot ("enclave-state", b"", 1)), canonical, length-prefixed:
  lp("escrow.v1/enclave-state/v1") || lp(counter u64) || lp(ledger key: P-256 private scalar, 32) ||
  lp(encryption key: X25519 private, 32) || lp(instance id, 16) || lp(chain id, 32) ||
  lp(head height u64) || lp(head hash, 32)
The sealed head is the ledger head when the state was last sealed (at start, and whenever the host asks
with the ``reseal`` ecall); an application compares it with the store it is given (sealed_head()).
Start protocol (rollback detection, DESIGN §5): the enclave refuses sealed state whose counter value is
below the platform counter; otherwise it reseals with value c = max(state, counter) + 1, the host
stores that blob durably, and only then the ``commit_start`` ecall raises the platform counter to c.
A crash between the two leaves state ahead of the counter, which is accepted.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from enclave.errors import BoundaryError, EnclaveError, RollbackError
from enclave.quote import ATTR_DEBUG, ATTR_INIT, ATTR_MODE64BIT, ReportBody, report_mac
from enclave.trusted.keybundle import KeyBundle, KeyBundleError, report_data, split_length_prefixed
from enclave.trusted.sealing import EnclaveIdentity, KeyPolicy, Slot, seal, unseal

STATE_TAG = b"escrow.v1/enclave-state/v1"
STATE_SLOT = Slot(kind="enclave-state", object_id=b"", version=1)
XFRM = 0xE7  # x87, SSE, AVX, AVX-512 state, as the sample quotes carry
MAX_ECALL_BYTES = 1 << 20


class Counter(Protocol):
    """The platform's monotonic counter as the enclave sees it."""

    def read(self) -> int: ...

    def increment(self) -> int: ...


MAX_COUNTER = 2**64 - 1


def check_not_rolled_back(sealed_value: int, counter: Counter) -> None:
    """RollbackError if state sealed with counter value ``sealed_value`` is older than the platform
    counter; state ahead of it (a crash between storing the blob and the increment) is accepted."""
    if type(sealed_value) is not int or not 0 <= sealed_value <= MAX_COUNTER:
        raise EnclaveError(f"sealed counter value {sealed_value!r} is not a u64")
    current = counter.read()
    if sealed_value < current:
        raise RollbackError(
            f"sealed state carries counter value {sealed_value} but the platform counter is at {current}: "
            "the data directory was rolled back"
        )


@dataclass(frozen=True)
class CpuServices:
    """What the emulated CPU gives the enclave it initialised: identity, the root its sealing keys
    derive from, the REPORT key that MACs its reports for the quoting enclave, the counter."""

    identity: EnclaveIdentity
    sealing_root: bytes = field(repr=False)
    report_key: bytes = field(repr=False)
    counter: Counter
    cpu_svn: bytes = bytes(16)


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _split_lp(data: bytes, count: int) -> list[bytes]:
    try:
        out = split_length_prefixed(data)
    except KeyBundleError as e:
        raise BoundaryError(str(e)) from e
    if len(out) != count:
        raise BoundaryError(f"expected {count} fields, got {len(out)}")
    return out


@dataclass
class _State:
    counter: int
    ledger_key: ec.EllipticCurvePrivateKey
    encryption_key: x25519.X25519PrivateKey
    instance_id: bytes
    chain_id: bytes = bytes(32)
    head_height: int = 0
    head_hash: bytes = bytes(32)

    def to_bytes(self) -> bytes:
        scalar = self.ledger_key.private_numbers().private_value.to_bytes(32, "big")
        enc = self.encryption_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        fields = [STATE_TAG, self.counter.to_bytes(8, "big"), scalar, enc, self.instance_id]
        fields += [self.chain_id, self.head_height.to_bytes(8, "big"), self.head_hash]
        return b"".join(_lp(f) for f in fields)

    @classmethod
    def from_bytes(cls, data: bytes) -> _State:
        tag, counter, scalar, enc, instance, chain, height, head = _split_lp(data, 8)
        sizes = ((counter, 8), (scalar, 32), (enc, 32), (instance, 16), (chain, 32), (height, 8), (head, 32))
        if tag != STATE_TAG or any(len(f) != n for f, n in sizes):
            raise BoundaryError("not an escrow.v1 enclave state")
        return cls(
            counter=int.from_bytes(counter, "big"),
            ledger_key=ec.derive_private_key(int.from_bytes(scalar, "big"), ec.SECP256R1()),
            encryption_key=x25519.X25519PrivateKey.from_private_bytes(enc),
            instance_id=instance,
            chain_id=chain,
            head_height=int.from_bytes(height, "big"),
            head_hash=head,
        )


Ecalls = Mapping[str, Callable[[bytes], bytes]]


class EnclaveServices:
    """What the runtime offers the application running inside the enclave (the escrow core): its keys,
    sealing, reports, and the ledger head the key bundle reports. Never handed to the host."""

    def __init__(self, enclave: TrustedEnclave) -> None:
        self._enclave = enclave

    @property
    def identity(self) -> EnclaveIdentity:
        return self._enclave._cpu.identity

    @property
    def ledger_key(self) -> ec.EllipticCurvePrivateKey:
        """The ledger signing key (P-256); it signs entries, ACKs and receipts."""
        return self._enclave._require_state().ledger_key

    def ledger_public_key(self) -> bytes:
        return self._enclave._bundle().ledger_key

    def encryption_public_key(self) -> bytes:
        return self._enclave._bundle().encryption_key

    def encryption_private_key(self) -> bytes:
        """The raw X25519 key envelopes to the enclave are sealed to."""
        return self._enclave._require_state().encryption_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    def instance_id(self) -> bytes:
        return self._enclave._require_state().instance_id

    def key_bundle(self) -> bytes:
        return self._enclave._bundle().to_bytes()

    def report(self, nonce: bytes) -> bytes:
        """EREPORT over the current key bundle and ``nonce`` (body || MAC), as the report ecall."""
        return self._enclave._make_report(nonce)

    def set_head(self, chain_id: bytes, height: int, entry_hash: bytes) -> None:
        """Record the ledger head the key bundle (and so every later quote) reports."""
        if len(chain_id) != 32 or len(entry_hash) != 32 or not 0 <= height < 1 << 64:
            raise BoundaryError("a head is a 32-byte chain id, a u64 height and a 32-byte hash")
        state = self._enclave._require_state()
        with self._enclave._lock:
            state.chain_id, state.head_height, state.head_hash = chain_id, height, entry_hash

    def sealed_head(self) -> tuple[bytes, int, bytes] | None:
        """The ledger head the sealed state carried when this enclave started (None for a new enclave):
        the store must still contain it, or it was rolled back."""
        return self._enclave._sealed_head

    def seal(self, kind: str, object_id: bytes, version: int, data: bytes) -> bytes:
        """Seal application data (MRSIGNER policy) to the slot (kind, object id, version)."""
        cpu = self._enclave._cpu
        slot = Slot(kind=kind, object_id=object_id, version=version)
        return seal(cpu.sealing_root, cpu.identity, KeyPolicy.MRSIGNER, slot, data)

    def unseal(self, kind: str, object_id: bytes, version: int, blob: bytes) -> bytes:
        """Open a blob sealed to exactly this slot; SealingError otherwise."""
        cpu = self._enclave._cpu
        return unseal(
            cpu.sealing_root, cpu.identity, blob, Slot(kind=kind, object_id=object_id, version=version)
        )


Application = Callable[[EnclaveServices], Ecalls]
APP_PREFIX = "app."


class TrustedEnclave:
    """The trusted runtime. The host reaches it only through :meth:`ecall` (names -> bytes).

    An application (the escrow core) may be loaded inside: after ``commit_start`` the runtime builds it
    with :class:`EnclaveServices` and dispatches ecalls named ``app.<name>`` to it. Application ecalls
    do not take the runtime's lock: the application serialises what it must itself."""

    def __init__(self, cpu: CpuServices, application: Application | None = None) -> None:
        self._cpu = cpu
        self._application = application
        self._app_ecalls: Ecalls = {}
        self._state: _State | None = None
        self._pending_counter: int | None = None
        self._started = False
        self._committed = False
        self._lock = threading.Lock()
        self._sealed_head: tuple[bytes, int, bytes] | None = None
        self._ecalls: dict[str, Callable[[bytes], bytes]] = {
            "start": self._start,
            "reseal": self._reseal,
            "commit_start": self._commit_start,
            "key_bundle": self._key_bundle,
            "report": self._report,
        }

    def ecall(self, name: str, payload: bytes) -> bytes:
        """The one entry point: copy and bound the input, dispatch, return bytes."""
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise BoundaryError("ecall payloads are bytes")
        data = bytes(payload)  # copy: the host cannot change it under our feet
        if len(data) > MAX_ECALL_BYTES:
            raise BoundaryError("ecall payload too large")
        if isinstance(name, str) and name.startswith(APP_PREFIX):
            handler = self._app_ecalls.get(name[len(APP_PREFIX) :])
            if handler is None:
                raise BoundaryError(f"unknown ecall {name!r}")
            result = handler(data)
            if not isinstance(result, bytes):
                raise BoundaryError("application ecalls return bytes")
            return result
        if not isinstance(name, str) or name not in self._ecalls:
            raise BoundaryError(f"unknown ecall {name!r}")
        with self._lock:
            return self._ecalls[name](data)

    # --- ecalls ---------------------------------------------------------------------------------

    def _start(self, sealed: bytes) -> bytes:
        """Open (or create) the sealed state; returns the resealed blob for the host to store.

        Once per enclave. Empty state is a first start only while the platform counter is 0: state
        that went missing afterwards is refused like state that went back in time."""
        if self._started:
            raise BoundaryError("start may be called once")
        self._started = True
        counter = self._cpu.counter.read()
        if not sealed and counter > 0:
            raise RollbackError(
                f"no sealed state, but the platform counter is at {counter}: the state was deleted or the "
                "data directory replaced"
            )
        if sealed:
            state = _State.from_bytes(unseal(self._cpu.sealing_root, self._cpu.identity, sealed, STATE_SLOT))
            check_not_rolled_back(state.counter, self._cpu.counter)
        else:
            state = _State(
                counter=0,
                ledger_key=ec.generate_private_key(ec.SECP256R1()),
                encryption_key=x25519.X25519PrivateKey.generate(),
                instance_id=os.urandom(16),
            )
        state.counter = max(state.counter, counter) + 1
        if state.chain_id != bytes(32):
            self._sealed_head = (state.chain_id, state.head_height, state.head_hash)
        self._state = state
        self._pending_counter = state.counter
        return self._seal_state(state)

    def _commit_start(self, payload: bytes) -> bytes:
        """After the host stored the resealed state: raise the platform counter to its value."""
        if payload:
            raise BoundaryError("commit_start takes no payload")
        if self._pending_counter is None:
            raise BoundaryError("commit_start before start")
        while self._cpu.counter.read() < self._pending_counter:
            self._cpu.counter.increment()
        self._pending_counter = None
        self._committed = True
        if self._application is not None:
            self._app_ecalls = dict(self._application(EnclaveServices(self)))
        return b""

    def _reseal(self, payload: bytes) -> bytes:
        """The state sealed again with the current ledger head (same counter value), for the host to
        store: the next start checks that the store still holds that head."""
        if payload:
            raise BoundaryError("reseal takes no payload")
        return self._seal_state(self._require_state())

    def _key_bundle(self, payload: bytes) -> bytes:
        if payload:
            raise BoundaryError("key_bundle takes no payload")
        return self._bundle().to_bytes()

    def _report(self, nonce: bytes) -> bytes:
        """EREPORT for the quoting enclave: the 384-byte body with REPORTDATA = SHA-256(key bundle) ||
        SHA-256(nonce), followed by its 32-byte MAC under the REPORT key."""
        return self._make_report(nonce)

    def _make_report(self, nonce: bytes) -> bytes:
        try:
            data = report_data(self._bundle().to_bytes(), nonce)
        except KeyBundleError as e:
            raise BoundaryError(str(e)) from e
        identity = self._cpu.identity
        flags = ATTR_INIT | ATTR_MODE64BIT | (ATTR_DEBUG if identity.debug else 0)
        body = ReportBody(
            cpu_svn=self._cpu.cpu_svn,
            attributes=flags.to_bytes(8, "little") + XFRM.to_bytes(8, "little"),
            mr_enclave=identity.mr_enclave,
            mr_signer=identity.mr_signer,
            isv_prod_id=identity.isv_prod_id,
            isv_svn=identity.isv_svn,
            report_data=data,
        )
        return body.to_bytes() + report_mac(self._cpu.report_key, body)

    # --- helpers --------------------------------------------------------------------------------

    def _require_state(self) -> _State:
        if self._state is None or not self._committed:
            raise BoundaryError("the enclave answers only after start and commit_start")
        return self._state

    def _bundle(self) -> KeyBundle:
        state = self._require_state()
        ledger_pub = state.ledger_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        enc_pub = state.encryption_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return KeyBundle(
            chain_id=state.chain_id,
            ledger_key=ledger_pub,
            encryption_key=enc_pub,
            instance_id=state.instance_id,
            isv_svn=self._cpu.identity.isv_svn,
            head_height=state.head_height,
            head_hash=state.head_hash,
        )

    def _seal_state(self, state: _State) -> bytes:
        cpu = self._cpu
        return seal(cpu.sealing_root, cpu.identity, KeyPolicy.MRSIGNER, STATE_SLOT, state.to_bytes())
