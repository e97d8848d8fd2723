"""64-bit sizes and token counts on PostgreSQL (issue 18)

Revision ID: 0018
Revises: 0016

PostgreSQL's INTEGER is 32-bit: a weights file over 2 GiB or a year of tokens would not fit. SQLite's
INTEGER is already 64-bit, so there is nothing to do there.
"""

import sqlalchemy as sa
from alembic import op

revision = '0018'
down_revision = '0016'
branch_labels = None
depends_on = None

COLUMNS = {
    "files": ["size"],
    "uploaded_files": ["size"],
    "api_keys": ["rpm", "tpm", "max_parallel", "budget_tokens"],
    "usage_daily": ["requests", "prompt_tokens", "completion_tokens"],
    "rate_windows": ["requests", "tokens"],
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, cols in COLUMNS.items():
        for col in cols:
            op.alter_column(table, col, type_=sa.BigInteger(), existing_type=sa.Integer())


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, cols in COLUMNS.items():
        for col in cols:
            op.alter_column(table, col, type_=sa.Integer(), existing_type=sa.BigInteger())
