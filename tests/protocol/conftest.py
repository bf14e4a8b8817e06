"""Protocol tests are pure functions: they need neither Django's database nor its cache."""

import pytest


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Overrides the repo-wide cache reset so these tests run with or without the Django plugin."""
    yield
