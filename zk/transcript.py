"""Fiat-Shamir transcript: SHA-512 over length-prefixed labels and messages, owned by the caller.

State: a running SHA-512 started with lp("escrow.v1/transcript") || lp(protocol label).
append(label, data) absorbs lp(label) || lp(data); challenge(label) absorbs lp("challenge") ||
lp(label), takes the 64-byte digest of a copy of the state, absorbs that digest (so every later
challenge depends on it) and returns it reduced mod r (zero is skipped by re-deriving; the bias of
reducing 512 bits mod a 254-bit r is below 2^-258).
lp(s) = len(s) as 8 bytes big-endian || s. See zk/notes/transcript.md.
"""

from __future__ import annotations

import hashlib

from zk.field import R

DOMAIN = b"escrow.v1/transcript"


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(8, "big") + data


class Transcript:
    """A Fiat-Shamir transcript; the protocol only appends to it and draws challenges from it."""

    def __init__(self, protocol: bytes) -> None:
        self._state = hashlib.sha512(_lp(DOMAIN) + _lp(protocol))

    def clone(self) -> Transcript:
        """An independent copy of the current state (for re-checking a batch member)."""
        twin = Transcript.__new__(Transcript)
        twin._state = self._state.copy()
        return twin

    def append(self, label: bytes, data: bytes) -> None:
        """Absorb one labelled message."""
        self._state.update(_lp(label) + _lp(bytes(data)))

    def append_u64(self, label: bytes, value: int) -> None:
        """Absorb an unsigned 64-bit integer as 8 bytes big-endian."""
        self.append(label, value.to_bytes(8, "big"))

    def challenge_bytes(self, label: bytes) -> bytes:
        """64 bytes bound to everything absorbed so far; the transcript absorbs them too."""
        self._state.update(_lp(b"challenge") + _lp(label))
        out = self._state.copy().digest()
        self._state.update(_lp(out))
        return out

    def challenge_scalar(self, label: bytes) -> int:
        """A non-zero challenge in F_r from 64 bytes."""
        while True:
            c = int.from_bytes(self.challenge_bytes(label), "big") % int(R)
            if c:
                return c


RECIPE_PROTOCOL = b"escrow.v1/zk-recipe/v1"


def context_transcript(context: bytes) -> Transcript:
    """The transcript a recipe (rangeproof.prove, schnorr.prove, ...) starts from: the caller's
    application context (chain id, entry kind, session tag, input note ids, as canonical bytes)
    absorbed under the label "context". Raises TypeError unless ``context`` is bytes."""
    if not isinstance(context, (bytes, bytearray)):
        raise TypeError("context must be bytes")
    t = Transcript(RECIPE_PROTOCOL)
    t.append(b"context", bytes(context))
    return t
