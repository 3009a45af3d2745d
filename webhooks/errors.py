"""Expected failures, reported to clients as data (``errors: [UserError!]!``)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ErrorCode(Enum):
    REQUIRED = "REQUIRED"
    INVALID = "INVALID"
    INVALID_ID = "INVALID_ID"
    TOO_LONG = "TOO_LONG"
    INVALID_URL = "INVALID_URL"
    HTTPS_REQUIRED = "HTTPS_REQUIRED"
    FORBIDDEN_DESTINATION = "FORBIDDEN_DESTINATION"
    UNKNOWN_EVENT = "UNKNOWN_EVENT"
    NOT_FOUND = "NOT_FOUND"
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    UNSAFE_NUMBER = "UNSAFE_NUMBER"
    RATE_LIMITED = "RATE_LIMITED"
    CONFLICT = "CONFLICT"


@dataclass(frozen=True, slots=True)
class UserError:
    field: str | None
    code: ErrorCode
    message: str


class UserErrors(Exception):
    """Raised by services when input is refused; nothing has been written."""

    def __init__(self, errors: list[UserError]) -> None:
        super().__init__("; ".join(e.message for e in errors))
        self.errors = errors

    @classmethod
    def one(cls, field: str | None, code: ErrorCode, message: str) -> UserErrors:
        return cls([UserError(field, code, message)])
