"""The ledger chain: entries made by the enclave's key verify in order, and every break is named."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from escrow.core.ledger import (
    ZERO32,
    Entry,
    Head,
    Header,
    LedgerError,
    advance,
    check_chain,
    check_entry,
    make_entry,
)
from escrow.core.signing import p256_public_key_bytes, p256_sign, signed_message

KEY = ec.derive_private_key(0x1234567890ABCDEF, ec.SECP256R1())
PUB = p256_public_key_bytes(KEY)
OTHER = ec.derive_private_key(0xFEDCBA0987654321, ec.SECP256R1())


def build(
    n: int = 5, key: ec.EllipticCurvePrivateKey = KEY, genesis_payload: bytes = b"genesis"
) -> list[Entry]:
    head, entries = Head(), []
    kinds = ["GENESIS", "POLE", "MINT", "OPEN", "SETTLE", "REDEEM", "KEY"]
    for i in range(n):
        entry = make_entry(
            head,
            kinds[i % len(kinds)] if i else "GENESIS",
            genesis_payload if i == 0 else b"p%d" % i,
            1_790_000_000_000 + i,
            key,
        )
        entries.append(entry)
        head = advance(head, entry)
    return entries


def test_a_chain_verifies_and_its_id_is_the_genesis_hash() -> None:
    entries = build()
    head = check_chain(entries, lambda h: PUB)
    assert head.height == 4 and head.chain_id == entries[0].entry_hash
    assert entries[0].parsed.chain_id == ZERO32 and entries[1].parsed.chain_id == entries[0].entry_hash
    assert head.entry_hash == hashlib.sha256(entries[-1].header).digest()


def test_entries_are_deterministic() -> None:
    assert build() == build()  # deterministic ECDSA: same key, same entries


def expect(entries: list[Entry], reason: str, key: bytes = PUB) -> None:
    with pytest.raises(LedgerError) as info:
        check_chain(entries, lambda h: key)
    assert info.value.reason == reason, str(info.value)


def test_every_byte_of_every_header_is_covered() -> None:
    entries = build(3)
    for i in range(3):
        for pos in range(len(entries[i].header)):
            broken = list(entries)
            header = bytearray(entries[i].header)
            header[pos] ^= 0x01
            broken[i] = replace(entries[i], header=bytes(header))
            with pytest.raises(LedgerError):
                check_chain(broken, lambda h: PUB)


@pytest.mark.parametrize("i", [0, 2])
def test_payload_and_signature_tampering(i: int) -> None:
    entries = build(3)
    broken = list(entries)
    broken[i] = replace(entries[i], payload=entries[i].payload + b"!")
    expect(broken, "ENTRY_PAYLOAD_HASH")
    sig = bytearray(entries[i].signature)
    sig[10] ^= 0x80
    broken[i] = replace(entries[i], signature=bytes(sig))
    expect(broken, "ENTRY_SIGNATURE_INVALID")


def test_order_gaps_and_foreign_entries() -> None:
    entries = build(5)
    expect([entries[0], entries[2], entries[1], *entries[3:]], "ENTRY_HEIGHT")
    expect([entries[0], *entries[2:]], "ENTRY_HEIGHT")
    expect(entries[1:], "ENTRY_HEIGHT")
    expect([], "LEDGER_EMPTY")
    other_chain = build(5, genesis_payload=b"another genesis")
    expect([*entries[:2], other_chain[2]], "ENTRY_CHAIN_ID")
    expect(entries, "ENTRY_SIGNATURE_INVALID", key=p256_public_key_bytes(OTHER))
    forged = build(5, key=OTHER)  # same headers (the key is in GENESIS's payload in practice), other signer
    expect([*entries[:3], forged[3]], "ENTRY_SIGNATURE_INVALID")


def _signed(head: Head, header: Header, payload: bytes) -> Entry:
    raw = header.to_bytes()
    return Entry(raw, payload, p256_sign(KEY, signed_message("ledger-entry", head.chain_id, raw)))


def test_validly_signed_but_wrong_entries_are_refused() -> None:
    entries = build(2)
    head = check_chain(entries, lambda h: PUB)
    good = entries[1].parsed
    base = Header(
        head.chain_id, head.height + 1, head.entry_hash, good.time_ms, "MINT", hashlib.sha256(b"x").digest()
    )
    cases = {
        "ENTRY_TIME_BACKWARDS": replace(base, time_ms=good.time_ms - 1),
        "ENTRY_CHAIN_BROKEN": replace(base, prev_hash=bytes(32)),
        "ENTRY_OUT_OF_PLACE": replace(base, kind="GENESIS"),
        "ENTRY_HEIGHT": replace(base, height=head.height + 2),
    }
    for reason, header in cases.items():
        with pytest.raises(LedgerError) as info:
            check_entry(head, _signed(head, header, b"x"), PUB)
        assert info.value.reason == reason
    check_entry(head, _signed(head, base, b"x"), PUB)  # the unaltered header passes


def test_make_entry_refuses_what_check_entry_would() -> None:
    head = Head()
    with pytest.raises(LedgerError, match="ENTRY_OUT_OF_PLACE"):
        make_entry(head, "MINT", b"", 1, KEY)
    genesis = make_entry(head, "GENESIS", b"g", 100, KEY)
    head = advance(head, genesis)
    with pytest.raises(LedgerError, match="ENTRY_OUT_OF_PLACE"):
        make_entry(head, "GENESIS", b"g", 100, KEY)
    with pytest.raises(LedgerError, match="ENTRY_TIME_BACKWARDS"):
        make_entry(head, "MINT", b"", 99, KEY)
    with pytest.raises(LedgerError, match="ENTRY_KIND_UNKNOWN"):
        make_entry(head, "TRANSFER", b"", 100, KEY)
    with pytest.raises(LedgerError, match="ENTRY_MALFORMED"):
        make_entry(head, "MINT", "text", 100, KEY)  # type: ignore[arg-type]


def test_malformed_headers() -> None:
    with pytest.raises(LedgerError, match="ENTRY_MALFORMED"):
        Header.from_bytes(b"\x00" * 10)
    header = Header(ZERO32, 0, ZERO32, 0, "MINT", ZERO32)
    raw = bytearray(header.to_bytes())
    raw[-36] = ord("X")  # "XINT": a kind the ledger does not know, same length
    with pytest.raises(LedgerError, match="ENTRY_KIND_UNKNOWN"):
        Header.from_bytes(bytes(raw))
