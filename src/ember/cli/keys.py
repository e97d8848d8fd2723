"""`ember keys ...`: API keys for `ember serve`. Once any key exists, the server requires one.

    ember keys create --name my-app --scopes inference,admin     # prints the secret once
    ember keys list [--json]
    ember keys revoke key_0123abcd
"""

import typer

from ember.cli.output import Col, console, print_json, table

app = typer.Typer(no_args_is_help=True, help="Manage API keys for `ember serve`.")
JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="keys")


@app.command()
def create(name: str = typer.Option(..., "--name", help="A label for the key (who or what uses it)."),
           scopes: str = typer.Option("inference", "--scopes", help="Comma-separated: inference, admin."),
           as_json: bool = JSON):
    """Create a key; its secret is shown once and only its hash is stored."""
    from ember.store import keys

    info, secret = keys.create(name, scopes)
    if as_json:
        return print_json({**info.to_dict(), "key": secret})
    console.print(f"created [bold]{info.id}[/bold] ({info.name}, scopes: {','.join(info.scopes)})")
    console.print("secret (shown only now; store it safely):")
    print(secret)  # plain print: no wrapping or markup around the secret


@app.command("list")
def list_(as_json: bool = JSON):
    """List keys (never their secrets)."""
    from ember.store import keys

    rows = keys.list_keys()
    if as_json:
        return print_json([k.to_dict() for k in rows])
    table("API keys", [Col("id", full=True), Col("name", full=True), Col("scopes", drop=2), "status",
                       Col("created", drop=4), Col("last used", drop=3)],
          [[k.id, k.name, ",".join(k.scopes), "active" if k.active else "revoked", k.created_at.isoformat()[:19],
            k.last_used_at.isoformat()[:19] if k.last_used_at else ""] for k in rows])


@app.command()
def revoke(key_id: str = typer.Argument(..., help="The key id from `ember keys list`."), as_json: bool = JSON):
    """Revoke a key; servers stop accepting it within a few seconds."""
    from ember.store import keys

    info = keys.revoke(key_id)
    if as_json:
        return print_json(info.to_dict())
    console.print(f"revoked [bold]{info.id}[/bold] ({info.name})")
