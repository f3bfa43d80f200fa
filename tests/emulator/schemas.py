"""Check the emulator's JSON against the OpenAPI subset it claims to implement.

``openai-batch-files.openapi.yaml`` beside this module is an unchanged copy of the project's schema
authority (a subset of openai/openai-openapi, MIT licence; see ``/work/shared/spec/README.md`` in
the workspace). It is vendored so that the suite runs from a clean clone.

The component schemas are used as published, with these documented adjustments:

* **Relaxed: nullability.** The spec omits the nullability that the real API and the SDK types
  have (``Optional`` fields, e.g. ``Batch.output_file_id`` or ``OpenAIFile.expires_at`` are null
  until set), so every property *not* in a schema's ``required`` list may also be ``null``.
  ``ListFilesResponse.first_id``/``last_id`` are required strings in the spec, yet a page without
  items has no first or last id: they may be ``null`` exactly when ``data`` is empty.
* **Stricter: completeness.** Every documented property must be present (possibly null) and no
  undocumented property may appear. The real API sends every field, and without this a misspelled
  optional field (``in_progess_at``) would pass silently because optional fields may be absent.
* **Azure dialect** (``azure=True``): a file's ``status`` may also be ``pending`` (Azure processes
  uploads asynchronously), and errors may use Azure's envelope ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).with_name("openai-batch-files.openapi.yaml")
_SPEC_URI = "urn:openai-batch-files"
RESPONSE_SCHEMAS = ("Batch", "OpenAIFile", "ListBatchesResponse", "ListFilesResponse", "DeleteFileResponse")

ERROR_ENVELOPE: dict[str, Any] = {
    # OpenAI's error body (errors.py in the emulator): exactly these keys, nothing else.
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string", "minLength": 1},
                "type": {"type": "string", "minLength": 1},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
            "required": ["message", "type", "param", "code"],
            "additionalProperties": False,
        }
    },
    "required": ["error"],
    "additionalProperties": False,
}


AZURE_ERROR_ENVELOPE: dict[str, Any] = {
    # Azure's own error body (emulator/azure.py): a code and a message, nothing else.
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "minLength": 1},
                "message": {"type": "string", "minLength": 1},
            },
            "required": ["code", "message"],
            "additionalProperties": False,
        }
    },
    "required": ["error"],
    "additionalProperties": False,
}


def _adjust(node: Any) -> Any:
    """Apply the module docstring's adjustments to every object schema below ``node``."""
    if isinstance(node, list):
        return [_adjust(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _adjust(value) for key, value in node.items()}
    properties = node.get("properties")
    if isinstance(properties, dict) and node.get("type", "object") == "object":
        required = set(node.get("required", []))
        node["properties"] = {
            name: schema if name in required else {"anyOf": [schema, {"type": "null"}]}
            for name, schema in properties.items()
        }
        node["required"] = list(properties)
        node["additionalProperties"] = False
    return node


@functools.cache
def _registry(azure: bool) -> Registry:
    spec = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    if azure:
        spec["components"]["schemas"]["OpenAIFile"]["properties"]["status"]["enum"].append("pending")
    schemas = _adjust(copy.deepcopy(spec["components"]["schemas"]))
    files_page = schemas["ListFilesResponse"]
    for name in ("first_id", "last_id"):
        files_page["properties"][name] = {"type": ["string", "null"]}
    # ...but a non-empty page names its first and last item.
    files_page["if"] = {"properties": {"data": {"minItems": 1}}}
    files_page["then"] = {"properties": {"first_id": {"type": "string"}, "last_id": {"type": "string"}}}
    document = {"components": {"schemas": schemas}}
    return Registry().with_resource(
        _SPEC_URI, Resource.from_contents(document, default_specification=DRAFT202012)
    )


@functools.cache
def _validator(name: str, azure: bool) -> jsonschema.Draft202012Validator:
    schema = {"$ref": f"{_SPEC_URI}#/components/schemas/{name}"}
    return jsonschema.Draft202012Validator(schema, registry=_registry(azure))


def assert_schema(name: str, body: Any, *, azure: bool = False) -> Any:
    """Fail with every violation listed unless ``body`` matches the (adjusted) schema ``name``."""
    assert name in RESPONSE_SCHEMAS, f"no schema check for {name!r}"
    errors = sorted(_validator(name, azure).iter_errors(body), key=lambda e: list(e.absolute_path))
    assert not errors, f"{name} schema violations:\n" + "\n".join(
        f"  at {'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors
    )
    return body


def assert_error_envelope(body: Any, *, azure: bool = False) -> dict[str, Any]:
    """Fail unless ``body`` is exactly ``{"error": {"message", "type", "param", "code"}}`` (or, with
    ``azure``, Azure's ``{"error": {"code", "message"}}``)."""
    envelopes = [ERROR_ENVELOPE, AZURE_ERROR_ENVELOPE] if azure else [ERROR_ENVELOPE]
    errors = [list(jsonschema.Draft202012Validator(envelope).iter_errors(body)) for envelope in envelopes]
    assert not all(errors), f"not an error envelope: {body!r}: {[e.message for e in errors[0]]}"
    return body["error"]
