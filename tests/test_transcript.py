"""Tests for zk/transcript.py: a known answer from the documented construction, determinism, unambiguous
length prefixes, and challenges that depend on the order and on everything absorbed before them."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zk.transcript import Transcript

# Written out here rather than imported, so the reference below does not share constants with the code.
R = 21888242871839275222246405745257275088548364400416034343698204186575808495617
DOMAIN = b"escrow.v1/transcript"
PROTOCOL = b"escrow.v1/tests/transcript"


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(8, "big") + data


def _reference_first_challenge(protocol: bytes, messages: list[tuple[bytes, bytes]], label: bytes) -> bytes:
    """SHA-512(lp(DOMAIN) || lp(protocol) || lp(l_i) || lp(d_i) ... || lp("challenge") || lp(label))."""
    body = _lp(DOMAIN) + _lp(protocol)
    body += b"".join(_lp(lab) + _lp(data) for lab, data in messages)
    return hashlib.sha512(body + _lp(b"challenge") + _lp(label)).digest()


def _challenge_after(
    messages: list[tuple[bytes, bytes]], label: bytes = b"c", protocol: bytes = PROTOCOL
) -> bytes:
    t = Transcript(protocol)
    for lab, data in messages:
        t.append(lab, data)
    return t.challenge_bytes(label)


# --- known answers ------------------------------------------------------------------------------


def test_first_challenge_matches_the_documented_construction() -> None:
    messages = [(b"n", (64).to_bytes(8, "big")), (b"context", b"chain-1"), (b"empty", b"")]
    assert _challenge_after(messages, b"y") == _reference_first_challenge(PROTOCOL, messages, b"y")


def test_second_challenge_absorbs_the_first() -> None:
    t = Transcript(PROTOCOL)
    t.append(b"a", b"1")
    first = t.challenge_bytes(b"y")
    second = t.challenge_bytes(b"z")
    body = _lp(DOMAIN) + _lp(PROTOCOL) + _lp(b"a") + _lp(b"1") + _lp(b"challenge") + _lp(b"y")
    assert first == hashlib.sha512(body).digest()
    body += _lp(first) + _lp(b"challenge") + _lp(b"z")
    assert second == hashlib.sha512(body).digest()


def test_challenge_scalar_is_the_challenge_bytes_reduced_mod_r() -> None:
    bytes_side, scalar_side = Transcript(PROTOCOL), Transcript(PROTOCOL)
    for t in (bytes_side, scalar_side):
        t.append(b"x", b"same input")
    for label in (b"y", b"z", b"x"):
        assert (
            scalar_side.challenge_scalar(label)
            == int.from_bytes(bytes_side.challenge_bytes(label), "big") % R
        )


def test_append_u64_is_eight_bytes_big_endian() -> None:
    for value in (0, 1, 64, 2**63, 2**64 - 1):
        a, b = Transcript(PROTOCOL), Transcript(PROTOCOL)
        a.append_u64(b"n", value)
        b.append(b"n", value.to_bytes(8, "big"))
        assert a.challenge_bytes(b"c") == b.challenge_bytes(b"c")


@pytest.mark.parametrize("value", [-1, 2**64])
def test_append_u64_rejects_values_outside_64_bits(value: int) -> None:
    with pytest.raises((OverflowError, ValueError)):
        Transcript(PROTOCOL).append_u64(b"n", value)


# --- determinism and shapes ------------------------------------------------------------------------


def test_same_inputs_give_the_same_challenges() -> None:
    def run() -> list[bytes]:
        t = Transcript(PROTOCOL)
        t.append(b"V", b"\x01" * 32)
        out = [t.challenge_bytes(b"y"), t.challenge_bytes(b"z")]
        t.append(b"T1", b"\x02" * 32)
        return [*out, t.challenge_bytes(b"x"), t.challenge_scalar(b"w").to_bytes(32, "big")]

    assert run() == run()


def test_challenge_bytes_are_64_bytes() -> None:
    t = Transcript(PROTOCOL)
    assert all(len(t.challenge_bytes(b"c")) == 64 for _ in range(5))


def test_bytes_like_data_is_absorbed_as_its_bytes() -> None:
    data = b"commitment bytes"
    expected = _challenge_after([(b"V", data)])
    for same in (bytearray(data), memoryview(data)):
        t = Transcript(PROTOCOL)
        t.append(b"V", same)  # type: ignore[arg-type]
        assert t.challenge_bytes(b"c") == expected


def test_challenge_scalar_is_in_1_to_r() -> None:
    t = Transcript(PROTOCOL)
    for i in range(500):
        t.append_u64(b"i", i)
        assert 1 <= t.challenge_scalar(b"c") < R


def test_challenge_scalar_skips_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    # A digest that reduces to 0 mod r (0, then r itself) must be skipped, not returned.
    digests = iter([bytes(64), R.to_bytes(64, "big"), (5).to_bytes(64, "big")])
    t = Transcript(PROTOCOL)
    monkeypatch.setattr(t, "challenge_bytes", lambda label: next(digests))
    assert t.challenge_scalar(b"c") == 5


# --- unambiguous encoding ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ([(b"ab", b"c")], [(b"a", b"bc")]),  # the label/data boundary
        ([(b"a", b"bc")], [(b"abc", b"")]),
        ([(b"", b"abc")], [(b"abc", b"")]),
        ([(b"x", b"y")], [(b"y", b"x")]),  # label and data are not interchangeable
        ([(b"l", b"ab")], [(b"l", b"a"), (b"l", b"b")]),  # one message vs two
        ([(b"l", b"")], []),  # an empty message still counts
        ([(b"l", b"\x00")], [(b"l", b"")]),
        ([(b"l", b"")], [(b"", b"l")]),
        ([(b"n", (1).to_bytes(8, "big"))], [(b"n", b"\x01")]),  # a u64 is not a short string
    ],
)
def test_length_prefixes_keep_message_boundaries(
    left: list[tuple[bytes, bytes]], right: list[tuple[bytes, bytes]]
) -> None:
    assert _challenge_after(left) != _challenge_after(right)


def test_protocol_label_is_bound() -> None:
    messages = [(b"m", b"data")]
    assert _challenge_after(messages, protocol=b"p/v1") != _challenge_after(messages, protocol=b"p/v2")
    # ... and it is length-prefixed too: the protocol cannot bleed into the first label.
    assert _challenge_after([(b"ab", b"")], protocol=b"p") != _challenge_after([(b"b", b"")], protocol=b"pa")


def test_challenge_label_is_bound() -> None:
    assert _challenge_after([(b"m", b"d")], b"y") != _challenge_after([(b"m", b"d")], b"z")


def test_a_challenge_is_not_an_appended_message() -> None:
    # challenge(label) absorbs lp("challenge") || lp(label); an append of the same bytes is different.
    a, b = Transcript(PROTOCOL), Transcript(PROTOCOL)
    a.challenge_bytes(b"y")
    b.append(b"challenge", b"y")
    assert a.challenge_bytes(b"c") != b.challenge_bytes(b"c")


# --- dependence on order and on all prior input ------------------------------------------------------


def test_challenges_depend_on_the_order_of_messages() -> None:
    one, two = (b"A", b"\x01" * 32), (b"S", b"\x02" * 32)
    assert _challenge_after([one, two]) != _challenge_after([two, one])


def test_successive_challenges_differ() -> None:
    t = Transcript(PROTOCOL)
    t.append(b"m", b"d")
    seen = {t.challenge_bytes(b"same label") for _ in range(20)}
    assert len(seen) == 20


def test_challenge_changes_the_state() -> None:
    # Drawing a challenge is absorbed: "append; challenge; append" differs from "append; append".
    a, b = Transcript(PROTOCOL), Transcript(PROTOCOL)
    a.append(b"A", b"1")
    a.challenge_bytes(b"y")
    a.append(b"B", b"2")
    b.append(b"A", b"1")
    b.append(b"B", b"2")
    assert a.challenge_bytes(b"z") != b.challenge_bytes(b"z")


def _run_protocol(messages: list[bytes]) -> list[bytes]:
    """Interleave messages and challenges as a proof does: m0, c, m1, c, ...; return every challenge."""
    t = Transcript(PROTOCOL)
    out = []
    for i, data in enumerate(messages):
        t.append(b"msg", data)
        out.append(t.challenge_bytes(b"c%d" % i))
    return out


def test_every_challenge_depends_on_every_earlier_message() -> None:
    messages = [bytes([i]) * 32 for i in range(6)]
    honest = _run_protocol(messages)
    for changed in range(len(messages)):
        tampered = list(messages)
        tampered[changed] = tampered[changed][:-1] + b"\xff"
        other = _run_protocol(tampered)
        assert other[:changed] == honest[:changed]  # earlier challenges cannot see later messages
        for k in range(changed, len(messages)):
            assert other[k] != honest[k], (changed, k)


_messages = st.lists(st.tuples(st.binary(max_size=12), st.binary(max_size=12)), max_size=5)


@settings(max_examples=300, deadline=None)
@given(_messages, _messages)
def test_different_message_sequences_give_different_challenges(
    left: list[tuple[bytes, bytes]], right: list[tuple[bytes, bytes]]
) -> None:
    if left == right:
        assert _challenge_after(left) == _challenge_after(right)
    else:
        assert _challenge_after(left) != _challenge_after(right)


# --- clones and the recipes' starting transcript -------------------------------------------------------


def test_a_clone_continues_identically_and_independently() -> None:
    t = Transcript(PROTOCOL)
    t.append(b"V", b"\x07" * 32)
    twin = t.clone()
    assert twin.challenge_bytes(b"y") == t.challenge_bytes(b"y")
    twin.append(b"A", b"only in the twin")
    t.append(b"A", b"only in the original")
    assert twin.challenge_bytes(b"z") != t.challenge_bytes(b"z")


def test_context_transcript_is_the_recipe_protocol_and_the_context() -> None:
    from zk.transcript import RECIPE_PROTOCOL, context_transcript

    for context in (b"", b"chain-1|DEPOSIT|session", bytearray(b"\x00\x01")):
        manual = Transcript(RECIPE_PROTOCOL)
        manual.append(b"context", bytes(context))
        assert context_transcript(context).challenge_bytes(b"c") == manual.challenge_bytes(b"c")
    assert context_transcript(b"a").challenge_bytes(b"c") != context_transcript(b"b").challenge_bytes(b"c")


@pytest.mark.parametrize("context", ["text", 5, None, [1, 2]], ids=repr)
def test_context_transcript_takes_only_bytes(context: object) -> None:
    from zk.transcript import context_transcript

    with pytest.raises(TypeError):
        context_transcript(context)  # type: ignore[arg-type]
