"""The `ember` command: one typer app; each verb group lives in its own module and registers itself here.

    ember --help

Every EmberError becomes one line on stderr and the exit code of its class (ember/errors.py); no traceback
reaches the user. A usage error (unknown option or command, missing argument) is click's: the usage line and
the message on stderr, exit 2. Verb modules import heavy libraries (torch, transformers) inside their
commands so that `ember --help` stays fast.
"""

import importlib
import os
import sys

import click
import typer

from ember.errors import EmberError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(name="ember", no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Ember: train, fine-tune, evaluate, manage and serve language models, offline.")

# typer >= 0.20 vendors click as `typer._click`; older typers raise click's own classes. Both are caught.
try:
    from typer._click import exceptions as _vendored
except ImportError:  # pragma: no cover - an older typer
    _vendored = click.exceptions
CLICK_ERRORS = (click.ClickException, _vendored.ClickException)
ABORTS = (click.exceptions.Abort, typer.Abort)


def _print_version(value: bool) -> None:
    if value:
        from ember import __version__

        print(f"ember {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print Ember's version and exit.")) -> None:
    pass

# Verb modules, each with `register(app)`; listed here so a newcomer sees every command group at a glance.
VERB_MODULES = ["models", "generate", "serve", "keys", "audit", "train", "finetune", "evaluate", "jobs",
               "served"]


def _register_all() -> None:
    for name in VERB_MODULES:
        importlib.import_module(f"ember.cli.{name}").register(app)


_register_all()


def main(argv: list[str] | None = None) -> None:
    try:
        rv = app(args=argv, prog_name="ember", standalone_mode=False)
    except EmberError as e:
        print(f"error: {e.message}", file=sys.stderr)
        sys.exit(e.exit_code)
    except ABORTS:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except CLICK_ERRORS as e:  # usage errors: click prints the usage line, the message and any "Did you mean"
        if e.format_message():  # empty after no_args_is_help: typer has already printed the help
            e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # a bug of ours: still one line, never a traceback, unless EMBER_DEBUG asks for it
        if os.environ.get("EMBER_DEBUG"):
            raise
        print(f"error: internal error ({type(e).__name__}: {e}); rerun with EMBER_DEBUG=1 for details",
              file=sys.stderr)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)
