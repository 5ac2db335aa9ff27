"""
What the Lua runtime's tests share: scripts written to a temporary folder,
run on either engine, and the log lines they produce.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.logger import LogEvent, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from replayforge.lua import LuaScript, LuaSettings, available_engines

LUAJIT_MISSING = (
    None if "luajit" in available_engines() else "lupa has no LuaJIT 2.1 here"
)

# Runs the Lua given as content, with emit as its argument.
EVALUATOR = """
function Process(content, emit)
  assert(load("local emit = ...\\n" .. content, "=body"))(emit)
end
"""


def script_lines(events: list[LogEvent]) -> list[tuple[str, str]]:
    """The level name and text of each line a script logged."""
    return [
        (event["log_level"].name, formatEvent(event))
        for event in events
        if event.get("script")
    ]


class ScriptTestCase(SynchronousTestCase):
    """
    Load scripts on the engine named by L{engine}.

    @ivar engine: C{lua54}, or C{luajit} in the LuaJIT variants of a test
        class.
    """

    engine = "lua54"

    def folder(self) -> Path:
        """A temporary folder, removed when the test ends."""
        path = Path(tempfile.mkdtemp(prefix="replayforge-lua-"))
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def load(
        self,
        code: str,
        name: str = "script.lua",
        error_logs: bool = False,
        tag: str = "source:test",
        **settings: Any,
    ) -> LuaScript:
        """
        Write C{code} to a script file called C{name} and load it.

        @param settings: L{LuaSettings} fields other than the engine.
        """
        path = self.folder() / name
        path.write_text(code, encoding="utf-8")
        return LuaScript(
            path, tag, LuaSettings(engine=self.engine, **settings), error_logs
        )

    def evaluator(self, error_logs: bool = False, **settings: Any) -> LuaScript:
        """A script whose C{Process} runs the Lua code it is given."""
        return self.load(EVALUATOR, error_logs=error_logs, **settings)

    def emits(self, body: str, script: LuaScript | None = None) -> list[str]:
        """Run the Lua C{body} (which may call C{emit}); return the contents."""
        script = script or self.evaluator()
        return [content for _, content in script.process(body)]

    def emitted(self, body: str) -> str:
        """Run the Lua C{body}, which emits once; return that content."""
        [content] = self.emits(body)
        return content
