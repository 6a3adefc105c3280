"""Shared fixtures: the real third-party files in ../shared/data (read in place, never copied)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (the project's ../shared/data); "
                    "CI always has it, a user's clone may not")
    return SHARED_DATA


@pytest.fixture(scope="session")
def wsi(shared_data: Path):
    def path(name: str) -> Path:
        return shared_data / "wsi" / name
    return path
