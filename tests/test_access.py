"""Access tokens and overload, against real servers: only holders of a write token write,
only holders of a read token read, the ingest refuses to start wide open, and under a flood
it answers only 503 with Retry-After, which makes the SDKs retry."""

import collections
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from http_client import post, request, wait_for
from processes import REPO, service_env
from reference import caught_up
from sdk_client import SimulatedSdks
from bench.sdk_shapes import mixed_batch
from test_dashboard import CHROMIUM, chromium, screenshot
from test_read_api import OPENAPI, assert_matches_spec
from app.access import Access, Grant, Tokens, digest
from app.admission import Admission, Busy

WRITE = "w-7f3a9c2e41b84d6f"
OTHER_WRITE = "w-0b1c2d3e4f5a6b7c"
READ = "r-5e8d1a7c3b9f2e64"
NOW = datetime.datetime.now(datetime.timezone.utc)


def files(state_dir):
    return {name: (state_dir / name).read_bytes()
            for name in ("data1", "data1.details") if (state_dir / name).exists()}


def sdk_body():
    return {"batch": mixed_batch(NOW, 10)[0]}


WRITES = [("/event", {"experienceID": 1}), ("/ingest-api", {"experienceID": 1}),
          ("/batch", {"batch": [{"experienceID": 1}]}), ("/batch?apiVersion=2", None)]
# Which routes need a token, and which are open, as the API's document declares them
# (`security`): the tests below hold the server to it, so the two cannot drift apart.
GUARDED = {(method, path) for path, operations in OPENAPI["paths"].items()
           for method, operation in operations.items() if "security" in operation}
# Each guarded read as (the document's path, a path to ask).
READS = [(path, path.replace("{experience_id}", "1")) for method, path in sorted(GUARDED)
         if method == "get"] + [("/counts", "/counts?from=2026-01-01T00:00Z&to=2026-01-01T01:00Z")]
OPEN_READS = sorted(path for path, operations in OPENAPI["paths"].items()
                    if "get" in operations and ("get", path) not in GUARDED)


@pytest.fixture
def guarded(procs, state_dir):
    return procs.ingest(state_dir, write_tokens=f"{WRITE},{OTHER_WRITE}", read_tokens=READ)


@pytest.mark.parametrize("headers", [{}, {"Judo-Access-Token": "w-not-a-real-token-1"},
                                     {"Judo-Access-Token": ""}, {"Authorization": "Bearer "},
                                     {"Authorization": f"Basic {WRITE}"},
                                     {"Judo-Access-Token": READ}],
                         ids=["none", "wrong", "empty", "empty bearer", "not bearer", "a read token"])
def test_a_write_without_a_write_token_is_a_401_and_changes_nothing(guarded, state_dir, headers):
    assert {("post", path.split("?")[0]) for path, _ in WRITES} == {
        (method, path) for method, path in GUARDED if method != "get"}
    assert post(guarded.port, {"experienceID": 5})[0] == 401  # (files exist from the start)
    before = files(state_dir)
    for path, body in WRITES:
        status, answer = post(guarded.port, body or sdk_body(), path=path, headers=headers)
        assert status == 401, (path, answer)
        assert "Judo-Access-Token" in answer["error"] and "Bearer" in answer["error"]
        assert_matches_spec(path.split("?")[0], "POST", status, answer)
    assert files(state_dir) == before


@pytest.mark.parametrize("header", ["Judo-Access-Token", "Authorization"])
def test_a_write_token_in_either_header_is_counted(guarded, state_dir, header):
    for token in (WRITE, OTHER_WRITE):
        value = token if header == "Judo-Access-Token" else f"Bearer {token}"
        for path, body in WRITES:
            status, answer = post(guarded.port, body or sdk_body(), path=path,
                                  headers={header: value})
            assert status == 202, (path, answer)
    assert (state_dir / "data1").read_bytes().count(b"1 ") >= 6


def test_reads_need_a_read_token_and_health_stays_open(guarded):
    assert {"/experiences/{experience_id}/flow", "/projects"} <= {path for path, _ in READS}
    for documented, path in READS:
        status, answer = request(guarded.port, "GET", path)
        assert status == 401 and "read token" in answer["error"], path
        assert_matches_spec(documented, "GET", status, answer)
        status, _ = request(guarded.port, "GET", path, headers={"Judo-Access-Token": WRITE})
        assert status == 401, path  # a write token is not a read token
        status, _ = request(guarded.port, "GET", path,
                            headers={"Authorization": f"Bearer {READ}"})
        # 503: no worker has counted yet; 403: only an admin token lists the projects.
        assert status in ((403,) if path == "/projects" else (200, 503)), path
    assert OPEN_READS == ["/", "/healthz", "/healthz/ingest", "/openapi.json"]
    for path in ("/healthz/ingest", "/openapi.json"):
        assert request(guarded.port, "GET", path)[0] == 200
    assert request(guarded.port, "GET", "/healthz")[0] == 503  # open: it names the worker
    status, _ = request(guarded.port, "GET", "/")
    assert status == 200  # the page itself holds no data; it asks for the token


def test_a_revoked_token_stops_working_without_a_restart(procs, state_dir, tmp_path):
    tokens = tmp_path / "write-tokens"
    tokens.write_text(f"# the apps' tokens\n{WRITE}\n\n{OTHER_WRITE}\n")
    ingest = procs.ingest(state_dir, write_tokens_file=tokens)
    headers = {"Judo-Access-Token": WRITE}
    assert post(ingest.port, {"experienceID": 1}, headers=headers)[0] == 202
    tokens.write_text(f"{OTHER_WRITE}\n")  # WRITE revoked
    began = time.monotonic()
    wait_for(lambda: post(ingest.port, {"experienceID": 2}, headers=headers)[0] == 401, 5,
             what="the revoked token refused")
    print(f"\nrevoked token refused after {time.monotonic() - began:.2f} s")
    assert post(ingest.port, {"experienceID": 3},
                headers={"Judo-Access-Token": OTHER_WRITE})[0] == 202
    # A file caught half-written keeps the tokens read before; SIGHUP reads it at once.
    tokens.write_text("short\n")

    def noticed():  # a refused write makes the ingest look at the file, and writes nothing
        post(ingest.port, {"experienceID": 9}, headers={"Judo-Access-Token": "not-a-token"})
        return "cannot be used" in ingest.log_path.read_text()

    wait_for(noticed, 5, what="the bad file noticed")
    assert post(ingest.port, {"experienceID": 4},
                headers={"Judo-Access-Token": OTHER_WRITE})[0] == 202
    tokens.write_text(f"{WRITE}\n")
    os.kill(ingest.pid, signal.SIGHUP)
    wait_for(lambda: post(ingest.port, {"experienceID": 5}, headers=headers)[0] == 202, 5,
             what="the token restored")
    # 2s were taken until the revocation was read (within about a second), none after it.
    assert re.fullmatch(rb"1 (2 )*3 4 5 ", (state_dir / "data1").read_bytes())


def test_no_token_is_ever_logged(procs, state_dir, tmp_path):
    ingest = procs.ingest(state_dir, write_tokens=WRITE, read_tokens=READ)
    post(ingest.port, {"experienceID": 1}, headers={"Judo-Access-Token": WRITE})
    post(ingest.port, {"experienceID": 1}, headers={"Judo-Access-Token": WRITE + "x"})
    request(ingest.port, "GET", "/counts", headers={"Authorization": f"Bearer {READ}"})
    ingest.send_signal(signal.SIGTERM)
    ingest.wait(timeout=20)
    text = ingest.log_path.read_text() + "".join(
        path.read_text() for path in (state_dir / "logs").glob("*") if path.is_file())
    assert "access: writes need a token (1: " in text  # named by its hash's first characters
    for token in (WRITE, READ, WRITE[:8], READ[:8]):
        assert token not in text


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "example.org"])
def test_listening_beyond_loopback_without_a_write_token_is_refused(state_dir, host):
    env = service_env(state_dir, host=host, port=1)
    started = subprocess.run([sys.executable, "-m", "app"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=60)
    assert started.returncode == 2
    message = started.stderr.strip().splitlines()[-1]
    assert f"MINI_ANALYTICS_HOST={host} takes events from anyone" in message
    assert "MINI_ANALYTICS_WRITE_TOKENS" in message
    assert not (state_dir / "data1").exists()


def test_a_public_address_without_a_token_ends_the_run_under_supervisord(supervisor):
    sup = supervisor(wait=False, host="0.0.0.0")
    wait_for(lambda: sup.proc.poll() is not None, 30, what="supervisord to end the run")
    reason = (sup.root / "state" / "bad-setup").read_text()
    assert reason.startswith("ingest cannot run (exit status 2") and "WRITE_TOKENS" in reason
    assert sup.log().count("spawned: 'ingest'") == 1  # left stopped, not restarted


def test_the_example_on_loopback_needs_no_token(procs, state_dir):
    ingest = procs.ingest(state_dir)
    assert post(ingest.port, {"experienceID": 1}, path="/ingest-api") == (202, {"accepted": 1})
    assert request(ingest.port, "GET", "/counts")[0] == 200


# --- overload

def test_a_flooding_device_gets_503_with_retry_after_and_the_others_are_served(
        procs, state_dir):
    ingest = procs.ingest(state_dir, write_tokens=WRITE)
    procs.worker(state_dir)
    flood = {"answers": [], "retry_after": set()}
    stop = threading.Event()

    def flooder():
        body = b'{"batch": [' + b", ".join([b'{"experienceID": 99999}'] * 200) + b"]}"
        headers = {"Judo-Access-Token": WRITE, "Judo-Device-ID": "flooding-device"}
        while not stop.is_set():
            status, answer, reply = request(ingest.port, "POST", "/batch", body, headers,
                                            with_headers=True)
            flood["answers"].append(status)
            if status == 503:
                flood["retry_after"].add(reply.get("Retry-After"))

    threads = [threading.Thread(target=flooder, daemon=True) for _ in range(40)]
    with SimulatedSdks(ingest.port, devices=6, token=WRITE, cut_share=0) as sdks:
        for thread in threads:
            thread.start()
        # A flooding device is refused only while others' writes are in progress at the
        # same instant: how often that is depends on how fast their writes are served, so
        # a few refusals are waited for, with a deadline far past what they take.
        wait_for(lambda: flood["answers"].count(503) >= 5, 120, what="the flood refused")
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        sdks.stop_viewing()
        wait_for(sdks.drained, 60, what="the devices' queues to drain")
    assert set(flood["answers"]) <= {202, 503}  # never a 4xx
    assert flood["retry_after"] and all(value and value.isdigit()
                                        for value in flood["retry_after"])
    assert set(sdks.answers) == {"202"}, sdks.answers  # the others: only 2xx
    assert sdks.dropped_for_4xx == []
    final = wait_for(lambda: caught_up(state_dir) and read_counts(state_dir), 30,
                     what="the worker")
    counted = {int(key): value for key, value in final.items() if key != "99999"}
    assert counted == dict(sdks.viewed)
    print(f"\nflood: {flood['answers'].count(202)} accepted, {flood['answers'].count(503)} "
          f"refused with Retry-After {sorted(flood['retry_after'])}; devices "
          f"{dict(sdks.answers)}")


def read_counts(state_dir):
    return json.loads((state_dir / "data2").read_bytes())["counts"]


class FakeLog:
    def __init__(self):
        self.trouble = None

    def problem(self):
        return self.trouble


def test_admission_refuses_with_retry_after_when_behind_or_the_log_cannot_write():
    log = FakeLog()
    admission = Admission(log, threads=16)
    place = admission.take({"REMOTE_ADDR": "10.0.0.1"}, None)
    admission.release(place)
    admission.waiting = lambda: 129
    with pytest.raises(Busy, match="busy") as busy:
        admission.take({"REMOTE_ADDR": "10.0.0.1"}, None)
    assert busy.value.retry_after == 1
    admission.waiting = lambda: 0
    log.trouble = "only 1024 bytes free on data1's file system"
    admission._problem_at = 0.0
    with pytest.raises(Busy, match="bytes free") as busy:
        admission.take({"REMOTE_ADDR": "10.0.0.1"}, None)
    assert busy.value.retry_after == 10


def test_a_device_alone_may_use_every_thread_but_not_while_others_write():
    admission = Admission(FakeLog(), threads=16)
    alone = [admission.take({"HTTP_JUDO_DEVICE_ID": "a"}, None) for _ in range(16)]
    other = admission.take({"HTTP_JUDO_DEVICE_ID": "b"}, None)  # a newcomer always gets in
    with pytest.raises(Busy, match="this device"):
        admission.take({"HTTP_JUDO_DEVICE_ID": "a"}, None)  # over 16 / 2
    for place in alone[:9]:
        admission.release(place)
    admission.take({"HTTP_JUDO_DEVICE_ID": "a"}, None)  # 7 in flight: under its share of 8
    admission.release(other)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from("abcd"), st.sampled_from("xyz")),
                max_size=80),
       st.sampled_from([2, 4, 16]), st.booleans())
def test_admission_shares_match_the_rule_whatever_the_order(steps, threads, with_projects):
    """Any order of takes and releases, over devices, tokens and projects: a take is refused
    exactly when a device (or token, or project) already has its share, the threads divided
    among those of its kind writing now, itself counted, at least 2."""
    project_of = {"x": "p", "y": "p", "z": "q"}  # tokens x and y write project p
    access = types.SimpleNamespace(write=Tokens("write", [WRITE, OTHER_WRITE]),
                                   projects=object() if with_projects else None)
    admission = Admission(FakeLog(), threads=threads, access=access)
    held = collections.Counter()  # the model: (kind, name) -> writes in progress
    places = []
    for take, device, token in steps:
        if not take:
            if places:
                place = places.pop(0)
                admission.release(place)
                held.subtract(place)
            continue
        keys = [("device", device), ("token", token)]
        if with_projects:
            keys.insert(1, ("project", project_of[token]))

        def share(key):
            active = {other for other, n in held.items() if n and other[0] == key[0]}
            return max(2, threads // len(active | {key}))

        refused = any(held[key] >= share(key) for key in keys)
        grant = Grant(token, project_of[token] if with_projects else "", False)
        try:
            place = admission.take({"HTTP_JUDO_DEVICE_ID": device}, grant)
        except Busy:
            assert refused
            continue
        assert not refused
        places.append(place)
        held.update(place)


def test_tokens_compare_every_digest_and_keep_no_token():
    tokens = Tokens("write", [WRITE, OTHER_WRITE])
    assert tokens.match_digest(digest(WRITE)) and tokens.match_digest(digest(OTHER_WRITE))
    assert tokens.match_digest(digest(WRITE[:-1])) is None and tokens.match_digest(None) is None
    assert WRITE not in repr(vars(tokens))
    access = Access(tokens, Tokens("read"))
    assert access.check("read", {})[0] is None  # no read token: reads open
    assert access.check("write", {"HTTP_AUTHORIZATION": f"bearer {WRITE}"})[0] is None


# --- the dashboard

@pytest.mark.skipif(not CHROMIUM and not os.environ.get("CI"), reason="needs chromium")
def test_the_dashboard_asks_for_a_read_token_and_keeps_it(procs, state_dir, tmp_path):
    ingest = procs.ingest(state_dir, read_tokens=READ)
    procs.worker(state_dir)
    assert post(ingest.port, {"batch": [{"experienceID": 7}] * 3}, path="/batch")[0] == 202
    wait_for(lambda: caught_up(state_dir), what="the worker")
    url = f"http://127.0.0.1:{ingest.port}/"
    refused = chromium(tmp_path, "--dump-dom", url)
    assert re.search(r'<form class="token" id="token-form">', refused)  # shown, not hidden
    assert "a read token is needed" in refused
    assert 'id="total-events">–<' in refused  # no figure shown
    # Nor a claim that there are no events: the chart says why it is empty.
    assert ('<div id="chart"><p class="empty">The counts show once a read token is accepted.'
            '</p></div>') in refused
    screenshot(tmp_path, url, "dashboard-token.png", 900, 500)
    opened = chromium(tmp_path, "--dump-dom", f"{url}#token={READ}")
    assert re.search(r'<form class="token" id="token-form" hidden', opened)
    assert 'id="total-events">3<' in opened
    # Kept in the browser: the next visit, without the link, opens at once.
    again = chromium(tmp_path, "--dump-dom", url)
    assert 'id="total-events">3<' in again
    assert READ not in again  # not left in the address or the page
