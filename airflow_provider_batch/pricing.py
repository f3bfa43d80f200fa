"""Prices of the models a batch runs, and what a batch will cost or did cost, in US dollars.

The Batch API bills every token at its model's standard price times a batch multiplier (0.5: half
price, input, cached input and output alike). The package ships the standard prices in
``prices.json``, a versioned table that records the date it was taken on and its source; a
:class:`PriceTable` reads it once per process (:func:`default_table`) and validates it.

- **Units.** Every price is in USD per 1M tokens, as OpenAI publishes them; names say whether a price
  is the *standard* one (``standard_input_per_1m``) or the *batch* one (``batch_input_per_1m`` =
  standard times ``batch_multiplier``). Amounts are :class:`decimal.Decimal` USD, exact (never rounded);
  :func:`format_usd` rounds for display only, and the ``to_dict()`` shapes give JSON numbers.
- **Which price.** :meth:`PriceTable.price_for` looks a model name up exactly, then through the table's
  aliases, then as a dated snapshot: a known name followed by exactly ``-YYYY-MM-DD``
  (``gpt-4o-mini-2024-07-18`` → ``gpt-4o-mini``). Never by a looser prefix: ``gpt-4o`` does not price
  ``gpt-4o-mini`` nor ``gpt-4o-audio-preview``, and a fine-tuned model (``ft:...``) has no price. An
  entry for a dated name itself, when a snapshot was priced apart, wins over its family.
- **Overrides.** :meth:`PriceTable.with_overrides` adds or replaces prices for negotiated contracts,
  Azure deployment names and compatible servers. They use the table's convention: *standard*
  (non-batch) USD per 1M tokens, ``{"input": ..., "output": ..., "cached_input": ...}``, to which the
  table's ``batch_multiplier`` is applied. ``cached_input`` may be left out (cached tokens are then
  billed as input); ``batch_multiplier`` may be given per model, ``1`` meaning "these prices are
  already what a batch costs" (a server without a batch discount, or a contract quoted in batch
  prices). ``aliases`` map a name to a priced one (an Azure deployment to its model).
- **Estimate** (:meth:`PriceTable.estimate_cost`, before upload): every input token at the batch
  input price (no cache hit assumed, so the input part is not understated), and the output caps of
  the requests that have one at the batch output price. Requests without an output cap
  (``uncapped_requests``) cannot be bounded: see :class:`CostEstimate` for how ``max_cost`` treats them.
- **Actual** (:meth:`PriceTable.actual_cost`, after): from a batch's ``usage``: ``input_tokens`` less
  ``input_tokens_details.cached_tokens`` at the input price, the cached tokens at the cached price,
  ``output_tokens`` at the output price. Reasoning tokens (``output_tokens_details.reasoning_tokens``)
  are billed as output and are already part of ``output_tokens``: they are reported, never added
  again. :class:`Cost` values add up (``+``, :func:`sum_costs`) across shards and rounds.
- **No price.** :meth:`PriceTable.require`, :meth:`~PriceTable.estimate_cost` and
  :meth:`~PriceTable.actual_cost` raise :class:`UnpricedModelError` (whose message tells the user what
  to give); :meth:`~PriceTable.price_for` returns ``None``.

The module does no I/O but reading its own table, and keeps no state but that table.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Any, Final, Literal

CURRENCY: Final = "USD"
TABLE_FILE: Final = "prices.json"
PRICE_FIELDS: Final = ("input", "cached_input", "output")
"""The prices of one model, USD per 1M tokens."""
OVERRIDE_FIELDS: Final = (*PRICE_FIELDS, "batch_multiplier")
_TABLE_FIELDS: Final = frozenset(
    {"version", "taken_on", "source", "notes", "currency", "batch_multiplier", "models", "aliases"}
)
_MILLION: Final = Decimal(1_000_000)
_SNAPSHOT: Final = re.compile(r"(?P<family>.+)-(?P<date>\d{4}-\d{2}-\d{2})")
"""A dated snapshot: its family's name followed by exactly ``-YYYY-MM-DD``."""

PriceSource = Literal["table", "override"]


class PricingError(ValueError):
    """A price table or an override is invalid; the message names the model and the field."""


class UnpricedModelError(LookupError):
    """A model has no price in the table (nor in its overrides).

    The operator turns it into a refusal unless the user allowed unpriced models; :attr:`hint` names
    what to give, and can be replaced (``UnpricedModelError(model, table, hint=...)``) by a caller
    whose parameters are named otherwise.
    """

    def __init__(self, model: str | None, table: PriceTable, *, hint: str | None = None) -> None:
        self.model = model
        self.table_version = table.version
        self.taken_on = table.taken_on
        example = f"{{{model or 'MODEL'!r}: {{'input': ..., 'cached_input': ..., 'output': ...}}}}"
        self.hint = hint or (
            f"give its prices (prices={example}, standard USD per 1M tokens) or allow_unpriced=True"
        )
        what = f"model {model!r}" if model else "a request without a model"
        super().__init__(f"{what} has no price in {table.describe()}; {self.hint}")

    def __str__(self) -> str:  # LookupError would quote the message like a key
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:  # pickles although __init__ takes a table
        return (_unpickle_unpriced, (str(self), self.model, self.table_version, self.taken_on, self.hint))


def _unpickle_unpriced(
    message: str, model: str | None, table_version: str, taken_on: date, hint: str
) -> UnpricedModelError:
    error = UnpricedModelError.__new__(UnpricedModelError)
    LookupError.__init__(error, message)
    error.model, error.table_version, error.taken_on, error.hint = model, table_version, taken_on, hint
    return error


@dataclass(frozen=True)
class Price:
    """One model's prices, USD per 1M tokens.

    :param model: the table entry (or override) the prices come from, e.g. ``gpt-4o`` for
        ``gpt-4o-2024-08-06``.
    :param standard_input_per_1m: standard (non-batch) price of an uncached input token.
    :param standard_cached_input_per_1m: standard price of a cached input token.
    :param standard_output_per_1m: standard price of an output token, reasoning tokens included.
    :param batch_multiplier: what a batch pays of the standard price (0.5: half; 1: no discount).
    :param source: ``table`` (shipped) or ``override`` (given by the user).
    """

    model: str
    standard_input_per_1m: Decimal
    standard_cached_input_per_1m: Decimal
    standard_output_per_1m: Decimal
    batch_multiplier: Decimal
    source: PriceSource = "table"

    @property
    def batch_input_per_1m(self) -> Decimal:
        return self.standard_input_per_1m * self.batch_multiplier

    @property
    def batch_cached_input_per_1m(self) -> Decimal:
        return self.standard_cached_input_per_1m * self.batch_multiplier

    @property
    def batch_output_per_1m(self) -> Decimal:
        return self.standard_output_per_1m * self.batch_multiplier

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: the entry used, where it comes from, and both the standard and batch prices."""
        return {
            "priced_as": self.model,
            "source": self.source,
            "batch_multiplier": float(self.batch_multiplier),
            "standard_per_1m": {
                "input": float(self.standard_input_per_1m),
                "cached_input": float(self.standard_cached_input_per_1m),
                "output": float(self.standard_output_per_1m),
            },
            "batch_per_1m": {
                "input": float(self.batch_input_per_1m),
                "cached_input": float(self.batch_cached_input_per_1m),
                "output": float(self.batch_output_per_1m),
            },
        }


def format_usd(amount: Decimal) -> str:
    """An amount for a log line: cents from one cent up (``$1,234.57``), two significant digits below
    (``$0.00042``), ``$0.00`` for nothing. Display only: amounts themselves are never rounded."""
    if amount == 0:
        return "$0.00"
    sign = "-" if amount < 0 else ""
    amount = abs(amount)
    if amount >= Decimal("0.01"):
        return f"{sign}${amount:,.2f}"
    digits = -amount.adjusted() + 1  # two significant digits
    return f"{sign}${amount:.{digits}f}"


def _prices_dict(table_version: str, taken_on: date, prices: Mapping[str, Price]) -> dict[str, Any]:
    return {
        "table_version": table_version,
        "taken_on": taken_on.isoformat(),
        "models": {model: price.to_dict() for model, price in prices.items()},
    }


def _merge_prices(left: Mapping[str, Price], right: Mapping[str, Price]) -> Mapping[str, Price]:
    merged = dict(left)
    for model, price in right.items():
        if merged.setdefault(model, price) != price:
            raise ValueError(f"cannot add amounts priced differently for model {model!r}")
    return MappingProxyType(merged)


def _check_same_table(left: _Priced, right: _Priced) -> None:
    if (left.table_version, left.taken_on) != (right.table_version, right.taken_on):
        raise ValueError(
            f"cannot add amounts from {_table_name(left.table_version, left.taken_on)} and "
            f"{_table_name(right.table_version, right.taken_on)}"
        )


@dataclass(frozen=True)
class _Priced:
    table_version: str
    taken_on: date
    prices: Mapping[str, Price]
    """Each model name asked (as the batch or request gave it) and the price it was billed at."""


@dataclass(frozen=True)
class CostEstimate(_Priced):
    """What a batch file will cost at most, before upload, in USD at batch prices.

    ``input`` prices every input token as uncached; ``output_bound`` prices the output caps of the
    requests that have one. Requests without a cap (``uncapped_requests``, or ``max_output_tokens``
    given as ``None``) could produce any number of tokens, so when there are any the estimate has no
    upper bound (:attr:`upper_bound` is ``None``).

    How ``max_cost`` should treat it: compare :attr:`bounded_total` (the input plus the capped
    output), i.e. refuse when :meth:`exceeds` is true, which is certain to be right when every request
    is capped; when some are not, the cost may still pass the cap, so say so next to the estimate
    (:meth:`describe` names how many requests were uncapped), and a strict caller may refuse them.
    """

    input_tokens: int = 0
    max_output_tokens: int = 0
    """The sum of the output caps of the capped requests."""
    uncapped_requests: int = 0
    output_unbounded: bool = False
    """Some output was not capped: ``uncapped_requests`` > 0, or the cap was given as ``None``."""
    input: Decimal = Decimal(0)
    output_bound: Decimal = Decimal(0)

    @property
    def bounded_total(self) -> Decimal:
        """Input plus capped output: the figure ``max_cost`` is compared with."""
        return self.input + self.output_bound

    @property
    def upper_bound(self) -> Decimal | None:
        """The most the batch can cost; ``None`` when some output is not capped."""
        return None if self.output_unbounded else self.bounded_total

    def exceeds(self, max_cost: Decimal | float | int | str) -> bool:
        """Whether :attr:`bounded_total` is above ``max_cost`` (USD)."""
        return self.bounded_total > _amount(max_cost, "max_cost")

    def __add__(self, other: CostEstimate) -> CostEstimate:
        _check_same_table(self, other)
        return CostEstimate(
            table_version=self.table_version,
            taken_on=self.taken_on,
            prices=_merge_prices(self.prices, other.prices),
            input_tokens=self.input_tokens + other.input_tokens,
            max_output_tokens=self.max_output_tokens + other.max_output_tokens,
            uncapped_requests=self.uncapped_requests + other.uncapped_requests,
            output_unbounded=self.output_unbounded or other.output_unbounded,
            input=self.input + other.input,
            output_bound=self.output_bound + other.output_bound,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON for the manifest; amounts are unrounded USD numbers."""
        upper = self.upper_bound
        return {
            "currency": CURRENCY,
            "input": float(self.input),
            "output_bound": float(self.output_bound),
            "bounded_total": float(self.bounded_total),
            "upper_bound": None if upper is None else float(upper),
            "output_bounded": not self.output_unbounded,
            "uncapped_requests": self.uncapped_requests,
            "tokens": {"input": self.input_tokens, "max_output": self.max_output_tokens},
            "prices": _prices_dict(self.table_version, self.taken_on, self.prices),
        }

    def describe(self) -> str:
        """One line for the log."""
        text = (
            f"estimated cost {format_usd(self.bounded_total)}: input {format_usd(self.input)} "
            f"({self.input_tokens:,} tokens), output at most {format_usd(self.output_bound)} "
            f"({self.max_output_tokens:,} tokens)"
        )
        if self.uncapped_requests:
            text += f", plus {self.uncapped_requests:,} request(s) without an output cap, not bounded"
        elif self.output_unbounded:
            text += ", plus output without a cap, not bounded"
        return f"{text}; {_priced_at(self)}"


@dataclass(frozen=True)
class Cost(_Priced):
    """What batches cost, from their ``usage``, in USD at batch prices.

    Token counts mirror ``usage``: ``input_tokens`` includes ``cached_tokens`` (only the difference is
    billed at the input price) and ``output_tokens`` includes ``reasoning_tokens`` (shown, billed once,
    as output).
    """

    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    input: Decimal = Decimal(0)
    """Uncached input tokens at the batch input price."""
    cached_input: Decimal = Decimal(0)
    output: Decimal = Decimal(0)

    @property
    def total(self) -> Decimal:
        return self.input + self.cached_input + self.output

    def __add__(self, other: Cost) -> Cost:
        _check_same_table(self, other)
        return Cost(
            table_version=self.table_version,
            taken_on=self.taken_on,
            prices=_merge_prices(self.prices, other.prices),
            input_tokens=self.input_tokens + other.input_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            input=self.input + other.input,
            cached_input=self.cached_input + other.cached_input,
            output=self.output + other.output,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON for the manifest; amounts are unrounded USD numbers."""
        return {
            "currency": CURRENCY,
            "input": float(self.input),
            "cached_input": float(self.cached_input),
            "output": float(self.output),
            "total": float(self.total),
            "tokens": {
                "input": self.input_tokens,
                "cached_input": self.cached_tokens,
                "output": self.output_tokens,
                "reasoning": self.reasoning_tokens,
            },
            "prices": _prices_dict(self.table_version, self.taken_on, self.prices),
        }

    def describe(self) -> str:
        """One line for the log."""
        return (
            f"actual cost {format_usd(self.total)}: input {format_usd(self.input)} "
            f"({self.input_tokens - self.cached_tokens:,} tokens), cached input "
            f"{format_usd(self.cached_input)} ({self.cached_tokens:,} tokens), output "
            f"{format_usd(self.output)} ({self.output_tokens:,} tokens, {self.reasoning_tokens:,} of them "
            f"reasoning); {_priced_at(self)}"
        )


def sum_costs(costs: Iterable[Cost]) -> Cost | None:
    """The costs of several batches (shards, rounds) added up; ``None`` for none."""
    total: Cost | None = None
    for cost in costs:
        total = cost if total is None else total + cost
    return total


def _priced_at(priced: _Priced) -> str:
    models = ", ".join(
        name if price.model == name else f"{name} as {price.model}" for name, price in priced.prices.items()
    )
    overridden = " (overridden)" if any(p.source == "override" for p in priced.prices.values()) else ""
    return f"batch prices of {models}{overridden}, {_table_name(priced.table_version, priced.taken_on)}"


def _table_name(version: str, taken_on: date) -> str:
    return f"price table version {version} (taken on {taken_on.isoformat()})"


def _amount(value: object, where: str) -> Decimal:
    """A non-negative, finite amount from a JSON number, a Decimal or a numeric string."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise PricingError(f"{where} must be a number; got {value!r}")
    try:
        amount = Decimal(str(value).strip()) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        raise PricingError(f"{where} must be a number; got {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise PricingError(f"{where} must be a finite number of at least 0; got {value!r}")
    return amount


def _multiplier(value: object, where: str) -> Decimal:
    multiplier = _amount(value, where)
    if not 0 < multiplier <= 1:
        raise PricingError(f"{where} must be above 0 and at most 1 (0.5: half price); got {value!r}")
    return multiplier


def _price(
    model: object, values: object, *, batch_multiplier: Decimal, source: PriceSource, where: str
) -> Price:
    """A :class:`Price` from ``{"input", "cached_input", "output"[, "batch_multiplier"]}``."""
    if not isinstance(model, str) or not model.strip() or model != model.strip():
        raise PricingError(
            f"{where}: a model name must be a non-empty string without spaces around; got {model!r}"
        )
    if not isinstance(values, Mapping):
        raise PricingError(f"{where}: the prices of model {model!r} must be an object; got {values!r}")
    allowed = OVERRIDE_FIELDS if source == "override" else PRICE_FIELDS
    unknown = sorted(str(name) for name in values if name not in allowed)
    if unknown:
        raise PricingError(
            f"{where}: model {model!r} has unknown field(s) {', '.join(unknown)}; "
            f"expected {', '.join(allowed)}"
        )
    required = ("input", "output") if source == "override" else PRICE_FIELDS
    missing = [name for name in required if name not in values]
    if missing:
        raise PricingError(f"{where}: model {model!r} lacks {', '.join(missing)} (USD per 1M tokens)")
    amounts = {
        name: _amount(values[name], f"{where}: model {model!r} field {name!r}")
        for name in PRICE_FIELDS
        if name in values
    }
    amounts.setdefault("cached_input", amounts["input"])
    if amounts["cached_input"] > amounts["input"]:
        raise PricingError(
            f"{where}: model {model!r} field 'cached_input' ({values['cached_input']}) is above its "
            f"'input' ({values['input']})"
        )
    if "batch_multiplier" in values:
        batch_multiplier = _multiplier(
            values["batch_multiplier"], f"{where}: model {model!r} field 'batch_multiplier'"
        )
    return Price(
        model=model,
        standard_input_per_1m=amounts["input"],
        standard_cached_input_per_1m=amounts["cached_input"],
        standard_output_per_1m=amounts["output"],
        batch_multiplier=batch_multiplier,
        source=source,
    )


def _count(usage: Mapping[str, Any], *names: str) -> int:
    """A token count of ``usage``, under the first of ``names`` it has (0 when none)."""
    for name in names:
        value = usage.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"usage field {name!r} must be a whole number of at least 0; got {value!r}")
        return value
    return 0


def _details(usage: Mapping[str, Any], *names: str) -> Mapping[str, Any]:
    """The first of ``usage``'s detail objects named ``names`` (empty when none)."""
    for name in names:
        value = usage.get(name)
        if value is None:
            continue
        if not isinstance(value, Mapping):
            raise ValueError(f"usage field {name!r} must be an object; got {value!r}")
        return value
    return {}


@dataclass(frozen=True)
class PriceTable:
    """Standard prices per model, the batch multiplier, and where and when they were taken.

    Build it with :func:`default_table` (the shipped table), :meth:`from_dict` (validated) and
    :meth:`with_overrides`; it is immutable.
    """

    version: str
    taken_on: date
    source: str
    batch_multiplier: Decimal
    prices: Mapping[str, Price]
    aliases: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Names priced as another (an Azure deployment → its model); every target is priced."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PriceTable:
        """A table from its JSON form (``prices.json``), validated: every model has every price, each
        a number of at least 0 with ``cached_input`` not above ``input``; ``batch_multiplier`` in
        (0, 1]; ``taken_on`` an ISO date; every alias leads to a priced model."""
        unknown = sorted(set(data) - _TABLE_FIELDS)
        if unknown:
            raise PricingError(f"price table: unknown field(s) {', '.join(unknown)}")
        for name in ("version", "taken_on", "source", "batch_multiplier", "models"):
            if name not in data:
                raise PricingError(f"price table: field {name!r} is missing")
        version = data["version"]
        if not isinstance(version, str) or not version:
            raise PricingError(f"price table: 'version' must be a non-empty string; got {version!r}")
        try:
            taken_on = date.fromisoformat(str(data["taken_on"]))
        except ValueError:
            raise PricingError(
                f"price table: 'taken_on' must be a YYYY-MM-DD date; got {data['taken_on']!r}"
            ) from None
        if data.get("currency", CURRENCY) != CURRENCY:
            raise PricingError(f"price table: 'currency' must be {CURRENCY!r}; got {data['currency']!r}")
        multiplier = _multiplier(data["batch_multiplier"], "price table: 'batch_multiplier'")
        models = data["models"]
        if not isinstance(models, Mapping) or not models:
            raise PricingError("price table: 'models' must be a non-empty object")
        prices = {
            model: _price(model, values, batch_multiplier=multiplier, source="table", where="price table")
            for model, values in models.items()
        }
        table = cls(
            version=version,
            taken_on=taken_on,
            source=str(data["source"]),
            batch_multiplier=multiplier,
            prices=MappingProxyType(prices),
        )
        return table._with_aliases(data.get("aliases") or {}, where="price table")

    def with_overrides(
        self,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        aliases: Mapping[str, str] | None = None,
    ) -> PriceTable:
        """This table with prices added or replaced, for negotiated prices, Azure deployments and
        compatible servers; the table's version and date are kept, and each overridden price says so.

        :param overrides: per model name, *standard* USD per 1M tokens: ``input`` and ``output``
            (required), ``cached_input`` (default: ``input``), and ``batch_multiplier`` (default: the
            table's; ``1`` when the prices given are already batch prices). A name replaces the table's
            entry entirely, and prices its dated snapshots too.
        :param aliases: names priced as another known name (``{"my-gpt4o-deployment": "gpt-4o"}``).
        :raises PricingError: naming the model and the field at fault.
        """
        if overrides is not None and not isinstance(overrides, Mapping):
            raise PricingError(f"price overrides must be an object keyed by model; got {overrides!r}")
        prices = dict(self.prices)
        for model, values in (overrides or {}).items():
            prices[model] = _price(
                model,
                values,
                batch_multiplier=self.batch_multiplier,
                source="override",
                where="price overrides",
            )
        # An overridden name no longer follows a shipped alias.
        kept = {name: target for name, target in self.aliases.items() if name not in prices}
        table = PriceTable(
            version=self.version,
            taken_on=self.taken_on,
            source=self.source,
            batch_multiplier=self.batch_multiplier,
            prices=MappingProxyType(prices),
            aliases=MappingProxyType(kept),
        )
        return table._with_aliases(aliases or {}, where="price aliases")

    def _with_aliases(self, aliases: object, *, where: str) -> PriceTable:
        if not isinstance(aliases, Mapping):
            raise PricingError(f"{where} must be an object of name to model; got {aliases!r}")
        resolved = dict(self.aliases)
        for name, target in aliases.items():
            if not isinstance(name, str) or not name or not isinstance(target, str):
                raise PricingError(f"{where}: {name!r} → {target!r}: both must be non-empty strings")
            if name in self.prices:
                raise PricingError(f"{where}: {name!r} has prices of its own; it cannot also be an alias")
            entry = self._entry(target)
            if entry is None:
                raise PricingError(f"{where}: {name!r} → {target!r}, which has no price in {self.describe()}")
            resolved[name] = entry
        return PriceTable(
            version=self.version,
            taken_on=self.taken_on,
            source=self.source,
            batch_multiplier=self.batch_multiplier,
            prices=self.prices,
            aliases=MappingProxyType(resolved),
        )

    def _entry(self, model: str) -> str | None:
        """The entry pricing ``model``: its own, its alias's, or its family's when it is one of its
        dated snapshots; never a looser prefix."""
        if model in self.prices:
            return model
        if model in self.aliases:
            return self.aliases[model]
        snapshot = _SNAPSHOT.fullmatch(model)
        if snapshot is not None:
            family = snapshot["family"]
            if family in self.prices:
                return family
            return self.aliases.get(family)
        return None

    def price_for(self, model: str | None) -> Price | None:
        """The price of ``model`` (a name as a request or the Batch object gives it), or ``None``."""
        entry = self._entry(model) if model else None
        return None if entry is None else self.prices[entry]

    def require(self, model: str | None) -> Price:
        """:meth:`price_for`, raising :class:`UnpricedModelError` when there is no price."""
        price = self.price_for(model)
        if price is None:
            raise UnpricedModelError(model, self)
        return price

    def describe(self) -> str:
        """``price table version V (taken on D)``, for messages."""
        return _table_name(self.version, self.taken_on)

    def estimate_cost(
        self,
        model: str | None,
        input_tokens: int,
        max_output_tokens: int | None,
        *,
        uncapped_requests: int = 0,
    ) -> CostEstimate:
        """What requests will cost at most, before upload (see :class:`CostEstimate`).

        :param model: the requests' model.
        :param input_tokens: their input tokens, all priced as uncached.
        :param max_output_tokens: the sum of their output caps; ``None`` when output is not capped.
        :param uncapped_requests: for a file, the requests that have no cap (their output is not in
            ``max_output_tokens``), as ``tokens.ModelTokens.uncapped`` counts them.
        :raises UnpricedModelError: when ``model`` has no price.
        """
        for name, value in (("input_tokens", input_tokens), ("uncapped_requests", uncapped_requests)):
            _check_count(name, value)
        if max_output_tokens is not None:
            _check_count("max_output_tokens", max_output_tokens)
        price = self.require(model)
        return CostEstimate(
            table_version=self.version,
            taken_on=self.taken_on,
            prices=MappingProxyType({str(model): price}),
            input_tokens=input_tokens,
            max_output_tokens=max_output_tokens or 0,
            uncapped_requests=uncapped_requests,
            output_unbounded=max_output_tokens is None or uncapped_requests > 0,
            input=input_tokens * price.batch_input_per_1m / _MILLION,
            output_bound=(max_output_tokens or 0) * price.batch_output_per_1m / _MILLION,
        )

    def actual_cost(self, model: str | None, usage: Mapping[str, Any]) -> Cost:
        """What a batch cost, from the Batch object's ``usage`` (``input_tokens``,
        ``input_tokens_details.cached_tokens``, ``output_tokens``,
        ``output_tokens_details.reasoning_tokens``); an output line's chat-style usage
        (``prompt_tokens``, ``completion_tokens`` and their ``*_details``) reads too.

        A batch whose ``usage`` is ``None`` (created before 2025-09-07) has no known cost: do not call
        this for it. Missing counts are 0.

        :raises UnpricedModelError: when ``model`` has no price.
        :raises ValueError: when a count is not a whole number of at least 0, or the cached tokens
            exceed the input tokens; accounting after the fact should log it, not fail the job.
        """
        if not isinstance(usage, Mapping):
            raise ValueError(f"usage must be an object; got {usage!r}")
        price = self.require(model)
        input_tokens = _count(usage, "input_tokens", "prompt_tokens")
        output_tokens = _count(usage, "output_tokens", "completion_tokens")
        cached = _count(_details(usage, "input_tokens_details", "prompt_tokens_details"), "cached_tokens")
        reasoning = _count(
            _details(usage, "output_tokens_details", "completion_tokens_details"), "reasoning_tokens"
        )
        if cached > input_tokens:
            raise ValueError(f"usage: cached_tokens ({cached}) exceed input_tokens ({input_tokens})")
        if reasoning > output_tokens:
            raise ValueError(f"usage: reasoning_tokens ({reasoning}) exceed output_tokens ({output_tokens})")
        return Cost(
            table_version=self.version,
            taken_on=self.taken_on,
            prices=MappingProxyType({str(model): price}),
            input_tokens=input_tokens,
            cached_tokens=cached,
            output_tokens=output_tokens,
            reasoning_tokens=reasoning,
            input=(input_tokens - cached) * price.batch_input_per_1m / _MILLION,
            cached_input=cached * price.batch_cached_input_per_1m / _MILLION,
            output=output_tokens * price.batch_output_per_1m / _MILLION,
        )


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a whole number of at least 0; got {value!r}")


@cache
def default_table() -> PriceTable:
    """The table shipped with the package (``prices.json``), read and validated once per process."""
    text = resources.files(__package__ or "airflow_provider_batch").joinpath(TABLE_FILE).read_text("utf-8")
    return PriceTable.from_dict(json.loads(text, parse_float=Decimal))


def price_for(model: str | None) -> Price | None:
    """:meth:`PriceTable.price_for` on :func:`default_table`."""
    return default_table().price_for(model)


def estimate_cost(
    model: str | None, input_tokens: int, max_output_tokens: int | None, *, uncapped_requests: int = 0
) -> CostEstimate:
    """:meth:`PriceTable.estimate_cost` on :func:`default_table`."""
    return default_table().estimate_cost(
        model, input_tokens, max_output_tokens, uncapped_requests=uncapped_requests
    )


def actual_cost(model: str | None, usage: Mapping[str, Any]) -> Cost:
    """:meth:`PriceTable.actual_cost` on :func:`default_table`."""
    return default_table().actual_cost(model, usage)
