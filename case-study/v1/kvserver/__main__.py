"""Start the server: python -m kvserver [--host H] [--port P] [--port-file F]."""

import argparse
import signal
import sys

from . import server


def main(argv=None):
    parser = argparse.ArgumentParser(prog="kvserver", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7070, help="0 picks a free port")
    parser.add_argument("--port-file", help="write the port here once listening")
    args = parser.parse_args(argv)

    srv = server.Server(args.host, args.port)

    def stop(signum, frame):
        srv.shutdown()

    signal.signal(signal.SIGTERM, stop)
    print(f"kvserver listening on {args.host}:{srv.port}", flush=True)
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write(str(srv.port))
        import os

        os.replace(args.port_file + ".tmp", args.port_file)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.close()
        print("kvserver: shut down cleanly", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
