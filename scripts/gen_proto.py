"""Regenerate the Python code for proto/escrow/v1/*.proto into escrow/v1/ (`make proto`).

The generated files are committed; tests/test_proto_generated.py regenerates them into a temporary
directory and fails if they differ, so the contract and the code never drift apart. The output depends
only on the .proto files and the pinned grpcio-tools version.

    python scripts/gen_proto.py [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto"


def proto_files() -> list[Path]:
    """The contract's .proto files, sorted."""
    return sorted((PROTO_DIR / "escrow" / "v1").glob("*.proto"))


def generate(out: Path) -> None:
    """Run protoc (from grpcio-tools) for every .proto file into ``out``."""
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(p.relative_to(PROTO_DIR)) for p in proto_files()),
    ]
    import os

    cwd = os.getcwd()
    os.chdir(PROTO_DIR)  # relative paths keep absolute paths out of the generated code
    try:
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
    finally:
        os.chdir(cwd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (escrow/v1/ is created in it)")
    args = parser.parse_args()
    generate(args.out.resolve())
    print(f"generated {len(proto_files())} files' code into {args.out / 'escrow' / 'v1'}", file=sys.stderr)


if __name__ == "__main__":
    main()
