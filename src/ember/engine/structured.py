"""Constrained decoding: JSON Schema, JSON object, regex, choice lists and Lark/GBNF grammars, through llguidance.

    engine.generate(["Answer yes or no:"], SamplingParams(max_tokens=4, constraint=Constraint("choice", ["yes", "no"])))
    curl localhost:8000/v1/chat/completions -d '{"messages": [...], "response_format": {"type": "json_object"}}'

A `Constraint` (kind + value) travels on SamplingParams. `compile_constraint` turns it into a compiled
llguidance matcher once per request (bounded size, bounded fuel, and a wall-clock bound enforced by the
caller, see `compile_with_deadline`), before the request is queued: a bad or pathological grammar is an
InvalidRequest naming the problem and never reaches the step loop. Each sequence then owns a copy of the
matcher; every step `apply_masks` writes the allowed-token bitmask of the constrained rows into their logits
(rows without a constraint are untouched), and `advance` feeds the sampled token back. EOS tokens are in the
mask only where the grammar accepts, so a constrained output ends only when it is complete.
"""

import concurrent.futures
import json
from dataclasses import dataclass
from typing import Any

import torch

from ember.errors import InvalidRequest

KINDS = ("json_schema", "json_object", "regex", "choice", "grammar")
MAX_SPEC_CHARS = 64_000  # schema / regex / grammar text
MAX_SCHEMA_DEPTH = 32  # nesting of a JSON schema document
MAX_CHOICES = 1024
COMPILE_SECONDS = 0.5  # wall-clock bound on compiling one constraint (the 400 comes well within 1 s)
# Fuel and size limits (llguidance counts work, not time): a catastrophic regex or an exploding grammar
# fails with an error instead of running long, at compile time and at every mask computation.
_LIMITS = {"max_items_in_row": 2000, "initial_lexer_fuel": 1_000_000, "step_lexer_fuel": 200_000,
           "step_max_items": 50_000, "max_lexer_states": 50_000, "max_grammar_size": 200_000,
           "verbose_errors": False}
# JSON without free-form whitespace: a small model otherwise pads forever with newlines and spaces.
_JSON_OPTIONS = {"whitespace_flexible": False}


@dataclass(frozen=True)
class Constraint:
    """kind: one of KINDS. value: a JSON schema (dict) for json_schema, None for json_object, the pattern for
    regex, a list of strings for choice, Lark or GBNF text for grammar (a raw llguidance grammar for internal
    uses such as forced tool calls: kind "grammar" with a text starting with "%llguidance")."""

    kind: str
    value: Any = None
    param: str = "response_format"  # the request field that carried it, for error messages

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InvalidRequest(f"unknown constraint kind {self.kind!r}", param=self.param)

    def __hash__(self):
        return hash((self.kind, json.dumps(self.value, sort_keys=True)))


def _depth(x, d: int = 0) -> int:
    if d > MAX_SCHEMA_DEPTH:
        return d
    if isinstance(x, dict):
        return max([_depth(v, d + 1) for v in x.values()], default=d)
    if isinstance(x, list):
        return max([_depth(v, d + 1) for v in x], default=d)
    return d


def grammar_text(c: Constraint) -> str:
    """The llguidance grammar for a constraint; refuses oversized or too deeply nested specifications."""
    import llguidance

    def too_big(what):
        raise InvalidRequest(f"the {what} is too large (more than {MAX_SPEC_CHARS} characters)", param=c.param)

    if c.kind == "json_object":
        return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, overrides=_JSON_OPTIONS)
    if c.kind == "json_schema":
        schema = c.value
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError:
                raise InvalidRequest("the JSON schema is not valid JSON", param=c.param) from None
        if not isinstance(schema, (dict, bool)):
            raise InvalidRequest("the JSON schema must be an object", param=c.param)
        if len(json.dumps(schema)) > MAX_SPEC_CHARS:
            too_big("JSON schema")
        if _depth(schema) > MAX_SCHEMA_DEPTH:
            raise InvalidRequest(f"the JSON schema is nested more than {MAX_SCHEMA_DEPTH} levels deep", param=c.param)
        for pattern in _patterns(schema):
            check_regex(pattern, c.param)
        if schema is True or schema == {}:
            schema = {"type": "object"}  # OpenAI's json_schema without a schema means "a JSON object"
        try:
            return llguidance.LLMatcher.grammar_from_json_schema(closed_objects(schema), overrides=_JSON_OPTIONS)
        except (ValueError, TypeError) as e:
            raise InvalidRequest(f"invalid JSON schema: {e}", param=c.param) from None
    if c.kind == "regex":
        if not isinstance(c.value, str) or not c.value:
            raise InvalidRequest("the regex must be a non-empty string", param=c.param)
        if len(c.value) > MAX_SPEC_CHARS:
            too_big("regex")
        check_regex(c.value, c.param)
        return llguidance.LLMatcher.grammar_from_regex(c.value)
    if c.kind == "choice":
        choices = c.value
        if (not isinstance(choices, list) or not choices or len(choices) > MAX_CHOICES
                or not all(isinstance(x, str) and x for x in choices)):
            raise InvalidRequest(f"the choices must be a list of 1 to {MAX_CHOICES} non-empty strings", param=c.param)
        if sum(map(len, choices)) > MAX_SPEC_CHARS:
            too_big("choice list")
        return llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(x) for x in choices))
    # grammar: Lark (llguidance's dialect) or GBNF (llama.cpp's EBNF, recognised by its "::=")
    text = c.value
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest("the grammar must be a non-empty string", param=c.param)
    if len(text) > MAX_SPEC_CHARS:
        too_big("grammar")
    if "::=" in text:
        from llguidance.gbnf_to_lark import gbnf_to_lark

        try:
            text = gbnf_to_lark(text)
        except Exception as e:  # noqa: BLE001 - the converter raises plain exceptions on bad input
            raise InvalidRequest(f"invalid GBNF grammar: {e}", param=c.param) from None
    return llguidance.LLMatcher.grammar_from_lark(text)


MAX_REPEAT = 10_000  # product of nested counted repetitions ({m,n}) in a regex


def check_regex(pattern: str, param: str) -> None:
    """Refuses the classic catastrophic shapes: an unbounded repetition inside another ((a+)+, (a*b?)*) and
    nested counts whose product is huge ((x{1,1000}){1,1000}). llguidance itself would match these in linear
    time, but their masks get expensive and no real format needs them; a clear 400 is better. Patterns that
    Python's parser does not read (Rust-only syntax) are left to llguidance."""
    import re._parser as sre

    try:
        tree = sre.parse(pattern)
    except Exception:  # noqa: BLE001 - any parse failure: llguidance gives its own error
        return

    def walk(items, unbounded_above: bool, count: int) -> None:
        for op, av in items:
            if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
                lo, hi, sub = av
                unbounded = hi == sre.MAXREPEAT
                if unbounded and unbounded_above:
                    raise InvalidRequest("the regex nests an unbounded repetition inside another (like (a+)+), "
                                         "a catastrophic pattern Ember refuses", param=param)
                n = count * (max(lo, 1) if unbounded else max(hi, 1))
                if n > MAX_REPEAT:
                    raise InvalidRequest(f"the regex repeats more than {MAX_REPEAT} times in total through nested "
                                         "counted repetitions", param=param)
                walk(sub, unbounded_above or unbounded, n)
            elif op == sre.SUBPATTERN:
                walk(av[-1], unbounded_above, count)
            elif op == sre.BRANCH:
                for alt in av[1]:
                    walk(alt, unbounded_above, count)
            elif op in (sre.ASSERT, sre.ASSERT_NOT):
                walk(av[1], unbounded_above, count)

    walk(tree, False, 1)


def _patterns(schema):
    if isinstance(schema, dict):
        for k, v in schema.items():
            if k == "pattern" and isinstance(v, str):
                yield v
            else:
                yield from _patterns(v)
    elif isinstance(schema, list):
        for v in schema:
            yield from _patterns(v)


def closed_objects(schema):
    """A copy of the schema where an object that lists `properties` and says nothing about
    `additionalProperties` allows no others (OpenAI's strict mode, and what stops a small model from
    inventing keys until it runs out of tokens)."""
    if isinstance(schema, list):
        return [closed_objects(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed_objects(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out and "patternProperties" not in out:
        out["additionalProperties"] = False
    return out


class Structured:
    """One model's grammar compiler: the llguidance tokenizer (built once, ~1 s) and compiled matchers."""

    def __init__(self, hf_tokenizer, eos_ids: list[int], vocab_size: int):
        import llguidance
        import llguidance.hf

        self.vocab_size = vocab_size
        self.tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=max(vocab_size, len(hf_tokenizer)),
                                                      eos_token=list(eos_ids) or None)
        self.limits = llguidance.LLParserLimits(**_LIMITS)
        self.words = (self.tokenizer.vocab_size + 31) // 32
        self._bits = torch.arange(32, dtype=torch.int32)

    def compile(self, c: Constraint, grammar: str | None = None):
        """Constraint (and its grammar_text, when already made) -> a compiled llguidance matcher (each
        sequence gets a copy: `new_matcher`)."""
        import llguidance

        grammar = grammar or grammar_text(c)
        m = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0, limits=self.limits)
        if m.is_error():
            raise InvalidRequest(f"cannot compile the {_what(c)}: {_short(m.get_error())}", param=c.param)
        return m

    # ----- per step -----
    def apply_masks(self, logits: torch.Tensor, rows: list[int], matchers: list) -> None:
        """Sets logits[r, t] = -inf for every token t the matcher of row r does not allow (in place)."""
        mask = torch.full((len(rows), self.words), -1, dtype=torch.int32)
        for i, m in enumerate(matchers):  # what llguidance.torch.fill_next_token_bitmask does, minus its imports
            m.unsafe_compute_mask_ptr(mask[i].data_ptr(), self.words * 4)
        allowed = ((mask[:, :, None] >> self._bits) & 1).view(len(rows), -1).bool()
        V = logits.shape[1]
        if allowed.shape[1] < V:
            allowed = torch.cat([allowed, allowed.new_zeros(len(rows), V - allowed.shape[1])], dim=1)
        idx = torch.tensor(rows, dtype=torch.long)
        logits[idx] = logits[idx].masked_fill(~allowed[:, :V], float("-inf"))


def new_matcher(template):
    return template.deep_copy()


def advance(matcher, token: int) -> str | None:
    """Feeds the sampled token; returns "stop" once the grammar is complete (nothing more may follow),
    "error" when the matcher refused the token (cannot happen under its own mask), else None."""
    if not matcher.consume_token(token):
        return "error"
    if matcher.is_stopped():
        return "stop"
    return None


def accepting(matcher) -> bool:
    return matcher.is_accepting()


def _what(c: Constraint) -> str:
    return {"json_schema": "JSON schema", "json_object": "JSON object format", "regex": "regex",
            "choice": "choice list", "grammar": "grammar"}[c.kind]


def _short(err: str) -> str:
    err = " ".join(err.split())
    return err[:300] + ("..." if len(err) > 300 else "")


_pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="ember-grammar")


def compile_with_deadline(structured: Structured, c: Constraint, grammar: str,
                          seconds: float = COMPILE_SECONDS):
    """Compiles on a worker thread (llguidance releases the GIL while it builds), never on the step loop;
    a compile that takes longer than `seconds` is refused. Its thread finishes on its own, bounded by the
    fuel limits above."""
    fut = _pool.submit(structured.compile, c, grammar)
    try:
        return fut.result(timeout=seconds)
    except concurrent.futures.TimeoutError:
        raise InvalidRequest(f"the {_what(c)} is too complex: compiling it took longer than {seconds:g} s",
                             param=c.param) from None
