"""Structured replies and scripted answers: a Structured Outputs request is answered with an
instance of its schema, and the ``emulator`` directive's ``content``, ``output`` and ``refusal``
script a line's reply, for its first ``times`` runs only.

The first half checks the schema-instance generator with plain values, against ``jsonschema`` and
Pydantic; the second talks HTTP to a real emulator with the official SDK, through batches (and the
synchronous endpoints, through the SDK's own ``parse`` helpers).
"""

from __future__ import annotations

import datetime
import enum
import ipaddress
import json
import math
import re
import uuid
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

import jsonschema
import openai
import pytest
from openai.lib._parsing import type_to_response_format_param
from openai.lib._parsing._responses import type_to_text_format_param
from openai.types.chat import ChatCompletion
from openai.types.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from airflow_provider_batch.emulator.process import EmulatorProcess
from airflow_provider_batch.emulator.schema_instance import SchemaError, instance_of, mismatch_of
from tests.emulator.helpers import MODEL, chat_line, request_line, results, run_batch, sdk

SEEDS = [f"prompt {i}: {text}" for i, text in enumerate(["", "hello", "Quel temps fait-il ?", "x" * 300])]
RESPONSES = "/v1/responses"
COMPLETIONS = "/v1/completions"
ONE_OF = "Invalid 'emulator': give only one of status_code, content, output and refusal,"


# Pydantic models: what users hand to the SDK -------------------------------------------------------


class Label(enum.StrEnum):
    positive = "positive"
    negative = "negative"
    neutral = "neutral"


class Sentiment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: Label
    confidence: float = Field(ge=0, le=1)
    keywords: list[str] = Field(min_length=1, max_length=4)
    summary: str | None


class Address(BaseModel):
    street: str = Field(min_length=5, max_length=40)
    postcode: str = Field(pattern=r"^\d{5}(-\d{4})?$")
    country: Literal["FR", "DE", "US"]


class LineItem(BaseModel):
    sku: Annotated[str, Field(pattern=r"^[A-Z]{3}-\d{4}$")]
    quantity: int = Field(gt=0, le=50)
    unit_price: float = Field(gt=0, multiple_of=0.5)


class Invoice(BaseModel):
    id: uuid.UUID
    issued: datetime.date
    due: datetime.datetime
    billing: Address
    shipping: Address | None = None
    items: list[LineItem] = Field(min_length=1)
    tags: set[Label]
    totals: dict[str, float]
    pair: tuple[int, str]
    paid: bool


class Tree(BaseModel):
    name: str
    children: list[Tree]


class Chain(BaseModel):
    """Every link must say whether a next one exists: only ``null`` ends the recursion."""

    value: int
    next: Chain | None


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = Field(ge=1, le=9)


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Pet(BaseModel):
    pet: Annotated[Cat | Dog, Field(discriminator="kind")]
    owner_email: str = Field(json_schema_extra={"format": "email"})


MODELS: list[type[BaseModel]] = [Sentiment, Address, LineItem, Invoice, Tree, Chain, Pet]


# Hand-written schemas: the Structured Outputs subset, keyword by keyword ---------------------------

SCHEMAS: dict[str, dict[str, Any]] = {
    "string": {"type": "string"},
    "string lengths": {"type": "string", "minLength": 30, "maxLength": 32},
    "short string": {"type": "string", "maxLength": 3},
    "integer bounds": {"type": "integer", "minimum": -5, "maximum": -3},
    "integer exclusive": {"type": "integer", "exclusiveMinimum": 1.5, "exclusiveMaximum": 4},
    "integer multiple": {"type": "integer", "minimum": 1, "maximum": 100, "multipleOf": 7},
    "number exclusive": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 0.01},
    "number above": {"type": "number", "minimum": 1e6},
    "draft-4 exclusive": {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "integer",
        "minimum": 10,
        "exclusiveMinimum": True,
        "maximum": 11,
    },
    "boolean": {"type": "boolean"},
    "null": {"type": "null"},
    "type list": {"type": ["string", "integer", "null"]},
    "enum": {"enum": ["a", 1, None, {"x": [1]}]},
    "const": {"const": {"fixed": True}},
    "formats": {
        "type": "object",
        "properties": {
            name: {"type": "string", "format": name}
            for name in (
                "date",
                "date-time",
                "time",
                "duration",
                "email",
                "hostname",
                "ipv4",
                "ipv6",
                "uuid",
                "uri",
            )
        },
        "required": [
            "date",
            "date-time",
            "time",
            "duration",
            "email",
            "hostname",
            "ipv4",
            "ipv6",
            "uuid",
            "uri",
        ],
        "additionalProperties": False,
    },
    "patterns": {
        "type": "array",
        "prefixItems": [
            {"type": "string", "pattern": r"^[A-Z]{3}-\d{4}$"},
            {"type": "string", "pattern": r"^(foo|bar)+_\w{2,}$"},
            {"type": "string", "pattern": r"^\+?[0-9 ]{7,12}$"},
            {"type": "string", "pattern": r"^[^@\s]+@[a-z]+\.(com|org)$"},
            {"type": "string", "pattern": r"^(?!-)[a-z.-]{3,8}\.?$"},
        ],
        "items": False,
        "minItems": 5,
    },
    "array sizes": {"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 6},
    "unique items": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 3, "uniqueItems": True},
    "empty array": {"type": "array", "items": {"type": "string"}, "maxItems": 0},
    "map": {"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 3},
    "strict object": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "nested": {
                "type": "object",
                "properties": {"ok": {"type": "boolean"}, "n": {"type": ["number", "null"]}},
                "required": ["ok", "n"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "nested"],
        "additionalProperties": False,
    },
    "any of": {"anyOf": [{"type": "string", "format": "date"}, {"type": "integer", "minimum": 1000}]},
    "one of": {"oneOf": [{"type": "integer", "multipleOf": 2}, {"type": "string", "maxLength": 2}]},
    "all of": {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
            {"properties": {"b": {"type": "integer", "minimum": 5}}, "required": ["b"]},
        ]
    },
    "defs": {
        "type": "object",
        "properties": {
            "first": {"$ref": "#/$defs/point"},
            "rest": {"type": "array", "items": {"$ref": "#/$defs/point"}},
        },
        "required": ["first", "rest"],
        "$defs": {
            "point": {
                "type": "object",
                "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
                "required": ["x", "y"],
                "additionalProperties": False,
            }
        },
    },
    "definitions": {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$ref": "#/definitions/node",
        "definitions": {
            "node": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "kids": {"type": "array", "items": {"$ref": "#/definitions/node"}},
                },
                "required": ["id", "kids"],
            }
        },
    },
    "root recursion": {
        "type": "object",
        "properties": {"label": {"type": "string"}, "child": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}},
        "required": ["label", "child"],
        "additionalProperties": False,
    },
    "anything": {},
}


def _validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def assert_instance(schema: dict[str, Any], value: Any) -> None:
    """``value`` is valid against ``schema``, formats included (jsonschema skips those it has no
    library for, so each format is also parsed here the strict way)."""
    errors = [error.message for error in _validator(schema).iter_errors(value)]
    assert not errors, (value, errors)
    json.loads(json.dumps(value))  # plain JSON values only


ALL_SCHEMAS = [pytest.param(schema, id=name) for name, schema in SCHEMAS.items()] + [
    pytest.param(model.model_json_schema(), id=f"pydantic {model.__name__}") for model in MODELS
]


# The generator, with plain values ------------------------------------------------------------------


@pytest.mark.parametrize("schema", ALL_SCHEMAS)
def test_every_instance_is_valid_and_the_same_for_the_same_seed(schema: dict[str, Any]) -> None:
    for seed in SEEDS:
        value = instance_of(schema, seed)
        assert_instance(schema, value)
        assert instance_of(schema, seed) == value


@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.__name__)
def test_pydantic_accepts_the_instances_of_its_schemas(model: type[BaseModel]) -> None:
    """Pydantic's own validation is stricter than the schema it emits (a UUID, a date), and what
    a user's pipeline runs; the SDK's strict form (``parse``) is covered too."""
    strict = type_to_response_format_param(model)["json_schema"]["schema"]  # type: ignore[index]
    for seed in SEEDS:
        model.model_validate(instance_of(model.model_json_schema(), seed))
        model.model_validate_json(json.dumps(instance_of(strict, seed)))


def test_different_prompts_give_different_values() -> None:
    schema = Invoice.model_json_schema()
    values = [json.dumps(instance_of(schema, f"invoice {i}"), sort_keys=True) for i in range(20)]
    assert len(set(values)) == 20
    labels = {instance_of(Sentiment.model_json_schema(), f"review {i}")["label"] for i in range(30)}
    assert labels == {"positive", "negative", "neutral"}
    assert len({instance_of({"type": "boolean"}, f"seed {i}") for i in range(30)}) == 2


def test_formats_parse_as_what_they_name() -> None:
    for seed in SEEDS:
        value = instance_of(SCHEMAS["formats"], seed)
        datetime.date.fromisoformat(value["date"])
        assert datetime.datetime.fromisoformat(value["date-time"]).tzinfo is not None
        assert datetime.time.fromisoformat(value["time"]).tzinfo is not None
        assert re.fullmatch(r"P\d+DT\d+H", value["duration"])
        assert re.fullmatch(r"[a-z]+\.[a-z]+@example\.com", value["email"])
        assert re.fullmatch(r"[a-z]+\.example\.com", value["hostname"])
        ipaddress.IPv4Address(value["ipv4"])
        ipaddress.IPv6Address(value["ipv6"])
        assert uuid.UUID(value["uuid"]).version == 4
        uri = urlparse(value["uri"])
        assert (uri.scheme, uri.netloc) == ("https", "example.com")


def test_the_values_of_each_keyword() -> None:
    """Exact facts a schema-valid value could still get wrong by accident."""
    for seed in SEEDS:
        assert instance_of(SCHEMAS["integer exclusive"], seed) in {2, 3}
        assert instance_of(SCHEMAS["draft-4 exclusive"], seed) == 11
        assert 0 < instance_of(SCHEMAS["number exclusive"], seed) < 0.01
        assert sorted(instance_of(SCHEMAS["unique items"], seed)) == ["a", "b", "c"]
        assert len(instance_of(SCHEMAS["map"], seed)) >= 3
        assert instance_of(SCHEMAS["const"], seed) == {"fixed": True}
    trees = [instance_of(Tree.model_json_schema(), seed) for seed in SEEDS]
    assert any(tree["children"] for tree in trees)  # recursion happens, and ends


def _depth(chain: dict[str, Any] | None) -> int:
    return 0 if chain is None else 1 + _depth(chain["next"])


def test_recursion_ends_on_the_null_branch() -> None:
    depths = {_depth(instance_of(Chain.model_json_schema(), f"chain {i}")) for i in range(20)}
    assert max(depths) <= 8, depths


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (False, "'false'"),
        ({"$ref": "#/$defs/missing"}, "points to nothing"),
        ({"$ref": "https://example.com/schema.json"}, "Only references inside the schema"),
        (
            {"type": "object", "properties": {"me": {"$ref": "#"}}, "required": ["me"]},
            "no finite instance",
        ),
    ],
)
def test_a_schema_without_an_instance_is_an_error(schema: Any, message: str) -> None:
    with pytest.raises(SchemaError, match=re.escape(message)):
        instance_of(schema, "seed")


def test_mismatches_are_json_the_schema_rejects() -> None:
    for case in ALL_SCHEMAS:
        schema = case.values[0]
        if not schema:
            continue  # accepts everything
        for seed in SEEDS:
            wrong = mismatch_of(schema, seed)
            assert json.loads(json.dumps(wrong)) == wrong
            assert not _validator(schema).is_valid(wrong), (case.id, wrong)
    # The mistake a model makes: a required property left out, the rest intact.
    schema = Sentiment.model_json_schema()
    valid, wrong = instance_of(schema, "seed"), mismatch_of(schema, "seed")
    assert wrong == {key: value for key, value in valid.items() if key != "label"}
    # Nothing to miss: a value of the wrong type, then a root of the wrong type.
    for seed in SEEDS:
        optional = {"type": "object", "properties": {"n": {"type": "integer"}}}
        valid = instance_of(optional, seed)
        expected = {"n": str(valid["n"])} if "n" in valid else [valid]
        assert mismatch_of(optional, seed) == expected
    assert mismatch_of({}, "seed") == [instance_of({}, "seed")]  # nothing rejects: an array, documented


# Through the emulator ------------------------------------------------------------------------------


def _answers(
    client: openai.OpenAI, lines: list[dict[str, Any]], endpoint: str = "/v1/chat/completions"
) -> dict[str, Any]:
    """Run ``lines`` as one batch; custom_id → response body, each parsed by the SDK's model of the
    endpoint (lines answered with an error give their error body)."""
    batch = run_batch(client, lines, endpoint=endpoint)
    assert batch.status == "completed"
    output, errors = results(client, batch)
    parse = {"/v1/chat/completions": ChatCompletion, RESPONSES: Response}.get(endpoint)
    answers: dict[str, Any] = {line["custom_id"]: line["response"]["body"] for line in errors}
    for line in output:
        body = line["response"]["body"]
        answers[line["custom_id"]] = parse.model_validate(body) if parse else body
    assert batch.usage is not None
    assert batch.usage.output_tokens == sum(_output_tokens(body) for body in answers.values())
    return answers


def _output_tokens(answer: Any) -> int:
    if isinstance(answer, dict) and "error" in answer:
        return 0
    if isinstance(answer, ChatCompletion | Response):
        assert answer.usage is not None
        usage = answer.usage.model_dump()
    else:
        usage = answer["usage"]
    return int(usage.get("completion_tokens", usage.get("output_tokens")))


def _tokens(text: str) -> int:
    """The emulator's token estimate (about four characters per token), which usage must match."""
    return max(1, math.ceil(len(text) / 4))


def _unique(prefix: str) -> str:
    """A custom_id no other test uses: the shared emulator counts runs per custom_id."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_chat_json_schema_replies_through_a_batch(emulator: EmulatorProcess) -> None:
    client = sdk(emulator)
    response_format = type_to_response_format_param(Invoice)  # what client.chat.completions.parse sends
    schema = response_format["json_schema"]["schema"]  # type: ignore[index]
    prompts = ["Invoice from ACME", "Invoice from Globex", "Invoice from Initech", "Invoice from ACME"]
    lines = [
        chat_line(f"line-{i}", prompt, response_format=response_format) for i, prompt in enumerate(prompts)
    ]
    answers = _answers(client, lines)
    contents = {}
    for custom_id, completion in answers.items():
        [choice] = completion.choices
        content = choice.message.content
        assert (choice.finish_reason, choice.message.refusal) == ("stop", None)
        assert_instance(schema, json.loads(content))
        Invoice.model_validate_json(content)
        assert completion.usage.completion_tokens == _tokens(content)
        contents[custom_id] = content
    assert contents["line-0"] == contents["line-3"]  # the same prompt, the same reply
    assert len({contents["line-0"], contents["line-1"], contents["line-2"]}) == 3


def test_responses_json_schema_replies_through_a_batch(emulator: EmulatorProcess) -> None:
    client = sdk(emulator)
    text = {"format": type_to_text_format_param(Sentiment)}  # what client.responses.parse sends
    schema = text["format"]["schema"]  # type: ignore[typeddict-item]
    lines = [
        request_line(
            f"review-{i}", {"model": MODEL, "input": f"Review number {i}", "text": text}, url=RESPONSES
        )
        for i in range(6)
    ]
    answers = _answers(client, lines, endpoint=RESPONSES)
    labels = set()
    for response in answers.values():
        assert response.status == "completed"
        assert_instance(schema, json.loads(response.output_text))
        labels.add(Sentiment.model_validate_json(response.output_text).label)
        assert response.usage.output_tokens == _tokens(response.output_text)
    assert len(labels) > 1


def test_json_object_replies_with_an_object(emulator: EmulatorProcess) -> None:
    client = sdk(emulator)
    answers = _answers(client, [chat_line("json", "anything", response_format={"type": "json_object"})])
    assert isinstance(json.loads(answers["json"].choices[0].message.content), dict)


def test_scripted_replies_through_a_batch(emulator: EmulatorProcess) -> None:
    client = sdk(emulator)
    response_format = type_to_response_format_param(Sentiment)
    schema = response_format["json_schema"]["schema"]  # type: ignore[index]

    def line(custom_id: str, directive: dict[str, Any] | None, **body: Any) -> dict[str, Any]:
        body.setdefault("response_format", response_format)
        return chat_line(
            custom_id, f"text of {custom_id}", **body, **({"emulator": directive} if directive else {})
        )

    answers = _answers(
        client,
        [
            line("normal", None),
            line("content", {"content": "positive"}),
            line("content-capped", {"content": "a long scripted answer " * 10}, max_completion_tokens=2),
            line("invalid", {"output": "invalid_json"}),
            line("mismatch", {"output": "schema_mismatch"}),
            line("mismatch-plain", {"output": "schema_mismatch"}, response_format={"type": "json_object"}),
            line("invalid-plain", {"output": "invalid_json"}, response_format={"type": "text"}),
            line("refusal", {"refusal": "I can't help with that."}, n=2),
        ],
    )
    message = {custom_id: completion.choices[0].message for custom_id, completion in answers.items()}
    assert_instance(schema, json.loads(message["normal"].content))
    assert message["content"].content == "positive"
    assert message["content-capped"].content == "a long scripted answer " * 10  # exact, never cut
    assert answers["content-capped"].choices[0].finish_reason == "stop"
    for custom_id in ("invalid", "invalid-plain"):
        with pytest.raises(json.JSONDecodeError):
            json.loads(message[custom_id].content)
    mismatch = json.loads(message["mismatch"].content)
    assert not _validator(schema).is_valid(mismatch)
    assert isinstance(mismatch, dict)  # a property missing or mistyped, not a wrong root
    assert isinstance(json.loads(message["mismatch-plain"].content), list)
    refused = answers["refusal"]
    assert [(c.message.content, c.message.refusal) for c in refused.choices] == [
        (None, "I can't help with that.")
    ] * 2
    for custom_id, completion in answers.items():
        text = message[custom_id].content or message[custom_id].refusal
        assert completion.usage.completion_tokens == _tokens(text) * len(completion.choices), custom_id


def test_scripted_responses_and_completions(emulator: EmulatorProcess) -> None:
    client = sdk(emulator)
    text = {"format": type_to_text_format_param(Sentiment)}

    def response_line(custom_id: str, directive: dict[str, Any]) -> dict[str, Any]:
        body = {"model": MODEL, "input": "Rate this", "text": text, "emulator": directive}
        return request_line(custom_id, body, url=RESPONSES)

    answers = _answers(
        client,
        [
            response_line("content", {"content": "positive"}),
            response_line("refusal", {"refusal": "No."}),
            response_line("mismatch", {"output": "schema_mismatch"}),
        ],
        endpoint=RESPONSES,
    )
    assert answers["content"].output_text == "positive"
    [part] = answers["refusal"].output[0].content
    assert (part.type, part.refusal) == ("refusal", "No.")
    assert answers["refusal"].output_text == ""
    assert answers["refusal"].usage.output_tokens == _tokens("No.")
    assert not _validator(text["format"]["schema"]).is_valid(json.loads(answers["mismatch"].output_text))  # type: ignore[typeddict-item]

    completions = _answers(
        client,
        [
            request_line(
                "legacy",
                {
                    "model": "gpt-3.5-turbo-instruct",
                    "prompt": ["a", "b"],
                    "emulator": {"content": "positive"},
                },
                url=COMPLETIONS,
            )
        ],
        endpoint=COMPLETIONS,
    )
    assert [choice["text"] for choice in completions["legacy"]["choices"]] == ["positive", "positive"]
    assert completions["legacy"]["usage"]["completion_tokens"] == 2 * _tokens("positive")


def test_times_scripts_only_the_first_runs(emulator: EmulatorProcess) -> None:
    """How a job's resubmission is tested: bad outputs in round 1, valid ones afterwards."""
    client = sdk(emulator)
    response_format = type_to_response_format_param(Sentiment)
    ids = {kind: _unique(kind) for kind in ("invalid", "mismatch", "refusal", "content")}
    directives = {
        "invalid": {"output": "invalid_json", "times": 1},
        "mismatch": {"output": "schema_mismatch", "times": 1},
        "refusal": {"refusal": "Not now.", "times": 2},
        "content": {"content": "neutral", "times": 1},
    }
    lines = [
        chat_line(ids[kind], "same text", response_format=response_format, emulator=directive)
        for kind, directive in directives.items()
    ]
    rounds = []
    for _ in range(3):
        answers = _answers(client, lines)
        rounds.append({kind: answers[custom_id].choices[0].message for kind, custom_id in ids.items()})

    def valid(message: Any) -> bool:
        try:
            Sentiment.model_validate_json(message.content or "")
        except ValueError:
            return False
        return True

    assert [{kind: valid(message) for kind, message in row.items()} for row in rounds] == [
        {"invalid": False, "mismatch": False, "refusal": False, "content": False},
        {"invalid": True, "mismatch": True, "refusal": False, "content": True},
        {"invalid": True, "mismatch": True, "refusal": True, "content": True},
    ]
    assert [row["refusal"].refusal for row in rounds] == ["Not now.", "Not now.", None]
    assert rounds[0]["content"].content == "neutral"
    # Once spent, a line is answered as if it had no directive: the same prompt, the same reply.
    assert len({rounds[2][kind].content for kind in ids}) == 1
    assert emulator.lines()["custom_ids"][ids["refusal"]] == 3


@pytest.mark.parametrize(
    ("directive", "param", "message"),
    [
        ({"content": 3}, "emulator.content", "Invalid 'emulator.content': expected a string, got 3."),
        ({"content": None}, "emulator.content", "Invalid 'emulator.content': expected a string, got null."),
        (
            {"output": "garbage"},
            "emulator.output",
            "Invalid 'emulator.output': expected one of 'invalid_json', 'schema_mismatch', got \"garbage\".",
        ),
        (
            {"refusal": ""},
            "emulator.refusal",
            "Invalid 'emulator.refusal': expected a non-empty string, got \"\".",
        ),
        (
            {"refusal": "No.", "times": 0},
            "emulator.times",
            "Invalid 'emulator.times': expected a positive integer, got 0.",
        ),
        (
            {"content": "a", "refusal": "b"},
            "emulator",
            f"{ONE_OF} got content, refusal.",
        ),
        (
            {"status_code": 500, "output": "invalid_json"},
            "emulator",
            f"{ONE_OF} got status_code, output.",
        ),
    ],
)
def test_a_malformed_directive_is_a_400_naming_the_field(
    emulator: EmulatorProcess, directive: dict[str, Any], param: str, message: str
) -> None:
    client = sdk(emulator)
    line = chat_line(_unique("typo"), emulator={"times": 1, **directive})
    for _ in range(2):  # never spent: the typo keeps being refused
        [answer] = _answers(client, [line]).values()
        assert answer == {
            "error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}
        }


def test_directives_only_apply_where_there_is_text(emulator: EmulatorProcess) -> None:
    client = sdk(emulator)
    refusal = request_line(
        "legacy",
        {"model": "gpt-3.5-turbo-instruct", "prompt": "a", "emulator": {"refusal": "No."}},
        url=COMPLETIONS,
    )
    [answer] = _answers(client, [refusal], endpoint=COMPLETIONS).values()
    assert answer["error"]["param"] == "emulator.refusal"
    assert answer["error"]["message"] == "The directive 'emulator.refusal' does not apply to /v1/completions."
    embedding = request_line(
        "vector",
        {"model": "text-embedding-3-small", "input": "a", "emulator": {"content": "x"}},
        url="/v1/embeddings",
    )
    [answer] = _answers(client, [embedding], endpoint="/v1/embeddings").values()
    assert answer["error"]["param"] == "emulator.content"


def test_a_schema_without_an_instance_is_a_400(emulator: EmulatorProcess) -> None:
    client = sdk(emulator)
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "broken", "schema": {"$ref": "#/$defs/gone"}},
    }
    [answer] = _answers(client, [chat_line("broken", response_format=response_format)]).values()
    assert answer["error"]["param"] == "response_format.json_schema.schema"
    assert "#/$defs/gone" in answer["error"]["message"]


def test_the_sdk_parse_helpers_on_the_synchronous_endpoints(emulator: EmulatorProcess) -> None:
    client = sdk(emulator)
    messages = [{"role": "user", "content": "Bill ACME for two widgets"}]
    parsed = client.chat.completions.parse(model=MODEL, messages=messages, response_format=Invoice)  # type: ignore[arg-type]
    assert isinstance(parsed.choices[0].message.parsed, Invoice)
    again = client.chat.completions.parse(model=MODEL, messages=messages, response_format=Invoice)  # type: ignore[arg-type]
    assert again.choices[0].message.parsed == parsed.choices[0].message.parsed

    response = client.responses.parse(model=MODEL, input="Great product!", text_format=Sentiment)
    assert isinstance(response.output_parsed, Sentiment)

    refused = client.chat.completions.parse(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        response_format=Sentiment,
        extra_body={"emulator": {"refusal": "I can't help with that."}},
    )
    message = refused.choices[0].message
    assert (message.refusal, message.content, message.parsed) == ("I can't help with that.", None, None)


def test_the_upstream_engine_answers_scripted_lines_itself(make_emulator) -> None:
    upstream = make_emulator()
    front = make_emulator("--upstream", upstream.base_url)
    client = sdk(front)
    answers = _answers(
        client, [chat_line("scripted", emulator={"content": "positive"}), chat_line("forwarded")]
    )
    assert answers["scripted"].choices[0].message.content == "positive"
    assert answers["forwarded"].choices[0].message.content == "echo: hello"
    assert upstream.stats()["requests"] == {"POST /v1/chat/completions": 1}
