"""
A line of a log file as an event: the shape the C{logfile} source gives it.

Each line travels as a call object, a C{POST} to the source's C{httpPath}
whose body is the JSON object C{{"content": line}}, so that scripts written
for HTTP traffic read log lines the same way.  It is the specification's
call object, header values as lists; apart from that one difference the
text is what the Go proxy wrote for the same line (L{replayforge.gojson}),
whose scripts read the body and never the headers of a log line.
"""

from __future__ import annotations

from replayforge import gojson

LOCAL_ADDRESS = "127.0.0.1"
DEFAULT_HTTP_PATH = "/"


def decode_line(raw: bytes) -> str:
    """
    Read one line of a log file, its newline already removed.

    A trailing carriage return is dropped; bytes that are not UTF-8 become
    U+FFFD, as Go's JSON encoder would make them.
    """
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return raw.decode("utf-8", "replace")


def wrap_line(line: str, http_path: str = DEFAULT_HTTP_PATH) -> str:
    """
    Make the event of one log line.

    @param line: the line, without its line ending.
    @param http_path: the C{path} of the call object (the source's
        C{httpPath}).
    @return: the call object as JSON text.
    """
    return gojson.dumps(
        {
            "body": gojson.dumps({"content": line}),
            "headers": {"Content-Type": ["application/json"]},
            "ip": LOCAL_ADDRESS,
            "method": "POST",
            "params": {},
            "path": http_path,
        }
    )
