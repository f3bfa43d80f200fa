"""Processing engines: what answers each request line of a batch.

``EchoEngine`` answers locally with deterministic, well-formed bodies for every batch endpoint
(the same input always gives the same output), with token usage, so tests and demos need no key.
``UpstreamEngine`` forwards each line to a real OpenAI-compatible server with bounded
concurrency; an upstream failure becomes an error-file line, never a crashed batch.

Both honour the per-line test directive: a body carrying ``"emulator": {"status_code": 429}``
(optionally ``"message"`` and ``"code"``) is answered with that HTTP error instead of being run.
With ``"times": N`` the error is answered only for the first N runs of the line's ``custom_id``:
the runner, which counts runs, strips a spent directive (:func:`without_spent_directive`) before
the engine sees the body.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import re
import struct
import time
from typing import Any, Protocol

import msgspec

from airflow_provider_batch.emulator.errors import error_body
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


def _directive(body: dict[str, Any]) -> dict[str, Any] | None:
    """The body's test directive: an ``emulator`` object with a 4xx/5xx ``status_code``; anything
    else under ``emulator`` is not a directive and is ignored."""
    directive = body.get("emulator")
    if not isinstance(directive, dict):
        return None
    status = directive.get("status_code")
    if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
        return None
    return directive


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def directive_response(body: dict[str, Any]) -> Response | None:
    """Answer the per-line test directive (``body["emulator"]["status_code"]``), if any.

    A ``times`` that is not a positive integer is answered as a 400 naming ``emulator.times``:
    a typo must not turn "fail twice" into "always fail"."""
    directive = _directive(body)
    if directive is None:
        return None
    if "times" in directive and not _is_positive_int(directive["times"]):
        given = msgspec.json.encode(directive["times"]).decode()[:50]
        return 400, error_body(
            f"Invalid 'emulator.times': expected a positive integer, got {given}.", param="emulator.times"
        )
    status = directive["status_code"]
    if status == 429:
        kind, code = "requests", "rate_limit_exceeded"
    elif status >= 500:
        kind, code = "server_error", None
    else:
        kind, code = "invalid_request_error", None
    message = directive.get("message") or f"Emulated failure with status {status}."
    return status, error_body(str(message), type=kind, code=directive.get("code", code))


def without_spent_directive(body: dict[str, Any], runs_before: int) -> dict[str, Any]:
    """The body to run for a line whose ``custom_id`` already ran ``runs_before`` times: without its
    directive once the directive's ``times`` failures are spent, else unchanged (a directive
    without ``times``, or with an invalid one, is never spent)."""
    directive = _directive(body)
    if directive is None or not _is_positive_int(directive.get("times")) or runs_before < directive["times"]:
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
    directive = directive_response(body)
    if directive is not None:
        return directive
    builder = _ECHO_BUILDERS.get(endpoint)
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


def _answer_text(prompt: str, body: dict[str, Any]) -> str:
    text = body.get("text")  # a Responses ``text`` config object; anything else has no format
    fmt = body.get("response_format") or (text.get("format") if isinstance(text, dict) else None) or {}
    if isinstance(fmt, dict) and fmt.get("type") in {"json_object", "json_schema"}:
        import json

        return json.dumps({"echo": prompt})
    return f"echo: {prompt}"


def _chat(body: dict[str, Any], model: str) -> dict[str, Any]:
    messages = _required(body, "messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise _BadRequest("Invalid type for 'messages': expected an array of message objects.", "messages")
    prompt = " ".join(_text_of(m.get("content")) for m in messages)
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), messages[-1])
    answer, finish = _cap(
        _answer_text(_text_of(last_user.get("content")), body),
        body.get("max_completion_tokens", body.get("max_tokens")),
    )
    choices: list[dict[str, Any]] = [
        {
            "index": index,
            "message": {"role": "assistant", "content": answer, "refusal": None, "annotations": []},
            "logprobs": None,
            "finish_reason": finish,
        }
        for index in range(_count(body.get("n")))
    ]
    prompt_tokens, completion_tokens = _tokens(prompt), _tokens(answer) * len(choices)
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


def _completion(body: dict[str, Any], model: str) -> dict[str, Any]:
    prompt_value = _required(body, "prompt")
    prompts = prompt_value if isinstance(prompt_value, list) else [prompt_value]
    prompts = [
        p if isinstance(p, str) else " ".join(map(str, p)) if isinstance(p, list) else str(p) for p in prompts
    ]
    choices: list[dict[str, Any]] = []
    for index, prompt in enumerate(prompts):
        answer, finish = _cap(f"echo: {prompt}", body.get("max_tokens", 16))
        choices.append({"text": answer, "index": index, "logprobs": None, "finish_reason": finish})
    prompt_tokens = sum(_tokens(p) for p in prompts)
    completion_tokens = sum(_tokens(c["text"]) for c in choices)
    return {
        "id": _stable_id("cmpl-", model, prompts),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": _completion_usage(prompt_tokens, completion_tokens),
        "system_fingerprint": "fp_emulator",
    }


def _response(body: dict[str, Any], model: str) -> dict[str, Any]:
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
    answer, finish = _cap(_answer_text(prompt, body), body.get("max_output_tokens"))
    input_tokens, output_tokens = _tokens(full_prompt), _tokens(answer)
    created = int(time.time())
    return {
        "id": _stable_id("resp_", model, full_prompt),
        "object": "response",
        "created_at": created,
        "status": "completed" if finish == "stop" else "incomplete",
        "incomplete_details": None if finish == "stop" else {"reason": "max_output_tokens"},
        "error": None,
        "instructions": body.get("instructions"),
        "model": model,
        "output": [
            {
                "type": "message",
                "id": _stable_id("msg_", model, full_prompt),
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": answer, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
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


_ECHO_BUILDERS = {
    "/v1/chat/completions": _chat,
    "/v1/completions": _completion,
    "/v1/responses": _response,
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
        directive = directive_response(body)
        if directive is not None:
            return directive
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
