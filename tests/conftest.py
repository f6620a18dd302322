"""Shared test helpers: where the shared fixtures are, and a skip when they are not."""
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.environ.get("MGR_JAX_FIXTURES", os.path.join(ROOT, "..", "shared", "fixtures"))


@pytest.fixture
def fixtures_dir():
    """Path of ../shared/fixtures (beside the clone, as in CI); tests skip without it."""
    if not os.path.isdir(FIXTURES):
        pytest.skip(f"shared fixtures not found at {FIXTURES}")
    return FIXTURES
