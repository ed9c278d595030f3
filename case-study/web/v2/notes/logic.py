"""What the service says: the code an update changes (version 2.0).

2.0 fixes the word count and gives /hit a running total over all clients
of this worker, which 1.0 did not report. The data in `notes.state` is
the same: 2.0 reads it as it is.
"""

import os

from . import state

VERSION = "2.0"


def stamp(body):
    """Every answer says which code and which worker process made it."""
    body["version"] = VERSION
    body["pid"] = os.getpid()
    return body


def hit_reply(client):
    hits = state.hit(client)
    return stamp({"client": client, "hits": hits, "total": sum(state.HITS.values())})


def words(text):
    # 2.0: split() on any run of whitespace ("a  b" is 2 words).
    return len(text.split())


def note_reply(note):
    return stamp({"id": note["id"], "text": note["text"], "words": words(note["text"])})


def index_reply():
    return stamp({"service": "notes", "notes": len(state.NOTES), "clients": len(state.HITS)})
