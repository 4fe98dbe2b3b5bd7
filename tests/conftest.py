import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
TINY_RANDOM = FIXTURES / "llada_tiny_random"


@pytest.fixture(scope="session")
def tiny_random_dir() -> Path:
    return TINY_RANDOM


@pytest.fixture(scope="session")
def published() -> dict:
    """Outputs of the published LLaDA / Fast-dLLM code on the tiny random checkpoint."""
    with open(TINY_RANDOM / "expected.json", encoding="utf-8") as f:
        return json.load(f)
