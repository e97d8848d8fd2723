"""`/v1/files`: upload, list, read and delete files in OpenAI's shape (what fine-tuning and batch jobs read).

    curl -H "Authorization: Bearer $KEY" -F purpose=fine-tune -F file=@train.jsonl localhost:8000/v1/files
    client.files.create(file=open("train.jsonl", "rb"), purpose="fine-tune")        # the openai client

Uploads are multipart/form-data (the one non-JSON body the server takes) and obey the server's body limit
(`ember serve --max-body-mb`). A file is checked for its purpose before it is stored, so a bad line is a 400
naming its line number now, not a failed job later:
  fine-tune  chat / prompt-completion / Alpaca JSONL, {"text", "label"} JSONL, or CoNLL ("WORD ... TAG")
  batch      JSONL lines {"custom_id", "method": "POST", "url", "body"}
  evals      a task YAML (a mapping) or JSONL records
  train      text corpora for tokenizer and data-preparation jobs (UTF-8)
Files are stored in the content-addressed blob store (store/files.py). A key sees and uses only its own
files; an admin key sees every file; with keys off everything belongs to one owner (`local`).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import FileResponse

from ember.errors import InvalidRequest
from ember.jobs.file_checks import validate
from ember.server.auth import bearer, require_scope

router = APIRouter(prefix="/v1", dependencies=[Depends(require_scope("inference"))])
PURPOSES = ("fine-tune", "batch", "evals", "train", "user_data")


def owner_of(request: Request) -> tuple[str, bool]:
    """(owner id, sees every owner's objects): the key's id, or `local` with keys off; admin keys see all."""
    from ember.store import keys
    from ember.store.files import LOCAL_OWNER

    st = request.app.state
    if request.scope.get("ember.internal") or not st.auth.enabled():
        return LOCAL_OWNER, True
    info = keys.check(bearer(request), "inference", st.settings)
    return info.id, "admin" in info.scopes


def visible_owner(request: Request) -> str | None:
    """The owner filter for reads: None (all) for admins and keyless servers."""
    owner, everything = owner_of(request)
    return None if everything else owner


def _safe_name(name: str | None) -> str:
    base = Path(name or "upload").name
    return re.sub(r"[^A-Za-z0-9._-]", "_", base)[:200] or "upload"


@router.post("/files")
def upload(request: Request, file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()]):
    from ember.store import files

    if purpose not in PURPOSES:
        raise InvalidRequest(f"purpose must be one of {', '.join(PURPOSES)}", param="purpose")
    owner, _ = owner_of(request)
    st = request.app.state.settings
    st.tmp_dir.mkdir(parents=True, exist_ok=True)
    name = _safe_name(file.filename)
    with tempfile.TemporaryDirectory(dir=st.tmp_dir, prefix="upload-") as tmp:
        path = Path(tmp) / name
        with open(path, "wb") as out:
            shutil.copyfileobj(file.file, out, 1 << 20)
        meta = validate(path, purpose)
        return files.add(path, filename=name, purpose=purpose, owner=owner, meta=meta, settings=st)


@router.get("/files")
def list_files(request: Request, purpose: str | None = None, limit: int = 10000, after: str | None = None,
               order: str = "desc"):
    from ember.store import files

    data = files.list_files(visible_owner(request), purpose, settings=request.app.state.settings)
    if order == "asc":
        data = data[::-1]
    if after:
        ids = [f["id"] for f in data]
        data = data[ids.index(after) + 1:] if after in ids else []
    page = data[:max(1, min(limit, 10000))]
    return {"object": "list", "data": page, "has_more": len(data) > len(page),
            "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None}


@router.get("/files/{file_id}")
def get_file(file_id: str, request: Request):
    from ember.store import files

    return files.get(file_id, visible_owner(request), request.app.state.settings)


@router.get("/files/{file_id}/content")
def file_content(file_id: str, request: Request):
    from ember.store import files

    st = request.app.state.settings
    f = files.get(file_id, visible_owner(request), st)
    return FileResponse(files.path(file_id, visible_owner(request), st), media_type="application/octet-stream",
                        filename=f["filename"])


@router.delete("/files/{file_id}")
def delete_file(file_id: str, request: Request):
    from ember.store import files

    return files.delete(file_id, visible_owner(request), request.app.state.settings)
