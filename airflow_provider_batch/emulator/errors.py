"""OpenAI's error envelope, so every failure the emulator reports looks like the real API's.

Every non-2xx response carries ``{"error": {"message", "type", "param", "code"}}``; the official
SDK reads it into ``exc.body``, ``exc.code`` and ``exc.param``. Handlers raise :class:`APIError`
and never build responses by hand, so the envelope cannot drift between routes. The Azure dialect's
own errors use Azure's shape, ``{"error": {"code", "message"}}`` (see ``azure.py``).
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """An error the emulator answers with, in OpenAI's shape (or Azure's, ``shape="azure"``) and
    with the service's status code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        shape: str = "openai",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}
        self.shape = shape

    def body(self) -> dict[str, Any]:
        if self.shape == "azure":
            return {"error": {"code": self.code, "message": self.message}}
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(
    message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """Return OpenAI's error envelope; also used inside error-file lines."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 ``invalid_request_error``, the status OpenAI uses for every bad parameter."""
    return APIError(400, message, param=param, code=code)


def not_found(kind: str, object_id: str, param: str) -> APIError:
    return APIError(404, f"No such {kind}: '{object_id}'.", param=param, code=None)
