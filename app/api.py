"""The HTTP surface: Bottle routes that turn requests into appends to data1.

Every response body is JSON, errors included: {"error": "<what was wrong>"}. A request is
answered 202 only after its records are durable in data1 (see app/eventlog.py).
"""

import json

import bottle
from bottle import HTTPError, request, response

from app import validate
from app.eventlog import AppendError
from app.log_format import encode

EVENT_BODY_LIMIT = 8 * 1024
BATCH_BODY_LIMIT = 1024 * 1024


def read_body(limit):
    """The request body as bytes; 413 if it is longer than `limit`.

    Read straight from wsgi.input: waitress has already buffered (and de-chunked) the body
    and set CONTENT_LENGTH, so Bottle's own copy into a BytesIO would be wasted work.
    """
    length = request.content_length
    if length > limit:
        raise HTTPError(413, f"body is {length} bytes; the limit is {limit}")
    return request.environ["wsgi.input"].read(length) if length > 0 else b""


def error_body(error):
    response.content_type = "application/json"
    return json.dumps({"error": error.body or error.status_line})


def make_app(eventlog):
    app = bottle.Bottle()
    # No JSON or template plugins: every handler returns its own bytes, which keeps the
    # per-request path short.
    app.uninstall(True)
    app.default_error_handler = error_body

    def accept(ids):
        try:
            eventlog.append(encode(ids))
        except AppendError as error:
            raise HTTPError(503, str(error)) from None
        response.status = 202
        response.content_type = "application/json"
        return b'{"accepted": %d}' % len(ids)

    def parse(parser, limit):
        try:
            return parser(read_body(limit))
        except validate.Invalid as invalid:
            raise HTTPError(invalid.status, str(invalid)) from None

    @app.post("/event")
    @app.post("/ingest-api")  # the path the assignment's example uses
    def post_event():
        return accept((parse(validate.parse_event, EVENT_BODY_LIMIT),))

    @app.post("/batch")
    def post_batch():
        return accept(parse(validate.parse_batch, BATCH_BODY_LIMIT))

    return app
