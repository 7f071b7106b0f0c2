"""Request bodies in, experience ids and SDK events out: the ingest's input rules, as pure
functions.

A minimal event is a JSON object whose "experienceID" is an integer with
0 <= id <= 2**63 - 1; other keys are ignored. A batch is {"batch": [event, ...]}.

* A batch of minimal events only is all or nothing: one bad element rejects it, naming it.
* A batch holding any SDK event (an element with a "type", "id" or "anonymousID": what Judo's
  SDKs send) is judged event by event: each unusable element is left out and named, and the
  rest is taken. The SDKs drop a whole chunk on any 4xx, so one bad event must never cost
  its neighbours.
* An SDK event is stored as it came, so every string in it (keys too) must be text that
  UTF-8 can hold. JSON's \\u escapes can carry a lone surrogate (half of a character such
  as an emoji, "\\udc00"), which no UTF-8 reader, SQLite or hash can take: such an event
  is left out and named, like any other unusable one.

A body that is unusable as a whole (not JSON, no "batch" list, too large) raises Invalid with
a message that names the problem, and nothing is written.
"""

import datetime
import json
import re
import msgspec

from storage.log.format import MAX_ID
from storage.sdk_event import CheckedEvent

MAX_BATCH_EVENTS = 10_000
EXACT_FLOAT = 2**53

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


def exact_integer(value):
    """JSON Schema's integer: 425.0 and 4.25e2 are 425, as ints. Only below 2**53, where a
    float still holds the number written (9007199254740993.0 reads as ...992.0); any other
    value is returned as it is."""
    if type(value) is float and value.is_integer() and abs(value) < EXACT_FLOAT:
        return int(value)
    return value


def event_id(event, where="body"):
    """The experience id of one decoded event; `where` names the event in error messages."""
    if type(event) is not dict:
        raise Invalid(f'{where} must be a JSON object like {{"experienceID": 1}}')
    if "experienceID" not in event:
        raise Invalid(f"{where} has no experienceID")
    value = event["experienceID"]
    field = "experienceID" if where == "body" else f"{where}.experienceID"
    value = exact_integer(value)
    if type(value) is not int:  # not isinstance: True and False are ints to Python
        kind = _TYPE_NAMES.get(type(value), type(value).__name__)
        raise Invalid(f"{field} must be an integer, got {kind}")
    if not 0 <= value <= MAX_ID:
        raise Invalid(f"{field} must be between 0 and {MAX_ID}")
    return value


def parse_event(body):
    """The id in a POST /event body."""
    return event_id(parse_json(body))


def parse_batch(body, received):
    """A POST /batch body as a Batch; `received` is the receive time (Unix seconds), which
    stands in for a device time that cannot be believed. A batch of well-formed SDK events,
    which is what the SDKs send, takes the fast way (_fast_sdk_batch); any other body the
    step by step way, which names every problem."""
    return _fast_sdk_batch(body, received) or parse_batch_checked(body, received)


def parse_batch_checked(body, received):
    """parse_batch, step by step."""
    document = parse_json(body)
    if type(document) is not dict or "batch" not in document:
        raise Invalid('body must be a JSON object like {"batch": [{"experienceID": 1}]}')
    if type(document["batch"]) is not list:
        kind = _TYPE_NAMES.get(type(document["batch"]), "a number")
        raise Invalid(f'batch must be an array of events, like {{"batch": [{{"experienceID": '
                      f'1}}]}}, got {kind}')
    events = document["batch"]
    if not events:
        raise Invalid("batch is empty")
    if len(events) > MAX_BATCH_EVENTS:
        raise Invalid(f"batch holds {len(events)} events; the limit is {MAX_BATCH_EVENTS}", 413)
    if _is_sdk_batch(events):
        return _sdk_batch(events, received, may_hold_lone_surrogates(body))
    ids = []
    for event in events:
        # The common case checked inline; only a bad element pays for a named error.
        value = event.get("experienceID") if type(event) is dict else None
        if type(value) is not int or not 0 <= value <= MAX_ID:
            value = event_id(event, f"batch[{len(ids)}]")  # raises, naming element and problem
        ids.append(value)
    return Batch(ids)


# --- The SDKs' events (Judo's iOS and Android SDKs; README, "Sending events from Judo's SDKs")

SDK_TYPES = ("screen", "identify", "register")
SDK_MARKS = ("type", "id", "anonymousID")  # any of these makes a batch an SDK batch
MAX_SDK_STRING = 256  # longest id, anonymousID or userID kept
CLOCK_AHEAD_LIMIT = 24 * 3600  # a device time further ahead than this is not believed
CLOCK_OLDEST = 946684800  # 2000-01-01T00:00:00Z: earlier device times are not believed
# RFC 3339 as both SDKs write it: iOS `2026-11-27T14:11:12Z`, Android `...-0400` (no colon).
# \d is any Unicode digit on purpose: Android formats with the device's locale, whose digits
# may not be ASCII; int() reads them all.
# Its groups: the date and hour (fixed places: each \d is one character), minute, second,
# fraction, zone.
_TIMESTAMP = re.compile(
    r"(\d{4}-\d\d-\d\dT\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?(Z|z|[+-]\d\d:?\d\d)")
# The start of each (date and hour, zone) met lately, in Unix microseconds, or False where it
# is no moment (a month 13, an offset of 24 h): a batch's events, and the batches of an hour,
# share them. Building the datetime was most of an SDK event's checking; now it is done once
# an hour and zone. Cleared when full; threads share it (a dict's get and set are atomic).
_HOUR_STARTS = {}
_HOUR_STARTS_KEPT = 4096
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_MICROSECOND = datetime.timedelta(microseconds=1)


class SdkEvent:
    """One usable SDK event: `index` in its batch, its `event_id`, `kind` (its type),
    `anonymous_id`, `experience_id` (an int for a screen view, else None), `item`: what
    storage/log/details.py keeps beside the event ({"time"}, and "clock" where the device's
    time was not believed), and `event`, the event as sent (a dict). What the overview
    counts of it besides (storage/log/counted.py): `user_id` (a string or None) and, for a
    screen view, `screen`: its properties' (id, experienceRevisionID, experienceName, name),
    each a string or None."""

    __slots__ = ("index", "event_id", "kind", "anonymous_id", "experience_id", "item",
                 "user_id", "screen", "_event", "_sent")

    def __init__(self, index, event_id, kind, anonymous_id, experience_id, item, user_id,
                 screen, event=None, sent=None):
        """`event`, or `sent`: the _SentBatch it is decoded from when first asked for (a
        batch kept whole in the details never needs it)."""
        self.index = index
        self.event_id = event_id
        self.kind = kind
        self.anonymous_id = anonymous_id
        self.experience_id = experience_id
        self.item = item
        self.user_id = user_id
        self.screen = screen
        self._event = event
        self._sent = sent

    @property
    def event(self):
        if self._event is None:
            self._event = self._sent.event(self.index)
        return self._event

    @property
    def details(self):
        """The item storage/log/details.py keeps of it: {"event", "time", ["clock"]}."""
        return {"event": self.event, **self.item}

    @property
    def event_json(self):
        """The event in JSON, bytes: as it came in the body when it was read the fast way
        (neither decoded nor encoded again), else encoded from `event`."""
        if self._event is None:
            return self._sent.event_json(self.index)
        return json.dumps(self._event, separators=(",", ":")).encode()


class Batch:
    """A parsed POST /batch body: `ids` from minimal items, `events` from SDK items, and
    `rejected`: (index, event id or None, reason) of each SDK item left out."""

    def __init__(self, ids=(), events=(), rejected=()):
        self.ids = list(ids)
        self.events = list(events)
        self.rejected = list(rejected)


def device_time(raw, received):
    """(Unix time in seconds, None) for a believable device timestamp; else (received, why).

    The receive time stands in for a timestamp that is missing, unparsable, more than 24 h
    after the receive time, or before 2000; `why` says which, and the event is flagged.
    The seconds are exactly datetime's own (datetime.timestamp() of the parsed moment)."""
    if raw is None:
        return received, "missing"
    match = _TIMESTAMP.fullmatch(raw) if type(raw) is str else None
    if match is None:
        return received, "unparsable"
    hour, minute, second, fraction, zone = match.groups()
    start = _HOUR_STARTS.get((hour, zone))
    if start is None:
        start = _hour_start(hour, zone)
    minute, second = int(minute), int(second)
    if start is False or minute > 59 or second > 59:
        return received, "unparsable"
    microseconds = start + (minute * 60 + second) * 1_000_000
    if fraction:
        microseconds += int(fraction[:6].ljust(6, "0"))
    # An int divided once: the same float as datetime's timestamp() (timedelta's
    # total_seconds() divides the microseconds the same way).
    seconds = microseconds / 1_000_000
    if seconds > received + CLOCK_AHEAD_LIMIT:
        return received, "ahead"
    if seconds < CLOCK_OLDEST:
        return received, "before 2000"
    return seconds, None


def _hour_start(hour, zone):
    """The start of `hour` ("2026-11-27T14", any Unicode digits) in `zone` ("Z", "-0400",
    "+05:30"), in Unix microseconds, or False if it is no moment; kept in _HOUR_STARTS."""
    try:
        if zone in ("Z", "z"):
            offset = datetime.timedelta(0)
        else:
            sign = -1 if zone[0] == "-" else 1
            digits = zone[1:].replace(":", "")
            offset = sign * datetime.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
        moment = datetime.datetime(int(hour[:4]), int(hour[5:7]), int(hour[8:10]),
                                   int(hour[11:13]), tzinfo=datetime.timezone(offset))
        start = (moment - _EPOCH) // _MICROSECOND
    except ValueError:  # a month 13, an offset of 24 h or more
        start = False
    if len(_HOUR_STARTS) >= _HOUR_STARTS_KEPT:
        _HOUR_STARTS.clear()
    _HOUR_STARTS[hour, zone] = start
    return start


def _sdk_string(event, key, optional=False):
    value = event.get(key)
    if value is None and optional:
        return None
    if type(value) is not str or not value:
        kind = "missing" if key not in event else _TYPE_NAMES.get(type(value), "an empty string")
        raise Invalid(f"{key} must be a non-empty string, got {kind}")
    if len(value) > MAX_SDK_STRING:
        raise Invalid(f"{key} is longer than {MAX_SDK_STRING} characters")
    return value


def _optional_object(event, key):
    value = event.get(key)
    if value is not None and type(value) is not dict:
        raise Invalid(f"{key} must be an object, got {_TYPE_NAMES.get(type(value), 'a value')}")


def experience_id_of(properties):
    """properties.experienceID, a decimal string as the SDKs send it, or an integer."""
    value = properties.get("experienceID")
    if type(value) is str and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    else:
        value = exact_integer(value)
    if type(value) is not int or not 0 <= value <= MAX_ID:
        shown = "missing" if "experienceID" not in properties else json.dumps(value)[:40]
        raise Invalid("properties.experienceID must be a decimal string of an id from 0 to "
                      f"{MAX_ID}, got {shown}")
    return value


def _usable_string(value):
    return type(value) is str and 0 < len(value) <= MAX_SDK_STRING


def _fast_experience(event):
    """The common case checked inline: (True, experience id or None) for a well-formed event,
    or (False, None) when sdk_event must look again, step by step, to name what is wrong."""
    kind = event.get("type")
    user = event.get("userID")
    context = event.get("context")
    if not (_usable_string(event.get("id")) and _usable_string(event.get("anonymousID"))
            and (user is None or user == "" or _usable_string(user))
            and (context is None or type(context) is dict)):
        return False, None
    if kind == "screen":
        properties = event.get("properties")
        if type(properties) is not dict:
            return False, None
        experience = _plain_experience_id(properties.get("experienceID"))
        if experience is None:
            return False, None
        for key in ("id", "name", "experienceName", "experienceRevisionID"):
            if type(properties.get(key, "")) is not str and properties[key] is not None:
                return False, None
        return True, experience
    if kind == "identify":
        traits = event.get("traits")
        return traits is None or type(traits) is dict, None
    return kind == "register", None


def sdk_event(event, received, index=0, clocks=None):
    """One SDK event as an SdkEvent; Invalid naming its problem if it is unusable. `clocks`:
    a dict that caches device_time answers across a batch (its events share timestamps)."""
    if type(event) is dict:
        usable, experience = _fast_experience(event)
        if usable:
            return SdkEvent(index, event["id"], event["type"], event["anonymousID"],
                            experience, _item(*_device_time(event.get("timestamp"), received,
                                                            clocks)),
                            event.get("userID"), _screen_of(event), event)
    return _checked_sdk_event(event, received, index)


def _screen_of(event):
    """SdkEvent.screen of a checked event, a dict."""
    if event["type"] != "screen":
        return None
    properties = event["properties"]
    return (properties.get("id"), properties.get("experienceRevisionID"),
            properties.get("experienceName"), properties.get("name"))


def _plain_experience_id(value):
    """An experienceID as the SDKs send it, up to 18 ASCII digits (always below 2**63), as
    an int; None for anything else, which the step by step way judges."""
    if type(value) is str and value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    return None


def _device_time(raw, received, clocks=None):
    """device_time, its answers kept in `clocks` (a dict, for one batch: its events share
    timestamps)."""
    if clocks is None or type(raw) is not str:
        return device_time(raw, received)
    known = clocks.get(raw)
    if known is None:
        known = clocks[raw] = device_time(raw, received)
    return known


def _item(seconds, clock):
    item = {"time": round(seconds * 1000)}
    if clock:
        item["clock"] = clock
    return item


def _checked_sdk_event(event, received, index):
    """sdk_event, step by step: each check names its problem."""
    if type(event) is not dict:
        raise Invalid("must be a JSON object")
    event_id = _sdk_string(event, "id")
    _sdk_string(event, "anonymousID")
    if event.get("userID") != "":  # empty, as null: no person named
        _sdk_string(event, "userID", optional=True)
    kind = event.get("type")
    if kind not in SDK_TYPES:
        raise Invalid(f"type must be one of {', '.join(SDK_TYPES)}, got {json.dumps(kind)[:40]}")
    _optional_object(event, "context")
    experience = None
    if kind == "screen":
        properties = event.get("properties")
        if type(properties) is not dict:
            raise Invalid("a screen event needs properties, an object with its experienceID")
        experience = experience_id_of(properties)
        for key in ("id", "name", "experienceName", "experienceRevisionID"):
            if properties.get(key) is not None and type(properties[key]) is not str:
                raise Invalid(f"properties.{key} must be a string")
    elif kind == "identify":
        _optional_object(event, "traits")
    return SdkEvent(index, event_id, kind, event["anonymousID"], experience,
                    _item(*device_time(event.get("timestamp"), received)),
                    event.get("userID"), _screen_of(event), event)


# A JSON \\u escape of a UTF-16 surrogate: only a body holding one can decode to a lone one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def may_hold_lone_surrogates(body):
    return b"\\u" in body and _SURROGATE_ESCAPE.search(body) is not None


def not_unicode(value, where=""):
    """The path of the first string in `value` (a decoded JSON value, keys included) that
    UTF-8 cannot encode, or None."""
    if type(value) is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where or "a string"
        return None
    if type(value) is dict:
        for key, item in value.items():
            path = f"{where}.{key}" if where else key
            if not_unicode(key) is not None:
                return f"a key in {where or 'the event'}"
            found = not_unicode(item, path)
            if found:
                return found
    elif type(value) is list:
        for index, item in enumerate(value):
            found = not_unicode(item, f"{where}[{index}]")
            if found:
                return found
    return None


def _is_sdk_batch(events):
    return any(type(event) is dict and any(mark in event for mark in SDK_MARKS)
               for event in events)


def _sdk_batch(events, received, check_text):
    """Every usable event kept; each unusable one left out and named (the SDKs drop a whole
    chunk on a 4xx, so one bad event must not cost its neighbours). `check_text`: the body
    may hold lone surrogates, so each event is looked through for them."""
    batch = Batch()
    clocks = {}
    for index, event in enumerate(events):
        try:
            if type(event) is dict and not any(mark in event for mark in SDK_MARKS):
                batch.ids.append(event_id(event, f"batch[{index}]"))  # a minimal item
                continue
            where = not_unicode(event) if check_text else None
            if where:
                raise Invalid(f"{where} holds a lone surrogate (half of a character such as "
                              "an emoji), which is not text UTF-8 can hold")
            batch.events.append(sdk_event(event, received, index, clocks))
        except Invalid as invalid:
            named = event.get("id") if type(event) is dict else None
            if type(named) is not str or not_unicode(named):
                named = None
            batch.rejected.append((index, named, str(invalid)))
    return batch


# --- The fast way: a body whose every element is a well-formed SDK event, decoded and checked
# in one pass by msgspec into storage/sdk_event.py's CheckedEvent (several times the speed of
# json and the checks above, which are most of the ingest's work per event). A body it does
# not take whole (an element it would reject, a minimal item, text that may hold a lone
# surrogate, a value msgspec reads otherwise than json) goes the step by step way, which names
# each problem. For every body it takes, both ways give the same Batch (tests/test_validate.py).


class _Body(msgspec.Struct):
    batch: list[CheckedEvent]


_DECODE_BODY = msgspec.json.Decoder(_Body)
_DECODE_RAW_BODY = msgspec.json.Decoder(msgspec.defstruct("RawBody",
                                                          [("batch", list[msgspec.Raw])]))


class _SentBatch:
    """A body's events as dicts, decoded (by json, as the step by step way does) only when
    one is asked for: a batch kept whole in the details never is."""

    def __init__(self, body):
        self.body = body
        self._events = self._raw = None

    def event(self, index):
        if self._events is None:
            self._events = json.loads(self.body)["batch"]
        return self._events[index]

    def event_json(self, index):
        """Event `index` as the body holds it: its JSON text, bytes."""
        if self._raw is None:
            self._raw = _DECODE_RAW_BODY.decode(self.body).batch
        return bytes(self._raw[index])


_OBJECT_OR_NULL = frozenset(b"{n")  # the first bytes of JSON's object and null


def _object_or_null(raw):
    # Absent is null (storage/sdk_event.py's default); a Raw is never empty. The first byte
    # as an int, looked up in a set: a third of the time of comparing a slice.
    return memoryview(raw)[0] in _OBJECT_OR_NULL


def _fast_sdk_batch(body, received):
    """The Batch of `body` if every element is a well-formed SDK event (the checks of
    _fast_experience), else None."""
    if may_hold_lone_surrogates(body):
        return None
    try:
        events = _DECODE_BODY.decode(body).batch
    except (msgspec.MsgspecError, ValueError):  # ValueError: bytes that are not UTF-8
        return None
    if not events or len(events) > MAX_BATCH_EVENTS:
        return None
    sent, clocks, kept = _SentBatch(body), {}, []
    for index, event in enumerate(events):
        user, kind = event.userID, event.type
        if not (0 < len(event.id) <= MAX_SDK_STRING
                and 0 < len(event.anonymousID) <= MAX_SDK_STRING
                and (user is None or len(user) <= MAX_SDK_STRING)
                and _object_or_null(event.context)):
            return None
        experience = screen = None
        if kind == "screen":
            properties = event.properties
            experience = _plain_experience_id(
                properties.experienceID if properties is not None else None)
            if experience is None:
                return None
            screen = (properties.id, properties.experienceRevisionID,
                      properties.experienceName, properties.name)
        elif kind == "identify":
            if not _object_or_null(event.traits):
                return None
        elif kind != "register":
            return None
        kept.append(SdkEvent(index, event.id, kind, event.anonymousID, experience,
                             _item(*_device_time(event.timestamp, received, clocks)),
                             user, screen, sent=sent))
    return Batch(events=kept)

