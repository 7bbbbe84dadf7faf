"""Alembic migrations of the broker's database (run by ``Storage.migrate``)."""
