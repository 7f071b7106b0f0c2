"""The worker reads' wire format (cluster mode), written down once: what an ingest node (or
`python -m worker status`) asks the worker that owns a partition, and what it answers. JSON
both ways, by NATS request-reply on the partition's subjects (names.py); nothing is stored.
worker/stream_answers.py answers; app/cluster_readside.py and storage/stream/state.py ask.

    ping, on worker_ping_subject(p); the question is empty
        -> {"partition", "owner", "sequence" (its checkpoint's), "since" (when it took the
           partition), "progress_at" (when it last finished a pass or committed, Unix s)}

    counts over time, on series_query_subject(p)
        {"ask": "state", "project"}                      -> {"state": [offset, ...] or None}
        {"ask": "buckets", "step", "experience", "start", "end", "project"}
                                                         -> {"state", "buckets": [[s, n], ...]}
        {"ask": "counts", "step", "start", "end", "project"}
                                                         -> {"state", "counts": [[id, n], ...]}
      `state` is the store's SeriesState (storage/views/series_store.py), read before the
      answer, so the answer is at least that new.

    overview, on overview_query_subject(p)
        {"calls": [[name, *args], ...], "project"}  (storage/views/overview_store.py's READS)
            -> {"position": sequence, "results": [rows, ...]}, every read in one snapshot of
               the store, each value in its rows as encode_value gives it (bytes, the
               sketches, as {"b64": ...})

    "project" is the project whose experiences are read (storage/projects.py; "" the default
    project, and when absent).

    any question the worker cannot answer now -> {"error": why}

A worker answers only while its leases are fresh (storage/stream/leases.py): a worker that
may have lost a partition falls silent rather than answer from behind.
"""

import base64
import json


def encode(document):
    """A question or an answer, as sent."""
    return json.dumps(document).encode()


def decode(data):
    """A question or an answer, as received. Raises ValueError if it is not JSON."""
    return json.loads(data)


def encode_rows(rows):
    """A read's rows, each value as JSON can carry it."""
    return [[encode_value(value) for value in row] for row in rows]


def decode_rows(rows):
    """A read's rows as the store gave them (encode_rows undone)."""
    return [[decode_value(value) for value in row] for row in rows]


def encode_value(value):
    """A stored value as JSON can carry it: bytes (sketches) as {"b64": base64}."""
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode()}
    return value


def decode_value(value):
    """A value as encode_value sent it, back as stored."""
    if isinstance(value, dict):
        return base64.b64decode(value["b64"])
    return value
