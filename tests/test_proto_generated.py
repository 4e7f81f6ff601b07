"""The generated escrow.v1 code is exactly what the pinned grpcio-tools makes from proto/ today."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_is_current(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    fresh = sorted(p.name for p in (tmp_path / "escrow" / "v1").iterdir())
    committed = sorted(
        p.name
        for p in (ROOT / "escrow" / "v1").iterdir()
        if p.name != "__init__.py" and p.suffix in (".py", ".pyi")
    )
    assert fresh == committed, "run `make proto`: the set of generated files changed"
    for name in fresh:
        assert (tmp_path / "escrow" / "v1" / name).read_bytes() == (
            ROOT / "escrow" / "v1" / name
        ).read_bytes(), f"escrow/v1/{name} is stale: run `make proto`"


def test_every_service_and_enum_follows_the_api_rules() -> None:
    modules = ["attestation", "charging", "common", "ledger", "notes", "registry"]
    for name in modules:
        module = importlib.import_module(f"escrow.v1.{name}_pb2")
        descriptor = module.DESCRIPTOR
        assert descriptor.package == "escrow.v1"
        for enum in descriptor.enum_types_by_name.values():
            assert enum.values[0].number == 0 and enum.values[0].name.endswith("_UNSPECIFIED")
        for message in descriptor.message_types_by_name.values():
            for field in message.fields:
                assert field.name == field.name.lower(), (
                    f"{message.name}.{field.name} is not lower_snake_case"
                )
        for service in descriptor.services_by_name.values():
            for method in service.methods:
                # one request and one response message per RPC, named after it (DESIGN §8)
                assert method.input_type.name in (f"{method.name}Request", "ReadingEnvelope"), (
                    method.full_name
                )
                assert method.output_type.name in (f"{method.name}Response", "SignedAck", "LedgerEntry"), (
                    method.full_name
                )


def test_mutating_requests_carry_a_request_id() -> None:
    from escrow.v1 import charging_pb2, notes_pb2, registry_pb2

    mutating = [
        registry_pb2.RegisterPoleRequest,
        registry_pb2.PublishTariffRequest,
        notes_pb2.MintRequest,
        notes_pb2.RedeemRequest,
        charging_pb2.OpenRequest,
        charging_pb2.AttachRequest,
        charging_pb2.StopRequest,
    ]
    for message in mutating:
        assert "request_id" in message.DESCRIPTOR.fields_by_name, message.DESCRIPTOR.name
