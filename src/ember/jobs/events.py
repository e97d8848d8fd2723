"""Job events from a run folder: each new line of `metrics.jsonl` and each new checkpoint, as it appears.

    ember jobs logs JOB_ID            # prints these events (and the messages the job sent)

The training loop already writes `run/metrics.jsonl` (one record per step, plus validation records) and
`run/checkpoints/step-N/`; the worker tails both, so every task that uses the loop (pretraining, every
fine-tune) reports step, loss and eval metrics without knowing about jobs. After a resume the loop rewrites
the metrics file from its checkpoint; records at or before the last one already reported are skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

from ember.store import jobs


def _key(rec: dict) -> tuple[int, int]:
    return int(rec.get("step", 0)), 1 if "val_loss" in rec else 0


def metrics_event(rec: dict) -> dict:
    step = int(rec.get("step", 0))
    if "val_loss" in rec:
        data = {"step": step, "valid_loss": rec["val_loss"], **rec}
        msg = f"step {step}: validation loss={rec['val_loss']:.4f}"
    else:
        data = {"step": step, "train_loss": rec.get("loss"), **rec}
        msg = f"step {step}: training loss={rec.get('loss', float('nan')):.4f}"
    return {"type": "metrics", "message": msg, "data": data}


class Tail:
    def __init__(self, job_id: str, run_dir: Path, settings):
        self.job_id, self.run_dir, self.settings = job_id, run_dir, settings
        self.offset = 0
        seen = jobs.events(job_id, settings=settings, type="metrics")
        self.last = max((_key(e["data"]) for e in seen), default=(0, -1))
        self.checkpoints = {e["data"].get("step") for e in jobs.events(job_id, settings=settings, type="checkpoint")}

    def poll(self) -> None:
        new = self._metrics() + self._checkpoints()
        jobs.add_events(self.job_id, new, self.settings)

    flush = poll

    def _metrics(self) -> list[dict]:
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return []
        size = path.stat().st_size
        if size < self.offset:  # rewritten from a checkpoint after a resume
            self.offset = 0
        if size == self.offset:
            return []
        with open(path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read(size - self.offset)
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        out = []
        for line in complete.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if not isinstance(rec, dict) or _key(rec) <= self.last:
                continue
            self.last = _key(rec)
            out.append(metrics_event(rec))
        return out

    def _checkpoints(self) -> list[dict]:
        root = self.run_dir / "checkpoints"
        if not root.is_dir():
            return []
        out = []
        for d in sorted(root.iterdir()):
            if not d.name.startswith("step-") or not d.name[5:].isdigit() or not (d / "state.json").exists():
                continue
            step = int(d.name[5:])
            if step in self.checkpoints:
                continue
            self.checkpoints.add(step)
            out.append({"type": "checkpoint", "message": f"checkpoint at step {step}",
                        "data": {"step": step, "path": str(d)}})
        return out
