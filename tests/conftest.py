"""Shared test setup: the ../shared/vectors directory, the --run-slow switch, hypothesis profiles."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# The repository sits beside shared/ (/work/main next to /work/shared, or a CI clone next to shared/).
SHARED_VECTORS = Path(__file__).resolve().parents[1].parent / "shared" / "vectors"

settings.register_profile("default", max_examples=50, deadline=None)
settings.register_profile("ci", max_examples=50, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        default=False,
        help="also run the exhaustive tests marked @pytest.mark.slow",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: exhaustive run, enable with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


def shared_vectors_path() -> Path:
    """The shared vectors directory; fails the calling test (never skips) when it is missing."""
    if not SHARED_VECTORS.is_dir():
        pytest.fail(
            f"shared test vectors not found at {SHARED_VECTORS}: the repository must be checked out "
            "with the shared/ directory beside it (shared/vectors/...)",
            pytrace=False,
        )
    return SHARED_VECTORS


@pytest.fixture(scope="session")
def shared_vectors() -> Path:
    """Path of ../shared/vectors (the test fails with a clear message when it is missing)."""
    return shared_vectors_path()
