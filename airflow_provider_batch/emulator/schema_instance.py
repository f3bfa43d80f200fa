"""Deterministic instances of a JSON Schema: what the emulator answers a Structured Outputs request with.

A model asked for ``response_format: {"type": "json_schema", ...}`` replies with JSON that fits the
schema; tests of a results pipeline need that shape, with values that differ between prompts (so a
column is not one constant) but never between two runs of the same prompt (so a test can assert an
exact row). :func:`instance_of` therefore draws every choice from a hash of the seed (the prompt)
and of the value's place in the document: adding a property does not change its siblings' values.

It covers the subset of JSON Schema that Structured Outputs accept, and what Pydantic emits for
them: ``type`` (one or a list), ``properties``, ``required``, ``additionalProperties``,
``enum``, ``const``, ``anyOf``/``oneOf``/``allOf``, ``$ref`` into the same document (``$defs``,
``definitions``, ``#``), ``items``/``prefixItems``, ``minItems``/``maxItems``/``uniqueItems``,
numeric bounds (both the 2020-12 and the draft-4 form of ``exclusive*``) and ``multipleOf``,
``minLength``/``maxLength``, ``pattern`` (best effort) and the common ``format`` values.
``oneOf`` takes its first branch, since a value that fits two branches would break it.

:func:`mismatch_of` answers the opposite question, for tests of the path that rejects a reply:
valid JSON that the schema refuses, preferring the mistakes models make (a required property
missing, a value of the wrong type) over a wrong root.

Pure: no I/O, no clock, no global random state.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import re
import uuid
from collections.abc import Callable, Iterator
from re import _constants as sre  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

import jsonschema

SOFT_REF_DEPTH = 3
"""``$ref`` expansions along one path after which the generator heads for the smallest instance:
optional properties left out, arrays at ``minItems``, the ``null`` or non-recursive branch."""
HARD_REF_DEPTH = 32
"""Past this many expansions a recursive schema has no finite instance: :class:`SchemaError`."""
DEFAULT_SPAN = 100
"""Width of the range a number is drawn from when the schema bounds it on one side or none."""
WORDS = (
    "amber", "basil", "cedar", "delta", "ember", "fjord", "garnet", "harbor", "indigo", "juniper",
    "kestrel", "lagoon", "meadow", "nimbus", "orchid", "pebble", "quartz", "ridge", "saffron", "tundra",
    "umber", "violet", "willow", "xenon", "yarrow", "zephyr",
)  # fmt: skip
_TYPE_OF_KEYWORD = (
    (("properties", "required", "additionalProperties", "minProperties"), "object"),
    (("items", "prefixItems", "minItems", "maxItems", "uniqueItems"), "array"),
    (("minLength", "maxLength", "pattern", "format"), "string"),
    (("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"), "number"),
)
_ANY_TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")


class SchemaError(ValueError):
    """A schema no instance can be made for: ``false``, a ``$ref`` that leaves the document or
    points nowhere, or a recursion that never ends."""


def instance_of(schema: Any, seed: str) -> Any:
    """A JSON value (dicts, lists, str, int, float, bool, None) valid against ``schema``, the same
    for the same ``seed``."""
    return _Generator(schema, seed).value(schema, "", 0)


def mismatch_of(schema: Any, seed: str) -> Any:
    """A JSON value that ``schema`` rejects, derived from :func:`instance_of` the way a model goes
    wrong: a required property dropped, else a property of the wrong type, else a root of the
    wrong type. A schema that accepts every value gets a one-element array."""
    valid = instance_of(schema, seed)
    candidates: list[Any] = []
    if isinstance(valid, dict):
        effective = _Generator(schema, seed).effective(schema, "", 0)[0]
        required = [name for name in effective.get("required", ()) if name in valid]
        candidates += [{key: value for key, value in valid.items() if key != name} for name in required[:1]]
        candidates += [{**valid, name: _wrong_type(value)} for name, value in list(valid.items())[:8]]
    candidates += [[valid], "text", 0, None, {}]
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)(schema)
    return next((value for value in candidates if not validator.is_valid(value)), [valid])


def _wrong_type(value: Any) -> Any:
    """A value of another JSON type, close to what a model writes by mistake (``"42"`` for 42)."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return len(value)
    return [value] if isinstance(value, dict) else {"items": value}


class _Generator:
    """One walk over one schema document; ``root`` resolves ``$ref``s, ``seed`` feeds every draw."""

    def __init__(self, root: Any, seed: str) -> None:
        self.root = root
        self.seed = seed

    def draw(self, path: str, salt: str, choices: int) -> int:
        """A number in ``range(choices)`` fixed by the seed, the value's path and the salt."""
        digest = hashlib.blake2b(f"{self.seed}\0{path}\0{salt}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % max(1, choices)

    def drawer(self, path: str, salt: str) -> Callable[[str, int], int]:
        """:meth:`draw` for one path under a salt of its own, for helpers that add theirs."""
        return lambda more, choices: self.draw(path, f"{salt}/{more}", choices)

    # Resolving the keywords that combine schemas -----------------------------------------------

    def effective(self, schema: Any, path: str, refs: int) -> tuple[dict[str, Any], int]:
        """The schema flattened to plain keywords (``$ref``, ``allOf``, ``anyOf``, ``oneOf``
        resolved and merged with their siblings), and the ``$ref`` depth reached."""
        while True:
            if schema is True:
                return {}, refs
            if schema is False:
                raise SchemaError(f"No value is valid against the schema 'false' (at '{path or '/'}').")
            if not isinstance(schema, dict):
                raise SchemaError(f"A schema must be an object or a boolean (at '{path or '/'}').")
            if "$ref" in schema:
                refs += 1
                if refs > HARD_REF_DEPTH:
                    raise SchemaError(f"The recursive schema has no finite instance (at '{path or '/'}').")
                rest = {key: value for key, value in schema.items() if key != "$ref"}
                schema = _merge(self.resolve(schema["$ref"]), rest)
            elif "allOf" in schema:
                merged = {key: value for key, value in schema.items() if key != "allOf"}
                for part in schema["allOf"]:
                    flat, refs = self.effective(part, path, refs)
                    merged = _merge(merged, flat)
                schema = merged
            elif "anyOf" in schema or "oneOf" in schema:
                keyword = "anyOf" if "anyOf" in schema else "oneOf"
                branches = schema[keyword]
                rest = {key: value for key, value in schema.items() if key != keyword}
                if keyword == "oneOf":
                    branch = branches[0]
                elif refs >= SOFT_REF_DEPTH:
                    branch = min(branches, key=_depth_cost)
                else:
                    branch = branches[self.draw(path, keyword, len(branches))]
                schema = _merge(rest, branch if isinstance(branch, dict) else {})
            else:
                return schema, refs

    def resolve(self, ref: Any) -> Any:
        """The target of a ``$ref`` inside this document (a JSON pointer after ``#``)."""
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise SchemaError(
                f"Only references inside the schema ('#/$defs/...') are supported, got {ref!r}."
            )
        target = self.root
        for token in filter(None, ref[1:].split("/")):
            token = token.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and token in target:
                target = target[token]
            elif isinstance(target, list) and token.isdigit() and int(token) < len(target):
                target = target[int(token)]
            else:
                raise SchemaError(f"The reference {ref!r} points to nothing in the schema.")
        return target

    # Values --------------------------------------------------------------------------------------

    def value(self, schema: Any, path: str, refs: int) -> Any:
        flat, refs = self.effective(schema, path, refs)
        if "const" in flat:
            return flat["const"]
        if isinstance(flat.get("enum"), list) and flat["enum"]:
            return flat["enum"][self.draw(path, "enum", len(flat["enum"]))]
        shallow = refs >= SOFT_REF_DEPTH
        kind = self.kind(flat, path, shallow=shallow)
        if kind == "object":
            return self.object(flat, path, refs, shallow)
        if kind == "array":
            return self.array(flat, path, refs, shallow)
        if kind == "string":
            return self.string(flat, path)
        if kind == "integer":
            return self.integer(flat, path)
        if kind == "number":
            return self.number(flat, path)
        if kind == "boolean":
            return bool(self.draw(path, "boolean", 2))
        return None

    def kind(self, schema: dict[str, Any], path: str, *, shallow: bool) -> str:
        """The JSON type to produce: one of ``type`` (``null`` first when heading for the smallest
        instance), else the type the other keywords imply, else a string."""
        given = schema.get("type")
        types = [given] if isinstance(given, str) else list(given) if isinstance(given, list) else []
        types = [kind for kind in types if kind in _ANY_TYPES]
        if not types:
            implied = [kind for keywords, kind in _TYPE_OF_KEYWORD if any(key in schema for key in keywords)]
            return implied[0] if implied else "string"
        if shallow and "null" in types:
            return "null"
        return str(types[self.draw(path, "type", len(types))])

    def object(self, schema: dict[str, Any], path: str, refs: int, shallow: bool) -> dict[str, Any]:
        properties = schema.get("properties") or {}
        required = [name for name in schema.get("required", ()) if isinstance(name, str)]
        extra = schema.get("additionalProperties", True)
        out: dict[str, Any] = {}
        for name, sub in properties.items():
            # Optional properties are mostly present, as a model fills what it can.
            if name in required or (not shallow and self.draw(f"{path}/{name}", "present", 4)):
                out[name] = self.value(sub, f"{path}/{name}", refs)
        for name in required:
            if name not in out:
                out[name] = self.value(extra if isinstance(extra, dict) else {}, f"{path}/{name}", refs)
        if isinstance(extra, dict) and not properties:  # a map, e.g. Pydantic's dict[str, int]
            wanted = max(
                int(schema.get("minProperties", 0)), 0 if shallow else 1 + self.draw(path, "size", 2)
            )
            for word in self.words(path, "keys"):
                if len(out) >= wanted:
                    break
                out.setdefault(word, self.value(extra, f"{path}/{word}", refs))
        return out

    def array(self, schema: dict[str, Any], path: str, refs: int, shallow: bool) -> list[Any]:
        prefix = schema.get("prefixItems") or []
        items = schema.get("items", True)
        if isinstance(items, list):  # the draft-4 tuple form
            prefix, items = items, schema.get("additionalItems", True)
        low = max(int(schema.get("minItems", 0)), 0)
        high = int(schema.get("maxItems", low + 3))
        if items is False:
            high = min(high, len(prefix))
        wanted = low if shallow else min(high, max(low, 1) + self.draw(path, "size", 3))
        out: list[Any] = []
        for index in range(wanted):
            sub = prefix[index] if index < len(prefix) else items
            item = self.value(sub, f"{path}/{index}", refs)
            if schema.get("uniqueItems"):
                for attempt in range(32):  # a duplicate is drawn again under another path
                    if item not in out:
                        break
                    item = self.value(sub, f"{path}/{index}~{attempt}", refs)
                else:
                    break
            out.append(item)
        return out

    def string(self, schema: dict[str, Any], path: str) -> str:
        low = int(schema.get("minLength", 0))
        high = schema.get("maxLength")

        def fits(text: str) -> bool:
            return low <= len(text) and (high is None or len(text) <= high)

        fmt, pattern = schema.get("format"), schema.get("pattern")
        if isinstance(fmt, str) and fmt in _FORMATS:
            return _FORMATS[fmt](self, path)
        if isinstance(pattern, str):
            made = [
                text
                for attempt in range(8)
                if (text := _from_pattern(pattern, self.drawer(path, f"pattern{attempt}"))) is not None
            ]
            if made:
                return next((text for text in made if fits(text)), made[0])
        text = " ".join(self.words(path, "text")[: 1 + self.draw(path, "length", 3)])
        words = iter(self.words(path, "padding"))
        while len(text) < low:
            text += " " + next(words)
        return text if high is None else text[: int(high)]

    def words(self, path: str, salt: str) -> list[str]:
        """All of :data:`WORDS` in an order of this path's own."""
        return sorted(WORDS, key=lambda word: self.draw(path, f"{salt}:{word}", 1 << 30))

    def integer(self, schema: dict[str, Any], path: str) -> int:
        low, high = _bounds(schema, integer=True)
        first = -(-low // 1) if low is not None else None
        last = high // 1 if high is not None else None
        first, last = _span(first, last)
        step = schema.get("multipleOf")
        if isinstance(step, int) and not isinstance(step, bool) and step > 0:
            first = -(-first // step) * step
            return int(first + step * self.draw(path, "integer", max(0, last - first) // step + 1))
        return int(first + self.draw(path, "integer", last - first + 1))

    def number(self, schema: dict[str, Any], path: str) -> float | int:
        low, high = _bounds(schema, integer=False)
        step = schema.get("multipleOf")
        if isinstance(step, int | float) and not isinstance(step, bool) and step > 0:
            first, last = _span(low, high)
            count = max(0, int((last - first) // step))
            return (-(-first // step) + self.draw(path, "number", count + 1)) * step
        first, last = _span(low, high)
        # Strictly inside, so exclusive bounds hold; two decimals when the range allows.
        fraction = (1 + self.draw(path, "number", 998)) / 1000
        value = first + (last - first) * fraction
        rounded = round(value, 2)
        return rounded if first < rounded < last else value

    def formatted_date(self, path: str) -> datetime.datetime:
        start = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
        return start + datetime.timedelta(seconds=self.draw(path, "instant", 6 * 365 * 86_400))


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Both schemas' keywords: ``properties`` joined, ``required`` united, ``type`` intersected
    (``integer`` within ``number``); any other keyword from ``extra``."""
    out = dict(base)
    for key, value in extra.items():
        if key == "properties" and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        elif key == "required" and isinstance(out.get(key), list):
            out[key] = list(dict.fromkeys([*out[key], *value]))
        elif key == "type" and key in out:
            out[key] = _common_types(out[key], value) or value
        else:
            out[key] = value
    return out


def _common_types(first: Any, second: Any) -> list[str]:
    ones = {first} if isinstance(first, str) else set(first)
    others = {second} if isinstance(second, str) else set(second)
    common = ones & others
    if "integer" in ones | others and "number" in ones | others:
        common.add("integer")
    return sorted(common)


def _depth_cost(branch: Any) -> int:
    """Branch preference when a recursion must end: ``null``, then any branch without a ``$ref``."""
    if isinstance(branch, dict) and branch.get("type") == "null":
        return 0
    return 2 if "$ref" in repr(branch) else 1


def _bounds(schema: dict[str, Any], *, integer: bool) -> tuple[Any, Any]:
    """The inclusive bounds (None where unbounded). An exclusive bound, in the 2020-12 form (a
    number) or the draft-4 one (``true`` beside ``minimum``), becomes the next integer inwards for
    an integer, and moves a hair inwards for a number (which :meth:`_Generator.number` keeps
    strictly inside anyway)."""
    bounds: list[Any] = []
    for inclusive, exclusive, direction in (
        ("minimum", "exclusiveMinimum", 1),
        ("maximum", "exclusiveMaximum", -1),
    ):
        bound: Any = schema.get(inclusive)
        strict: Any = schema.get(exclusive)
        if strict is True:
            strict, bound = bound, None
        if _is_number(strict):
            inner = (
                (math.floor(strict) + 1 if direction > 0 else math.ceil(strict) - 1)
                if integer
                else strict + direction * 1e-9
            )
            bound = inner if bound is None else (max if direction > 0 else min)(bound, inner)
        bounds.append(bound)
    return bounds[0], bounds[1]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _span(low: Any, high: Any) -> tuple[Any, Any]:
    """Fill in a missing bound :data:`DEFAULT_SPAN` away from the other (0..100 with neither)."""
    if low is None and high is None:
        return 0, DEFAULT_SPAN
    if low is None:
        return high - DEFAULT_SPAN, high
    if high is None:
        return low, low + DEFAULT_SPAN
    return low, high


# Formats ---------------------------------------------------------------------------------------


def _uuid(generator: _Generator, path: str) -> str:
    digest = hashlib.blake2b(f"{generator.seed}\0{path}\0uuid".encode(), digest_size=16).digest()
    return str(uuid.UUID(bytes=digest, version=4))


_FORMATS: dict[str, Callable[[_Generator, str], str]] = {
    "date-time": lambda g, p: g.formatted_date(p).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "date": lambda g, p: g.formatted_date(p).date().isoformat(),
    "time": lambda g, p: g.formatted_date(p).strftime("%H:%M:%SZ"),
    "duration": lambda g, p: f"P{1 + g.draw(p, 'days', 30)}DT{g.draw(p, 'hours', 24)}H",
    "email": lambda g, p: f"{g.words(p, 'user')[0]}.{g.words(p, 'name')[0]}@example.com",
    "hostname": lambda g, p: f"{g.words(p, 'host')[0]}.example.com",
    "ipv4": lambda g, p: f"192.0.2.{1 + g.draw(p, 'ipv4', 254)}",
    "ipv6": lambda g, p: f"2001:db8::{g.draw(p, 'ipv6', 0xFFFF):x}",
    "uuid": _uuid,
    "uri": lambda g, p: f"https://example.com/{g.words(p, 'uri')[0]}/{g.draw(p, 'uri', 1000)}",
}


# Patterns --------------------------------------------------------------------------------------

_CATEGORY_CHARS = {
    sre.CATEGORY_DIGIT: "0123456789",
    sre.CATEGORY_NOT_DIGIT: "abcxyz",
    sre.CATEGORY_WORD: "abcxyz019_",
    sre.CATEGORY_NOT_WORD: " -.",
    sre.CATEGORY_SPACE: " ",
    sre.CATEGORY_NOT_SPACE: "abcxyz019",
}
_PROBES = "aZ0_- .x9"
"""Characters tried, in order, for a negated class (``[^...]``)."""


def _from_pattern(pattern: str, draw: Callable[[str, int], int]) -> str | None:
    """A string that ``re.search(pattern, ...)`` accepts, built by walking the parsed pattern;
    None when the pattern does not parse or the walk fails (lookarounds, back-references)."""
    try:
        parsed = sre_parse.parse(pattern)
        text = "".join(_emit(list(parsed), draw, iter(range(1 << 30))))
    except (re.error, _Unsupported):
        return None
    return text if re.search(pattern, text) else None


class _Unsupported(Exception):
    pass


def _emit(items: list[Any], draw: Callable[[str, int], int], counter: Iterator[int]) -> Iterator[str]:
    for op, arg in items:
        salt = str(next(counter))
        if op is sre.LITERAL:
            yield chr(arg)
        elif op is sre.NOT_LITERAL:
            yield next(ch for ch in _PROBES if ord(ch) != arg)
        elif op is sre.ANY:
            yield "x"
        elif op is sre.IN:
            yield _from_class(arg, draw, salt)
        elif op is sre.CATEGORY:
            chars = _CATEGORY_CHARS[arg]
            yield chars[draw(salt, len(chars))]
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
            low, high, sub = arg
            high = low + 2 if high is sre.MAXREPEAT else min(high, low + 2)
            for _ in range(low + draw(salt, high - low + 1)):
                yield from _emit(list(sub), draw, counter)
        elif op is sre.SUBPATTERN:
            yield from _emit(list(arg[-1]), draw, counter)
        elif op is sre.ATOMIC_GROUP:
            yield from _emit(list(arg), draw, counter)
        elif op is sre.BRANCH:
            branches = arg[1]
            yield from _emit(list(branches[draw(salt, len(branches))]), draw, counter)
        elif op in (sre.AT, sre.ASSERT, sre.ASSERT_NOT):
            continue  # anchors and lookarounds add no text; the final re.search judges the result
        else:
            raise _Unsupported(str(op))


def _from_class(members: list[Any], draw: Callable[[str, int], int], salt: str) -> str:
    if members and members[0][0] is sre.NEGATE:
        rest = members[1:]
        return next(ch for ch in _PROBES if not any(_in_member(member, ch) for member in rest))
    op, arg = members[draw(salt, len(members))]
    if op is sre.LITERAL:
        return chr(arg)
    if op is sre.RANGE:
        return chr(arg[0] + draw(salt + "r", arg[1] - arg[0] + 1))
    if op is sre.CATEGORY:
        chars = _CATEGORY_CHARS[arg]
        return chars[draw(salt + "c", len(chars))]
    raise _Unsupported(str(op))


def _in_member(member: tuple[Any, Any], ch: str) -> bool:
    op, arg = member
    if op is sre.LITERAL:
        return ord(ch) == arg
    if op is sre.RANGE:
        return arg[0] <= ord(ch) <= arg[1]
    if op is sre.CATEGORY:
        return bool(re.fullmatch(_CATEGORY_REGEX[arg], ch))
    return False


_CATEGORY_REGEX = {
    sre.CATEGORY_DIGIT: r"\d",
    sre.CATEGORY_NOT_DIGIT: r"\D",
    sre.CATEGORY_WORD: r"\w",
    sre.CATEGORY_NOT_WORD: r"\W",
    sre.CATEGORY_SPACE: r"\s",
    sre.CATEGORY_NOT_SPACE: r"\S",
}
