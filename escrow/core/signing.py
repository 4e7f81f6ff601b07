"""Signature recipes of the trusted core: domain-tagged messages, strict Ed25519, low-s ECDSA P-256.

Two levels, as in pyca/cryptography. The recipes on top (``signed_message``, ``ed25519_sign`` /
``ed25519_verify``, ``p256_sign`` / ``p256_verify``, the key helpers) are what the rest of the escrow
calls; verification raises ``SignatureError`` with a stable ``reason`` and never returns a boolean.
Below them sit the dangerous primitives, private to this module: exact-integer Edwards25519 point
decoding and doubling, used only to *check* encodings (canonical y, small order), never to sign.
The arithmetic is not constant-time; it only ever touches public keys and signatures.

Runs inside the emulated enclave, so it imports the standard library and ``cryptography`` only.
The rules and their reasons are written up in docs/signatures.md; keep the two in step.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from escrow.core.errors import CoreError
from zk import ed25519 as ed

__all__ = [
    "CHAIN_ID_BYTES",
    "DOMAIN_PREFIX",
    "ED25519_KEY_BYTES",
    "ED25519_SIGNATURE_BYTES",
    "KEY_ID_BYTES",
    "KEY_INVALID",
    "KINDS",
    "P256_PUBLIC_KEY_BYTES",
    "P256_SIGNATURE_BYTES",
    "SIGNATURE_INVALID",
    "SIGNATURE_MALFORMED",
    "SignatureError",
    "domain_tag",
    "ed25519_check_public_key",
    "ed25519_key_id",
    "ed25519_public_key",
    "ed25519_sign",
    "ed25519_verify",
    "p256_check_public_key",
    "p256_key_id",
    "p256_public_key_bytes",
    "p256_sign",
    "p256_verify",
    "signed_message",
]

# --- reasons and the error ------------------------------------------------------------------------------

SIGNATURE_INVALID = "SIGNATURE_INVALID"  # well-formed signature and key, but the equation does not hold
KEY_INVALID = "KEY_INVALID"  # wrong length, non-canonical, off the curve, small order, wrong curve
SIGNATURE_MALFORMED = "SIGNATURE_MALFORMED"  # wrong length, scalar out of range, non-canonical R, high s


class SignatureError(CoreError):
    """A key or signature was refused; ``reason`` is SIGNATURE_INVALID, KEY_INVALID or SIGNATURE_MALFORMED."""


# --- domain-tagged messages (DESIGN §6.3) ---------------------------------------------------------------

DOMAIN_PREFIX = "escrow.v1/"
CHAIN_ID_BYTES = 32
KINDS = (
    "mint",
    "pole",
    "tariff",
    "open",
    "attach",
    "stop",
    "ack",
    "receipt",
    "redeem",
    "ledger-entry",
    "ledger-head",
    "session-get",
    "progress",
)


def domain_tag(kind: str) -> bytes:
    """The ASCII domain tag "escrow.v1/<kind>" of a registered kind; ValueError for any other kind."""
    if kind not in KINDS:
        raise ValueError(f"unknown signed-message kind {kind!r}")
    return (DOMAIN_PREFIX + kind).encode("ascii")


def signed_message(kind: str, chain_id: bytes, body: bytes) -> bytes:
    """lp("escrow.v1/" + kind) || chain_id || body, where lp(x) = 4-byte big-endian len(x) || x."""
    tag = domain_tag(kind)
    if not isinstance(chain_id, bytes) or len(chain_id) != CHAIN_ID_BYTES:
        raise ValueError(f"chain id must be exactly {CHAIN_ID_BYTES} bytes")
    _require_bytes(body, "body")
    return len(tag).to_bytes(4, "big") + tag + chain_id + body


def _require_bytes(value: object, what: str) -> None:
    if not isinstance(value, bytes):
        raise TypeError(f"{what} must be bytes")


# --- Edwards25519 arithmetic lives in zk.ed25519 ------------------------------------------------------


def _check_constant(condition: bool, what: str) -> None:
    """A load-time self-check that survives ``python -O`` (unlike assert)."""
    if not condition:
        raise RuntimeError(f"escrow.core.signing self-check failed: {what}")


# --- Ed25519 recipes -----------------------------------------------------------------------------------

ED25519_KEY_BYTES = 32  # private seed and public key
ED25519_SIGNATURE_BYTES = 64  # R (32, a point) || S (32, little-endian scalar < L)
KEY_ID_BYTES = 32


def _ed25519_private(private_key: bytes) -> Ed25519PrivateKey:
    if not isinstance(private_key, bytes) or len(private_key) != ED25519_KEY_BYTES:
        raise SignatureError(KEY_INVALID, f"an Ed25519 private key is a {ED25519_KEY_BYTES}-byte seed")
    return Ed25519PrivateKey.from_private_bytes(private_key)


def ed25519_public_key(private_key: bytes) -> bytes:
    """The 32-byte public key A of a 32-byte private seed (RFC 8032 §5.1.5)."""
    return _ed25519_private(private_key).public_key().public_bytes_raw()


def ed25519_sign(private_key: bytes, message: bytes) -> bytes:
    """The 64-byte RFC 8032 signature R || S (deterministic) of ``message`` under a 32-byte seed."""
    _require_bytes(message, "message")
    return _ed25519_private(private_key).sign(message)


def ed25519_check_public_key(public_key: bytes) -> None:
    """Raise KEY_INVALID unless ``public_key`` is the canonical encoding of a point of large order."""
    if not isinstance(public_key, bytes) or len(public_key) != ED25519_KEY_BYTES:
        raise SignatureError(KEY_INVALID, f"an Ed25519 public key is {ED25519_KEY_BYTES} bytes")
    point = ed.decode(public_key)
    if point is None:
        raise SignatureError(KEY_INVALID, "not the canonical encoding of a curve point")
    if ed.has_small_order(point):
        raise SignatureError(KEY_INVALID, "small-order public key")


def ed25519_verify(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Verify strictly (docs/signatures.md); return None or raise SignatureError."""
    _require_bytes(message, "message")
    ed25519_check_public_key(public_key)
    if not isinstance(signature, bytes) or len(signature) != ED25519_SIGNATURE_BYTES:
        raise SignatureError(SIGNATURE_MALFORMED, f"an Ed25519 signature is {ED25519_SIGNATURE_BYTES} bytes")
    if int.from_bytes(signature[32:], "little") >= ed.ORDER_L:
        raise SignatureError(SIGNATURE_MALFORMED, "S is not reduced mod L")
    r_point = ed.decode(signature[:32])
    if r_point is None:
        raise SignatureError(SIGNATURE_MALFORMED, "R is not the canonical encoding of a curve point")
    if ed.has_small_order(r_point):
        raise SignatureError(SIGNATURE_MALFORMED, "R has small order")
    try:  # cofactorless [S]B = R + [k]A, R compared by encoding (RFC 8032 §5.1.7, as OpenSSL and libsodium)
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except InvalidSignature:
        raise SignatureError(SIGNATURE_INVALID, "Ed25519 signature does not verify") from None


def ed25519_key_id(public_key: bytes) -> bytes:
    """SHA-256 of the 32-byte public key, after checking it as ``ed25519_verify`` would."""
    ed25519_check_public_key(public_key)
    return hashlib.sha256(public_key).digest()


# --- ECDSA P-256 (the enclave's ledger key) ------------------------------------------------------------

P256_PUBLIC_KEY_BYTES = 65  # SEC1 uncompressed: 0x04 || x (32, big-endian) || y (32, big-endian)
P256_SIGNATURE_BYTES = 64  # r || s, each 32 bytes big-endian, 0 < r < n, 0 < s <= n/2

_P256_P = 2**256 - 2**224 + 2**192 + 2**96 - 1  # field prime
_P256_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B  # y^2 = x^3 - 3x + b
_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # group order (prime)
_P256_HALF_N = _P256_N // 2  # low-s: s <= floor(n / 2)

# RFC 6979 nonces; constructing it raises UnsupportedAlgorithm at import if OpenSSL lacks them (< 3.2).
_DETERMINISTIC_ECDSA = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
_ECDSA = ec.ECDSA(hashes.SHA256())


def _p256_on_curve(x: int, y: int) -> bool:
    """y^2 = x^3 - 3x + b (mod p), for x, y < p."""
    return x < _P256_P and y < _P256_P and (y * y - (x * x * x - 3 * x + _P256_B)) % _P256_P == 0


def _p256_private(private_key: ec.EllipticCurvePrivateKey) -> ec.EllipticCurvePrivateKey:
    if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(
        private_key.curve, ec.SECP256R1
    ):
        raise SignatureError(KEY_INVALID, "expected a P-256 (secp256r1) private key")
    return private_key


def _p256_self_check() -> None:
    """Check the constants against OpenSSL: [1]G is on our curve and [n - 1]G = -G."""
    g = ec.derive_private_key(1, ec.SECP256R1()).public_key().public_numbers()
    minus_g = ec.derive_private_key(_P256_N - 1, ec.SECP256R1()).public_key().public_numbers()
    _check_constant(_p256_on_curve(g.x, g.y), "generator on the curve")
    _check_constant((minus_g.x, minus_g.y) == (g.x, _P256_P - g.y), "group order n")


_p256_self_check()


def p256_public_key_bytes(private_key: ec.EllipticCurvePrivateKey) -> bytes:
    """The 65-byte SEC1 uncompressed encoding of a P-256 private key's public point."""
    return (
        _p256_private(private_key)
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )


def _p256_public(public_key: bytes) -> ec.EllipticCurvePublicKey:
    """Load a 65-byte SEC1 uncompressed point strictly, or raise KEY_INVALID."""
    if not isinstance(public_key, bytes) or len(public_key) != P256_PUBLIC_KEY_BYTES or public_key[0] != 4:
        raise SignatureError(KEY_INVALID, "a P-256 public key is 65 bytes: 0x04 || x || y")
    x, y = int.from_bytes(public_key[1:33], "big"), int.from_bytes(public_key[33:], "big")
    if not _p256_on_curve(x, y):
        raise SignatureError(KEY_INVALID, "coordinates not reduced mod p, or the point is not on P-256")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public_key)
    except ValueError:
        raise SignatureError(KEY_INVALID, "OpenSSL refused the P-256 point") from None


def p256_check_public_key(public_key: bytes) -> None:
    """Raise KEY_INVALID unless ``public_key`` is a 65-byte uncompressed point on P-256."""
    _p256_public(public_key)


def p256_sign(private_key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    """ECDSA-SHA256 with RFC 6979 nonces, normalised to low s, as r || s (64 bytes)."""
    _require_bytes(message, "message")
    der = _p256_private(private_key).sign(message, _DETERMINISTIC_ECDSA)
    r, s = decode_dss_signature(der)
    if s > _P256_HALF_N:  # (r, n - s) is the other valid signature for the same nonce
        s = _P256_N - s
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def p256_verify(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Verify a low-s r || s ECDSA-SHA256 signature; return None or raise SignatureError."""
    _require_bytes(message, "message")
    key = _p256_public(public_key)
    if not isinstance(signature, bytes) or len(signature) != P256_SIGNATURE_BYTES:
        raise SignatureError(SIGNATURE_MALFORMED, f"a P-256 signature is {P256_SIGNATURE_BYTES} bytes r || s")
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    if not 0 < r < _P256_N or not 0 < s < _P256_N:
        raise SignatureError(SIGNATURE_MALFORMED, "r and s must lie in [1, n - 1]")
    if s > _P256_HALF_N:
        raise SignatureError(SIGNATURE_MALFORMED, "high s: the signature is not in low-s form")
    try:
        key.verify(encode_dss_signature(r, s), message, _ECDSA)
    except InvalidSignature:
        raise SignatureError(SIGNATURE_INVALID, "P-256 signature does not verify") from None


def p256_key_id(public_key: bytes) -> bytes:
    """SHA-256 of the 65-byte SEC1 uncompressed public key, after checking it."""
    _p256_public(public_key)
    return hashlib.sha256(public_key).digest()
