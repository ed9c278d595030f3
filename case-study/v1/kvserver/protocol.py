"""The line protocol: parse a request, dispatch it, format the reply.

    PING                 -> PONG
    SET <key> <value>    -> OK
    GET <key>            -> VALUE <value> | NOT_FOUND
    DEL <key>            -> DELETED | NOT_FOUND
    SIZE                 -> SIZE <n>
    STATS                -> STATS requests=... errors=... in_flight=... connections=...
    VERSION              -> VERSION <version>
    QUIT                 -> BYE
"""

from .stats import STATS
from .store import STORE

VERSION = "1.0"


def cmd_ping(args):
    return "PONG"


def cmd_set(args):
    if len(args) < 2:
        return "ERR usage: SET <key> <value>"
    # BUG: a value with spaces is cut at the first space.
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
    "SIZE": cmd_size,
    "STATS": cmd_stats,
    "VERSION": cmd_version,
    "QUIT": cmd_quit,
}


def parse(line):
    parts = line.split()
    if not parts:
        return None, []
    return parts[0].upper(), parts[1:]


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
