"""The ingest's HTTP surface against a real waitress server: what is accepted, what is refused
(with which status and JSON error), and that a refusal leaves data1 byte-identical."""

import json
import socket

import pytest

from conftest import post, request
from app.api import EVENT_BODY_LIMIT
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
    "float one": b'{"experienceID": 1.0}',
    "exponent": b'{"experienceID": 1e3}',
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
        parse_batch(json.dumps(batch).encode())
    assert parse_batch(b'{"batch": [{"experienceID": 5}, {"experienceID": 5}]}') == [5, 5]


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
        parse_batch(body)
    assert raised.value.status == status


# --- against a real server ---------------------------------------------------------------


@pytest.fixture
def ingest(procs, state_dir):
    return procs.ingest(state_dir)


def data1(state_dir):
    return (state_dir / "data1").read_bytes()


def test_accepts_and_appends(ingest, state_dir):
    assert post(ingest.port, {"experienceID": 1}) == (202, {"accepted": 1})
    assert post(ingest.port, {"experienceID": 100}, path="/ingest-api") == (202, {"accepted": 1})
    assert post(ingest.port, {"experienceID": MAX_ID}) == (202, {"accepted": 1})
    assert data1(state_dir) == b"1 100 %d " % MAX_ID


def test_body_parsed_whatever_the_content_type(ingest, state_dir):
    form = {"Content-Type": "application/x-www-form-urlencoded"}  # what curl -d sends
    status, _ = request(ingest.port, "POST", "/event", b'{"experienceID": 3}', form)
    assert status == 202
    assert data1(state_dir) == b"3 "


@pytest.mark.parametrize("body", BAD_EVENT_BODIES.values(), ids=BAD_EVENT_BODIES.keys())
def test_bad_bodies_get_4xx_and_change_nothing(ingest, state_dir, body):
    post(ingest.port, {"experienceID": 1})
    before = data1(state_dir)
    status, answer = post(ingest.port, body)
    assert status == (400 if len(body) <= EVENT_BODY_LIMIT else 413)
    assert isinstance(answer, dict) and answer["error"]
    assert data1(state_dir) == before


def test_oversized_body_gets_json_413(ingest, state_dir):
    padding = b"x" * EVENT_BODY_LIMIT
    status, answer = post(ingest.port, b'{"experienceID": 1, "pad": "' + padding + b'"}')
    assert status == 413 and "limit" in answer["error"]
    assert data1(state_dir) == b""


def raw_exchange(port, head):
    """Send raw request bytes, return the raw response (the server closes the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    return raw


def test_huge_body_is_refused_before_it_is_sent(ingest, state_dir):
    # Only the headers go out: the 413 must come from the declared length alone.
    head = b"POST /event HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\n\r\n"
    assert raw_exchange(ingest.port, head).startswith(b"HTTP/1.1 413")
    assert data1(state_dir) == b""


def test_unknown_path_and_wrong_method(ingest):
    status, answer = request(ingest.port, "GET", "/nope")
    assert status == 404 and "error" in answer
    raw = raw_exchange(ingest.port, b"GET /event HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405")
    assert b"\r\nAllow: POST" in head
    assert b"application/json" in head and json.loads(body)["error"]


def test_batch_all_or_nothing(ingest, state_dir):
    good = {"batch": [{"experienceID": 1}, {"experienceID": 2}, {"experienceID": 1}]}
    assert post(ingest.port, good, path="/batch") == (202, {"accepted": 3})
    bad = {"batch": [{"experienceID": 4}, {"experienceID": -4}]}
    status, answer = post(ingest.port, bad, path="/batch")
    assert status == 400 and "batch[1]" in answer["error"]
    assert data1(state_dir) == b"1 2 1 "


def test_deeply_nested_batch_gets_400(ingest, state_dir):
    status, answer = post(ingest.port, b"[" * 100_000 + b"]" * 100_000, path="/batch")
    assert status == 400 and "deeply" in answer["error"]
    assert data1(state_dir) == b""
