"""Processing engines: what answers each request line of a batch.

``EchoEngine`` answers locally with deterministic, well-formed bodies for every batch endpoint
(the same input always gives the same output), with token usage, so tests and demos need no key.
``UpstreamEngine`` forwards each line to a real OpenAI-compatible server with bounded
concurrency; an upstream failure becomes an error-file line, never a crashed batch.

A request for Structured Outputs (``response_format`` of type ``json_schema`` in chat,
``text.format`` in the Responses API) is answered with an instance of its schema, drawn from a hash
of the prompt (:mod:`~airflow_provider_batch.emulator.schema_instance`): valid, deterministic, and
different from one prompt to the next, as a results pipeline needs to be tested.

Both honour the per-line test directive, an ``emulator`` object in the body, answered by the
emulator itself (never forwarded): ``"status_code": 429`` (optionally ``"message"`` and ``"code"``)
answers that HTTP error instead of running the line; ``"content"``, ``"output"`` or ``"refusal"``
script the reply text (see :class:`Script`). With ``"times": N`` a directive applies only to the
first N runs of the line's ``custom_id``: the runner, which counts runs, strips a spent directive
(:func:`without_spent_directive`) before the engine sees the body.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import math
import re
import struct
import time
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from airflow_provider_batch.emulator.errors import error_body
from airflow_provider_batch.emulator.schema_instance import SchemaError, instance_of, mismatch_of
from airflow_provider_batch.emulator.store import Usage

Response = tuple[int, dict[str, Any]]
"""An HTTP status code and a JSON body, as one result line carries them."""

DEFAULT_MODELS = {
    "/v1/chat/completions": "gpt-4o-mini",
    "/v1/completions": "gpt-3.5-turbo-instruct",
    "/v1/responses": "gpt-4o-mini",
    "/v1/embeddings": "text-embedding-3-small",
    "/v1/moderations": "omni-moderation-latest",
    "/v1/images/generations": "gpt-image-1",
    "/v1/images/edits": "gpt-image-1",
    "/v1/videos": "sora-2",
}
EMBEDDING_DIMENSIONS = {"text-embedding-3-large": 3072}
DEFAULT_EMBEDDING_DIMENSIONS = 1536
MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
# The smallest valid PNG (1x1, transparent): image endpoints return it as b64_json.
TINY_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
_WORD = re.compile(r"\w+")


class Engine(Protocol):
    async def respond_many(self, endpoint: str, bodies: list[dict[str, Any]]) -> list[Response]: ...

    async def aclose(self) -> None: ...


SCRIPTED_OUTPUTS = ("invalid_json", "schema_mismatch")
"""The values of the ``output`` directive: a reply that does not parse, or parses but does not fit."""
NO_REFUSAL = frozenset({"/v1/completions"})
"""Text endpoints whose reply has no place for a refusal (a legacy completion is only text)."""
_REPLY_FIELDS = ("content", "output", "refusal")


@dataclass(frozen=True)
class Script:
    """What a directive makes of a line's reply text; the empty script is the normal answer.

    ``content``: exactly this text. ``output``: ``invalid_json`` (the JSON reply wrapped in a
    Markdown fence, as models do when they ignore the format) or ``schema_mismatch`` (valid JSON
    the requested schema rejects). ``refusal``: the model declines with this message. A scripted
    text is never cut to the token limit: it is what the test asked for."""

    content: str | None = None
    output: str | None = None
    refusal: str | None = None

    @property
    def field(self) -> str | None:
        """The directive field this script came from (None for the normal answer)."""
        return next((name for name in _REPLY_FIELDS if getattr(self, name) is not None), None)


NORMAL = Script()


def _is_error_status(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599


def _directive(body: dict[str, Any]) -> dict[str, Any] | None:
    """The body's test directive: an ``emulator`` object with a 4xx/5xx ``status_code`` or with
    any of ``content``, ``output``, ``refusal``. Anything else under ``emulator`` (a
    ``status_code`` of 200, or ``"429"``) is not a directive and is ignored."""
    directive = body.get("emulator")
    if not isinstance(directive, dict):
        return None
    if _is_error_status(directive.get("status_code")) or any(name in directive for name in _REPLY_FIELDS):
        return directive
    return None


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _invalid_field(name: str, expected: str, given: Any) -> _BadRequest:
    shown = msgspec.json.encode(given).decode()[:50]
    return _BadRequest(f"Invalid 'emulator.{name}': expected {expected}, got {shown}.", f"emulator.{name}")


def _checked_directive(directive: dict[str, Any]) -> Script | None:
    """The directive's script (None for an HTTP error), or :class:`_BadRequest` naming the
    malformed field: a typo must not turn "fail twice" into "always fail", nor a scripted
    refusal into a normal answer, so a malformed directive is refused on every run."""
    if "times" in directive and not _is_positive_int(directive["times"]):
        raise _invalid_field("times", "a positive integer", directive["times"])
    given = [name for name in _REPLY_FIELDS if name in directive]
    if _is_error_status(directive.get("status_code")):
        given.insert(0, "status_code")
    if len(given) > 1:
        raise _BadRequest(
            "Invalid 'emulator': give only one of status_code, content, output and refusal,"
            f" got {', '.join(given)}.",
            "emulator",
        )
    if given == ["status_code"]:
        return None
    name, value = given[0], directive[given[0]]
    if name == "content" and not isinstance(value, str):
        raise _invalid_field(name, "a string", value)
    if name == "output" and value not in SCRIPTED_OUTPUTS:
        raise _invalid_field(name, "one of " + ", ".join(map(repr, SCRIPTED_OUTPUTS)), value)
    if name == "refusal" and not (isinstance(value, str) and value):
        raise _invalid_field(name, "a non-empty string", value)
    return Script(**{name: value})


def _error_reply(directive: dict[str, Any]) -> Response:
    status = directive["status_code"]
    if status == 429:
        kind, code = "requests", "rate_limit_exceeded"
    elif status >= 500:
        kind, code = "server_error", None
    else:
        kind, code = "invalid_request_error", None
    message = directive.get("message") or f"Emulated failure with status {status}."
    return status, error_body(str(message), type=kind, code=directive.get("code", code))


def directive_response(endpoint: str, body: dict[str, Any]) -> Response | None:
    """Answer the line from its test directive, if it has one: the HTTP error it asks for, the
    reply it scripts (built as :func:`echo` builds any reply, so the body stays well-formed and
    its usage counts the scripted text), or a 400 naming a malformed field."""
    directive = _directive(body)
    if directive is None:
        return None
    try:
        script = _checked_directive(directive)
        if script is None:
            return _error_reply(directive)
        if endpoint not in _TEXT_BUILDERS or (script.field == "refusal" and endpoint in NO_REFUSAL):
            raise _BadRequest(
                f"The directive 'emulator.{script.field}' does not apply to {endpoint}.",
                f"emulator.{script.field}",
            )
    except _BadRequest as exc:
        return 400, error_body(str(exc), param=exc.param)
    return _answer(endpoint, body, script)


def without_spent_directive(body: dict[str, Any], runs_before: int) -> dict[str, Any]:
    """The body to run for a line whose ``custom_id`` already ran ``runs_before`` times: without its
    directive once the directive's ``times`` runs are spent, else unchanged (a directive without
    ``times``, or a malformed one, is never spent: it keeps being refused)."""
    directive = _directive(body)
    if directive is None or not _is_positive_int(directive.get("times")) or runs_before < directive["times"]:
        return body
    try:
        _checked_directive(directive)
    except _BadRequest:
        return body
    return {key: value for key, value in body.items() if key != "emulator"}


def usage_of(endpoint: str, status: int, body: dict[str, Any]) -> Usage:
    """Token usage of one successful response, in the batch's ``usage`` terms."""
    raw = body.get("usage") if 200 <= status < 300 and isinstance(body, dict) else None
    if not isinstance(raw, dict):
        return Usage()
    if "input_tokens" in raw:  # Responses API and images
        details_in = raw.get("input_tokens_details") or {}
        details_out = raw.get("output_tokens_details") or {}
        return Usage(
            input_tokens=int(raw.get("input_tokens") or 0),
            cached_tokens=int(details_in.get("cached_tokens") or 0),
            output_tokens=int(raw.get("output_tokens") or 0),
            reasoning_tokens=int(details_out.get("reasoning_tokens") or 0),
        )
    details_in = raw.get("prompt_tokens_details") or {}
    details_out = raw.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=int(raw.get("prompt_tokens") or 0),
        cached_tokens=int(details_in.get("cached_tokens") or 0),
        output_tokens=int(raw.get("completion_tokens") or 0),
        reasoning_tokens=int(details_out.get("reasoning_tokens") or 0),
    )


# Echo ------------------------------------------------------------------------------------------


class EchoEngine:
    """Answers every line locally; CPU-bound, so chunks run in a worker thread."""

    async def respond_many(self, endpoint: str, bodies: list[dict[str, Any]]) -> list[Response]:
        return await asyncio.to_thread(lambda: [echo(endpoint, body) for body in bodies])

    async def aclose(self) -> None:
        return None


def echo(endpoint: str, body: dict[str, Any]) -> Response:
    """Answer one request the way ``endpoint`` would, deterministically."""
    directed = directive_response(endpoint, body)
    return directed if directed is not None else _answer(endpoint, body, NORMAL)


def _answer(endpoint: str, body: dict[str, Any], script: Script) -> Response:
    """Run ``body`` through the endpoint's builder; ``script`` reaches only the text endpoints
    (:data:`_TEXT_BUILDERS`), as :func:`directive_response` has checked."""
    text_builder = _TEXT_BUILDERS.get(endpoint)
    builder = functools.partial(text_builder, script=script) if text_builder else _ECHO_BUILDERS.get(endpoint)
    if builder is None:
        return 404, error_body(f"Unknown endpoint '{endpoint}'.")
    model = body.get("model")
    if model is None and endpoint != "/v1/moderations":
        return 400, error_body("You must provide a model parameter.", param="model")
    if model is not None and not isinstance(model, str):
        return 400, error_body("Invalid type for 'model': expected a string.", param="model")
    try:
        return 200, builder(body, model or DEFAULT_MODELS[endpoint])
    except _BadRequest as exc:
        return 400, error_body(str(exc), param=exc.param)


class _BadRequest(Exception):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def _required(body: dict[str, Any], name: str) -> Any:
    if body.get(name) in (None, "", []):
        raise _BadRequest(f"Missing required parameter: '{name}'.", name)
    return body[name]


def _stable_id(prefix: str, *parts: Any) -> str:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=12).hexdigest()
    return prefix + digest


def _tokens(text: str) -> int:
    """A deterministic token estimate: about four characters per token."""
    return max(1, math.ceil(len(text) / 4))


def _text_of(content: Any) -> str:
    """Flatten message content (a string or a list of typed parts) to its text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict) and "text" in part
        )
    return ""


def _cap(text: str, limit: Any) -> tuple[str, str]:
    """Truncate ``text`` to about ``limit`` tokens; returns the text and the finish reason."""
    if isinstance(limit, int) and limit > 0 and _tokens(text) > limit:
        return text[: limit * 4], "length"
    return text, "stop"


@dataclass(frozen=True)
class _Format:
    """What a request asks its reply text to be: ``text``, ``json_object`` or ``json_schema``
    (with its ``schema``, None when the request gave none, and ``param``, where the schema sits
    in the body, for a 400 about it)."""

    kind: str
    schema: Any = None
    param: str = ""


def _format_of(body: dict[str, Any]) -> _Format:
    """The requested format: chat's ``response_format``, or the Responses API's ``text.format``."""
    chat = body.get("response_format")
    if isinstance(chat, dict):
        spec = chat.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        found = _Format(str(chat.get("type")), schema, "response_format.json_schema.schema")
    else:
        text = body.get("text")
        given = text.get("format") if isinstance(text, dict) else None
        if not isinstance(given, dict):
            return _Format("text")
        found = _Format(str(given.get("type")), given.get("schema"), "text.format.schema")
    if found.kind == "json_schema" and found.schema is not None and not isinstance(found.schema, dict | bool):
        raise _BadRequest(f"Invalid type for '{found.param}': expected an object.", found.param)
    return found


@dataclass(frozen=True)
class _Reply:
    """One reply of a text endpoint: its ``text``, or a ``refusal`` instead, and why it stopped."""

    text: str | None
    refusal: str | None = None
    finish: str = "stop"

    @property
    def tokens(self) -> int:
        """Output tokens, counted on what the reply carries, so usage matches the text."""
        return _tokens(self.text if self.text is not None else self.refusal or "")


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _reply(echoed: str, seed: str, body: dict[str, Any], script: Script, limit: Any) -> _Reply:
    """The reply to one prompt. ``echoed``: the text a plain reply repeats; ``seed``: the whole
    prompt, whose hash draws a structured reply's values; ``limit``: the request's output-token
    cap, which cuts a normal reply (never a scripted one) with finish reason ``length``."""
    if script.refusal is not None:
        return _Reply(None, refusal=script.refusal)
    if script.content is not None:
        return _Reply(script.content)
    fmt = _format_of(body)
    try:
        if script.output == "schema_mismatch":
            if fmt.kind == "json_schema" and fmt.schema is not None:
                return _Reply(_json(mismatch_of(fmt.schema, seed)))
            return _Reply(_json([{"echo": echoed}]))  # JSON, but not the object JSON mode promises
        if fmt.kind == "json_schema" and fmt.schema is not None:
            structured: str | None = _json(instance_of(fmt.schema, seed))
        elif fmt.kind in {"json_object", "json_schema"}:
            structured = _json({"echo": echoed})
        else:
            structured = None
    except SchemaError as exc:
        raise _BadRequest(f"Invalid schema for '{fmt.param}': {exc}", fmt.param) from None
    if script.output == "invalid_json":
        return _Reply(f"```json\n{structured or _json({'echo': echoed})}\n```")
    text, finish = _cap(structured if structured is not None else f"echo: {echoed}", limit)
    return _Reply(text, finish=finish)


def _chat(body: dict[str, Any], model: str, script: Script) -> dict[str, Any]:
    messages = _required(body, "messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise _BadRequest("Invalid type for 'messages': expected an array of message objects.", "messages")
    prompt = " ".join(_text_of(m.get("content")) for m in messages)
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), messages[-1])
    reply = _reply(
        _text_of(last_user.get("content")),
        prompt,
        body,
        script,
        body.get("max_completion_tokens", body.get("max_tokens")),
    )
    message: dict[str, Any] = {
        "role": "assistant",
        "content": reply.text,
        "refusal": reply.refusal,
        "annotations": [],
    }
    choices: list[dict[str, Any]] = [
        {"index": index, "message": message, "logprobs": None, "finish_reason": reply.finish}
        for index in range(_count(body.get("n")))
    ]
    prompt_tokens, completion_tokens = _tokens(prompt), reply.tokens * len(choices)
    return {
        "id": _stable_id("chatcmpl-", model, prompt),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": _completion_usage(
            prompt_tokens,
            completion_tokens,
            prompt_tokens_details={"cached_tokens": 0, "audio_tokens": 0},
            completion_tokens_details={"reasoning_tokens": 0, "audio_tokens": 0},
        ),
        "service_tier": "default",
        "system_fingerprint": "fp_emulator",
    }


def _completion_usage(prompt_tokens: int, completion_tokens: int, **details: Any) -> dict[str, Any]:
    """The ``usage`` object of chat and legacy completions (``details``: the chat-only breakdowns)."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        **details,
    }


def _count(n: Any) -> int:
    return n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 16 else 1


def _completion(body: dict[str, Any], model: str, script: Script) -> dict[str, Any]:
    prompt_value = _required(body, "prompt")
    prompts = prompt_value if isinstance(prompt_value, list) else [prompt_value]
    prompts = [
        p if isinstance(p, str) else " ".join(map(str, p)) if isinstance(p, list) else str(p) for p in prompts
    ]
    choices: list[dict[str, Any]] = []
    completion_tokens = 0
    for index, prompt in enumerate(prompts):
        reply = _reply(prompt, prompt, body, script, body.get("max_tokens", 16))
        choices.append({"text": reply.text, "index": index, "logprobs": None, "finish_reason": reply.finish})
        completion_tokens += reply.tokens
    prompt_tokens = sum(_tokens(p) for p in prompts)
    return {
        "id": _stable_id("cmpl-", model, prompts),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": _completion_usage(prompt_tokens, completion_tokens),
        "system_fingerprint": "fp_emulator",
    }


def _response(body: dict[str, Any], model: str, script: Script) -> dict[str, Any]:
    given = _required(body, "input")
    if isinstance(given, str):
        prompt = given
    elif isinstance(given, list):
        prompt = " ".join(_text_of(item.get("content")) for item in given if isinstance(item, dict))
    else:
        raise _BadRequest("Invalid type for 'input': expected a string or an array of input items.", "input")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise _BadRequest("Invalid type for 'instructions': expected a string.", "instructions")
    full_prompt = " ".join(filter(None, [instructions or "", prompt]))
    reply = _reply(prompt, full_prompt, body, script, body.get("max_output_tokens"))
    part: dict[str, Any] = (
        {"type": "output_text", "text": reply.text, "annotations": []}
        if reply.refusal is None
        else {"type": "refusal", "refusal": reply.refusal}
    )
    input_tokens, output_tokens = _tokens(full_prompt), reply.tokens
    created = int(time.time())
    return {
        "id": _stable_id("resp_", model, full_prompt),
        "object": "response",
        "created_at": created,
        "status": "completed" if reply.finish == "stop" else "incomplete",
        "incomplete_details": None if reply.finish == "stop" else {"reason": "max_output_tokens"},
        "error": None,
        "instructions": body.get("instructions"),
        "model": model,
        "output": [
            {
                "type": "message",
                "id": _stable_id("msg_", model, full_prompt),
                "status": "completed",
                "role": "assistant",
                "content": [part],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
    }


def _embeddings(body: dict[str, Any], model: str) -> dict[str, Any]:
    given = _required(body, "input")
    if isinstance(given, str) or (isinstance(given, list) and all(isinstance(t, int) for t in given)):
        inputs: list[Any] = [given]
    elif isinstance(given, list):
        inputs = given
    else:
        raise _BadRequest("Invalid type for 'input': expected a string or an array.", "input")
    dimensions = body.get("dimensions") or EMBEDDING_DIMENSIONS.get(model, DEFAULT_EMBEDDING_DIMENSIONS)
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or not 1 <= dimensions <= 3072:
        raise _BadRequest("Invalid 'dimensions': expected an integer between 1 and 3072.", "dimensions")
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    tokens = 0
    for index, item in enumerate(inputs):
        words = [str(t) for t in item] if isinstance(item, list) else _WORD.findall(str(item).lower())
        tokens += len(item) if isinstance(item, list) else _tokens(str(item))
        vector = embed(words, dimensions)
        encoded: Any = (
            base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode() if as_base64 else vector
        )
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


STOP_WORDS = frozenset(
    [
        "the",
        "and",
        "for",
        "are",
        "but",
        "not",
        "you",
        "all",
        "any",
        "can",
        "had",
        "her",
        "was",
        "one",
        "our",
        "out",
        "has",
        "have",
        "his",
        "how",
        "its",
        "may",
        "new",
        "now",
        "see",
        "two",
        "who",
        "did",
        "get",
        "him",
        "let",
        "say",
        "she",
        "too",
        "use",
        "with",
        "from",
        "this",
        "that",
        "they",
        "them",
        "then",
        "than",
        "their",
        "there",
        "what",
        "when",
        "which",
        "will",
        "into",
        "your",
        "about",
        "would",
        "these",
        "other",
        "some",
        "could",
    ]
)


def embed(words: list[str], dimensions: int) -> list[float]:
    """A hashed bag-of-words vector, L2-normalised: texts that share meaningful words point the
    same way, so nearest-neighbour demos give sensible answers while staying fully deterministic."""
    vector = [0.0] * dimensions
    meaningful = [word for word in words if len(word) > 2 and word not in STOP_WORDS]
    for word in meaningful or words or [""]:
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        slot = int.from_bytes(digest[:4], "little") % dimensions
        vector[slot] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [round(v / norm, 6) for v in vector]


def _moderation(body: dict[str, Any], model: str) -> dict[str, Any]:
    given = _required(body, "input")
    inputs = given if isinstance(given, list) else [given]
    results = [
        {
            "flagged": False,
            "categories": dict.fromkeys(MODERATION_CATEGORIES, False),
            "category_scores": dict.fromkeys(MODERATION_CATEGORIES, 0.0),
            "category_applied_input_types": {category: ["text"] for category in MODERATION_CATEGORIES},
        }
        for _ in inputs
    ]
    return {"id": _stable_id("modr-", model, repr(given)), "model": model, "results": results}


def _image(body: dict[str, Any], model: str) -> dict[str, Any]:
    prompt = _required(body, "prompt")
    images = [{"b64_json": TINY_PNG, "revised_prompt": prompt} for _ in range(_count(body.get("n")))]
    tokens = _tokens(str(prompt))
    return {
        "created": int(time.time()),
        "data": images,
        "usage": {
            "input_tokens": tokens,
            "input_tokens_details": {"text_tokens": tokens, "image_tokens": 0},
            "output_tokens": 272 * len(images),
            "total_tokens": tokens + 272 * len(images),
        },
    }


def _video(body: dict[str, Any], model: str) -> dict[str, Any]:
    prompt = _required(body, "prompt")
    return {
        "id": _stable_id("video_", model, prompt),
        "object": "video",
        "model": model,
        "status": "queued",
        "progress": 0,
        "created_at": int(time.time()),
        "seconds": str(body.get("seconds", "4")),
        "size": str(body.get("size", "720x1280")),
    }


_TEXT_BUILDERS = {"/v1/chat/completions": _chat, "/v1/completions": _completion, "/v1/responses": _response}
"""The builders of the endpoints that answer with text, which a directive can script."""
_ECHO_BUILDERS = {
    "/v1/embeddings": _embeddings,
    "/v1/moderations": _moderation,
    "/v1/images/generations": _image,
    "/v1/images/edits": _image,
    "/v1/videos": _video,
}


# Upstream --------------------------------------------------------------------------------------


class UpstreamEngine:
    """Forwards each line to ``base_url`` + the endpoint path, at most ``concurrency`` at once."""

    def __init__(
        self, base_url: str, api_key: str | None, concurrency: int = 8, timeout: float = 600.0
    ) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)
        self._slots = asyncio.Semaphore(max(1, concurrency))

    async def respond_many(self, endpoint: str, bodies: list[dict[str, Any]]) -> list[Response]:
        return list(await asyncio.gather(*(self._respond(endpoint, body) for body in bodies)))

    async def _respond(self, endpoint: str, body: dict[str, Any]) -> Response:
        directed = directive_response(endpoint, body)
        if directed is not None:
            return directed
        path = endpoint.removeprefix("/v1")
        async with self._slots:
            try:
                reply = await self._client.post(path, json=body)
            except Exception as exc:  # any transport failure becomes this line's error
                return 502, error_body(
                    f"The upstream server could not be reached: {type(exc).__name__}.", type="server_error"
                )
        try:
            payload = reply.json()
        except ValueError:
            payload = error_body(
                f"The upstream server answered {reply.status_code} without JSON.", type="server_error"
            )
        if not isinstance(payload, dict):
            payload = {"data": payload}
        return reply.status_code, payload

    async def aclose(self) -> None:
        await self._client.aclose()
