"""The player: pull batches from a relay and feed them to sinks."""
