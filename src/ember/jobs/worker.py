"""The job worker: claims queued jobs and runs each as a child process in its own process group.

    ember worker --slots 2            # alone (any machine sharing the database)
    ember serve                       # starts one in the server process (--workers N, --no-workers)

Each job runs as `python -m ember.jobs.run JOB_ID` (batches: `ember.server.batch_runner`) with
`start_new_session=True`: the child leads a new process group, so cancelling kills the whole tree
(torchrun and its ranks included) with one `killpg`.
The worker renews a heartbeat for its jobs every second, turns the run folder's `metrics.jsonl` lines and
new checkpoints into events as they appear, and records the outcome when the child exits.

Nothing stays `running` after its worker is gone: every worker, when it starts and every few seconds, looks
for running jobs whose worker is dead (a dead pid on this host, or no heartbeat for STALE_S from another
host). Such a job's leftover process group is killed, and the job is queued again to resume from its last
checkpoint (training, fine-tuning, batches; at most MAX_ATTEMPTS times) or failed with the reason. A child
also kills its own group when its worker dies (jobs/run.py), so a `kill -9` of the server leaves no orphan.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ember.config import Settings, get_settings
from ember.jobs import events as job_events
from ember.jobs.kinds import CHILD_MODULE, RESUMABLE
from ember.store import jobs

log = logging.getLogger("ember.jobs")
HEARTBEAT_S = 1.0
RECOVER_S = 5.0
STALE_S = 30.0           # no heartbeat for this long (from another host): the worker is gone
MAX_ATTEMPTS = 3
KILL_GRACE_S = 3.0       # SIGTERM, then SIGKILL the group after this long


def job_folder(settings: Settings, job_id: str) -> Path:
    return settings.home / "jobs" / job_id


def _host() -> str:
    return socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _is_job_child(pid: int, job_id: str) -> bool:
    """Whether `pid` is still the child of this job (not an unrelated process that reused the pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return False
    return b"ember." in cmd and job_id.encode() in cmd.split(b"\0")


def kill_group(pgid: int | None, sig: int = signal.SIGKILL) -> None:
    if not pgid:
        return
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class Active:
    job: dict
    proc: object                      # subprocess.Popen, or batch.InServer
    folder: Path
    tail: job_events.Tail
    cancel_at: float | None = None
    started: float = field(default_factory=time.monotonic)


class Worker:
    def __init__(self, settings: Settings | None = None, slots: int = 1, *, pool=None,
                 in_process: dict | None = None):
        self.settings = settings or get_settings()
        self.slots = max(1, slots)
        # Inside `ember serve`: its model pool (fine-tuned models are loaded before success is reported) and
        # kind -> runner(job, folder) for jobs run in the server process itself (batches, on its engines).
        self.pool, self.in_process = pool, in_process or {}
        self.id = f"{_host()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.active: dict[str, Active] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_recover = self._last_beat = 0.0

    # ----- lifecycle -----
    def start(self) -> Worker:
        self._thread = threading.Thread(target=self.run, name="ember-jobs", daemon=True)
        self._thread.start()
        return self

    def run(self) -> None:
        log.info("job worker %s started (%d slot(s))", self.id, self.slots)
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("job worker tick failed")
            self._stop.wait(0.5 if self.active else 1.0)  # idle: one claim query a second
        self._shutdown()

    def stop(self, wait: bool = True) -> None:
        self._stop.set()
        if wait and self._thread is not None:
            self._thread.join(timeout=KILL_GRACE_S + 10)

    def _shutdown(self) -> None:
        """Stopping with the server: end the children; resumable jobs go back to the queue."""
        for a in list(self.active.values()):
            self._signal(a, signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE_S
        while time.monotonic() < deadline and any(a.proc.poll() is None for a in self.active.values()):
            time.sleep(0.1)
        for job_id, a in list(self.active.items()):
            self._signal(a, signal.SIGKILL)
            a.tail.flush()
            if a.job["kind"] in RESUMABLE:
                jobs.requeue(job_id, f"worker {self.id} stopped; the job will resume", self.id, self.settings)
            else:
                jobs.finish(job_id, "failed", error=f"worker {self.id} stopped before the job finished",
                            worker=self.id, settings=self.settings)
        self.active.clear()

    # ----- one pass -----
    def tick(self) -> None:
        now = time.monotonic()
        if now - self._last_recover >= RECOVER_S:
            self._last_recover = now
            self.recover()
        while len(self.active) < self.slots and not self._stop.is_set():
            job = jobs.claim(self.id, settings=self.settings)
            if job is None:
                break
            self._launch(job)
        if self.active and now - self._last_beat >= HEARTBEAT_S:
            self._last_beat = now
            mine = {j["id"]: j for j in jobs.heartbeat(self.id, self.settings)}
            for job_id, a in list(self.active.items()):
                j = mine.get(job_id)
                if (j is None or j["cancel_requested"]) and a.cancel_at is None:
                    a.cancel_at = time.monotonic()
                    self._signal(a, signal.SIGTERM)
        for job_id, a in list(self.active.items()):
            a.tail.poll()
            if a.cancel_at is not None and time.monotonic() - a.cancel_at > KILL_GRACE_S:
                self._signal(a, signal.SIGKILL)
            rc = a.proc.poll()
            if rc is not None:
                self._finished(job_id, a, rc)

    def _launch(self, job: dict) -> None:
        folder = job_folder(self.settings, job["id"])
        folder.mkdir(parents=True, exist_ok=True)
        tail = job_events.Tail(job["id"], folder / "run", self.settings)
        if job["kind"] in self.in_process:
            proc = self.in_process[job["kind"]](job, folder)
        else:
            env = {**os.environ, "EMBER_HOME": str(self.settings.home),
                   "EMBER_DATABASE_URL": self.settings.database_url, "EMBER_JOB_WORKER": self.id}
            if self.settings.blob_url:  # the child stores its model where the server reads blobs
                env["EMBER_BLOB_URL"] = self.settings.blob_url
            with open(folder / "log.txt", "ab") as logf:
                module = CHILD_MODULE.get(job["kind"], "ember.jobs.run")
                proc = subprocess.Popen([sys.executable, "-m", module, job["id"]], cwd=folder, env=env,
                                        stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                        start_new_session=True)  # its own process group: killpg ends the tree
            jobs.set_pid(job["id"], proc.pid, self.settings)
        self.active[job["id"]] = Active(job, proc, folder, tail)
        log.info("job %s (%s) started, attempt %d", job["id"], job["kind"], job["attempts"])

    def _signal(self, a: Active, sig: int) -> None:
        if a.proc.pid is None:
            a.proc.kill()  # an in-server batch: cancel its task
        else:
            kill_group(a.proc.pid, sig)

    def _finished(self, job_id: str, a: Active, rc: int) -> None:
        del self.active[job_id]
        if a.proc.pid is not None:
            kill_group(a.proc.pid)  # whatever the child left behind in its group
        a.tail.flush()
        current = jobs.get(job_id, None, self.settings)
        if a.cancel_at is not None or current["cancel_requested"]:
            jobs.finish(job_id, "cancelled", worker=self.id, settings=self.settings)
        elif rc == 0:
            self._serve_result(current)
            jobs.finish(job_id, "succeeded", worker=self.id, settings=self.settings)
        else:
            jobs.finish(job_id, "failed", error=self._error(a, rc), worker=self.id, settings=self.settings)
        log.info("job %s ended (exit %s)", job_id, rc)

    def _serve_result(self, job: dict) -> None:
        """Inside a server, load a fine-tuned model before the job reports success: it answers at once."""
        ref = (job.get("result") or {}).get("fine_tuned_model")
        pool = self.pool
        if not ref or pool is None or job["spec"].get("method_type", "supervised") != "supervised":
            return
        try:
            pool.ensure(ref)
        except Exception as e:  # noqa: BLE001 - the model is registered; serving it is a bonus
            jobs.add_event(job["id"], f"could not load {ref} on this server: {e}", level="warning",
                           settings=self.settings)

    def _error(self, a: Active, rc: int) -> str:
        err = a.folder / "error.txt"
        if err.exists():
            return err.read_text(errors="replace").strip()[:4000]
        if getattr(a.proc, "error", None):
            return a.proc.error
        tail = ""
        logf = a.folder / "log.txt"
        if logf.exists():
            tail = logf.read_text(errors="replace").strip().splitlines()[-1:]
            tail = f": {tail[0][:500]}" if tail else ""
        how = f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}"
        return f"the job's process ended with {how}{tail}"

    # ----- lost workers -----
    def recover(self) -> None:
        """Resume (or fail) running jobs whose worker is gone; kill what they left on this host."""
        now = time.time()
        for job in jobs.running(self.settings):
            owner = job["worker"] or ""
            if owner == self.id:
                continue
            w_host, _, rest = owner.partition(":")
            w_pid = int(rest.split(":")[0]) if rest.split(":")[0].isdigit() else 0
            beat = job["heartbeat_at"] or 0
            if w_host == _host():
                gone = not _pid_alive(w_pid) or now - beat > STALE_S * 4
            else:
                gone = now - beat > STALE_S
            if not gone:
                continue
            if w_host == _host() and job["pid"] and _is_job_child(job["pid"], job["id"]):
                kill_group(job["pid"])
            reason = f"worker {owner} is gone (server restart or killed worker)"
            if job["cancel_requested"]:
                jobs.finish(job["id"], "cancelled", worker=owner, settings=self.settings)
            elif job["kind"] in RESUMABLE and job["attempts"] < MAX_ATTEMPTS:
                if jobs.requeue(job["id"], f"{reason}: resuming from the last checkpoint", owner, self.settings):
                    log.warning("job %s: %s; queued again to resume", job["id"], reason)
            else:
                why = "it cannot resume" if job["kind"] not in RESUMABLE else f"{job['attempts']} attempts made"
                jobs.finish(job["id"], "failed", error=f"{reason}; {why}", worker=owner, settings=self.settings)
                log.warning("job %s failed: %s", job["id"], reason)


def run_worker(slots: int = 1, settings: Settings | None = None) -> None:
    """`ember worker`: run until SIGTERM/SIGINT."""
    w = Worker(settings, slots)
    signal.signal(signal.SIGTERM, lambda *_: w._stop.set())
    try:
        w.run()
    except KeyboardInterrupt:
        w._stop.set()
        w._shutdown()
