"""Eval-gated promotion: move NAME@ALIAS to a candidate version only if its stored results pass every gate.

    ember models promote smollm2-135m-instruct@production 2 --gate "bleu>=current" \\
        --gate "perplexity<=current*1.02" --gate "generate.exact_match>=0.25"

A gate is `[TASK.]METRIC OP VALUE`, OP one of >= <= > < ==, VALUE a number, `current`, or `current` scaled or
shifted by a number (`current*1.02`, `current-0.5`, `0.98*current`). It is parsed with one regular expression,
never evaluated as code. `current` is the same metric of the version the alias points to now, taken from a
run on the same task and data (equal task and data digests). A gate passes when it holds on every such
task both versions have results for; with no comparable result it fails and says so. When the alias does
not exist yet, gates on `current` hold trivially (there is nothing to regress from) and say so.

Every decision, pass or fail, is appended to the alias history with the gate results; a refused promotion
leaves the alias where it was.
"""

import operator
import re
from dataclasses import asdict, dataclass, field

from ember.config import Settings
from ember.errors import Conflict, InvalidRequest, NotFound

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}
# Unambiguous (each digit can only be matched one way), so matching is linear; gates are also length-capped
# before the regex sees them (a 50,000-digit gate once froze the server for minutes).
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
MAX_GATE_CHARS = 200
_GATE = re.compile(
    rf"^\s*(?P<lhs>[A-Za-z0-9_.-]+)\s*(?P<op>>=|<=|==|>|<)\s*(?:"
    rf"(?P<num>{_NUM})"
    rf"|current(?:\s*(?P<op2>[*+-])\s*(?P<k>{_NUM}))?"
    rf"|(?P<k2>{_NUM})\s*\*\s*current)\s*$")


@dataclass
class Gate:
    text: str
    metric: str
    task: str | None
    op: str
    value: float | None = None  # an absolute threshold
    relative: str | None = None  # "*", "+" or "-": threshold = current <relative> k
    k: float = 1.0

    def threshold(self, current: float | None) -> float:
        if self.value is not None:
            return self.value
        return {"*": current * self.k, "+": current + self.k, "-": current - self.k}[self.relative]

    @property
    def uses_current(self) -> bool:
        return self.value is None


def parse_gate(text: str) -> Gate:
    if not isinstance(text, str) or len(text) > MAX_GATE_CHARS:
        raise InvalidRequest(f"a gate is at most {MAX_GATE_CHARS} characters", param="gate")
    m = _GATE.match(text or "")
    if not m:
        raise InvalidRequest(f"cannot parse gate {text!r}: use METRIC OP VALUE, e.g. 'bleu>=current', "
                             f"'perplexity<=current*1.02', 'generate.exact_match>=0.5'", param="gate")
    task, _, metric = m["lhs"].rpartition(".")
    g = Gate(text=text.strip(), metric=metric, task=task or None, op=m["op"])
    if m["num"] is not None:
        g.value = float(m["num"])
    elif m["k2"] is not None:
        g.relative, g.k = "*", float(m["k2"])
    elif m["op2"]:
        g.relative, g.k = m["op2"], float(m["k"])
    else:
        g.relative, g.k = "*", 1.0
    return g


@dataclass
class GateResult:
    gate: str
    passed: bool
    message: str
    checks: list[dict] = field(default_factory=list)  # one per task compared


def _newest_per_task(runs: list[dict], metric: str, task: str | None) -> dict[tuple, dict]:
    out = {}
    for r in runs:  # oldest first, so the newest run of each (task, digests) wins
        if metric in r["metrics"] and (task is None or r["task"] == task):
            out[(r["task"], r["task_digest"], r["data_digest"])] = r
    return out


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def check_gate(gate: Gate, candidate_runs: list[dict], current_runs: list[dict] | None,
               candidate_ref: str, current_ref: str | None) -> GateResult:
    where = f" on task {gate.task}" if gate.task else ""
    cand = _newest_per_task(candidate_runs, gate.metric, gate.task)
    if not cand:
        return GateResult(gate.text, False, f"{gate.text}: {candidate_ref} has no stored {gate.metric}{where}; "
                                            f"run `ember eval {candidate_ref} --task ...` first")
    if gate.uses_current and current_runs is None:
        return GateResult(gate.text, True, f"{gate.text}: no current version to compare with; passes")
    cur = _newest_per_task(current_runs or [], gate.metric, gate.task) if gate.uses_current else {}
    keys = [k for k in cand if k in cur] if gate.uses_current else list(cand)
    if not keys:
        return GateResult(gate.text, False, f"{gate.text}: {current_ref} has no {gate.metric} on the same task "
                                            f"and data as {candidate_ref}{where}; evaluate both on one task file")
    checks, failed = [], []
    for key in keys:
        value = float(cand[key]["metrics"][gate.metric])
        current = float(cur[key]["metrics"][gate.metric]) if gate.uses_current else None
        thr = gate.threshold(current)
        ok = _OPS[gate.op](value, thr)
        # How far the candidate is from the threshold, signed so that a failing gate reports what is missing.
        gap = abs(value - thr)
        checks.append({"task": key[0], "candidate": value, "current": current, "threshold": thr, "passed": ok,
                       "gap": gap, "candidate_run": cand[key]["id"], "current_run": cur[key]["id"] if cur else None})
        if not ok:
            rel = f" ({gap / abs(thr):.2%})" if thr else ""
            cur_txt = f", current {_fmt(current)}" if current is not None else ""
            failed.append(f"{key[0]}: {gate.metric} {_fmt(value)}, needed {gate.op} {_fmt(thr)}{cur_txt}; "
                          f"off by {_fmt(gap)}{rel}")
    if failed:
        return GateResult(gate.text, False, f"{gate.text} failed: " + "; ".join(failed), checks)
    return GateResult(gate.text, True, f"{gate.text}: " + "; ".join(
        f"{c['task']}: {_fmt(c['candidate'])} vs threshold {_fmt(c['threshold'])}" for c in checks), checks)


@dataclass
class Decision:
    alias: str
    candidate: str
    current: str | None
    moved: bool
    gates: list[GateResult]

    @property
    def failed(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed]

    def to_dict(self) -> dict:
        return {"alias": self.alias, "candidate": self.candidate, "current": self.current, "moved": self.moved,
                "gates": [asdict(g) for g in self.gates], "failed": [g.gate for g in self.failed]}

    def refusal(self) -> Conflict:
        """What `ember models promote` (exit 6) and the platform API (409, with this decision) raise when the
        alias did not move."""
        failed = "; ".join(g.message for g in self.failed)
        return Conflict(f"promotion refused, {self.alias} stays at {self.current}: {failed}", param="gates",
                        code="gate_failed", details={"decision": self.to_dict()})


def promote(name: str, alias: str, version: str | int, gates: list[str], *,
            settings: Settings | None = None) -> Decision:
    """Check every gate, then move the alias (all passed) or record the refusal. Returns the decision."""
    from ember.store import evals, registry

    parsed = [parse_gate(g) for g in gates]  # all parsed before anything is read or written
    registry.check_name(alias, "alias")
    target = f"{name}:{version}" if isinstance(version, int) or str(version).isdigit() else str(version)
    cand = registry.resolve(target, settings)
    if cand.name != name:
        raise InvalidRequest(f"{cand.ref} is not a version of {name}")
    try:
        cur = registry.resolve(f"{name}@{alias}", settings)
    except NotFound:
        cur = None
    cand_runs = evals.runs(cand.ref, settings=settings)
    cur_runs = evals.runs(cur.ref, settings=settings) if cur else None
    results = [check_gate(g, cand_runs, cur_runs, cand.ref, cur.ref if cur else None) for g in parsed]
    moved = all(r.passed for r in results)
    decision = Decision(f"{name}@{alias}", cand.ref, cur.ref if cur else None, moved, results)
    detail = {"candidate": cand.ref, "current": decision.current,
              "gates": [{"gate": r.gate, "passed": r.passed, "message": r.message} for r in results]}
    if moved:
        registry.set_alias(name, alias, cand.number, action="promote", detail=detail, settings=settings)
    else:
        detail["failed"] = [r.gate for r in results if not r.passed]
        registry.record_alias_event(name, alias, from_number=cur.number if cur else None, to_number=cand.number,
                                    action="promote_refused", detail=detail, settings=settings)
    return decision
