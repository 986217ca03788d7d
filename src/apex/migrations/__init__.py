"""Alembic migrations: the schema of Apex. Run them with `apex migrate`."""
