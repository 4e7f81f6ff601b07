"""The one deterministic encoding of every signed body (DESIGN §6.3), parsed strictly.

A body is a fixed sequence of fields described by a schema; each field is encoded by its type:

  U8, U16, U32, U64   unsigned big-endian, 1/2/4/8 bytes (values outside the range are refused)
  Fixed(n)            exactly n raw bytes (hashes, keys, points, ids)
  Bytes(max)          4-byte big-endian length, then at most ``max`` bytes
  Text(max)           as Bytes, holding printable ASCII only (identifiers, currency codes, EVSE ids)
  ListOf(item, max)   4-byte big-endian count (at most ``max``), then the items in order
  Optional(item)      one byte 0 (absent) or 1 followed by the item

There is exactly one encoding per value: decoding refuses trailing bytes, short input, unknown flag
bytes, out-of-range lengths and non-ASCII text, and ``decode(encode(v)) == v`` holds for every valid
v. Bodies carry no field names and no version of their own: the domain tag of the signed message
(escrow.core.signing.signed_message) names the kind, and a new layout means a new kind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class BodyError(ValueError):
    """Bytes that are not the canonical encoding of a body of the expected kind (reason BODY_MALFORMED)."""

    reason = "BODY_MALFORMED"


@dataclass(frozen=True)
class UInt:
    """An unsigned integer of ``size`` bytes, big-endian."""

    size: int

    def encode(self, value: Any, out: bytearray) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << (8 * self.size):
            raise BodyError(f"expected an integer in [0, 2^{8 * self.size})")
        out += value.to_bytes(self.size, "big")

    def decode(self, data: memoryview, pos: int) -> tuple[int, int]:
        end = pos + self.size
        if end > len(data):
            raise BodyError("truncated integer")
        return int.from_bytes(data[pos:end], "big"), end


U8, U16, U32, U64 = UInt(1), UInt(2), UInt(4), UInt(8)


@dataclass(frozen=True)
class Fixed:
    """Exactly ``size`` raw bytes."""

    size: int

    def encode(self, value: Any, out: bytearray) -> None:
        if not isinstance(value, bytes) or len(value) != self.size:
            raise BodyError(f"expected exactly {self.size} bytes")
        out += value

    def decode(self, data: memoryview, pos: int) -> tuple[bytes, int]:
        end = pos + self.size
        if end > len(data):
            raise BodyError("truncated fixed-size field")
        return bytes(data[pos:end]), end


@dataclass(frozen=True)
class Bytes:
    """A length-prefixed byte string of at most ``max_len`` bytes."""

    max_len: int

    def encode(self, value: Any, out: bytearray) -> None:
        if not isinstance(value, bytes) or len(value) > self.max_len:
            raise BodyError(f"expected at most {self.max_len} bytes")
        out += len(value).to_bytes(4, "big") + value

    def decode(self, data: memoryview, pos: int) -> tuple[bytes, int]:
        n, pos = U32.decode(data, pos)
        if n > self.max_len:
            raise BodyError(f"field longer than {self.max_len} bytes")
        end = pos + n
        if end > len(data):
            raise BodyError("truncated byte string")
        return bytes(data[pos:end]), end


@dataclass(frozen=True)
class Text:
    """A length-prefixed string of printable ASCII (0x20-0x7e), at most ``max_len`` characters."""

    max_len: int

    def encode(self, value: Any, out: bytearray) -> None:
        if not isinstance(value, str) or not _printable_ascii(value):
            raise BodyError("expected printable ASCII text")
        Bytes(self.max_len).encode(value.encode("ascii"), out)

    def decode(self, data: memoryview, pos: int) -> tuple[str, int]:
        raw, pos = Bytes(self.max_len).decode(data, pos)
        text = raw.decode("ascii", errors="replace")
        if not _printable_ascii(text):
            raise BodyError("text is not printable ASCII")
        return text, pos


@dataclass(frozen=True)
class ListOf:
    """A count-prefixed list of at most ``max_items`` items of one type."""

    item: Any
    max_items: int

    def encode(self, value: Any, out: bytearray) -> None:
        if not isinstance(value, (list, tuple)) or len(value) > self.max_items:
            raise BodyError(f"expected a list of at most {self.max_items} items")
        out += len(value).to_bytes(4, "big")
        for element in value:
            self.item.encode(element, out)

    def decode(self, data: memoryview, pos: int) -> tuple[list[Any], int]:
        n, pos = U32.decode(data, pos)
        if n > self.max_items:
            raise BodyError(f"list longer than {self.max_items} items")
        items = []
        for _ in range(n):
            element, pos = self.item.decode(data, pos)
            items.append(element)
        return items, pos


@dataclass(frozen=True)
class Optional:
    """An optional item: a flag byte 0 (absent, None) or 1 (present) and then the item."""

    item: Any

    def encode(self, value: Any, out: bytearray) -> None:
        if value is None:
            out.append(0)
        else:
            out.append(1)
            self.item.encode(value, out)

    def decode(self, data: memoryview, pos: int) -> tuple[Any, int]:
        flag, pos = U8.decode(data, pos)
        if flag == 0:
            return None, pos
        if flag != 1:
            raise BodyError("optional flag must be 0 or 1")
        value: Any
        value, pos = self.item.decode(data, pos)
        return value, pos


Schema = Sequence[tuple[str, Any]]


def encode(schema: Schema, values: Mapping[str, Any]) -> bytes:
    """The canonical bytes of ``values`` (exactly the schema's fields; extra or missing ones refused)."""
    names = [name for name, _ in schema]
    if set(values) != set(names):
        missing, extra = sorted(set(names) - set(values)), sorted(set(values) - set(names))
        raise BodyError(f"fields do not match the schema (missing {missing}, unexpected {extra})")
    out = bytearray()
    for name, kind in schema:
        try:
            kind.encode(values[name], out)
        except BodyError as e:
            raise BodyError(f"{name}: {e}") from None
    return bytes(out)


def decode(schema: Schema, data: bytes, *, max_len: int = 1 << 20) -> dict[str, Any]:
    """Parse canonical bytes into a dict; raises BodyError on anything that is not exactly canonical."""
    if not isinstance(data, (bytes, bytearray)):
        raise BodyError("a body is bytes")
    if len(data) > max_len:
        raise BodyError(f"body longer than {max_len} bytes")
    view = memoryview(bytes(data))
    pos = 0
    values: dict[str, Any] = {}
    for name, kind in schema:
        try:
            values[name], pos = kind.decode(view, pos)
        except BodyError as e:
            raise BodyError(f"{name}: {e}") from None
    if pos != len(view):
        raise BodyError(f"{len(view) - pos} trailing bytes")
    return values


def _printable_ascii(text: str) -> bool:
    return all(0x20 <= ord(c) <= 0x7E for c in text)
