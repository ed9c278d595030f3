"""Start the server: python -m kvserver [--host H] [--port P] [--port-file F] [--asyncio]."""

import argparse
import os
import signal
import sys

from . import server


def main(argv=None):
    parser = argparse.ArgumentParser(prog="kvserver", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7070, help="0 picks a free port")
    parser.add_argument("--port-file", help="write the port here once listening")
    parser.add_argument("--asyncio", action="store_true", help="serve with asyncio instead of threads")
    args = parser.parse_args(argv)
    if args.asyncio:
        return main_asyncio(args)

    srv = server.Server(args.host, args.port)

    def stop(signum, frame):
        srv.shutdown()

    signal.signal(signal.SIGTERM, stop)
    announce(args, srv.port)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.close()
        print("kvserver: shut down cleanly", flush=True)
    return 0


def announce(args, port):
    print(f"kvserver listening on {args.host}:{port}", flush=True)
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write(str(port))
        os.replace(args.port_file + ".tmp", args.port_file)


def main_asyncio(args):
    import asyncio

    from . import aserver

    async def run():
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await aserver.serve(args.host, args.port, lambda port: announce(args, port), stop)

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    print("kvserver: shut down cleanly", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
