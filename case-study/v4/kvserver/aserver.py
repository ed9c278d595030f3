"""The same server on asyncio: one task per connection, one thread.

Started with `python -m kvserver --asyncio`. It speaks the same protocol
through the same `protocol.handle_line`, so every update of the protocol
applies to both servers.
"""

import asyncio

from . import protocol
from .stats import STATS


async def handle_client(reader, writer):
    STATS.connection_opened()
    try:
        while True:
            raw = await reader.readline()
            if not raw:
                break
            reply = protocol.handle_line(raw.decode("utf-8", "replace").rstrip("\r\n"))
            writer.write(reply.encode("utf-8") + b"\n")
            await writer.drain()
            if reply == "BYE":
                break
    except (ConnectionError, OSError):
        pass
    finally:
        STATS.connection_closed()
        writer.close()


async def serve(host, port, on_listening, stop):
    """Serve until `stop` (an asyncio.Event) is set."""
    server = await asyncio.start_server(handle_client, host, port)
    on_listening(server.sockets[0].getsockname()[1])
    async with server:
        await stop.wait()
