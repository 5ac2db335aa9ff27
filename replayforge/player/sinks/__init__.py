"""
The player's sinks: where pulled events end up.

Every sink follows L{replayforge.player.sinks.base.Sink};
L{replayforge.player.sinks.factory.make_sink} builds the one a
configuration names, from the settings read in
L{replayforge.player.sinks.settings}.
"""
