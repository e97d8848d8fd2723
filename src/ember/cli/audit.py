"""`ember audit`: the audit log (who changed aliases, keys and models, ran evals, failed to authenticate).

    ember audit                         # the newest 50 entries
    ember audit --action key. --json    # every key change, as JSON
    ember audit --actor key_0123abcd
"""

import json

import typer

from ember.cli.output import print_json, table


def register(root: typer.Typer) -> None:
    root.command("audit")(audit)


def audit(limit: int = typer.Option(50, "--limit", min=1, max=1000, help="How many entries (newest first)."),
          action: str = typer.Option(None, "--action", help="Only actions starting with this (key., alias.)."),
          actor: str = typer.Option(None, "--actor", help="Only this actor (a key id or cli:USER)."),
          as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")):
    """Show the append-only audit log."""
    from ember.store import audit as store_audit

    rows = store_audit.entries(limit=limit, action=action, actor=actor)
    if as_json:
        return print_json(rows)

    def short(v):
        return "" if v is None else json.dumps(v, default=str)[:80]

    table("Audit log", ["at", "actor", "action", "target", "before", "after"],
          [[r["at"][:19], r["actor"], r["action"], r["target"], short(r["before"]), short(r["after"])] for r in rows])
