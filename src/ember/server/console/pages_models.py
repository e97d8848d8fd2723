"""Registry and evaluation pages (admin): the model list, a version's page with its actions, evaluations.

    GET  /ui/models?q=TEXT                       searchable list of models (from GET /api/models)
    GET  /ui/models/NAME/NUMBER                  metadata, files, tags, aliases + history, lineage, evals
    POST /ui/models/NAME/NUMBER/{alias,promote,tag,delete}    the actions, through the /api routes
    GET  /ui/evals?ref=REF&a=REF&b=REF           runs of a version; compare two; POST /ui/evals starts one

Each POST checks the CSRF token, calls the API as the signed-in key, and comes back with what happened.
"""

from urllib.parse import quote

from fastapi import APIRouter, Request

from ember.server.console import web
from ember.server.console.client import call, error_message

router = APIRouter(include_in_schema=False)
BUILTIN_TASKS = ["builtin:perplexity", "builtin:generate", "builtin:classify", "builtin:tag"]


def _group(versions: list[dict], q: str) -> list[dict]:
    models: dict[str, dict] = {}
    for v in versions:
        m = models.setdefault(v["name"], {"name": v["name"], "kind": v["kind"], "versions": [], "aliases": {}})
        m["versions"].append(v)
        for a in v["aliases"]:
            m["aliases"][a] = v["number"]
    out = []
    q = q.strip().lower()
    for m in models.values():
        latest = max(m["versions"], key=lambda v: v["number"])
        m["latest"] = latest
        hay = " ".join([m["name"], m["kind"], *m["aliases"], *(f"{k}={t}" for v in m["versions"]
                                                               for k, t in v["tags"].items())]).lower()
        if not q or q in hay:
            out.append(m)
    return sorted(out, key=lambda m: m["name"])


@router.get("/ui/models")
async def models(request: Request, q: str = ""):
    s = await web.need(request, admin=True)
    status, body = await call(request, "GET", "/api/models")
    if status != 200:
        return web.render(request, "models.html", s, models=[], q=q, error=error_message(body), total=0)
    grouped = _group(body["data"], "")
    shown = _group(body["data"], q[:200])
    return web.render(request, "models.html", s, models=shown, q=q, error=None, total=len(grouped))


def _lineage(info: dict, everything: list[dict]) -> tuple[list[str], list[str]]:
    """Ancestors (root first, ending with this version) and the versions whose parent is this one."""
    chain = list(reversed(info.get("lineage") or ([info["parent"]] if info.get("parent") else []))) + [info["ref"]]
    children = [v["ref"] for v in everything if v.get("parent") == info["ref"]]
    return chain, children


@router.get("/ui/models/{name}/{number}")
async def version(request: Request, name: str, number: int):
    s = await web.need(request, admin=True)
    ref = f"{name}:{number}"
    status, info = await call(request, "GET", f"/api/models/{ref}")
    if status != 200:
        return web.render(request, "version.html", s, status=status, info=None, ref=ref, error=error_message(info))
    _, every = await call(request, "GET", "/api/models")
    every = every.get("data", []) if isinstance(every, dict) else []
    siblings = sorted((v for v in every if v["name"] == name), key=lambda v: v["number"])
    alias_names = sorted({a for v in siblings for a in v["aliases"]} | {"production", "staging"})
    history = {}
    for alias in alias_names:
        st, h = await call(request, "GET", f"/api/models/{name}/aliases/{alias}/history")
        if st == 200 and h.get("data"):
            history[alias] = h["data"]
    chain, children = _lineage(info, every)
    meta_refs = {k: v for k, v in (info.get("metadata") or {}).items()
                 if k in ("tokenizer", "dataset", "data", "base", "base_model", "source", "method") and v}
    return web.render(request, "version.html", s, info=info, ref=ref, error=None, siblings=siblings,
                      history=history, chain=chain, children=children, meta_refs=meta_refs,
                      alias_names=alias_names)


def _page(name: str, number: int) -> str:
    return f"/ui/models/{name}/{number}"


@router.post("/ui/models/{name}/{number}/alias")
async def move_alias(request: Request, name: str, number: int):
    s = await web.need(request, admin=True)
    f = await web.form(request, s)
    alias = str(f.get("alias") or "").strip()
    st, body = await call(request, "PUT", f"/api/models/{name}/aliases/{alias}", json_body={"version": number})
    if st != 200:
        return web.back(s, _page(name, number), err=f"Could not move {alias!r}: {error_message(body)}")
    return web.back(s, _page(name, number), msg=f"{name}@{alias} now points to {name}:{number}.")


@router.post("/ui/models/{name}/{number}/promote")
async def promote(request: Request, name: str, number: int):
    s = await web.need(request, admin=True)
    f = await web.form(request, s)
    alias = str(f.get("alias") or "").strip()
    gates = [g.strip() for g in str(f.get("gates") or "").splitlines() if g.strip()]
    st, body = await call(request, "POST", f"/api/models/{name}/aliases/{alias}/promote",
                          json_body={"version": number, "gates": gates})
    if st == 200:
        passed = "; ".join(g["message"] for g in body.get("gates", [])) or "no gates"
        return web.back(s, _page(name, number), msg=f"Promoted: {name}@{alias} -> {name}:{number} ({passed}).")
    lines = [error_message(body)]
    decision = body.get("decision") if isinstance(body, dict) else None
    for g in (decision or {}).get("gates", []):
        lines.append(f"  {'PASS' if g['passed'] else 'FAIL'}  {g['message']}")
    return web.back(s, _page(name, number), err="\n".join(lines))


@router.post("/ui/models/{name}/{number}/tag")
async def tag(request: Request, name: str, number: int):
    s = await web.need(request, admin=True)
    f = await web.form(request, s)
    key, value = str(f.get("key") or "").strip(), str(f.get("value") or "")
    st, body = await call(request, "POST", f"/api/models/{name}:{number}/tags", json_body={"tags": {key: value}})
    if st != 200:
        return web.back(s, _page(name, number), err=f"Could not tag: {error_message(body)}")
    return web.back(s, _page(name, number), msg=f"Tagged {name}:{number} with {key}={value}.")


@router.post("/ui/models/{name}/{number}/delete")
async def delete(request: Request, name: str, number: int):
    s = await web.need(request, admin=True)
    f = await web.form(request, s)
    ref = f"{name}:{number}"
    if str(f.get("confirm") or "").strip() != ref:
        return web.back(s, _page(name, number), err=f"Nothing deleted: type {ref} in the box to confirm.")
    st, body = await call(request, "DELETE", f"/api/models/{ref}")
    if st != 200:
        return web.back(s, _page(name, number), err=f"Could not delete: {error_message(body)}")
    return web.back(s, "/ui/models", msg=f"Deleted {ref}.")


@router.get("/ui/evals")
async def evals(request: Request, ref: str = "", a: str = "", b: str = ""):
    s = await web.need(request, admin=True)
    st, body = await call(request, "GET", "/api/models")
    refs = [v["ref"] for v in body.get("data", [])] if st == 200 else []
    runs, compare, error, outputs = [], None, None, []
    if ref:
        st, r = await call(request, "GET", "/api/evals", params={"ref": ref})
        runs, error = (r["data"], None) if st == 200 else ([], error_message(r))
    if a and b:
        st, c = await call(request, "GET", "/api/evals/compare", params={"a": a, "b": b})
        compare = c if st == 200 else None
        error = error if st == 200 else error_message(c)
        if compare:
            outputs = await _paired_outputs(request, a, b)
    return web.render(request, "evals.html", s, refs=refs, ref=ref, a=a, b=b, runs=runs, compare=compare,
                      error=error, tasks=BUILTIN_TASKS, outputs=outputs)


async def _paired_outputs(request: Request, a: str, b: str, limit: int = 20) -> list[dict]:
    """Per-example outputs of the newest run of each side on their first shared task, paired by position."""
    sa, ra = await call(request, "GET", "/api/evals", params={"ref": a})
    sb, rb = await call(request, "GET", "/api/evals", params={"ref": b})
    if sa != 200 or sb != 200:
        return []
    newest_b = {(r["task"], r["data_digest"]): r for r in rb["data"]}
    for run_a in reversed(ra["data"]):
        run_b = newest_b.get((run_a["task"], run_a["data_digest"]))
        if run_b is None:
            continue
        _, oa = await call(request, "GET", f"/api/evals/{run_a['id']}", params={"outputs": "true"})
        _, ob = await call(request, "GET", f"/api/evals/{run_b['id']}", params={"outputs": "true"})
        pairs = []
        for x, y in zip((oa.get("outputs") or [])[:limit], (ob.get("outputs") or [])[:limit]):
            px, py = _shown(x), _shown(y)
            pairs.append({"input": _input(x), "a": px, "b": py, "same": px == py})
        return [{"task": run_a["task"], "pairs": pairs}] if pairs else []
    return []


def _shown(o: dict) -> str:
    for k in ("prediction", "output", "completion", "text", "label"):
        if k in o:
            return str(o[k])[:400]
    return str(o)[:400]


def _input(o: dict) -> str:
    for k in ("prompt", "input", "text", "question"):
        if k in o:
            return str(o[k])[:300]
    return ""


@router.post("/ui/evals")
async def start_eval(request: Request):
    s = await web.need(request, admin=True)
    f = await web.form(request, s)
    ref, task = str(f.get("ref") or ""), str(f.get("task") or "")
    limit = str(f.get("limit") or "").strip()
    body = {"ref": ref, "task": task, **({"limit": int(limit)} if limit.isdigit() else {})}
    st, r = await call(request, "POST", "/api/evals", json_body=body)
    back = f"/ui/evals?ref={quote(ref)}"
    if st != 200:
        return web.back(s, back, err=f"The evaluation did not run: {error_message(r)}")
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.get("metrics", {}).items())
    return web.back(s, back, msg=f"Evaluated {r.get('ref', ref)} on {task}: {shown}")
