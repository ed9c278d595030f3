"""The Flask front of the notes service: `gunicorn notes.wsgi:app`.

Routes only parse the request and call `notes.logic`; the version header is
set from `logic.VERSION` at response time, so it always names the code
that built the body.
"""

from flask import Flask, abort, jsonify, request

from . import logic, state

app = Flask(__name__)


@app.get("/")
def index():
    return jsonify(logic.index_reply())


@app.get("/hit")
def hit():
    return jsonify(logic.hit_reply(request.args.get("client", "anonymous")))


@app.post("/notes")
def add_note():
    text = (request.get_json(silent=True) or {}).get("text", "")
    return jsonify(logic.note_reply(state.add_note(text))), 201


@app.get("/notes/<int:note_id>")
def get_note(note_id):
    note = state.get_note(note_id)
    if note is None:
        abort(404)
    return jsonify(logic.note_reply(note))


@app.after_request
def version_header(response):
    response.headers["X-App-Version"] = logic.VERSION
    return response
