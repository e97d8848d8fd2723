"""The `ember` command: one typer app; each verb group lives in its own module and registers itself here.

    ember --help

Every EmberError becomes one line on stderr and the exit code of its class (ember/errors.py); no traceback
reaches the user. Verb modules import heavy libraries (torch, transformers) inside their commands so that
`ember --help` stays fast.
"""

import importlib
import os
import sys

import click
import typer

from ember.errors import EmberError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(name="ember", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Ember: train, fine-tune, evaluate, manage and serve language models, offline.")

# Verb modules, each with `register(app)`; listed here so a newcomer sees every command group at a glance.
VERB_MODULES = ["models", "generate", "serve", "keys", "train", "finetune", "evaluate", "jobs"]


def _register_all() -> None:
    for name in VERB_MODULES:
        try:
            module = importlib.import_module(f"ember.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"ember.cli.{name}":
                continue  # that capability has not landed yet
            raise
        module.register(app)


_register_all()


def main(argv: list[str] | None = None) -> None:
    try:
        rv = app(args=argv, prog_name="ember", standalone_mode=False)
    except EmberError as e:
        print(f"error: {e.message}", file=sys.stderr)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except click.ClickException as e:
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
