"""The untrusted host's handle on the emulated enclave: launch, start, quote, key bundle.

The host owns the data directory and the platform; it reaches the trusted runtime only through
byte-oriented ecalls (DESIGN §5, Boundary). Launching is the emulated CPU's job (EINIT): measure the
trusted code, check the SIGSTRUCT of the signer, fix the identity, and hand the trusted runtime its
CPU services (the identity, the sealing root, the monotonic counter). Nothing secret comes back out:
the host stores the sealed state blob it is given and forwards reports to the quoting enclave.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from enclave import fsutil
from enclave.counter import MonotonicCounter
from enclave.errors import PlatformError
from enclave.measurement import (
    EnclaveConfig,
    mrenclave,
    mrsigner,
    sign_sigstruct,
    signer_public_key,
    verify_sigstruct,
)
from enclave.platform import Platform
from enclave.quote import ReportBody
from enclave.trusted.runtime import APP_PREFIX, Application, CpuServices, TrustedEnclave
from enclave.trusted.sealing import EnclaveIdentity

STATE_FILE = "enclave-state.sealed"
LOCK_FILE = ".lock"


@dataclass(frozen=True)
class QuoteBundle:
    """What a verifier needs: the quote, its collateral, the platform's root, and the key bundle."""

    quote: bytes
    collateral_json: str
    root_ca_der: bytes
    key_bundle: bytes


def launch(
    platform: Platform,
    config: EnclaveConfig,
    *,
    source_root: Path | None = None,
    nv_dir: Path | None = None,
    application: Application | None = None,
) -> tuple[EnclaveIdentity, TrustedEnclave]:
    """Emulated EINIT: measure, check the signer's SIGSTRUCT, build the enclave with its CPU services."""
    measured = mrenclave(config, source_root)
    public_der = signer_public_key()
    sigstruct = sign_sigstruct(measured, config)  # the developer signs what they measured (dev key)
    signed_mrenclave, signed_config = verify_sigstruct(sigstruct, public_der)
    if signed_mrenclave != measured or signed_config != config:
        raise RuntimeError("SIGSTRUCT does not match the measured enclave")
    identity = EnclaveIdentity(
        mr_enclave=measured,
        mr_signer=mrsigner(public_der),
        isv_prod_id=config.isv_prod_id,
        isv_svn=config.isv_svn,
        debug=config.debug,
    )
    counter = MonotonicCounter(counter_id(platform.root_secret()), nv_dir)
    cpu = CpuServices(
        identity=identity,
        sealing_root=platform.root_secret(),
        report_key=platform.report_key(),
        counter=counter,
    )
    return identity, TrustedEnclave(cpu, application)


def counter_id(root_secret: bytes) -> str:
    """The NV counter's name, bound to the platform's root secret (not to editable metadata)."""
    return hmac.new(root_secret, b"escrow.v1/nv-counter-id", hashlib.sha256).hexdigest()[:32]


class EnclaveHost:
    """A started enclave on a data directory's platform."""

    def __init__(
        self,
        data_dir: Path,
        platform: Platform,
        identity: EnclaveIdentity,
        enclave: TrustedEnclave,
        lock_fd: int = -1,
    ) -> None:
        self.data_dir = data_dir
        self.platform = platform
        self.identity = identity
        self._ecall = enclave.ecall  # the only reference the host keeps: the boundary
        self._lock = threading.Lock()
        self._lock_fd = lock_fd

    @classmethod
    def start(
        cls,
        data_dir: Path,
        config: EnclaveConfig | None = None,
        *,
        source_root: Path | None = None,
        nv_dir: Path | None = None,
        application: Application | None = None,
    ) -> EnclaveHost:
        """Lock the data directory, open or create the platform, launch the enclave, and open (or
        create) its sealed state. Raises PlatformError if another host holds the directory, and
        RollbackError if the sealed state is older than the platform's monotonic counter or missing
        after the counter moved."""
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock_data_dir(data_dir)
        try:
            platform = Platform.open(data_dir)
            config = config or EnclaveConfig()
            identity, enclave = launch(
                platform, config, source_root=source_root, nv_dir=nv_dir, application=application
            )
            host = cls(data_dir, platform, identity, enclave, lock_fd)
            state_path = data_dir / STATE_FILE
            sealed = state_path.read_bytes() if state_path.exists() else b""
            resealed = host._ecall("start", sealed)
            fsutil.atomic_write(state_path, resealed, mode=0o600)
            host._ecall("commit_start", b"")
        except BaseException:
            os.close(lock_fd)
            raise
        return host

    def close(self) -> None:
        """Release the data directory (the enclave's keys stay sealed on disk)."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> EnclaveHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def persist_state(self) -> None:
        """Store the enclave's state sealed again with its current ledger head (atomically), so the next
        start can tell a store rolled back behind that head."""
        with self._lock:
            fsutil.atomic_write(self.data_dir / STATE_FILE, self._ecall("reseal", b""), mode=0o600)

    def app_ecall(self, name: str, payload: bytes) -> bytes:
        """Call the application loaded in the enclave (``application`` at start): ``app.<name>``."""
        return self._ecall(APP_PREFIX + name, payload)

    def quote_report(self, report_and_mac: bytes) -> bytes:
        """Have the platform's quoting enclave quote a report the enclave produced (body || MAC)."""
        report, mac = ReportBody.from_bytes(report_and_mac[:384]), report_and_mac[384:]
        return self.platform.quote(report, mac)

    def key_bundle(self) -> bytes:
        """The canonical public-key bundle the quotes commit to."""
        return self._ecall("key_bundle", b"")

    def quote(self, nonce: bytes) -> QuoteBundle:
        """A fresh quote for a verifier's nonce, with everything needed to check it."""
        with self._lock:
            answer = self._ecall("report", nonce)
            bundle = self._ecall("key_bundle", b"")
        report, mac = ReportBody.from_bytes(answer[:384]), answer[384:]
        return QuoteBundle(
            quote=self.platform.quote(report, mac),
            collateral_json=self.platform.collateral_json(),
            root_ca_der=self.platform.root_ca_der(),
            key_bundle=bundle,
        )


def _lock_data_dir(data_dir: Path) -> int:
    """One enclave host per data directory: an exclusive, non-blocking flock held until close()."""
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise PlatformError(f"{data_dir} is in use by another enclave host") from None
    return fd
