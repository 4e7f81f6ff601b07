"""Sealing (key policies, ISVSVN, debug, slots, tampering) and the monotonic counter (rollback detection)."""

from __future__ import annotations

import hashlib
import multiprocessing
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enclave import counter as counter_module
from enclave.counter import MonotonicCounter
from enclave.errors import EnclaveError, PlatformError, RollbackError, SealingError
from enclave.trusted import sealing
from enclave.trusted.runtime import check_not_rolled_back
from enclave.trusted.sealing import EnclaveIdentity, KeyPolicy, Slot, seal, unseal
from tests.strategies import ShakeRng

ROOT = hashlib.sha256(b"platform root secret").digest()
OTHER_ROOT = hashlib.sha256(b"another platform").digest()
ENCLAVE = EnclaveIdentity(
    mr_enclave=hashlib.sha256(b"build 1").digest(),
    mr_signer=hashlib.sha256(b"signer").digest(),
    isv_prod_id=1,
    isv_svn=3,
    debug=False,
)
SLOT = Slot(kind="enclave-state", object_id=b"main", version=1)
DATA = b"ledger signing key and friends"
BOTH = (KeyPolicy.MRENCLAVE, KeyPolicy.MRSIGNER)


# --- what opens ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", BOTH)
def test_round_trip(policy: KeyPolicy) -> None:
    blob = seal(ROOT, ENCLAVE, policy, SLOT, DATA)
    assert len(blob) == sealing.HEADER_SIZE + len(DATA) + sealing.TAG_SIZE
    assert unseal(ROOT, ENCLAVE, blob, SLOT) == DATA
    assert DATA not in blob
    assert seal(ROOT, ENCLAVE, policy, SLOT, DATA) != blob  # fresh key id and nonce


def test_header_layout() -> None:
    blob = seal(ROOT, replace(ENCLAVE, isv_svn=0x0102, debug=True), KeyPolicy.MRSIGNER, SLOT, b"")
    assert blob[:9] == b"SEAL\x01\x02\x01\x02\x01"


def test_frozen_blob_still_opens() -> None:
    """A blob sealed by an earlier build of this code: the format and derivation must not drift."""
    frozen = bytes.fromhex(
        "5345414c0102000300d1f4f4b02ce46c764072193900268f3c4921a244cd39efffe4867911eb2feeb1ffba37"
        "0df3781b6780742fbd8ca07f76ecea6526073b14971e157d138dffdaeefe60e3316c1340f9a0da261f1d9944"
        "44b019d527824798adc7b0"
    )
    assert seal(ROOT, ENCLAVE, KeyPolicy.MRSIGNER, SLOT, DATA, randbytes=ShakeRng(b"frozen")) == frozen
    assert unseal(ROOT, ENCLAVE, frozen, SLOT) == DATA


@pytest.mark.parametrize("policy", BOTH)
def test_isvsvn_upgrade_opens_older_blobs(policy: KeyPolicy) -> None:
    upgraded = replace(ENCLAVE, isv_svn=ENCLAVE.isv_svn + 1)
    if policy is KeyPolicy.MRSIGNER:
        upgraded = replace(upgraded, mr_enclave=hashlib.sha256(b"build 2").digest())
    blob = seal(ROOT, ENCLAVE, policy, SLOT, DATA)
    assert unseal(ROOT, upgraded, blob, SLOT) == DATA
    # and the upgraded enclave's own blobs stay out of the old enclave's reach
    newer = seal(ROOT, upgraded, policy, SLOT, DATA)
    with pytest.raises(SealingError, match="ISVSVN"):
        unseal(ROOT, ENCLAVE, newer, SLOT)


def test_mrsigner_survives_a_new_measurement() -> None:
    rebuilt = replace(ENCLAVE, mr_enclave=hashlib.sha256(b"build 2").digest())
    assert unseal(ROOT, rebuilt, seal(ROOT, ENCLAVE, KeyPolicy.MRSIGNER, SLOT, DATA), SLOT) == DATA


# --- what does not open -------------------------------------------------------------------------------


def test_mrenclave_blob_does_not_open_under_another_measurement() -> None:
    blob = seal(ROOT, ENCLAVE, KeyPolicy.MRENCLAVE, SLOT, DATA)
    with pytest.raises(SealingError):
        unseal(ROOT, replace(ENCLAVE, mr_enclave=hashlib.sha256(b"build 2").digest()), blob, SLOT)


@pytest.mark.parametrize(
    "other",
    [
        replace(ENCLAVE, isv_prod_id=2),
        replace(ENCLAVE, mr_signer=hashlib.sha256(b"another signer").digest()),
    ],
)
def test_mrsigner_blob_needs_the_same_signer_and_product(other: EnclaveIdentity) -> None:
    blob = seal(ROOT, ENCLAVE, KeyPolicy.MRSIGNER, SLOT, DATA)
    with pytest.raises(SealingError):
        unseal(ROOT, other, blob, SLOT)


@pytest.mark.parametrize("policy", BOTH)
def test_downgraded_isvsvn_cannot_open_newer_data(policy: KeyPolicy) -> None:
    blob = seal(ROOT, ENCLAVE, policy, SLOT, DATA)
    with pytest.raises(SealingError, match="ISVSVN 3"):
        unseal(ROOT, replace(ENCLAVE, isv_svn=2), blob, SLOT)


def test_lowering_the_isvsvn_in_the_header_does_not_help() -> None:
    blob = seal(ROOT, ENCLAVE, KeyPolicy.MRSIGNER, SLOT, DATA)
    relabelled = blob[:6] + (2).to_bytes(2, "big") + blob[8:]
    with pytest.raises(SealingError):
        unseal(ROOT, replace(ENCLAVE, isv_svn=2), relabelled, SLOT)


@pytest.mark.parametrize("policy", BOTH)
def test_debug_and_production_never_share_data(policy: KeyPolicy) -> None:
    debug = replace(ENCLAVE, debug=True)
    with pytest.raises(SealingError, match="debug"):
        unseal(ROOT, debug, seal(ROOT, ENCLAVE, policy, SLOT, DATA), SLOT)
    with pytest.raises(SealingError, match="debug"):
        unseal(ROOT, ENCLAVE, seal(ROOT, debug, policy, SLOT, DATA), SLOT)
    # flipping the header's debug flag does not help either: DEBUG is in the key derivation
    production_blob = seal(ROOT, ENCLAVE, policy, SLOT, DATA)
    flipped = production_blob[:8] + b"\x01" + production_blob[9:]
    with pytest.raises(SealingError):
        unseal(ROOT, debug, flipped, SLOT)


@pytest.mark.parametrize(
    "other_slot",
    [
        Slot(kind="session", object_id=b"main", version=1),
        Slot(kind="enclave-state", object_id=b"mainx", version=1),
        Slot(kind="enclave-state", object_id=b"", version=1),
        Slot(kind="enclave-state", object_id=b"main", version=2),
        Slot(kind="enclave-statemain", object_id=b"", version=1),
    ],
)
def test_blob_moved_to_another_slot_fails(other_slot: Slot) -> None:
    blob = seal(ROOT, ENCLAVE, KeyPolicy.MRSIGNER, SLOT, DATA)
    with pytest.raises(SealingError):
        unseal(ROOT, ENCLAVE, blob, other_slot)


@pytest.mark.parametrize("policy", BOTH)
def test_every_flipped_byte_fails(policy: KeyPolicy) -> None:
    blob = seal(ROOT, ENCLAVE, policy, SLOT, b"small")
    for i in range(len(blob)):
        for mask in (0x01, 0x80):
            tampered = bytearray(blob)
            tampered[i] ^= mask
            with pytest.raises(SealingError):
                unseal(ROOT, ENCLAVE, bytes(tampered), SLOT)


def test_wrong_root_secret_fails() -> None:
    blob = seal(ROOT, ENCLAVE, KeyPolicy.MRSIGNER, SLOT, DATA)
    with pytest.raises(SealingError):
        unseal(OTHER_ROOT, ENCLAVE, blob, SLOT)
    for bad_root in (b"", ROOT[:31], ROOT + b"\x00"):
        with pytest.raises(SealingError, match="root secret"):
            unseal(bad_root, ENCLAVE, blob, SLOT)
        with pytest.raises(SealingError, match="root secret"):
            seal(bad_root, ENCLAVE, KeyPolicy.MRSIGNER, SLOT, DATA)


def test_truncated_empty_and_extended_blobs_fail() -> None:
    blob = seal(ROOT, ENCLAVE, KeyPolicy.MRSIGNER, SLOT, DATA)
    for bad in (
        b"",
        blob[:1],
        blob[: sealing.HEADER_SIZE],
        blob[: sealing.HEADER_SIZE + 15],
        blob[:-1],
        blob + b"\x00",
        blob[sealing.HEADER_SIZE :],
    ):
        with pytest.raises(SealingError):
            unseal(ROOT, ENCLAVE, bad, SLOT)


def test_size_limits() -> None:
    with pytest.raises(SealingError, match="limit"):
        seal(ROOT, ENCLAVE, KeyPolicy.MRSIGNER, SLOT, bytes(sealing.MAX_PLAINTEXT + 1))
    header = seal(ROOT, ENCLAVE, KeyPolicy.MRSIGNER, SLOT, b"")[: sealing.HEADER_SIZE]
    with pytest.raises(SealingError, match="limit"):
        unseal(ROOT, ENCLAVE, header + bytes(sealing.MAX_PLAINTEXT + sealing.TAG_SIZE + 1), SLOT)


def test_header_fields_are_checked() -> None:
    blob = seal(ROOT, ENCLAVE, KeyPolicy.MRSIGNER, SLOT, DATA)
    cases = {
        "format": b"SEAX" + blob[4:],
        "format version": blob[:4] + b"\x02" + blob[5:],
        "policy": blob[:5] + b"\x03" + blob[6:],
        "reserved": blob[:8] + b"\x04" + blob[9:],
    }
    for match, bad in cases.items():
        with pytest.raises(SealingError, match=match):
            unseal(ROOT, ENCLAVE, bad, SLOT)


def test_policy_in_header_is_authenticated() -> None:
    blob = seal(ROOT, ENCLAVE, KeyPolicy.MRSIGNER, SLOT, DATA)
    with pytest.raises(SealingError):
        unseal(ROOT, ENCLAVE, blob[:5] + b"\x01" + blob[6:], SLOT)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Slot(kind="", object_id=b"", version=0),
        lambda: Slot(kind="x" * 257, object_id=b"", version=0),
        lambda: Slot(kind="x", object_id=bytes(1025), version=0),
        lambda: Slot(kind="x", object_id=b"", version=-1),
        lambda: Slot(kind="x", object_id=b"", version=2**64),
        lambda: Slot(kind="x", object_id="id", version=0),  # type: ignore[arg-type]
        lambda: replace(ENCLAVE, mr_enclave=bytes(31)),
        lambda: replace(ENCLAVE, isv_svn=65536),
        lambda: replace(ENCLAVE, isv_prod_id=-1),
        lambda: replace(ENCLAVE, debug=0),  # type: ignore[arg-type]
    ],
)
def test_slot_and_identity_validation(make: object) -> None:
    with pytest.raises(SealingError):
        make()  # type: ignore[operator]


def test_slot_encoding() -> None:
    assert Slot(kind="ab", object_id=b"\x01", version=2).to_bytes() == (
        b"\x00\x00\x00\x02ab\x00\x00\x00\x01\x01" + (2).to_bytes(8, "big")
    )


@given(
    plaintext=st.binary(max_size=2048),
    kind=st.text(min_size=1, max_size=20),
    object_id=st.binary(max_size=64),
    version=st.integers(0, 2**64 - 1),
    policy=st.sampled_from(BOTH),
    svn=st.integers(0, 0xFFFF),
    debug=st.booleans(),
)
def test_round_trip_property(
    plaintext: bytes, kind: str, object_id: bytes, version: int, policy: KeyPolicy, svn: int, debug: bool
) -> None:
    identity = replace(ENCLAVE, isv_svn=svn, debug=debug)
    slot = Slot(kind=kind, object_id=object_id, version=version)
    assert unseal(ROOT, identity, seal(ROOT, identity, policy, slot, plaintext), slot) == plaintext


# --- the monotonic counter ----------------------------------------------------------------------------


@pytest.fixture
def nv_dir(tmp_path: Path) -> Path:
    return tmp_path / "nv"


def test_counter_starts_at_zero_and_persists(nv_dir: Path) -> None:
    counter = MonotonicCounter("platform-a", nv_dir)
    assert counter.read() == 0
    assert [counter.increment() for _ in range(3)] == [1, 2, 3]
    assert MonotonicCounter("platform-a", nv_dir).read() == 3
    assert MonotonicCounter("platform-b", nv_dir).read() == 0
    assert counter.path == nv_dir / "platform-a.counter"


def test_counter_file_format(nv_dir: Path) -> None:
    counter = MonotonicCounter("p1", nv_dir)
    counter.increment()
    body = b"escrow.v1/nv-counter/v1\nplatform p1\nvalue 1\n"
    assert counter.path.read_bytes() == body + b"sha256 " + hashlib.sha256(body).hexdigest().encode() + b"\n"


def test_default_nv_dir_is_outside_the_data_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ESCROW_NV_DIR", str(tmp_path / "explicit"))
    assert MonotonicCounter("p").nv_dir == tmp_path / "explicit"
    monkeypatch.delenv("ESCROW_NV_DIR")
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert counter_module.default_nv_dir() == tmp_path / "home" / ".local" / "state" / "escrow-nv"


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage",
        b"escrow.v1/nv-counter/v1\nplatform p1\nvalue 7\nsha256 " + b"0" * 64 + b"\n",
        b"\xff\xfe",
    ],
)
def test_corrupt_counter_is_refused_not_reset(nv_dir: Path, content: bytes) -> None:
    counter = MonotonicCounter("p1", nv_dir)
    counter.increment()
    counter.path.write_bytes(content)
    with pytest.raises(PlatformError, match="corrupt"):
        counter.read()
    with pytest.raises(PlatformError):
        counter.increment()
    assert counter.path.read_bytes() == content


def test_counter_file_of_another_platform_is_refused(nv_dir: Path) -> None:
    MonotonicCounter("p1", nv_dir).increment()
    (nv_dir / "p2.counter").write_bytes((nv_dir / "p1.counter").read_bytes())
    with pytest.raises(PlatformError, match="belongs"):
        MonotonicCounter("p2", nv_dir).read()


@pytest.mark.parametrize("platform_id", ["", "../escape", ".hidden", "a/b", "x" * 129, "sp ace"])
def test_platform_id_must_be_a_safe_file_name(nv_dir: Path, platform_id: str) -> None:
    with pytest.raises(PlatformError):
        MonotonicCounter(platform_id, nv_dir)


def test_counter_never_decreases_and_is_bounded(nv_dir: Path) -> None:
    counter = MonotonicCounter("p1", nv_dir)
    counter.path.parent.mkdir(parents=True)
    counter.path.write_bytes(counter_module._encode("p1", counter_module.MAX_VALUE))
    with pytest.raises(PlatformError, match="exhausted"):
        counter.increment()
    assert counter.read() == counter_module.MAX_VALUE


def _increment_many(nv_dir: str, count: int) -> None:
    counter = MonotonicCounter("shared", Path(nv_dir))
    for _ in range(count):
        counter.increment()


def test_concurrent_increments_are_serialised(nv_dir: Path) -> None:
    threads = [threading.Thread(target=_increment_many, args=(str(nv_dir), 25)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    processes = [
        multiprocessing.get_context("fork").Process(target=_increment_many, args=(str(nv_dir), 25))
        for _ in range(2)
    ]
    for p in processes:
        p.start()
    for p in processes:
        p.join()
        assert p.exitcode == 0
    assert MonotonicCounter("shared", nv_dir).read() == 150


def test_check_not_rolled_back(nv_dir: Path) -> None:
    counter = MonotonicCounter("p1", nv_dir)
    check_not_rolled_back(0, counter)
    counter.increment()
    counter.increment()
    check_not_rolled_back(2, counter)
    check_not_rolled_back(3, counter)  # state ahead of the counter: a crash before the increment
    with pytest.raises(RollbackError, match="rolled back"):
        check_not_rolled_back(1, counter)
    for bad in (-1, 2**64, True):
        with pytest.raises(EnclaveError):
            check_not_rolled_back(bad, counter)


def _seal_state(value: int, state: bytes) -> bytes:
    return seal(ROOT, ENCLAVE, KeyPolicy.MRSIGNER, SLOT, value.to_bytes(8, "big") + state)


def _start(data_dir: Path, counter: MonotonicCounter) -> bytes:
    """What the enclave does at start: unseal, refuse state older than the counter."""
    opened = unseal(ROOT, ENCLAVE, (data_dir / "state.sealed").read_bytes(), SLOT)
    check_not_rolled_back(int.from_bytes(opened[:8], "big"), counter)
    return opened[8:]


def _commit(data_dir: Path, counter: MonotonicCounter, state: bytes) -> None:
    """Seal the new state with c = counter + 1, store it durably, then raise the counter to c."""
    (data_dir / "state.sealed").write_bytes(_seal_state(counter.read() + 1, state))
    counter.increment()


def test_rolled_back_data_directory_is_detected(tmp_path: Path) -> None:
    data_dir, nv = tmp_path / "data", tmp_path / "nv"
    data_dir.mkdir()
    counter = MonotonicCounter("p1", nv)
    _commit(data_dir, counter, b"balance 100")
    backup = (data_dir / "state.sealed").read_bytes()  # the host copies the data directory
    _commit(data_dir, counter, b"balance 40")
    assert _start(data_dir, counter) == b"balance 40"
    (data_dir / "state.sealed").write_bytes(backup)  # ... and restores the old copy
    with pytest.raises(RollbackError):
        _start(data_dir, counter)


def test_crash_between_store_and_increment_is_not_a_rollback(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    counter = MonotonicCounter("p1", tmp_path / "nv")
    _commit(data_dir, counter, b"one")
    (data_dir / "state.sealed").write_bytes(_seal_state(counter.read() + 1, b"two"))  # crash here
    assert _start(data_dir, counter) == b"two"
