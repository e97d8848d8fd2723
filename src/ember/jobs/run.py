"""The child process of one job: `python -m ember.jobs.run JOB_ID` (started by jobs/worker.py).

    python -m ember.jobs.run job-0123abcd...    # what the worker runs, in the job folder, in a new session
    python -m ember.server.batch_runner batch_0123...   # batch jobs: the same protocol around the server app

Runs the job's kind in this process (which leads its own process group), stores the result with the job and
exits 0; a failure is written to `error.txt` (one line for the job's error) and exits non-zero. The worker
decides the job's state from the exit. A watchdog thread kills the whole group when the worker that started
it dies (`kill -9` of the server), so no training outlives its worker; the next worker resumes the job.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os.killpg(os.getpgrp(), signal.SIGKILL)


def main(job_id: str, runner=None) -> int:
    """Run the job; `runner(job, ctx) -> result` replaces the kind's own (server/batch_runner.py uses it)."""
    from ember.config import get_settings
    from ember.errors import EmberError
    from ember.jobs import kinds
    from ember.jobs.worker import job_folder
    from ember.store import jobs

    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    settings = get_settings()
    job = jobs.get(job_id, None, settings)
    folder = job_folder(settings, job_id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "error.txt").unlink(missing_ok=True)

    def event(msg: str) -> None:
        print(msg, flush=True)
        jobs.add_event(job_id, str(msg), settings=settings)

    ctx = kinds.Context(job, folder, settings, event, resume=job["attempts"] > 1)
    try:
        if ctx.resume:
            event(f"attempt {job['attempts']}: resuming from {ctx.run_dir}")
        result = (runner or kinds.run)(job, ctx)
        jobs.set_result(job_id, result, settings)
        return 0
    except EmberError as e:
        (folder / "error.txt").write_text(e.message)
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a bug: the traceback goes to the job's log, one line to the job
        traceback.print_exc()
        (folder / "error.txt").write_text(f"internal error ({type(e).__name__}: {e}); see `ember jobs logs "
                                          f"{job_id} --output`")
        return 1


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main(sys.argv[1]))
