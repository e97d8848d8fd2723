"""Registry and key actions over HTTP (admin keys): what the console's buttons do, usable by any client.

    curl -H "Authorization: Bearer $ADMIN_KEY" -X POST localhost:8000/api/models/my-model:2/tags \\
         -d '{"tags": {"reviewed": "yes"}}'
    curl -H "Authorization: Bearer $ADMIN_KEY" -X DELETE localhost:8000/api/models/my-model:2
    curl -H "Authorization: Bearer $ADMIN_KEY" localhost:8000/api/keys
    curl -H "Authorization: Bearer $ADMIN_KEY" -X POST localhost:8000/api/keys -d '{"name": "app"}'
    curl -H "Authorization: Bearer $ADMIN_KEY" -X POST localhost:8000/api/keys/key_0123/revoke

The same store functions as `ember models tag|delete` and `ember keys create|list|revoke`. Limits on a new key
(`rpm`, `tpm`, ...) are passed to the store when it supports them (issue 13's key limits); otherwise a 400
names them. Handlers are plain `def`: database work runs in FastAPI's thread pool.
"""

import inspect

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from ember.errors import InvalidRequest
from ember.server.auth import require_scope

router = APIRouter(prefix="/api", dependencies=[Depends(require_scope("admin"))])


class TagRequest(BaseModel):
    tags: dict[str, str] = Field(min_length=1, max_length=64)


class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # limits, when the store knows them
    name: str = Field(min_length=1, max_length=128)
    scopes: list[str] = Field(default_factory=lambda: ["inference"])


@router.post("/models/{ref}/tags")
def tag(ref: str, body: TagRequest, request: Request):
    from ember.store import registry

    return registry.tag(ref, body.tags, request.app.state.settings).to_dict()


@router.delete("/models/{ref}")
def delete(ref: str, request: Request):
    from ember.store import registry

    if ":" not in ref:
        raise InvalidRequest("name one version to delete: NAME:NUMBER", param="ref")
    return {"deleted": registry.delete(ref, request.app.state.settings).ref}


@router.get("/keys")
def list_keys(request: Request):
    from ember.store import keys

    return {"object": "list", "data": [k.to_dict() for k in keys.list_keys(request.app.state.settings)]}


@router.post("/keys", status_code=201)
def create_key(body: KeyRequest, request: Request):
    from ember.store import keys

    limits = {k: v for k, v in (body.model_extra or {}).items() if v not in (None, "")}
    if limits and not any(p.kind == p.VAR_KEYWORD for p in inspect.signature(keys.create).parameters.values()):
        raise InvalidRequest(f"this server has no key limits: {', '.join(sorted(limits))}", param=sorted(limits)[0])
    info, secret = keys.create(body.name, body.scopes, request.app.state.settings, **limits)
    return {**info.to_dict(), "secret": secret}


@router.post("/keys/{key_id}/revoke")
def revoke_key(key_id: str, request: Request):
    from ember.store import keys

    return keys.revoke(key_id, request.app.state.settings).to_dict()
