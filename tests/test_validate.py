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
