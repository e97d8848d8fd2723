"""`ember jobs list|show|logs|cancel` and `ember worker`: the job queue from the command line.

    ember jobs list --state running
    ember jobs show ftjob-0123...
    ember jobs logs ftjob-0123... --follow          # events as they come: step, loss, eval metrics, messages
    ember jobs logs ftjob-0123... --output          # the child process's own output (stdout + stderr)
    ember jobs cancel ftjob-0123...
    ember worker --slots 2                          # run queued jobs here (no server needed)

These read and write the registry database directly, so they work with or without a running server; the
jobs themselves come from the HTTP API (/v1/fine_tuning/jobs, /v1/batches, /api/jobs).
"""

import time
from datetime import UTC, datetime

import typer

from ember.cli.output import console, print_json

app = typer.Typer(no_args_is_help=True, help="Jobs (fine-tuning, training, evaluation, batches): list, "
                                             "inspect, follow, cancel.")
JSON = typer.Option(False, "--json", help="Print JSON.")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="jobs")
    root.command("worker")(worker)


def _when(ts) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


@app.command("list")
def list_jobs(state: str = typer.Option(None, "--state", help="queued, running, succeeded, failed, cancelled."),
              kind: str = typer.Option(None, "--kind"), limit: int = typer.Option(50, "--limit"),
              as_json: bool = JSON):
    """Newest jobs first."""
    from rich.table import Table

    from ember.store import jobs

    rows = jobs.list_jobs(None, (kind,) if kind else None, state, limit)
    if as_json:
        return print_json(rows)
    table = Table("id", "kind", "state", "created", "result / error")
    for j in rows:
        res = j["error"] or j["result"].get("fine_tuned_model") or j["result"].get("model") or \
            j["result"].get("output_file_id") or ""
        table.add_row(j["id"], j["kind"], j["state"], _when(j["created_at"]), str(res)[:80])
    console.print(table)


@app.command("show")
def show(job_id: str, as_json: bool = JSON):
    """One job: state, spec, result, error, attempts, worker."""
    from ember.store import jobs

    j = jobs.get(job_id)
    if as_json:
        return print_json(j)
    for key in ("id", "kind", "state", "owner", "attempts", "worker", "pid", "error"):
        if j[key] is not None:
            console.print(f"[bold]{key}[/]: {j[key]}", highlight=False)
    for key in ("created_at", "started_at", "finished_at"):
        console.print(f"[bold]{key}[/]: {_when(j[key])}")
    print_json({"spec": j["spec"], "result": j["result"]})


@app.command("logs")
def logs(job_id: str, follow: bool = typer.Option(False, "--follow", "-f", help="Wait for new events until "
                                                                               "the job ends."),
         output: bool = typer.Option(False, "--output", help="The job process's stdout/stderr instead."),
         as_json: bool = JSON):
    """The job's events in order (messages, metrics, checkpoints, state changes)."""
    from ember.config import get_settings
    from ember.jobs.worker import job_folder
    from ember.store import jobs

    jobs.get(job_id)
    if output:
        path = job_folder(get_settings(), job_id) / "log.txt"
        print(path.read_text(errors="replace") if path.exists() else "", end="")
        return
    after = 0
    while True:
        for e in jobs.events(job_id, after):
            after = e["id"]
            if as_json:
                print_json(e)
            else:
                console.print(f"{_when(e['created_at'])} {e['type']:<10} {e['message']}", markup=False,
                              highlight=False)
        if not follow or jobs.get(job_id)["state"] in jobs.TERMINAL:
            break
        time.sleep(1)


@app.command("cancel")
def cancel(job_id: str, wait: float = typer.Option(15.0, "--wait", help="Seconds to wait for a running "
                                                                        "job's worker to stop it."),
           as_json: bool = JSON):
    """Cancel a job: a queued one at once, a running one as soon as its worker sees the request."""
    from ember.jobs import queue

    j = queue.cancel(job_id, wait=wait)
    if as_json:
        return print_json(j)
    console.print(f"{j['id']}: {j['state']}" + ("" if j["state"] == "cancelled" else " (cancel requested)"))


def worker(slots: int = typer.Option(1, "--slots", min=1, help="Jobs run at once.")):
    """Run queued jobs (each in its own process group) until Ctrl-C / SIGTERM."""
    from ember.jobs.worker import run_worker
    from ember.server.app import configure_logging

    configure_logging()
    run_worker(slots)
