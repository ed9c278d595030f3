"""The live state of one worker process: what an update must not lose.

Each gunicorn or uvicorn worker is its own process, so each has its own
copy. Under `--preload` the copies start from the master's (empty) one.
"""

import threading

# hits per client name, for GET /hit?client=NAME
HITS = {}
# note id -> {"id": ..., "text": ...}, for POST /notes and GET /notes/<id>
NOTES = {}
NEXT_ID = [1]

# gthread workers and uvicorn serve several requests of one process at once.
LOCK = threading.Lock()


def hit(client):
    with LOCK:
        HITS[client] = HITS.get(client, 0) + 1
        return HITS[client]


def add_note(text):
    with LOCK:
        note_id = NEXT_ID[0]
        NEXT_ID[0] += 1
        NOTES[note_id] = {"id": note_id, "text": text}
        return NOTES[note_id]


def get_note(note_id):
    with LOCK:
        return NOTES.get(note_id)
