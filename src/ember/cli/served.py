"""`ember models ps|load|unload`: what a running `ember serve` has in memory, as `ollama ps` shows it.

    ember models ps                                        # loaded models, the version behind each, memory
    ember models load my-model@production --keep-alive 5m  # load into the running server (or reload)
    ember models unload my-model@production                # free it; its next request loads it again

They talk to the server at EMBER_HOST (default http://127.0.0.1:8000) with EMBER_API_KEY (an admin key when
the server requires keys), through its /api/models/loaded, /load and /unload routes (server/models_api.py).
"""

import typer

from ember.cli import remote
from ember.cli.output import human_size, print_json, table
from ember.errors import EmberError

JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")


def register(root: typer.Typer) -> None:
    from ember.cli.models import app

    app.command("ps")(ps)
    app.command("load")(load)
    app.command("unload")(unload)


def _call(method: str, path: str, body: dict | None = None) -> dict:
    import httpx

    base = remote.base_url()
    try:
        resp = httpx.request(method, base + path, json=body, headers=remote._headers(), timeout=600)
    except httpx.HTTPError as e:
        raise EmberError(f"no Ember server at {base} ({e}); start one with `ember serve` or set EMBER_HOST") \
            from None
    if resp.status_code != 200:
        raise remote._error(resp)
    return resp.json()


def _rows(entries: list[dict]) -> list[list]:
    return [[e["id"], e["ref"], "loaded" if e["loaded"] else "unloaded", human_size(e["memory_bytes"]),
             "forever" if e["keep_alive"] is None else f"{e['keep_alive']:g}s", e["running"],
             e.get("error") or ""] for e in entries]


_COLUMNS = ["ID", "VERSION", "STATE", "MEMORY", "KEEP ALIVE", "RUNNING", "LAST ERROR"]


def ps(as_json: bool = JSON):
    """List the models the running server holds, with the version behind each and its memory."""
    data = _call("GET", "/api/models/loaded")
    if as_json:
        print_json(data)
        return
    table(f"{remote.base_url()} (RSS {human_size(data['rss_bytes'])})", _COLUMNS, _rows(data["data"]))


def load(ref: str = typer.Argument(..., help="A model reference: NAME, NAME:N or NAME@ALIAS."),
         keep_alive: str = typer.Option(None, "--keep-alive", help="Unload after this long idle (30s, 5m, 1h)."),
         as_json: bool = JSON):
    """Load a model into the running server (or load an unloaded one again)."""
    entry = _call("POST", "/api/models/load", {"model": ref, "keep_alive": keep_alive})
    print_json(entry) if as_json else table(None, _COLUMNS, _rows([entry]))


def unload(ref: str = typer.Argument(..., help="The served model's id or a reference to its version."),
           as_json: bool = JSON):
    """Free a model's memory in the running server; its next request loads it again."""
    entry = _call("POST", "/api/models/unload", {"model": ref})
    print_json(entry) if as_json else table(None, _COLUMNS, _rows([entry]))
