"""The ingest's HTTP surface against a real waitress server: what is accepted, what is refused
(with which status and JSON error), and that a refusal leaves data1 byte-identical."""

import collections
import http.client
import json
import logging
import socket
import threading

import pytest

from http_client import post, request, wait_for
from ledger import Posters
from app.api import BATCH_BODY_LIMIT, EVENT_BODY_LIMIT
from storage import process
from test_validate import BAD_EVENT_BODIES, MAX_ID



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


@pytest.mark.parametrize("megabytes", [3, 50])
def test_a_body_far_over_the_limit_gets_a_json_413_before_it_is_read(ingest, state_dir, megabytes):
    # The headers only, as a client that sends "Expect: 100-continue" (curl does for large
    # bodies) would: were the server to wait for the body, no answer could come, and
    # raw_exchange would time out.
    head = b"POST /batch HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (megabytes << 20)
    raw = raw_exchange(ingest.port, head)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert b"Content-Type: application/json" in head
    assert "exceeds" in json.loads(body)["error"]
    assert body.endswith(b"\n")
    assert data1(state_dir) == b""


def send_ignoring_reset(sock, data):
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def test_a_chunked_body_over_the_limit_gets_a_json_413(ingest, state_dir):
    chunk = b" " * 65536
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(48))  # 3 MiB
    head = b"POST /batch HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    with socket.create_connection(("127.0.0.1", ingest.port), timeout=10) as sock:
        # The server answers once 2 MiB have come and closes without reading the rest, so
        # the rest of the send may fail: the answer is read alongside.
        sender = threading.Thread(target=send_ignoring_reset, args=(sock, head + chunks))
        sender.start()
        raw = b""
        try:
            while chunk := sock.recv(65536):
                raw += chunk
        except ConnectionResetError:
            pass  # after the answer: the server closed with our unread bytes still coming
        sender.join()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and "error" in json.loads(body)
    assert data1(state_dir) == b""


def test_answers_end_with_a_newline(ingest):
    # So that on a terminal, curl leaves the shell's prompt on a line of its own.
    for method, path, body in (("POST", "/event", b'{"experienceID": 1}'), ("GET", "/stats", None),
                               ("GET", "/nope", None), ("POST", "/event", b"{")):
        conn = http.client.HTTPConnection("127.0.0.1", ingest.port, timeout=10)
        conn.request(method, path, body=body)
        assert conn.getresponse().read().endswith(b"}\n"), (method, path)
        conn.close()


def test_pipelined_requests_are_answered_in_order(ingest, state_dir):
    """Several requests sent at once on one connection (HTTP pipelining): each write's answer
    waits for its sync (app/__main__.py's Channel), and still every answer comes, in order."""
    requests = b""
    for experience in (101, 102, 103):
        body = b'{"experienceID": %d}' % experience
        requests += (b"POST /event HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
    requests += b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n"
    with socket.create_connection(("127.0.0.1", ingest.port), timeout=10) as connection:
        connection.sendall(requests)
        answers = b""
        while answers.count(b"HTTP/1.1 ") < 4:
            chunk = connection.recv(65536)
            assert chunk, f"the connection closed after {answers!r}"
            answers += chunk
    statuses = [line.split(b" ")[1] for line in answers.split(b"\n")
                if line.startswith(b"HTTP/1.1 ")]
    assert statuses == [b"202", b"202", b"202", b"404"]
    assert data1(state_dir) == b"101 102 103 "


def test_a_log_line_names_its_program_where_two_share_a_logger(monkeypatch):
    """In cluster mode supervisord runs worker-1 and worker-2, both logging as "worker"."""
    record = logging.LogRecord("worker", logging.INFO, __file__, 1, "partition p5: counted",
                               None, None)
    monkeypatch.setenv("SUPERVISOR_GROUP_NAME", "worker")
    monkeypatch.setenv("SUPERVISOR_PROCESS_NAME", "worker-2")
    assert " worker[worker-2] INFO partition p5: counted" in process.LogFormatter().format(record)
    monkeypatch.setenv("SUPERVISOR_PROCESS_NAME", "worker")  # one machine: alone in its group
    assert " worker INFO partition p5: counted" in process.LogFormatter().format(record)


def test_unknown_path_and_wrong_method(ingest):
    status, answer = request(ingest.port, "GET", "/nope")
    assert status == 404 and "error" in answer
    raw = raw_exchange(ingest.port, b"GET /event HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405")
    assert b"\r\nAllow: POST" in head
    assert b"application/json" in head
    assert json.loads(body)["error"] == "GET is not allowed on /event; it takes POST"
    status, answer = post(ingest.port, {"batch": {"experienceID": 1}}, path="/batch")
    assert status == 400 and answer["error"].startswith("batch must be an array of events")


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


def test_many_concurrent_posters_each_acked_event_is_in_data1_once(procs, state_dir):
    ingest = procs.ingest(state_dir)
    with Posters(ingest.port, threads=24) as posters:
        wait_for(lambda: len(posters.acked) >= 3000, timeout=60, what="3000 acknowledged events")
    written = collections.Counter(int(token) for token in (state_dir / "data1").read_bytes().split())
    assert all(written[i] == 1 for i in posters.acked)
    assert set(written) <= posters.sent
    assert not posters.unknown and not posters.refused


def test_batch_limits_over_http(procs, state_dir):
    ingest = procs.ingest(state_dir)
    too_many = {"batch": [{"experienceID": 1}] * 10_001}
    status, answer = post(ingest.port, too_many, path="/batch")
    assert status == 413 and "10000" in answer["error"]
    padded = {"batch": [{"experienceID": 1, "pad": "x" * BATCH_BODY_LIMIT}]}
    assert post(ingest.port, padded, path="/batch")[0] == 413
    assert post(ingest.port, {"batch": []}, path="/batch")[0] == 400
    full = {"batch": [{"experienceID": i} for i in range(10_000)]}
    assert post(ingest.port, full, path="/batch") == (202, {"accepted": 10_000})
    assert (state_dir / "data1").read_bytes().split() == [b"%d" % i for i in range(10_000)]


def test_a_batch_is_one_contiguous_write(procs, state_dir):
    """Batches posted concurrently never interleave: each lands as one contiguous run."""
    ingest = procs.ingest(state_dir)

    def poster(base):
        batch = {"batch": [{"experienceID": base + i} for i in range(500)]}
        for _ in range(5):
            assert post(ingest.port, batch, path="/batch")[0] == 202

    threads = [threading.Thread(target=poster, args=(k * 1000,)) for k in range(1, 7)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tokens = [int(t) for t in (state_dir / "data1").read_bytes().split()]
    assert len(tokens) == 6 * 5 * 500
    for start in range(0, len(tokens), 500):
        run = tokens[start : start + 500]
        assert run == list(range(run[0], run[0] + 500))
