"""`ember models ...`: the registry from the command line. Every command takes --json.

    ember models pull smollm2-135m-instruct
    ember models import ./model.gguf --name my-model
    ember models list
    ember models show smollm2-135m-instruct
    ember models alias smollm2-135m-instruct@production 1
    ember models history smollm2-135m-instruct@production
    ember models tag smollm2-135m-instruct:1 stage=candidate
    ember models export smollm2-135m-instruct ./smollm2-hf
    ember models verify
    ember models rm smollm2-135m-instruct:1
"""

import json
import sys
import time
from pathlib import Path

import typer

from ember.cli.output import Col, console, human_count, human_size, print_json, table
from ember.errors import CorruptFile, InvalidRequest

app = typer.Typer(no_args_is_help=True, help="Manage models: import, pull, list, show, alias, tag, export, verify.")
JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="models")


def _registry():
    from ember.store import registry  # imported lazily: keeps `ember --help` fast

    return registry


def _show_version(v, as_json: bool, verb: str = "") -> None:
    if as_json:
        print_json(v.to_dict())
    else:
        aliases = ", ".join(f"@{a}" for a in v.aliases)
        console.print(f"{verb}[bold]{v.ref}[/bold] ({v.kind}) {aliases}".rstrip())


@app.command("import")
def import_(path: Path = typer.Argument(..., help="A .gguf file or a Hugging Face folder (safetensors)."),
            name: str = typer.Option(..., "--name", help="Registry name; each import adds a version."),
            parent: str = typer.Option(None, "--parent", help="Reference of the version this one derives from."),
            as_json: bool = JSON):
    """Import a GGUF file (dequantized to safetensors) or a Hugging Face folder as a new version."""
    from ember.store import importers

    t = time.perf_counter()
    v = importers.import_path(path, name, parent=parent)
    _show_version(v, as_json, f"imported in {time.perf_counter() - t:.1f}s: ")


@app.command()
def pull(name: str = typer.Argument(..., help="A name from the bundled catalog (see `ember models catalog`)."),
         as_json: bool = JSON):
    """Register a model from the bundled offline catalog (a no-op if it is already there)."""
    from ember.store import importers

    t = time.perf_counter()
    v = importers.pull(name)
    _show_version(v, as_json, f"ready in {time.perf_counter() - t:.1f}s: ")


@app.command()
def catalog(as_json: bool = JSON):
    """List the models bundled for offline use."""
    from ember.store import importers

    rows = [{"name": e.name, "package": e.distribution, "license": e.license, "description": e.description}
            for e in importers.CATALOG.values()]
    if as_json:
        return print_json(rows)
    table("bundled catalog", [Col("name", full=True), Col("package", drop=2), Col("license", drop=1),
                              "description"], [list(r.values()) for r in rows])


@app.command("list")
def list_(name: str = typer.Argument(None, help="Only this model's versions."), as_json: bool = JSON):
    """List every version with its aliases."""
    versions = _registry().list_versions(name)
    if as_json:
        return print_json([v.to_dict() for v in versions])
    rows = [[v.ref, v.kind, v.metadata.get("architecture", ""), human_count(v.metadata.get("parameter_count")),
             human_size(sum(v.sizes.values())), " ".join(f"@{a}" for a in v.aliases),
             v.created_at.strftime("%Y-%m-%d %H:%M")] for v in versions]
    table(None, [Col("version", full=True), Col("kind", drop=3), Col("architecture", drop=5),
                 Col("params", drop=4, justify="right"), Col("size", drop=2, justify="right"),
                 Col("aliases", drop=1), Col("created", drop=6)], rows)


@app.command()
def show(ref: str, as_json: bool = JSON):
    """Metadata, files with digests, aliases, tags, lineage and evaluations of one version."""
    from ember.store import evals

    v = _registry().resolve(ref)
    runs = evals.summary(v.ref)
    if as_json:
        return print_json({**v.to_dict(), "evals": runs})
    console.print(f"[bold]{v.ref}[/bold]  kind={v.kind}  created={v.created_at.isoformat()}")
    console.print(f"aliases: {' '.join('@' + a for a in v.aliases) or '-'}")
    console.print(f"lineage: {' <- '.join([v.ref, *v.lineage]) if v.lineage else '-'}")
    console.print(f"tags: {' '.join(f'{k}={val}' for k, val in v.tags.items()) or '-'}")
    table("metadata", [Col("key", full=True), "value"], [[k, val] for k, val in v.metadata.items()])
    table("files", [Col("path", full=True), Col("size", justify="right"), "sha256"],
          [[p, human_size(v.sizes[p]), d] for p, d in v.files.items()])
    if runs:
        table("evaluations (newest run per task)", [Col("run", full=True), Col("task", full=True), "metrics",
                                                    Col("at", drop=1)],
              [[e["id"], e["task"], " ".join(f"{k}={_fmt(m)}" for k, m in e["metrics"].items()), e["created_at"]]
               for e in runs])


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _split_alias(name_at_alias: str) -> tuple[str, str]:
    name, _, alias = name_at_alias.partition("@")
    if not name or not alias:
        raise InvalidRequest(f"expected NAME@ALIAS, got {name_at_alias!r}")
    return name, alias


@app.command()
def alias(name_at_alias: str = typer.Argument(..., metavar="NAME@ALIAS"),
          version: str = typer.Argument(..., help="A version number or reference, e.g. 3 or my-model:3."),
          as_json: bool = JSON):
    """Point an alias at a version; every move is kept in the alias history."""
    name, al = _split_alias(name_at_alias)
    v = _registry().set_alias(name, al, version)
    _show_version(v, as_json, f"{name}@{al} -> ")


@app.command()
def history(name_at_alias: str = typer.Argument(..., metavar="NAME@ALIAS"), as_json: bool = JSON):
    """Every move of an alias, oldest first."""
    name, al = _split_alias(name_at_alias)
    events = _registry().alias_history(name, al)
    if as_json:
        return print_json(events)
    table(f"{name}@{al}", [Col("at", full=True), Col("action", full=True), Col("from", full=True),
                           Col("to", full=True), Col("actor", drop=2), Col("detail", drop=1)],
          [[e["at"][:19].replace("T", " "), e["action"], e["from"], e["to"], e["actor"], _detail(e["detail"])]
           for e in events])


def _detail(detail) -> str:
    """An alias event's detail in a few words (the whole record is in --json)."""
    if not detail:
        return ""
    if isinstance(detail, dict) and "gates" in detail:
        failed = detail.get("failed") or []
        return f"failed: {', '.join(failed)}" if failed else f"passed: {', '.join(g['gate'] for g in detail['gates'])}"
    return json.dumps(detail, default=str) if not isinstance(detail, str) else detail


@app.command()
def tag(ref: str, pairs: list[str] = typer.Argument(..., metavar="KEY=VALUE..."), as_json: bool = JSON):
    """Set free-form tags on a version."""
    tags = {}
    for p in pairs:
        k, sep, val = p.partition("=")
        if not sep or not k:
            raise InvalidRequest(f"expected KEY=VALUE, got {p!r}")
        tags[k] = val
    v = _registry().tag(ref, tags)
    if as_json:
        return print_json(v.to_dict())
    console.print(f"{v.ref}: {' '.join(f'{k}={val}' for k, val in v.tags.items())}")


@app.command()
def rm(ref: str, as_json: bool = JSON):
    """Delete one version (its aliases go with it; blobs no other version uses are freed)."""
    v = _registry().delete(ref)
    _show_version(v, as_json, "deleted ")


@app.command()
def export(ref: str, dest: Path = typer.Argument(..., metavar="DIR"), as_json: bool = JSON):
    """Write a plain Hugging Face folder that transformers loads as it is."""
    out = _registry().export(ref, dest)
    if as_json:
        return print_json({"ref": _registry().resolve(ref).ref, "path": str(out)})
    console.print(f"exported {ref} to {out}")


@app.command()
def verify(ref: str = typer.Argument(None, help="One version; all versions when omitted."), as_json: bool = JSON):
    """Re-hash stored blobs; exits non-zero naming every corrupt or missing blob."""
    problems = _registry().verify(ref)
    if as_json:
        print_json({"ok": not problems, "problems": problems})
    elif not problems:
        console.print("ok: every blob matches its digest")
    if problems:
        for p in problems:
            print(f"error: {p['ref']} {p['path']}: {p['error']}", file=sys.stderr)
        raise typer.Exit(CorruptFile.exit_code)
