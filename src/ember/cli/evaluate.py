"""`ember eval ...` and `ember models promote`: evaluate versions, compare them, report, and promote behind gates.

    ember eval smollm2-135m-instruct --task builtin:generate        # run + store (builtin: perplexity,
    ember eval smollm2-135m-instruct --task ./my-task.yaml --limit 20  #   generate, classify, tag)
    ember eval runs smollm2-135m-instruct                           # stored runs of a version
    ember eval compare my-model:1 my-model:2 --task builtin:generate  # side by side (runs what is missing)
    ember eval report my-model:2 --out ./report                      # report.html + history.png
    ember models promote my-model@production 2 --gate "bleu>=current" --gate "perplexity<=current*1.02"
"""

from pathlib import Path

import typer
from typer.core import TyperGroup

from ember.cli.models import app as models_app
from ember.cli.output import Col, console, print_json, table


class _EvalGroup(TyperGroup):
    """`ember eval REF --task ...` runs an evaluation: anything that is not a subcommand name goes to `run`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=_EvalGroup, no_args_is_help=True,
                  help="Evaluate model versions on tasks; results are stored per version. "
                       "`ember eval REF --task FILE.yaml` (or --task builtin:generate) runs one.")
JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")
TASK_HELP = ("A task YAML file, or builtin:perplexity | builtin:generate | builtin:classify | builtin:tag | "
             "builtin:choice.")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="eval")


def _progress(label: str):
    """A rich progress bar on stderr (stdout stays clean for --json); returns (callback, progress)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=True)
    tid = prog.add_task(label, total=None)

    def update(done: int, total: int) -> None:
        prog.update(tid, completed=done, total=total)

    return update, prog


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)


def _evaluate(ref: str, task_spec: str, limit: int | None, batch_size: int | None, store: bool = True) -> dict:
    from ember.evaluate import runner
    from ember.evaluate.tasks import load_task

    task = load_task(task_spec)
    if batch_size:
        task.batch_size = batch_size
    update, prog = _progress(f"{ref} on {task.name}")
    with prog:
        return runner.run(ref, task, limit=limit, store=store, on_progress=update)


@app.command("run")
def run(ref: str = typer.Argument(..., help="Model reference: NAME, NAME:VERSION or NAME@ALIAS."),
        task: str = typer.Option(..., "--task", "-t", help=TASK_HELP),
        limit: int = typer.Option(None, "--limit", min=1, help="Only the first N examples."),
        batch_size: int = typer.Option(None, "--batch-size", min=1, help="Prompts generated together."),
        no_store: bool = typer.Option(False, "--no-store", help="Print the result without storing it."),
        as_json: bool = JSON):
    """Evaluate one version on a task and store the result with the version."""
    r = _evaluate(ref, task, limit, batch_size, store=not no_store)
    if as_json:
        return print_json({k: v for k, v in r.items() if k != "outputs"})
    stored = f"stored as run {r['id']}" if "id" in r else "not stored"
    console.print(f"[bold]{r['ref']}[/bold] on {r['task']} ({r['settings']['examples']} examples, "
                  f"{r['settings']['seconds']}s; {stored})")
    table(None, [Col("metric", full=True), Col("value", full=True, justify="right")],
          [[k, _fmt(v)] for k, v in r["metrics"].items()])


@app.command("runs")
def runs(ref: str, task: str = typer.Option(None, "--task", help="Only runs of this task name."),
         as_json: bool = JSON):
    """Every stored evaluation run of one version, oldest first."""
    from ember.store import evals

    rows = evals.runs(ref, task)
    if as_json:
        return print_json(rows)
    table(None, [Col("id", full=True), Col("when", drop=3), Col("task", full=True), Col("examples", drop=2),
                 "metrics", Col("data digest", drop=1)],
          [[r["id"], r["created_at"][:19], r["task"], r["settings"].get("examples", ""),
            " ".join(f"{k}={_fmt(v)}" for k, v in r["metrics"].items()), r["data_digest"][:12]] for r in rows])


@app.command("show")
def show(run_id: int, outputs: bool = typer.Option(False, "--outputs", help="Include per-example outputs."),
         as_json: bool = JSON):
    """One stored run (with its per-example outputs on request)."""
    from ember.store import evals

    r = evals.get(run_id)
    if outputs:
        r["outputs"] = evals.outputs(r)
    if as_json:
        return print_json(r)
    console.print(f"run {r['id']}: [bold]{r['ref']}[/bold] on {r['task']} at {r['created_at']}")
    table(None, [Col("metric", full=True), Col("value", full=True, justify="right")],
          [[k, _fmt(v)] for k, v in r["metrics"].items()])
    if outputs:
        table("outputs", [Col("#", full=True), "output", "reference"],
              [[o.get("index"), o.get("prediction", o.get("output")), o.get("reference")] for o in r["outputs"]])


@app.command("compare")
def compare(ref_a: str, ref_b: str,
            task: str = typer.Option(None, "--task", "-t", help=TASK_HELP + " Without it: every stored task."),
            limit: int = typer.Option(None, "--limit", min=1, help="Only the first N examples (when running)."),
            run_missing: bool = typer.Option(True, "--run-missing/--stored-only",
                                             help="Evaluate a side that has no stored result on the task."),
            as_json: bool = JSON):
    """Side-by-side metrics of two versions with differences (B - A)."""
    from ember.errors import NotFound
    from ember.evaluate.report import compare_rows
    from ember.evaluate.tasks import load_task
    from ember.store import evals

    sides = []
    for ref in (ref_a, ref_b):
        if task is None:
            sides.append(evals.runs(ref))
            continue
        t = load_task(task)
        r = evals.latest(ref, t.name, task_digest=t.digest, data_digest=t.data_digest(limit))
        if r is None:
            if not run_missing:
                raise NotFound(f"{ref} has no stored result on {t.name} with these settings and data; "
                               f"run `ember eval {ref} --task {task}`")
            r = _evaluate(ref, task, limit, None)
        sides.append([r])
    rows = compare_rows(*sides)
    from ember.store import registry

    a_ref, b_ref = registry.resolve(ref_a).ref, registry.resolve(ref_b).ref
    if as_json:
        return print_json({"a": a_ref, "b": b_ref, "rows": rows})
    if not rows:
        console.print(f"no stored results to compare for {a_ref} and {b_ref}; run `ember eval REF --task ...`")
        return
    mark = {"a": f"{a_ref}", "b": f"{b_ref}", "=": "=", None: ""}
    table(f"{a_ref} (A) vs {b_ref} (B)", [Col("task", full=True), Col("metric", full=True), Col("A", full=True),
                                          Col("B", full=True), Col("B - A", drop=2), Col("change", drop=1),
                                          Col("better", drop=3)],
          [[r["task"], r["metric"], _fmt(r["a"]), _fmt(r["b"]), _fmt(r["diff"]),
            "" if r["relative"] is None else f"{r['relative']:+.1%}", mark[r["better"]]] for r in rows])


@app.command("report")
def report(ref: str, out: Path = typer.Option(Path("eval-report"), "--out", "-o", help="Output folder."),
           as_json: bool = JSON):
    """Write an HTML report with a PNG of the model's metric history across versions."""
    from ember.evaluate.report import write_report

    r = write_report(ref, out)
    if as_json:
        return print_json(r)
    console.print(f"wrote {r['html']} and {r['png']} ({r['runs']} runs of {r['ref']})")


@models_app.command("promote")
def promote(name_at_alias: str = typer.Argument(..., metavar="NAME@ALIAS"),
            version: str = typer.Argument(..., help="The candidate: a version number or reference."),
            gate: list[str] = typer.Option([], "--gate", "-g",
                                           help="METRIC OP VALUE, e.g. 'bleu>=current', 'perplexity<=current*1.02',"
                                                " 'generate.exact_match>=0.5'. Repeatable; all must pass."),
            as_json: bool = JSON):
    """Move an alias to a candidate only if its stored eval results pass every gate (recorded either way)."""
    from ember.errors import InvalidRequest
    from ember.evaluate.gates import promote as do_promote

    name, _, alias = name_at_alias.partition("@")
    if not name or not alias:
        raise InvalidRequest(f"expected NAME@ALIAS, got {name_at_alias!r}")
    d = do_promote(name, alias, version, gate)
    if as_json:
        print_json(d.to_dict())
    else:
        for g in d.gates:
            console.print(("[green]pass[/green] " if g.passed else "[red]FAIL[/red] ") + g.message, highlight=False)
        if d.moved:
            console.print(f"{d.alias} -> {d.candidate} (was {d.current or 'unset'})")
    if not d.moved:
        raise d.refusal()
