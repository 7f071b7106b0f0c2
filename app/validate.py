"""Request bodies in, experience ids out: the ingest's input rules, as pure functions.

An event is a JSON object whose "experienceID" is an integer with 0 <= id <= 2**63 - 1; other
keys are ignored. A batch is {"batch": [event, ...]}, all or nothing. Anything else raises
Invalid with a message that names the problem, and nothing is written.
"""

import json

from storage.log_format import MAX_ID

MAX_BATCH_EVENTS = 10_000

_TYPE_NAMES = {
    type(None): "null",
    bool: "a boolean",
    float: "a non-integer number",
    str: "a string",
    list: "an array",
    dict: "an object",
}


class Invalid(Exception):
    """The body breaks the input rules; `status` is the HTTP status to answer with."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


def _reject_constant(name):
    raise Invalid(f"{name} is not a valid JSON number")


def parse_json(body):
    """Decode a request body as JSON text in UTF-8, whatever its Content-Type said."""
    if not body.strip():
        raise Invalid('body is empty; expected a JSON object like {"experienceID": 1}')
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid("body is not valid UTF-8") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise Invalid(f"body is not valid JSON: {error}") from None
    except ValueError:
        # json raises a plain ValueError only when an integer literal is over Python's
        # digit limit (4300 digits).
        raise Invalid("body holds a number with too many digits") from None
    except RecursionError:
        raise Invalid("body is nested too deeply") from None


def event_id(event, where="body"):
    """The experience id of one decoded event; `where` names the event in error messages."""
    if type(event) is not dict:
        raise Invalid(f'{where} must be a JSON object like {{"experienceID": 1}}')
    if "experienceID" not in event:
        raise Invalid(f"{where} has no experienceID")
    value = event["experienceID"]
    field = "experienceID" if where == "body" else f"{where}.experienceID"
    if type(value) is not int:  # not isinstance: True and False are ints to Python
        kind = _TYPE_NAMES.get(type(value), type(value).__name__)
        raise Invalid(f"{field} must be an integer, got {kind}")
    if not 0 <= value <= MAX_ID:
        raise Invalid(f"{field} must be between 0 and {MAX_ID}")
    return value


def parse_event(body):
    """The id in a POST /event body."""
    return event_id(parse_json(body))


def parse_batch(body):
    """The ids in a POST /batch body, in order; one bad element rejects the whole batch."""
    document = parse_json(body)
    if type(document) is not dict or type(document.get("batch")) is not list:
        raise Invalid('body must be a JSON object like {"batch": [{"experienceID": 1}]}')
    events = document["batch"]
    if not events:
        raise Invalid("batch is empty")
    if len(events) > MAX_BATCH_EVENTS:
        raise Invalid(f"batch holds {len(events)} events; the limit is {MAX_BATCH_EVENTS}", 413)
    ids = []
    for event in events:
        # The common case checked inline; only a bad element pays for a named error.
        value = event.get("experienceID") if type(event) is dict else None
        if type(value) is not int or not 0 <= value <= MAX_ID:
            value = event_id(event, f"batch[{len(ids)}]")  # raises, naming element and problem
        ids.append(value)
    return ids
