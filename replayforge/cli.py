"""
The C{replayforge} command: tools beside the daemons.

C{replayforge check -c FILE} loads a daemon's configuration with that
daemon's own loader and prints it resolved, defaults filled in and secrets
masked; an invalid file is reported in one line and exits 1.
C{replayforge status URL} prints a relay's C{/statusz} as tables; a relay
that cannot be read is reported in one line and exits 1.

C{replayforge lua SCRIPT} runs a source script over the lines of a file, or
of standard input, the way a proxy's C{logfile} source would feed it: each
line is wrapped as that source wraps it (or passed as it is with C{--raw}),
each emit is printed as C{sink<TAB>content}, and C{--timer N} then calls
C{TimerHandler} N times.  A call that fails is reported on standard error
with the input line and the script line, and the run goes on; the exit
status is 1 when any call failed, 2 when the script cannot be started.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import attrs
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogPublisher,
)

from replayforge.config import ConfigError
from replayforge.configcheck import PARSERS, load_for_check, render
from replayforge.logs import LEVELS
from replayforge.lua import Emitted, LuaScript, ScriptError, ScriptFailure
from replayforge.proxy.logline import DEFAULT_HTTP_PATH, decode_line, wrap_line
from replayforge.statusview import (
    DEFAULT_TIMEOUT_SECONDS,
    StatusUnavailable,
    fetch_status,
    render_status,
    statusz_url,
)

EXIT_OK = 0
EXIT_FAILED_CALLS = 1
EXIT_CANNOT_START = 2
EXIT_INVALID = 1

# The level names the daemons' configs take, without their aliases.
LOG_LEVEL_NAMES = ("debug", "error", "info", "warn")


@attrs.frozen
class Streams:
    """Where a command reads its input and writes its output."""

    stdin: BinaryIO
    stdout: TextIO
    stderr: TextIO


Command = Callable[[argparse.Namespace, Streams], int]


def _count(text: str) -> int:
    """Read a non-negative count for argparse."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a count >= 0, got {value}")
    return value


def _seconds(text: str) -> float:
    """Read a positive number of seconds for argparse."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value <= 300:
        raise argparse.ArgumentTypeError(f"expected 0 < seconds <= 300, got {text}")
    return value


def _add_check_and_status(commands: Any) -> None:
    check = commands.add_parser(
        "check",
        help="validate a daemon's configuration and print it resolved",
        description=(
            "Load FILE with the loader of the daemon it configures, as that "
            "daemon would at start-up, and print it resolved (defaults filled "
            "in, environment variables substituted, secrets masked).  Exit 1 "
            "with one line naming the file and key when it is invalid."
        ),
    )
    check.add_argument(
        "-c", "--config", type=Path, required=True, metavar="FILE", dest="config"
    )
    check.add_argument(
        "--daemon",
        choices=sorted(PARSERS),
        help="the daemon FILE is for (default: told from its keys)",
    )
    check.add_argument("--json", action="store_true", help="print JSON, not YAML")
    check.set_defaults(run=run_check)

    status = commands.add_parser(
        "status",
        help="print a relay's status as tables",
        description=(
            "Fetch URL/statusz (URL may be the relay's status listener or its "
            "statusz URL) and print its buckets, environments and hosts."
        ),
    )
    status.add_argument("url", metavar="URL")
    status.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help=f"give up after this long (default: {DEFAULT_TIMEOUT_SECONDS:g})",
    )
    status.set_defaults(run=run_status)


def build_parser() -> argparse.ArgumentParser:
    """Make the parser of C{replayforge} and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="replayforge",
        description="Tools for ReplayForge scripts and daemons.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    lua = commands.add_parser(
        "lua",
        help="run a source script over the lines of a file",
        description=(
            "Run a source script's Process(content, emit) over each line of "
            "FILE (standard input when absent), each line wrapped as the "
            "logfile source wraps it, and print each emit as "
            "sink<TAB>content."
        ),
    )
    lua.add_argument("script", type=Path, metavar="SCRIPT")
    lua.add_argument(
        "--input", type=Path, metavar="FILE", help="the log lines (default: stdin)"
    )
    lua.add_argument(
        "--raw",
        action="store_true",
        help="pass each line as it is, as a repeatfile source does",
    )
    lua.add_argument(
        "--timer",
        type=_count,
        default=0,
        metavar="N",
        help="call TimerHandler(emit) N times after the input",
    )
    lua.add_argument(
        "--http-path",
        default=DEFAULT_HTTP_PATH,
        metavar="PATH",
        help="the path of the wrapping call object (the source's httpPath)",
    )
    lua.add_argument(
        "--log-level",
        choices=LOG_LEVEL_NAMES,
        default="debug",
        help="the least level of script logs shown on stderr (default: debug)",
    )
    lua.set_defaults(run=run_lua)
    _add_check_and_status(commands)
    return parser


def main(
    argv: Sequence[str] | None = None,
    stdin: BinaryIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """
    Run the C{replayforge} command.

    @param argv: the arguments, without the program name; C{sys.argv}'s
        by default.
    @return: the exit status.
    """
    streams = Streams(
        stdin=stdin if stdin is not None else sys.stdin.buffer,
        stdout=stdout if stdout is not None else sys.stdout,
        stderr=stderr if stderr is not None else sys.stderr,
    )
    parser = build_parser()
    with (
        contextlib.redirect_stdout(streams.stdout),
        contextlib.redirect_stderr(streams.stderr),
    ):
        try:
            options = parser.parse_args(argv)
        except SystemExit as exit:
            return exit.code if isinstance(exit.code, int) else EXIT_CANNOT_START
    command: Command = options.run
    return command(options, streams)


def _stderr_observer(stream: TextIO, level: LogLevel) -> FilteringLogObserver:
    """Show log events from C{level} up on C{stream}, one line each."""

    def line(event: LogEvent) -> str:
        return f"{event['log_level'].name}: {formatEvent(event)}\n"

    return FilteringLogObserver(
        FileLogObserver(stream, line),
        [LogLevelFilterPredicate(defaultLogLevel=level)],
    )


def _one_line(message: str) -> str:
    return " ".join(message.split())


def run_check(options: argparse.Namespace, streams: Streams) -> int:
    """Run the C{check} subcommand; see the module's docstring."""
    observer = _stderr_observer(streams.stderr, LogLevel.warn)
    globalLogPublisher.addObserver(observer)
    try:
        daemon, record = load_for_check(options.config, options.daemon)
    except ConfigError as error:
        streams.stderr.write(f"replayforge check: {_one_line(str(error))}\n")
        return EXIT_INVALID
    finally:
        globalLogPublisher.removeObserver(observer)
    streams.stdout.write(render(daemon, str(options.config), record, options.json))
    return EXIT_OK


def run_status(options: argparse.Namespace, streams: Streams) -> int:
    """Run the C{status} subcommand; see the module's docstring."""
    try:
        url = statusz_url(options.url)
        document = fetch_status(url, options.timeout)
    except StatusUnavailable as error:
        streams.stderr.write(f"replayforge status: {_one_line(str(error))}\n")
        return EXIT_INVALID
    streams.stdout.write(render_status(document, time.time()))
    return EXIT_OK


def run_lua(options: argparse.Namespace, streams: Streams) -> int:
    """Run the C{lua} subcommand; see the module's docstring."""
    observer = _stderr_observer(streams.stderr, LEVELS[options.log_level])
    globalLogPublisher.addObserver(observer)
    try:
        return _run_lua(options, streams)
    finally:
        globalLogPublisher.removeObserver(observer)


def _cannot_start(streams: Streams, message: str) -> int:
    first_line = message.strip().splitlines()[0] if message.strip() else message
    streams.stderr.write(f"replayforge lua: {first_line}\n")
    return EXIT_CANNOT_START


def _run_lua(options: argparse.Namespace, streams: Streams) -> int:
    script_path: Path = options.script
    try:
        script = LuaScript(script_path, f"source:{script_path.stem}")
        script.require("Process", "TimerHandler")
        if options.input is not None:
            script.require("Process")
        if options.timer:
            script.require("TimerHandler")
    except ScriptError as error:
        return _cannot_start(streams, str(error))

    failures = 0
    if script.defines("Process"):
        try:
            failures += _process_input(script, options, streams)
        except OSError as error:
            return _cannot_start(streams, f"cannot read {options.input}: {error}")
    for call in range(1, options.timer + 1):
        if not _report(streams, f"TimerHandler call {call}", script.timer):
            failures += 1

    return EXIT_FAILED_CALLS if failures else EXIT_OK


def _process_input(
    script: LuaScript, options: argparse.Namespace, streams: Streams
) -> int:
    """
    Run C{Process} on each line of the input.

    @return: how many calls failed.
    """
    failures = 0
    with contextlib.ExitStack() as stack:
        if options.input is None:
            source, name = streams.stdin, "<stdin>"
        else:
            source = stack.enter_context(options.input.open("rb"))
            name = str(options.input)
        for number, raw in enumerate(source, start=1):
            line = decode_line(raw.removesuffix(b"\n"))
            content = line if options.raw else wrap_line(line, options.http_path)
            call = functools.partial(script.process, content)
            if not _report(streams, f"{name}:{number}", call):
                failures += 1
    return failures


def _report(streams: Streams, where: str, call: Callable[[], Emitted]) -> bool:
    """
    Make one call into the script and print what it emitted.

    @param where: names the call in an error report (C{access.log:12}).
    @return: whether the call succeeded.
    """
    try:
        emitted = call()
    except ScriptFailure as failure:
        streams.stderr.write(f"{where}: {failure}\n")
        return False
    for sink, content in emitted:
        streams.stdout.write(f"{sink}\t{content}\n")
    streams.stdout.flush()
    return True
