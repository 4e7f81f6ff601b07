"""One-time owner keys for notes (stealth addresses) and Ed25519 signing with a derived scalar.

A wallet derives everything from one 32-byte seed (zk/notes/stealth.md):

  s = SHA-512("escrow.v1/wallet/spend" || seed) mod L     spend scalar, S = s*B (Ed25519 point)
  v = SHA-256("escrow.v1/wallet/view" || seed)             view key, V = X25519(v, 9)
  address = S || V (64 bytes; as text "esc1" + base32(address || SHA-256(address)[:4]), lower case)

To pay an address, a sender picks a fresh X25519 key e (E = its public key; the note's envelope is
sealed with the same e, so E is the envelope's ephemeral key) and derives the note's one-time owner key

  h = SHA-512(lp("escrow.v1/stealth/h") || X25519(e, V) || E || V || lp(context)) mod L
  P = h*B + S

The recipient finds the same h from X25519(v, E) and owns x = h + s mod L, with P = x*B; nobody else
can sign for P, and two notes never share a key. Spending signs with x as an Ed25519 secret scalar
(RFC 8032 §5.1.6 with the scalar given directly and a deterministic nonce from x and the message); the
signatures verify as ordinary Ed25519 signatures under P.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from zk import ed25519 as ed

ADDRESS_BYTES = 64
TEXT_PREFIX = "esc1"


class StealthError(ValueError):
    """A malformed address, key or seed."""


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _x25519_public(private: bytes) -> bytes:
    key = x25519.X25519PrivateKey.from_private_bytes(private)
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _x25519(private: bytes, public: bytes) -> bytes:
    try:
        shared = x25519.X25519PrivateKey.from_private_bytes(private).exchange(
            x25519.X25519PublicKey.from_public_bytes(public)
        )
    except ValueError:  # OpenSSL refuses an all-zero result (a low-order public key)
        raise StealthError("X25519 with a low-order key") from None
    if shared == bytes(32):
        raise StealthError("X25519 shared secret is zero: low-order key")
    return shared


def _scalar(data: bytes) -> int:
    return int.from_bytes(hashlib.sha512(data).digest(), "little") % ed.ORDER_L


@dataclass(frozen=True)
class Address:
    """Where notes are paid: the spend public key S (Ed25519) and the view public key V (X25519)."""

    spend_public: bytes
    view_public: bytes

    def __post_init__(self) -> None:
        point = ed.decode(self.spend_public) if isinstance(self.spend_public, bytes) else None
        if point is None or ed.has_small_order(point):
            raise StealthError("spend key must be a canonical Ed25519 point of large order")
        if not isinstance(self.view_public, bytes) or len(self.view_public) != 32:
            raise StealthError("view key must be 32 bytes")

    def to_bytes(self) -> bytes:
        return self.spend_public + self.view_public

    @classmethod
    def from_bytes(cls, data: bytes) -> Address:
        if not isinstance(data, bytes) or len(data) != ADDRESS_BYTES:
            raise StealthError(f"an address is {ADDRESS_BYTES} bytes")
        return cls(data[:32], data[32:])

    def to_text(self) -> str:
        """esc1 + lower-case base32 (no padding) of the address and a 4-byte SHA-256 checksum."""
        raw = self.to_bytes()
        body = base64.b32encode(raw + hashlib.sha256(raw).digest()[:4]).decode().rstrip("=").lower()
        return TEXT_PREFIX + body

    @classmethod
    def from_text(cls, text: str) -> Address:
        if not isinstance(text, str) or not text.startswith(TEXT_PREFIX):
            raise StealthError(f"an address starts with {TEXT_PREFIX}")
        body = text[len(TEXT_PREFIX) :].upper()
        try:
            data = base64.b32decode(body + "=" * (-len(body) % 8))
        except ValueError:
            raise StealthError("address is not base32") from None
        raw, check = data[:-4], data[-4:]
        if len(raw) != ADDRESS_BYTES or hashlib.sha256(raw).digest()[:4] != check:
            raise StealthError("address checksum does not match (mistyped?)")
        address = cls.from_bytes(raw)
        if address.to_text() != text:
            raise StealthError("non-canonical address text")
        return address


@dataclass(frozen=True)
class WalletKeys:
    """A wallet's secrets, all derived from its seed."""

    spend_scalar: int
    view_private: bytes

    def __repr__(self) -> str:  # secrets never reach a log
        return "WalletKeys(<secret>)"

    @classmethod
    def from_seed(cls, seed: bytes) -> WalletKeys:
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise StealthError("a wallet seed is 32 bytes")
        s = _scalar(b"escrow.v1/wallet/spend" + seed)
        if s == 0:
            raise StealthError("degenerate seed")
        return cls(spend_scalar=s, view_private=hashlib.sha256(b"escrow.v1/wallet/view" + seed).digest())

    def address(self) -> Address:
        spend = ed.encode(ed.scalar_mult(self.spend_scalar, ed.BASE))
        return Address(spend_public=spend, view_public=_x25519_public(self.view_private))

    def recognise(self, one_time_public: bytes, ephemeral_public: bytes, context: bytes) -> int | None:
        """The secret scalar x of a note's owner key if this wallet owns it, else None."""
        address = self.address()
        try:
            h = _h(
                _x25519(self.view_private, ephemeral_public), ephemeral_public, address.view_public, context
            )
        except (StealthError, ValueError):
            return None
        x = (h + self.spend_scalar) % ed.ORDER_L
        if x == 0 or ed.encode(ed.scalar_mult(x, ed.BASE)) != one_time_public:
            return None
        return x


def _h(shared: bytes, ephemeral_public: bytes, view_public: bytes, context: bytes) -> int:
    return _scalar(
        _lp(b"escrow.v1/stealth/h") + shared + ephemeral_public + view_public + _lp(bytes(context))
    )


def one_time_key(address: Address, ephemeral_private: bytes, context: bytes) -> tuple[bytes, bytes]:
    """(P, E): the note's one-time owner key for ``address`` and the ephemeral public key E to
    publish with it (the envelope sealed with the same ephemeral key carries E)."""
    ephemeral_public = _x25519_public(ephemeral_private)
    h = _h(_x25519(ephemeral_private, address.view_public), ephemeral_public, address.view_public, context)
    spend = ed.decode(address.spend_public)
    assert spend is not None  # checked when the Address was built
    P = ed.add(ed.scalar_mult(h, ed.BASE), spend)
    if ed.is_identity(P):
        raise StealthError("degenerate one-time key")
    return ed.encode(P), ephemeral_public


def public_key(secret_scalar: int) -> bytes:
    """x*B, encoded."""
    return ed.encode(ed.scalar_mult(secret_scalar % ed.ORDER_L, ed.BASE))


def sign_with_scalar(secret_scalar: int, message: bytes) -> bytes:
    """An Ed25519 signature (R || S) under A = x*B from the scalar x itself (RFC 8032 §5.1.6 steps
    2-6 with r = SHA-512("escrow.v1/stealth/nonce" || x || M) mod L instead of the seed's prefix)."""
    x = secret_scalar % ed.ORDER_L
    if x == 0:
        raise StealthError("zero secret scalar")
    A = public_key(x)
    r = _scalar(b"escrow.v1/stealth/nonce" + x.to_bytes(32, "little") + bytes(message))
    R = ed.encode(ed.scalar_mult(r, ed.BASE))
    k = _scalar(R + A + bytes(message))
    S = (r + k * x) % ed.ORDER_L
    return R + S.to_bytes(32, "little")
