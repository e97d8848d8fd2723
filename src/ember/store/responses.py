"""Stored Responses API objects (table `stored_responses`), so `previous_response_id` works across server
restarts and replicas that share one registry database.

    curl localhost:8000/v1/responses -d '{"input": "Hi", "store": true}'             # -> {"id": "resp_..."}
    curl localhost:8000/v1/responses -d '{"input": "And?", "previous_response_id": "resp_..."}'

A row keeps the response object as returned and the conversation items that led to it (its input items,
those of the responses it continued included), so a continuation renders exactly the same prompt as the whole
conversation sent at once.
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
    created_at: Mapped[datetime] = mapped_column(default=db.utcnow)


def save(response: dict, conversation: list[dict], settings: Settings | None = None) -> None:
    with db.session(settings) as s:
        s.add(StoredResponse(id=response["id"], model=response["model"], response=response,
                             conversation=conversation))


def load(response_id: str, settings: Settings | None = None) -> tuple[dict, list[dict]]:
    """-> (response object, conversation items); NotFound for an unknown (or deleted) id."""
    with db.session(settings) as s:
        row = s.scalar(select(StoredResponse).where(StoredResponse.id == response_id))
        if row is None:
            raise NotFound(f"no stored response {response_id!r}", param="response_id")
        return row.response, row.conversation


def delete(response_id: str, settings: Settings | None = None) -> None:
    with db.session(settings) as s:
        row = s.scalar(select(StoredResponse).where(StoredResponse.id == response_id))
        if row is None:
            raise NotFound(f"no stored response {response_id!r}", param="response_id")
        s.delete(row)
