"""MRENCLAVE (canonical manifest of the trusted code), MRSIGNER and the emulated SIGSTRUCT."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from enclave import measurement
from enclave.errors import EnclaveError
from enclave.measurement import EnclaveConfig

CONFIG = EnclaveConfig()
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

# A tiny fake source tree: what the golden manifest below is computed from.
FAKE_TREE = {
    "zk/__init__.py": b"",
    "zk/a.py": b"import os\nimport gmpy2.xmpz\nfrom zk import b\n",
    "zk/b.py": b'"""b."""\n',
    "enclave/trusted/s.py": (
        b"from cryptography.hazmat.primitives import hashes\n\n\ndef f():\n    import Crypto.Cipher\n"
    ),
    "enclave/host.py": b"import grpc\n",  # untrusted: neither hashed nor scanned for imports
    "zk/notes/README.md": b"notes\n",
}
FAKE_DISTRIBUTIONS = {"gmpy2": ["gmpy2"], "cryptography": ["cryptography"], "Crypto": ["PyCryptodome"]}
FAKE_VERSIONS = {"gmpy2": "2.3.2", "cryptography": "50.0.2", "pycryptodome": "3.23.0"}
GOLDEN_MANIFEST = b"""escrow.v1/enclave-manifest/v1
file enclave/trusted/s.py sha256:2ca8b5862e160d282f52423ae5ca838d11526330313b15cbd45a8536a0ac820f
file zk/__init__.py sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
file zk/a.py sha256:effbb1628d197131e6d05f0fdeaa2610ca93c8a477a36b590ce4bdc53441e55b
file zk/b.py sha256:b34349289f36eb0a573a50e2f4edc87624c1bee189414b3a1c3b3e9430f05aff
python 3.11.7 cpython
package cryptography 50.0.2
package gmpy2 2.3.2
package pycryptodome 3.23.0
config isv_prod_id=7 isv_svn=3 debug=1
"""


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for relpath, content in files.items():
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


@pytest.fixture
def fake_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pin the interpreter and the installed distributions, so manifests of fake trees are exact."""
    monkeypatch.setattr(measurement, "_interpreter", lambda: ("3.11.7", "cpython"))
    monkeypatch.setattr(measurement, "_packages_distributions", lambda: FAKE_DISTRIBUTIONS)
    monkeypatch.setattr(measurement, "_distribution_version", lambda name: FAKE_VERSIONS[name])


@pytest.fixture
def fake_tree(tmp_path: Path, fake_env: None) -> Path:
    return write_tree(tmp_path / "src", FAKE_TREE)


def copy_trusted(dest: Path, mtime: int) -> Path:
    """Copy the repository's trusted files to dest, with every mtime set to mtime."""
    for relpath, path in measurement.trusted_files():
        target = dest / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        os.utime(target, (mtime, mtime))
    return dest


# --- manifest and MRENCLAVE ---------------------------------------------------------------------------


def test_golden_manifest(fake_tree: Path) -> None:
    config = EnclaveConfig(isv_prod_id=7, isv_svn=3, debug=True)
    assert measurement.manifest(config, fake_tree) == GOLDEN_MANIFEST
    assert measurement.mrenclave(config, fake_tree) == hashlib.sha256(GOLDEN_MANIFEST).digest()


def test_deterministic_across_checkouts(tmp_path: Path) -> None:
    first = copy_trusted(tmp_path / "checkout-one", 1_000_000)
    second = copy_trusted(tmp_path / "elsewhere" / "checkout-two", 2_000_000_000)
    expected = measurement.mrenclave(CONFIG)
    assert measurement.mrenclave(CONFIG, first) == expected
    assert measurement.mrenclave(CONFIG, second) == expected
    assert len(expected) == 32
    assert str(tmp_path).encode() not in measurement.manifest(CONFIG, first)


def test_every_byte_of_a_trusted_file_is_measured(fake_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(measurement, "_imports", lambda source, relpath: [])  # edits may not parse
    base = measurement.mrenclave(CONFIG, fake_tree)
    for relpath in ("zk/a.py", "enclave/trusted/s.py"):
        path = fake_tree / relpath
        original = path.read_bytes()
        seen = {base}
        for i in range(len(original)):
            path.write_bytes(original[:i] + bytes([original[i] ^ 0x01]) + original[i + 1 :])
            digest = measurement.mrenclave(CONFIG, fake_tree)
            assert digest not in seen, (relpath, i)
            seen.add(digest)
        path.write_bytes(original)
    assert measurement.mrenclave(CONFIG, fake_tree) == base


def test_every_repository_trusted_file_is_measured(tmp_path: Path) -> None:
    tree = copy_trusted(tmp_path / "src", 1_000_000)
    base = measurement.mrenclave(CONFIG, tree)
    for relpath, _ in measurement.trusted_files(tree):
        path = tree / relpath
        original = path.read_bytes()
        path.write_bytes(original + b"#\n")
        assert measurement.mrenclave(CONFIG, tree) != base, relpath
        path.write_bytes(original)


@pytest.mark.parametrize("relpath", ["zk/new.py", "enclave/trusted/extra.py", "escrow/core/billing.py"])
def test_adding_a_trusted_file_changes_it(fake_tree: Path, relpath: str) -> None:
    base = measurement.mrenclave(CONFIG, fake_tree)
    write_tree(fake_tree, {relpath: b""})
    assert measurement.mrenclave(CONFIG, fake_tree) != base


def test_removing_a_trusted_file_changes_it(fake_tree: Path) -> None:
    base = measurement.mrenclave(CONFIG, fake_tree)
    (fake_tree / "zk/b.py").unlink()
    assert measurement.mrenclave(CONFIG, fake_tree) != base


@pytest.mark.parametrize(
    "relpath",
    [
        "enclave/host.py",
        "enclave/pki.py",
        "zk/notes/new.md",
        "zk/sub/deep.py",
        "zk/data.txt",
        "zk/__pycache__/a.cpython-311.pyc",
        "escrow/host/server.py",
        "clients/vehicle.py",
        "tests/test_x.py",
    ],
)
def test_untrusted_files_are_not_measured(fake_tree: Path, relpath: str) -> None:
    base = measurement.mrenclave(CONFIG, fake_tree)
    write_tree(fake_tree, {relpath: b"import not_installed_anywhere\n"})
    assert measurement.mrenclave(CONFIG, fake_tree) == base


@pytest.mark.parametrize(
    "config",
    [
        EnclaveConfig(isv_svn=2),
        EnclaveConfig(isv_prod_id=2),
        EnclaveConfig(debug=True),
        EnclaveConfig(isv_prod_id=0, isv_svn=0),
    ],
)
def test_config_is_measured(fake_tree: Path, config: EnclaveConfig) -> None:
    assert measurement.mrenclave(config, fake_tree) != measurement.mrenclave(CONFIG, fake_tree)


def test_package_versions_are_measured(fake_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = measurement.mrenclave(CONFIG, fake_tree)
    versions = dict(FAKE_VERSIONS, gmpy2="2.3.3")
    monkeypatch.setattr(measurement, "_distribution_version", lambda name: versions[name])
    assert b"package gmpy2 2.3.3\n" in measurement.manifest(CONFIG, fake_tree)
    assert measurement.mrenclave(CONFIG, fake_tree) != base


def test_interpreter_is_measured(fake_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = measurement.mrenclave(CONFIG, fake_tree)
    monkeypatch.setattr(measurement, "_interpreter", lambda: ("3.11.8", "cpython"))
    assert measurement.mrenclave(CONFIG, fake_tree) != base


def test_a_new_third_party_import_adds_a_package(fake_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tree(fake_tree, {"zk/b.py": b"import grpc\n"})
    with pytest.raises(EnclaveError, match="grpc"):  # fails closed while grpc is unknown
        measurement.manifest(CONFIG, fake_tree)
    monkeypatch.setattr(
        measurement, "_packages_distributions", lambda: dict(FAKE_DISTRIBUTIONS, grpc=["grpcio"])
    )
    monkeypatch.setattr(
        measurement, "_distribution_version", lambda name: {"grpcio": "1.85.0"}.get(name, "1")
    )
    assert b"package grpcio 1.85.0\n" in measurement.manifest(CONFIG, fake_tree)


def test_stdlib_and_project_imports_are_not_packages(tmp_path: Path, fake_env: None) -> None:
    tree = write_tree(tmp_path, {"zk/x.py": b"import hashlib\nimport zk.y\nfrom enclave import errors\n"})
    assert b"\npackage " not in measurement.manifest(CONFIG, tree)


def test_unparseable_trusted_file_is_refused(fake_tree: Path) -> None:
    write_tree(fake_tree, {"zk/broken.py": b"def (:\n"})
    with pytest.raises(EnclaveError, match=r"zk/broken\.py"):
        measurement.manifest(CONFIG, fake_tree)


def test_empty_source_root_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EnclaveError, match="no trusted files"):
        measurement.manifest(CONFIG, tmp_path)


def test_odd_file_names_are_refused(fake_tree: Path) -> None:
    write_tree(fake_tree, {"zk/with space.py": b""})
    with pytest.raises(EnclaveError, match="with space"):
        measurement.manifest(CONFIG, fake_tree)


def test_repository_manifest_lists_the_trusted_code() -> None:
    text = measurement.manifest(CONFIG).decode("utf-8")
    lines = text.splitlines()
    assert lines[0] == measurement.MANIFEST_HEADER and text.endswith("\n")
    files = [line.split()[1] for line in lines if line.startswith("file ")]
    assert files == sorted(files) and "zk/bn254.py" in files and "enclave/trusted/sealing.py" in files
    assert "enclave/measurement.py" not in files and "enclave/counter.py" not in files
    assert any(line.startswith("package gmpy2 ") for line in lines)
    assert lines[-1] == "config isv_prod_id=1 isv_svn=1 debug=0"


def test_trusted_code_imports_only_measured_project_modules() -> None:
    assert measurement.unmeasured_imports() == []


def test_unmeasured_imports_are_reported(fake_tree: Path) -> None:
    write_tree(fake_tree, {"enclave/trusted/t.py": b"from enclave.pki import x\nfrom . import s\n"})
    write_tree(fake_tree, {"enclave/pki.py": b"", "enclave/__init__.py": b""})
    assert measurement.unmeasured_imports(fake_tree) == ["enclave/trusted/t.py: enclave.pki"]


@pytest.mark.parametrize(
    "kwargs", [{"isv_svn": -1}, {"isv_svn": 65536}, {"isv_prod_id": True}, {"debug": 1}, {"isv_prod_id": 1.0}]
)
def test_config_ranges(kwargs: dict[str, object]) -> None:
    with pytest.raises(EnclaveError):
        EnclaveConfig(**kwargs)  # type: ignore[arg-type]


# --- MRSIGNER -----------------------------------------------------------------------------------------


def test_dev_signer_key_file() -> None:
    pem = (Path(measurement.__file__).parent / measurement.DEV_SIGNER_RESOURCE).read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, unencrypted
    key = measurement.dev_signer_key()
    assert isinstance(key.curve, ec.SECP256R1)


def test_mrsigner_is_the_hash_of_the_public_key() -> None:
    der = measurement.signer_public_key()
    assert der[:2] == b"\x30\x59" and len(der) == 91  # P-256 SubjectPublicKeyInfo
    assert measurement.mrsigner() == measurement.mrsigner(der) == hashlib.sha256(der).digest()
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    other_der = other.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert measurement.mrsigner(other_der) != measurement.mrsigner()


def test_mrsigner_refuses_other_keys() -> None:
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    ed_der = ed.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    p384_der = p384.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    compressed = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    )
    for bad in (ed_der, p384_der, compressed, b"", measurement.signer_public_key() + b"\x00"):
        with pytest.raises(EnclaveError):
            measurement.mrsigner(bad)


# --- SIGSTRUCT ----------------------------------------------------------------------------------------

MR = hashlib.sha256(b"an enclave").digest()
SIGNED_CONFIG = EnclaveConfig(isv_prod_id=0x1234, isv_svn=0x0506, debug=False)


def test_sigstruct_round_trip() -> None:
    public = measurement.signer_public_key()
    for config in (SIGNED_CONFIG, EnclaveConfig(debug=True)):
        sigstruct = measurement.sign_sigstruct(MR, config)
        assert measurement.verify_sigstruct(sigstruct, public) == (MR, config)
    assert measurement.sign_sigstruct(MR, SIGNED_CONFIG) == measurement.sign_sigstruct(MR, SIGNED_CONFIG)


def test_sigstruct_layout() -> None:
    public = measurement.signer_public_key()
    sigstruct = measurement.sign_sigstruct(MR, SIGNED_CONFIG)
    expected_head = b"escrow.v1/sigstruct/v1" + MR + b"\x12\x34\x05\x06\x00" + struct.pack(">H", 91) + public
    assert sigstruct[:-64] == expected_head and len(sigstruct) == len(expected_head) + 64
    assert int.from_bytes(sigstruct[-32:], "big") <= P256_N // 2


def test_sigstruct_every_flipped_byte_is_rejected() -> None:
    public = measurement.signer_public_key()
    sigstruct = measurement.sign_sigstruct(MR, SIGNED_CONFIG)
    for i in range(len(sigstruct)):
        tampered = bytearray(sigstruct)
        tampered[i] ^= 0x01
        with pytest.raises(EnclaveError):
            measurement.verify_sigstruct(bytes(tampered), public)


def test_sigstruct_high_s_and_lengths_are_rejected() -> None:
    public = measurement.signer_public_key()
    sigstruct = measurement.sign_sigstruct(MR, SIGNED_CONFIG)
    s = int.from_bytes(sigstruct[-32:], "big")
    high_s = sigstruct[:-32] + (P256_N - s).to_bytes(32, "big")
    for bad in (high_s, sigstruct[:-1], sigstruct + b"\x00", b"", sigstruct[:100]):
        with pytest.raises(EnclaveError):
            measurement.verify_sigstruct(bad, public)


def test_sigstruct_of_another_signer_is_rejected() -> None:
    public = measurement.signer_public_key()
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_public = other_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    by_other = measurement.sign_sigstruct(MR, SIGNED_CONFIG, signer_key=other_key)
    assert measurement.verify_sigstruct(by_other, other_public) == (MR, SIGNED_CONFIG)
    with pytest.raises(EnclaveError, match="another signer"):
        measurement.verify_sigstruct(by_other, public)
    with pytest.raises(EnclaveError):
        measurement.verify_sigstruct(measurement.sign_sigstruct(MR, SIGNED_CONFIG), other_public)
    # the other key's signature over a body that names the development key
    forged = by_other[: -64 - 91 - 2] + struct.pack(">H", 91) + public + by_other[-64:]
    with pytest.raises(EnclaveError, match="signature"):
        measurement.verify_sigstruct(forged, public)


def test_sigstruct_of_the_measured_enclave() -> None:
    mr = measurement.mrenclave(CONFIG)
    sigstruct = measurement.sign_sigstruct(mr, CONFIG)
    assert measurement.verify_sigstruct(sigstruct, measurement.signer_public_key()) == (mr, CONFIG)
    with pytest.raises(EnclaveError):
        measurement.sign_sigstruct(mr[:31], CONFIG)
