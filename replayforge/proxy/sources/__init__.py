"""
The proxy's pulled sources: log files, repeated files, system figures and
PostgreSQL calls.

Each turns what it reads into events and submits them to its source's
L{replayforge.proxy.pipeline.SourcePipeline}; L{replayforge.proxy.sources.
services.source_service} builds the service of a configured source.
"""
