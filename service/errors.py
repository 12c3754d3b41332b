"""Domain errors; the API maps each to one HTTP status (api/errors.py)."""

from __future__ import annotations

__all__ = ["ConflictError", "DomainError", "InvalidRequestError", "NotFoundError", "SpecError"]


class DomainError(Exception):
    """Base of the errors domain functions raise for a caller's mistake."""

    code = "error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class SpecError(DomainError):
    """The study spec is invalid; ``errors`` lists (field, reason) pairs."""

    code = "invalid_spec"

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        summary = "; ".join(f"{field}: {message}" for field, message in errors)
        super().__init__(f"invalid study spec: {summary}")


class InvalidRequestError(SpecError):
    """A query or path parameter is invalid for this study (422, like a spec error)."""

    code = "invalid_request"

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__(errors)
        self.detail = "invalid request: " + "; ".join(f"{f}: {m}" for f, m in errors)
        self.args = (self.detail,)


class NotFoundError(DomainError):
    """No such study or worker."""

    code = "not_found"


class ConflictError(DomainError):
    """The request conflicts with the current state (a taken name, a running study)."""

    code = "conflict"
