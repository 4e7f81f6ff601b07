"""The canonical body encoding: round trips, exactly one encoding per value, and every rejection."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from escrow.core.encoding import (
    U8,
    U16,
    U32,
    U64,
    BodyError,
    Bytes,
    Fixed,
    ListOf,
    Optional,
    Text,
    decode,
    encode,
)

SCHEMA = [
    ("flag", U8),
    ("port", U16),
    ("count", U32),
    ("amount", U64),
    ("hash", Fixed(32)),
    ("blob", Bytes(64)),
    ("currency", Text(8)),
    ("inputs", ListOf(Fixed(4), 5)),
    ("expiry", Optional(U64)),
]

ascii_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=8)
values = st.fixed_dictionaries(
    {
        "flag": st.integers(0, 255),
        "port": st.integers(0, 2**16 - 1),
        "count": st.integers(0, 2**32 - 1),
        "amount": st.integers(0, 2**64 - 1),
        "hash": st.binary(min_size=32, max_size=32),
        "blob": st.binary(max_size=64),
        "currency": ascii_text,
        "inputs": st.lists(st.binary(min_size=4, max_size=4), max_size=5),
        "expiry": st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    }
)


def sample() -> dict[str, Any]:
    return {
        "flag": 1,
        "port": 443,
        "count": 7,
        "amount": 2_000,
        "hash": bytes(range(32)),
        "blob": b"opaque",
        "currency": "EUR",
        "inputs": [b"\x00\x01\x02\x03", b"\xff\xfe\xfd\xfc"],
        "expiry": 1_790_000_000,
    }


@given(values)
def test_round_trip(v: dict[str, Any]) -> None:
    data = encode(SCHEMA, v)
    assert decode(SCHEMA, data) == v
    assert encode(SCHEMA, decode(SCHEMA, data)) == data


@given(st.binary(max_size=200))
def test_any_bytes_either_fail_or_re_encode_identically(data: bytes) -> None:
    try:
        parsed = decode(SCHEMA, data)
    except BodyError:
        return
    assert encode(SCHEMA, parsed) == data  # one encoding per value


def test_known_answer() -> None:
    data = encode(
        [("amount", U64), ("currency", Text(8)), ("expiry", Optional(U32))],
        {"amount": 2000, "currency": "EUR", "expiry": None},
    )
    assert data.hex() == "00000000000007d0" + "00000003" + "455552" + "00"


def test_every_truncation_and_every_extension_is_refused() -> None:
    data = encode(SCHEMA, sample())
    for cut in range(len(data)):
        with pytest.raises(BodyError):
            decode(SCHEMA, data[:cut])
    with pytest.raises(BodyError, match="trailing"):
        decode(SCHEMA, data + b"\x00")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("flag", 256),
        ("flag", -1),
        ("flag", True),
        ("port", 1 << 16),
        ("amount", 1 << 64),
        ("amount", 1.5),
        ("hash", bytes(31)),
        ("hash", "x" * 32),
        ("blob", bytes(65)),
        ("blob", "text"),
        ("currency", "EURO-LONG"),
        ("currency", "€"),
        ("currency", "a\nb"),
        ("currency", b"EUR"),
        ("inputs", [bytes(4)] * 6),
        ("inputs", [bytes(3)]),
        ("inputs", b"abcd"),
        ("expiry", -1),
    ],
)
def test_encode_refuses_out_of_schema_values(field: str, value: Any) -> None:
    v = sample()
    v[field] = value
    with pytest.raises(BodyError, match=field):
        encode(SCHEMA, v)


def test_encode_refuses_missing_and_extra_fields() -> None:
    v = sample()
    del v["flag"]
    with pytest.raises(BodyError, match="missing"):
        encode(SCHEMA, v)
    with pytest.raises(BodyError, match="unexpected"):
        encode(SCHEMA, {**sample(), "extra": 1})


def test_decode_refuses_lengths_beyond_the_schema_and_bad_flags() -> None:
    too_long = (65).to_bytes(4, "big") + bytes(65)
    with pytest.raises(BodyError, match="longer"):
        decode([("blob", Bytes(64))], too_long)
    with pytest.raises(BodyError, match="longer"):
        decode([("inputs", ListOf(U8, 2))], (3).to_bytes(4, "big") + bytes(3))
    with pytest.raises(BodyError, match="flag"):
        decode([("expiry", Optional(U8))], b"\x02\x00")
    with pytest.raises(BodyError, match="ASCII"):
        decode([("currency", Text(8))], (3).to_bytes(4, "big") + "é".encode()[:1] + b"UR")
    with pytest.raises(BodyError, match="ASCII"):
        decode([("currency", Text(8))], (1).to_bytes(4, "big") + b"\x7f")
    with pytest.raises(BodyError):
        decode(SCHEMA, "text")  # type: ignore[arg-type]
    with pytest.raises(BodyError, match="longer than"):
        decode([("blob", Bytes(1 << 30))], bytes(2 << 20))
