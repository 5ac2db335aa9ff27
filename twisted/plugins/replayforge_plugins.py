"""
The three ReplayForge daemons, as twistd sees them.
"""

from twisted.application.service import ServiceMaker

relay = ServiceMaker(
    "ReplayForge relay",
    "replayforge.relay.tap",
    "Store batches per bucket for players to fetch.",
    "replayforge-relay",
)
proxy = ServiceMaker(
    "ReplayForge proxy",
    "replayforge.proxy.tap",
    "Capture HTTP calls and log lines, buffer them and forward them to a relay.",
    "replayforge-proxy",
)
player = ServiceMaker(
    "ReplayForge player",
    "replayforge.player.tap",
    "Pull batches from a relay and replay them to sinks.",
    "replayforge-player",
)
