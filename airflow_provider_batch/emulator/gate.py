"""What happens to every request before a route sees it: a request id, authentication, call
statistics, added latency and injected transient faults.

It is plain ASGI rather than a framework middleware because a *dropped connection* must really
drop: the response starts, then the handler raises, and the server closes the socket mid-body,
which clients see as a transport error (the openai SDK raises ``APIConnectionError`` and
retries). ``drop_after`` runs the route first and loses only its response: the batch or file is
created, the client never hears of it. That is the case idempotent submission has to survive.

Under ``--dialect azure`` the gate also speaks Azure's front door (``azure.py``): it serves only
``/openai/…`` and ``/openai/v1/…``, checks ``api-version`` and the ``api-key`` header, and hands
the request on under the handlers' ``/v1/…`` path, which statistics and fault routes then name.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import secrets
import urllib.parse
from collections import Counter
from typing import Any

import msgspec

from airflow_provider_batch.emulator import azure
from airflow_provider_batch.emulator.errors import APIError
from airflow_provider_batch.emulator.settings import FaultSettings, Settings

API_PREFIX = "/v1/"
ADMIN_PREFIX = "/_emulator/"
_ID_IN_PATH = re.compile(r"/(file-|batch_)[^/]+")


class DroppedConnection(Exception):
    """Raised after a response has started, so the server closes the connection mid-body."""


class _QuietDrops(logging.Filter):
    """Keep deliberate drops out of the server's error log; real errors still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DroppedConnection))


logging.getLogger("uvicorn.error").addFilter(_QuietDrops())


def route_key(method: str, path: str) -> str:
    """``"GET /v1/batches/{id}"``: the method and path with object ids folded, for statistics."""
    return f"{method} {_ID_IN_PATH.sub(lambda m: '/{id}', path)}"


class Gate:
    """ASGI wrapper around the emulator app."""

    def __init__(self, app: Any, settings: Settings, api_key: str | None, dialect: str = "openai") -> None:
        self.app = app
        self.settings = settings
        self.api_key = api_key
        self.dialect = dialect
        self.calls: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self._dice = random.Random(settings.faults.seed)
        self._seed = settings.faults.seed

    @property
    def faults(self) -> FaultSettings:
        # Read through the settings each time: the admin endpoint may have replaced them.
        return self.settings.faults

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = "req_" + secrets.token_hex(16)

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        path: str = scope["path"]
        if self.dialect == "azure" and not path.startswith(ADMIN_PREFIX):
            resolved = self._azure_front_door(scope)
            if isinstance(resolved, APIError):
                await _send_error(send_with_id, resolved)
                return
            scope = resolved
            path = scope["path"]
        elif (
            path.startswith(API_PREFIX) or path.startswith(ADMIN_PREFIX)
        ) and path != ADMIN_PREFIX + "health":
            denied = self._authenticate(scope)
            if denied is not None:
                await _send_error(send_with_id, denied)
                return
        if not path.startswith(API_PREFIX):
            await self.app(scope, receive, send_with_id)
            return

        key = route_key(scope["method"], path)
        self.calls[key] += 1
        if self.faults.latency:
            await asyncio.sleep(self.faults.latency)
        fault = self._roll(key)
        if fault is None:
            await self.app(scope, receive, send_with_id)
        elif fault == "drop":
            await _drop(send_with_id)
        elif fault == "drop_after":
            await self.app(scope, receive, _swallow)
            await _drop(send_with_id)
        else:
            await _send_error(send_with_id, _fault_error(fault, self.faults.retry_after))

    def _azure_front_door(self, scope: dict[str, Any]) -> dict[str, Any] | APIError:
        """Resolve an Azure path, check its ``api-version`` and key; return the scope to hand on."""
        resolved = azure.resolve(scope["path"])
        if resolved is None:
            return azure.resource_not_found()
        path, v1 = resolved
        versions = [
            value.decode("latin-1")
            for name, value in urllib.parse.parse_qsl(scope.get("query_string", b""), keep_blank_values=True)
            if name == b"api-version"
        ]
        refused = azure.check_api_version(versions[-1] if versions else None, v1=v1)
        if refused is None and self.api_key:
            refused = azure.authenticate(dict(scope.get("headers", [])), self.api_key, bearer_too=v1)
        if refused is not None:
            return refused
        return {**scope, "path": path, "raw_path": path.encode()}

    def _authenticate(self, scope: dict[str, Any]) -> APIError | None:
        """OpenAI's ``Authorization: Bearer`` key; admin routes take it in either dialect."""
        if not self.api_key:
            return None
        headers = dict(scope.get("headers", []))
        given = headers.get(b"authorization", b"").decode("latin-1")
        if not given:
            return APIError(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header"
                " using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        if not secrets.compare_digest(given, f"Bearer {self.api_key}"):
            # The key given is never echoed back: error bodies end up in logs.
            return APIError(401, "Incorrect API key provided.", code="invalid_api_key")
        return None

    def reseed(self) -> None:
        """Restart the fault dice from the configured seed (the settings endpoint calls this whenever a
        change sets ``faults.seed``, even to the value it had, so a seeded run can be replayed)."""
        self._dice, self._seed = random.Random(self.faults.seed), self.faults.seed

    def _roll(self, key: str) -> str | None:
        faults = self.faults
        if faults.seed != self._seed:  # the settings were replaced without going through reseed()
            self.reseed()
        if faults.rate <= 0 or faults.count == 0:
            return None
        if faults.routes and not re.search(faults.routes, key):
            return None
        if self._dice.random() >= faults.rate:
            return None
        if faults.count > 0:
            faults.count -= 1
        fault = self._dice.choice(faults.kinds)
        self.injected[f"{fault} {key}"] += 1
        return fault

    def stats(self) -> dict[str, Any]:
        return {
            "requests": dict(self.calls),
            "faults": dict(self.injected),
            "total_requests": sum(self.calls.values()),
            "total_faults": sum(self.injected.values()),
        }

    def reset_stats(self) -> None:
        self.calls.clear()
        self.injected.clear()


def _fault_error(fault: str, retry_after: float) -> APIError:
    if fault == "429":
        return APIError(
            429,
            "Rate limit reached (injected by the emulator). Please try again later.",
            type="requests",
            code="rate_limit_exceeded",
            headers={
                "retry-after-ms": str(max(1, round(retry_after * 1000))),
                "retry-after": str(max(1, round(retry_after))),
            },
        )
    if fault == "503":
        return APIError(503, "The server is overloaded (injected by the emulator).", type="server_error")
    return APIError(500, "The server had an error (injected by the emulator).", type="server_error")


async def _send_error(send: Any, error: APIError) -> None:
    body = msgspec.json.encode(error.body())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(name.encode(), value.encode()) for name, value in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _drop(send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"1024")],
        }
    )
    await send({"type": "http.response.body", "body": b"{", "more_body": True})
    raise DroppedConnection("connection dropped by fault injection")


async def _swallow(message: dict[str, Any]) -> None:
    return None
