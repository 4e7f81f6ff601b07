"""Ethereum's ecAdd / ecMul precompile vectors (go-ethereum testdata) through zk.bn254 and zk.msm.

The file is ../shared/vectors/alt_bn128_precompiles.json. Inputs are x || y big-endian 32-byte words
(all-zero 64 bytes = the point at infinity), followed for ecMul by a 32-byte big-endian scalar. Like the
EVM, a short input is right-padded with zeros and bytes beyond the fixed input length are ignored.
An entry whose expected output is empty, or that names an error, is a call the EVM rejects: its points
must be refused by from_affine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from py_ecc import optimized_bn128 as ref

from zk import bn254
from zk.errors import EncodingError
from zk.g1 import jac_to_affine
from zk.msm import FixedBases, msm

ADD_INPUT_BYTES = 128
MUL_INPUT_BYTES = 96
# What the file held when this test was written: fewer means vectors went missing.
MIN_ADD_VECTORS = 8
MIN_MUL_VECTORS = 18


@pytest.fixture(scope="module")
def precompiles(shared_vectors: Path) -> dict[str, Any]:
    path = shared_vectors / "alt_bn128_precompiles.json"
    if not path.is_file():
        pytest.fail(f"missing conformance vectors {path}", pytrace=False)
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _padded(hex_input: str, length: int) -> bytes:
    """The EVM's view of calldata: right-padded with zeros, truncated to the precompile's input size."""
    raw = bytes.fromhex(hex_input)
    return (raw + bytes(length))[:length]


def _word(data: bytes, i: int) -> int:
    return int.from_bytes(data[32 * i : 32 * (i + 1)], "big")


def _point(data: bytes, i: int) -> bn254.Point:
    """The point in words i, i + 1; (0, 0) is the point at infinity, as in the EVM."""
    x, y = _word(data, i), _word(data, i + 1)
    return bn254.IDENTITY if x == 0 and y == 0 else bn254.from_affine(x, y)


def _evm_output(pt: bn254.Point) -> str:
    xy = bn254.to_affine(pt)
    x, y = (0, 0) if xy is None else xy
    return (x.to_bytes(32, "big") + y.to_bytes(32, "big")).hex()


def _is_failure(vector: dict[str, Any]) -> bool:
    return not vector.get("expected") or any(k in vector for k in ("error", "expectedError", "expected_error"))


def _ref_point(data: bytes, i: int) -> Any:
    x, y = _word(data, i), _word(data, i + 1)
    if x == 0 and y == 0:
        return ref.Z1
    return (ref.FQ(x), ref.FQ(y), ref.FQ.one())


def _ref_output(pt: Any) -> str:
    if ref.is_inf(pt):
        return bytes(64).hex()
    x, y = ref.normalize(pt)
    return (int(x).to_bytes(32, "big") + int(y).to_bytes(32, "big")).hex()


def test_file_format(precompiles: dict[str, Any]) -> None:
    fmt = precompiles["format"]
    assert "right-padded" in fmt and "all-zero" in fmt and "big-endian" in fmt
    assert len(precompiles["add"]) >= MIN_ADD_VECTORS
    assert len(precompiles["mul"]) >= MIN_MUL_VECTORS
    for vector in precompiles["add"] + precompiles["mul"]:
        assert set(vector) >= {"name", "input"}


def test_ecadd_vectors(precompiles: dict[str, Any]) -> None:
    checked = rejected = 0
    mismatches = []
    for vector in precompiles["add"]:
        data = _padded(vector["input"], ADD_INPUT_BYTES)
        if _is_failure(vector):
            with pytest.raises(EncodingError):
                _point(data, 0) + _point(data, 2)
            rejected += 1
            continue
        got = _evm_output(_point(data, 0) + _point(data, 2))
        if got != vector["expected"].lower():
            mismatches.append((vector["name"], got, vector["expected"]))
        checked += 1
    assert not mismatches
    assert checked + rejected == len(precompiles["add"]) >= MIN_ADD_VECTORS


def test_ecmul_vectors(precompiles: dict[str, Any]) -> None:
    checked = rejected = 0
    mismatches = []
    for vector in precompiles["mul"]:
        data = _padded(vector["input"], MUL_INPUT_BYTES)
        k = _word(data, 2)  # any 256-bit value, reduced mod r by the group law
        if _is_failure(vector):
            with pytest.raises(EncodingError):
                _point(data, 0)
            rejected += 1
            continue
        pt = _point(data, 0)
        outputs = {_evm_output(k * pt), _evm_output(pt * k)}
        if outputs != {vector["expected"].lower()}:
            mismatches.append((vector["name"], outputs, vector["expected"]))
        checked += 1
    assert not mismatches
    assert checked + rejected == len(precompiles["mul"]) >= MIN_MUL_VECTORS


def test_vectors_exercise_edge_cases(precompiles: dict[str, Any]) -> None:
    """The file covers what it should: infinity inputs and outputs, short inputs, scalars >= r."""
    adds = [_padded(v["input"], ADD_INPUT_BYTES) for v in precompiles["add"]]
    muls = [_padded(v["input"], MUL_INPUT_BYTES) for v in precompiles["mul"]]
    assert any(d[:64] == bytes(64) or d[64:] == bytes(64) for d in adds)
    assert any(len(v["input"]) < 2 * ADD_INPUT_BYTES for v in precompiles["add"])
    assert any(_word(d, 2) >= bn254.ORDER for d in muls)
    assert any(v["expected"] == "00" * 64 for v in precompiles["add"] + precompiles["mul"])


def test_vectors_agree_with_reference(precompiles: dict[str, Any]) -> None:
    """py_ecc gives the same answers, so the vectors and our reading of them are sound."""
    for vector in precompiles["add"]:
        data = _padded(vector["input"], ADD_INPUT_BYTES)
        assert _ref_output(ref.add(_ref_point(data, 0), _ref_point(data, 2))) == vector["expected"].lower()
    for vector in precompiles["mul"]:
        data = _padded(vector["input"], MUL_INPUT_BYTES)
        k = _word(data, 2) % ref.curve_order
        assert _ref_output(ref.multiply(_ref_point(data, 0), k)) == vector["expected"].lower()


def test_ecmul_vectors_through_msm(precompiles: dict[str, Any]) -> None:
    """All the ecMul vectors as one variable-base MSM and one fixed-base MSM: sum k_i P_i."""
    points, scalars = [], []
    expected = bn254.IDENTITY
    for vector in precompiles["mul"]:
        data = _padded(vector["input"], MUL_INPUT_BYTES)
        pt = _point(data, 0)
        points.append(pt.xy)
        scalars.append(_word(data, 2))
        out = bytes.fromhex(vector["expected"])
        if out != bytes(64):
            expected = expected + bn254.from_affine(_word(out, 0), _word(out, 1))
    assert jac_to_affine(msm(points, scalars)) == expected.xy
    finite = [(pt, k) for pt, k in zip(points, scalars) if pt is not None]
    fixed = FixedBases([pt for pt, _ in finite])
    assert jac_to_affine(fixed.msm([k for _, k in finite])) == expected.xy


def test_off_curve_inputs_are_rejected(precompiles: dict[str, Any]) -> None:
    """The EVM fails a call whose point is off the curve; we refuse the point when it is built."""
    tampered = 0
    for vector in precompiles["add"] + precompiles["mul"]:
        data = _padded(vector["input"], MUL_INPUT_BYTES)
        x, y = _word(data, 0), _word(data, 1)
        if x == 0 and y == 0:
            continue
        with pytest.raises(EncodingError):
            bn254.from_affine(x, (y + 1) % bn254.FIELD_MODULUS)
        with pytest.raises(EncodingError):
            bn254.from_affine(x, y + bn254.FIELD_MODULUS)  # congruent, but not reduced
        tampered += 1
    assert tampered >= MIN_ADD_VECTORS
