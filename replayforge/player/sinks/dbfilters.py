"""
Read the query parameters of the C{db} sink's API into checked requests.

C{rpf-db/<table>} and C{query-table/<table>} take, each at most once:

 - C{<column>=v}: the column equals C{v};
 - C{<column>_contains=v}: the column contains C{v} (C{%} and C{_} in C{v}
   are plain characters);
 - C{<column>_gt=v}, C{<column>_lt=v}: greater or less than C{v}, compared
   as a number when the column is declared C{INTEGER} or C{REAL} and C{v}
   is one;
 - C{order=<column>[:asc|:desc]} (default: C{_rpf_id}, ascending);
 - C{limit=N}, from 1 to L{MAX_ROW_LIMIT} (default L{DEFAULT_ROW_LIMIT}).

A column is found by its name in any case, or, for a name of letters,
digits and C{_}, by the column a JSON key of that name becomes (C{userId}
finds C{user_id}); a name that is also a column wins
over a suffix reading (a column C{price_gt} is matched by C{price_gt=}).
Any other parameter, a repeated one, or a value that does not fit is a
L{BadParameter} naming it.

C{time-analytics/} takes C{table}, C{start_time} and C{stop_time} (Unix
seconds) and C{range} (or the Go player's C{range_time}): a duration such
as C{"1h"}, C{"30m"}, C{"1d"} or a number of seconds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from replayforge.config import parse_duration
from replayforge.player.sinks.dbschema import snake_case

DEFAULT_ROW_LIMIT = 10_000
MAX_ROW_LIMIT = 10_000
MAX_TIME_BUCKETS = 10_000
_OPERATORS = (("_contains", "LIKE"), ("_gt", ">"), ("_lt", "<"))
_DAYS = re.compile(r"^(\d+(?:\.\d+)?)d$")
_INTEGER = re.compile(r"^[+-]?\d{1,18}$")
_WORD = re.compile(r"^[A-Za-z0-9_]+$")


class BadParameter(Exception):
    """A query parameter that cannot be used; the message names it."""

    def __init__(self, name: str, problem: str) -> None:
        shown = name if len(name) <= 100 else name[:100] + "..."
        super().__init__(f"{shown}: {problem}")
        self.name = name
        self.problem = problem


@attrs.frozen
class Condition:
    """One filter: a live column, an operator, a bound value."""

    column: str
    operator: str
    value: Any


@attrs.frozen
class RowQuery:
    """The checked filters, order and limit of a row query."""

    conditions: tuple[Condition, ...] = ()
    order: str | None = None
    descending: bool = False
    limit: int = DEFAULT_ROW_LIMIT


def single_values(args: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """
    Return each parameter's value.

    @raise BadParameter: for a parameter given more than once.
    """
    values = {}
    for name, given in args.items():
        if len(given) != 1:
            raise BadParameter(name, "given more than once")
        values[name] = given[0]
    return values


def _column(name: str, spelled: Mapping[str, str]) -> str | None:
    found = spelled.get(name.lower())
    if found is None and _WORD.match(name):
        found = spelled.get(snake_case(name))
    return found


def _compared(value: str, declared: str) -> Any:
    kind = declared.upper()
    if "INT" in kind and _INTEGER.match(value):
        return int(value)
    if "INT" in kind or "REAL" in kind or "FLOA" in kind or "DOUB" in kind:
        try:
            number = float(value)
        except ValueError:
            return value
        return number if number == number else value
    return value


def parse_row_query(
    args: Mapping[str, Sequence[str]],
    names: Sequence[str],
    types: Mapping[str, str],
) -> RowQuery:
    """
    Check C{args} against a table's columns C{names} (as spelled) and
    C{types} (lower-case name to declared type).

    @raise BadParameter: naming the first parameter that does not fit.
    """
    spelled = {name.lower(): name for name in names}
    conditions = []
    order: str | None = None
    descending = False
    limit = DEFAULT_ROW_LIMIT
    for name, value in single_values(args).items():
        if name == "limit":
            limit = _limit(value)
        elif name == "order":
            order, descending = _order(value, spelled)
        elif (column := _column(name, spelled)) is not None:
            conditions.append(Condition(column, "=", value))
        else:
            conditions.append(_suffixed(name, value, spelled, types))
    return RowQuery(tuple(conditions), order, descending, limit)


def _suffixed(
    name: str, value: str, spelled: Mapping[str, str], types: Mapping[str, str]
) -> Condition:
    for suffix, operator in _OPERATORS:
        if not name.endswith(suffix):
            continue
        column = _column(name.removesuffix(suffix), spelled)
        if column is None:
            break
        if operator == "LIKE":
            escaped = (
                value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            )
            return Condition(column, operator, f"%{escaped}%")
        return Condition(column, operator, _compared(value, types[column.lower()]))
    raise BadParameter(
        name,
        "unknown parameter: expected a column of the table, optionally ending in "
        "_contains, _gt or _lt, or order or limit",
    )


def _limit(value: str) -> int:
    if not _INTEGER.match(value.strip()) or not 1 <= int(value) <= MAX_ROW_LIMIT:
        raise BadParameter(
            "limit",
            f"expected a whole number from 1 to {MAX_ROW_LIMIT}, got {value[:50]!r}",
        )
    return int(value)


def _order(value: str, spelled: Mapping[str, str]) -> tuple[str, bool]:
    name, colon, direction = value.partition(":")
    direction = direction.lower()
    if colon and direction not in ("asc", "desc"):
        raise BadParameter(
            "order",
            f"expected <column>, <column>:asc or <column>:desc, got {value[:100]!r}",
        )
    column = _column(name, spelled)
    if column is None:
        raise BadParameter("order", f"no column named {name[:100]!r}")
    return column, direction == "desc"


@attrs.frozen
class TimeAnalyticsQuery:
    """The checked parameters of C{time-analytics/}."""

    table: str
    start: int
    stop: int
    step: int


def parse_time_analytics(args: Mapping[str, Sequence[str]]) -> TimeAnalyticsQuery:
    """
    Check the parameters of C{time-analytics/}.

    @raise BadParameter: naming the first missing or unusable parameter.
    """
    values = single_values(args)
    unknown = sorted(
        set(values) - {"table", "start_time", "stop_time", "range", "range_time"}
    )
    if unknown:
        raise BadParameter(
            unknown[0],
            "unknown parameter: expected table, start_time, stop_time and range",
        )
    table = values.get("table", "")
    if not table:
        raise BadParameter("table", "parameter is required")
    start = _unix_seconds(values, "start_time")
    stop = _unix_seconds(values, "stop_time")
    if stop < start:
        raise BadParameter("stop_time", "expected a time after start_time")
    range_name = "range" if "range" in values else "range_time"
    step = _step(range_name, values.get(range_name, ""))
    slots = (stop - start) // step + 1
    if slots > MAX_TIME_BUCKETS:
        raise BadParameter(
            range_name,
            f"makes {slots} time buckets; at most {MAX_TIME_BUCKETS} are answered",
        )
    return TimeAnalyticsQuery(table, start, stop, step)


def _unix_seconds(values: Mapping[str, str], name: str) -> int:
    value = values.get(name, "")
    if not value:
        raise BadParameter(name, "parameter is required")
    if not _INTEGER.match(value.strip()):
        raise BadParameter(name, f"expected Unix seconds, got {value[:50]!r}")
    return int(value)


def _step(name: str, value: str) -> int:
    if not value:
        raise BadParameter("range", "parameter is required")
    days = _DAYS.match(value.strip())
    try:
        seconds = float(days.group(1)) * 86400 if days else parse_duration(value)
    except ValueError:
        seconds = 0.0
    if not 1 <= seconds < 1e12:
        raise BadParameter(
            name,
            f"expected a duration of at least 1s such as '1h', '30m' or '1d', "
            f"got {value[:50]!r}",
        )
    return int(seconds)
