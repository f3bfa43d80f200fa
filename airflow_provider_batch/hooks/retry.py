"""The one retry policy for every call the provider makes to the Batch and Files API.

Exactly one layer retries: this one. The SDK client is built with ``max_retries=0`` because its
own retries cannot do what a batch pipeline needs:

- one predicate and one set of settings for the sync client (worker) and the async client
  (triggerer), so the two paths cannot drift;
- a bound on the *total* time spent, not only on attempts;
- ``Retry-After`` honoured as the server asks, also above the SDK's 120 s cap (where the SDK
  silently stops retrying);
- no blind replay of ``POST /batches``: the SDK retries a create on a 5xx or a dropped
  connection, which bills a second batch when the first one was in fact created. The hook's
  ``create_batch`` looks its idempotency key up before every new attempt instead.

Transient means: no response (connection error, timeout), 408, 429 or any 5xx. Every other 4xx is
a real answer and fails at once with the server's message.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import openai
import tenacity

log = logging.getLogger(__name__)

TRANSIENT_STATUSES = frozenset({408, 429})


def is_transient(exc: BaseException) -> bool:
    """Whether a failed call may succeed if made again."""
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in TRANSIENT_STATUSES or exc.status_code >= 500
    return False


def retry_after_seconds(exc: BaseException) -> float | None:
    """The delay a response asks for (``retry-after-ms``, then ``retry-after`` in seconds or as an
    HTTP date), or ``None`` when it names none."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    try:
        if "retry-after-ms" in headers:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            moment = email.utils.parsedate_to_datetime(value)
            return max(0.0, moment.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, honouring ``Retry-After``, bounded twice.

    :param max_attempts: calls in all, the first included.
    :param initial_wait: seconds before the first retry (before jitter).
    :param max_wait: cap on one wait, also on a ``Retry-After`` the server announces.
    :param max_total: seconds after the first call beyond which no new attempt starts.
    """

    max_attempts: int = 6
    initial_wait: float = 1.0
    max_wait: float = 60.0
    max_total: float = 300.0

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> RetryPolicy:
        """Read ``max_retries``, ``retry_initial_wait``, ``retry_max_wait`` and ``retry_max_total``
        from a connection's extra; absent keys keep the defaults."""
        defaults = cls()
        return cls(
            max_attempts=int(extra.get("max_retries", defaults.max_attempts - 1)) + 1,
            initial_wait=float(extra.get("retry_initial_wait", defaults.initial_wait)),
            max_wait=float(extra.get("retry_max_wait", defaults.max_wait)),
            max_total=float(extra.get("retry_max_total", defaults.max_total)),
        )

    def wait_before(self, attempt: int, exc: BaseException | None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        asked = retry_after_seconds(exc) if exc is not None else None
        if asked is not None:
            return min(asked, self.max_wait)
        ceiling = min(self.max_wait, self.initial_wait * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    def tenacity_kwargs(self) -> dict[str, Any]:
        """Arguments for ``tenacity.Retrying`` and ``tenacity.AsyncRetrying`` alike."""

        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            return self.wait_before(state.attempt_number, exc)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "OpenAI call failed (%s), attempt %d of %d; retrying in %.1f s",
                _describe(exc),
                state.attempt_number,
                self.max_attempts,
                state.upcoming_sleep,
            )

        return {
            "retry": tenacity.retry_if_exception(is_transient),
            "wait": wait,
            "stop": tenacity.stop_after_attempt(self.max_attempts)
            | tenacity.stop_after_delay(self.max_total),
            "before_sleep": before_sleep,
            "reraise": True,
        }

    def retrying(self) -> tenacity.Retrying:
        return tenacity.Retrying(**self.tenacity_kwargs())

    def async_retrying(self) -> tenacity.AsyncRetrying:
        return tenacity.AsyncRetrying(**self.tenacity_kwargs())


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}"
    return type(exc).__name__ if exc is not None else "unknown error"
