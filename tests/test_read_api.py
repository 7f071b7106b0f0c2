"""The read side over HTTP: counts, one count, health, stats, and the OpenAPI document, which
must cover every route and describe every live response."""

import datetime
import io
import json
import re
import time
import urllib.request

import jsonschema
import pytest
import referencing
import referencing.jsonschema

from http_client import post, request, wait_for
from processes import REPO
from reference import caught_up, read_checkpoint, read_series
from app.api import make_app
from app.readside import FileReadSide
from storage.log.writer import EventLog
from storage.views.series_store import SeriesStore

OPENAPI = json.loads((REPO / "app" / "openapi.json").read_text())
# The whole document is one resource, so "#/components/..." references resolve inside it.
BASE = "urn:mini-analytics:openapi"
REGISTRY = referencing.Registry().with_resource(
    BASE, referencing.jsonschema.DRAFT202012.create_resource(OPENAPI)
)


def assert_matches_spec(path, method, status, body):
    """Validate a live response body against the schema the document gives for it."""
    assert str(status) in OPENAPI["paths"][path][method.lower()]["responses"], (path, status)
    pointer = "/".join(
        part.replace("~", "~0").replace("/", "~1")
        for part in ("paths", path, method.lower(), "responses", str(status), "content",
                     "application/json", "schema")
    )
    validator = jsonschema.Draft202012Validator({"$ref": f"{BASE}#/{pointer}"}, registry=REGISTRY)
    validator.validate(body)


@pytest.fixture
def system(procs, state_dir):
    ingest = procs.ingest(state_dir)
    worker = procs.worker(state_dir, interval=0.05)
    return ingest, worker


def settle(state_dir):
    wait_for(lambda: caught_up(state_dir), what="the worker to catch up")


def test_counts_before_any_checkpoint(procs, state_dir):
    ingest = procs.ingest(state_dir)
    status, body = request(ingest.port, "GET", "/counts")
    assert (status, body) == (200, {"counts": {}, "offset": 0, "events": 0, "experiences": 0,
                                    "updated_at": None})
    assert_matches_spec("/counts", "GET", 200, body)
    status, stats = request(ingest.port, "GET", "/stats")
    assert stats["last_checkpoint_at"] is None and stats["checkpoint_age_seconds"] is None
    assert_matches_spec("/stats", "GET", 200, stats)


def test_counts_top_and_single(system, state_dir):
    ingest, _ = system
    batch = [{"experienceID": i} for i in [100, 1, 1, 20, 1, 20, 3]]
    assert post(ingest.port, {"batch": batch}, path="/batch")[0] == 202
    settle(state_dir)

    status, body = request(ingest.port, "GET", "/counts")
    assert status == 200
    assert list(body["counts"].items()) == [("1", 3), ("3", 1), ("20", 2), ("100", 1)]
    assert (body["events"], body["experiences"], body["offset"]) == (7, 4, 18)
    assert_matches_spec("/counts", "GET", 200, body)

    status, top = request(ingest.port, "GET", "/counts?top=2")
    assert list(top["counts"].items()) == [("1", 3), ("20", 2)]
    status, ties = request(ingest.port, "GET", "/counts?top=3")
    assert list(ties["counts"]) == ["1", "20", "3"]  # equal counts: smaller id first
    for bad in ("0", "-1", "abc", "1.5"):
        status, error = request(ingest.port, "GET", f"/counts?top={bad}")
        assert status == 400 and "top" in error["error"]
        assert_matches_spec("/counts", "GET", 400, error)

    assert request(ingest.port, "GET", "/counts/1") == (200, {"experienceID": 1, "count": 3})
    assert request(ingest.port, "GET", "/counts/999") == (200, {"experienceID": 999, "count": 0})
    assert_matches_spec("/counts/{experience_id}", "GET", 200, {"experienceID": 999, "count": 0})
    for bad in ("abc", "-1", "01", "1.0", "9223372036854775808"):
        status, error = request(ingest.port, "GET", f"/counts/{bad}")
        assert status == 400 and "experienceID" in error["error"]
        assert_matches_spec("/counts/{experience_id}", "GET", 400, error)


def test_stats_show_lag_while_the_worker_is_stopped(procs, state_dir):
    ingest = procs.ingest(state_dir)
    worker = procs.worker(state_dir, interval=0.05)
    post(ingest.port, {"experienceID": 5})
    settle(state_dir)
    worker.terminate()
    worker.wait(timeout=10)
    post(ingest.port, {"experienceID": 6})
    post(ingest.port, {"experienceID": 77})
    status, stats = request(ingest.port, "GET", "/stats")
    assert status == 200
    assert stats["data1_bytes"] == 7 and stats["offset"] == 2 and stats["lag_bytes"] == 5
    assert stats["events"] == 1 and stats["experiences"] == 1 and stats["skipped"] == 0
    assert stats["checkpoint_age_seconds"] >= 0
    assert stats["worker"]["state"] == "stopped"
    assert stats["worker"]["reason"].startswith("no worker is running")
    assert stats["waiting_seconds"] >= 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stats["last_checkpoint_at"])
    assert_matches_spec("/stats", "GET", 200, stats)


def test_stats_show_how_long_the_overview_s_oldest_event_has_waited(procs, state_dir):
    """overview_waiting_seconds: null before the overview exists, 0 once it has counted
    every SDK event, and, while no worker counts, how long the oldest one not counted has
    waited, growing."""
    ingest = procs.ingest(state_dir)

    def waiting():
        status, stats = request(ingest.port, "GET", "/stats")
        assert status == 200, stats
        assert_matches_spec("/stats", "GET", 200, stats)
        return stats["overview_waiting_seconds"]

    def send(event_id):
        event = {"id": event_id, "anonymousID": "device-1", "type": "screen",
                 "timestamp": "2026-12-02T17:00:00Z", "properties": {"experienceID": "5"}}
        status, answer = post(ingest.port, {"batch": [event]}, "/batch?apiVersion=2")
        assert status == 202 and answer["stored"] == 1, answer

    assert waiting() is None  # no worker has made the overview yet
    worker = procs.worker(state_dir, interval=0.05)
    send("first")
    wait_for(lambda: waiting() == 0, what="the overview to count the first event")
    worker.terminate()
    worker.wait(timeout=10)
    sent = time.time()
    send("second")
    first = waiting()
    assert 0 <= first <= time.time() - sent + 0.1
    wait_for(lambda: waiting() > first, what="the wait to grow while nobody counts")


def test_healthz(procs, state_dir):
    ingest = procs.ingest(state_dir)
    status, body = request(ingest.port, "GET", "/healthz")
    assert status == 503 and body["worker"]["state"] == "stopped"  # no worker yet
    assert_matches_spec("/healthz", "GET", 503, body)
    procs.worker(state_dir)
    status, body = wait_for(lambda: (r := request(ingest.port, "GET", "/healthz"))[0] == 200 and r,
                            what="a healthy system")
    assert body == {"status": "ok", "worker": {"state": "running", "reason": None}}
    assert_matches_spec("/healthz", "GET", 200, body)
    assert request(ingest.port, "GET", "/healthz/ingest") == (200, {"status": "ok"})
    (state_dir / "data1").rename(state_dir / "data1.moved")  # data1 pulled from under it
    for path in ("/healthz", "/healthz/ingest"):
        status, body = request(ingest.port, "GET", path)
        assert status == 503 and "replaced or removed" in body["error"]
        assert_matches_spec(path, "GET", 503, body)


def test_unreadable_data2_is_a_503_not_a_crash(procs, state_dir):
    ingest = procs.ingest(state_dir)
    (state_dir / "data2").write_bytes(b"\x00" * 64)
    status, body = request(ingest.port, "GET", "/counts")
    assert status == 503 and "data2" in body["error"]
    assert_matches_spec("/counts", "GET", 503, body)


def test_write_responses_match_the_document(procs, state_dir):
    ingest = procs.ingest(state_dir)
    for path in ("/event", "/ingest-api"):
        status, body = post(ingest.port, {"experienceID": 1}, path=path)
        assert_matches_spec(path, "POST", status, body)
        status, body = post(ingest.port, {"experienceID": "x"}, path=path)
        assert_matches_spec(path, "POST", status, body)
        status, body = post(ingest.port, b"x" * 9000, path=path)
        assert_matches_spec(path, "POST", status, body)
    for payload in ({"batch": [{"experienceID": 2}]}, {"batch": []}):
        status, body = post(ingest.port, payload, path="/batch")
        assert_matches_spec("/batch", "POST", status, body)
    status, body = request(ingest.port, "GET", "/openapi.json")
    assert status == 200 and body == OPENAPI


def test_every_route_is_in_the_document(tmp_path):
    log = EventLog(tmp_path / "data1")
    try:
        app = make_app(log, FileReadSide(log, tmp_path, stalled_after=30))
    finally:
        log.close()
    routes = {(re.sub(r"<(\w+)>", r"{\1}", route.rule), route.method.lower()) for route in app.routes}
    documented = {(path, method) for path, item in OPENAPI["paths"].items() for method in item}
    assert routes == documented
    jsonschema.Draft202012Validator.check_schema(OPENAPI["components"]["schemas"]["Stats"])


# --- counts over time ------------------------------------------------------------------------


def series_caught_up(state_dir):
    stored = read_series(state_dir)
    return caught_up(state_dir) and stored is not None and stored[0] == read_checkpoint(state_dir)["offset"]


def utc(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_series_of_events_just_posted(system, state_dir):
    ingest, _ = system
    ids = [1, 1, 2, 1, 3]
    assert post(ingest.port, {"batch": [{"experienceID": i} for i in ids]}, path="/batch")[0] == 202
    wait_for(lambda: series_caught_up(state_dir), what="the series")
    status, body = request(ingest.port, "GET", "/series?step=minute")
    assert status == 200 and body["step"] == "minute" and body["tz"] == "UTC"
    assert len(body["points"]) == 60 and sum(n for _, n in body["points"]) == 5
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:00Z", label) for label, _ in body["points"])
    assert_matches_spec("/series", "GET", 200, body)
    one = request(ingest.port, "GET", "/series?step=hour&experienceID=1")[1]
    assert one["experienceID"] == 1 and sum(n for _, n in one["points"]) == 3
    berlin = request(ingest.port, "GET", "/series?step=day&tz=Europe/Berlin")[1]
    assert len(berlin["points"]) in (30, 31) and sum(n for _, n in berlin["points"]) == 5
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT00:00:00\+0[12]:00", berlin["points"][-1][0])
    status, raw = request(ingest.port, "GET", "/series?step=hour&format=csv")
    lines = raw.decode().splitlines()
    assert status == 200 and lines[0] == "time,count" and len(lines) == 25
    assert sum(int(line.split(",")[1]) for line in lines[1:]) == 5


def test_counts_in_a_range(system, state_dir):
    ingest, _ = system
    assert post(ingest.port, {"batch": [{"experienceID": i} for i in (5, 5, 6)]}, path="/batch")[0] == 202
    wait_for(lambda: series_caught_up(state_dir), what="the series")
    now = datetime.datetime.now(datetime.timezone.utc)
    hour = now.replace(minute=0, second=0, microsecond=0)
    since, until = utc(hour - datetime.timedelta(hours=1)), utc(hour + datetime.timedelta(hours=1))
    status, body = request(ingest.port, "GET", f"/counts?from={since}&to={until}")
    assert status == 200 and body["counts"] == {"5": 2, "6": 1} and body["events"] == 3
    assert (body["from"], body["to"]) == (since, until)
    assert_matches_spec("/counts", "GET", 200, body)
    assert request(ingest.port, "GET", f"/counts?from={since}&to={until}&top=1")[1]["counts"] == {"5": 2}
    minute = now.replace(second=0, microsecond=0)
    by_minutes = request(ingest.port, "GET", f"/counts?from={utc(minute - datetime.timedelta(minutes=5))}"
                                            f"&to={utc(minute + datetime.timedelta(minutes=2))}")[1]
    assert by_minutes["events"] == 3
    earlier = request(ingest.port, "GET", f"/counts?from={utc(hour - datetime.timedelta(hours=5))}"
                                         f"&to={utc(hour - datetime.timedelta(hours=3))}")[1]
    assert earlier["counts"] == {} and earlier["events"] == 0
    status, raw = request(ingest.port, "GET", f"/counts?from={since}&to={until}&format=csv")
    assert raw.decode().splitlines() == ["experienceID,count", "5,2", "6,1"]
    assert request(ingest.port, "GET", "/counts?format=csv")[1].decode().splitlines()[0] == "experienceID,count"
    # A browser saves a CSV answer as a file rather than showing it.
    for path, name in (("/counts?format=csv", "counts"), ("/series?format=csv", "series")):
        with urllib.request.urlopen(f"http://127.0.0.1:{ingest.port}{path}") as answer:
            assert answer.headers["Content-Disposition"] == f'attachment; filename="{name}.csv"'


@pytest.mark.parametrize("query, names", [
    ("/series?step=week", "step"),
    ("/series?from=yesterday", "from"),
    ("/series?from=2026-11-25T10:00:00Z&to=2026-11-25T09:00:00Z", "before"),
    ("/series?tz=Not/AZone", "tz"),
    ("/series?step=minute&from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z", "points"),
    ("/series?experienceID=-4", "experienceID"),
    ("/series?format=xml", "format"),
    ("/counts?from=2026-11-25T10:00:00Z", "from and to"),
    ("/counts?from=2026-11-25T10:00:30Z&to=2026-11-25T11:00:00Z", "whole minutes"),
])
def test_bad_series_queries_are_named(system, state_dir, query, names):
    ingest, _ = system
    post(ingest.port, {"experienceID": 1})
    wait_for(lambda: series_caught_up(state_dir), what="the series")
    status, body = request(ingest.port, "GET", query)
    assert status == 400 and names in body["error"], body
    assert_matches_spec(query.split("?")[0], "GET", 400, body)


def test_minutes_older_than_kept_are_refused(procs, state_dir):
    ingest = procs.ingest(state_dir, minute_retention_hours=1)
    procs.worker(state_dir, minute_retention_hours=1)
    post(ingest.port, {"experienceID": 1})
    wait_for(lambda: series_caught_up(state_dir), what="the series")
    since = utc(datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=3))
    status, body = request(ingest.port, "GET", f"/series?step=minute&from={since}")
    assert status == 400 and "kept" in body["error"] and "step=hour" in body["error"]
    assert request(ingest.port, "GET", f"/series?step=hour&from={since}")[0] == 200


def test_no_series_store_is_a_503(procs, state_dir):
    ingest = procs.ingest(state_dir)  # no worker has run: no series.sqlite3
    status, body = request(ingest.port, "GET", "/series")
    assert status == 503 and "series" in body["error"]
    assert_matches_spec("/series", "GET", 503, body)


def test_counts_over_time_behind_the_counts_are_a_503_not_partial_sums(procs, state_dir):
    # The series store set aside and being counted again (or switched off a while): its sums
    # would be partial, so counts over time would be seen going down.
    ingest = procs.ingest(state_dir)
    worker = procs.worker(state_dir, interval=0.05)
    assert post(ingest.port, {"batch": [{"experienceID": 4}] * 3}, path="/batch")[0] == 202
    wait_for(lambda: series_caught_up(state_dir), what="the series")
    worker.terminate()
    worker.wait(timeout=10)
    assert request(ingest.port, "GET", "/series")[0] == 200
    store = SeriesStore(state_dir, 48 * 3600)
    store.open("")
    store.reset("")  # as a recount from 0 leaves it, before its first commit
    store.close()
    for path in ("/series", "/counts?from=2026-01-01T00:00:00Z&to=2030-01-01T00:00:00Z"):
        status, body = request(ingest.port, "GET", path)
        assert status == 503 and body["error"].startswith(
            "the counts over time are behind the counts (offset 0 of 6)"), body
    procs.worker(state_dir, interval=0.05)  # counts them again
    wait_for(lambda: request(ingest.port, "GET", "/series")[0] == 200, what="the series back")
    status, body = request(ingest.port, "GET", "/series")
    assert sum(count for _, count in body["points"]) == 3


# Each a parameter value that once answered 500 somewhere, and what the 400 must name.
HOSTILE_PARAMETERS = [
    ("tz=America", "tz"),  # a folder of the zone database
    ("tz=Europe", "tz"),
    ("tz=" + "x" * 300, "tz"),  # too long a file name
    ("tz=../../../etc/passwd", "tz"),
    ("from=0001-01-01T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
    ("from=2026-01-01T00:00:00Z&to=0001-01-01T00:00:00Z", "to"),
    ("from=2026-01-01T00:00:00&to=9999-12-31T23:00:00&tz=America/New_York", "to"),
    ("from=0001-01-01T00:00:00&to=2026-01-01T00:00:00&tz=Asia/Tokyo", "from"),
]
READ_PATHS = ["/series", "/experiences", "/experiences/1", "/experiences/1/flow",
              "/experiences/1/revisions", "/counts"]


def test_no_parameter_value_makes_a_read_answer_500(system, state_dir):
    ingest, _ = system
    post(ingest.port, {"experienceID": 1})
    settle(state_dir)
    for path in READ_PATHS:
        for query, names in HOSTILE_PARAMETERS:
            if path == "/counts" and "from" not in query:  # its tz reads a range only
                query += "&from=2026-01-01T00:00:00&to=2026-01-02T00:00:00"
            status, body = request(ingest.port, "GET", f"{path}?{query}")
            assert status == 400 and names in body["error"], (path, query, body)
            documented = path.replace("/experiences/1", "/experiences/{experience_id}")
            assert_matches_spec(documented, "GET", 400, body)
    status, body = request(ingest.port, "GET", "/counts?top=%C2%B2")  # '²': isdigit() says yes
    assert status == 400 and "top" in body["error"]
    # An empty parameter is an absent one, on every route.
    assert request(ingest.port, "GET", "/counts?from=&to=")[1]["counts"] == {"1": 1}
    assert request(ingest.port, "GET", "/counts?format=")[1]["counts"] == {"1": 1}


def comparable(path, status, body):
    """A read's answer, but for what moves between two asks of it: /stats' ages (its keys
    are kept), and a range that ends now (its ends are kept to the hour)."""
    if path == "/stats":
        return status, sorted(body)
    if type(body) is dict:
        body = {**body, **{key: body[key][:13] for key in ("from", "to") if body.get(key)}}
    return status, body


def test_every_query_parameter_given_empty_is_taken_as_absent(system, state_dir):
    """As the document says (info.description): for each query parameter it names, on each
    read, ?name= answers as the same read without it."""
    ingest, _ = system
    post(ingest.port, {"batch": [{"experienceID": 1}, {"experienceID": 2}]})
    settle(state_dir)
    wait_for(lambda: request(ingest.port, "GET", "/experiences")[0] == 200,
             what="the overview's store to answer")
    asked = 0
    for path, operations in OPENAPI["paths"].items():
        for parameter in operations.get("get", {}).get("parameters", []):
            if parameter["in"] != "query":
                continue
            concrete = path.replace("{experience_id}", "1")
            without = comparable(path, *request(ingest.port, "GET", concrete))
            empty = comparable(path, *request(ingest.port, "GET",
                                              f"{concrete}?{parameter['name']}="))
            assert empty == without, (path, parameter["name"])
            asked += 1
    assert asked >= 40
    status, answer = post(ingest.port, {"batch": [{"experienceID": 3}]},
                          path="/batch?apiVersion=")
    assert (status, answer) == (202, {"accepted": 1}), answer


def test_an_unexpected_error_is_a_json_500_and_its_traceback_is_in_the_ingest_log(
        tmp_path, caplog):
    log = EventLog(tmp_path / "data1")
    reads = FileReadSide(log, tmp_path, stalled_after=30)

    def broken():
        raise RuntimeError("a bug")

    reads.stats = broken
    app = make_app(log, reads)
    answer = {}
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/stats", "SERVER_NAME": "test",
               "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
               "wsgi.errors": io.StringIO(), "wsgi.input": io.BytesIO()}
    body = b"".join(app(environ, lambda status, headers, exc_info=None:
                        answer.setdefault("status", status)))
    log.close()
    assert answer["status"].startswith("500") and "error" in json.loads(body)
    [record] = [r for r in caplog.records if r.name == "ingest" and "answered 500" in r.message]
    assert "RuntimeError: a bug" in record.getMessage() and "/stats" in record.getMessage()
