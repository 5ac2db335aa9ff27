"""The proxy: capture, transform, buffer and forward events."""
