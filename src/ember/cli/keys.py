"""`ember keys ...`: API keys for `ember serve`, with their limits. Once any key exists, the server requires one.

    ember keys create --name my-app --scopes inference,admin     # prints the secret once
    ember keys create --name team-a --rpm 60 --tpm 20000 --max-parallel 4 --budget 1000000 \\
        --budget-period month --expires 30d --models smollm2-135m-instruct
    ember keys update key_0123abcd --rpm 120 --models ''         # 0 or '' clears a limit
    ember keys show key_0123abcd [--json]                        # limits and this month's usage
    ember keys list [--json]
    ember keys revoke key_0123abcd
"""

import typer

from ember.cli.output import Col, console, print_json, table

app = typer.Typer(no_args_is_help=True, help="Manage API keys for `ember serve`.")
JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")
RPM = typer.Option(None, "--rpm", min=0, help="Requests per minute (0: unlimited).")
TPM = typer.Option(None, "--tpm", min=0, help="Prompt + completion tokens per minute (0: unlimited).")
PARALLEL = typer.Option(None, "--max-parallel", min=0, help="Requests in flight at once (0: unlimited).")
BUDGET = typer.Option(None, "--budget", min=0, help="Tokens per budget period (0: unlimited).")
PERIOD = typer.Option(None, "--budget-period", help="day, month (default) or total.")
EXPIRES = typer.Option(None, "--expires", help="A date (2026-12-31), an ISO time, or 30d/12h/90m from now; "
                       "'' for never.")
MODELS = typer.Option(None, "--models", help="Comma-separated models the key may use ('' for all).")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="keys")


def _limits(rpm, tpm, max_parallel, budget, budget_period, expires, models) -> dict:
    return dict(rpm=rpm, tpm=tpm, max_parallel=max_parallel, budget_tokens=budget, budget_period=budget_period,
                expires_at=expires, models=models)


def _limit_text(k) -> str:
    parts = [f"{name}={v}" for name, v in (("rpm", k.rpm), ("tpm", k.tpm), ("parallel", k.max_parallel),
                                            ("budget", k.budget_tokens)) if v]
    if k.budget_tokens:
        parts[-1] += f"/{k.budget_period or 'month'}"
    if k.expires_at:
        parts.append(f"expires {k.expires_at.isoformat()[:19]}")
    if k.models:
        parts.append("models " + ",".join(k.models))
    return " ".join(parts)


@app.command()
def create(name: str = typer.Option(..., "--name", help="A label for the key (who or what uses it)."),
           scopes: str = typer.Option("inference", "--scopes", help="Comma-separated: inference, admin."),
           rpm: int = RPM, tpm: int = TPM, max_parallel: int = PARALLEL, budget: int = BUDGET,
           budget_period: str = PERIOD, expires: str = EXPIRES, models: str = MODELS, as_json: bool = JSON):
    """Create a key; its secret is shown once and only its hash is stored."""
    from ember.store import keys

    info, secret = keys.create(name, scopes, **_limits(rpm, tpm, max_parallel, budget, budget_period, expires,
                                                       models))
    if as_json:
        return print_json({**info.to_dict(), "key": secret})
    limits = _limit_text(info)
    console.print(f"created [bold]{info.id}[/bold] ({info.name}, scopes: {','.join(info.scopes)}"
                  f"{', ' + limits if limits else ''})")
    console.print("secret (shown only now; store it safely):")
    print(secret)  # plain print: no wrapping or markup around the secret


@app.command()
def update(key_id: str = typer.Argument(..., help="The key id from `ember keys list`."),
           scopes: str = typer.Option(None, "--scopes", help="Comma-separated: inference, admin."),
           rpm: int = RPM, tpm: int = TPM, max_parallel: int = PARALLEL, budget: int = BUDGET,
           budget_period: str = PERIOD, expires: str = EXPIRES, models: str = MODELS, as_json: bool = JSON):
    """Change a key's scopes or limits; running servers apply them within a few seconds."""
    from ember.store import keys

    info = keys.update(key_id, scopes=scopes, **_limits(rpm, tpm, max_parallel, budget, budget_period, expires,
                                                        models))
    if as_json:
        return print_json(info.to_dict())
    console.print(f"updated [bold]{info.id}[/bold] ({info.name}): {_limit_text(info) or 'no limits'}")


@app.command()
def show(key_id: str = typer.Argument(..., help="The key id from `ember keys list`."), as_json: bool = JSON):
    """A key's scopes, limits and usage in its current budget period."""
    from ember.store import keys, usage

    info = keys.get(key_id)
    used = usage.tokens_since(info.id, usage.period_start(info.budget_period))
    if as_json:
        return print_json({**info.to_dict(), "period_tokens": used})
    console.print(f"[bold]{info.id}[/bold] {info.name} ({'active' if info.active else 'revoked'}), scopes "
                  f"{','.join(info.scopes)}")
    console.print(f"limits: {_limit_text(info) or 'none'}")
    console.print(f"tokens this {info.budget_period or 'month'}: {used}")


@app.command("list")
def list_(as_json: bool = JSON):
    """List keys (never their secrets)."""
    from ember.store import keys

    rows = keys.list_keys()
    if as_json:
        return print_json([k.to_dict() for k in rows])
    table("API keys", [Col("id", full=True), Col("name", full=True), Col("scopes", drop=2), "status",
                       Col("limits", drop=5), Col("created", drop=4), Col("last used", drop=3)],
          [[k.id, k.name, ",".join(k.scopes), "active" if k.active else "revoked", _limit_text(k),
            k.created_at.isoformat()[:19], k.last_used_at.isoformat()[:19] if k.last_used_at else ""] for k in rows])


@app.command()
def revoke(key_id: str = typer.Argument(..., help="The key id from `ember keys list`."), as_json: bool = JSON):
    """Revoke a key; servers stop accepting it within a few seconds."""
    from ember.store import keys

    info = keys.revoke(key_id)
    if as_json:
        return print_json(info.to_dict())
    console.print(f"revoked [bold]{info.id}[/bold] ({info.name})")
