"""Command handlers: load a stream, let the domain decide, append with the expected version."""
