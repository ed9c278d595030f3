"""The notes service in ONE process, for bench/tree.py's single-process row.

    cd <a copy of case-study/web/v1>
    pyreload run --name web --version 1.0 <repo>/bench/tree_single.py

The same Flask app (`notes.wsgi:app`) and the same in-place update
(`specs/web-v1-to-v2.toml`) as the gunicorn rows, served by werkzeug's
threaded server (HTTP/1.1 keep-alive, one thread per connection) in the
program's own process: nothing forks, so `pyreload apply` updates a single
process and its report has no `members`. It logs the port the way gunicorn
does ("Listening at: http://127.0.0.1:PORT"), so the benchmark finds both
the same way.
"""

import os
import sys

# Run as a script, sys.path[0] is this file's directory; the app is the
# deployed copy in the working directory, as `python -m gunicorn` sees it.
sys.path.insert(0, os.getcwd())

from werkzeug.serving import WSGIRequestHandler, make_server  # noqa: E402

from notes.wsgi import app  # noqa: E402


class QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):
        pass  # gunicorn logs no access line either (no --access-logfile)


server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
print(f"Listening at: http://127.0.0.1:{server.server_port} ({os.getpid()})", file=sys.stderr, flush=True)
server.serve_forever()
