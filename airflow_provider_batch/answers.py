"""The answer in a response body as flat row columns, and structured outputs checked against their schema.

A landed result row carries the endpoint's whole response body, and every downstream task used to dig the
same few values out of it (``body["choices"][0]["message"]["content"]``, the Responses output text, the
embedding vectors...). :func:`answer_row` does that once, per row, while the row writers of
:mod:`~airflow_provider_batch.results` and :mod:`~airflow_provider_batch.rounds` write the file, so every
row carries an :class:`Answer` next to its body.

Speed decides the shape, because a merge writes a million rows in about 30 s:

* a body is decoded **once**, by one ``msgspec`` decoder whose structs declare only the fields an answer
  needs; everything else (logprobs, annotations, Azure's filter results, ids) is skipped by the decoder
  without building Python objects;
* a request line is decoded once for its envelope, and its body looked into only when the line can ask for
  something: a line whose bytes never mention ``response_format`` or ``format`` pays one substring search;
* a JSON Schema is compiled once per distinct schema (by its bytes): the 50,000 lines of a file usually
  share one. ``jsonschema`` needs about a millisecond for a 4 KB answer, so schemas in the Structured
  Outputs subset are also compiled to closures that confirm a valid answer some twenty times faster;
  ``jsonschema`` still judges, and explains, everything they do not confirm.

Structured outputs: when a request asked for a JSON Schema (or ``json_object``), or the caller gives its own
schema, an ``ok`` reply whose text does not parse or does not match is *invalid output*. The row writer then
marks the row failed with :data:`INVALID_OUTPUT` and the short reason, because a reply the next task cannot
use is a failure for the pipeline even though the API call succeeded (and it must reach the failure counts,
not hide among the successes).

The module is pure: no I/O, no Airflow import, and ``pydantic`` only duck-typed, never imported.
"""

from __future__ import annotations

import array
import base64
import binascii
import logging
import re
import sys
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeAlias

import jsonschema
import msgspec
from jsonschema.exceptions import best_match
from referencing.exceptions import Unresolvable

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

log = logging.getLogger(__name__)

INVALID_OUTPUT = "invalid_output"
"""``error_code`` of a row whose request succeeded but whose answer is not the structured output asked for."""
REASON_LIMIT = 200
"""Characters kept of an invalid-output reason: enough for a JSON path and the validator's message."""

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
MODERATIONS = "/v1/moderations"
IMAGE_GENERATIONS = "/v1/images/generations"
IMAGE_EDITS = "/v1/images/edits"

# Longest suffix first: "/chat/completions" also ends with "/completions".
_SUFFIXES = (
    ("/chat/completions", CHAT),
    ("/completions", COMPLETIONS),
    ("/responses", RESPONSES),
    ("/embeddings", EMBEDDINGS),
    ("/moderations", MODERATIONS),
    ("/images/generations", IMAGE_GENERATIONS),
    ("/images/edits", IMAGE_EDITS),
)

UserSchema: TypeAlias = "Mapping[str, Any] | type[Any]"
"""The caller's own contract for structured outputs: a JSON Schema (a dict), or a Pydantic model class
(anything with ``model_json_schema`` and ``model_validate_json``)."""

_NULL = msgspec.Raw(b"null")
_ABSENT = msgspec.Raw(b"")
"""Default of a raw field the JSON did not have (``msgspec.Raw`` cannot be optional in a union)."""


# Public values ----------------------------------------------------------------------------------------------


class ToolCall(msgspec.Struct, kw_only=True):
    """A function the model asked to call; ``arguments`` is the JSON text exactly as the model wrote it."""

    id: str | None
    """The call id to answer with (Chat ``tool_calls[].id``, Responses ``call_id``); None for the legacy
    ``function_call``, which had none."""
    name: str
    arguments: str


class Answer(msgspec.Struct, kw_only=True):
    """What a response body says, flattened into the columns of a result row; a field the endpoint does
    not produce stays None."""

    text: str | None = None
    """Chat: the first choice's message content (text parts joined when it is a list); Responses: the
    ``output_text`` parts of the ``message`` items, concatenated in order (reasoning items ignored);
    completions: the first choice's text."""
    refusal: str | None = None
    """Chat ``message.refusal``; Responses ``refusal`` content parts. A refusal comes instead of the text."""
    finish_reason: str | None = None
    """Chat and completions: the first choice's ``finish_reason``. Responses: ``incomplete_details.reason``
    (``max_output_tokens``, ``content_filter``) when the status is ``incomplete``, else the ``status``
    itself (``completed``, ``failed``...): the API's own words, not translated into Chat's."""
    tool_calls: list[ToolCall] | None = None
    """Function calls, in the order the model made them; None when there are none."""
    parsed: Any | None = None
    """The structured output as JSON-native values, once checked (see :func:`check_output`)."""
    embedding: list[float] | None = None
    """The vector of an embeddings request with a single input (a string, or one token array)."""
    embeddings: list[list[float]] | None = None
    """One vector per input of a multi-input embeddings request, in input order."""
    flagged: bool | None = None
    """Moderations: whether any input was flagged."""
    categories: list[str] | None = None
    """Moderations: the sorted names of the categories flagged for any input."""
    images: list[str] | None = None
    """Images: each image's ``url``, or ``"b64_json:data[<i>]"`` pointing into the body, so a row never
    carries a second copy of megabytes of base64."""
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None


class ExpectedOutput(msgspec.Struct, frozen=True, kw_only=True):
    """The structured output a request asked for."""

    schema: bytes | None = None
    """The JSON Schema exactly as the request wrote it; None for ``json_object`` (any JSON object). Bytes,
    because they are the cache key of the compiled validator."""
    name: str | None = None
    """The schema's ``name`` in the request, for messages."""


class RequestInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a request line tells about its answer, from :func:`read_request`."""

    custom_id: str
    url: str | None
    endpoint: str | None
    """The canonical endpoint (``/v1/chat/completions``...) matched on the url's suffix, so Azure's
    ``/chat/completions`` and ``/openai/deployments/<d>/chat/completions`` count too; None when unknown."""
    body: msgspec.Raw
    """The request body exactly as written, for rows that carry it."""
    expected: ExpectedOutput | None = None
    single_input: bool | None = None
    """Embeddings only: True for one input (a string or a token array), False for a list of inputs."""


class OutputCheck(NamedTuple):
    """The outcome of :func:`check_output`; unpacks as ``parsed, reason``."""

    parsed: Any
    """The structured output as JSON-native values; None when invalid or not checked."""
    reason: str | None
    """Why the output is invalid, at most :data:`REASON_LIMIT` characters; None when it is valid."""


# Wire shapes: only what an answer needs; unknown fields are skipped by the decoder. -------------------------


class _Part(msgspec.Struct):
    """A content part: Chat's ``text``/``refusal`` parts, Responses' ``output_text``/``refusal`` parts."""

    type: str | None = None
    text: str | None = None
    refusal: str | None = None


class _Function(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ChatToolCall(msgspec.Struct):
    id: str | None = None
    type: str | None = None
    function: _Function | None = None


class _Message(msgspec.Struct):
    content: str | list[_Part] | None = None
    refusal: str | None = None
    tool_calls: list[_ChatToolCall] | None = None
    function_call: _Function | None = None


class _Choice(msgspec.Struct):
    """A Chat choice (``message``) or a legacy completions choice (``text``)."""

    message: _Message | None = None
    text: str | None = None
    finish_reason: str | None = None


class _OutputItem(msgspec.Struct):
    """A Responses output item: ``message``, ``function_call``, ``reasoning``, tool-call items..."""

    type: str | None = None
    content: list[_Part] | str | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None


class _Incomplete(msgspec.Struct):
    reason: str | None = None


class _DataItem(msgspec.Struct):
    """An embeddings ``data`` item or an images ``data`` item."""

    index: int | None = None
    embedding: list[float] | str | None = None
    url: str | None = None
    b64_json: msgspec.Raw = _ABSENT
    """Raw, so megabytes of base64 are skipped over instead of copied into a string nobody reads."""


class _Moderation(msgspec.Struct):
    flagged: bool | None = None
    categories: dict[str, bool | None] | None = None


class _TokenDetails(msgspec.Struct):
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None


class _Usage(msgspec.Struct):
    """Both usage shapes: chat/completions/embeddings (``prompt_*`` and ``completion_*``) and
    Responses/images (``input_*`` and ``output_*``). The one reading of usage in the package: rows and
    summaries (:mod:`~airflow_provider_batch.results`) both count through :func:`token_counts`."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    prompt_tokens_details: _TokenDetails | None = None
    completion_tokens_details: _TokenDetails | None = None
    input_tokens_details: _TokenDetails | None = None
    output_tokens_details: _TokenDetails | None = None


class _Body(msgspec.Struct):
    """Every endpoint's answer fields in one struct: their names do not collide, and one decoder means one
    decode whatever the endpoint, including when the endpoint is unknown and told by the body's shape."""

    object: str | None = None
    choices: list[_Choice] | None = None
    status: str | None = None
    incomplete_details: _Incomplete | None = None
    output: list[_OutputItem] | None = None
    data: list[_DataItem] | None = None
    results: list[_Moderation] | None = None
    usage: _Usage | None = None


class _UsageOnly(msgspec.Struct):
    usage: _Usage | None = None


class _RequestLine(msgspec.Struct):
    custom_id: str
    url: str | None = None
    body: msgspec.Raw = _NULL


class _SchemaSpec(msgspec.Struct):
    """Chat's ``response_format.json_schema``."""

    name: str | None = None
    schema: msgspec.Raw = _ABSENT


class _Format(msgspec.Struct):
    """Chat's ``response_format`` or Responses' ``text.format`` (which has ``name``/``schema`` inline)."""

    type: str | None = None
    json_schema: _SchemaSpec | None = None
    name: str | None = None
    schema: msgspec.Raw = _ABSENT


class _TextConfig(msgspec.Struct):
    format: _Format | None = None


class _ChatRequest(msgspec.Struct):
    response_format: _Format | None = None


class _ResponsesRequest(msgspec.Struct):
    text: _TextConfig | None = None


class _EmbeddingsRequest(msgspec.Struct):
    input: msgspec.Raw = _ABSENT


_BODY_DECODER = msgspec.json.Decoder(_Body)
_USAGE_DECODER = msgspec.json.Decoder(_UsageOnly)
_LINE_DECODER = msgspec.json.Decoder(_RequestLine)
_CHAT_REQUEST_DECODER = msgspec.json.Decoder(_ChatRequest)
_RESPONSES_REQUEST_DECODER = msgspec.json.Decoder(_ResponsesRequest)
_EMBEDDINGS_REQUEST_DECODER = msgspec.json.Decoder(_EmbeddingsRequest)
_ANY_DECODER = msgspec.json.Decoder()


# Public functions -------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def endpoint_of(url: str | None) -> str | None:
    """The canonical endpoint a request url names, by its suffix; None when it names none we know.

    Cached: a file's lines all carry the same url, so each row pays one dictionary lookup.
    """
    if not url:
        return None
    path = url.split("?", 1)[0].rstrip("/")
    for suffix, endpoint in _SUFFIXES:
        if path.endswith(suffix):
            return endpoint
    return None


def read_request(raw_line: bytes) -> RequestInfo:
    """Read what a request (input) line says about its answer: ids, endpoint, schema, embedding inputs.

    The line is decoded once, with the body kept raw. Only a line that can ask for something is looked into
    again, and only its body's one relevant field: a chat line that mentions ``"response_format"``, a
    Responses line that mentions ``"format"``, an embeddings line (for the shape of its ``input``). The
    substring test is exact for JSON written by any serializer (a key spelled with ``\\u`` escapes would be
    missed; nobody writes those).

    :raises msgspec.DecodeError: the line is not JSON or has no string ``custom_id``, the same contract as
        the input decoding of :mod:`~airflow_provider_batch.results`, so callers keep their malformed-line
        handling. An odd body never raises: it just asks for nothing.
    """
    line = _LINE_DECODER.decode(raw_line)
    endpoint = endpoint_of(line.url)
    expected: ExpectedOutput | None = None
    single_input: bool | None = None
    try:
        if endpoint == CHAT and b'"response_format"' in raw_line:
            expected = _expected(_CHAT_REQUEST_DECODER.decode(line.body).response_format)
        elif endpoint == RESPONSES and b'"format"' in raw_line:
            text = _RESPONSES_REQUEST_DECODER.decode(line.body).text
            expected = _expected(text.format if text is not None else None)
        elif endpoint == EMBEDDINGS:
            single_input = _single_input(_EMBEDDINGS_REQUEST_DECODER.decode(line.body).input)
    except msgspec.DecodeError:  # a body the API rejects anyway; its result line is an error
        pass
    return RequestInfo(
        custom_id=line.custom_id,
        url=line.url,
        endpoint=endpoint,
        body=line.body,
        expected=expected,
        single_input=single_input,
    )


def extract_answer(
    body: msgspec.Raw | bytes, endpoint: str | None = None, *, single_input: bool | None = None
) -> Answer:
    """Read the answer out of a successful response body, in one decode.

    :param endpoint: the canonical endpoint (see :func:`endpoint_of`); when None, the body's shape tells
        (``object``, then which fields it has).
    :param single_input: for embeddings, whether the request had a single input; when None, one vector
        means a single input.

    Never raises: a body that is not an object, or whose fields have unexpected types, gives an empty
    :class:`Answer` (with its token counts when its ``usage`` is readable).
    """
    try:
        wire = _BODY_DECODER.decode(body)
    except msgspec.DecodeError:
        return token_counts(body)
    kind = endpoint or _sniff(wire)
    read = _READERS.get(kind) if kind is not None else None
    answer = read(wire, single_input) if read is not None else Answer()
    if wire.usage is not None:
        _add_usage(answer, wire.usage)
    return answer


def check_output(
    answer: Answer, expected: ExpectedOutput | None, *, user_schema: UserSchema | None = None
) -> OutputCheck:
    """Check the answer's text against the structured output asked for.

    ``user_schema`` replaces the request's schema: it is the caller's own contract, often the Pydantic model
    the request's schema was generated from, whose validators only it can run. A dict is validated with
    ``jsonschema``; a Pydantic class with its own ``model_validate_json``, the parsed value then being its
    ``model_dump(mode="json")``. ``json_object`` accepts any JSON object.

    Nothing asked: ``(None, None)``. An answer without text is invalid when it refused or has nothing at
    all; one that called tools instead of answering is not checked (its answer comes in a later turn).
    A request schema that ``jsonschema`` cannot use (the API accepted it, so this is our limit, not the
    model's fault) only checks that the text parses, with a warning logged once per schema.

    :raises ValueError: ``user_schema`` is a dict that is not a valid JSON Schema.
    :raises TypeError: ``user_schema`` is neither a dict nor a Pydantic-like class.
    """
    if user_schema is not None:
        checker = _user_checker(user_schema)
    elif expected is not None:
        checker = _schema_checker(expected.schema) if expected.schema is not None else _JSON_OBJECT
    else:
        return OutputCheck(None, None)
    if answer.text is None:
        if answer.refusal is not None:
            return OutputCheck(None, _bounded(f"refused: {answer.refusal}"))
        if answer.tool_calls:
            return OutputCheck(None, None)
        return OutputCheck(None, "no text to check: the reply has no output text")
    return checker.check(answer.text)


def check_user_schema(user_schema: UserSchema) -> None:
    """Fail now when ``user_schema`` cannot be used, e.g. when an operator is built: a bad schema found at
    landing time would cost the whole batch's wait. Compiles (and caches) it as the row writers will.

    :raises ValueError: a dict that is not a valid JSON Schema.
    :raises TypeError: neither a dict nor a Pydantic-like model class.
    """
    _user_checker(user_schema)


def answer_row(
    request: RequestInfo | None,
    ok: bool,
    body: msgspec.Raw | bytes,
    *,
    user_schema: UserSchema | None = None,
) -> tuple[Answer, str | None]:
    """The answer columns of one result row, and why an ``ok`` reply is invalid output (else None).

    The row writers call this once per row. When a reason comes back, the row becomes ``ok: false,
    error_code: INVALID_OUTPUT, error_message: reason``; its answer keeps the text, so the bad output can
    still be read. A failed line (``ok`` false) gets its token counts only: an error body has no answer.

    :param request: from :func:`read_request` on the row's input line; None when unknown (the endpoint is
        then told by the body's shape, and only ``user_schema`` is checked).
    :param user_schema: see :func:`check_output`; pass the same object for every row (its compiled form is
        cached by identity, so it must not be mutated in between).
    """
    if not ok:
        return token_counts(body), None
    if request is None:
        answer = extract_answer(body)
        expected = None
    else:
        answer = extract_answer(body, request.endpoint, single_input=request.single_input)
        expected = request.expected
    if expected is None and user_schema is None:
        return answer, None
    parsed, reason = check_output(answer, expected, user_schema=user_schema)
    answer.parsed = parsed
    return answer, reason


# Reading bodies ---------------------------------------------------------------------------------------------


def token_counts(body: msgspec.Raw | bytes) -> Answer:
    """Only the token counts of a response body, in an otherwise empty :class:`Answer`: what a failed
    line carries, and what a summary adds up. Never raises; a body without a readable ``usage`` has
    none."""
    answer = Answer()
    if _is_null(body):  # expired and cancelled lines: no body at all; skip the decoder's exception
        return answer
    try:
        usage = _USAGE_DECODER.decode(body).usage
    except msgspec.DecodeError:
        return answer
    if usage is not None:
        _add_usage(answer, usage)
    return answer


def _add_usage(answer: Answer, usage: _Usage) -> None:
    answer.input_tokens = usage.input_tokens if usage.input_tokens is not None else usage.prompt_tokens
    answer.output_tokens = usage.output_tokens if usage.output_tokens is not None else usage.completion_tokens
    details_in = usage.input_tokens_details or usage.prompt_tokens_details
    details_out = usage.output_tokens_details or usage.completion_tokens_details
    if details_in is not None:
        answer.cached_tokens = details_in.cached_tokens
    if details_out is not None:
        answer.reasoning_tokens = details_out.reasoning_tokens


def _sniff(wire: _Body) -> str | None:
    """The endpoint a body came from, by its ``object`` and then by which answer fields it has."""
    known = _OBJECTS.get(wire.object) if wire.object is not None else None
    if known is not None:
        return known
    if wire.choices:
        return CHAT if wire.choices[0].message is not None else COMPLETIONS
    if wire.output is not None:
        return RESPONSES
    if wire.results is not None:
        return MODERATIONS
    if wire.data:
        first = wire.data[0]
        return EMBEDDINGS if first.embedding is not None else IMAGE_GENERATIONS
    return None


_OBJECTS = {"chat.completion": CHAT, "text_completion": COMPLETIONS, "response": RESPONSES}


def _chat(wire: _Body, single_input: bool | None) -> Answer:
    if not wire.choices:
        return Answer()
    choice = wire.choices[0]
    message = choice.message
    if message is None:
        return Answer(finish_reason=choice.finish_reason)
    text: str | None
    refusal = message.refusal
    if isinstance(message.content, list):
        texts = [part.text for part in message.content if part.text is not None]
        text = "".join(texts) if texts else None
        refusals = [part.refusal for part in message.content if part.refusal is not None]
        if refusal is None and refusals:
            refusal = "".join(refusals)
    else:
        text = message.content
    calls = [
        ToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments or "")
        for call in message.tool_calls or ()
        if call.type in ("function", None) and call.function is not None and call.function.name is not None
    ]
    legacy = message.function_call
    if legacy is not None and legacy.name is not None:
        calls.append(ToolCall(id=None, name=legacy.name, arguments=legacy.arguments or ""))
    return Answer(text=text, refusal=refusal, finish_reason=choice.finish_reason, tool_calls=calls or None)


def _completion(wire: _Body, single_input: bool | None) -> Answer:
    if not wire.choices:
        return Answer()
    choice = wire.choices[0]
    return Answer(text=choice.text, finish_reason=choice.finish_reason)


def _response(wire: _Body, single_input: bool | None) -> Answer:
    texts: list[str] = []
    refusals: list[str] = []
    calls: list[ToolCall] = []
    for item in wire.output or ():
        if item.type == "message" and isinstance(item.content, list):
            for part in item.content:
                if part.type == "output_text" and part.text is not None:
                    texts.append(part.text)
                elif part.type == "refusal" and part.refusal is not None:
                    refusals.append(part.refusal)
        elif item.type == "function_call" and item.name is not None:
            calls.append(ToolCall(id=item.call_id, name=item.name, arguments=item.arguments or ""))
    finish: str | None
    if wire.status == "incomplete":
        details = wire.incomplete_details
        finish = details.reason if details is not None and details.reason else wire.status
    else:
        finish = wire.status
    return Answer(
        text="".join(texts) if texts else None,
        refusal="".join(refusals) if refusals else None,
        finish_reason=finish,
        tool_calls=calls or None,
    )


def _embeddings(wire: _Body, single_input: bool | None) -> Answer:
    items = wire.data
    if not items:
        return Answer()
    if len(items) > 1:
        # Input order: OpenAI writes data in index order, but nothing promises it.
        items = sorted(items, key=lambda item: item.index if item.index is not None else 0)
    vectors: list[list[float]] = []
    for item in items:
        vector = _vector(item.embedding)
        if vector is None:  # one unreadable vector would shift every later one: give none
            return Answer()
        vectors.append(vector)
    one = single_input if single_input is not None else len(vectors) == 1
    return Answer(embedding=vectors[0]) if one else Answer(embeddings=vectors)


def _vector(value: list[float] | str | None) -> list[float] | None:
    """A vector as floats: a JSON array as is, or ``encoding_format: "base64"`` (little-endian float32)."""
    if value is None or isinstance(value, list):
        return value
    try:
        packed = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(packed) % 4:
        return None
    floats = array.array("f")
    floats.frombytes(packed)
    if sys.byteorder == "big":
        floats.byteswap()
    return floats.tolist()


def _moderation(wire: _Body, single_input: bool | None) -> Answer:
    if wire.results is None:
        return Answer()
    flagged = any(result.flagged for result in wire.results)
    names = {name for result in wire.results for name, hit in (result.categories or {}).items() if hit}
    return Answer(flagged=flagged, categories=sorted(names))


def _images(wire: _Body, single_input: bool | None) -> Answer:
    if wire.data is None:
        return Answer()
    images = [
        item.url if item.url is not None else f"b64_json:data[{index}]"
        for index, item in enumerate(wire.data)
        if item.url is not None or not _is_null(item.b64_json)
    ]
    return Answer(images=images)


_READERS: dict[str, Callable[[_Body, bool | None], Answer]] = {
    CHAT: _chat,
    COMPLETIONS: _completion,
    RESPONSES: _response,
    EMBEDDINGS: _embeddings,
    MODERATIONS: _moderation,
    IMAGE_GENERATIONS: _images,
    IMAGE_EDITS: _images,
}


def _is_null(raw: msgspec.Raw | bytes) -> bool:
    """Whether a raw value is absent or JSON ``null`` (``Raw`` compares equal only to another ``Raw``)."""
    return len(raw) == 0 or (len(raw) == 4 and bytes(raw) == b"null")


# Reading requests -------------------------------------------------------------------------------------------


def _expected(fmt: _Format | None) -> ExpectedOutput | None:
    """Chat's ``{"type": "json_schema", "json_schema": {"schema": ...}}`` or Responses'
    ``{"type": "json_schema", "schema": ...}``; ``json_object`` asks for any object, ``text`` for nothing."""
    if fmt is None:
        return None
    if fmt.type == "json_object":
        return ExpectedOutput()
    if fmt.type != "json_schema":
        return None
    spec = fmt.json_schema
    schema, name = (spec.schema, spec.name) if spec is not None else (fmt.schema, fmt.name)
    if _is_null(schema):  # no schema given: what the API still promises is an object
        return ExpectedOutput(name=name)
    return ExpectedOutput(schema=bytes(schema), name=name)


def _single_input(value: msgspec.Raw) -> bool | None:
    """Whether an embeddings ``input`` is one input, from its first bytes (no decode of the inputs): a
    string or a token array (a list of integers) is one; a list of strings or token arrays is several."""
    view = memoryview(value)
    if not len(view):
        return None
    first = view[0]
    if first == ord('"'):
        return True
    if first != ord("["):
        return None
    for byte in view[1:]:
        if byte in b" \t\r\n":
            continue
        return byte in b"-0123456789"  # a number starts a token array; '"', '[' or ']' start a list
    return None


# Checking structured outputs --------------------------------------------------------------------------------


class _Checker(Protocol):
    def check(self, text: str) -> OutputCheck: ...


def _bounded(reason: str) -> str:
    return reason if len(reason) <= REASON_LIMIT else reason[: REASON_LIMIT - 3] + "..."


def _parse(text: str) -> tuple[Any, str | None]:
    try:
        return _ANY_DECODER.decode(text), None
    except msgspec.DecodeError as exc:
        return None, _bounded(f"does not parse as JSON: {exc}")


def _mismatch(path: str, message: str) -> OutputCheck:
    return OutputCheck(None, _mismatch_reason(path, message))


def _mismatch_reason(path: str, message: str) -> str:
    return _bounded(f"does not match the schema: {path}: {message}")


class _JsonObjectChecker:
    """``json_object``: the text must parse, to an object."""

    def check(self, text: str) -> OutputCheck:
        value, reason = _parse(text)
        if reason is not None:
            return OutputCheck(None, reason)
        if not isinstance(value, dict):
            return _mismatch("$", f"expected a JSON object, got {_json_type(value)}")
        return OutputCheck(value, None)


class _ParseOnlyChecker:
    """A request schema ``jsonschema`` cannot use: the text must still parse."""

    def check(self, text: str) -> OutputCheck:
        value, reason = _parse(text)
        return OutputCheck(value if reason is None else None, reason)


class _JsonSchemaChecker:
    """A compiled JSON Schema; the text must parse and match.

    ``jsonschema`` walks a schema in Python with a generator per keyword: about a millisecond for a 4 KB
    answer, thirty times what the rest of a row costs. So a schema in the subset Structured Outputs use is
    also compiled to plain closures (:func:`_fast_validator`) that can only say "valid" when ``jsonschema``
    would; they answer for the usual valid output, and ``jsonschema`` has the last word on anything else
    (and writes the message).
    """

    def __init__(self, validator: Validator) -> None:
        self._validator: Validator | None = validator
        self._fast = _fast_validator(validator.schema)

    def check(self, text: str) -> OutputCheck:
        value, reason = _parse(text)
        if reason is not None:
            return OutputCheck(None, reason)
        if self._validator is None or (self._fast is not None and self._fast(value)):
            return OutputCheck(value, None)
        try:
            error = best_match(self._validator.iter_errors(value))
        except Unresolvable as exc:  # a $ref we cannot resolve (we never fetch): from now on, parse only
            _warn_unusable(exc)
            self._validator = None
            return OutputCheck(value, None)
        if error is None:
            return OutputCheck(value, None)
        return _mismatch(error.json_path, error.message)


class _PydanticChecker:
    """A Pydantic model class, validating with its own ``model_validate_json`` so its validators run."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def check(self, text: str) -> OutputCheck:
        try:
            instance = self._model.model_validate_json(text)
        except ValueError as exc:  # pydantic.ValidationError is a ValueError
            return OutputCheck(None, _pydantic_reason(exc))
        return OutputCheck(instance.model_dump(mode="json"), None)


def _pydantic_reason(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    details: list[dict[str, Any]] = errors() if callable(errors) else []
    if not details:
        return _bounded(f"does not match the schema: $: {exc}")
    first = details[0]
    message = str(first.get("msg", ""))
    if first.get("type") == "json_invalid":
        return _bounded(f"does not parse as JSON: {message}")
    return _mismatch_reason(_json_path(first.get("loc", ())), message)


def _json_path(location: tuple[str | int, ...]) -> str:
    """Pydantic's error location as the JSON path ``jsonschema`` reports (``$.items[0].name``)."""
    return "$" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in location)


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null"


_JSON_OBJECT = _JsonObjectChecker()
_PARSE_ONLY = _ParseOnlyChecker()


@lru_cache(maxsize=256)
def _schema_checker(schema: bytes) -> _Checker:
    """The compiled checker of one schema, by its bytes: 50,000 lines usually share one schema, and
    building a validator costs far more than using it. Bounded, since a file may give every line its own."""
    try:
        document = msgspec.json.decode(schema)
        validator_class = jsonschema.validators.validator_for(
            document, default=jsonschema.Draft202012Validator
        )
        validator_class.check_schema(document)
        return _JsonSchemaChecker(validator_class(document))
    except (msgspec.DecodeError, jsonschema.SchemaError, Unresolvable) as exc:
        _warn_unusable(exc)
        return _PARSE_ONLY


def _warn_unusable(exc: Exception) -> None:
    log.warning(
        "A request's JSON Schema cannot be checked here, so answers are only parsed: %s",
        str(exc)[:REASON_LIMIT],
    )


# A fast path for the common schemas ------------------------------------------------------------------------

_Valid: TypeAlias = Callable[[Any], bool]


class _Unsupported(Exception):
    """A schema (or a part of it) outside what :func:`_fast_validator` compiles exactly."""


_ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$comment", "$schema", "$defs", "definitions", "format"}
)
"""Keywords that assert nothing (``format`` included: validators are built without a format checker)."""
_COMPILED = frozenset(
    {
        "type",
        "enum",
        "const",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minItems",
        "maxItems",
    }
    | {"minLength", "maxLength", "pattern", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}
    | {"anyOf", "allOf", "$ref"}
)
_TYPES: dict[str, frozenset[type]] = {
    "object": frozenset({dict}),
    "array": frozenset({list}),
    "string": frozenset({str}),
    "integer": frozenset({int}),
    "number": frozenset({int, float}),
    "boolean": frozenset({bool}),
    "null": frozenset({type(None)}),
}
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _fast_validator(schema: Any) -> _Valid | None:
    """Compile ``schema`` to closures that return True only for instances ``jsonschema`` finds valid; None
    when the schema uses anything else.

    Soundness is the one rule: a closure may say False for a valid instance (``jsonschema`` then decides),
    never True for an invalid one. Hence exact types, as ``msgspec`` builds them (``2.0`` is not taken for
    an integer here, and ``True`` is not ``1``), and no ``oneOf`` or ``not``, where a False from a part
    could turn into a wrong True. Covered: the keywords of the Structured Outputs subset, local ``$ref``
    (recursion included), and the annotations. Any other keyword, ``$id`` among them, declines the schema.
    """
    compiled: dict[str, _Valid] = {}

    def resolve(ref: Any) -> _Valid:
        if not isinstance(ref, str):
            raise _Unsupported
        if ref not in compiled:
            # Registered before it is built, so a reference met again from inside (recursion) finds it.
            compiled[ref] = lambda value: built(value)
            built = build(_ref_target(schema, ref))
            compiled[ref] = built
        return compiled[ref]

    def build(node: Any) -> _Valid:
        if node is True:
            return _always
        if node is False:
            return _never
        if not isinstance(node, dict) or not node.keys() <= _COMPILED | _ANNOTATIONS:
            raise _Unsupported
        checks = _keyword_checks(node, build, resolve)
        if not checks:
            return _always
        if len(checks) == 1:
            return checks[0]
        if len(checks) == 2:  # the usual node ("type" and one more): no generator to drive
            first, second = checks
            return lambda value: first(value) and second(value)
        return lambda value: all(check(value) for check in checks)

    try:
        return build(schema)
    except (_Unsupported, re.error, RecursionError):
        return None


def _keyword_checks(
    node: dict[str, Any], build: Callable[[Any], _Valid], resolve: Callable[[Any], _Valid]
) -> list[_Valid]:
    """One check per keyword the node has; a keyword only constrains instances of its own JSON type."""
    checks: list[_Valid] = []
    if "type" in node:
        names = [node["type"]] if isinstance(node["type"], str) else node["type"]
        if not isinstance(names, list) or not all(isinstance(n, str) and n in _TYPES for n in names):
            raise _Unsupported
        checks.append(_type_check(frozenset().union(*(_TYPES[name] for name in names))))
    if "enum" in node:
        checks.append(_one_of_values(node["enum"]))
    if "const" in node:
        checks.append(_one_of_values([node["const"]]))
    if node.keys() & {"properties", "required", "additionalProperties"}:
        checks.append(_object_check(node, build))
    if "items" in node:
        if not isinstance(node["items"], dict | bool):
            raise _Unsupported  # the tuple form of older drafts
        checks.append(_items_check(build(node["items"])))
    for keyword in node.keys() & _BOUNDS.keys():
        if type(node[keyword]) not in _NUMBERS:
            raise _Unsupported  # draft 4's boolean exclusive bounds among them
        checks.append(_bound_check(keyword, node[keyword]))
    if "pattern" in node:
        if not isinstance(node["pattern"], str):
            raise _Unsupported
        checks.append(_pattern_check(re.compile(node["pattern"])))
    for keyword in ("anyOf", "allOf"):
        if keyword in node:
            if not isinstance(node[keyword], list) or not node[keyword]:
                raise _Unsupported
            checks.append(
                _combined([build(part) for part in node[keyword]], any if keyword == "anyOf" else all)
            )
    if "$ref" in node:
        checks.append(resolve(node["$ref"]))
    return checks


def _type_check(allowed: frozenset[type]) -> _Valid:
    if len(allowed) == 1:
        (only,) = allowed
        return lambda value: type(value) is only
    return lambda value: type(value) in allowed


def _one_of_values(options: Any) -> _Valid:
    """``enum``/``const`` over scalars, compared with their JSON type (Python has ``True == 1``)."""
    if not isinstance(options, list) or not all(type(option) in _SCALARS for option in options):
        raise _Unsupported
    keys = frozenset((type(option), option) for option in options)
    return lambda value: type(value) in _SCALARS and (type(value), value) in keys


def _items_check(item: _Valid) -> _Valid:
    return lambda value: type(value) is not list or all(map(item, value))


def _bound_check(keyword: str, bound: float) -> _Valid:
    holds, kinds = _BOUNDS[keyword]
    return lambda value: type(value) not in kinds or holds(value, bound)


def _pattern_check(pattern: re.Pattern[str]) -> _Valid:
    return lambda value: type(value) is not str or pattern.search(value) is not None


def _combined(parts: list[_Valid], quantifier: Callable[[Any], bool]) -> _Valid:
    return lambda value: quantifier(part(value) for part in parts)


def _object_check(node: dict[str, Any], build: Callable[[Any], _Valid]) -> _Valid:
    properties = node.get("properties", {})
    required = node.get("required", [])
    extra = node.get("additionalProperties", True)
    if not isinstance(properties, dict) or not isinstance(required, list):
        raise _Unsupported
    if not all(isinstance(name, str) for name in required):
        raise _Unsupported
    compiled = {name: build(sub) for name, sub in properties.items()}
    closed = extra is False
    extra_check = None if extra is True or closed else build(extra)

    def check(value: Any) -> bool:
        if type(value) is not dict:
            return True
        for name in required:
            if name not in value:
                return False
        for name, entry in value.items():
            sub = compiled.get(name)
            if sub is not None:
                if not sub(entry):
                    return False
            elif closed or (extra_check is not None and not extra_check(entry)):
                return False
        return True

    return check


_NUMBERS = frozenset({int, float})
_BOUNDS: dict[str, tuple[Callable[[Any, Any], bool], frozenset[type]]] = {
    "minimum": (lambda value, bound: value >= bound, _NUMBERS),
    "maximum": (lambda value, bound: value <= bound, _NUMBERS),
    "exclusiveMinimum": (lambda value, bound: value > bound, _NUMBERS),
    "exclusiveMaximum": (lambda value, bound: value < bound, _NUMBERS),
    "minLength": (lambda value, bound: len(value) >= bound, frozenset({str})),
    "maxLength": (lambda value, bound: len(value) <= bound, frozenset({str})),
    "minItems": (lambda value, bound: len(value) >= bound, frozenset({list})),
    "maxItems": (lambda value, bound: len(value) <= bound, frozenset({list})),
}
"""Keyword: (whether a value of the constrained types holds against the bound, those types)."""


def _ref_target(root: Any, ref: str) -> Any:
    """The node a local reference names: ``#``, ``#/$defs/<name>`` or ``#/definitions/<name>``."""
    if ref == "#":
        return root
    section, _, name = ref.removeprefix("#/").partition("/")
    if (
        not ref.startswith("#/")
        or section not in ("$defs", "definitions")
        or not name
        or set(name) & set("/~%")
    ):
        raise _Unsupported
    definitions = root.get(section) if isinstance(root, dict) else None
    if not isinstance(definitions, dict) or name not in definitions:
        raise _Unsupported
    return definitions[name]


def _always(value: Any) -> bool:
    return True


def _never(value: Any) -> bool:
    return False


_USER_CHECKERS: dict[int, tuple[object, _Checker]] = {}
_USER_CHECKER_LIMIT = 32


def _user_checker(user_schema: UserSchema) -> _Checker:
    """The checker of the caller's schema, cached by identity: the row writers pass one object for a whole
    file, and re-encoding a dict per row to find its bytes would cost more than the lookup saves. The entry
    keeps the object alive, so its id cannot be reused by another object."""
    entry = _USER_CHECKERS.get(id(user_schema))
    if entry is not None and entry[0] is user_schema:
        return entry[1]
    checker = _compile_user_schema(user_schema)
    if len(_USER_CHECKERS) >= _USER_CHECKER_LIMIT:
        _USER_CHECKERS.clear()
    _USER_CHECKERS[id(user_schema)] = (user_schema, checker)
    return checker


def _compile_user_schema(user_schema: UserSchema) -> _Checker:
    if isinstance(user_schema, type):
        if hasattr(user_schema, "model_json_schema") and hasattr(user_schema, "model_validate_json"):
            return _PydanticChecker(user_schema)
    elif isinstance(user_schema, Mapping):
        document = dict(user_schema)
        validator_class = jsonschema.validators.validator_for(
            document, default=jsonschema.Draft202012Validator
        )
        try:
            validator_class.check_schema(document)
        except jsonschema.SchemaError as exc:  # the caller's own mistake: say so at once, not once per row
            raise ValueError(f"not a valid JSON Schema: {exc.message}"[:REASON_LIMIT]) from None
        return _schema_checker(msgspec.json.encode(document))
    raise TypeError(
        f"user_schema must be a JSON Schema dict or a Pydantic model class, got {user_schema!r:.100}"
    )
