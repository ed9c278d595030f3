"""What the service says: the code an update changes (version 1.0).

The web layers (`notes.wsgi`, `notes.asgi`) call these functions through
the module (`logic.hit_reply(...)`), never through a copied name, so a
reload of this module is seen by the very next request.
"""

import os

from . import state

VERSION = "1.0"


def stamp(body):
    """Every answer says which code and which worker process made it."""
    body["version"] = VERSION
    body["pid"] = os.getpid()
    return body


def hit_reply(client):
    return stamp({"client": client, "hits": state.hit(client)})


def words(text):
    # 1.0 bug: runs of spaces count as words ("a  b" is 3 words).
    return len(text.split(" ")) if text else 0


def note_reply(note):
    return stamp({"id": note["id"], "text": note["text"], "words": words(note["text"])})


def index_reply():
    return stamp({"service": "notes", "notes": len(state.NOTES), "clients": len(state.HITS)})
