"""
Measure ReplayForge against a baseline measured in the same run.

Run from the repository root::

    python -m benchmarks.run all           # every suite, a few minutes
    python -m benchmarks.run lua --quick   # one suite, a smoke run of seconds

Suites: C{lua} (below), C{logfile} (L{benchmarks.logfile}: lines/s from a
growing file into a sink buffer), C{player} (L{benchmarks.player}: rows/s
into the db sink, replayed requests/s), and the daemons under load:
C{ingest} (L{benchmarks.ingest}), C{relay} (L{benchmarks.relay}) and
C{pipeline} (L{benchmarks.pipeline}), which C{targets} runs together.
The C{lua} suite:

Each measure prints our figure, the baseline measured in the same run on
the same input, their ratio and the target:

  - C{pass-through}: C{Process} calls/s of a script that emits its content
    unchanged, against a Python function appending to a list;
  - C{nginx grok}: C{Process} calls/s of C{conf/scripts/nginx-access.lua}
    over the wrapped lines of C{conf/samples/nginx-access.log}, against the
    same parsing in Python -- C{json.loads} of the call object and its body,
    the same grok expression compiled with C{regex} (and with C{re}, when it
    compiles there), a dict, C{json.dumps}.

Every measuring loop stops at a count of calls or at a time, whichever comes
first, and the best of a few repetitions is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import lupa
import regex

from replayforge.grok import standard_compiler
from replayforge.lua import DEFAULT_ENGINE, LuaScript, LuaSettings
from replayforge.proxy.logline import wrap_line

REPOSITORY = Path(__file__).resolve().parent.parent
NGINX_SCRIPT = REPOSITORY / "conf" / "scripts" / "nginx-access.lua"
NGINX_SAMPLE = REPOSITORY / "conf" / "samples" / "nginx-access.log"

PASS_THROUGH_SCRIPT = 'function Process(c, emit) emit("s", c) end\n'
PASS_THROUGH_TARGET = 100_000
GROK_TARGET = 20_000

# The pattern of conf/scripts/nginx-access.lua, for the Python baseline; the
# baseline is checked to produce the script's output before it is timed.
NGINX_PATTERN = (
    r"^%{IPORHOST:remote_addr} - %{NOTSPACE:remote_user} "
    r"\[%{HTTPDATE:time_local}\] "
    r'"(?:%{WORD:method} %{NOTSPACE:request_uri} HTTP/%{NUMBER:http_version}'
    r'|%{DATA:raw_request})" '
    r"%{INT:status:int} %{INT:body_bytes_sent:int} "
    r'"%{DATA:http_referer}" "%{DATA:http_user_agent}"$'
)
NGINX_SINK = "relay"
NGINX_TABLE_PATH = "/rpf-db/nginx_access"
_ROW_KEYS = (
    "timestamp",
    "remote_addr",
    "remote_user",
    "method",
    "request_uri",
    "path",
    "http_version",
    "raw_request",
    "status",
    "body_bytes_sent",
    "http_referer",
    "http_user_agent",
)

Emitted = list[tuple[str, str]]


@attrs.frozen
class Budget:
    """How long one measure may run: calls and seconds, per repetition."""

    max_calls: int
    seconds: float
    repetitions: int


QUICK = Budget(max_calls=20_000, seconds=0.2, repetitions=1)
FULL = Budget(max_calls=2_000_000, seconds=3.0, repetitions=3)


@attrs.frozen
class Figure:
    """One measure: our calls/s beside the baseline's."""

    name: str
    ours: float
    baseline_name: str
    baseline: float
    target: float

    @property
    def ratio(self) -> float:
        """Our speed as a fraction of the baseline's."""
        return self.ours / self.baseline if self.baseline else 0.0

    @property
    def met(self) -> bool:
        """Whether our figure reaches the target."""
        return self.ours >= self.target


def calls_per_second(
    call: Callable[[str], object], inputs: Sequence[str], budget: Budget
) -> float:
    """
    Call C{call} on C{inputs} in turn until the budget's count or time is
    spent; return the best rate of the repetitions.
    """
    best = 0.0
    count = len(inputs)
    for _ in range(budget.repetitions):
        calls = 0
        started = time.perf_counter()
        deadline = started + budget.seconds
        while calls < budget.max_calls:
            for index in range(min(1000, budget.max_calls - calls)):
                call(inputs[index % count])
            calls += min(1000, budget.max_calls - calls)
            if time.perf_counter() >= deadline:
                break
        elapsed = time.perf_counter() - started
        best = max(best, calls / elapsed)
    return best


def python_pass_through(content: str) -> Emitted:
    """The pass-through script's logic in Python."""
    emitted: Emitted = []

    def emit(sink: str, text: str) -> None:
        emitted.append((sink, text))

    def process(text: str, emit: Callable[[str, str], None]) -> None:
        emit("s", text)

    process(content, emit)
    return emitted


def _present(value: Any) -> Any:
    return None if value in ("-", "") else value


def python_nginx(compiled: Any) -> Callable[[str], Emitted]:
    """
    The nginx script's logic in Python, with C{compiled} as its regular
    expression (the script's grok pattern, expanded).
    """

    def to_int(text: str | None) -> int | None:
        return None if text is None else int(text)

    def process(content: str) -> Emitted:
        line = json.loads(json.loads(content)["body"])["content"]
        found = compiled.search(line)
        if found is None:
            return []
        fields = found.groupdict()
        uri = fields["request_uri"]
        values = {
            "timestamp": fields["time_local"],
            "remote_addr": fields["remote_addr"],
            "remote_user": _present(fields["remote_user"]),
            "method": fields["method"],
            "request_uri": uri,
            "path": uri.split("?", 1)[0] if uri is not None else None,
            "http_version": fields["http_version"],
            "raw_request": _present(fields["raw_request"]),
            "status": to_int(fields["status"]),
            "body_bytes_sent": to_int(fields["body_bytes_sent"]),
            "http_referer": _present(fields["http_referer"]),
            "http_user_agent": _present(fields["http_user_agent"]),
        }
        row = {key: values[key] for key in _ROW_KEYS if values[key] is not None}
        call = {
            "method": "POST",
            "path": NGINX_TABLE_PATH,
            "params": {},
            "headers": {"Content-Type": "application/json"},
            "body": json.dumps(row, separators=(",", ":")),
        }
        return [(NGINX_SINK, json.dumps(call, separators=(",", ":")))]

    return process


def _named_expression() -> str:
    """The nginx grok pattern expanded, its groups named after its fields."""
    grok = standard_compiler().compile(NGINX_PATTERN)
    expression = grok.expression
    for group, field in grok.fields.items():
        expression = expression.replace(f"(?P<{group}>", f"(?P<{field}>")
    return expression


def _same_calls(ours: Emitted, theirs: Emitted) -> bool:
    """Tell whether two emits carry the same call objects, bodies decoded."""

    def decoded(emitted: Emitted) -> list[Any]:
        result = []
        for sink, content in emitted:
            call = json.loads(content)
            call["body"] = json.loads(call["body"])
            result.append((sink, call))
        return result

    return decoded(ours) == decoded(theirs)


def measure_lua(budget: Budget, engine: str = DEFAULT_ENGINE) -> list[Figure]:
    """Run the two Lua measures within C{budget}, scripts on C{engine}."""
    settings = LuaSettings(engine=engine)
    with tempfile.TemporaryDirectory(prefix="rf-bench-") as folder:
        script_path = Path(folder) / "pass.lua"
        script_path.write_text(PASS_THROUGH_SCRIPT)
        pass_through = LuaScript(script_path, "source:bench", settings)
    content = wrap_line(NGINX_SAMPLE.read_text().splitlines()[0])
    figures = [
        Figure(
            name="pass-through Process",
            ours=calls_per_second(pass_through.process, [content], budget),
            baseline_name="Python function",
            baseline=calls_per_second(python_pass_through, [content], budget),
            target=PASS_THROUGH_TARGET,
        )
    ]

    nginx = LuaScript(NGINX_SCRIPT, "source:bench", settings)
    lines = [wrap_line(line) for line in NGINX_SAMPLE.read_text().splitlines()]
    expression = _named_expression()
    baselines: list[tuple[str, Callable[[str], Emitted]]] = [
        ("Python + regex", python_nginx(regex.compile(expression)))
    ]
    try:
        baselines.append(("Python + re", python_nginx(re.compile(expression))))
    except re.error:
        pass
    for _, baseline in baselines:
        for line in lines:
            if not _same_calls(nginx.process(line), baseline(line)):
                raise AssertionError(f"the baseline differs from the script: {line}")
    ours = calls_per_second(nginx.process, lines, budget)
    for name, baseline in baselines:
        figures.append(
            Figure(
                name="nginx grok Process",
                ours=ours,
                baseline_name=name,
                baseline=calls_per_second(baseline, lines, budget),
                target=GROK_TARGET,
            )
        )
    return figures


def machine() -> list[str]:
    """Describe what the figures were measured on."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return [
        f"python {platform.python_version()} ({platform.python_implementation()}), "
        f"lupa {lupa.__version__}, regex {regex.__version__}",
        f"{model}, {os.cpu_count()} CPUs",
    ]


def report(figures: Sequence[Figure]) -> list[str]:
    """Format the figures as a table."""
    width = max([16, *(len(figure.baseline_name) for figure in figures)])
    lines = [
        f"{'measure':<22} {'ours/s':>10} {'baseline':<{width}} {'baseline/s':>11} "
        f"{'ratio':>6} {'target/s':>10}"
    ]
    for figure in figures:
        verdict = "met" if figure.met else "MISSED"
        lines.append(
            f"{figure.name:<22} {figure.ours:>10,.0f} "
            f"{figure.baseline_name:<{width}} {figure.baseline:>11,.0f} "
            f"{figure.ratio:>6.2f} {figure.target:>10,.0f} {verdict}"
        )
    return lines


PIPELINE_SUITES = ("ingest", "relay", "pipeline")


def run_pipeline_suite(suite: str, quick: bool) -> None:
    """Run one of the suites of the daemons under load; print its figures."""
    import importlib

    from benchmarks.measures import load_average
    from benchmarks.measures import report as report_measures

    module = importlib.import_module(f"benchmarks.{suite}")
    print(f"\n{suite} (load average {load_average()} before)")
    print("\n".join(report_measures(module.measure(quick))))
    print(f"(load average {load_average()} after)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks named on the command line; print the figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run")
    parser.add_argument(
        "suite",
        choices=["lua", "logfile", "player", *PIPELINE_SUITES, "targets", "all"],
        help="what to measure ('targets': ingest, relay and pipeline)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run of a few seconds"
    )
    parser.add_argument(
        "--lua-engine",
        choices=["lua54", "luajit"],
        default=DEFAULT_ENGINE,
        help="the engine of the lua suite's scripts",
    )
    options = parser.parse_args(argv)
    budget = QUICK if options.quick else FULL
    print("\n".join(machine()))
    if options.suite in ("lua", "all"):
        print(
            f"\nlua on {options.lua_engine} "
            f"(budget per measure: {budget.repetitions} x {budget.seconds} s)"
        )
        print("\n".join(report(measure_lua(budget, options.lua_engine))))
    if options.suite in ("logfile", "all"):
        from benchmarks import logfile

        print("\nlogfile")
        print("\n".join(logfile.report(logfile.measure_logfile(options.quick))))
    if options.suite in ("player", "all"):
        from benchmarks import player

        print("\nplayer")
        print("\n".join(player.report(player.measure(options.quick))))
    for suite in PIPELINE_SUITES:
        if options.suite in (suite, "targets", "all"):
            run_pipeline_suite(suite, options.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
