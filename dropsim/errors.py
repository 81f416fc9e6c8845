"""The domain error tree, raised below the API layer and mapped to HTTP problems once in app.py.

DropsimError
├── ConfigurationError        bad settings or an unreachable backend (CLI: one line, exit 2)
│   └── BackendUnavailable
└── DomainError               has an HTTP status and a stable `code`
    ├── InvalidRequest        400 invalid_request
    ├── AuthenticationFailed  401 authentication_failed
    ├── Forbidden             403 forbidden
    ├── NotFound              404 not_found
    ├── Conflict              409 conflict
    └── Unprocessable         422 unprocessable
"""

from __future__ import annotations


class DropsimError(Exception):
    """Base of every error dropsim raises on purpose."""


class ConfigurationError(DropsimError):
    """Settings are invalid or a backend cannot be used; the message is one line for a person."""


class BackendUnavailable(ConfigurationError):
    """A backend URL is well-formed but the server behind it does not answer."""


class DomainError(DropsimError):
    """A use case refused a request; carries the HTTP status and a stable machine-readable code."""

    status = 400
    code = "bad_request"
    title = "Bad request"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class InvalidRequest(DomainError):
    status, code, title = 400, "invalid_request", "Invalid request"


class AuthenticationFailed(DomainError):
    status, code, title = 401, "authentication_failed", "Authentication failed"


class Forbidden(DomainError):
    status, code, title = 403, "forbidden", "Forbidden"


class NotFound(DomainError):
    status, code, title = 404, "not_found", "Not found"


class Conflict(DomainError):
    status, code, title = 409, "conflict", "Conflict"


class Unprocessable(DomainError):
    status, code, title = 422, "unprocessable", "Unprocessable request"
