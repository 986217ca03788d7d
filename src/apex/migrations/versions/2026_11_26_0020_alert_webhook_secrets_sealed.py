"""Alert webhook secrets sealed: the column is wide enough for a sealed secret
(kit/sealing.py), and the secrets stored so far are sealed with APEX_SECRET_KEY when it is set.

Revision ID: 2026_11_26_0020
Revises: 2026_11_26_0019
Create Date: 2026-11-26 20:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from apex.kit.sealing import PREFIX, Sealer
from apex.settings import load_settings

revision: str = "2026_11_26_0020"
down_revision: str | None = "2026_11_26_0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COMMENT = (
    "Signs webhook deliveries; shown once, when the rule is created; stored sealed with "
    "APEX_SECRET_KEY (kit/sealing.py)."
)
OLD_COMMENT = "Signs webhook deliveries; shown once, when the rule is created."


def upgrade() -> None:
    with op.batch_alter_table("alert_rules", schema=None) as batch_op:
        batch_op.alter_column(
            "webhook_secret",
            existing_type=sa.VARCHAR(length=100),
            type_=sa.String(length=200),
            existing_nullable=True,
            comment=COMMENT,
            existing_comment=OLD_COMMENT,
        )
    _seal_stored_secrets()


def _seal_stored_secrets() -> None:
    key = load_settings().secret_key
    if key is None:  # the embedded default: nothing to seal with that outlives a process
        return
    sealer = Sealer(key.get_secret_value())
    bind = op.get_bind()
    rows = bind.execute(
        sa.text("SELECT id, webhook_secret FROM alert_rules WHERE webhook_secret IS NOT NULL")
    ).all()
    for rule_id, secret in rows:
        if not secret.startswith(PREFIX):
            bind.execute(
                sa.text("UPDATE alert_rules SET webhook_secret = :sealed WHERE id = :id"),
                {"sealed": sealer.seal(secret), "id": rule_id},
            )


def downgrade() -> None:
    # Sealed secrets are longer than 100 characters: they are opened back first.
    key = load_settings().secret_key
    bind = op.get_bind()
    if key is not None:
        sealer = Sealer(key.get_secret_value())
        rows = bind.execute(
            sa.text("SELECT id, webhook_secret FROM alert_rules WHERE webhook_secret LIKE :p"),
            {"p": PREFIX + "%"},
        ).all()
        for rule_id, secret in rows:
            bind.execute(
                sa.text("UPDATE alert_rules SET webhook_secret = :plain WHERE id = :id"),
                {"plain": sealer.open(secret), "id": rule_id},
            )
    with op.batch_alter_table("alert_rules", schema=None) as batch_op:
        batch_op.alter_column(
            "webhook_secret",
            existing_type=sa.String(length=200),
            type_=sa.VARCHAR(length=100),
            existing_nullable=True,
            comment=OLD_COMMENT,
            existing_comment=COMMENT,
        )
