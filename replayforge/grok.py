"""
Grok: parse log lines with the named patterns Logstash made standard.

A grok pattern is a regular expression in which C{%{SYNTAX}},
C{%{SYNTAX:field}} and C{%{SYNTAX:field:int}} (or C{:float}) stand for a
standard definition -- the base set, the httpd set (Apache and nginx access
and error logs, C{COMBINEDAPACHELOG}, C{HTTPD_COMBINEDLOG}) and the syslog set,
shipped in C{grok_patterns/} with Logstash's legacy field names.  Only the
references given a field name become fields, as in Logstash; a capture
suffixed C{:int} or C{:float} becomes a number.  Each pattern is compiled
once and kept in a bounded cache; every match runs under a time limit, so
that no line, however hostile, holds the reactor for longer than that.

Why not pygrok, the grok library on PyPI: its last release (1.0.0) dates from
2016; it reads its eighteen pattern files again for every pattern it compiles
(10 ms each); its pattern set predates C{HTTPD_COMBINEDLOG} and the httpd
file; an unknown pattern name escapes as a bare C{KeyError}, a C{:int} capture
of C{"1.5"} as a C{ValueError}; field names with dots or brackets are silently
left in the regular expression, which then never matches; and it matches
without a time limit.  Its engine is the C{regex} module, a backtracking
engine like C{re}: it defuses some nested quantifiers, but a pattern of a few
C{DATA} captures against an 800-character line of spaces ran for more than
ten minutes under pygrok.  What pygrok adds over the C{regex} module is a
hundred lines of expansion; we keep the module (well maintained, and with a
C{timeout} on every match), ship the standard definitions ourselves and do
the expansion here, where it can report errors and bound its work.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from importlib import resources

import attrs
import regex

DEFAULT_TIMEOUT = 0.05
DEFAULT_CACHE_SIZE = 256
MAX_EXPANDED_LENGTH = 256 * 1024
STANDARD_PATTERN_FILES = ("grok-patterns", "httpd", "linux-syslog")

Value = str | int | float
Fields = dict[str, Value]

_REFERENCE = regex.compile(r"%\{([^{}]*)\}")
_REFERENCE_PARTS = regex.compile(
    r"(?P<name>[A-Za-z0-9_]+)(?::(?P<field>[^:{}]+))?(?::(?P<kind>[A-Za-z]+))?"
)
_GROUP_PREFIX = "_rfg"


class GrokError(ValueError):
    """A grok pattern that cannot be compiled."""


class GrokTimeout(Exception):
    """A match that ran past its time limit."""


def _to_int(text: str) -> Value:
    """
    Read a capture as an integer, as Logstash does: C{"1.5"} becomes 1.

    @return: the integer, or C{text} itself when it is not a number.
    """
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if math.isfinite(number) else text


def _to_float(text: str) -> Value:
    """
    Read a capture as a float.

    @return: the float, or C{text} itself when it is not a finite number.
    """
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


_CONVERTERS: dict[str, Callable[[str], Value]] = {
    "int": _to_int,
    "float": _to_float,
}


def _without_captures(expression: str) -> str:
    """
    Make the unnamed groups of a definition non-capturing.

    They never become fields, and a search that records no captures for them
    is faster (the httpd patterns hold dozens, most of them in C{IPV6}).
    Logstash's engine, Oniguruma, does the same: once a pattern has named
    groups, its unnamed ones capture nothing.
    """
    out: list[str] = []
    index, end, in_class = 0, len(expression), False
    while index < end:
        char = expression[index]
        if char == "\\":
            out.append(expression[index : index + 2])
            index += 2
            continue
        if in_class:
            if expression.startswith("[:", index):
                closing = expression.find(":]", index + 2)
                if closing != -1:
                    out.append(expression[index : closing + 2])
                    index = closing + 2
                    continue
            in_class = char != "]"
        elif char == "[":
            in_class = True
            out.append(char)
            index += 1
            # A "]" right after "[" or "[^" is a member, not the end.
            for member in ("^", "]"):
                if expression.startswith(member, index):
                    out.append(member)
                    index += 1
            continue
        elif char == "(" and not expression.startswith("?", index + 1):
            out.append("(?:")
            index += 1
            continue
        out.append(char)
        index += 1
    return "".join(out)


@attrs.frozen
class _Capture:
    """The field a generated group fills, and how its text is converted."""

    field: str
    convert: Callable[[str], Value] | None


class GrokPattern:
    """
    One compiled grok pattern.

    @ivar source: the grok pattern as written.
    @ivar expression: the regular expression it expanded to.
    """

    def __init__(
        self,
        source: str,
        expression: str,
        captures: Mapping[str, _Capture],
        timeout: float,
    ) -> None:
        self.source = source
        self.expression = expression
        self._timeout = timeout
        try:
            self._regex = regex.compile(expression)
        except regex.error as error:
            raise GrokError(f"invalid grok pattern {source!r}: {error}") from None
        # Groups in the order of the pattern, so that a later capture of a
        # field overwrites an earlier one; groups the user named are fields
        # of the same name.
        groups = sorted(self._regex.groupindex.items(), key=lambda item: item[1])
        self._groups = tuple(name for name, _ in groups)
        # Each named group's place among all the groups (the pattern's own
        # unnamed ones included): Match.groups() is much cheaper than
        # Match.group(*names), which looks every name up again.
        self._targets = tuple(
            (number - 1, capture.field, capture.convert)
            if (capture := captures.get(name)) is not None
            else (number - 1, name, None)
            for name, number in groups
        )

    @property
    def fields(self) -> dict[str, str]:
        """The field each named group of L{expression} fills."""
        return {
            group: field
            for group, (_, field, _) in zip(self._groups, self._targets, strict=True)
        }

    def match(self, text: str) -> Fields | None:
        """
        Search C{text} for the pattern and return its named captures.

        A capture that took no part in the match is left out; when one field
        is captured more than once, the last capture wins.

        @return: field name to value, or C{None} when the text does not match.
        @raise GrokTimeout: the search ran past the time limit.
        """
        try:
            found = self._regex.search(text, timeout=self._timeout)
        except TimeoutError:
            raise GrokTimeout(
                f"grok pattern {self.source!r} gave up after {self._timeout} s "
                f"on a text of {len(text)} characters"
            ) from None
        if found is None:
            return None
        fields: Fields = {}
        values = found.groups()
        for index, field, convert in self._targets:
            value = values[index]
            if value is not None:
                fields[field] = value if convert is None else convert(value)
        return fields


class GrokCompiler:
    """
    Compile grok patterns against a set of definitions, with a bounded cache.

    A pattern that failed to compile is cached as its error, so a script
    that retries a bad pattern on every event does not pay for it again.
    Not thread-safe: use one per thread (the reactor's, normally).
    """

    def __init__(
        self,
        definitions: Mapping[str, str],
        timeout: float = DEFAULT_TIMEOUT,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        """
        @param definitions: pattern name to its regular expression.
        @param timeout: the longest one match may run, in seconds.
        @param cache_size: how many compiled patterns to keep.
        """
        if cache_size < 1:
            raise ValueError(f"cache_size must be at least 1, not {cache_size}")
        self._definitions = {
            name: _without_captures(expression)
            for name, expression in definitions.items()
        }
        self._timeout = timeout
        self._cache_size = cache_size
        self._cache: OrderedDict[str, GrokPattern | GrokError] = OrderedDict()

    def compile(self, pattern: str) -> GrokPattern:
        """
        Return the compiled C{pattern}, from the cache when it is there.

        @raise GrokError: the pattern refers to an unknown or recursive
            definition, or is not a valid regular expression.
        """
        entry = self._cache.get(pattern)
        if entry is None:
            try:
                entry = self._build(pattern)
            except GrokError as error:
                entry = error
            self._cache[pattern] = entry
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(pattern)
        if isinstance(entry, GrokError):
            raise entry
        return entry

    def parse(self, pattern: str, text: str) -> Fields | None:
        """
        Match C{text} against C{pattern}.

        @return: the fields, or C{None} when the text does not match.
        @raise GrokError: the pattern cannot be compiled.
        @raise GrokTimeout: the match ran past the time limit.
        """
        return self.compile(pattern).match(text)

    def _build(self, pattern: str) -> GrokPattern:
        captures: dict[str, _Capture] = {}
        expression = self._expand(pattern, (), captures)
        return GrokPattern(pattern, expression, captures, self._timeout)

    def _expand(
        self, text: str, within: tuple[str, ...], captures: dict[str, _Capture]
    ) -> str:
        """
        Replace every reference in C{text} by its definition, recursively.

        @param within: the names being expanded, to catch a definition that
            refers to itself.
        @param captures: filled with the group generated for each field.
        """

        def replace(reference: regex.Match[str]) -> str:
            parts = _REFERENCE_PARTS.fullmatch(reference.group(1))
            if parts is None:
                raise GrokError(f"malformed grok reference {reference.group(0)!r}")
            name, field, kind = parts.group("name", "field", "kind")
            definition = self._definitions.get(name)
            if definition is None:
                raise GrokError(f"unknown grok pattern %{{{name}}}")
            if name in within:
                raise GrokError(f"grok pattern %{{{name}}} refers to itself")
            body = self._expand(definition, (*within, name), captures)
            if field is None:
                return f"(?:{body})"
            group = f"{_GROUP_PREFIX}{len(captures)}"
            captures[group] = _Capture(field, _CONVERTERS.get(kind or ""))
            return f"(?P<{group}>{body})"

        expanded = _REFERENCE.sub(replace, text)
        if len(expanded) > MAX_EXPANDED_LENGTH:
            raise GrokError(
                f"grok pattern expands to more than {MAX_EXPANDED_LENGTH} characters"
            )
        return expanded


def parse_definitions(lines: Iterable[str]) -> dict[str, str]:
    """
    Read grok definitions in the pattern-file format.

    One definition a line: the name, white space, the regular expression.
    Blank lines and lines starting with C{#} are skipped.
    """
    definitions: dict[str, str] = {}
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        name, _, expression = text.partition(" ")
        definitions[name] = expression.strip()
    return definitions


def standard_definitions() -> dict[str, str]:
    """Load the standard definitions shipped in C{grok_patterns/}."""
    folder = resources.files("replayforge").joinpath("grok_patterns")
    definitions: dict[str, str] = {}
    for name in STANDARD_PATTERN_FILES:
        text = folder.joinpath(name).read_text(encoding="utf-8")
        definitions.update(parse_definitions(text.splitlines()))
    return definitions


@cache
def standard_compiler() -> GrokCompiler:
    """Return the process's compiler of the standard definitions."""
    return GrokCompiler(standard_definitions())


def script_helper(
    to_table: Callable[[Fields], object],
    compiler: GrokCompiler | None = None,
) -> Callable[[object, object], object]:
    """
    Make C{grok_parse(pattern, text)} for scripts.

    The function returns the fields converted by C{to_table}, C{None} when
    the text does not match, or C{(None, message)} when the pattern cannot be
    compiled, the match ran out of time, or an argument is not a string.
    (The Go version returned strings only, and an empty table for no match.)

    @param to_table: turns the fields into the script's own mapping type.
    @param compiler: the compiler to use; the standard one by default.
    """

    def grok_parse(pattern: object, text: object) -> object:
        if isinstance(pattern, bytes):
            pattern = pattern.decode("utf-8", "replace")
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if not isinstance(pattern, str) or not isinstance(text, str):
            return None, "grok_parse expects (pattern, text) strings"
        try:
            fields = (compiler or standard_compiler()).compile(pattern).match(text)
        except (GrokError, GrokTimeout) as error:
            return None, str(error)
        if fields is None:
            return None
        return to_table(fields)

    return grok_parse
