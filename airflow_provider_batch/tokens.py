"""Token estimates for batch requests, offline: the input tokens a request line enqueues, and at most how
many output tokens it may produce.

OpenAI's enqueued-token limit counts the input tokens of every batch in flight, per model, and a batch over
it fails minutes after it was created (``token_limit_exceeded``); prices are per token. Counting before
upload lets a job wait for room, refuse a cost cap, and log an estimate. The count runs in the validation
pass, once per line, so it is built to be cheap:

- **Tokenizer.** ``splintr-rs``, whose wheels bundle OpenAI's ``o200k_base`` and ``cl100k_base``
  vocabularies, so nothing is downloaded at run time (``tiktoken`` downloads its vocabulary on first use).
  Its bundled ranks are byte-identical to OpenAI's published files, and its ids match ``tiktoken``'s on a
  varied corpus: ``benchmarks/tokenizer_parity.py`` re-checks both. Each encoding is loaded once per
  process, on first use; importing this module loads nothing.
- **Which encoding.** :func:`encoding_for_model`: ``o200k_base`` for the gpt-4o, gpt-4.1, gpt-4.5, gpt-5
  and o-series families, ``cl100k_base`` for gpt-4, gpt-3.5 and the text-embedding-3 / ada-002
  embeddings (the table ``tiktoken`` 0.14.0 ships in ``tiktoken/model.py``). Fine-tuned models
  (``ft:gpt-4o-mini:org::id``) use their base model's. Any other name, an Azure deployment name for
  instance, is counted with ``o200k_base`` (the encoding of every OpenAI model since 2024) and the
  estimate is marked approximate.
- **What a request costs**, by endpoint (:func:`estimate_request`):

  * ``/v1/chat/completions``: the OpenAI cookbook's rule ("How to count tokens with tiktoken",
    ``num_tokens_from_messages``): per message, 3 tokens plus the tokens of each of its string values
    (``role`` and ``content``, and ``name``, which adds 1 more, ``tool_call_id``...), then 3 for priming
    the reply. A ``content`` list counts the text of its text parts, and bounds each image part by
    :data:`IMAGE_PART_TOKENS`.
  * ``/v1/responses``: the same rule over ``input`` (a string is one user message; the items of a list are
    messages, other items such as ``function_call_output`` count their string fields the same way), with
    ``instructions`` counted as one more (developer) message; item tags (``type``, ``id``, ``status``) are
    not text and are not counted.
  * ``/v1/completions``: the tokens of ``prompt`` (a string, a list of strings, or token arrays, which
    count their length).
  * ``/v1/embeddings`` and ``/v1/moderations``: the tokens of ``input`` (a string, a list of strings,
    token arrays, or moderation parts: text counted, images bounded).
  * Tool and function definitions, and a JSON-schema ``response_format`` (chat) or ``text.format``
    (responses), count as the tokens of their compact JSON. OpenAI renders them differently, so the
    estimate is marked approximate; so is any request with an image, audio or file part, or a shape the
    rules do not know (counted as nothing). Image and video endpoints are not counted (0, approximate).
- **Output bound**: ``max_completion_tokens`` (else ``max_tokens``) times ``n`` for chat,
  ``max_output_tokens`` for responses, ``max_tokens`` (16 when unset, the API's default) times
  ``max(n, best_of)`` times the number of prompts for completions, and 0 for embeddings and moderations,
  which produce no tokens. Reasoning tokens are part of these caps, so the bound holds for reasoning
  models too. ``None`` when a chat or responses request sets no cap.

:class:`TokenTally` adds the estimates of a file up per model, for the validation pass to fill line by
line. The module does no I/O and keeps no state but the loaded encoders and their memo of recent strings.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any, Final

import msgspec

O200K_BASE: Final = "o200k_base"
CL100K_BASE: Final = "cl100k_base"

TOKENS_PER_MESSAGE: Final = 3
"""Framing of every chat message (cookbook: ``<|start|>{role}<|message|>...<|end|>``)."""

TOKENS_PER_NAME: Final = 1
"""Added by a message's ``name`` on top of the name's own tokens (cookbook)."""

REPLY_PRIMING: Final = 3
"""Every reply is primed with ``<|start|>assistant<|message|>`` (cookbook)."""

IMAGE_PART_TOKENS: Final = 1_536
"""The bound counted for one image part, whatever its size or ``detail``: the most that OpenAI's image
token rules give to one image in the models this provider targets (OpenAI vision guide, "Calculating
costs", as published in 2025): 1,445 for a high-detail image in the gpt-4o, gpt-4.1 and o1/o3 tile
rule (85 + 170 per 512-pixel tile, at most 8 tiles), and the 1,536-patch cap of the patch rule of
gpt-4.1-mini/nano, o4-mini and gpt-5-mini/nano. Two families bill images as more tokens than this to price
them (gpt-4o-mini's tiles, the patch models' multipliers); a request with an image is always marked
approximate."""

COMPLETIONS_DEFAULT_MAX_TOKENS: Final = 16
"""``max_tokens`` of ``/v1/completions`` when a request does not set it (the API reference's default)."""

MEMO_CHARS: Final = 1 << 20
"""Characters of recent strings whose counts each encoder remembers: batch files repeat their system
prompts, few-shot examples and tool definitions on every line, and a dictionary look-up costs far less
than a tokenization. Past this the memo starts over, so memory stays bounded whatever the file."""

_ENCODING_PREFIXES: Final[tuple[tuple[str, str], ...]] = (
    # The first prefix that the model name starts with wins, so the o200k_base families come before
    # "gpt-4". From tiktoken 0.14.0, tiktoken/model.py (MODEL_TO_ENCODING, MODEL_PREFIX_TO_ENCODING).
    ("gpt-4o", O200K_BASE),
    ("chatgpt-4o", O200K_BASE),
    ("gpt-4.1", O200K_BASE),
    ("gpt-4.5", O200K_BASE),
    ("gpt-5", O200K_BASE),
    ("o1", O200K_BASE),
    ("o3", O200K_BASE),
    ("o4", O200K_BASE),
    ("gpt-oss", O200K_BASE),  # o200k_harmony: o200k_base's ranks, more special tokens
    ("gpt-4", CL100K_BASE),
    ("gpt-3.5", CL100K_BASE),
    ("gpt-35", CL100K_BASE),  # Azure's spelling
    ("text-embedding-3", CL100K_BASE),
    ("text-embedding-ada-002", CL100K_BASE),
    ("davinci-002", CL100K_BASE),
    ("babbage-002", CL100K_BASE),
)

_NOT_TEXT: Final = frozenset({"type", "id", "status"})
"""Keys of a Responses input item that tag it rather than carry text the model reads."""

_NO_OUTPUT_ENDPOINTS: Final = frozenset({"/v1/embeddings", "/v1/moderations"})


@dataclass(frozen=True, slots=True)
class RequestTokens:
    """The token estimate of one request.

    :param input: input tokens, as the enqueued-token limit and the input price count them.
    :param max_output: the most output tokens the request can produce (reasoning included), or ``None``
        when it sets no cap.
    :param approximate: the estimate is not an exact count: the model's encoding is guessed, or the
        request has parts counted by a bound (images, tools, files) or not at all (image endpoints).
    """

    input: int
    max_output: int | None
    approximate: bool = False


@dataclass(frozen=True, slots=True)
class Encoding:
    """The encoding a model's text is counted with.

    :param name: ``"o200k_base"`` or ``"cl100k_base"``.
    :param known: the model is in the table; ``False`` when ``name`` is the fallback for an unknown model.
    """

    name: str
    known: bool


def encoding_for_model(model: str | None) -> Encoding:
    """Which encoding counts ``model``'s tokens; unknown models (and none) get ``o200k_base``, not known."""
    return _encoding_for_model(model) if isinstance(model, str) else Encoding(O200K_BASE, known=False)


@lru_cache(maxsize=256)
def _encoding_for_model(model: str) -> Encoding:
    name = model.removeprefix("ft:").lower()
    for prefix, encoding in _ENCODING_PREFIXES:
        if name.startswith(prefix):
            return Encoding(encoding, known=True)
    return Encoding(O200K_BASE, known=False)


class _Counter:
    """Count one encoding's tokens in strings, remembering recent strings.

    ``encode_flat`` returns the ids as packed 32-bit integers, which spares building a list of Python
    ints: two to four times faster than ``encode_ordinary``. It matches special-token spellings
    (``<|endoftext|>``) as special tokens, which the API does not do for a user's text, so a string that
    contains ``<|``, the start of every special token in both encodings, goes through ``encode_ordinary``.
    """

    __slots__ = ("_flat", "_held", "_memo", "_ordinary")

    def __init__(self, encoding: str) -> None:
        # Imported here so that importing this module stays free (the triggerer imports the package);
        # the vocabularies are compiled into splintr's wheel: no file is read, nothing is downloaded.
        import splintr

        tokenizer = splintr.Tokenizer.from_pretrained(encoding)
        self._flat = tokenizer.encode_flat
        self._ordinary = tokenizer.encode_ordinary
        self._memo: dict[str, int] = {}
        self._held = 0

    def __call__(self, text: str) -> int:
        count = self._memo.get(text)
        if count is None:
            count = len(self._ordinary(text)) if "<|" in text else len(self._flat(text)) >> 2
            if self._held > MEMO_CHARS:
                self._memo.clear()
                self._held = 0
            self._memo[text] = count
            self._held += len(text)
        return count


@cache
def counter(encoding: str) -> Callable[[str], int]:
    """The token counter of ``encoding`` (``"o200k_base"`` or ``"cl100k_base"``), loaded once per process.

    Text is counted as ordinary text, as the API counts what a user sends: ``<|endoftext|>`` in a prompt is
    seven tokens, not the special one.
    """
    if encoding not in (O200K_BASE, CL100K_BASE):
        raise ValueError(f"encoding must be {O200K_BASE!r} or {CL100K_BASE!r}; got {encoding!r}")
    return _Counter(encoding)


def count_tokens(text: str, model: str | None = None) -> int:
    """The tokens of ``text`` in ``model``'s encoding (``o200k_base`` for an unknown model)."""
    return counter(encoding_for_model(model).name)(text)


def estimate_request(endpoint: str, body: Mapping[str, Any]) -> RequestTokens:
    """Estimate the input tokens of one request and bound its output, from its ``body`` as plain values.

    The rules per endpoint are in the module's docstring. Fields of the wrong type count as nothing and
    make the estimate approximate rather than raise: the validator reports malformed requests.

    :param endpoint: the batch endpoint, e.g. ``"/v1/chat/completions"``.
    :param body: the request's ``body``, as ``json.loads`` or ``msgspec.json.decode`` return it.
    """
    encoding = encoding_for_model(body.get("model"))
    estimate = _Estimate(counter(encoding.name), approximate=not encoding.known)
    prompts = 1
    if endpoint == "/v1/chat/completions":
        estimate.messages(body.get("messages"), skip=frozenset())
        estimate.definitions(body.get("tools"), body.get("functions"), _schema(body.get("response_format")))
        estimate.reply()
    elif endpoint == "/v1/responses":
        instructions = body.get("instructions")
        if instructions is not None:
            estimate.messages([{"role": "developer", "content": instructions}], skip=_NOT_TEXT)
        items = body.get("input")
        estimate.messages(
            [{"role": "user", "content": items}] if isinstance(items, str) else items, _NOT_TEXT
        )
        text = body.get("text")
        estimate.definitions(
            body.get("tools"), _schema(text.get("format") if isinstance(text, Mapping) else None)
        )
        estimate.reply()
    elif endpoint == "/v1/completions":
        prompts = estimate.inputs(body.get("prompt"))
    elif endpoint in _NO_OUTPUT_ENDPOINTS:
        estimate.inputs(body.get("input"))
    else:  # images and videos: priced per image or second, not counted here
        estimate.approximate = True
    return RequestTokens(estimate.tokens, max_output(endpoint, body, prompts), estimate.approximate)


def max_output(endpoint: str, body: Mapping[str, Any], prompts: int = 1) -> int | None:
    """The most output tokens a request can produce, or ``None`` when it sets no cap (see the module).

    :param prompts: for ``/v1/completions``, how many prompts the request holds (each is completed).
    """
    return _output_bound(
        endpoint,
        body.get("max_tokens"),
        body.get("max_completion_tokens"),
        body.get("max_output_tokens"),
        body.get("n"),
        body.get("best_of"),
        prompts,
    )


def _output_bound(
    endpoint: str,
    max_tokens: object,
    max_completion_tokens: object,
    max_output_tokens: object,
    n: object,
    best_of: object,
    prompts: int,
) -> int | None:
    """:func:`max_output` over the fields' values: the one statement of the rule, which the tally also
    applies to the fields the validator decoded, with no mapping built per line."""
    if endpoint == "/v1/chat/completions":
        cap = _cap(max_completion_tokens)
        if cap is None:
            cap = _cap(max_tokens)
        return None if cap is None else cap * _choices(n)
    if endpoint == "/v1/responses":
        return _cap(max_output_tokens)
    if endpoint == "/v1/completions":
        cap = _cap(max_tokens)
        per_choice = COMPLETIONS_DEFAULT_MAX_TOKENS if cap is None else cap
        return per_choice * max(_choices(n), _choices(best_of)) * max(prompts, 1)
    if endpoint in _NO_OUTPUT_ENDPOINTS:
        return 0
    return None


class _Estimate:
    """The running count of one request: tokens so far and whether any part was bounded or guessed."""

    __slots__ = ("approximate", "count", "tokens")

    def __init__(self, count: Callable[[str], int], *, approximate: bool) -> None:
        self.count = count
        self.tokens = 0
        self.approximate = approximate

    def messages(self, messages: object, skip: frozenset[str]) -> None:
        """Chat messages or Responses items, by the cookbook's rule; ``skip``: keys that are not text."""
        if messages is None:
            return
        if not isinstance(messages, list):
            self.approximate = True
            return
        count = self.count
        for message in messages:
            if not isinstance(message, Mapping):
                self.approximate = True
                continue
            self.tokens += TOKENS_PER_MESSAGE
            for key, value in message.items():
                if isinstance(value, str):
                    if key not in skip:
                        self.tokens += count(value)
                elif key == "content" or key == "output":
                    self.parts(value)
                elif value is not None:  # tool_calls, function_call, audio: their JSON, approximately
                    self.json(value)
                if key == "name":
                    self.tokens += TOKENS_PER_NAME

    def parts(self, parts: object) -> None:
        """A ``content`` list: text parts counted, images bounded, anything else (audio, files) not."""
        if parts is None:
            return
        if not isinstance(parts, list):
            self.approximate = True
            return
        count = self.count
        for part in parts:
            text = part.get("text") if isinstance(part, Mapping) else None
            if isinstance(text, str):
                self.tokens += count(text)
                continue
            if isinstance(part, Mapping) and "image" in str(part.get("type", "")):
                self.tokens += IMAGE_PART_TOKENS
            elif isinstance(part, Mapping) and isinstance(part.get("refusal"), str):
                self.tokens += count(part["refusal"])
                continue
            self.approximate = True

    def inputs(self, value: object) -> int:
        """A prompt or an ``input``: a string, token ids, or a list of either (or of moderation parts).

        :return: how many prompts it holds, which multiplies the outputs of ``/v1/completions``.
        """
        if value is None:
            return 0
        if isinstance(value, str):
            self.tokens += self.count(value)
            return 1
        if not isinstance(value, list):
            self.approximate = True
            return 0
        if all(isinstance(item, int) for item in value):  # one token array
            self.tokens += len(value)
            return 1
        count = self.count
        for item in value:
            if isinstance(item, str):
                self.tokens += count(item)
            elif isinstance(item, list):
                self.tokens += len(item)
            else:
                self.parts([item])
        return len(value)

    def definitions(self, *values: object) -> None:
        """Tool and function definitions, response schemas: their compact JSON's tokens, approximately."""
        for value in values:
            if value is not None:
                self.json(value)

    def json(self, value: object) -> None:
        self.approximate = True
        try:
            text = msgspec.json.encode(value).decode()
        except (TypeError, msgspec.EncodeError):
            return
        self.tokens += self.count(text)

    def reply(self) -> None:
        self.tokens += REPLY_PRIMING


def _schema(response_format: object) -> object:
    """The JSON schema a structured output sends to the model, or ``None`` for plain text and JSON mode."""
    if isinstance(response_format, Mapping) and response_format.get("type") == "json_schema":
        return response_format.get("json_schema", response_format.get("schema"))
    return None


def _cap(value: object) -> int | None:
    """An output cap, when it is a non-negative integer (``true`` is not one)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _choices(value: object) -> int:
    """``n`` or ``best_of``: how many completions a request generates (1 when unset or invalid)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else 1


# The tally of a file --------------------------------------------------------------------------------


@dataclass(slots=True)
class ModelTokens:
    """What a file asks of one model.

    :param requests: requests counted.
    :param input: their input tokens; with sampling, the counted lines' exact sum plus the extrapolation
        of the others.
    :param max_output: the sum of the output caps of the requests that have one (always exact).
    :param uncapped: requests with no output cap, whose output ``max_output`` does not bound.
    :param approximate: counted requests whose estimate is approximate (see :class:`RequestTokens`).
    :param extrapolated: requests whose input was extrapolated from the sampled lines rather than counted.
    """

    requests: int = 0
    input: int = 0
    max_output: int = 0
    uncapped: int = 0
    approximate: int = 0
    extrapolated: int = 0


class _CountedBody(msgspec.Struct, gc=False):
    """The fields of a body that the estimate reads; the decoder skips every other one unparsed."""

    model: Any = None
    messages: Any = None
    input: Any = None
    prompt: Any = None
    instructions: Any = None
    tools: Any = None
    functions: Any = None
    response_format: Any = None
    text: Any = None
    max_tokens: Any = None
    max_completion_tokens: Any = None
    max_output_tokens: Any = None
    n: Any = None
    best_of: Any = None


class _CountedLine(msgspec.Struct, gc=False):
    body: _CountedBody | None = None


class OutputCaps(msgspec.Struct, gc=False):
    """The body fields that bound a request's output: all a line left out of a sampled count needs.

    The validator's typed body extends this struct, so the one decode that checks a line also gives these
    fields, and :meth:`TokenTally.add_checked` takes them from there: a line left out of the sample then
    costs no second pass over its bytes, which was most of what sampling cost. They are typed ``Any`` so
    that a cap of the wrong type never fails the validator's typed decode (and sends the line down its
    slower generic path); the bound ignores such values, as :func:`max_output` does. ``prompt`` stays raw
    JSON: only a list of prompts, which is rare, is looked into.
    """

    max_tokens: Any = None
    max_completion_tokens: Any = None
    max_output_tokens: Any = None
    n: Any = None
    best_of: Any = None
    prompt: msgspec.Raw = msgspec.Raw()


class _CappedBody(OutputCaps, gc=False):
    """What :meth:`TokenTally.add_line` decodes of a line left out of the sample, when no validator has."""

    model: Any = None


class _CappedLine(msgspec.Struct, gc=False):
    body: _CappedBody | None = None


_LINE_DECODER = msgspec.json.Decoder(_CountedLine)
_CAPPED_DECODER = msgspec.json.Decoder(_CappedLine)


class _Sample:
    """Per model, with sampling: bytes and input tokens of the counted lines, bytes of the others."""

    __slots__ = ("counted_bytes", "counted_tokens", "skipped_bytes")

    def __init__(self) -> None:
        self.counted_bytes = self.counted_tokens = self.skipped_bytes = 0


class TokenTally:
    """Token estimates of a batch file, added up per model, filled one request at a time.

    The validation pass feeds it every request it checks: :meth:`add_checked` with a line's raw bytes and
    the model and output caps its own decode already read, :meth:`add_line` with the raw bytes alone (it
    decodes only the fields the estimate reads), or :meth:`add` with a body already decoded into plain
    values. A line that is not a JSON object, or whose ``body`` is not one, is not counted: the validator
    reports it.

    Counting is exact by default, and then costs what the tokenizer costs: about 25 to 60 MB of text a
    second on one core, several times a validation pass. ``sample_every=k`` counts the first line and then
    one line in k, drawn at random (seeded: the same file gives the same estimate), and extrapolates the
    input tokens of the others from their size, at the counted lines' tokens per byte for the same model;
    output caps stay exact, since every line's caps are still read. A batch file holds one model and
    usually one kind of request, which is when a sample represents the rest; ``extrapolated`` says how
    many requests were not counted.

    :param endpoint: the batch endpoint, which decides the counting rule.
    :param sample_every: count one line in this many (1: every line, exactly).
    """

    def __init__(self, endpoint: str, *, sample_every: int = 1) -> None:
        if sample_every < 1:
            raise ValueError(f"sample_every must be at least 1; got {sample_every}")
        self.endpoint = endpoint
        self.sample_every = sample_every
        self._models: dict[str | None, ModelTokens] = {}
        self._samples: dict[str | None, _Sample] = {}
        self._lines = 0
        # Lines are drawn at random, not every k-th one: generated files are often periodic (a prompt
        # template cycling through k examples), and a fixed stride would then count one kind of line only.
        # The seed is fixed so that the same file gives the same estimate.
        self._draw = random.Random(0).random
        self._completions = endpoint == "/v1/completions"
        # The model of the last line left out and its two records: a file holds one model, so this spares
        # two dictionary look-ups per line on the path every skipped line takes.
        self._skipped_model: str | None = None
        self._skipped: tuple[ModelTokens, _Sample] | None = None

    def add(self, body: object) -> RequestTokens | None:
        """Count one request from its ``body`` as plain values; ``None`` (not counted) if not a mapping."""
        if not isinstance(body, Mapping):
            return None
        tokens = estimate_request(self.endpoint, body)
        model = body.get("model")
        counted = self._model(model if isinstance(model, str) else None)
        counted.requests += 1
        counted.input += tokens.input
        self._add_output(counted, tokens.max_output)
        counted.approximate += tokens.approximate
        return tokens

    def add_line(self, raw: bytes) -> RequestTokens | None:
        """Count one request line (its JSON, without the newline); ``None`` if it holds no object ``body``
        or when the line is left out of the sample (its input is extrapolated at the end)."""
        if self._leave_out():
            try:
                body = _CAPPED_DECODER.decode(raw).body
            except msgspec.DecodeError:
                return None
            if body is not None:
                self._skip(raw, body.model if isinstance(body.model, str) else None, body)
            return None
        return self._count_line(raw)

    def add_checked(self, raw: bytes, model: str | None, caps: OutputCaps) -> RequestTokens | None:
        """Count one request line that the validator has decoded: as :meth:`add_line`, but a line left out
        of the sample takes its model and output caps from that decode instead of decoding them again.

        :param raw: the line's JSON, without the newline; decoded again only when the line is counted.
        :param model: its ``body.model`` (``None`` when it names none).
        :param caps: its body's output caps, from the validator's decode.
        """
        if self._leave_out():
            self._skip(raw, model, caps)
            return None
        return self._count_line(raw)

    def _leave_out(self) -> bool:
        """Whether the next line is left out of the sample (never the first one, nor without sampling)."""
        self._lines += 1
        return self.sample_every > 1 and self._lines > 1 and self._draw() * self.sample_every >= 1

    def _count_line(self, raw: bytes) -> RequestTokens | None:
        try:
            body = _LINE_DECODER.decode(raw).body
        except msgspec.DecodeError:
            return None
        if body is None:
            return None
        fields = msgspec.structs.asdict(body)
        tokens = self.add(fields)
        if tokens is not None and self.sample_every > 1:
            model = fields["model"]
            sample = self._sample(model if isinstance(model, str) else None)
            sample.counted_bytes += len(raw)
            sample.counted_tokens += tokens.input
        return tokens

    def _skip(self, raw: bytes, model: str | None, caps: OutputCaps) -> None:
        """Record a line left out of the sample: its output bound, exactly, and its size, to extrapolate."""
        records = self._skipped
        if records is None or model != self._skipped_model:
            records = self._skipped = (self._model(model), self._sample(model))
            self._skipped_model = model
        counted, sample = records
        prompts = 1
        if self._completions and caps.prompt and bytes(caps.prompt).lstrip().startswith(b"["):
            # Rare: a list of prompts, each completed; it may also be one token array.
            prompts = _Estimate(len, approximate=False).inputs(msgspec.json.decode(caps.prompt)) or 1
        bound = _output_bound(
            self.endpoint,
            caps.max_tokens,
            caps.max_completion_tokens,
            caps.max_output_tokens,
            caps.n,
            caps.best_of,
            prompts,
        )
        counted.requests += 1
        counted.extrapolated += 1
        if bound is None:
            counted.uncapped += 1
        else:
            counted.max_output += bound
        sample.skipped_bytes += len(raw)

    @property
    def models(self) -> dict[str | None, ModelTokens]:
        """Per ``body.model`` (``None`` for requests without one), in the order first seen; a copy."""
        result = {}
        for model, counted in self._models.items():
            tokens = ModelTokens(**{name: getattr(counted, name) for name in ModelTokens.__slots__})
            sample = self._samples.get(model)
            if sample is not None and sample.skipped_bytes:
                # Tokens per byte of the counted lines; 1 token per 4 bytes when none was counted.
                rate = sample.counted_tokens / sample.counted_bytes if sample.counted_bytes else 0.25
                tokens.input += round(sample.skipped_bytes * rate)
            result[model] = tokens
        return result

    @property
    def total(self) -> ModelTokens:
        """The sums over every model."""
        total = ModelTokens()
        for tokens in self.models.values():
            for name in ModelTokens.__slots__:
                setattr(total, name, getattr(total, name) + getattr(tokens, name))
        return total

    @staticmethod
    def _add_output(counted: ModelTokens, max_output: int | None) -> None:
        if max_output is None:
            counted.uncapped += 1
        else:
            counted.max_output += max_output

    def _model(self, model: str | None) -> ModelTokens:
        counted = self._models.get(model)
        if counted is None:
            counted = self._models[model] = ModelTokens()
        return counted

    def _sample(self, model: str | None) -> _Sample:
        sample = self._samples.get(model)
        if sample is None:
            sample = self._samples[model] = _Sample()
        return sample
