"""
Tests for the C{logfile} source (L{replayforge.proxy.sources.logfile} and
L{replayforge.proxy.sources.tail}): each case is a sequence of operations
on a real file, and each test asserts the exact lines committed to a real
sink buffer.
"""

from __future__ import annotations

import json
import os
import shutil

from twisted.logger import globalLogPublisher

from replayforge.proxy.sources.lines import TRUNCATION_MARKER
from tests.logfile_helpers import (
    MIB,
    LogFileTestCase,
    buffered_events,
    expected,
    numbered,
)


class DiskFailed(Exception):
    """A sink buffer that could not commit."""


class LineTests(LogFileTestCase):
    """What a line is, and what it becomes."""

    async def test_event_is_the_go_call_object(self) -> None:
        """
        Each line becomes the call object the Go proxy made of it, byte for
        byte: a POST to C{httpPath} whose body is C{{"content": line}}.
        """
        self.write('say "hi" <now>\n')
        await self.start()
        await self.poll()

        self.assertEqual(
            buffered_events(self.buffer_path),
            [
                '{"body":"{\\"content\\":\\"say \\\\\\"hi\\\\\\" '
                '\\\\u003cnow\\\\u003e\\"}",'
                '"headers":{"Content-Type":["application/json"]},'
                '"ip":"127.0.0.1","method":"POST","params":{},"path":"/logs"}'
            ],
        )

    async def test_only_complete_lines(self) -> None:
        """A last line without its newline waits; it comes once completed."""
        self.write("first\nsec")
        await self.start()
        await self.poll()
        self.assertEqual(self.delivered(), ["first"])
        self.assertEqual(self.file_status()["partialLineBytes"], 3)

        self.write("ond\n")
        await self.poll()
        self.assertEqual(self.delivered(), ["first", "second"])
        self.assertEqual(self.file_status()["partialLineBytes"], 0)

    async def test_partial_line_flushed_after_quiet_period(self) -> None:
        """
        A partial line unchanged for C{flushPartialAfterSecs} is delivered
        as it is, and counted; what is appended to it later is a line of
        its own.  While it waits, the status shows it.
        """
        self.write("done\nhalf")
        await self.start()
        await self.poll()
        self.clock.advance(4.9)
        await self.poll()
        self.assertEqual(self.delivered(), ["done"])
        self.assertEqual(self.file_status()["partialLineBytes"], 4)
        self.assertNotEqual(self.file_status()["partialLineSince"], "")

        self.clock.advance(0.1)
        await self.poll()
        self.assertEqual(self.delivered(), ["done", "half"])
        self.assertEqual(self.file_status()["partialLinesFlushed"], 1)

        self.write(" more\n")
        await self.poll()
        self.assertEqual(self.delivered(), ["done", "half", " more"])

    async def test_growing_partial_line_waits_longer(self) -> None:
        """The quiet period starts again each time the partial line grows."""
        self.write("a")
        await self.start()
        await self.poll()
        self.clock.advance(4)
        self.write("b")
        await self.poll()
        self.clock.advance(4)
        await self.poll()
        self.assertEqual(self.delivered(), [])

        self.clock.advance(1)
        await self.poll()
        self.assertEqual(self.delivered(), ["ab"])

    async def test_crlf_and_invalid_utf8(self) -> None:
        """
        CRLF endings lose their CR; bytes that are not UTF-8 become U+FFFD
        and each such line is counted; the lines around are untouched.
        """
        self.write(b"windows\r\nbad \xff\xfe byte\nfine \xc3\xa9\r\n")
        await self.start()
        await self.poll()

        self.assertEqual(
            self.delivered(), ["windows", "bad \ufffd\ufffd byte", "fine é"]
        )
        self.assertEqual(self.file_status()["invalidUtf8Lines"], 1)

    async def test_long_lines(self) -> None:
        """
        A 64 KB line comes whole; a line of 1 MiB + 1 byte is cut to
        C{maxLineBytes} with a marker and counted; the lines after it
        come as usual.
        """
        long = "x" * (64 * 1024)
        over = "y" * (MIB + 1)
        self.write(f"before\n{long}\n{over}\nafter\n")
        await self.start()
        await self.poll(2)

        lines = self.delivered()
        self.assertEqual(len(lines), 4)
        self.assertEqual(lines[0], "before")
        self.assertEqual(lines[1], long)
        self.assertEqual(lines[2], "y" * MIB + TRUNCATION_MARKER)
        self.assertEqual(lines[3], "after")
        self.assertEqual(self.file_status()["truncatedLines"], 1)

    async def test_long_line_still_being_written(self) -> None:
        """
        A line past C{maxLineBytes} whose newline has not come yet is
        delivered cut at once; its rest is skipped when it comes, across a
        restart too, and the next line is delivered.
        """
        self.write("z" * 150)
        await self.start(max_line_bytes=100)
        await self.poll()
        self.assertEqual(self.delivered(), ["z" * 100 + TRUNCATION_MARKER])

        self.write("z" * 50)
        await self.poll()
        await self.start(max_line_bytes=100)
        self.write("zz\nnext\n")
        await self.poll()

        self.assertEqual(self.delivered(), ["z" * 100 + TRUNCATION_MARKER, "next"])

    async def test_cut_keeps_whole_characters(self) -> None:
        """A cut never splits a multi-byte character."""
        self.write("é" * 60 + "\n")
        await self.start(max_line_bytes=101)
        await self.poll()

        self.assertEqual(self.delivered(), ["é" * 50 + TRUNCATION_MARKER])
        self.assertEqual(self.file_status()["invalidUtf8Lines"], 0)


class PositionTests(LogFileTestCase):
    """The position survives restarts and is saved only after the events."""

    async def test_restart_resumes(self) -> None:
        """A new source over the same position store starts where the last
        one stopped: no line twice, none missing."""
        self.write(numbered(1, 10))
        await self.start()
        await self.poll()
        self.write(numbered(11, 15))
        await self.start()
        self.write(numbered(16, 20))
        await self.poll()

        self.assertEqual(self.delivered(), expected(1, 20))

    async def test_partial_line_then_stop_append_restart(self) -> None:
        """
        A partial line present at stop is not delivered; appended to and
        completed while the proxy is down, it is delivered once, whole.
        """
        self.write("a\nb\npart")
        await self.start()
        await self.poll()
        self.stop()
        self.write("ial\n")
        await self.start()
        await self.poll()

        self.assertEqual(self.delivered(), ["a", "b", "partial"])

    async def test_position_saved_after_events(self) -> None:
        """
        When the events of a batch cannot be committed, the position does
        not move: a failing buffer costs no line.
        """
        self.write(numbered(1, 5))
        source = await self.start()
        await self.poll()
        self.write(numbered(6, 8))

        async def fail(contents: list[str]) -> int:
            raise DiskFailed(len(contents))

        self.pipeline.submit_many = fail  # type: ignore[method-assign]
        with self.assertRaises(DiskFailed):
            await source.poll()

        await self.start()
        await self.poll()
        self.assertEqual(self.delivered(), expected(1, 8))

    async def test_batches_are_bounded(self) -> None:
        """
        A backlog is read in batches of at most 2,048 lines and one read
        window (1 MiB), each committed in one append.
        """
        submitted: list[int] = []
        self.write(numbered(1, 999) * 5 + ("k" * 1000 + "\n") * 3000)
        await self.start()
        submit_many = self.pipeline.submit_many

        async def record(contents: list[str]) -> int:
            submitted.append(len(contents))
            return await submit_many(contents)

        self.pipeline.submit_many = record  # type: ignore[method-assign]
        await self.poll()

        self.assertEqual(sum(submitted), 999 * 5 + 3000)
        self.assertEqual(submitted[:2], [2048, 2048])
        self.assertLessEqual(max(submitted[2:]), 2048)
        self.assertLessEqual(max(submitted[3:]), MIB // 1001 + 1)
        self.assertEqual(len(submitted), 5)


class RotationTests(LogFileTestCase):
    """Rotation by rename, copytruncate, truncation and replacement."""

    async def test_rename_rotation_mid_stream(self) -> None:
        """
        Lines written before a rename and not read yet come from the old
        file first, then the new file's lines: every line once, in order.
        """
        self.write(numbered(1, 50))
        await self.start()
        await self.poll()
        self.write(numbered(51, 60))
        os.rename(self.log_path, self.folder / "app.log.1")
        self.write(numbered(61, 80))
        await self.poll()
        self.assertEqual(self.delivered(), expected(1, 60))

        self.write(numbered(81, 100))
        await self.poll(2)
        self.assertEqual(self.delivered(), expected(1, 100))
        self.assertEqual(self.file_status()["rotations"], 1)

    async def test_writer_finishing_old_file(self) -> None:
        """
        A writer that goes on writing to the renamed file for a moment is
        followed until the file stays quiet for a polling period.
        """
        self.write(numbered(1, 5))
        await self.start()
        await self.poll()
        rotated = self.folder / "app.log.1"
        os.rename(self.log_path, rotated)
        await self.poll()
        with rotated.open("a") as old:
            old.write(numbered(6, 10))
        self.write(numbered(11, 15))
        await self.poll(3)

        self.assertEqual(self.delivered(), expected(1, 15))

    async def test_rotation_while_down(self) -> None:
        """
        A file renamed away while the proxy was down is found beside the
        path by its inode, and its unread end is delivered before the new
        file.
        """
        self.write(numbered(1, 10))
        await self.start()
        await self.poll()
        self.stop()
        self.write(numbered(11, 15))
        os.rename(self.log_path, self.folder / "app.log.1")
        self.write(numbered(16, 20))
        await self.start()
        await self.poll(3)

        self.assertEqual(self.delivered(), expected(1, 20))

    async def test_copytruncate_while_writing(self) -> None:
        """
        copytruncate copies the file and truncates it in place while the
        writer goes on: the lines copied but not read yet come from the
        copy, then the writer's new lines from the start of the file.
        """
        self.write(numbered(1, 50))
        await self.start()
        await self.poll()
        self.write(numbered(51, 70))
        shutil.copyfile(self.log_path, self.folder / "app.log.1")
        os.truncate(self.log_path, 0)
        self.write(numbered(71, 100))
        await self.poll()

        self.assertEqual(self.delivered(), expected(1, 100))
        self.assertEqual(self.file_status()["truncations"], 1)
        self.assertEqual(self.file_status()["copiesDrained"], 1)

    async def test_truncation_counted(self) -> None:
        """A file truncated below the position is read again from 0."""
        self.write(numbered(1, 20))
        await self.start()
        await self.poll()
        self.write("new\n", mode="w")
        await self.poll()

        self.assertEqual(self.delivered(), [*expected(1, 20), "new"])
        self.assertEqual(self.file_status()["truncations"], 1)

    async def test_overwrite_in_place_every_tenth_line(self) -> None:
        """
        A writer that rewrites its file from the start every tenth line:
        when the new content is as long as what was read, only the first
        bytes tell, and every line is still delivered once.
        """
        await self.start()
        for number in range(1, 101):
            mode = "w" if number % 10 == 1 else "a"
            self.write(numbered(number, number), mode=mode)
            if number % 10 == 0:
                await self.poll()

        self.assertEqual(self.delivered(), expected(1, 100))
        self.assertEqual(self.file_status()["truncations"], 9)

    async def test_delete_and_recreate_reusing_inode_while_down(self) -> None:
        """
        A file deleted and recreated while the proxy is down, in the same
        inode, has other first bytes: it is read from its start.
        """
        self.write(numbered(1, 20))
        await self.start()
        await self.poll()
        inode = os.stat(self.log_path).st_ino
        self.stop()
        os.unlink(self.log_path)
        self.write(numbered(1, 5, prefix="second"))
        if os.stat(self.log_path).st_ino != inode:
            self.skipTest("this file system did not reuse the inode")
        await self.start()
        await self.poll()

        self.assertEqual(
            self.delivered(), [*expected(1, 20), *expected(1, 5, "second")]
        )
        self.assertEqual(self.file_status()["replaced"], 1)

    async def test_delete_and_recreate_while_running(self) -> None:
        """
        A file deleted while followed is read to its end; a new file at the
        path, even in the same inode with the same first bytes, is read
        from its start.
        """
        self.write(numbered(1, 20))
        await self.start()
        await self.poll()
        self.write(numbered(21, 25))
        os.unlink(self.log_path)
        await self.poll(2)
        self.write(numbered(1, 30))
        await self.poll()

        self.assertEqual(self.delivered(), [*expected(1, 25), *expected(1, 30)])

    async def test_missing_file(self) -> None:
        """
        A file that does not exist yet is looked for at every tick and
        logged once per 30 seconds; once it appears, it is read.
        """
        warnings: list[str] = []

        def observe(event: dict[str, object]) -> None:
            if "does not exist" in str(event.get("log_format", "")):
                warnings.append(str(event["path"]))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        await self.start()
        await self.poll(10)
        self.assertEqual(len(warnings), 1)
        self.assertTrue(self.file_status()["missing"])
        self.clock.advance(30)
        await self.poll()
        self.assertEqual(len(warnings), 2)

        self.write(numbered(1, 3))
        await self.poll()
        self.assertEqual(self.delivered(), expected(1, 3))
        self.assertFalse(self.file_status()["missing"])

    async def test_fingerprint_lines(self) -> None:
        """
        With C{fingerprintLines}, a file rewritten with other first lines
        is read again from its start even when it is longer than before.
        """
        self.write("header A\n" + numbered(1, 3))
        await self.start(fingerprint_lines=1)
        await self.poll()
        self.write("header B\n" + numbered(1, 10), mode="w")
        await self.poll()

        self.assertEqual(
            self.delivered(),
            ["header A", *expected(1, 3), "header B", *expected(1, 10)],
        )


class FullBufferTests(LogFileTestCase):
    """A full sink buffer pauses the source; nothing is dropped."""

    max_bytes = 64 * 1024

    async def test_pause_and_resume(self) -> None:
        """
        While the buffer is full the source waits, shows it in its status
        and drops nothing; once the forwarder made room, every line comes,
        once, in order.
        """
        self.write(numbered(1, 3000))
        await self.start()
        await self.poll()
        self.assertTrue(self.file_status()["paused"])
        self.assertEqual(dict(self.stats.dropped), {})
        taken: list[str] = []

        for _ in range(100):
            events = await self.buffer.oldest(10_000)
            taken.extend(
                json.loads(json.loads(e.content)["body"])["content"] for e in events
            )
            await self.buffer.delete(events)
            await self.buffer.maintain()
            await self.poll()
            if not self.file_status()["paused"]:
                break
        taken.extend(self.delivered())

        self.assertEqual(taken, expected(1, 3000))
        self.assertFalse(self.file_status()["paused"])


class RemoveAfterTests(LogFileTestCase):
    """C{removeAfterSecs} truncates the file once it was read to its end."""

    async def test_truncates_after_reading(self) -> None:
        """
        Once C{removeAfterSecs} passed, a file read to its end is truncated;
        lines written afterwards are read from its start.
        """
        self.write(numbered(1, 10))
        await self.start(remove_after_seconds=60)
        await self.poll()
        self.assertEqual(os.path.getsize(self.log_path), 90)

        self.clock.advance(60)
        await self.poll()
        self.assertEqual(os.path.getsize(self.log_path), 0)
        self.write(numbered(11, 12))
        await self.poll()

        self.assertEqual(self.delivered(), expected(1, 12))
        self.assertEqual(self.file_status()["removals"], 1)
        self.assertEqual(self.file_status()["truncations"], 0)

    async def test_partial_line_not_truncated(self) -> None:
        """A file whose last line is still being written is left alone."""
        self.write(numbered(1, 2) + "incomplete")
        await self.start(remove_after_seconds=1, flush_partial_after_seconds=60)
        self.clock.advance(5)
        await self.poll()

        self.assertEqual(os.path.getsize(self.log_path), 18 + 10)
        self.assertEqual(self.delivered(), expected(1, 2))
