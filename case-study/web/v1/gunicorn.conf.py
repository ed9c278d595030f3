"""gunicorn settings for the notes service (`gunicorn -c gunicorn.conf.py notes.wsgi:app`).

Command-line flags (-w, -k, --threads, --preload, -b) override these.
"""

bind = "127.0.0.1:8000"
workers = 4
# Log to stderr, so `pyreload run` shows the server's log as gunicorn's own.
errorlog = "-"
# pyreload is this service's control plane; gunicorn 26+ would also open its
# own control socket, at one fixed path per user ($XDG_RUNTIME_DIR or
# ~/.gunicorn), which two servers on one machine would share.
control_socket_disable = True
loglevel = "info"
# gthread workers keep idle connections open this long (gunicorn's default
# is 2 s). A client that reuses connections (a proxy, or load.py) then
# rarely races the server closing one under it.
keepalive = 10


def post_worker_init(worker):
    # gunicorn says "Booting worker" before a worker has loaded the app; this
    # says when it can serve, which is what a deploy script (or a test)
    # waits for.
    worker.log.info("notes: worker %s ready (app loaded)", worker.pid)
