"""OpenAI's rules for batch requests: the synchronous checks of ``POST /batches`` and the
asynchronous validation of the input file that turns a batch ``failed``.

The split mirrors the real service: bad parameters are a 400 at create time, while problems
inside the file only surface later, as ``errors.data`` entries with a code, a message, the line
and the parameter. The file is read once, line by line, so memory does not depend on its size.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from airflow_provider_batch.emulator.errors import invalid
from airflow_provider_batch.limits import (
    COMPLETION_WINDOWS,
    ENDPOINTS,
    MAX_EMBEDDING_INPUTS,
    MAX_EXPIRES_AFTER_SECONDS,
    MAX_FILE_BYTES,
    MAX_METADATA_KEY_CHARS,
    MAX_METADATA_PAIRS,
    MAX_METADATA_VALUE_CHARS,
    MAX_REQUESTS,
    MIN_EXPIRES_AFTER_SECONDS,
)
from airflow_provider_batch.tokens import estimate_request

# OpenAI's limits are the provider's single source (the emulator may import the provider's pure
# modules; the provider never imports the emulator).
MAX_BATCH_FILE_BYTES = MAX_FILE_BYTES
MAX_UPLOAD_BYTES = 512 * 1024 * 1024
MAX_REPORTED_ERRORS = 100
"""Validation stops collecting after this many errors; the batch fails either way."""
FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
CREATE_BATCH_FIELDS = ("input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after")


@dataclass(frozen=True)
class CreateBatch:
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    output_expires_after: int | None


def parse_create_batch(payload: Any, endpoints: tuple[str, ...] = ENDPOINTS) -> CreateBatch:
    """Check a ``POST /batches`` body the way OpenAI does, raising a 400 that names the parameter.

    ``endpoints``: the accepted ``endpoint`` values (Azure takes each also without ``/v1``)."""
    if not isinstance(payload, dict):
        raise invalid("The request body must be a JSON object.")
    for name in payload:
        if name not in CREATE_BATCH_FIELDS:
            raise invalid(f"Unrecognized request argument supplied: {name}", param=name)
    input_file_id = _required_string(payload, "input_file_id")
    endpoint = _required_string(payload, "endpoint")
    if endpoint not in endpoints:
        raise invalid(
            f"Invalid value for 'endpoint': '{endpoint}'. Supported values are: {', '.join(endpoints)}.",
            param="endpoint",
            code="invalid_value",
        )
    window = _required_string(payload, "completion_window")
    if window not in COMPLETION_WINDOWS:
        raise invalid(
            f"Invalid value for 'completion_window': '{window}'. Supported values are: '24h'.",
            param="completion_window",
            code="invalid_value",
        )
    expires = payload.get("output_expires_after")
    return CreateBatch(
        input_file_id=input_file_id,
        endpoint=endpoint,
        completion_window=window,
        metadata=parse_metadata(payload.get("metadata")),
        output_expires_after=None
        if expires is None
        else parse_expires_after(expires, "output_expires_after"),
    )


def _required_string(payload: dict[str, Any], name: str) -> str:
    value = payload.get(name)
    if value is None:
        raise invalid(f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
    if not isinstance(value, str) or not value:
        raise invalid(
            f"Invalid type for '{name}': expected a non-empty string, but got {_describe(value)} instead.",
            param=name,
            code="invalid_type",
        )
    return value


def parse_metadata(metadata: Any) -> dict[str, str] | None:
    """At most 16 pairs, keys up to 64 characters, string values up to 512 characters."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise invalid(
            f"Invalid type for 'metadata': expected an object, but got {_describe(metadata)} instead.",
            param="metadata",
            code="invalid_type",
        )
    if len(metadata) > MAX_METADATA_PAIRS:
        raise invalid(
            f"Invalid 'metadata': too many properties. Expected an object with at most {MAX_METADATA_PAIRS}"
            f" properties, but got an object with {len(metadata)} properties instead.",
            param="metadata",
            code="object_above_max_properties",
        )
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY_CHARS:
            raise invalid(
                f"Invalid 'metadata': key '{key[:80]}' is too long. Expected a key with maximum length"
                f" {MAX_METADATA_KEY_CHARS}, but got a key with length {len(key)} instead.",
                param="metadata",
                code="string_above_max_length",
            )
        if not isinstance(value, str):
            raise invalid(
                f"Invalid type for 'metadata.{key}': expected a string, but got {_describe(value)} instead.",
                param=f"metadata.{key}",
                code="invalid_type",
            )
        if len(value) > MAX_METADATA_VALUE_CHARS:
            raise invalid(
                f"Invalid 'metadata.{key}': string too long. Expected a string with maximum length"
                f" {MAX_METADATA_VALUE_CHARS}, but got a string with length {len(value)} instead.",
                param=f"metadata.{key}",
                code="string_above_max_length",
            )
    return metadata


def parse_expires_after(value: Any, param: str) -> int:
    """``{"anchor": "created_at", "seconds": 3600..2592000}``; returns the seconds."""
    if not isinstance(value, dict):
        raise invalid(
            f"Invalid type for '{param}': expected an object, but got {_describe(value)} instead.",
            param=param,
            code="invalid_type",
        )
    if value.get("anchor") != "created_at":
        raise invalid(
            f"Invalid value for '{param}.anchor': expected 'created_at', got {value.get('anchor')!r}.",
            param=f"{param}.anchor",
            code="invalid_value",
        )
    seconds = value.get("seconds")
    if isinstance(seconds, str) and seconds.strip().isdigit():
        seconds = int(seconds)  # multipart forms send every field as text
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise invalid(
            f"Invalid type for '{param}.seconds': expected an integer, but got {_describe(seconds)} instead.",
            param=f"{param}.seconds",
            code="invalid_type",
        )
    if not MIN_EXPIRES_AFTER_SECONDS <= seconds <= MAX_EXPIRES_AFTER_SECONDS:
        raise invalid(
            f"Invalid '{param}.seconds': must be between {MIN_EXPIRES_AFTER_SECONDS} and"
            f" {MAX_EXPIRES_AFTER_SECONDS}, got {seconds}.",
            param=f"{param}.seconds",
            code="invalid_value",
        )
    return seconds


def _describe(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array"}
    if value is None:
        return "null"
    return names.get(type(value), "an object")


# Asynchronous validation of the input file ------------------------------------------------------


@dataclass
class FileReport:
    """What one pass over an input file found."""

    errors: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    model: str | None = None
    input_tokens: int = 0
    """The input tokens of the requests (:func:`request_tokens`), when the pass counted them."""

    def add(self, code: str, message: str, *, line: int | None, param: str | None = None) -> None:
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append({"code": code, "message": message, "param": param, "line": line})

    @property
    def full(self) -> bool:
        return len(self.errors) >= MAX_REPORTED_ERRORS


def validate_input_file(
    path: Path,
    endpoint: str,
    same_endpoint: Callable[[str, str], bool] = operator.eq,
    *,
    count_tokens: bool = False,
) -> FileReport:
    """Validate a batch input file in one streaming pass, as OpenAI does after ``POST /batches``.

    ``same_endpoint(url, endpoint)`` decides ``url_mismatch``: equality for OpenAI; Azure also
    matches ``/chat/completions`` with ``/v1/chat/completions``. With ``count_tokens``, the same
    pass adds up the input tokens of the requests (``report.input_tokens``), for the enqueued-token
    limit; counting costs the tokenizer's time, so it is done only while a limit is set."""
    report = FileReport()
    seen: dict[str, int] = {}
    embedding_inputs = 0
    model_line = 0
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            report.requests += 1
            if report.requests == MAX_REQUESTS + 1:
                report.add(
                    "too_many_tasks",
                    f"The batch input file contains more than the maximum of {MAX_REQUESTS:,} requests.",
                    line=number,
                )
            if report.full:
                continue
            line = _check_line(raw, number, endpoint, same_endpoint, report)
            if line is None:
                continue
            custom_id, body = line
            if custom_id in seen:
                report.add(
                    "duplicate_custom_id",
                    f"The custom_id '{custom_id}' is already used on line {seen[custom_id]};"
                    " custom_id values must be unique within a batch.",
                    line=number,
                    param="custom_id",
                )
            else:
                seen[custom_id] = number
            model = body.get("model")
            if isinstance(model, str):
                if report.model is None:
                    report.model, model_line = model, number
                elif model != report.model:
                    report.add(
                        "model_mismatch",
                        f"The model '{model}' differs from the model '{report.model}' used on line"
                        f" {model_line}; all requests in a batch must use the same model.",
                        line=number,
                        param="body.model",
                    )
            if count_tokens:
                report.input_tokens += request_tokens(endpoint, body)
            if endpoint == "/v1/embeddings":
                embedding_inputs += count_embedding_inputs(body.get("input"))
    if report.requests == 0:
        report.add(
            "empty_file", "The batch input file is empty; it must contain at least one request.", line=None
        )
    if embedding_inputs > MAX_EMBEDDING_INPUTS:
        report.add(
            "too_many_embedding_inputs",
            f"The batch contains {embedding_inputs:,} embedding inputs; an embeddings batch may contain at"
            f" most {MAX_EMBEDDING_INPUTS:,} inputs across all requests.",
            line=None,
            param="body.input",
        )
    return report


def _check_line(
    raw: bytes, number: int, endpoint: str, same_endpoint: Callable[[str, str], bool], report: FileReport
) -> tuple[str, dict] | None:
    """Check one line's JSON and fields; return ``(custom_id, body)`` when they are usable."""
    try:
        line = msgspec.json.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):  # bad UTF-8 in a string; deep nesting
        report.add("invalid_json_line", "This line is not parseable as valid JSON.", line=number)
        return None
    if not isinstance(line, dict):
        report.add("invalid_json_line", "This line is valid JSON but not a JSON object.", line=number)
        return None
    for name, kind in (("custom_id", str), ("method", str), ("url", str), ("body", dict)):
        if name not in line:
            report.add(
                "missing_required_parameter",
                f"Missing required parameter: '{name}'.",
                line=number,
                param=name,
            )
            return None
        if not isinstance(line[name], kind):
            expected = "an object" if kind is dict else "a string"
            report.add(
                "invalid_type",
                f"Invalid type for '{name}': expected {expected}, but got {_describe(line[name])} instead.",
                line=number,
                param=name,
            )
            return None
    if line["method"] != "POST":
        report.add(
            "invalid_method",
            f"Invalid value for 'method': only 'POST' is supported, got '{line['method']}'.",
            line=number,
            param="method",
        )
    if not same_endpoint(line["url"], endpoint):
        report.add(
            "url_mismatch",
            f"The url '{line['url']}' does not match the batch endpoint '{endpoint}'.",
            line=number,
            param="url",
        )
    return line["custom_id"], line["body"]


def request_tokens(endpoint: str, body: dict[str, Any]) -> int:
    """The input tokens one request enqueues: the provider's own offline estimate
    (:func:`airflow_provider_batch.tokens.estimate_request`), so that the emulator's limit counts
    exactly what a job's budget counts before it submits."""
    return estimate_request(endpoint, body).input


def count_embedding_inputs(value: Any) -> int:
    """A string or a token array is one input; an array of strings or token arrays is several."""
    if isinstance(value, list) and value and not all(isinstance(item, int) for item in value):
        return len(value)
    return 1
