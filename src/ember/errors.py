"""One exception hierarchy for all of Ember, mapped once to CLI exit codes and once to HTTP statuses.

    ember models show nosuchmodel     # -> "error: model 'nosuchmodel' not found", exit 3

The CLI (`ember.cli.main`) and the server (`ember.server.errors`) catch `EmberError` and use the class
attributes below; nothing else in Ember decides exit codes or statuses.
"""


class EmberError(Exception):
    """Base class. `exit_code` for the CLI, `status` + `type` for the OpenAI-shaped error JSON."""

    exit_code = 1
    status = 500
    type = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InvalidRequest(EmberError):
    """Bad input from the user: a malformed reference, an out-of-range value, a bad config key."""

    exit_code = 2
    status = 400
    type = "invalid_request_error"


class NotFound(EmberError):
    """A model, version, alias, key or file that does not exist."""

    exit_code = 3
    status = 404
    type = "not_found_error"


class CorruptFile(EmberError):
    """A blob whose bytes no longer match its digest, or a file that cannot be parsed."""

    exit_code = 4
    status = 500
    type = "corrupt_file_error"


class Unsupported(EmberError):
    """A file or model Ember refuses on purpose: pickled weights, unknown architectures, remote code."""

    exit_code = 5
    status = 400
    type = "unsupported_error"


class Conflict(EmberError):
    """The request conflicts with the current state: another process holds what we need (a lock, a name being
    imported), or a rule refused the change (a promotion whose gates fail). `details` are extra fields of the
    server's error JSON (the refused promotion's decision)."""

    exit_code = 6
    status = 409
    type = "conflict_error"

    def __init__(self, message: str, *, details: dict | None = None, **kw):
        super().__init__(message, **kw)
        self.details = details or {}


class Unauthorized(EmberError):
    exit_code = 7
    status = 401
    type = "authentication_error"


class Forbidden(EmberError):
    exit_code = 7
    status = 403
    type = "permission_error"


class Overloaded(EmberError):
    """The server's admission queue is full; the client should retry after `retry_after` seconds."""

    exit_code = 8
    status = 429
    type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: int = 1, **kw):
        super().__init__(message, **kw)
        self.retry_after = retry_after
