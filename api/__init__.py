"""HTTP and WebSocket entry points, configuration and the command line: wires every layer."""

__version__ = "0.1.0"
