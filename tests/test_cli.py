"""
Tests for L{replayforge.cli}: C{replayforge lua} runs a source script over
the lines of a file, as the proxy's C{logfile} source would feed it.

Most tests call L{main} in the process with streams of their own; one runs
the installed C{replayforge} command.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from replayforge.cli import main
from replayforge.player.sinks.callobject import parse_call_object
from replayforge.player.sinks.timestamps import normalize_timestamp
from replayforge.proxy.logline import decode_line, wrap_line

REPOSITORY = Path(__file__).resolve().parent.parent
NGINX_SCRIPT = REPOSITORY / "conf" / "scripts" / "nginx-access.lua"
NGINX_SAMPLE = REPOSITORY / "conf" / "samples" / "nginx-access.log"

PASS_THROUGH = 'function Process(content, emit) emit("out", content) end\n'


class Run:
    """
    What one run of the command did.

    @ivar code: the exit status.
    @ivar out: the lines written to standard output.
    @ivar err: the lines written to standard error.
    """

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code = code
        self.out = out.splitlines()
        self.err = err.splitlines()

    def emitted(self) -> list[tuple[str, str]]:
        """The emits printed, as (sink, content) pairs."""
        pairs = []
        for line in self.out:
            sink, _, content = line.partition("\t")
            pairs.append((sink, content))
        return pairs


class CommandTestCase(SynchronousTestCase):
    """Write scripts and inputs in a temporary folder and run the command."""

    def setUp(self) -> None:
        # Short paths: Lua cuts long script names short in its messages.
        self.folder = Path(tempfile.mkdtemp(prefix="rf-cli-"))
        self.addCleanup(shutil.rmtree, self.folder)

    def write(self, name: str, text: str | bytes) -> Path:
        """Write a file of the test's folder."""
        path = self.folder / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return path

    def run_command(self, *arguments: str, stdin: bytes = b"") -> Run:
        """Run C{replayforge ARGUMENTS} in the process."""
        out, err = io.StringIO(), io.StringIO()
        code = main(list(arguments), io.BytesIO(stdin), out, err)
        return Run(code, out.getvalue(), err.getvalue())


class LogLineTests(SynchronousTestCase):
    """The event a log line becomes."""

    def test_wrapped_as_the_logfile_source_does(self) -> None:
        """
        A line is a call object C{POST}ing C{{"content": line}} from
        127.0.0.1, written as the Go proxy wrote it: keys sorted, no spaces,
        C{<}, C{>} and C{&} escaped.
        """
        self.assertEqual(
            wrap_line('GET "/a" <é>&', "/nginx"),
            r'{"body":"{\"content\":\"GET \\\"/a\\\" \\u003cé\\u003e\\u0026\"}",'
            r'"headers":{"Content-Type":["application/json"]},"ip":"127.0.0.1",'
            r'"method":"POST","params":{},"path":"/nginx"}',
        )

    def test_wrapped_line_decodes_back(self) -> None:
        """Decoding the call object, then its body, gives the line back."""
        line = 'GET "/a" <é>&\t\\'
        call = json.loads(wrap_line(line))
        self.assertEqual(json.loads(call["body"]), {"content": line})

    def test_decode_line(self) -> None:
        """A trailing carriage return goes; bytes that are not UTF-8 become U+FFFD."""
        self.assertEqual(decode_line(b"a\xffb\r"), "a\ufffdb")


class LuaCommandTests(CommandTestCase):
    """C{replayforge lua SCRIPT}."""

    def test_each_line_wrapped(self) -> None:
        """
        Each line of the input reaches C{Process} wrapped as the logfile
        source wraps it; each emit is printed as C{sink<TAB>content}.
        """
        script = self.write("pass.lua", PASS_THROUGH)
        log = self.write("app.log", "first\nsecond\n")
        run = self.run_command("lua", str(script), "--input", str(log))
        self.assertEqual(run.code, 0)
        self.assertEqual(
            run.emitted(), [("out", wrap_line("first")), ("out", wrap_line("second"))]
        )

    def test_http_path(self) -> None:
        """C{--http-path} sets the path of the wrapping call object."""
        script = self.write("pass.lua", PASS_THROUGH)
        run = self.run_command(
            "lua", str(script), "--http-path", "/logs", stdin=b"one\n"
        )
        self.assertEqual(json.loads(run.emitted()[0][1])["path"], "/logs")

    def test_raw(self) -> None:
        """With C{--raw} each line is passed as it is."""
        script = self.write("pass.lua", PASS_THROUGH)
        run = self.run_command("lua", str(script), "--raw", stdin=b"a b\n{}\n")
        self.assertEqual(run.emitted(), [("out", "a b"), ("out", "{}")])

    def test_line_endings(self) -> None:
        """
        CRLF endings lose their CR, an empty line is a line, and a last line
        without a newline is still a line.
        """
        script = self.write("pass.lua", PASS_THROUGH)
        run = self.run_command("lua", str(script), "--raw", stdin=b"a\r\n\nlast")
        self.assertEqual(run.emitted(), [("out", "a"), ("out", ""), ("out", "last")])

    def test_timer(self) -> None:
        """C{--timer N} calls C{TimerHandler} N times, after the input."""
        script = self.write(
            "timer.lua",
            "local ticks = 0\n"
            'function Process(content, emit) emit("line", content) end\n'
            "function TimerHandler(emit)\n"
            '  ticks = ticks + 1; emit("tick", tostring(ticks))\n'
            "end\n",
        )
        run = self.run_command(
            "lua", str(script), "--raw", "--timer", "2", stdin=b"x\n"
        )
        self.assertEqual(run.code, 0)
        self.assertEqual(run.emitted(), [("line", "x"), ("tick", "1"), ("tick", "2")])

    def test_timer_only_script_reads_no_input(self) -> None:
        """A script with only C{TimerHandler} runs its timer, input unread."""
        script = self.write(
            "timer.lua", 'function TimerHandler(emit) emit("tick", "t") end\n'
        )
        run = self.run_command("lua", str(script), "--timer", "1", stdin=b"x\n")
        self.assertEqual((run.code, run.emitted()), (0, [("tick", "t")]))

    def test_failing_calls_reported_and_run_goes_on(self) -> None:
        """
        A call that fails is reported with the input line and the script
        line, its emits are dropped, the next lines still run, and the exit
        status is 1.
        """
        script = self.write(
            "picky.lua",
            "function Process(content, emit)\n"
            '  emit("out", content)\n'
            '  if content == "bad" then local t = nil; return t.refused end\n'
            "end\n",
        )
        log = self.write("in.log", "good\nbad\nfine\n")
        run = self.run_command(
            "lua", str(script), "--raw", "--input", str(log), "--log-level", "warn"
        )
        self.assertEqual(run.code, 1)
        self.assertEqual(run.emitted(), [("out", "good"), ("out", "fine")])
        self.assertEqual(len(run.err), 1)
        self.assertTrue(run.err[0].startswith(f"{log}:2: "), run.err)
        self.assertIn(f"{script}:3:", run.err[0])
        self.assertIn("attempt to index a nil value", run.err[0])

    def test_failing_timer_reported(self) -> None:
        """A failing C{TimerHandler} call is reported by its number."""
        script = self.write(
            "timer.lua",
            "function TimerHandler(emit) local t = nil; return t.x end\n",
        )
        run = self.run_command("lua", str(script), "--timer", "1")
        self.assertEqual(run.code, 1)
        self.assertTrue(run.err[0].startswith("TimerHandler call 1: "), run.err)
        self.assertIn(f"{script}:1:", run.err[0])

    def test_stdin_named_in_reports(self) -> None:
        """Lines read from standard input are reported as C{<stdin>:N}."""
        script = self.write(
            "fail.lua", "function Process(content, emit) return #nil end\n"
        )
        run = self.run_command("lua", str(script), stdin=b"x\n")
        self.assertTrue(run.err[0].startswith("<stdin>:1: "), run.err)

    def test_script_logs_on_stderr(self) -> None:
        """C{print} and the logging helpers write to standard error."""
        script = self.write(
            "chatty.lua",
            'function Process(content, emit) print("saw " .. content) end\n',
        )
        run = self.run_command("lua", str(script), "--raw", stdin=b"x\n")
        self.assertEqual(run.code, 0)
        self.assertEqual(run.out, [])
        self.assertTrue(any("saw x" in line for line in run.err), run.err)

    def test_log_level_hides_lower_levels(self) -> None:
        """C{--log-level warn} hides C{print}, which logs at debug."""
        script = self.write(
            "chatty.lua",
            'function Process(content, emit) print("saw " .. content) end\n',
        )
        run = self.run_command(
            "lua", str(script), "--raw", "--log-level", "warn", stdin=b"x\n"
        )
        self.assertEqual(run.err, [])


class LuaCommandStartTests(CommandTestCase):
    """Scripts and inputs that cannot be run: exit status 2, one line."""

    def assertCannotStart(self, run: Run, *fragments: str) -> None:
        """Check the run stopped with status 2 and one line naming C{fragments}."""
        self.assertEqual(run.code, 2)
        self.assertEqual(len(run.err), 1, run.err)
        self.assertTrue(run.err[0].startswith("replayforge lua: "), run.err)
        for fragment in fragments:
            self.assertIn(fragment, run.err[0])
        self.assertEqual(run.out, [])

    def test_syntax_error(self) -> None:
        """A syntax error is one line naming the script and its line."""
        script = self.write("broken.lua", "function Process(content, emit)\n")
        run = self.run_command("lua", str(script), stdin=b"x\n")
        self.assertCannotStart(run, "syntax error", "broken.lua")

    def test_missing_script(self) -> None:
        """A script that cannot be read is one line."""
        run = self.run_command("lua", str(self.folder / "none.lua"))
        self.assertCannotStart(run, "none.lua")

    def test_no_entry_point(self) -> None:
        """A script with neither C{Process} nor C{TimerHandler} cannot run."""
        script = self.write("empty.lua", "local x = 1\n")
        run = self.run_command("lua", str(script))
        self.assertCannotStart(run, "Process", "TimerHandler")

    def test_timer_without_handler(self) -> None:
        """C{--timer} with a script that has no C{TimerHandler} cannot run."""
        script = self.write("pass.lua", PASS_THROUGH)
        run = self.run_command("lua", str(script), "--timer", "1")
        self.assertCannotStart(run, "TimerHandler")

    def test_missing_input(self) -> None:
        """An input file that cannot be read is one line."""
        script = self.write("pass.lua", PASS_THROUGH)
        missing = self.folder / "missing.log"
        run = self.run_command("lua", str(script), "--input", str(missing))
        self.assertCannotStart(run, "missing.log")

    def test_bad_arguments(self) -> None:
        """Arguments argparse refuses give status 2 and a usage message."""
        run = self.run_command("lua", "x.lua", "--timer", "-1")
        self.assertEqual(run.code, 2)
        self.assertIn("--timer", "\n".join(run.err))

    def test_subcommand_required(self) -> None:
        """The command without a subcommand is a usage error."""
        self.assertEqual(self.run_command().code, 2)


class NginxSampleScriptTests(CommandTestCase):
    """C{conf/scripts/nginx-access.lua} over C{conf/samples/nginx-access.log}."""

    def test_every_sample_line_becomes_a_row(self) -> None:
        """
        Each of the twenty sample lines becomes a call object for the
        player's db sink, sent to the relay sink, with numbers as numbers.
        """
        run = self.run_command("lua", str(NGINX_SCRIPT), "--input", str(NGINX_SAMPLE))
        self.assertEqual((run.code, run.err), (0, []))
        emitted = run.emitted()
        self.assertEqual(len(emitted), 20)
        self.assertEqual({sink for sink, _ in emitted}, {"relay"})

        call = json.loads(emitted[3][1])
        self.assertEqual(call["method"], "POST")
        self.assertEqual(call["path"], "/rpf-db/nginx_access")
        self.assertEqual(
            json.loads(call["body"]),
            {
                "timestamp": "04/Dec/2026:10:15:40 +0000",
                "remote_addr": "198.51.100.23",
                "method": "GET",
                "request_uri": "/products?category=shoes&page=2",
                "path": "/products",
                "http_version": "2.0",
                "status": 200,
                "body_bytes_sent": 24410,
                "http_referer": "https://shop.example.com/products?category=shoes",
                "http_user_agent": (
                    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) "
                    "AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 "
                    "Mobile/15E148 Safari/604.1"
                ),
            },
        )

    def test_rows_the_db_sink_reads(self) -> None:
        """
        Every emit is a call object the player's db sink reads: a C{POST} to
        C{/rpf-db/nginx_access} whose body is a flat JSON object with a
        timestamp it turns into Unix seconds; request lines that are not
        HTTP are kept whole.
        """
        run = self.run_command("lua", str(NGINX_SCRIPT), "--input", str(NGINX_SAMPLE))
        calls = [parse_call_object(content) for _, content in run.emitted()]
        self.assertEqual(
            {(call.method, call.path) for call in calls},
            {("POST", "/rpf-db/nginx_access")},
        )
        rows = [json.loads(call.body) for call in calls]
        for row in rows:
            self.assertFalse(
                [value for value in row.values() if isinstance(value, dict | list)]
            )
        self.assertEqual(normalize_timestamp(rows[0]["timestamp"], now=0), 1796379332)
        self.assertEqual(rows[7]["remote_addr"], "2001:db8:85a3::8a2e:370:7334")
        self.assertEqual(rows[9]["remote_user"], "deploy")
        self.assertNotIn("method", rows[16])
        self.assertEqual(
            rows[16]["raw_request"],
            "\\x16\\x03\\x01\\x00\\xF7\\x01\\x00\\x00\\xF3\\x03\\x03",
        )
        self.assertEqual(
            sorted({row["status"] for row in rows}),
            [200, 201, 204, 304, 400, 404, 500, 502],
        )

    def test_line_that_is_not_nginx(self) -> None:
        """A line of another format is warned about and skipped."""
        run = self.run_command(
            "lua", str(NGINX_SCRIPT), stdin=b"Dec  4 10:15:32 web-1 sshd[1]: hi\n"
        )
        self.assertEqual((run.code, run.out), (0, []))
        self.assertTrue(
            any("not an nginx combined log line" in line for line in run.err),
            run.err,
        )


class InstalledCommandTests(SynchronousTestCase):
    """The C{replayforge} console command of the installed package."""

    def test_lua_subcommand(self) -> None:
        """
        C{replayforge lua} runs as a program: the nginx sample script over the
        sample log prints twenty emits and exits 0.
        """
        command = Path(sysconfig.get_path("scripts")) / "replayforge"
        result = subprocess.run(
            [str(command), "lua", str(NGINX_SCRIPT), "--input", str(NGINX_SAMPLE)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        self.assertEqual(len(result.stdout.splitlines()), 20)
