"""The emulated enclave's identity: MRENCLAVE over a manifest of the trusted code, MRSIGNER, SIGSTRUCT.

Formats are specified in docs/sealing.md. In short, the manifest is UTF-8 text, one item a line, "\\n"
line ends and a final newline:

  escrow.v1/enclave-manifest/v1
  file <relative POSIX path> sha256:<hex of the file's bytes>       (one per trusted file, sorted)
  python <major>.<minor>.<micro> <implementation>
  package <distribution> <version>                                  (one per imported distribution, sorted)
  config isv_prod_id=<n> isv_svn=<n> debug=<0|1>

MRENCLAVE = SHA-256(manifest). MRSIGNER = SHA-256(DER SubjectPublicKeyInfo of the signer's P-256 key).

The emulated SIGSTRUCT (all integers big-endian):

  magic "escrow.v1/sigstruct/v1" (22) | mr_enclave [32] | isv_prod_id u16 | isv_svn u16 | debug u8 (0|1) |
  public_key_len u16 | public_key (DER SubjectPublicKeyInfo, P-256) | signature [64]

where signature = r || s (32 bytes each, s <= n/2) is ECDSA-P256-SHA256 (RFC 6979) over every byte before it.
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import importlib.metadata
import importlib.resources
import importlib.util
import re
import struct
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from enclave.errors import EnclaveError

MANIFEST_HEADER = "escrow.v1/enclave-manifest/v1"
# The code that runs inside the enclave: the zk core, the enclave runtime and the escrow core, plus the
# package __init__, error and report-layout modules that importing them executes (unmeasured_imports()
# lists any module the trusted code executes that this list misses; a test keeps it empty).
TRUSTED_PATTERNS = (
    "zk/*.py",
    "enclave/__init__.py",
    "enclave/errors.py",
    "enclave/quote.py",
    "enclave/trusted/*.py",
    "escrow/__init__.py",
    "escrow/core/*.py",
)
PROJECT_PACKAGES = frozenset({"zk", "enclave", "escrow"})
SIGSTRUCT_MAGIC = b"escrow.v1/sigstruct/v1"
DEV_SIGNER_RESOURCE = "data/enclave_signer_dev.pem"

_U16_MAX = 0xFFFF
_RELPATH = re.compile(r"[A-Za-z0-9_.\-/]+")
_TOKEN = re.compile(r"[A-Za-z0-9_.+!\-]+")  # distribution names and versions: no spaces, no newlines
_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_SIG_FIXED = struct.Struct(">32sHHB")  # mr_enclave, isv_prod_id, isv_svn, debug


@dataclass(frozen=True)
class EnclaveConfig:
    """The signed enclave configuration: product id, security version number, debug mode."""

    isv_prod_id: int = 1
    isv_svn: int = 1
    debug: bool = False

    def __post_init__(self) -> None:
        for name in ("isv_prod_id", "isv_svn"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= _U16_MAX:
                raise EnclaveError(f"{name} must be an integer in 0..65535, got {value!r}")
        if type(self.debug) is not bool:
            raise EnclaveError(f"debug must be a bool, got {self.debug!r}")


# --- the trusted file set -----------------------------------------------------------------------------


def default_source_root() -> Path:
    """The directory holding the zk package (the repository, or site-packages), found without importing zk."""
    spec = importlib.util.find_spec("zk")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise EnclaveError("cannot locate the zk package, so the trusted code cannot be measured")
    return Path(locations[0]).resolve().parent


def trusted_files(source_root: Path | None = None) -> list[tuple[str, Path]]:
    """(relative POSIX path, path) of every file matched by TRUSTED_PATTERNS, sorted by the path's bytes."""
    root = default_source_root() if source_root is None else source_root
    found: dict[str, Path] = {}
    for pattern in TRUSTED_PATTERNS:
        for path in root.glob(pattern):
            if path.is_file():
                relpath = path.relative_to(root).as_posix()
                if not _RELPATH.fullmatch(relpath):
                    raise EnclaveError(f"trusted file name {relpath!r} is outside [A-Za-z0-9_.-/]")
                found[relpath] = path
    if not found:
        raise EnclaveError(f"no trusted files under {root}: wrong source root")
    return sorted(found.items(), key=lambda item: item[0].encode())


def _imports(source: bytes, relpath: str) -> list[tuple[int, str, list[str]]]:
    """(level, module, imported names) for every import statement anywhere in the file."""
    try:
        tree = ast.parse(source, filename=relpath)
    except (SyntaxError, ValueError) as exc:
        raise EnclaveError(f"trusted file {relpath} does not parse: {exc}") from exc
    out: list[tuple[int, str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((0, alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            out.append((node.level, node.module or "", [alias.name for alias in node.names]))
    return out


# --- third-party distributions ------------------------------------------------------------------------


def _packages_distributions() -> Mapping[str, list[str]]:
    """Top-level module -> distributions providing it (a seam for tests)."""
    return importlib.metadata.packages_distributions()


def _distribution_version(name: str) -> str:
    """The installed version of a distribution (a seam for tests)."""
    return importlib.metadata.version(name)


def _canonical_name(name: str) -> str:
    """PEP 503 normalised distribution name, so installers that spell it differently agree."""
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party_packages(top_level_modules: Iterable[str]) -> list[tuple[str, str]]:
    """(distribution, version), sorted, for the imported top-level modules outside stdlib and the project.

    Fails closed: a module that is neither standard library, ours, nor provided by an installed
    distribution raises EnclaveError instead of being left out of the measurement.
    """
    mapping = _packages_distributions()
    distributions: set[str] = set()
    for module in sorted(set(top_level_modules)):
        if module in sys.stdlib_module_names or module in PROJECT_PACKAGES:
            continue
        providers = mapping.get(module)
        if not providers:
            raise EnclaveError(f"trusted code imports {module!r}, which no installed distribution provides")
        distributions.update(_canonical_name(p) for p in providers)
    packages = []
    for name in sorted(distributions):
        version = _distribution_version(name)
        if not _TOKEN.fullmatch(name) or not _TOKEN.fullmatch(version):
            raise EnclaveError(f"distribution {name!r} {version!r} cannot be written into the manifest")
        packages.append((name, version))
    return packages


def _interpreter() -> tuple[str, str]:
    """(major.minor.micro, implementation name) of the running interpreter (a seam for tests)."""
    v = sys.version_info
    return f"{v.major}.{v.minor}.{v.micro}", sys.implementation.name


# --- manifest and MRENCLAVE ---------------------------------------------------------------------------


def manifest(config: EnclaveConfig, source_root: Path | None = None) -> bytes:
    """The canonical manifest bytes that MRENCLAVE hashes (format in the module docstring)."""
    lines = [MANIFEST_HEADER]
    top_levels: set[str] = set()
    for relpath, path in trusted_files(source_root):
        content = path.read_bytes()
        lines.append(f"file {relpath} sha256:{hashlib.sha256(content).hexdigest()}")
        for level, module, _ in _imports(content, relpath):
            if level == 0 and module:
                top_levels.add(module.split(".")[0])
    version, implementation = _interpreter()
    lines.append(f"python {version} {implementation}")
    lines.extend(f"package {name} {ver}" for name, ver in third_party_packages(top_levels))
    lines.append(
        f"config isv_prod_id={config.isv_prod_id} isv_svn={config.isv_svn} debug={int(config.debug)}"
    )
    return ("\n".join(lines) + "\n").encode("utf-8")


def mrenclave(config: EnclaveConfig, source_root: Path | None = None) -> bytes:
    """MRENCLAVE = SHA-256(manifest), 32 bytes."""
    return hashlib.sha256(manifest(config, source_root)).digest()


def unmeasured_imports(source_root: Path | None = None) -> list[str]:
    """Project modules that the trusted code executes (imports or their parent packages) but that are not
    in the trusted file set, as "<importing file>: <module>". Empty when the measurement is closed."""
    root = default_source_root() if source_root is None else source_root
    files = trusted_files(root)
    measured = {relpath for relpath, _ in files}
    problems: list[str] = []
    for relpath, path in files:
        package = relpath.split("/")[:-1]
        for level, module, names in _imports(path.read_bytes(), relpath):
            base = package[: len(package) - level + 1] if level else []
            parts = base + (module.split(".") if module else [])
            if not parts or parts[0] not in PROJECT_PACKAGES:
                continue
            candidates = [parts[:i] for i in range(1, len(parts) + 1)] + [[*parts, n] for n in names]
            for mod in candidates:
                mod_file = "/".join(mod) + ".py"
                init_file = "/".join(mod) + "/__init__.py"
                existing = [f for f in (mod_file, init_file) if (root / f).is_file()]
                if existing and existing[0] not in measured:
                    problems.append(f"{relpath}: {'.'.join(mod)}")
    return sorted(set(problems))


# --- MRSIGNER and SIGSTRUCT ---------------------------------------------------------------------------


def dev_signer_key() -> ec.EllipticCurvePrivateKey:
    """The DEVELOPMENT signing key shipped in enclave/data (a production enclave is signed offline)."""
    pem = importlib.resources.files("enclave").joinpath(DEV_SIGNER_RESOURCE).read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise EnclaveError("the enclave signer key must be an ECDSA P-256 key")
    return key


def _public_der(key: ec.EllipticCurvePrivateKey) -> bytes:
    """DER SubjectPublicKeyInfo of the key's public part."""
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def signer_public_key() -> bytes:
    """DER SubjectPublicKeyInfo of the development signer's public key."""
    return _public_der(dev_signer_key())


def _load_signer_public(public_der: bytes) -> ec.EllipticCurvePublicKey:
    """Strictly parse a P-256 SubjectPublicKeyInfo: the canonical DER encoding only."""
    try:
        key = serialization.load_der_public_key(public_der)
    except (ValueError, TypeError) as exc:
        raise EnclaveError("signer public key is not a DER SubjectPublicKeyInfo") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise EnclaveError("signer public key must be ECDSA P-256")
    canonical = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if canonical != public_der:
        raise EnclaveError("signer public key is not in canonical (uncompressed, DER) form")
    return key


def mrsigner(public_der: bytes | None = None) -> bytes:
    """MRSIGNER = SHA-256(DER SubjectPublicKeyInfo of the signer key); the development key by default."""
    der = signer_public_key() if public_der is None else public_der
    _load_signer_public(der)
    return hashlib.sha256(der).digest()


def _signed_part(mr_enclave: bytes, config: EnclaveConfig, public_der: bytes) -> bytes:
    """Every SIGSTRUCT field before the signature."""
    fixed = _SIG_FIXED.pack(mr_enclave, config.isv_prod_id, config.isv_svn, int(config.debug))
    return SIGSTRUCT_MAGIC + fixed + struct.pack(">H", len(public_der)) + public_der


def sign_sigstruct(
    mr_enclave: bytes, config: EnclaveConfig, *, signer_key: ec.EllipticCurvePrivateKey | None = None
) -> bytes:
    """An emulated SIGSTRUCT: the signer vouches for (MRENCLAVE, config). Deterministic, low-s."""
    if len(mr_enclave) != 32:
        raise EnclaveError("mr_enclave must be 32 bytes")
    key = dev_signer_key() if signer_key is None else signer_key
    if not isinstance(key.curve, ec.SECP256R1):
        raise EnclaveError("the enclave signer key must be an ECDSA P-256 key")
    body = _signed_part(mr_enclave, config, _public_der(key))
    r, s = decode_dss_signature(key.sign(body, ec.ECDSA(hashes.SHA256(), deterministic_signing=True)))
    s = min(s, _P256_N - s)  # low-s: one valid signature per message
    return body + r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify_sigstruct(sigstruct: bytes, public_der: bytes) -> tuple[bytes, EnclaveConfig]:
    """Check a SIGSTRUCT strictly against the expected signer; return (MRENCLAVE, config) it vouches for.

    The emulated EINIT then compares the MRENCLAVE with the measured one and takes
    MRSIGNER = mrsigner(public_der). Raises EnclaveError on any deviation.
    """
    expected_key = _load_signer_public(public_der)
    head = len(SIGSTRUCT_MAGIC) + _SIG_FIXED.size
    if len(sigstruct) != head + 2 + len(public_der) + 64:
        raise EnclaveError("SIGSTRUCT has the wrong length")
    if not hmac.compare_digest(sigstruct[: len(SIGSTRUCT_MAGIC)], SIGSTRUCT_MAGIC):
        raise EnclaveError("SIGSTRUCT magic mismatch")
    mr_enclave, prod_id, svn, debug = _SIG_FIXED.unpack_from(sigstruct, len(SIGSTRUCT_MAGIC))
    if debug not in (0, 1):
        raise EnclaveError("SIGSTRUCT debug flag must be 0 or 1")
    (key_len,) = struct.unpack_from(">H", sigstruct, head)
    embedded = sigstruct[head + 2 : head + 2 + key_len]
    if key_len != len(public_der) or not hmac.compare_digest(embedded, public_der):
        raise EnclaveError("SIGSTRUCT was signed by another signer")
    body, signature = sigstruct[:-64], sigstruct[-64:]
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    if not (1 <= r < _P256_N and 1 <= s <= _P256_N // 2):
        raise EnclaveError("SIGSTRUCT signature out of range or not low-s")
    try:
        expected_key.verify(encode_dss_signature(r, s), body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise EnclaveError("SIGSTRUCT signature is invalid") from exc
    return mr_enclave, EnclaveConfig(isv_prod_id=prod_id, isv_svn=svn, debug=bool(debug))
