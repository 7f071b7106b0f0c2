"""app/validate.py: request bodies in, experience ids out, or an error naming the problem."""

import json

import pytest

from app.validate import Invalid, parse_batch, parse_event

MAX_ID = 2**63 - 1

BAD_EVENT_BODIES = {
    "malformed JSON": b'{"experienceID": ',
    "empty body": b"",
    "whitespace only": b"  \n",
    "invalid UTF-8": b'{"experienceID": 1, "x": "\xff\xfe"}',
    "array": b"[1, 2]",
    "number": b"1",
    "string": b'"1"',
    "null body": b"null",
    "missing key": b'{"experienceId": 1}',
    "null": b'{"experienceID": null}',
    "true": b'{"experienceID": true}',
    "false": b'{"experienceID": false}',
    "fraction": b'{"experienceID": 1.5}',
    "2**53 + 1 as a float": b'{"experienceID": 9007199254740993.0}',  # read as ...992
    "a large exponent": b'{"experienceID": 1e18}',
    "string id": b'{"experienceID": "12"}',
    "NaN": b'{"experienceID": NaN}',
    "Infinity": b'{"experienceID": Infinity}',
    "-Infinity": b'{"experienceID": -Infinity}',
    "overflow to inf": b'{"experienceID": 1e400}',
    "negative": b'{"experienceID": -1}',
    "2**63": b'{"experienceID": 9223372036854775808}',
    "5000 digits": b'{"experienceID": ' + b"9" * 5000 + b"}",
    "array id": b'{"experienceID": [1]}',
    "object id": b'{"experienceID": {"id": 1}}',
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("body", BAD_EVENT_BODIES.values(), ids=BAD_EVENT_BODIES.keys())
def test_parse_event_rejects(body):
    with pytest.raises(Invalid) as raised:
        parse_event(body)
    assert raised.value.status == 400
    assert str(raised.value)


@pytest.mark.parametrize(
    "body, expected",
    [
        (b'{"experienceID": 1}', 1),
        (b'{"experienceID": 0}', 0),
        (b'{"experienceID": 9223372036854775807}', MAX_ID),
        (b'{"experienceID": 7, "other": [1.5, null, "x"]}', 7),
        (b'  {"experienceID":42}\n', 42),
        (b'{"experienceID": 1, "experienceID": 2}', 2),  # duplicate keys: JSON's last wins
        # JSON Schema's integers (app/openapi.json), exact up to 2**53:
        (b'{"experienceID": 425.0}', 425),
        (b'{"experienceID": 4.25e2}', 425),
        (b'{"experienceID": 9007199254740991.0}', 2**53 - 1),
    ],
)
def test_parse_event_accepts(body, expected):
    assert parse_event(body) == expected


def test_error_messages_name_the_problem():
    def message(body):
        with pytest.raises(Invalid) as raised:
            parse_event(body)
        return str(raised.value)

    assert "experienceID" in message(b'{"id": 1}')
    assert "integer" in message(b'{"experienceID": "12"}')
    assert "boolean" in message(b'{"experienceID": true}')
    assert "9223372036854775807" in message(b'{"experienceID": -1}')
    assert "UTF-8" in message(b"\xff")
    assert "JSON" in message(b"{")


def test_parse_batch_names_the_bad_index():
    batch = {"batch": [{"experienceID": 1}, {"experienceID": 2}, {"experienceID": "3"}]}
    with pytest.raises(Invalid, match=r"batch\[2\]"):
        parse_batch(json.dumps(batch).encode(), 0)
    assert parse_batch(b'{"batch": [{"experienceID": 5}, {"experienceID": 5}]}', 0).ids == [5, 5]


@pytest.mark.parametrize(
    "body, status",
    [
        (b'{"batch": []}', 400),
        (b'{"batch": {}}', 400),
        (b'[{"experienceID": 1}]', 400),
        (b'{"batch": [1]}', 400),
        (json.dumps({"batch": [{"experienceID": 1}] * 10_001}).encode(), 413),
    ],
)
def test_parse_batch_rejects(body, status):
    with pytest.raises(Invalid) as raised:
        parse_batch(body, 0)
    assert raised.value.status == status


# --- The fast way for SDK batches (validate._fast_sdk_batch) against the step by step way

from hypothesis import given, settings, strategies as st  # noqa: E402

from app import validate  # noqa: E402

TEXT = st.one_of(st.sampled_from(["", "a", "x" * 256, "x" * 257, "Écran", "\U0001F600",
                                  "\udc00", "\x00", "12"]), st.text(max_size=12))
ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                      st.floats(allow_nan=False), TEXT, st.lists(st.integers(), max_size=2),
                      st.dictionaries(TEXT, st.integers(), max_size=2))
TIMESTAMPS = st.one_of(st.sampled_from(["2026-11-27T14:11:12Z", "2026-11-27T10:11:12-0400",
                                        "2026-11-27T14:11:12.5+05:30", "2126-01-01T00:00:00Z",
                                        "1999-12-31T23:59:59Z", "2026-13-01T00:00:00Z",
                                        "yesterday"]), ANY_VALUE)
EXPERIENCE_IDS = st.one_of(st.sampled_from(["12", "0", "9" * 18, "9" * 19, "12a", "", "٣"]),
                           ANY_VALUE)


@st.composite
def sdk_like_events(draw):
    """Mostly well-formed SDK events, in all the shapes the SDKs may send (optional fields
    there or not, null or "" where allowed, device times believable or not); a third with
    one field wrong, missing or hostile; now and then a minimal item or no object at all."""
    shape = draw(st.sampled_from(["sdk"] * 9 + ["minimal", "other"]))
    if shape == "minimal":
        return {"experienceID": draw(st.one_of(st.integers(0, 100), ANY_VALUE))}
    if shape == "other":
        return draw(ANY_VALUE)
    kind = draw(st.sampled_from(validate.SDK_TYPES))
    event = {"id": draw(st.uuids().map(str)), "anonymousID": draw(st.uuids().map(str)),
             "type": kind, "timestamp": draw(TIMESTAMPS)}
    if draw(st.booleans()):
        event["userID"] = draw(st.sampled_from([None, "", "user-1", "Zoë"]))
    if kind == "screen" or draw(st.booleans()):
        properties = {"experienceID": draw(st.integers(0, 10**18 - 1).map(str))}
        for key in ("id", "name", "experienceName", "experienceRevisionID"):
            if draw(st.booleans()):
                properties[key] = draw(st.sampled_from([None, "", "node-1", "Écran", "12"]))
        event["properties"] = properties
    for key in ("context", "traits"):
        if draw(st.booleans()):
            event[key] = draw(st.sampled_from([None, {}, {"locale": "en-CA"}]))
    if draw(st.integers(0, 2)) == 0:  # one flaw
        key = draw(st.sampled_from(["id", "anonymousID", "type", "userID", "timestamp",
                                    "properties", "context", "traits", "experienceID",
                                    "name"]))
        value = draw(st.one_of(TEXT, ANY_VALUE, EXPERIENCE_IDS))
        if key in ("experienceID", "name") and type(event.get("properties")) is dict:
            event["properties"][key] = value
        elif draw(st.booleans()):
            event[key] = value
        else:
            event.pop(key, None)
    return event


def facts(batch):
    return (batch.ids,
            [(e.index, e.event_id, e.kind, e.anonymous_id, e.experience_id, e.item, e.event)
             for e in batch.events],
            batch.rejected)


@settings(max_examples=600, deadline=None)
@given(st.lists(sdk_like_events(), min_size=1, max_size=5), st.booleans())
def test_both_ways_give_the_same_batch(events, ascii_only):
    body = json.dumps({"batch": events}, ensure_ascii=ascii_only).encode("utf-8",
                                                                          "surrogatepass")
    received = 1_795_000_000.0
    fast = validate._fast_sdk_batch(body, received)
    try:
        checked = validate.parse_batch_checked(body, received)
    except validate.Invalid:
        assert fast is None
        return
    if fast is not None:
        assert facts(fast) == facts(checked)
    assert facts(parse_batch(body, received)) == facts(checked)


def test_the_sdks_batches_take_the_fast_way():
    from bench.sdk import PLACEHOLDER, sdk_body  # the SDKs' events, field by field

    body = sdk_body().replace(PLACEHOLDER, "A27D1339-E3D9-42FC-AD4C-5F8ED162A758").encode()
    fast = validate._fast_sdk_batch(body, 1_795_000_000.0)
    assert fast is not None and len(fast.events) == 100
    assert facts(fast) == facts(validate.parse_batch_checked(body, 1_795_000_000.0))
