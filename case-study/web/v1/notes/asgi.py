"""The ASGI front of the notes service, with no framework:
`uvicorn --workers 2 notes.asgi:app`.

The same routes as `notes.wsgi` (GET /, GET /hit?client=NAME,
POST /notes, GET /notes/<id>), answered by the same `notes.logic`.
"""

import json
from urllib.parse import parse_qs

from . import logic, state


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    status, reply = route(scope["method"], scope["path"], scope.get("query_string", b""), body)
    payload = json.dumps(reply).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"x-app-version", logic.VERSION.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def route(method, path, query, body):
    if method == "GET" and path == "/":
        return 200, logic.index_reply()
    if method == "GET" and path == "/hit":
        client = parse_qs(query.decode()).get("client", ["anonymous"])[0]
        return 200, logic.hit_reply(client)
    if method == "POST" and path == "/notes":
        try:
            text = json.loads(body or b"{}").get("text", "")
        except ValueError:
            return 400, logic.stamp({"error": "body is not JSON"})
        return 201, logic.note_reply(state.add_note(text))
    if method == "GET" and path.startswith("/notes/") and path[7:].isdigit():
        note = state.get_note(int(path[7:]))
        if note is not None:
            return 200, logic.note_reply(note)
    return 404, logic.stamp({"error": "not found"})


async def lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
