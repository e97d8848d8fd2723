"""Evaluation task files: a YAML naming a JSONL data file, a prompt template, a reference field and metrics.

    ember eval smollm2-135m-instruct --task my-task.yaml
    ember eval smollm2-135m-instruct --task builtin:generate     # builtin: perplexity, generate, classify, tag,
                                                                 # choice

A task file (every key is checked; an unknown or malformed key is an InvalidRequest naming it):

    type: generate            # generate (default) | perplexity | classify | tag | multiple_choice
    data: examples.jsonl      # relative to this YAML file
    prompt: "Question: {question}\\nAnswer:"   # {field} placeholders over each JSONL record; {{ }} are braces
    chat: true                # send the prompt as a user message through the model's chat template
    system: "..."             # optional system message (chat only)
    reference: answer         # the field holding the reference (a string, or a list of references)
    metrics: [bleu, chrf, rouge, {name: exact_match, ignore_case: true}]
    max_tokens: 32            # also: temperature (default 0, greedy), stop, batch_size
    labels: [positive, negative]   # classify: the label set (default: every reference seen)
    tokens: tokens            # tag: the field with the word list; reference holds one BIO tag per word
    files: [a.txt, b.txt]     # perplexity: text files (or data + text_field), max_length: window tokens
    choices: choices          # multiple_choice: the field with the list of choices; `reference` holds the
    target_delimiter: " "     #   gold index; prompt is the context; metrics acc, acc_norm, acc_bytes

Templates are filled by plain substitution (no str.format, no Jinja): a task file cannot reach attributes or
run code. The task digest covers every setting except where the data lives; the data digest covers the data.
"""

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ember.errors import InvalidRequest, NotFound

BUILTIN_DIR = Path(__file__).parent / "builtin"
TYPES = ("generate", "perplexity", "classify", "tag", "multiple_choice")
METRICS_BY_TYPE = {
    "generate": ("bleu", "chrf", "rouge", "exact_match"),
    "perplexity": ("perplexity", "bits_per_byte", "word_perplexity"),
    "classify": ("accuracy", "macro_f1", "exact_match"),
    "tag": ("entity_f1", "token_accuracy"),
    "multiple_choice": ("acc", "acc_norm", "acc_bytes"),
}
KEYS = {"name", "description", "type", "data", "files", "text_field", "prompt", "system", "chat", "reference",
        "metrics", "max_tokens", "temperature", "stop", "batch_size", "labels", "tokens", "input", "max_length",
        "choices", "target_delimiter"}
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}|[{}]")


@dataclass
class Task:
    name: str
    type: str
    source: str  # the YAML path, or builtin:NAME
    data: Path | None = None
    files: list[Path] = field(default_factory=list)
    text_field: str = "text"
    prompt: str | None = None
    system: str | None = None
    chat: bool = False
    reference: str | None = None
    metrics: list[dict] = field(default_factory=list)  # [{"name": "exact_match", **options}]
    max_tokens: int = 32
    temperature: float = 0.0
    stop: list[str] = field(default_factory=list)
    batch_size: int = 16
    labels: list[str] | None = None
    tokens: str = "tokens"
    input: str | None = None  # template for encoder classifiers/taggers (default: prompt)
    max_length: int | None = None
    description: str = ""
    choices: str = "choices"  # multiple_choice: the field holding the choices
    target_delimiter: str = " "  # multiple_choice: between the context and each choice (lm-eval's default)

    def settings(self) -> dict:
        """Everything that changes the numbers, except where the data lives (that is the data digest)."""
        return {"type": self.type, "prompt": self.prompt, "system": self.system, "chat": self.chat,
                "reference": self.reference, "metrics": self.metrics, "max_tokens": self.max_tokens,
                "temperature": self.temperature, "stop": self.stop, "labels": self.labels, "tokens": self.tokens,
                "input": self.input, "text_field": self.text_field, "max_length": self.max_length,
                # only for this type, so the digests of the other types' tasks stay what they were
                **({"choices": self.choices, "target_delimiter": self.target_delimiter}
                   if self.type == "multiple_choice" else {})}

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()

    def data_digest(self, limit: int | None = None) -> str:
        h = hashlib.sha256()
        for p in ([self.data] if self.data else self.files):
            h.update(_hash_file(p).encode())
        if limit is not None:
            h.update(f"limit={limit}".encode())
        return h.hexdigest()


def _hash_file(path: Path) -> str:
    from ember.store.blobs import hash_file

    return hash_file(path)


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def resolve_spec(spec: str) -> Path:
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        path = BUILTIN_DIR / f"{name}.yaml"
        if name not in builtin_names():
            raise NotFound(f"no builtin task {name!r}; builtin tasks: {', '.join(builtin_names())}")
        return path
    path = Path(spec).expanduser()
    if not path.is_file():
        raise NotFound(f"task file {spec} not found (or use builtin:NAME: {', '.join(builtin_names())})")
    return path


def _bad(key: str, why: str, source: str):
    raise InvalidRequest(f"task {source}: key {key!r} {why}", param=key)


def load_task(spec: str | Path) -> Task:
    """Parse and check a task file (a path, or builtin:NAME)."""
    path = resolve_spec(str(spec))
    source = str(spec) if str(spec).startswith("builtin:") else str(path)
    try:
        raw = yaml.safe_load(path.read_text())  # safe_load: YAML tags cannot build Python objects
    except yaml.YAMLError as e:
        raise InvalidRequest(f"task {source} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise InvalidRequest(f"task {source} must be a YAML mapping of keys (data, prompt, reference, metrics...)")
    for k in raw:
        if k not in KEYS:
            _bad(str(k), f"is not a task key (known keys: {', '.join(sorted(KEYS))})", source)
    ttype = raw.get("type") or ("perplexity" if "files" in raw else "generate")
    if ttype not in TYPES:
        _bad("type", f"must be one of {', '.join(TYPES)}, not {ttype!r}", source)
    for key in ("choices", "target_delimiter"):
        if key in raw and ttype != "multiple_choice":
            _bad(key, "belongs to multiple_choice tasks", source)
    t = Task(name=str(raw.get("name") or path.stem), type=ttype, source=source,
             description=str(raw.get("description") or ""))
    if len(t.name) > 256 or not t.name.isprintable():  # checked before the run: eval_runs.task is 256 chars
        _bad("name", "must be at most 256 printable characters", source)
    base = path.parent

    def data_path(key, value) -> Path:
        if not isinstance(value, str) or not value:
            _bad(key, "must be a file path relative to the task file", source)
        p = (base / value).resolve()
        if not p.is_file():
            _bad(key, f"names {value}, which does not exist (looked at {p})", source)
        return p

    if "data" in raw:
        t.data = data_path("data", raw["data"])
    if "files" in raw:
        files = raw["files"] if isinstance(raw["files"], list) else [raw["files"]]
        t.files = [data_path("files", f) for f in files]
    if ttype == "perplexity":
        if not t.files and not t.data:
            _bad("files", "is required for a perplexity task (text files), or give data + text_field", source)
    elif not t.data:
        _bad("data", "is required: a JSONL file of examples, relative to the task file", source)

    for key, kind in (("prompt", str), ("system", str), ("reference", str), ("text_field", str), ("tokens", str),
                      ("input", str), ("choices", str), ("target_delimiter", str)):
        if key in raw and raw[key] is not None:
            if not isinstance(raw[key], kind):
                _bad(key, "must be a string", source)
            setattr(t, key, raw[key])
    if ttype != "perplexity":
        if not t.reference:
            _bad("reference", "is required: the name of the field holding the reference", source)
        if ttype != "tag" and not t.prompt:
            _bad("prompt", "is required: a template with {field} placeholders", source)
        for key in ("prompt", "input", "system"):
            if getattr(t, key):
                template_fields(getattr(t, key), key, source)
    if "chat" in raw:
        if not isinstance(raw["chat"], bool):
            _bad("chat", "must be true or false", source)
        t.chat = raw["chat"]
        if t.chat and ttype == "multiple_choice":
            _bad("chat", "is not available for multiple_choice tasks (choices are scored on the plain context)",
                 source)
    for key, lo in (("max_tokens", 1), ("batch_size", 1), ("max_length", 2)):
        if key in raw and raw[key] is not None:
            if not isinstance(raw[key], int) or isinstance(raw[key], bool) or raw[key] < lo:
                _bad(key, f"must be an integer >= {lo}", source)
            setattr(t, key, raw[key])
    if "temperature" in raw:
        if not isinstance(raw["temperature"], (int, float)) or isinstance(raw["temperature"], bool) \
                or raw["temperature"] < 0:
            _bad("temperature", "must be a number >= 0", source)
        t.temperature = float(raw["temperature"])
    if "stop" in raw:
        stop = raw["stop"] if isinstance(raw["stop"], list) else [raw["stop"]]
        if not all(isinstance(s, str) for s in stop):
            _bad("stop", "must be a string or a list of strings", source)
        t.stop = stop
    if "labels" in raw:
        if not isinstance(raw["labels"], list) or not raw["labels"]:
            _bad("labels", "must be a non-empty list", source)
        t.labels = [str(x) for x in raw["labels"]]
    t.metrics = _parse_metrics(raw.get("metrics"), ttype, source)
    return t


def _parse_metrics(value, ttype: str, source: str) -> list[dict]:
    allowed = METRICS_BY_TYPE[ttype]
    if value is None:
        return [{"name": m} for m in allowed if (m != "exact_match" or ttype == "generate") and m != "acc_bytes"]
    if not isinstance(value, list) or not value:
        _bad("metrics", f"must be a non-empty list of metric names ({', '.join(allowed)})", source)
    out = []
    for m in value:
        spec = {"name": m} if isinstance(m, str) else dict(m) if isinstance(m, dict) else None
        if not spec or not isinstance(spec.get("name"), str):
            _bad("metrics", f"entries are names or mappings with a name, not {m!r}", source)
        if spec["name"] not in allowed:
            _bad("metrics", f"has {spec['name']!r}, which a {ttype} task cannot compute ({', '.join(allowed)})",
                 source)
        out.append(spec)
    return out


def template_fields(template: str, key: str = "prompt", source: str = "") -> list[str]:
    names = []
    for m in _PLACEHOLDER.finditer(template):
        tok = m.group(0)
        if tok in ("{", "}"):
            _bad(key, f"has an unmatched {tok!r} (write {tok * 2} for a literal brace)", source)
        if m.group(1):
            names.append(m.group(1))
    return names


def render(template: str, record: dict) -> str:
    """Fill {field} placeholders from a record; lists become space-separated words."""
    def sub(m):
        tok = m.group(0)
        if tok in ("{{", "}}"):
            return tok[0]
        name = m.group(1)
        if name is None:
            raise InvalidRequest(f"unmatched {tok!r} in template")
        if name not in record:
            raise InvalidRequest(f"the template uses {{{name}}} but an example has no field {name!r} "
                                 f"(fields: {', '.join(record)})", param="prompt")
        v = record[name]
        return " ".join(map(str, v)) if isinstance(v, list) else str(v)

    return _PLACEHOLDER.sub(sub, template)


def load_examples(task: Task, limit: int | None = None) -> list[dict]:
    """The JSONL records of a task (or, for perplexity files, one record per file with `text_field`)."""
    if task.type == "perplexity" and task.files:
        rows = [{task.text_field: p.read_text(encoding="utf-8"), "file": p.name} for p in task.files]
        return rows[:limit] if limit else rows
    rows = []
    with open(task.data, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InvalidRequest(f"{task.data}:{n}: not valid JSON ({e.msg})", param="data") from None
            if not isinstance(rec, dict):
                raise InvalidRequest(f"{task.data}:{n}: each line must be a JSON object", param="data")
            needed = task.reference if task.type != "perplexity" else task.text_field
            if needed not in rec:
                key = "reference" if task.type != "perplexity" else "text_field"
                raise InvalidRequest(f"{task.data}:{n}: no field {needed!r} (named by key {key!r})", param=key)
            rows.append(rec)
            if limit and len(rows) >= limit:
                break
    if not rows:
        raise InvalidRequest(f"{task.data} has no examples", param="data")
    return rows
