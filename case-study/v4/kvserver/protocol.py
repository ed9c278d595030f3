"""The line protocol: parse a request, dispatch it, format the reply.

    PING                 -> PONG
    SET <key> <value>    -> OK            (the value may contain spaces)
    GET <key>            -> VALUE <value> | NOT_FOUND
    DEL <key>            -> DELETED | NOT_FOUND
    INCR <key>           -> VALUE <n>     (new in 2.0; a missing key counts from 0)
    SETEX <key> <seconds> <value> -> OK   (new in 3.0; the key expires after that time)
    TTL <key>            -> TTL <seconds> | TTL none | NOT_FOUND   (new in 3.0)
    VER <key>            -> VER <n>, how many times the key was written | NOT_FOUND   (new in 3.0)
    HOT <n>              -> HOT key:hits ..., the n most read keys   (new in 4.0)
    SIZE                 -> SIZE <n>
    STATS                -> STATS requests=... errors=... in_flight=... connections=...
    VERSION              -> VERSION <version>
    QUIT                 -> BYE
"""

import time

from . import hot
from .stats import STATS
from .store import STORE

VERSION = "4.0"


def cmd_ping(args):
    return "PONG"


def cmd_set(args):
    if len(args) < 2:
        return "ERR usage: SET <key> <value>"
    STORE.set(args[0], args[1])
    return "OK"


def cmd_get(args):
    if len(args) != 1:
        return "ERR usage: GET <key>"
    value = STORE.get(args[0])
    return "NOT_FOUND" if value is None else f"VALUE {value}"


def cmd_del(args):
    if len(args) != 1:
        return "ERR usage: DEL <key>"
    return "DELETED" if STORE.delete(args[0]) else "NOT_FOUND"


def cmd_incr(args):
    if len(args) != 1:
        return "ERR usage: INCR <key>"
    try:
        return f"VALUE {STORE.incr(args[0])}"
    except ValueError:
        return "ERR value is not an integer"


def cmd_setex(args):
    if len(args) != 3:
        return "ERR usage: SETEX <key> <seconds> <value>"
    try:
        ttl = float(args[1])
    except ValueError:
        return "ERR seconds must be a number"
    STORE.set(args[0], args[2], ttl=ttl)
    return "OK"


def cmd_ttl(args):
    if len(args) != 1:
        return "ERR usage: TTL <key>"
    entry = STORE.entry(args[0])
    if entry is None:
        return "NOT_FOUND"
    if entry.expires_at is None:
        return "TTL none"
    return f"TTL {max(0.0, entry.expires_at - time.time()):.1f}"


def cmd_ver(args):
    if len(args) != 1:
        return "ERR usage: VER <key>"
    entry = STORE.entry(args[0])
    return "NOT_FOUND" if entry is None else f"VER {entry.rev}"


def cmd_hot(args):
    if len(args) != 1 or not args[0].isdigit():
        return "ERR usage: HOT <n>"
    return "HOT " + " ".join(f"{key}:{hits}" for key, hits in hot.top(STORE, int(args[0])))


def cmd_size(args):
    return f"SIZE {STORE.size()}"


def cmd_stats(args):
    return f"STATS {STATS.line()}"


def cmd_version(args):
    return f"VERSION {VERSION}"


def cmd_quit(args):
    return "BYE"


COMMANDS = {
    "PING": cmd_ping,
    "SET": cmd_set,
    "GET": cmd_get,
    "DEL": cmd_del,
    "INCR": cmd_incr,
    "SETEX": cmd_setex,
    "TTL": cmd_ttl,
    "VER": cmd_ver,
    "HOT": cmd_hot,
    "SIZE": cmd_size,
    "STATS": cmd_stats,
    "VERSION": cmd_version,
    "QUIT": cmd_quit,
}


def parse(line):
    command, _, rest = line.strip().partition(" ")
    if not command:
        return None, []
    command = command.upper()
    if command == "SET":
        # The value is everything after the key, spaces included.
        return command, rest.strip().split(None, 1)
    if command == "SETEX":
        return command, rest.strip().split(None, 2)
    return command, rest.split()


def dispatch(command, args):
    handler = COMMANDS.get(command)
    if handler is None:
        return f"ERR unknown command {command}"
    return handler(args)


def handle_line(line):
    """Serve one request line; never raises."""
    STATS.request_started()
    ok = False
    try:
        command, args = parse(line)
        if command is None:
            return "ERR empty request"
        reply = dispatch(command, args)
        ok = not reply.startswith("ERR")
        return reply
    except Exception as e:  # a bug must not kill the connection
        return f"ERR internal error: {type(e).__name__}"
    finally:
        STATS.request_finished(ok)
