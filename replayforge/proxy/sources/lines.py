"""
Turn the bytes of complete log lines into text: CR removed, invalid UTF-8
replaced, lines over the limit cut at a character boundary with a marker.
"""

from __future__ import annotations

TRUNCATION_MARKER = "...[truncated]"


class LineDecoder:
    """Decode lines of at most C{max_line_bytes} bytes each."""

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes

    def block(self, block: bytes) -> tuple[list[str], int, int]:
        """
        Split C{block} (complete lines, the last newline removed) into
        lines.

        @return: the lines, how many had invalid UTF-8, how many were cut.
        """
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError:
            return self._each(block.split(b"\n"))
        lines = text.split("\n")
        if "\r" in text:
            lines = [line[:-1] if line.endswith("\r") else line for line in lines]
        truncated = 0
        limit = self.max_line_bytes
        if len(block) > limit:
            # A line of n characters has at most 4n bytes.
            for index, line in enumerate(lines):
                if len(line) * 4 > limit and len(line.encode("utf-8")) > limit:
                    lines[index] = self.cut(line.encode("utf-8"))
                    truncated += 1
        return lines, 0, truncated

    def _each(self, raw_lines: list[bytes]) -> tuple[list[str], int, int]:
        lines = []
        invalid = truncated = 0
        for raw in raw_lines:
            raw = without_cr(raw)
            if len(raw) > self.max_line_bytes:
                lines.append(self.cut(raw))
                truncated += 1
                continue
            text, bad = decode_one(raw)
            lines.append(text)
            invalid += bad
        return lines, invalid, truncated

    def cut(self, raw: bytes) -> str:
        """The first C{max_line_bytes} of C{raw}, whole characters only."""
        end = self.max_line_bytes
        # Step back to the first byte of a character the cut would split.
        while end > 0 and end > self.max_line_bytes - 4 and raw[end] & 0xC0 == 0x80:
            end -= 1
        text, _ = decode_one(raw[:end])
        return text + TRUNCATION_MARKER


def without_cr(raw: bytes) -> bytes:
    """Drop a trailing carriage return."""
    return raw[:-1] if raw.endswith(b"\r") else raw


def decode_one(raw: bytes) -> tuple[str, int]:
    """Decode one line; the second value is 1 when bytes were replaced."""
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace"), 1
