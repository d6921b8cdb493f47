"""One exception type for every refusal the API makes: status, machine code, human reason."""

from __future__ import annotations


class ApiError(Exception):
    """Raised by services; the app turns it into ``{"detail": ..., "code": ...}`` with `status`."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
