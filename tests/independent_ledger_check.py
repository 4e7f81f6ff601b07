"""An independent check of an exported ledger, written only from docs/ledger.md and the zk/notes it points
to (encoding.md, transcript.md, schnorr.md, generators.md). It imports nothing of this repository: the
file format, the canonical bodies, the point encoding, the transcript and the Schnorr verification are
all re-implemented here, on hashlib and py_ecc.optimized_bn128.

Checked: the export file (magic, lengths, trailer); every header (canonical, heights, chain id, links,
time, payload hash); every payload's structure, field by field; note ids, outputs and spends (each note
once, a deposit only by its SETTLE, each OPEN settled once, the session tag of the OPEN); the equations
sum(inputs) = D + change (OPEN), D = pole + refund + X (SETTLE), and the Schnorr proofs of MINT
(C - amount*G), SETTLE (X) and REDEEM (sum(inputs) - amount*G). Left to the main auditor, on purpose:
the ECDSA and Ed25519 signatures, the range proofs, the quotes and the time rules (expiries, deadlines).

    summary = check_file(path)      # raises CheckFailedError naming the entry and the rule
"""

from __future__ import annotations

import hashlib
from itertools import pairwise
from pathlib import Path
from typing import Any

from py_ecc import optimized_bn128 as bn

# --- zk/notes/encoding.md --------------------------------------------------------------------------

P_FIELD = 0x30644E72E131A029B85045B68181585D97816A916871CA8D3C208C16D87CFD47
R_ORDER = 0x30644E72E131A029B85045B68181585D2833E84879B9709143E1F593F0000001
H_ENCODED = bytes.fromhex("a3d88265acf57740bab6bbdb5467bd02a7eda5d5b71783fced5860da3876a600")
IDENTITY_ENCODED = bytes([0x40]) + bytes(31)

Point = Any  # a py_ecc Jacobian point (FQ, FQ, FQ); the identity is bn.Z1


class CheckFailedError(Exception):
    """The ledger breaks a rule of docs/ledger.md."""


def decode_point(data: bytes, *, allow_identity: bool = False) -> Point:
    if len(data) != 32:
        raise CheckFailedError("a point is 32 bytes")
    flag = data[0] & 0xC0
    x = int.from_bytes(bytes([data[0] & 0x3F]) + data[1:], "big")
    if flag == 0x40:
        if x != 0 or not allow_identity:
            raise CheckFailedError("identity point not allowed or malformed")
        return bn.Z1
    if flag == 0x00:
        raise CheckFailedError("reserved point flag 00")
    if x >= P_FIELD:
        raise CheckFailedError("point x >= p")
    rhs = (x * x * x + 3) % P_FIELD
    y = pow(rhs, (P_FIELD + 1) // 4, P_FIELD)
    if y * y % P_FIELD != rhs:
        raise CheckFailedError("x is not on the curve")
    small, large = min(y, P_FIELD - y), max(y, P_FIELD - y)
    return (bn.FQ(x), bn.FQ(small if flag == 0x80 else large), bn.FQ(1))


def encode_point(pt: Point) -> bytes:
    if bn.is_inf(pt):
        return IDENTITY_ENCODED
    x, y = (int(c) for c in bn.normalize(pt))
    out = bytearray(x.to_bytes(32, "big"))
    out[0] |= 0x80 if y <= P_FIELD - y else 0xC0
    return bytes(out)


G = (bn.FQ(1), bn.FQ(2), bn.FQ(1))
H = decode_point(H_ENCODED)


def same(a: Point, b: Point) -> bool:
    return bool(bn.eq(a, b))


# --- zk/notes/transcript.md and schnorr.md -------------------------------------------------------------


def _lp8(data: bytes) -> bytes:
    return len(data).to_bytes(8, "big") + data


class Transcript:
    def __init__(self, protocol: bytes) -> None:
        self.state = hashlib.sha512(_lp8(b"escrow.v1/transcript") + _lp8(protocol))

    def append(self, label: bytes, data: bytes) -> None:
        self.state.update(_lp8(label) + _lp8(data))

    def challenge_scalar(self, label: bytes) -> int:
        while True:
            self.state.update(_lp8(b"challenge") + _lp8(label))
            out = self.state.copy().digest()
            self.state.update(_lp8(out))
            c = int.from_bytes(out, "big") % R_ORDER
            if c:
                return c


def schnorr_verify(statement: bytes, proof: bytes, context: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    """s*H = R + c*P, the challenge over the recipe transcript (schnorr.md)."""
    if len(proof) != 64:
        raise CheckFailedError("Schnorr proof is not 64 bytes")
    P = decode_point(statement)
    R = decode_point(proof[:32])
    s = int.from_bytes(proof[32:], "big")
    if s >= R_ORDER:
        raise CheckFailedError("Schnorr s >= r")
    t = Transcript(b"escrow.v1/zk-recipe/v1")
    t.append(b"context", context)
    t.append(b"protocol", b"escrow.v1/schnorr/dlog-H/v1")
    t.append(b"H", H_ENCODED)
    for label, data in extra:
        t.append(label, data)
    t.append(b"P", statement)
    t.append(b"R", proof[:32])
    c = t.challenge_scalar(b"c")
    if not same(bn.multiply(H, s), bn.add(R, bn.multiply(P, c))):
        raise CheckFailedError("Schnorr proof does not verify")


def public_amount_verify(commitment: bytes, amount: int, proof: bytes, context: bytes) -> None:
    """P = C - amount*G, not the identity, and its proof with the extra items C and amount."""
    C = decode_point(commitment)
    Pt = bn.add(C, bn.neg(bn.multiply(G, amount)))
    if bn.is_inf(Pt):
        raise CheckFailedError("C - amount*G is the identity")
    extra = [(b"C", commitment), (b"amount", amount.to_bytes(8, "big"))]
    schnorr_verify(encode_point(Pt), proof, context, extra)


# --- docs/ledger.md: encodings ---------------------------------------------------------------------------


class Reader:
    """The canonical encoding: u8/u16/u32/u64, fixed[n], bytes(max), text(max), list(item, max)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise CheckFailedError("truncated body")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def fixed(self, n: int) -> bytes:
        return self.take(n)

    def bytes_(self, max_len: int) -> bytes:
        n = self.uint(4)
        if n > max_len:
            raise CheckFailedError("byte string too long")
        return self.take(n)

    def text(self, max_len: int) -> str:
        raw = self.bytes_(max_len)
        if any(not 0x20 <= b <= 0x7E for b in raw):
            raise CheckFailedError("text is not printable ASCII")
        return raw.decode("ascii")

    def list_fixed(self, n: int, max_items: int) -> list[bytes]:
        count = self.uint(4)
        if count > max_items:
            raise CheckFailedError("list too long")
        return [self.fixed(n) for _ in range(count)]

    def end(self) -> None:
        if self.pos != len(self.data):
            raise CheckFailedError("trailing bytes in a body")


def lp(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def signed_message(kind: str, chain_id: bytes, body: bytes) -> bytes:
    return lp(b"escrow.v1/" + kind.encode()) + chain_id + body


def proof_context(kind: str, chain_id: bytes, session_tag: bytes, ids: list[bytes]) -> bytes:
    return (
        lp(b"escrow.v1/proof/" + kind.encode())
        + chain_id
        + lp(session_tag)
        + len(ids).to_bytes(4, "big")
        + b"".join(ids)
    )


def note_id(entry_hash: bytes, index: int) -> bytes:
    return hashlib.sha256(b"escrow.v1/note" + entry_hash + index.to_bytes(4, "big")).digest()


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# --- payloads -------------------------------------------------------------------------------------------

KINDS = ("GENESIS", "KEY", "POLE", "MINT", "OPEN", "SETTLE", "REDEEM")
OUTCOMES = ("ENDED", "STOPPED", "EXHAUSTED", "DEADLINE", "REFUNDED")


def parse_payload(kind: str, payload: bytes) -> dict[str, Any]:
    r = Reader(payload)
    v: dict[str, Any] = {}
    if kind == "GENESIS":
        v["protocol"] = r.text(32)
        v["currency"] = r.text(3)
        v["decimals"] = r.uint(1)
        v["issuer_keys"] = r.list_fixed(32, 16)
        v["generator_set_hash"] = r.fixed(32)
        v["generator_count"] = r.uint(4)
        v["grace_ms"] = r.uint(8)
        v["max_deadline_ms"] = r.uint(8)
        v["mr_enclave"] = r.fixed(32)
        v["ledger_key"] = r.fixed(65)
        v["encryption_key"] = r.fixed(32)
        v["instance_id"] = r.fixed(16)
        v["isv_svn"] = r.uint(2)
        v["quote"] = r.bytes_(16384)
        v["collateral_json"] = r.bytes_(65536)
    elif kind == "KEY":
        v["mr_enclave"] = r.fixed(32)
        v["isv_svn"] = r.uint(2)
        v["ledger_key"] = r.fixed(65)
        v["encryption_key"] = r.fixed(32)
        v["instance_id"] = r.fixed(16)
        v["quote"] = r.bytes_(16384)
        v["collateral_json"] = r.bytes_(65536)
    elif kind == "POLE":
        v["pole_body"] = r.bytes_(1024)
        v["operator_signature"] = r.fixed(64)
        v["pop_record"] = r.bytes_(16384)
    elif kind == "MINT":
        v["mint_body"] = r.bytes_(512)
        v["issuer_signature"] = r.fixed(64)
        v["amount_proof"] = r.fixed(64)
        v["envelope"] = r.bytes_(1024)
    elif kind == "OPEN":
        v["open_body"] = r.bytes_(1024)
        v["owner_signatures"] = r.list_fixed(64, 16)
        v["range_proof"] = r.bytes_(1024)
        v["change_envelope"] = r.bytes_(1024)
    elif kind == "SETTLE":
        v["open_entry_hash"] = r.fixed(32)
        v["session_tag"] = r.fixed(32)
        for who in ("pole", "refund"):
            v[f"{who}_commitment"] = r.fixed(32)
            v[f"{who}_owner_key"] = r.fixed(32)
            v[f"{who}_envelope"] = r.bytes_(1024)
        v["range_proof"] = r.bytes_(1024)
        v["excess"] = r.fixed(32)
        v["excess_proof"] = r.fixed(64)
        v["outcome"] = r.text(16)
        v["readings_digest"] = r.fixed(32)
        if v["outcome"] not in OUTCOMES:
            raise CheckFailedError(f"unknown outcome {v['outcome']!r}")
    elif kind == "REDEEM":
        v["redeem_body"] = r.bytes_(1024)
        v["owner_signatures"] = r.list_fixed(64, 16)
        v["amount_proof"] = r.fixed(64)
    r.end()
    return v


def parse_mint_body(body: bytes) -> dict[str, Any]:
    r = Reader(body)
    v = {
        "mint_reference": r.bytes_(64),
        "amount": r.uint(8),
        "currency": r.text(3),
        "commitment": r.fixed(32),
        "owner_key": r.fixed(32),
        "envelope_hash": r.fixed(32),
        "issuer_key_id": r.fixed(32),
        "expiry": r.uint(8),
    }
    r.end()
    return v


def parse_open_body(body: bytes) -> dict[str, Any]:
    r = Reader(body)
    v: dict[str, Any] = {"session_tag": r.fixed(32), "input_note_ids": r.list_fixed(32, 16)}
    for name in (
        "deposit",
        "change_commitment",
        "change_owner_key",
        "change_envelope_hash",
        "range_proof_hash",
    ):
        v[name] = r.fixed(32)
    v["deadline"] = r.uint(8)
    v["enclave_envelope_hash"] = r.fixed(32)
    v["enclave_key_id"] = r.fixed(32)
    v["expiry"] = r.uint(8)
    r.end()
    return v


def parse_redeem_body(body: bytes) -> dict[str, Any]:
    r = Reader(body)
    v = {
        "input_note_ids": r.list_fixed(32, 16),
        "amount": r.uint(8),
        "currency": r.text(3),
        "issuer_reference": r.bytes_(64),
        "proof_hash": r.fixed(32),
        "expiry": r.uint(8),
    }
    r.end()
    return v


def parse_pole_body(body: bytes) -> None:
    r = Reader(body)
    r.text(64), r.text(64), r.bytes_(256), r.text(48), r.text(32), r.text(3), r.fixed(32), r.fixed(32)
    r.uint(8)
    r.end()


# --- the file -------------------------------------------------------------------------------------------

MAGIC = b"escrow.v1/ledger-export/v1\n"


def read_file(path: Path) -> list[tuple[bytes, bytes, bytes]]:
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise CheckFailedError("bad magic")
    r = Reader(data)
    r.pos = len(MAGIC)
    out = []
    while True:
        n = r.uint(4)
        if n == 0xFFFFFFFF:
            break
        if not 1 <= n <= 256:
            raise CheckFailedError("header length out of bounds")
        header = r.take(n)
        payload = r.bytes_(1 << 20)
        signature = r.take(64)
        out.append((header, payload, signature))
    count, last = r.uint(8), r.take(32)
    r.end()
    if count != len(out) or last != (sha(out[-1][0]) if out else bytes(32)):
        raise CheckFailedError("trailer does not match")
    return out


# --- the check ------------------------------------------------------------------------------------------


def parse_header(header: bytes) -> dict[str, Any]:
    r = Reader(header)
    h = {
        "chain_id": r.fixed(32),
        "height": r.uint(8),
        "prev_hash": r.fixed(32),
        "time_ms": r.uint(8),
        "kind": r.text(16),
        "payload_hash": r.fixed(32),
    }
    r.end()
    if h["kind"] not in KINDS:
        raise CheckFailedError(f"unknown kind {h['kind']!r}")
    return h


def check_file(path: Path) -> dict[str, Any]:
    """Check an export file; returns a summary, or raises CheckFailedError("entry i: ...")."""
    entries = read_file(Path(path))
    if not entries:
        raise CheckFailedError("no GENESIS")
    chain_id, prev_hash, prev_time = bytes(32), bytes(32), 0
    state = _State()
    for height, (header, payload, _signature) in enumerate(entries):
        try:
            h = parse_header(header)
            if h["height"] != height:
                raise CheckFailedError("height out of sequence")
            if (h["kind"] == "GENESIS") != (height == 0):
                raise CheckFailedError("GENESIS first and only first")
            if h["chain_id"] != chain_id or h["prev_hash"] != prev_hash:
                raise CheckFailedError("chain id or link broken")
            if h["time_ms"] < prev_time:
                raise CheckFailedError("time goes backwards")
            if sha(payload) != h["payload_hash"]:
                raise CheckFailedError("payload hash")
            entry_hash = sha(header)
            state.apply(h["kind"], parse_payload(h["kind"], payload), entry_hash, chain_id)
        except CheckFailedError as e:
            raise CheckFailedError(f"entry {height}: {e}") from None
        if height == 0:
            chain_id = entry_hash
        prev_hash, prev_time = entry_hash, h["time_ms"]
    return {
        "entries": len(entries),
        "head_hash": prev_hash.hex(),
        "chain_id": chain_id.hex(),
        "issued_minor": state.issued,
        "redeemed_minor": state.redeemed,
        "notes_unspent": sum(1 for n in state.notes.values() if not n["spent"] and not n["deposit"]),
        "sessions_opened": state.opened,
        "sessions_settled": state.settled,
    }


class _State:
    def __init__(self) -> None:
        self.notes: dict[bytes, dict[str, Any]] = {}
        self.opens: dict[bytes, dict[str, Any]] = {}  # OPEN entry hash -> tag, D, settled
        self.tags: set[bytes] = set()
        self.refs: set[bytes] = set()
        self.issuer_ids: set[bytes] = set()
        self.currency = ""
        self.key_id = b""
        self.issued = self.redeemed = self.opened = self.settled = 0

    def create(self, entry_hash: bytes, index: int, commitment: bytes, *, deposit: bool = False) -> None:
        decode_point(commitment)  # never the identity
        self.notes[note_id(entry_hash, index)] = {"C": commitment, "spent": False, "deposit": deposit}

    def spend(self, ids: list[bytes], *, deposit_ok: bool = False) -> Point:
        if not ids or any(a >= b for a, b in pairwise(ids)):
            raise CheckFailedError("input ids must be 1 to 16, sorted and distinct")
        total = bn.Z1
        for i in ids:
            note = self.notes.get(i)
            if note is None:
                raise CheckFailedError("an input note does not exist")
            if note["deposit"] and not deposit_ok:
                raise CheckFailedError("a deposit spent as an input")
            if note["spent"]:
                raise CheckFailedError("a note spent twice")
            note["spent"] = True
            total = bn.add(total, decode_point(note["C"]))
        return total

    def apply(self, kind: str, v: dict[str, Any], entry_hash: bytes, chain_id: bytes) -> None:
        if kind in ("GENESIS", "KEY"):
            if kind == "GENESIS":
                self.currency = v["currency"]
                self.issuer_ids = {sha(k) for k in v["issuer_keys"]}
            self.key_id = sha(v["ledger_key"])
        elif kind == "POLE":
            parse_pole_body(v["pole_body"])
        elif kind == "MINT":
            m = parse_mint_body(v["mint_body"])
            if m["mint_reference"] in self.refs:
                raise CheckFailedError("mint reference used twice")
            if (
                m["issuer_key_id"] not in self.issuer_ids
                or m["currency"] != self.currency
                or m["amount"] == 0
            ):
                raise CheckFailedError("MINT issuer, currency or amount")
            if sha(v["envelope"]) != m["envelope_hash"]:
                raise CheckFailedError("MINT envelope hash")
            context = signed_message("mint", chain_id, v["mint_body"])
            public_amount_verify(m["commitment"], m["amount"], v["amount_proof"], context)
            self.refs.add(m["mint_reference"])
            self.create(entry_hash, 0, m["commitment"])
            self.issued += m["amount"]
        elif kind == "OPEN":
            o = parse_open_body(v["open_body"])
            if o["session_tag"] in self.tags:
                raise CheckFailedError("session tag used twice")
            if len(v["owner_signatures"]) != len(o["input_note_ids"]):
                raise CheckFailedError("one owner signature per input")
            if o["enclave_key_id"] != self.key_id:
                raise CheckFailedError("enclave key id")
            if sha(v["range_proof"]) != o["range_proof_hash"] or len(v["range_proof"]) != 736:
                raise CheckFailedError("range proof hash or size")
            if sha(v["change_envelope"]) != o["change_envelope_hash"]:
                raise CheckFailedError("change envelope hash")
            total = self.spend(o["input_note_ids"])
            D, change = decode_point(o["deposit"]), decode_point(o["change_commitment"])
            if not same(total, bn.add(D, change)):
                raise CheckFailedError("sum(inputs) != D + change")
            self.create(entry_hash, 0, o["change_commitment"])
            self.create(entry_hash, 1, o["deposit"], deposit=True)
            self.tags.add(o["session_tag"])
            self.opens[entry_hash] = {"tag": o["session_tag"], "D": o["deposit"], "settled": False}
            self.opened += 1
        elif kind == "SETTLE":
            opened = self.opens.get(v["open_entry_hash"])
            if opened is None or opened["settled"] or opened["tag"] != v["session_tag"]:
                raise CheckFailedError("SETTLE of an unknown or settled OPEN, or another session tag")
            self.spend([note_id(v["open_entry_hash"], 1)], deposit_ok=True)
            D = decode_point(opened["D"])
            pole, refund = decode_point(v["pole_commitment"]), decode_point(v["refund_commitment"])
            X = decode_point(v["excess"])
            if not same(D, bn.add(bn.add(pole, refund), X)):
                raise CheckFailedError("D != pole + refund + X")
            context = proof_context("SETTLE", chain_id, v["session_tag"], [v["open_entry_hash"]])
            extended = context + opened["D"] + v["pole_commitment"] + v["refund_commitment"]
            schnorr_verify(v["excess"], v["excess_proof"], extended, [])
            if len(v["range_proof"]) != 736:
                raise CheckFailedError("range proof size")
            opened["settled"] = True
            self.create(entry_hash, 0, v["pole_commitment"])
            self.create(entry_hash, 1, v["refund_commitment"])
            self.settled += 1
        elif kind == "REDEEM":
            r = parse_redeem_body(v["redeem_body"])
            if r["currency"] != self.currency or r["amount"] == 0:
                raise CheckFailedError("REDEEM currency or amount")
            if sha(v["amount_proof"]) != r["proof_hash"]:
                raise CheckFailedError("REDEEM proof hash")
            if len(v["owner_signatures"]) != len(r["input_note_ids"]):
                raise CheckFailedError("one owner signature per input")
            total = self.spend(r["input_note_ids"])
            context = proof_context("REDEEM", chain_id, b"", r["input_note_ids"])
            public_amount_verify(encode_point(total), r["amount"], v["amount_proof"], context)
            self.redeemed += r["amount"]
