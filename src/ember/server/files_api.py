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

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import FileResponse

from ember.errors import InvalidRequest
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


def validate(path: Path, purpose: str) -> dict:
    """Check a file for its purpose; returns metadata stored with it. Bad lines: InvalidRequest naming them."""
    if purpose == "fine-tune":
        return _fine_tune(path)
    if purpose == "batch":
        from ember.jobs.batch import validate_file

        return validate_file(path)
    if purpose == "evals":
        return _evals(path)
    if purpose == "train":
        try:
            with open(path, encoding="utf-8") as fh:
                lines = sum(1 for _ in fh)
        except UnicodeDecodeError:
            raise InvalidRequest("a training corpus must be UTF-8 text", param="file") from None
        return {"lines": lines}
    return {}


def _first_line(path: Path) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.strip():
                return line.strip()
    raise InvalidRequest("the file is empty", param="file")


def _fine_tune(path: Path) -> dict:
    from ember.finetune import formats

    if not _first_line(path).startswith("{"):
        from ember.finetune.tag import read_conll

        data = read_conll(path, max_bad_fraction=0.0)
        if data.bad:
            raise InvalidRequest(f"{len(data.bad)} bad line(s) in {path.name}:\n"
                                 + "\n".join(f"  {path.name}:{n}: {why}" for n, why in data.bad[:20]), param="file")
        return {"format": "conll", "lines": len(data.sentences)}
    with open(path, encoding="utf-8", errors="replace") as fh:
        kind = "sft"
        for line in fh:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and {"text", "label"} <= rec.keys():
                kind = "classify"
            break
    # Every line must be good at upload (training would skip bad ones): no bad fraction is tolerated.
    data = formats.read_jsonl(path, kind, max_bad_fraction=0.0)
    return {"format": data.format, "lines": len(data.records)}


def _evals(path: Path) -> dict:
    import yaml

    if path.suffix in (".yaml", ".yml"):
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise InvalidRequest(f"{path.name} is not valid YAML: {e}", param="file") from None
        if not isinstance(doc, dict):
            raise InvalidRequest(f"{path.name}: a task file is a mapping of keys to values", param="file")
        return {"format": "task"}
    bad, n = [], 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            n += 1
            try:
                ok = isinstance(json.loads(line), dict)
            except ValueError:
                ok = False
            if not ok:
                bad.append(f"  {path.name}:{lineno}: not a JSON object")
    if bad or not n:
        raise InvalidRequest(f"{len(bad)} bad line(s) in {path.name}:\n" + "\n".join(bad[:20]) if bad
                             else "the file is empty", param="file")
    return {"format": "jsonl", "lines": n}


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
