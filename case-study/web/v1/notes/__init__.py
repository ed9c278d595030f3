"""notes: a small notes-and-hits web service, served two ways.

- `notes.wsgi:app` is a Flask app, for gunicorn (sync or gthread workers).
- `notes.asgi:app` is a bare ASGI callable, for uvicorn.

Both answer from the same two modules:

- `notes.state` holds the live data of one worker process: hit counts and
  notes. It is data, not code, and an update must keep it.
- `notes.logic` is the code that an update changes. Every response carries
  `logic.VERSION` (JSON field `version` and header `X-App-Version`) and the
  pid of the worker that answered, so a client can tell who answered with
  which code.
"""
