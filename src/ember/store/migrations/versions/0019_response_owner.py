"""stored responses belong to the key that created them (issue 18 review: one key could read another's)

Revision ID: 0019
Revises: 0018
"""

import sqlalchemy as sa
from alembic import op

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows stored before owners existed belong to the keyless owner: only admins and keyless servers see them.
    with op.batch_alter_table('stored_responses') as t:
        t.add_column(sa.Column('owner', sa.String(length=64), nullable=False, server_default='local'))


def downgrade() -> None:
    with op.batch_alter_table('stored_responses') as t:
        t.drop_column('owner')
