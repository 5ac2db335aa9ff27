"""The relay: batches stored per bucket, served to players."""
