"""Tests for zk/envelope.py: known answers cross-checked with pycryptodome, tampering, contexts, openings."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import gmpy2
import pytest
from Crypto.Cipher import AES
from Crypto.Hash import SHA256
from Crypto.Protocol import DH
from Crypto.Protocol.KDF import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

import zk.envelope as env_mod
from zk.envelope import (
    MAX_ENVELOPE_BYTES,
    MAX_PLAINTEXT_BYTES,
    MIN_ENVELOPE_BYTES,
    envelope_context,
    generate_keypair,
    open_envelope,
    open_opening,
    public_key,
    seal,
    seal_opening,
)
from zk.errors import EnvelopeError

VECTORS = json.loads((Path(__file__).parent / "vectors" / "envelope_vectors.json").read_text())

# Written out here rather than imported, so the reference below does not share constants with the code.
R = 21888242871839275222246405745257275088548364400416034343698204186575808495617
P25519 = 2**255 - 19
INFO = b"escrow.v1/envelope"

# RFC 7748 section 6.1.
ALICE_PRIV = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUB = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIV = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUB = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
RFC_SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")

# Low-order u-coordinates (the usual list, e.g. libsodium's). RFC 7748 ignores bit 255, so each of these is
# also low order with that bit set; those encodings, and p, p + 1, are non-canonical (integer >= p).
LOW_ORDER_CANONICAL = [
    "00" * 32,  # 0, order 4
    "01" + "00" * 31,  # 1, order 1
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",  # order 8
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",  # order 8
    "ec" + "ff" * 30 + "7f",  # p - 1, order 2
]
LOW_ORDER_NONCANONICAL = (
    [
        "ed" + "ff" * 30 + "7f",  # p  (= 0)
        "ee" + "ff" * 30 + "7f",  # p + 1  (= 1)
    ]
    + [h[:-2] + f"{int(h[-2:], 16) | 0x80:02x}" for h in LOW_ORDER_CANONICAL]
)
# libsodium's list also holds u + p for the order-8 points and 2p - 1, 2p, 2p + 1, written with bit 255 set.
# They are low order only where bit 255 is not masked; under RFC 7748 they are ordinary points, and we
# reject them anyway because they are not canonical.
SODIUM_UNMASKED = [
    "cdeb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880",
    "4c9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f11d7",
    "d9" + "ff" * 31,
    "da" + "ff" * 31,
    "db" + "ff" * 31,
]


# ---------------------------------------------------------------- independent reference implementations


def ref_x25519(k: bytes, u: bytes) -> bytes:
    """RFC 7748 section 5 Montgomery ladder in pure Python (slow, test-only)."""
    kb = bytearray(k)
    kb[0] &= 248
    kb[31] = (kb[31] & 127) | 64
    scalar = int.from_bytes(kb, "little")
    x1 = (int.from_bytes(u, "little") & ((1 << 255) - 1)) % P25519
    x2, z2, x3, z3, swap = 1, 0, x1, 1, 0
    for t in reversed(range(255)):
        bit = (scalar >> t) & 1
        if swap ^ bit:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b, c, d = x2 + z2, x2 - z2, x3 + z3, x3 - z3
        aa, bb, da, cb = a * a, b * b, d * a, c * b
        e = aa - bb
        x3, z3 = (da + cb) ** 2 % P25519, x1 * (da - cb) ** 2 % P25519
        x2, z2 = aa * bb % P25519, e * (aa + 121665 * e) % P25519
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, P25519 - 2, P25519) % P25519).to_bytes(32, "little")


def ref_pub(private: bytes) -> bytes:
    return bytes(DH.import_x25519_private_key(private).public_key().export_key(format="raw"))


def ref_shared(private: bytes, public: bytes) -> bytes:
    priv = DH.import_x25519_private_key(private)
    pub = DH.import_x25519_public_key(public)
    return bytes(DH.key_agreement(static_priv=priv, static_pub=pub, kdf=lambda z: z))


def ref_key_nonce(shared: bytes, eph_pub: bytes, recipient_pub: bytes) -> tuple[bytes, bytes]:
    okm = HKDF(shared, 44, eph_pub + recipient_pub, SHA256, context=INFO)
    assert isinstance(okm, bytes)
    return okm[:32], okm[32:]


def ref_encrypt(
    shared: bytes, eph_pub: bytes, recipient_pub: bytes, plaintext: bytes, context: bytes
) -> bytes:
    key, nonce = ref_key_nonce(shared, eph_pub, recipient_pub)
    header = b"\x01" + eph_pub
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=16)
    cipher.update(header + context)
    ct, tag = cipher.encrypt_and_digest(plaintext)
    return header + ct + tag


def ref_seal(recipient_pub: bytes, plaintext: bytes, context: bytes, eph_priv: bytes) -> bytes:
    eph_pub = ref_pub(eph_priv)
    return ref_encrypt(ref_shared(eph_priv, recipient_pub), eph_pub, recipient_pub, plaintext, context)


def ref_open(recipient_priv: bytes, envelope: bytes, context: bytes) -> bytes:
    assert envelope[0] == 1
    eph_pub = envelope[1:33]
    key, nonce = ref_key_nonce(ref_shared(recipient_priv, eph_pub), eph_pub, ref_pub(recipient_priv))
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=16)
    cipher.update(envelope[:33] + context)
    return bytes(cipher.decrypt_and_verify(envelope[33:-16], envelope[-16:]))


def parse_context(encoded: bytes) -> tuple[bytes, str, bytes, int]:
    """Decode envelope_context's output, insisting on exactly five items and nothing left over."""
    items, pos = [], 0
    while pos < len(encoded):
        (n,) = struct.unpack_from(">I", encoded, pos)
        assert pos + 4 + n <= len(encoded)
        items.append(encoded[pos + 4 : pos + 4 + n])
        pos += 4 + n
    assert len(items) == 5 and items[0] == b"escrow.v1/envelope-context" and len(items[4]) == 8
    return items[1], items[2].decode("ascii"), items[3], int.from_bytes(items[4], "big")


@pytest.fixture(scope="module")
def small() -> tuple[bytes, bytes, bytes, bytes]:
    """(recipient private, recipient public, context, envelope) for a small plaintext."""
    priv, pub = generate_keypair()
    ctx = envelope_context(b"chain", "OPEN", b"s" * 16, 1)
    return priv, pub, ctx, seal(pub, b"opening!", ctx)


# ---------------------------------------------------------------- known answers


def test_reference_implementation_is_available() -> None:
    # pycryptodome >= 3.21 offers X25519 in Crypto.Protocol.DH; the cross-checks below rely on it.
    assert ref_pub(ALICE_PRIV) == ALICE_PUB
    assert ref_shared(ALICE_PRIV, BOB_PUB) == RFC_SHARED


def test_rfc7748_vector_through_our_path() -> None:
    assert public_key(ALICE_PRIV) == ALICE_PUB
    assert public_key(BOB_PRIV) == BOB_PUB
    assert env_mod._x25519(ALICE_PRIV, BOB_PUB) == RFC_SHARED
    assert env_mod._x25519(BOB_PRIV, ALICE_PUB) == RFC_SHARED
    assert ref_x25519(ALICE_PRIV, BOB_PUB) == RFC_SHARED  # the pure-Python ladder agrees too
    # A seal with Alice as the ephemeral key must have used exactly the RFC shared secret.
    envelope = seal(BOB_PUB, b"hello", b"ctx", ephemeral_private=ALICE_PRIV)
    assert envelope[1:33] == ALICE_PUB
    assert envelope == ref_encrypt(RFC_SHARED, ALICE_PUB, BOB_PUB, b"hello", b"ctx")
    assert open_envelope(BOB_PRIV, envelope, b"ctx") == b"hello"


@pytest.mark.parametrize("v", VECTORS["envelope_vectors"], ids=lambda v: v["name"])
def test_known_answer_vectors(v: dict[str, Any]) -> None:
    rpriv, rpub = bytes.fromhex(v["recipient_private"]), bytes.fromhex(v["recipient_public"])
    epriv, epub = bytes.fromhex(v["ephemeral_private"]), bytes.fromhex(v["ephemeral_public"])
    pt, ctx, envelope = (
        bytes.fromhex(v["plaintext"]),
        bytes.fromhex(v["context"]),
        bytes.fromhex(v["envelope"]),
    )
    shared = bytes.fromhex(v["shared_secret"])
    # Our implementation reproduces the frozen bytes.
    assert public_key(rpriv) == rpub and public_key(epriv) == epub
    assert seal(rpub, pt, ctx, ephemeral_private=epriv) == envelope
    assert open_envelope(rpriv, envelope, ctx) == pt
    # The independent implementation (pycryptodome + pure-Python ladder) agrees on every intermediate value.
    assert ref_pub(rpriv) == rpub and ref_pub(epriv) == epub
    assert ref_shared(epriv, rpub) == ref_shared(rpriv, epub) == ref_x25519(epriv, rpub) == shared
    assert ref_key_nonce(shared, epub, rpub) == (bytes.fromhex(v["aes_key"]), bytes.fromhex(v["nonce"]))
    assert ref_seal(rpub, pt, ctx, epriv) == envelope
    assert ref_open(rpriv, envelope, ctx) == pt
    assert len(envelope) == 1 + 32 + len(pt) + 16 and envelope[0] == 1 and envelope[1:33] == epub
    if "opening_value" in v:
        opening = (v["opening_value"], int(v["opening_blinding"]))
        assert open_opening(rpriv, envelope, ctx) == opening
        assert seal_opening(rpub, *opening, ctx, ephemeral_private=epriv) == envelope


@pytest.mark.parametrize("v", VECTORS["context_vectors"], ids=lambda v: v["kind"])
def test_context_vectors(v: dict[str, Any]) -> None:
    chain, sess, seq = bytes.fromhex(v["chain_id"]), bytes.fromhex(v["session_id"]), int(v["sequence"])
    encoded = envelope_context(chain, v["kind"], sess, seq)
    assert encoded.hex() == v["encoding"]
    items = [b"escrow.v1/envelope-context", chain, v["kind"].encode(), sess, seq.to_bytes(8, "big")]
    assert encoded == b"".join(struct.pack(">I", len(i)) + i for i in items)


# ---------------------------------------------------------------- round trips


@settings(max_examples=60, deadline=None)
@given(plaintext=st.binary(max_size=2048), context=st.binary(max_size=256))
def test_round_trip(plaintext: bytes, context: bytes) -> None:
    priv, pub = generate_keypair()
    envelope = seal(pub, plaintext, context)
    assert len(envelope) == MIN_ENVELOPE_BYTES + len(plaintext)
    assert open_envelope(priv, envelope, context) == plaintext
    assert ref_open(priv, envelope, context) == plaintext


@settings(max_examples=40, deadline=None)
@given(
    rpriv=st.binary(min_size=32, max_size=32),
    epriv=st.binary(min_size=32, max_size=32),
    plaintext=st.binary(max_size=300),
    context=st.binary(max_size=100),
)
def test_matches_reference_on_random_keys(
    rpriv: bytes, epriv: bytes, plaintext: bytes, context: bytes
) -> None:
    rpub = public_key(rpriv)
    envelope = seal(rpub, plaintext, context, ephemeral_private=epriv)
    assert envelope == ref_seal(rpub, plaintext, context, epriv)
    assert open_envelope(rpriv, envelope, context) == plaintext


def test_fresh_ephemeral_key_each_time() -> None:
    priv, pub = generate_keypair()
    a, b = seal(pub, b"same", b"ctx"), seal(pub, b"same", b"ctx")
    assert a != b and a[1:33] != b[1:33]
    assert open_envelope(priv, a, b"ctx") == open_envelope(priv, b, b"ctx") == b"same"


def test_generate_keypair() -> None:
    (p1, q1), (p2, q2) = generate_keypair(), generate_keypair()
    assert len(p1) == len(q1) == 32 and p1 != p2 and q1 != q2
    assert public_key(p1) == q1 == ref_pub(p1)


def test_size_limits() -> None:
    priv, pub = generate_keypair()
    big = bytes(MAX_PLAINTEXT_BYTES)
    envelope = seal(pub, big, b"")
    assert len(envelope) == MAX_ENVELOPE_BYTES
    assert open_envelope(priv, envelope, b"") == big
    with pytest.raises(ValueError):
        seal(pub, big + b"\x00", b"")


# ---------------------------------------------------------------- rejection


def test_every_byte_flip_rejected(small: tuple[bytes, bytes, bytes, bytes]) -> None:
    priv, _, ctx, envelope = small
    for pos in range(len(envelope)):
        for mask in (0x01, 0x80, 0xFF):
            tampered = bytearray(envelope)
            tampered[pos] ^= mask
            with pytest.raises(EnvelopeError):
                open_envelope(priv, bytes(tampered), ctx)


def test_wrong_context_rejected(small: tuple[bytes, bytes, bytes, bytes]) -> None:
    priv, _, ctx, envelope = small
    assert open_envelope(priv, envelope, ctx) == b"opening!"
    others = [
        b"",
        ctx[:-1],
        ctx + b"\x00",
        envelope_context(b"chain", "OPEN", b"s" * 16, 2),
        envelope_context(b"chain", "STOP", b"s" * 16, 1),
        envelope_context(b"chain2", "OPEN", b"s" * 16, 1),
    ]
    for other in others:
        with pytest.raises(EnvelopeError):
            open_envelope(priv, envelope, other)


def test_wrong_recipient_rejected(small: tuple[bytes, bytes, bytes, bytes]) -> None:
    _, _, ctx, envelope = small
    with pytest.raises(EnvelopeError):
        open_envelope(generate_keypair()[0], envelope, ctx)


def test_truncated_extended_and_empty_rejected(small: tuple[bytes, bytes, bytes, bytes]) -> None:
    priv, _, ctx, envelope = small
    for n in range(len(envelope)):
        with pytest.raises(EnvelopeError):
            open_envelope(priv, envelope[:n], ctx)
    with pytest.raises(EnvelopeError):
        open_envelope(priv, envelope + b"\x00", ctx)
    with pytest.raises(EnvelopeError, match="shorter"):
        open_envelope(priv, b"", ctx)


@pytest.mark.parametrize("version", [0x00, 0x02, 0x81, 0xFF])
def test_wrong_version_rejected(small: tuple[bytes, bytes, bytes, bytes], version: int) -> None:
    priv, _, ctx, envelope = small
    with pytest.raises(EnvelopeError, match="version"):
        open_envelope(priv, bytes([version]) + envelope[1:], ctx)


def test_oversized_rejected_before_any_crypto(monkeypatch: pytest.MonkeyPatch) -> None:
    priv, _ = generate_keypair()

    def boom(*_: object) -> None:
        raise AssertionError("crypto reached for an oversized envelope")

    monkeypatch.setattr(env_mod, "_x25519", boom)
    monkeypatch.setattr(env_mod, "AESGCM", boom)
    with pytest.raises(EnvelopeError, match="longer"):
        open_envelope(priv, b"\x01" + bytes(MAX_ENVELOPE_BYTES), b"")


@pytest.mark.parametrize("hex_u", LOW_ORDER_CANONICAL + LOW_ORDER_NONCANONICAL)
def test_low_order_points_really_are_low_order(hex_u: str) -> None:
    # Any clamped scalar is a multiple of 8, so it sends every point of order 1, 2, 4 or 8 to zero.
    assert ref_x25519(bytes(range(32)), bytes.fromhex(hex_u)) == bytes(32)


@pytest.mark.parametrize("hex_u", SODIUM_UNMASKED)
def test_unmasked_sodium_entries_are_not_low_order_under_rfc7748(hex_u: str) -> None:
    assert ref_x25519(bytes(range(32)), bytes.fromhex(hex_u)) != bytes(32)
    assert int.from_bytes(bytes.fromhex(hex_u), "little") >= P25519


@pytest.mark.parametrize("hex_u", LOW_ORDER_CANONICAL + LOW_ORDER_NONCANONICAL + SODIUM_UNMASKED)
def test_low_order_ephemeral_key_rejected(hex_u: str) -> None:
    eph = bytes.fromhex(hex_u)
    priv, pub = generate_keypair()
    # Exactly what a sender who accepted the all-zero secret would produce: only the key check stops it.
    forged = ref_encrypt(bytes(32), eph, pub, b"secret", b"ctx")
    reason = "low-order" if hex_u in LOW_ORDER_CANONICAL else "non-canonical"
    with pytest.raises(EnvelopeError, match=reason):
        open_envelope(priv, forged, b"ctx")


@pytest.mark.parametrize("hex_u", LOW_ORDER_CANONICAL + LOW_ORDER_NONCANONICAL + SODIUM_UNMASKED)
def test_low_order_recipient_key_rejected_at_seal(hex_u: str) -> None:
    with pytest.raises(ValueError):
        seal(bytes.fromhex(hex_u), b"secret", b"ctx")


def test_bad_key_lengths() -> None:
    _, pub = generate_keypair()
    envelope = seal(pub, b"x", b"")
    for bad in (b"", bytes(31), bytes(33)):
        with pytest.raises(ValueError):
            public_key(bad)
        with pytest.raises(ValueError):
            seal(bad, b"x", b"")
        with pytest.raises(ValueError):
            seal(pub, b"x", b"", ephemeral_private=bad)
        with pytest.raises(ValueError):
            open_envelope(bad, envelope, b"")


# ---------------------------------------------------------------- envelope_context


def test_context_shifting_bytes_between_fields_changes_encoding() -> None:
    encodings = {
        envelope_context(b"ab", "c", b"d", 1),
        envelope_context(b"a", "bc", b"d", 1),
        envelope_context(b"a", "b", b"cd", 1),
        envelope_context(b"abc", "d", b"", 1),
        envelope_context(b"", "abc", b"d", 1),
        envelope_context(b"a", "b", b"c\x00\x00\x00\x00\x00\x00\x00\x00", 1),
        envelope_context(b"a", "b", b"c", 1 << 8),
    }
    assert len(encodings) == 7


context_fields = st.tuples(
    st.binary(max_size=40),
    st.text(alphabet=st.characters(max_codepoint=127), min_size=1, max_size=20),
    st.binary(max_size=40),
    st.integers(min_value=0, max_value=2**64 - 1),
)


@given(a=context_fields, b=context_fields)
def test_context_is_injective(a: tuple[bytes, str, bytes, int], b: tuple[bytes, str, bytes, int]) -> None:
    ea, eb = envelope_context(*a), envelope_context(*b)
    assert parse_context(ea) == a and parse_context(eb) == b  # decodable, hence unambiguous
    assert (ea == eb) == (a == b)


@pytest.mark.parametrize("seq", [-1, 2**64, 2**70, -(2**64)])
def test_context_bad_sequence(seq: int) -> None:
    with pytest.raises(ValueError, match="sequence"):
        envelope_context(b"c", "OPEN", b"s", seq)


def test_context_bad_fields() -> None:
    assert parse_context(envelope_context(b"c", "OPEN", b"s", 2**64 - 1))[3] == 2**64 - 1
    for kind in ("", "caf\u00e9", "\u2603"):
        with pytest.raises(ValueError, match="kind"):
            envelope_context(b"c", kind, b"s", 0)
    with pytest.raises(TypeError):
        envelope_context(b"c", "OPEN", b"s", 1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        envelope_context("c", "OPEN", b"s", 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        envelope_context(b"c", "OPEN", 16, 1)  # type: ignore[arg-type]


# ---------------------------------------------------------------- opening recipes


@settings(max_examples=50, deadline=None)
@given(value=st.integers(0, 2**64 - 1), blinding=st.integers(0, R - 1), context=st.binary(max_size=64))
def test_opening_round_trip(value: int, blinding: int, context: bytes) -> None:
    priv, pub = generate_keypair()
    envelope = seal_opening(pub, value, blinding, context)
    assert len(envelope) == MIN_ENVELOPE_BYTES + 40
    assert open_opening(priv, envelope, context) == (value, blinding)
    assert ref_open(priv, envelope, context) == value.to_bytes(8, "big") + blinding.to_bytes(32, "big")


def test_opening_accepts_mpz_and_boundaries() -> None:
    priv, pub = generate_keypair()
    for value, blinding in [(0, 0), (2**64 - 1, R - 1), (gmpy2.mpz(7), gmpy2.mpz(R - 2))]:
        got = open_opening(priv, seal_opening(pub, value, blinding, b"c"), b"c")
        assert got == (int(value), int(blinding)) and all(type(x) is int for x in got)


@pytest.mark.parametrize(("value", "blinding"), [(2**64, 1), (-1, 1), (1, -1), (1, R), (1, 2**256)])
def test_opening_seal_rejects_out_of_range(value: int, blinding: int) -> None:
    with pytest.raises(ValueError):
        seal_opening(generate_keypair()[1], value, blinding, b"c")


@pytest.mark.parametrize("blinding", [R, R + 1, 2**256 - 1])
def test_opening_open_rejects_blinding_not_below_r(blinding: int) -> None:
    priv, pub = generate_keypair()
    envelope = seal(pub, (5).to_bytes(8, "big") + blinding.to_bytes(32, "big"), b"c")
    with pytest.raises(EnvelopeError, match="below r"):
        open_opening(priv, envelope, b"c")


@pytest.mark.parametrize("length", [0, 8, 39, 41, 72])
def test_opening_open_rejects_wrong_length(length: int) -> None:
    priv, pub = generate_keypair()
    with pytest.raises(EnvelopeError, match="40 bytes"):
        open_opening(priv, seal(pub, bytes(length), b"c"), b"c")


def test_opening_wrong_context_rejected() -> None:
    priv, pub = generate_keypair()
    envelope = seal_opening(pub, 1, 2, envelope_context(b"c", "OPEN", b"s", 0))
    with pytest.raises(EnvelopeError):
        open_opening(priv, envelope, envelope_context(b"c", "OPEN", b"s", 1))
