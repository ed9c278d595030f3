"""Self-test used by update specs' `[check] after`."""

from . import protocol


def ok():
    """True when the dispatcher answers and the store round-trips a value."""
    if protocol.handle_line("PING") != "PONG":
        return False
    return protocol.handle_line("VERSION").startswith("VERSION ")
