"""The trusted core's signature recipes: domain-tagged messages, strict Ed25519, low-s ECDSA P-256."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

import pytest
from Crypto.Hash import SHA256
from Crypto.PublicKey import ECC
from Crypto.Signature import DSS
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from escrow.core import signing
from escrow.core.signing import (
    KEY_INVALID,
    KINDS,
    SIGNATURE_INVALID,
    SIGNATURE_MALFORMED,
    SignatureError,
)
from zk import ed25519 as ed

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, -1, P) % P
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256 group order
P256_P = 2**256 - 2**224 + 2**192 + 2**96 - 1
CHAIN = hashlib.sha256(b"test chain").digest()


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _reason(call: Callable[..., object], *args: object) -> str:
    with pytest.raises(SignatureError) as info:
        call(*args)
    return info.value.reason


# --- signed messages ------------------------------------------------------------------------------------


def test_signed_message_layout() -> None:
    message = signing.signed_message("mint", CHAIN, b"body")
    assert message == b"\x00\x00\x00\x0e" + b"escrow.v1/mint" + CHAIN + b"body"
    assert (
        signing.signed_message("ledger-head", CHAIN, b"") == b"\x00\x00\x00\x15escrow.v1/ledger-head" + CHAIN
    )


def test_kind_registry() -> None:
    assert len(set(KINDS)) == len(KINDS) == 13
    for kind in KINDS:
        assert re.fullmatch(r"[a-z]+(-[a-z]+)*", kind)
        assert signing.domain_tag(kind) == b"escrow.v1/" + kind.encode()


@pytest.mark.parametrize(
    "kind", ["MINT", "mint ", "", "escrow.v1/mint", "ledger_entry", "settle", "min", 5, None]
)
def test_unknown_kind_refused(kind: object) -> None:
    with pytest.raises(ValueError, match="unknown signed-message kind"):
        signing.signed_message(kind, CHAIN, b"")  # type: ignore[arg-type]


@pytest.mark.parametrize("chain_id", [b"", bytes(31), bytes(33), bytearray(32), "0" * 32])
def test_chain_id_must_be_32_bytes(chain_id: object) -> None:
    with pytest.raises(ValueError, match="chain id"):
        signing.signed_message("open", chain_id, b"")  # type: ignore[arg-type]


def test_body_must_be_bytes() -> None:
    with pytest.raises(TypeError):
        signing.signed_message("open", CHAIN, "body")  # type: ignore[arg-type]


@given(st.sampled_from(KINDS), st.binary(min_size=32, max_size=32), st.binary(max_size=64))
def test_message_parses_back(kind: str, chain_id: bytes, body: bytes) -> None:
    # The tag is length-prefixed and the chain id fixed, so the message determines all three parts.
    message = signing.signed_message(kind, chain_id, body)
    tag_len = int.from_bytes(message[:4], "big")
    assert message[4 : 4 + tag_len] == b"escrow.v1/" + kind.encode()
    assert message[4 + tag_len : 36 + tag_len] == chain_id
    assert message[36 + tag_len :] == body


def test_signature_does_not_cross_kinds_or_chains() -> None:
    seed = bytes(range(32))
    public = signing.ed25519_public_key(seed)
    signature = signing.ed25519_sign(seed, signing.signed_message("open", CHAIN, b"same body"))
    signing.ed25519_verify(public, signing.signed_message("open", CHAIN, b"same body"), signature)
    for other in (
        signing.signed_message("redeem", CHAIN, b"same body"),
        signing.signed_message("open", bytes(32), b"same body"),
    ):
        assert _reason(signing.ed25519_verify, public, other, signature) == SIGNATURE_INVALID


# --- Ed25519: RFC 8032 §7.1 ----------------------------------------------------------------------------

RFC8032 = [  # (name, secret seed, public key, message, signature)
    (
        "TEST 1",
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "TEST 2",
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "TEST 3",
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
    (
        "TEST SHA(abc)",
        "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
        "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
    ),
]
RFC8032_IDS = [v[0] for v in RFC8032]


def _vector(name: str, *fields: str) -> tuple[bytes, ...]:
    return tuple(bytes.fromhex(f) for f in fields)


@pytest.mark.parametrize(("name", "seed", "public", "message", "signature"), RFC8032, ids=RFC8032_IDS)
def test_rfc8032_vectors(name: str, seed: str, public: str, message: str, signature: str) -> None:
    sk, pk, msg, sig = _vector(name, seed, public, message, signature)
    assert signing.ed25519_public_key(sk) == pk
    assert signing.ed25519_sign(sk, msg) == sig
    signing.ed25519_verify(pk, msg, sig)
    assert signing.ed25519_key_id(pk) == hashlib.sha256(pk).digest()


def test_sha_abc_message_is_sha512_of_abc() -> None:
    assert bytes.fromhex(RFC8032[3][3]) == hashlib.sha512(b"abc").digest()


@pytest.mark.parametrize(("name", "seed", "public", "message", "signature"), RFC8032, ids=RFC8032_IDS)
def test_ed25519_every_bit_flip_rejected(
    name: str, seed: str, public: str, message: str, signature: str
) -> None:
    _, pk, msg, sig = _vector(name, seed, public, message, signature)
    for bit in range(8 * len(sig)):
        with pytest.raises(SignatureError):
            signing.ed25519_verify(pk, msg, _flip(sig, bit))
    for bit in range(8 * len(pk)):
        with pytest.raises(SignatureError):
            signing.ed25519_verify(_flip(pk, bit), msg, sig)
    for bit in range(8 * len(msg)):
        assert _reason(signing.ed25519_verify, pk, _flip(msg, bit), sig) == SIGNATURE_INVALID


@given(st.binary(min_size=32, max_size=32), st.binary(max_size=100))
def test_ed25519_round_trip(seed: bytes, message: bytes) -> None:
    public = signing.ed25519_public_key(seed)
    signing.ed25519_verify(public, message, signing.ed25519_sign(seed, message))


# --- Ed25519 strictness ---------------------------------------------------------------------------------

# libsodium's blocklist (ed25519_ref10.c, ge25519_has_small_order), compared there with the sign bit
# masked off; "Taming the many EdDSAs" (Chalkias et al. 2020) lists the same 14 encodings.
_SMALL_ORDER_BASE = [
    "0000000000000000000000000000000000000000000000000000000000000000",  # y = 0: (±sqrt(-1), 0), order 4
    "0100000000000000000000000000000000000000000000000000000000000000",  # y = 1: the identity
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p - 1: (0, -1), order 2
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p: non-canonical y = 0
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p + 1: non-canonical y = 1
]
SMALL_ORDER_KEYS = [bytes.fromhex(h) for h in _SMALL_ORDER_BASE] + [
    bytes.fromhex(h)[:31] + bytes([bytes.fromhex(h)[31] | 0x80]) for h in _SMALL_ORDER_BASE
]


def _affine_add(p1: tuple[int, int], p2: tuple[int, int]) -> tuple[int, int]:
    """Reference twisted-Edwards addition in affine coordinates, independent of the module's code."""
    (x1, y1), (x2, y2) = p1, p2
    t = D * x1 * x2 * y1 * y2 % P
    return ((x1 * y2 + x2 * y1) * pow(1 + t, -1, P) % P, (y1 * y2 + x1 * x2) * pow(1 - t, -1, P) % P)


def _affine_mult(k: int, point: tuple[int, int]) -> tuple[int, int]:
    result = (0, 1)
    for bit in bin(k)[2:]:
        result = _affine_add(result, result)
        if bit == "1":
            result = _affine_add(result, point)
    return result


def _affine_encode(point: tuple[int, int]) -> bytes:
    return (point[1] | (point[0] & 1) << 255).to_bytes(32, "little")


def _affine(encoding: bytes) -> tuple[int, int]:
    point = ed.decode(encoding)
    assert point is not None
    z_inv = pow(point[2], -1, P)
    return (point[0] * z_inv % P, point[1] * z_inv % P)


def _clamped_scalar(seed: bytes) -> int:
    h = hashlib.sha512(seed).digest()
    return (int.from_bytes(h[:32], "little") & ((1 << 254) - 8)) | (1 << 254)


def test_module_arithmetic_matches_affine_reference_and_openssl() -> None:
    seed = bytes.fromhex(RFC8032[0][1])
    base = _affine(ed.encode(ed.BASE))
    assert base[1] == 4 * pow(5, -1, P) % P and base[0] % 2 == 0
    # [a]B by the independent affine formulas equals OpenSSL's public key.
    assert _affine_encode(_affine_mult(_clamped_scalar(seed), base)) == signing.ed25519_public_key(seed)
    for k in (1, 2, 3, 8, 1000, L - 1, 2**200 + 12345):
        expected = _affine_encode(_affine_mult(k, base))
        assert ed.encode(ed.scalar_mult(k, ed.BASE)) == expected


def test_small_order_list_is_exactly_the_eight_torsion_points() -> None:
    canonical = [k for k in SMALL_ORDER_KEYS if ed.decode(k) is not None]
    points = {_affine(k) for k in canonical}
    assert len(points) == len(canonical) == 8
    order8 = _affine(SMALL_ORDER_KEYS[2])
    assert _affine_mult(4, order8) != (0, 1) and _affine_mult(8, order8) == (0, 1)
    assert {_affine_mult(k, order8) for k in range(8)} == points  # the torsion subgroup, all of it
    assert {_affine_encode(pt) for pt in points} == set(canonical)


@pytest.mark.parametrize("key", SMALL_ORDER_KEYS, ids=[k.hex()[:8] + k.hex()[-2:] for k in SMALL_ORDER_KEYS])
def test_small_order_keys_rejected(key: bytes) -> None:
    seed = bytes(range(32))
    assert _reason(signing.ed25519_verify, key, b"m", signing.ed25519_sign(seed, b"m")) == KEY_INVALID
    assert _reason(signing.ed25519_key_id, key) == KEY_INVALID
    assert _reason(signing.ed25519_check_public_key, key) == KEY_INVALID


def test_identity_key_universal_signature_rejected() -> None:
    # Under A = identity, (R = [a]B, S = a) satisfies [S]B = R + [k]A for every message: OpenSSL 4.0
    # accepts it for all three encodings of the identity. The strict check refuses the key.
    seed = bytes(range(32))
    forged = signing.ed25519_public_key(seed) + (_clamped_scalar(seed) % L).to_bytes(32, "little")
    for key in (SMALL_ORDER_KEYS[1], SMALL_ORDER_KEYS[6], SMALL_ORDER_KEYS[8]):
        for message in (b"", b"pay the pole", b"pay me instead"):
            assert _reason(signing.ed25519_verify, key, message, forged) == KEY_INVALID


def _noncanonical_valid_points() -> list[int]:
    """The y < 19 (so y + p still fits in 255 bits) that are the y of a large-order point."""
    found = []
    for y in range(2, 19):
        point = ed.decode(y.to_bytes(32, "little"))
        if point is not None and not ed.has_small_order(point):
            found.append(y)
    return found


def test_noncanonical_key_of_a_valid_point_rejected() -> None:
    ys = _noncanonical_valid_points()
    assert ys  # several exist (e.g. y = 3, 4, 5, ...)
    for y in ys:
        signing.ed25519_check_public_key(y.to_bytes(32, "little"))  # the canonical form is a fine key
        for sign in (0, 1 << 255):
            key = ((y + P) | sign).to_bytes(32, "little")
            assert _reason(signing.ed25519_check_public_key, key) == KEY_INVALID


def test_key_off_the_curve_rejected() -> None:
    off = next(y for y in range(2, 100) if ed.decode(y.to_bytes(32, "little")) is None)
    assert _reason(signing.ed25519_check_public_key, off.to_bytes(32, "little")) == KEY_INVALID


def test_malleated_s_rejected() -> None:
    _, pk, msg, sig = _vector(*RFC8032[1])
    s = int.from_bytes(sig[32:], "little")
    for bad_s in (s + L, L, 2**256 - 1, s + 2 * L):
        if bad_s < 2**256:
            malleated = sig[:32] + bad_s.to_bytes(32, "little")
            assert _reason(signing.ed25519_verify, pk, msg, malleated) == SIGNATURE_MALFORMED


def test_noncanonical_or_small_order_r_rejected() -> None:
    _, pk, msg, sig = _vector(*RFC8032[1])
    bad_rs = [
        ((y + P) | sign).to_bytes(32, "little")
        for y in _noncanonical_valid_points()
        for sign in (0, 1 << 255)
    ]
    bad_rs += SMALL_ORDER_KEYS
    for r in bad_rs:
        assert _reason(signing.ed25519_verify, pk, msg, r + sig[32:]) == SIGNATURE_MALFORMED


def test_signature_with_identity_r_rejected() -> None:
    # A signer can make R the identity (nonce 0, S = k a); cofactorless verification accepts it,
    # libsodium refuses small-order R, and so do we.
    seed = bytes.fromhex(RFC8032[0][1])
    pk, a, msg = signing.ed25519_public_key(seed), _clamped_scalar(seed), b"nonce zero"
    r = SMALL_ORDER_KEYS[1]
    k = int.from_bytes(hashlib.sha512(r + pk + msg).digest(), "little") % L
    signature = r + (k * a % L).to_bytes(32, "little")
    assert _reason(signing.ed25519_verify, pk, msg, signature) == SIGNATURE_MALFORMED


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_ed25519_wrong_lengths(size: int) -> None:
    _, pk, msg, sig = _vector(*RFC8032[0])
    assert _reason(signing.ed25519_verify, pk[:size] + bytes(max(0, size - 32)), msg, sig) == KEY_INVALID
    assert _reason(signing.ed25519_public_key, bytes(size)) == KEY_INVALID
    assert _reason(signing.ed25519_sign, bytes(size), msg) == KEY_INVALID
    for sig_size in (0, 32, 63, 65, 128):
        assert _reason(signing.ed25519_verify, pk, msg, (sig * 2)[:sig_size]) == SIGNATURE_MALFORMED


def test_ed25519_non_bytes_refused() -> None:
    _, pk, msg, sig = _vector(*RFC8032[0])
    assert _reason(signing.ed25519_verify, bytearray(pk), msg, sig) == KEY_INVALID
    assert _reason(signing.ed25519_verify, pk, msg, bytearray(sig)) == SIGNATURE_MALFORMED
    with pytest.raises(TypeError):
        signing.ed25519_verify(pk, "", sig)  # type: ignore[arg-type]


# --- ECDSA P-256: RFC 6979 §A.2.5 -----------------------------------------------------------------------

RFC6979_X = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
RFC6979_UX = 0x60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6
RFC6979_UY = 0x7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299
RFC6979 = [  # (message, k, r, s) for SHA-256
    (
        b"sample",
        0xA6E3C57DD01ABE90086538398355DD4C3B17AA873382B0F24D6129493D8AAD60,
        0xEFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716,
        0xF7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8,
    ),
    (
        b"test",
        0xD16B6AE827F17175E040871A1C7EC3500192C4C92677336EC2537ACAEE0008E0,
        0xF1ABB023518351CD71D881567B1EA663ED3EFCF6C5132B354F28D3B0B7D38367,
        0x019F4113742A2B14BD25926B49C649155F267E60D3814B4C0CC84250E46F0083,
    ),
]
RFC6979_KEY = ec.derive_private_key(RFC6979_X, ec.SECP256R1())
RFC6979_PUBLIC = b"\x04" + RFC6979_UX.to_bytes(32, "big") + RFC6979_UY.to_bytes(32, "big")


def _rs(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def test_rfc6979_public_key() -> None:
    assert signing.p256_public_key_bytes(RFC6979_KEY) == RFC6979_PUBLIC
    assert signing.p256_key_id(RFC6979_PUBLIC) == hashlib.sha256(RFC6979_PUBLIC).digest()


@pytest.mark.parametrize(("message", "k", "r", "s"), RFC6979, ids=["sample", "test"])
def test_rfc6979_vectors(message: bytes, k: int, r: int, s: int) -> None:
    # k is the RFC's nonce: r = x([k]G) mod n.
    assert ec.derive_private_key(k, ec.SECP256R1()).public_key().public_numbers().x % N == r
    low_s = min(s, N - s)  # "sample" has a high s in the RFC, "test" a low one
    assert (s > N // 2) == (message == b"sample")
    signature = signing.p256_sign(RFC6979_KEY, message)
    assert signature == _rs(r, low_s)
    assert signing.p256_sign(RFC6979_KEY, message) == signature  # deterministic
    signing.p256_verify(RFC6979_PUBLIC, message, signature)
    assert _reason(signing.p256_verify, RFC6979_PUBLIC, message, _rs(r, N - low_s)) == SIGNATURE_MALFORMED


def test_every_bit_flip_rejected_p256() -> None:
    message = b"ledger entry"
    signature = signing.p256_sign(RFC6979_KEY, message)
    for bit in range(8 * len(signature)):
        with pytest.raises(SignatureError):
            signing.p256_verify(RFC6979_PUBLIC, message, _flip(signature, bit))
    for bit in range(8 * len(RFC6979_PUBLIC)):
        with pytest.raises(SignatureError):
            signing.p256_verify(_flip(RFC6979_PUBLIC, bit), message, signature)
    for bit in range(8 * len(message)):
        assert (
            _reason(signing.p256_verify, RFC6979_PUBLIC, _flip(message, bit), signature) == SIGNATURE_INVALID
        )


@given(st.integers(min_value=1, max_value=N - 1), st.binary(max_size=100))
def test_p256_matches_pycryptodome(d: int, message: bytes) -> None:
    private_key = ec.derive_private_key(d, ec.SECP256R1())
    public = signing.p256_public_key_bytes(private_key)
    theirs = ECC.construct(curve="P-256", d=d)
    assert theirs.public_key().export_key(format="raw") == public
    ours = signing.p256_sign(private_key, message)
    # Same RFC 6979 nonce and the same low-s rule: byte-identical signatures.
    assert DSS.new(theirs, "deterministic-rfc6979", "binary", low_s=True).sign(SHA256.new(message)) == ours
    verifier = DSS.new(theirs.public_key(), "fips-186-3", "binary", low_s=True)
    verifier.verify(SHA256.new(message), ours)
    high = _rs(int.from_bytes(ours[:32], "big"), N - int.from_bytes(ours[32:], "big"))
    with pytest.raises(ValueError):
        verifier.verify(SHA256.new(message), high)
    assert _reason(signing.p256_verify, public, message, high) == SIGNATURE_MALFORMED
    # Signatures with random nonces from pycryptodome verify here too.
    random_sig = DSS.new(theirs, "fips-186-3", "binary", low_s=True).sign(SHA256.new(message))
    signing.p256_verify(public, message, random_sig)


@pytest.mark.parametrize(
    ("r", "s"),
    [(0, 1), (1, 0), (0, 0), (N, 1), (1, N), (2**256 - 1, 1), (1, 2**256 - 1), (1, N // 2 + 1), (1, N - 1)],
)
def test_p256_scalars_out_of_range(r: int, s: int) -> None:
    assert _reason(signing.p256_verify, RFC6979_PUBLIC, b"m", _rs(r, s)) == SIGNATURE_MALFORMED


def test_p256_s_at_half_n_is_low() -> None:
    # s = (n - 1) / 2 is the largest low s: well-formed, so only the equation can fail.
    assert _reason(signing.p256_verify, RFC6979_PUBLIC, b"m", _rs(1, N // 2)) == SIGNATURE_INVALID


@pytest.mark.parametrize("size", [0, 63, 65, 70, 72])
def test_p256_signature_lengths(size: int) -> None:
    signature = signing.p256_sign(RFC6979_KEY, b"m")
    der_like = (signature * 2)[:size]
    assert _reason(signing.p256_verify, RFC6979_PUBLIC, b"m", der_like) == SIGNATURE_MALFORMED


_P256_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
_P256_Y_AT_X0 = pow(_P256_B, (P256_P + 1) // 4, P256_P)  # (0, sqrt(b)) is on P-256: b is a square


def test_p256_point_at_x0_is_a_key() -> None:
    assert _P256_Y_AT_X0**2 % P256_P == _P256_B
    signing.p256_check_public_key(b"\x04" + bytes(32) + _P256_Y_AT_X0.to_bytes(32, "big"))


def _p256_keys_invalid() -> list[bytes]:
    x, y = RFC6979_UX.to_bytes(32, "big"), RFC6979_UY.to_bytes(32, "big")
    compressed = bytes([2 + (RFC6979_UY & 1)]) + x
    return [
        b"",
        b"\x00",  # SEC1 point at infinity
        compressed,
        b"\x02" + x + y,
        b"\x03" + x + y,
        b"\x06" + x + y,  # hybrid form
        RFC6979_PUBLIC[:64],
        RFC6979_PUBLIC + b"\x00",
        b"\x04" + x + (RFC6979_UY + 1).to_bytes(32, "big"),  # off the curve
        b"\x04" + P256_P.to_bytes(32, "big") + y,  # x not reduced
        b"\x04" + P256_P.to_bytes(32, "big") + _P256_Y_AT_X0.to_bytes(32, "big"),  # (0, y) with x = 0 + p
        bytes(65),
        b"\x04" + bytes(64),
    ]


@pytest.mark.parametrize("key", _p256_keys_invalid())
def test_p256_invalid_keys(key: bytes) -> None:
    signature = signing.p256_sign(RFC6979_KEY, b"m")
    assert _reason(signing.p256_verify, key, b"m", signature) == KEY_INVALID
    assert _reason(signing.p256_key_id, key) == KEY_INVALID
    assert _reason(signing.p256_check_public_key, key) == KEY_INVALID


def test_p256_negated_key_is_a_key_but_not_the_signer() -> None:
    negated = RFC6979_PUBLIC[:33] + (P256_P - RFC6979_UY).to_bytes(32, "big")
    signing.p256_check_public_key(negated)
    signature = signing.p256_sign(RFC6979_KEY, b"m")
    assert _reason(signing.p256_verify, negated, b"m", signature) == SIGNATURE_INVALID


def test_p256_wrong_curve_private_key() -> None:
    other = ec.generate_private_key(ec.SECP384R1())
    assert _reason(signing.p256_sign, other, b"m") == KEY_INVALID
    assert _reason(signing.p256_public_key_bytes, other) == KEY_INVALID


def test_key_ids_differ_and_have_fixed_size() -> None:
    ids = {signing.ed25519_key_id(bytes.fromhex(v[2])) for v in RFC8032}
    ids.add(signing.p256_key_id(RFC6979_PUBLIC))
    assert len(ids) == 5 and all(len(i) == signing.KEY_ID_BYTES for i in ids)
