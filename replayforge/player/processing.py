"""
Turn one pulled record into the events its sinks receive.

A source with a C{transformScript} runs the script's C{Process(content,
emit)}; a source with a list of sinks sends the content unchanged to each of
them, without a Lua runtime.
"""

from __future__ import annotations

from typing import Protocol

from replayforge.config import ConfigError
from replayforge.lua import Emitted, LuaScript
from replayforge.player.config import PlayerSourceConfig


class EventProcessor(Protocol):
    """What the puller calls for each record: content in, emits out."""

    def process(self, content: str) -> Emitted:
        """
        Return the C{(sink name, text)} pairs emitted for C{content}.

        @raise replayforge.lua.ScriptFailure: when a script failed on it.
        """
        ...

    def timer(self) -> Emitted:
        """
        Return what a periodic tick emits (a script's C{TimerHandler}).

        @raise replayforge.lua.ScriptFailure: when the script failed.
        """
        ...


class FanOut:
    """Send every record unchanged to a fixed list of sinks."""

    def __init__(self, sink_names: tuple[str, ...]) -> None:
        self.sink_names = sink_names

    def process(self, content: str) -> Emitted:
        """Emit C{content} to each sink of the list."""
        return [(name, content) for name in self.sink_names]

    def timer(self) -> Emitted:
        """Emit nothing: without a script there is no C{TimerHandler}."""
        return []


def has_timer(processor: EventProcessor) -> bool:
    """Tell whether C{processor} is a script defining C{TimerHandler}."""
    return isinstance(processor, LuaScript) and processor.defines("TimerHandler")


def load_processor(source: PlayerSourceConfig, config_file: str) -> EventProcessor:
    """
    Build the processor of C{source}: its script, loaded, or a L{FanOut}.

    @raise replayforge.lua.ScriptError: when the script cannot be loaded.
    @raise ConfigError: when the script defines neither C{Process} nor
        C{TimerHandler}.
    """
    if source.transform_script is None:
        return FanOut(source.sinks)
    script = LuaScript(
        source.transform_script,
        tag=f"source:{source.name}",
        settings=source.lua,
        error_logs=False,
    )
    if not (script.defines("Process") or script.defines("TimerHandler")):
        raise ConfigError(
            config_file,
            f"{source.key_path}.transformScript",
            f"{source.transform_script} defines neither Process(content, emit) "
            "nor TimerHandler(emit)",
        )
    return script
