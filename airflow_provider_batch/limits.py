"""OpenAI Batch API limits, in one place so that the request builder, the validator and the operator agree.

The values come from the OpenAI SDK docstrings, the OpenAPI description and the Batch guide (see
``shared/reference/openai-batch-api.md`` §4 and §11). OpenAI checks most of them only after a batch was
created, by failing it minutes later; checking them locally turns that delay into an immediate, precise error.
The module is pure so that any part of the provider, including the triggerer, can import it for free.
"""

from __future__ import annotations

import difflib

ENDPOINTS: tuple[str, ...] = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)
"""Values accepted for a batch's ``endpoint``; every request line's ``url`` must equal the batch's one."""


def endpoint_problem(endpoint: object) -> str | None:
    """Why ``endpoint`` is not a batch endpoint, with the likeliest intended one; ``None`` if it is."""
    if endpoint in ENDPOINTS:
        return None
    text = str(endpoint).strip().rstrip("/")
    # A part of an endpoint ("/v1/chat", "chat/completions") first, then a typo ("/v1/embedings").
    parts = [candidate for candidate in ENDPOINTS if text and (text in candidate or candidate.endswith(text))]
    guess = parts[:1] or difflib.get_close_matches(text, ENDPOINTS, n=1, cutoff=0.6)
    hint = f" Did you mean {guess[0]!r}?" if guess else ""
    return f"endpoint {endpoint!r} is not a batch endpoint; use one of {', '.join(ENDPOINTS)}.{hint}"


MODEL_REQUIRED_ENDPOINTS: frozenset[str] = frozenset(
    {"/v1/responses", "/v1/chat/completions", "/v1/embeddings", "/v1/completions"}
)
"""Endpoints whose requests fail without ``body.model`` (moderations, images and videos have defaults)."""

COMPLETION_WINDOWS: tuple[str, ...] = ("24h",)
"""``completion_window`` values OpenAI accepts; it has only ever offered a day."""

MAX_REQUESTS = 50_000
"""Requests per batch input file; OpenAI fails the batch with ``too_many_tasks`` above it."""

MAX_FILE_BYTES = 200 * 1024 * 1024
"""Batch input file size; OpenAI quotes the limit as 209,715,200 bytes, so "200 MB" means MiB."""

MAX_EMBEDDING_INPUTS = 50_000
"""Embedding inputs across all lines of a ``/v1/embeddings`` batch, counted per input, not per line."""

MAX_METADATA_PAIRS = 16
"""Key-value pairs in a batch's ``metadata``; the operator's identity tags must fit beside the user's."""

MAX_METADATA_KEY_CHARS = 64
"""Characters in a ``metadata`` key."""

MAX_METADATA_VALUE_CHARS = 512
"""Characters in a ``metadata`` value, which must be a string."""

MIN_EXPIRES_AFTER_SECONDS = 3_600
"""Shortest ``expires_after``/``output_expires_after`` OpenAI accepts: one hour."""

MAX_EXPIRES_AFTER_SECONDS = 2_592_000
"""Longest ``expires_after``/``output_expires_after`` OpenAI accepts: thirty days."""
