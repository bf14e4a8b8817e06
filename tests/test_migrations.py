"""The schema the code runs on is the one its migrations build: a model change shipped without
its migration (an index dropped or added in the model only) would leave every deployed database
different from what the code and its measurements assume."""

from __future__ import annotations

import pytest
from django.core.management import call_command


@pytest.mark.django_db
def test_the_migrations_describe_the_models_exactly():
    try:
        call_command("makemigrations", "--check", "--dry-run", verbosity=0)
    except SystemExit as exit_:  # --check exits 1 when a migration is missing
        pytest.fail(f"models and migrations differ (makemigrations --check exited {exit_.code})")
