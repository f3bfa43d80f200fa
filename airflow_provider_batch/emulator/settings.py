"""The emulator's knobs: set by command-line flags, environment variables or the admin endpoint.

One dataclass per concern, and one place (:func:`apply_changes`) that type-checks a change
whatever its source, so a flag, an ``BATCH_EMULATOR_*`` variable and ``PATCH /_emulator/settings``
behave identically.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

FAULT_KINDS = ("429", "500", "503", "drop", "drop_after")
"""Transient faults: two rate-limit/server statuses, a connection dropped before the request is
handled, and one dropped *after* it was handled (the response is lost, the effect is not)."""


@dataclass
class FaultSettings:
    """Transient HTTP faults injected in front of the API routes (never the admin routes)."""

    rate: float = 0.0
    """Probability in [0, 1] that a matching request gets a fault."""
    kinds: list[str] = field(default_factory=lambda: ["429", "500", "503", "drop"])
    """Faults to pick from, uniformly; a subset of :data:`FAULT_KINDS`."""
    routes: str = ""
    """Regular expression matched against ``"METHOD /path"``; empty matches every API route."""
    count: int = -1
    """How many faults to inject before stopping; -1 means no limit."""
    latency: float = 0.0
    """Seconds added to every API request (before any fault)."""
    retry_after: float = 0.1
    """Seconds announced by ``retry-after-ms`` / ``retry-after`` on injected 429s."""
    seed: int | None = None
    """Seed for the fault dice, for reproducible runs."""


@dataclass
class AzureSettings:
    """Azure OpenAI's differences that tests tune; they act only under ``--dialect azure``."""

    file_processing_delay: float = 0.5
    """Seconds an upload stays ``pending`` before it is ``processed``; a batch cannot be created
    on it before then (Azure processes uploads asynchronously)."""
    max_files_without_expiry: int = 500
    """Files without an expiry (uploads without ``expires_after``, result files without
    ``output_expires_after``) the resource may hold; an upload over it is a 400 ``quotaExceeded``.
    Result files count but are never refused."""
    token_limit_fail_fast: bool = False
    """Refuse a batch over ``enqueued_token_limit`` at create, with a synchronous 400
    ``token_limit_exceeded``, as Azure's "fail fast" regions do, instead of failing it in
    ``validating``."""


@dataclass
class Settings:
    """Runtime behaviour of the emulator. Durations are real seconds unless stated otherwise."""

    time_scale: float = 1.0
    """Emulated seconds per real second: the 24 h completion window and file expiries shrink by
    this factor (``1000`` turns 24 h into 86.4 s), and ``expires_at`` fields say so."""
    validating_delay: float = 0.0
    line_delay: float = 0.0
    """Seconds spent on each request line (slow processing; counts move visibly)."""
    finalizing_delay: float = 0.0
    cancelling_delay: float = 0.0
    shuffle_output: bool = True
    """Write result lines out of input order, as OpenAI may: clients must join on ``custom_id``."""
    enqueued_token_limit: int = 0
    """Per-model cap on the input tokens of the batches in flight (``validating`` once admitted,
    ``in_progress``, ``finalizing``), counted with the provider's tokenizer
    (:mod:`airflow_provider_batch.tokens`); a batch that would take its model over it fails
    validation with ``token_limit_exceeded``, as OpenAI's does. 0 disables the check."""
    enqueued_token_limits: dict[str, int] = field(default_factory=dict)
    """The same cap for named models (Azure: deployments), overriding ``enqueued_token_limit``
    for them; 0 lifts the limit for that model. A change replaces the whole map."""
    faults: FaultSettings = field(default_factory=FaultSettings)
    azure: AzureSettings = field(default_factory=AzureSettings)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def counts_tokens(self) -> bool:
        """Whether validation counts input tokens: only while some enqueued-token limit is set."""
        return bool(self.enqueued_token_limit or any(self.enqueued_token_limits.values()))

    def token_limit(self, model: str) -> int:
        """The enqueued-token limit of ``model``: its own entry, else the global one (0: none)."""
        return self.enqueued_token_limits.get(model, self.enqueued_token_limit)


def apply_changes(target: Any, changes: dict[str, Any]) -> None:
    """Apply ``changes`` to a settings dataclass, checking names and types.

    Raises ``ValueError`` naming the field and the expected type; nothing is applied then.
    """
    if not isinstance(changes, dict):
        raise ValueError("expected a JSON object of settings")
    current = dataclasses.asdict(target)
    staged: dict[str, Any] = {}
    for name, value in changes.items():
        if name not in current:
            raise ValueError(f"unknown setting {name!r}; known: {', '.join(sorted(current))}")
        old = getattr(target, name)
        if dataclasses.is_dataclass(old) and not isinstance(old, type):
            nested = dataclasses.replace(old)
            apply_changes(nested, value)
            staged[name] = nested
        else:
            staged[name] = _coerce(name, old, value, type(target))
    if isinstance(target, FaultSettings):
        _check_faults(dataclasses.replace(target, **staged))
    for name, value in staged.items():
        setattr(target, name, value)


def _coerce(name: str, old: Any, value: Any, owner: type) -> Any:
    declared = next(f.type for f in dataclasses.fields(owner) if f.name == name)
    if value is None and "None" in str(declared):
        return None
    if isinstance(old, bool) or declared == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"1", "true", "yes", "0", "false", "no"}:
            return value.lower() in {"1", "true", "yes"}
        raise ValueError(f"setting {name!r} expects a boolean, got {value!r}")
    if "dict" in str(declared):
        return _token_limits(name, value)
    if "list" in str(declared):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError(f"setting {name!r} expects a list of strings, got {value!r}")
        return [i.strip() for i in items if i.strip()]
    if "float" in str(declared) or "int" in str(declared):
        try:
            number = float(value) if "float" in str(declared) else int(value)
        except (TypeError, ValueError):
            raise ValueError(f"setting {name!r} expects a number, got {value!r}") from None
        if number < 0 and not (name == "count" and number == -1):
            raise ValueError(f"setting {name!r} must not be negative, got {value!r}")
        return number
    if not isinstance(value, str):
        raise ValueError(f"setting {name!r} expects a string, got {value!r}")
    return value


def _token_limits(name: str, value: Any) -> dict[str, int]:
    """A map of model to non-negative integer: a JSON object, or ``"MODEL=N,MODEL=N"`` (a flag)."""
    if isinstance(value, str):
        pairs = [item.rpartition("=") for item in value.split(",") if item.strip()]
        if any(not sep or not model.strip() for model, sep, _ in pairs):
            raise ValueError(f"setting {name!r} expects MODEL=N pairs separated by commas, got {value!r}")
        value = {model.strip(): number.strip() for model, _, number in pairs}
    if not isinstance(value, dict):
        raise ValueError(f"setting {name!r} expects an object of model: tokens, got {value!r}")
    limits: dict[str, int] = {}
    for model, number in value.items():
        if isinstance(number, bool) or not isinstance(number, int | str):
            raise ValueError(f"setting {name!r} expects an integer for {model!r}, got {number!r}")
        try:
            limits[model] = int(number)
        except ValueError:
            raise ValueError(f"setting {name!r} expects an integer for {model!r}, got {number!r}") from None
        if limits[model] < 0:
            raise ValueError(f"setting {name!r} must not be negative for {model!r}, got {number!r}")
    return limits


def _check_faults(faults: FaultSettings) -> None:
    if not 0.0 <= faults.rate <= 1.0:
        raise ValueError(f"faults.rate must be between 0 and 1, got {faults.rate}")
    unknown = sorted(set(faults.kinds) - set(FAULT_KINDS))
    if unknown or not faults.kinds:
        raise ValueError(
            f"faults.kinds must be a non-empty subset of {', '.join(FAULT_KINDS)}; got {unknown}"
        )
    try:
        re.compile(faults.routes)
    except re.error as exc:
        raise ValueError(f"faults.routes is not a valid regular expression: {exc}") from None
