"""Stored Responses API objects (table `stored_responses`), so `previous_response_id` works across server
restarts and replicas that share one registry database.

    curl localhost:8000/v1/responses -d '{"input": "Hi", "store": true}'             # -> {"id": "resp_..."}
    curl localhost:8000/v1/responses -d '{"input": "And?", "previous_response_id": "resp_..."}'

A row belongs to the key that created it (`owner`): other keys get 404 for it, as for files; admin keys and
keyless servers see every row. A row keeps the response object as returned and the conversation items that led
to it (its input items, those of the responses it continued included), so a continuation renders exactly the
same prompt as the whole conversation sent at once.
"""

from datetime import datetime

from sqlalchemy import JSON, String, select
from sqlalchemy.orm import Mapped, mapped_column

from ember.config import Settings
from ember.errors import NotFound
from ember.store import db


class StoredResponse(db.Base):
    __tablename__ = "stored_responses"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(256))
    response: Mapped[dict] = mapped_column(JSON)
    conversation: Mapped[list] = mapped_column(JSON)  # input items of the whole conversation, in order
    owner: Mapped[str] = mapped_column(String(64), default="local", server_default="local")
    created_at: Mapped[datetime] = mapped_column(default=db.utcnow)


def save(response: dict, conversation: list[dict], settings: Settings | None = None, owner: str = "local") -> None:
    with db.session(settings) as s:
        s.add(StoredResponse(id=response["id"], model=response["model"], response=response,
                             conversation=conversation, owner=owner))


def _row(s, response_id: str, owner: str | None) -> StoredResponse:
    """The row, or NotFound when it does not exist or belongs to another owner (None: any owner)."""
    q = select(StoredResponse).where(StoredResponse.id == response_id)
    if owner is not None:
        q = q.where(StoredResponse.owner == owner)
    row = s.scalar(q)
    if row is None:
        raise NotFound(f"no stored response {response_id!r}", param="response_id")
    return row


def load(response_id: str, settings: Settings | None = None, owner: str | None = None) -> tuple[dict, list[dict]]:
    """-> (response object, conversation items); NotFound for an unknown, deleted or other owner's id."""
    with db.session(settings) as s:
        row = _row(s, response_id, owner)
        return row.response, row.conversation


def delete(response_id: str, settings: Settings | None = None, owner: str | None = None) -> None:
    with db.session(settings) as s:
        s.delete(_row(s, response_id, owner))
