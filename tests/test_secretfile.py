"""Encrypted secret files: round trip, 0600 from birth, tamper/kind/permission refusals, passphrases."""

from __future__ import annotations

import errno
import getpass
import os
import stat
import struct
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clients import secretfile as sf
from clients.secretfile import (
    PassphraseError,
    SecretFileError,
    passphrase_from,
    read_secret_file,
    write_secret_file,
)

PASSPHRASE = b"correct horse battery staple"
PAYLOAD = b"wallet-seed:0123456789abcdef"


@pytest.fixture(autouse=True)
def fast_kdf() -> Iterator[None]:
    """Every test here uses the insecure fast scrypt parameters, except where it leaves the block."""
    with sf.insecure_fast_kdf_for_tests():
        yield


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _reason(excinfo: pytest.ExceptionInfo[SecretFileError]) -> str:
    return excinfo.value.reason


# --- round trip and layout ---------------------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "wallet.secret"
    write_secret_file(path, "wallet", PAYLOAD, PASSPHRASE)
    assert read_secret_file(path, "wallet", PASSPHRASE) == PAYLOAD
    assert _mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["wallet.secret"]  # no temp file left behind


def test_round_trip_empty_and_binary_payload(tmp_path: Path) -> None:
    for i, payload in enumerate([b"", bytes(range(256)) * 40]):
        path = tmp_path / f"k{i}"
        write_secret_file(path, "issuer-keys", payload, b"")
        assert read_secret_file(path, "issuer-keys", b"") == payload


def test_layout_matches_documentation(tmp_path: Path) -> None:
    path = tmp_path / "pole"
    write_secret_file(path, "pole-keys", PAYLOAD, PASSPHRASE)
    data = path.read_bytes()
    k = len(b"pole-keys")
    assert data[:13] == b"ESCROW-SECRET" and data[13] == 1 and data[14] == k
    assert data[15 : 15 + k] == b"pole-keys"
    assert data[15 + k] == 1  # scrypt
    assert tuple(data[16 + k : 19 + k]) == (4, 8, 1)  # the test hook's log2 n, r, p
    (ct_len,) = struct.unpack(">I", data[47 + k : 51 + k])
    assert ct_len == len(PAYLOAD) + 16 == len(data) - (51 + k)


def test_default_parameters_are_written_outside_the_hook(tmp_path: Path) -> None:
    with sf.insecure_fast_kdf_for_tests():
        pass  # nesting restores the outer policy
    assert sf._policy.write == sf.INSECURE_TEST_SCRYPT
    sf._policy = sf._KdfPolicy(write=sf.DEFAULT_SCRYPT, minimum=sf.MIN_SCRYPT)  # restored by the fixture
    assert sf.ScryptParams(log2_n=15, r=8, p=1) == sf.DEFAULT_SCRYPT
    data = sf.encrypt_secret("wallet", b"x", PASSPHRASE)
    assert tuple(data[22:25]) == (15, 8, 1)
    assert sf.decrypt_secret(data, "wallet", PASSPHRASE) == b"x"


def test_weak_file_refused_outside_the_hook(tmp_path: Path) -> None:
    path = tmp_path / "weak"
    write_secret_file(path, "wallet", PAYLOAD, PASSPHRASE)
    sf._policy = sf._KdfPolicy(write=sf.DEFAULT_SCRYPT, minimum=sf.MIN_SCRYPT)  # restored by the fixture
    with pytest.raises(SecretFileError) as excinfo:
        read_secret_file(path, "wallet", PASSPHRASE)
    assert _reason(excinfo) == sf.SECRET_FILE_MALFORMED


def test_invalid_kind_is_a_programming_error(tmp_path: Path) -> None:
    for kind in ["", "Wallet", "wallet keys", "x" * 33, "wället", "-wallet"]:
        with pytest.raises(ValueError):
            write_secret_file(tmp_path / "w", kind, PAYLOAD, PASSPHRASE)


# --- atomic, private writes --------------------------------------------------------------------------


def _spy(monkeypatch: pytest.MonkeyPatch, name: str, seen: list[int]) -> None:
    """Wrap os.<name> so it records the permission bits of the temp file at the moment of publishing."""
    real: Callable[..., Any] = getattr(os, name)

    def spy(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
        assert Path(src).parent == Path(dst).parent  # same directory: an atomic rename
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, name, spy)


def test_temp_file_is_0600_before_it_is_published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old_umask = os.umask(0)  # the most permissive umask must not widen the file
    try:
        seen: list[int] = []
        _spy(monkeypatch, "replace", seen)
        _spy(monkeypatch, "link", seen)
        write_secret_file(tmp_path / "new", "wallet", PAYLOAD, PASSPHRASE)
        write_secret_file(tmp_path / "new", "wallet", PAYLOAD, PASSPHRASE, overwrite=True)
    finally:
        os.umask(old_umask)
    assert seen == [0o600, 0o600]
    assert _mode(tmp_path / "new") == 0o600


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "wallet"
    write_secret_file(path, "wallet", PAYLOAD, PASSPHRASE)
    with pytest.raises(SecretFileError) as excinfo:
        write_secret_file(path, "wallet", b"other", PASSPHRASE)
    assert _reason(excinfo) == sf.SECRET_FILE_EXISTS
    assert read_secret_file(path, "wallet", PASSPHRASE) == PAYLOAD
    write_secret_file(path, "wallet", b"other", PASSPHRASE, overwrite=True)
    assert read_secret_file(path, "wallet", PASSPHRASE) == b"other"


def test_exclusive_create_loses_a_race_safely(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "wallet"
    real_link = os.link

    def racing_link(src: Any, dst: Any) -> None:
        Path(dst).write_bytes(b"the other process's wallet")  # created after our existence check
        real_link(src, dst)

    monkeypatch.setattr(os, "link", racing_link)
    with pytest.raises(SecretFileError) as excinfo:
        write_secret_file(path, "wallet", PAYLOAD, PASSPHRASE)
    assert _reason(excinfo) == sf.SECRET_FILE_EXISTS
    assert path.read_bytes() == b"the other process's wallet"
    assert [p.name for p in tmp_path.iterdir()] == ["wallet"]


def test_filesystem_without_hard_links_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: Any, dst: Any) -> None:
        raise OSError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "wallet"
    write_secret_file(path, "wallet", PAYLOAD, PASSPHRASE)
    assert read_secret_file(path, "wallet", PASSPHRASE) == PAYLOAD
    assert _mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["wallet"]


def test_failed_replace_leaves_the_old_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "wallet"
    write_secret_file(path, "wallet", PAYLOAD, PASSPHRASE)
    before = path.read_bytes()

    def crash(src: Any, dst: Any) -> None:
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        write_secret_file(path, "wallet", b"new contents", PASSPHRASE, overwrite=True)
    assert path.read_bytes() == before
    assert read_secret_file(path, "wallet", PASSPHRASE) == PAYLOAD
    assert [p.name for p in tmp_path.iterdir()] == ["wallet"]


# --- refusals when reading ---------------------------------------------------------------------------


def test_missing(tmp_path: Path) -> None:
    with pytest.raises(SecretFileError) as excinfo:
        read_secret_file(tmp_path / "nope", "wallet", PASSPHRASE)
    assert _reason(excinfo) == sf.SECRET_FILE_MISSING


def test_wrong_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "wallet"
    write_secret_file(path, "wallet", PAYLOAD, PASSPHRASE)
    with pytest.raises(SecretFileError) as excinfo:
        read_secret_file(path, "wallet", b"Correct horse battery staple")
    assert _reason(excinfo) == sf.SECRET_FILE_PASSPHRASE


def test_wrong_kind(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    write_secret_file(path, "pole-keys", PAYLOAD, PASSPHRASE)
    with pytest.raises(SecretFileError) as excinfo:
        read_secret_file(path, "wallet", PASSPHRASE)
    assert _reason(excinfo) == sf.SECRET_FILE_KIND
    assert "pole-keys" in str(excinfo.value)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o601])
def test_group_or_other_access_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "wallet"
    write_secret_file(path, "wallet", PAYLOAD, PASSPHRASE)
    os.chmod(path, mode)
    with pytest.raises(SecretFileError) as excinfo:
        read_secret_file(path, "wallet", PASSPHRASE)
    assert _reason(excinfo) == sf.SECRET_FILE_PERMISSIONS
    assert "chmod 600" in str(excinfo.value)
    os.chmod(path, 0o400)  # owner read-only is fine
    assert read_secret_file(path, "wallet", PASSPHRASE) == PAYLOAD


def test_every_flipped_byte_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "wallet"
    write_secret_file(path, "wallet", b"seed", PASSPHRASE)
    original = path.read_bytes()
    reasons: set[str] = set()
    for i in range(len(original)):
        tampered = bytearray(original)
        tampered[i] ^= 0x01
        path.write_bytes(bytes(tampered))
        with pytest.raises(SecretFileError) as excinfo:
            read_secret_file(path, "wallet", PASSPHRASE)
        reasons.add(_reason(excinfo))
    # salt, nonce and ciphertext fail authentication; structural fields fail parsing (a flipped top bit
    # of the ciphertext length declares more than the payload limit)
    assert reasons == {
        sf.SECRET_FILE_MALFORMED,
        sf.SECRET_FILE_KIND,
        sf.SECRET_FILE_PASSPHRASE,
        sf.SECRET_FILE_TOO_LARGE,
    }


def test_header_is_associated_data(tmp_path: Path) -> None:
    """Raising r (still within bounds) derives another key, but the ciphertext length is also bound."""
    data = bytearray(sf.encrypt_secret("wallet", PAYLOAD, PASSPHRASE))
    data[23] = 9  # r: a valid, parseable header that differs from the one encrypted under
    with pytest.raises(SecretFileError) as excinfo:
        sf.decrypt_secret(bytes(data), "wallet", PASSPHRASE)
    assert _reason(excinfo) == sf.SECRET_FILE_PASSPHRASE


@pytest.mark.parametrize("keep", [0, 5, 14, 20, 40, 53, -1])
def test_truncated(tmp_path: Path, keep: int) -> None:
    path = tmp_path / "wallet"
    write_secret_file(path, "wallet", PAYLOAD, PASSPHRASE)
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(SecretFileError) as excinfo:
        read_secret_file(path, "wallet", PASSPHRASE)
    assert _reason(excinfo) == sf.SECRET_FILE_MALFORMED


def test_trailing_bytes_refused(tmp_path: Path) -> None:
    data = sf.encrypt_secret("wallet", PAYLOAD, PASSPHRASE) + b"\x00"
    with pytest.raises(SecretFileError) as excinfo:
        sf.decrypt_secret(data, "wallet", PASSPHRASE)
    assert _reason(excinfo) == sf.SECRET_FILE_MALFORMED


@pytest.mark.parametrize(
    ("log2_n", "r", "p"),
    [(60, 8, 1), (21, 8, 1), (20, 8, 1), (16, 255, 1), (15, 8, 255), (0, 8, 1), (4, 0, 1), (4, 8, 0)],
)
def test_hostile_kdf_parameters_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log2_n: int, r: int, p: int
) -> None:
    data = bytearray(sf.encrypt_secret("wallet", PAYLOAD, PASSPHRASE))
    data[22:25] = bytes([log2_n, r, p])

    def no_work(*args: Any, **kwargs: Any) -> bytes:
        raise AssertionError("scrypt ran on hostile parameters")

    monkeypatch.setattr(sf, "_derive_key", no_work)
    with pytest.raises(SecretFileError) as excinfo:
        sf.decrypt_secret(bytes(data), "wallet", PASSPHRASE)
    assert _reason(excinfo) == sf.SECRET_FILE_MALFORMED
    assert "scrypt parameters" in excinfo.value.detail


def test_too_large(tmp_path: Path) -> None:
    path = tmp_path / "big"
    with path.open("wb") as f:
        f.truncate(sf.MAX_FILE_BYTES + 1)  # sparse: no real disk use
    os.chmod(path, 0o600)
    with pytest.raises(SecretFileError) as excinfo:
        read_secret_file(path, "wallet", PASSPHRASE)
    assert _reason(excinfo) == sf.SECRET_FILE_TOO_LARGE
    with pytest.raises(SecretFileError) as excinfo:
        sf.encrypt_secret("wallet", bytes(sf.MAX_PAYLOAD_BYTES + 1), PASSPHRASE)
    assert _reason(excinfo) == sf.SECRET_FILE_TOO_LARGE


def test_declared_length_too_large(tmp_path: Path) -> None:
    data = bytearray(sf.encrypt_secret("wallet", PAYLOAD, PASSPHRASE))
    data[53:57] = struct.pack(">I", 0xFFFFFFFF)
    with pytest.raises(SecretFileError) as excinfo:
        sf.decrypt_secret(bytes(data), "wallet", PASSPHRASE)
    assert _reason(excinfo) == sf.SECRET_FILE_TOO_LARGE


def test_directory_is_not_a_secret_file(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir(mode=0o700)
    with pytest.raises(SecretFileError) as excinfo:
        read_secret_file(tmp_path / "d", "wallet", PASSPHRASE)
    assert _reason(excinfo) == sf.SECRET_FILE_MALFORMED


def test_errors_never_carry_secrets(tmp_path: Path) -> None:
    path = tmp_path / "wallet"
    write_secret_file(path, "wallet", PAYLOAD, PASSPHRASE)
    messages: list[str] = []
    for kind, passphrase in [("wallet", b"wrong passphrase!"), ("pole-keys", PASSPHRASE)]:
        with pytest.raises(SecretFileError) as excinfo:
            read_secret_file(path, kind, passphrase)
        messages.append(repr(excinfo.value) + str(excinfo.value.args) + excinfo.value.detail)
        assert excinfo.value.__cause__ is None
        assert excinfo.value.__context__ is None or excinfo.value.__suppress_context__
    os.chmod(path, 0o644)
    with pytest.raises(SecretFileError) as excinfo:
        read_secret_file(path, "wallet", PASSPHRASE)
    messages.append(repr(excinfo.value))
    for message in messages:
        for secret in (PAYLOAD, PASSPHRASE, b"wrong passphrase!"):
            assert secret.decode() not in message
            assert secret.hex() not in message


# --- passphrase sources ------------------------------------------------------------------------------

ENV = "ESCROW_WALLET_PASSPHRASE"


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delenv(sf.ALLOW_EMPTY_PASSPHRASE_ENV, raising=False)
    return monkeypatch


def _terminal(monkeypatch: pytest.MonkeyPatch, answers: list[str] | None, tty: bool = True) -> list[str]:
    """Pretend stdin is (or is not) a terminal and getpass returns ``answers`` in turn; returns prompts."""
    prompts: list[str] = []

    def fake_getpass(prompt: str = "Password: ", stream: Any = None) -> str:
        prompts.append(prompt)
        if answers is None:
            raise AssertionError("getpass must not be called")
        return answers.pop(0)

    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: tty)
    return prompts


def test_passphrase_from_env_wins(no_env: pytest.MonkeyPatch) -> None:
    no_env.setenv(ENV, "s3cret é")
    _terminal(no_env, None)
    assert passphrase_from(ENV, prompt="Wallet passphrase: ") == "s3cret é".encode()


def test_passphrase_env_is_nfc_normalised(no_env: pytest.MonkeyPatch) -> None:
    no_env.setenv(ENV, "e\u0301")  # e + combining acute: NFD
    assert passphrase_from(ENV, prompt=None) == "\u00e9".encode()


def test_empty_env_refused_unless_explicitly_allowed(no_env: pytest.MonkeyPatch) -> None:
    no_env.setenv(ENV, "")
    _terminal(no_env, None)
    with pytest.raises(PassphraseError) as excinfo:
        passphrase_from(ENV, prompt="Wallet passphrase: ")
    assert excinfo.value.reason == sf.PASSPHRASE_EMPTY
    assert "INSECURE" in str(excinfo.value)
    no_env.setenv(sf.ALLOW_EMPTY_PASSPHRASE_ENV, "yes")  # only exactly "1" counts
    with pytest.raises(PassphraseError):
        passphrase_from(ENV, prompt=None)
    no_env.setenv(sf.ALLOW_EMPTY_PASSPHRASE_ENV, "1")
    assert passphrase_from(ENV, prompt=None) == b""


def test_prompt_once_when_opening(no_env: pytest.MonkeyPatch) -> None:
    prompts = _terminal(no_env, ["typed"])
    assert passphrase_from(ENV, prompt="Wallet passphrase: ") == b"typed"
    assert prompts == ["Wallet passphrase: "]


def test_prompt_twice_when_creating(no_env: pytest.MonkeyPatch) -> None:
    prompts = _terminal(no_env, ["typed", "typed"])
    assert passphrase_from(ENV, prompt="New wallet passphrase: ", confirm=True) == b"typed"
    assert prompts == ["New wallet passphrase: ", "New wallet passphrase (again): "]


def test_prompt_mismatch(no_env: pytest.MonkeyPatch) -> None:
    _terminal(no_env, ["typed", "typo"])
    with pytest.raises(PassphraseError) as excinfo:
        passphrase_from(ENV, prompt="New wallet passphrase: ", confirm=True)
    assert excinfo.value.reason == sf.PASSPHRASE_MISMATCH
    assert "typ" not in str(excinfo.value)


def test_empty_prompt_refused(no_env: pytest.MonkeyPatch) -> None:
    _terminal(no_env, [""])
    with pytest.raises(PassphraseError) as excinfo:
        passphrase_from(ENV, prompt="Wallet passphrase: ")
    assert excinfo.value.reason == sf.PASSPHRASE_EMPTY


def test_no_terminal(no_env: pytest.MonkeyPatch) -> None:
    _terminal(no_env, None, tty=False)
    with pytest.raises(PassphraseError) as excinfo:
        passphrase_from(ENV, prompt="Wallet passphrase: ")
    assert excinfo.value.reason == sf.PASSPHRASE_UNAVAILABLE
    assert ENV in str(excinfo.value)


def test_no_prompt_allowed(no_env: pytest.MonkeyPatch) -> None:
    _terminal(no_env, None)
    with pytest.raises(PassphraseError) as excinfo:
        passphrase_from(ENV, prompt=None)
    assert excinfo.value.reason == sf.PASSPHRASE_UNAVAILABLE


def test_echoing_terminal_refused(no_env: pytest.MonkeyPatch) -> None:
    def echoing_getpass(prompt: str = "Password: ", stream: Any = None) -> str:
        warnings.warn("Can not control echo on the terminal.", getpass.GetPassWarning, stacklevel=2)
        return "would have been echoed"

    no_env.setattr(getpass, "getpass", echoing_getpass)
    no_env.setattr(sys.stdin, "isatty", lambda: True)
    with pytest.raises(PassphraseError) as excinfo:
        passphrase_from(ENV, prompt="Wallet passphrase: ")
    assert excinfo.value.reason == sf.PASSPHRASE_UNAVAILABLE
