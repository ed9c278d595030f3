"""A tiny kvserver client: send requests, print the replies.

    python3 case-study/kv.py 7070 "SET greeting hello world" "GET greeting"
"""

import socket
import sys


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__.strip())
    port = int(sys.argv[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        stream = sock.makefile("rw", encoding="utf-8", newline="\n")
        for request in sys.argv[2:]:
            stream.write(request + "\n")
            stream.flush()
            print(f"{request} -> {stream.readline().rstrip()}")


if __name__ == "__main__":
    main()
