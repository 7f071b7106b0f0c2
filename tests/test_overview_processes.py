"""The experience overview through the real programs under supervisord: the traffic generator
(bench/traffic.py) sends while the worker and the ingest are SIGKILLed in turn; afterwards,
and after `python -m worker rebuild`, /experiences and /experiences/<id> answer exactly what
the generator's ledger gives (tests/overview_reference.py). Also the API's answers to bad
queries, and CSV."""

import datetime
import random
import subprocess
import sys
import threading
import urllib.parse

import pytest

import overview_reference as ref
from bench import traffic as generator
from http_client import NO_ANSWER, request, wait_for
from storage.views.overview_store import MAX_INSTALLS_PER_USER
from storage.views.sketches import EXACT_LIMIT, duration_bucket
from test_read_api import assert_matches_spec

pytestmark = pytest.mark.slow

UTC = datetime.timezone.utc
TIMEOUT = 1800
# Past EXACT_LIMIT people, users are an HLL estimate at lg_k 14 (storage/views/sketches.py):
# 0.81 % standard error, so 2 % is about 2.5 of them. The traffic below has about 1,040 users
# in its busiest experience, so its estimate is checked against this bound, not for equality.
ESTIMATE_BOUND = 0.02


def get(port, path, **params):
    return request(port, "GET", f"{path}?{urllib.parse.urlencode(params)}")


def screen_views(port, span):
    try:
        status, body = get(port, "/experiences", **span)
    except NO_ANSWER:  # the ingest just killed, and not yet restarted
        return -1
    return sum(item["screen_views"] for item in body["experiences"]) if status == 200 else -1


def check(port, traffic, span):
    start = int(datetime.datetime.fromisoformat(span["from"]).timestamp())
    end = int(datetime.datetime.fromisoformat(span["to"]).timestamp())
    people = ref.People(traffic.views, traffic.links, MAX_INSTALLS_PER_USER)
    expected = ref.overview(traffic.views, TIMEOUT, start, end, people)
    status, listed = get(port, "/experiences", **span)
    assert status == 200, listed
    assert_matches_spec("/experiences", "GET", status, listed)
    answered = {item["experienceID"]: item for item in listed["experiences"]}
    assert answered.keys() == expected.keys()
    for experience, want in expected.items():
        assert within_bound(figures_of(answered[experience]), want) == comparable(want)
        assert answered[experience]["users_estimated"] == (want["users"] > EXACT_LIMIT)
        status, one = get(port, f"/experiences/{experience}", **span, step="hour")
        assert status == 200, one
        assert_matches_spec("/experiences/{experience_id}", "GET", status, one)
        assert within_bound(figures_of(one), want) == comparable(want)
        assert sum(point["screen_views"] for point in one["points"]) == one["screen_views"]
        status, flow = get(port, f"/experiences/{experience}/flow", **span, goal="screen-3",
                           top=1000)
        assert status == 200, flow
        assert_matches_spec("/experiences/{experience_id}/flow", "GET", status, flow)
        want = ref.flow(traffic.views, TIMEOUT, start, end, people, experience,
                        goal="screen-3")
        assert flow_within_bound(ref.flow_without_names(flow), want) == want
        status, revisions = get(port, f"/experiences/{experience}/revisions", **span,
                                goal="screen-3")
        assert status == 200, revisions
        assert_matches_spec("/experiences/{experience_id}/revisions", "GET", status, revisions)
        assert sum(revision["sessions"] for revision in revisions["revisions"]) == \
            flow["sessions"]
    return {experience: figures_of(item) for experience, item in answered.items()}


def figures_of(document):
    return {key: document[key] for key in ("screen_views", "users", "identified_users",
                                           "sessions",
                                           "avg_session_seconds", "median_session_seconds",
                                           "screens_per_session", "bounce_rate")}


def estimate(answered, exact):
    """`answered`, a count of people, as compared with `exact`: `exact` itself when it is an
    estimate (`exact` past EXACT_LIMIT) within ESTIMATE_BOUND of it; else as answered, so that
    the comparison shows it."""
    if exact > EXACT_LIMIT and abs(answered - exact) <= ESTIMATE_BOUND * exact:
        return exact
    return answered


def within_bound(figures, want):
    """An experience's `figures` with their users as compared with the exact `want`."""
    return {**figures, "users": estimate(figures["users"], want["users"])}


def flow_within_bound(flow, want):
    """A flow with its users, and its goal's users and user rate, as compared with the exact
    `want`. The rate is a ratio of two counts that are estimates when the flow's users are
    (a goal's users are some of them): each within the bound, the ratio within twice it."""
    goal, wanted = flow["goal"], want["goal"]
    rate = goal["user_rate"]
    if want["users"] > EXACT_LIMIT and \
            abs(rate - wanted["user_rate"]) <= 2 * ESTIMATE_BOUND * wanted["user_rate"]:
        rate = wanted["user_rate"]
    return {**flow, "users": estimate(flow["users"], want["users"]),
            "goal": {**goal, "users": estimate(goal["users"], wanted["users"]),
                     "user_rate": rate}}


def comparable(want):
    median = want["median_session_seconds"]
    return {**want, "median_session_seconds": None if median is None else duration_bucket(median)}


@pytest.mark.parametrize("store", ["sqlite", "duckdb"])
def test_the_overview_is_exact_through_kills_and_rebuild(supervisor, store):
    rng = random.Random()
    seed = rng.randrange(10**6)
    print(f"traffic's seed: {seed}")  # shown if the test fails
    end = datetime.datetime.now(UTC).replace(microsecond=0) - datetime.timedelta(minutes=5)
    traffic = generator.generate(seed=seed, devices=1500, experiences=8, days=5, end=end)
    sup = supervisor(interval=0.05, session_timeout=TIMEOUT, overview_store=store)
    sender = generator.Sender(f"http://127.0.0.1:{sup.port}", connections=4)
    failures = []

    def send():
        try:
            sender.send(traffic.batches)
        except Exception as error:  # noqa: BLE001 - asserted below
            failures.append(error)

    thread = threading.Thread(target=send)
    thread.start()
    kills = {"ingest": 0, "worker": 0}
    try:
        while thread.is_alive() or sum(kills.values()) < 4:
            for program, n in sup.kill_in_turn(2, rng, moment=(0.1, 0.6)).items():
                kills[program] += n
    finally:
        thread.join(timeout=300)
    assert not failures, failures
    span = {"from": (end - datetime.timedelta(days=6)).isoformat(),
            "to": (end + datetime.timedelta(hours=2)).isoformat()}
    wait_for(lambda: screen_views(sup.port, span) == len(traffic.views), timeout=120,
             what="the overview to count every screen view")
    before = check(sup.port, traffic, span)
    assert kills["ingest"] >= 2 and kills["worker"] >= 2
    assert sender.refused > 0  # some answers were lost to the kills, and sent again

    assert sup.ctl("stop", "worker").returncode == 0
    rebuild = subprocess.run([sys.executable, "-m", "worker", "rebuild"], cwd=sup.root,
                             env=sup.env, capture_output=True, text=True, timeout=300)
    assert rebuild.returncode == 0, rebuild.stderr
    if store == "duckdb":  # only the worker reads overview.duckdb: none, no overview
        status, _ = get(sup.port, "/experiences", **span)
        assert status == 503
        assert sup.ctl("start", "worker").returncode == 0
        wait_for(lambda: screen_views(sup.port, span) == len(traffic.views), timeout=60,
                 what="the worker to answer the overview's reads again")
    assert check(sup.port, traffic, span) == before
    print(f"\noverview through kills: {len(traffic.views)} screen views, {traffic.retries} "
          f"batches sent twice, {traffic.late} late, kills {kills}, {sender.refused} answers "
          f"to retry, {sender.duplicates} duplicates answered")


def test_bad_queries_are_named_and_csv_is_served(supervisor):
    sup = supervisor(interval=0.05)
    end = datetime.datetime.now(UTC).replace(microsecond=0) - datetime.timedelta(minutes=5)
    traffic = generator.generate(seed=3, devices=20, experiences=3, days=2, end=end)
    generator.Sender(f"http://127.0.0.1:{sup.port}").send(traffic.batches)
    wait_for(lambda: screen_views(sup.port, {}) == len(traffic.views), timeout=60,
             what="the overview to count every screen view")
    for path, params, named in [
        ("/experiences", {"tz": "Mars/Olympus"}, "tz"),
        ("/experiences", {"from": "yesterday"}, "from"),
        ("/experiences", {"from": "2026-11-02T00:00:00Z", "to": "2026-11-01T00:00:00Z"},
         "before"),
        ("/experiences", {"sort": "colour"}, "sort"),
        ("/experiences", {"top": "-1"}, "top"),
        ("/experiences", {"format": "xml"}, "format"),
        ("/experiences/1", {"step": "minute"}, "step"),
        ("/experiences/abc", {}, "experienceID"),
        ("/experiences/1", {"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z",
                            "step": "hour"}, "points"),
        ("/experiences/1/flow", {"top": "0"}, "top"),
        ("/experiences/1/flow", {"tz": "Mars/Olympus"}, "tz"),
        ("/experiences/1/revisions", {"from": "yesterday"}, "from"),
    ]:
        status, body = get(sup.port, path, **params)
        assert status == 400, (path, params, body)
        assert_matches_spec(path.replace("/1", "/{experience_id}", 1).replace(
            "/abc", "/{experience_id}"), "GET", status, body)
        assert named in body["error"], (path, params, body)

    status, body = get(sup.port, "/experiences", sort="sessions", top="2")
    assert status == 200 and len(body["experiences"]) == 2
    sessions = [item["sessions"] for item in body["experiences"]]
    assert sessions == sorted(sessions, reverse=True)
    status, text = get(sup.port, "/experiences", format="csv")
    lines = text.decode().splitlines()
    assert status == 200 and lines[0].startswith(
        "experienceID,name,screen_views,users,users_estimated,identified_users")
    assert len(lines) == 1 + 3
    assert {line.split(",")[4] for line in lines[1:]} == {"false"}  # as JSON spells it
    status, text = get(sup.port, "/experiences/1", format="csv", step="day")
    lines = text.decode().splitlines()
    assert lines[0] == "time,screen_views,users,users_estimated,sessions,avg_session_seconds"
    assert sum(int(line.split(",")[1]) for line in lines[1:]) == sum(
        view.experience == 1 for view in traffic.views)
    status, text = get(sup.port, "/experiences/1/flow", format="csv")
    lines = text.decode().splitlines()
    assert status == 200 and lines[0] == ("id,name,sessions,share,exits,drop_off,"
                                          "median_seconds_on_screen,median_position")
    status, flow = get(sup.port, "/experiences/1/flow")
    assert [line.split(",")[0] for line in lines[1:]] == [s["id"] for s in flow["screens"]]
    status, text = get(sup.port, "/experiences/1/revisions", format="csv", goal="screen-2")
    lines = text.decode().splitlines()
    assert status == 200 and lines[0] == ("revision,first_seen,last_seen,screen_views,sessions,"
                                          "users,users_estimated,median_session_seconds,"
                                          "bounce_rate,"
                                          "goal_sessions,completion_rate")
    assert sum(int(line.split(",")[4]) for line in lines[1:]) == flow["sessions"]
