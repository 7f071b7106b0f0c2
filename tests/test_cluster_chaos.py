"""Cluster mode under chaos, with a ledger: clients post single events and batches to both
ingest nodes while a chaos loop SIGKILLs, in turn, the stream's leader node, a follower node,
an ingest node and a worker, and SIGSTOPs a NATS node for a few seconds (a long GC pause, a
network stall). supervisord restarts whatever was killed, as in production.

Simulated SDKs (tests/sdk_client.py) send screen views beside them, each chunk to either
node: a retry often reaches the other one.

Afterwards: every 202 is counted exactly once, every SDK screen view exactly once, every unknown at most once, every refusal never,
nothing is counted that was never sent; each partition's checkpoint equals a recount of its
messages in the stream; and each partition's commits form one chain of revisions (no two
owners ever committed from the same revision). Meanwhile a watcher checks that no checkpoint
ever goes backwards, and that what users read never does either: /counts, /stats and the
counts over time on both ingest nodes, each count never lower than one either node had
already answered before the request was sent."""

import datetime
import os
import random
import signal
import time
import urllib.parse

import pytest

from cluster_harness import PROGRAMS
from http_client import NO_ANSWER, request, wait_for
from ledger import Posters, check_ledgers
from cluster_checker import Watcher, check_partitions
from sdk_client import SimulatedSdks
from storage.stream.names import SUBJECT_PREFIX
from test_cluster import cluster, link_to  # noqa: F401 - the fixture

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

DURATION = 45
SDK_EXPERIENCES = range(5 * 10**9, 5 * 10**9 + 40)  # apart from every Posters id
PAUSE_SECONDS = 3
ACTIONS = ("leader", "follower", "ingest", "worker", "pause")


def healthy(node):
    """Every program running, the stream led, every replica current, both workers there."""
    states = node.status()
    if any(states.get(name) != "RUNNING" for name in PROGRAMS):
        return False
    try:
        status, stats = request(node.ingest_port(1), "GET", "/stats", timeout=5)
    except NO_ANSWER:
        return False
    return (status == 200 and stats["stream"]["leader"]
            and all(peer["current"] for peer in stats["stream"]["replicas"])
            and all(entry["worker"]["state"] == "running" for entry in stats["partitions"]))


def test_chaos_on_the_cluster_with_a_ledger(cluster):  # noqa: F811
    rng = random.Random()
    node = cluster(interval=0.2)
    began = time.time()
    one, two = node.ingest_port(1), node.ingest_port(2)
    posters = [Posters(one, 3), Posters(two, 3, first_id=10**9),
               Posters(one, 1, batch_size=20, first_id=2 * 10**9),
               Posters(two, 1, batch_size=20, first_id=3 * 10**9)]
    sdks = SimulatedSdks((one, two), devices=4, experiences=SDK_EXPERIENCES)
    done = {action: 0 for action in ACTIONS}

    def hour_of(moment):
        start = datetime.datetime.fromtimestamp(moment - moment % 3600, datetime.timezone.utc)
        return start.strftime("%Y-%m-%dT%H:%M:%SZ")

    hours = f"from={hour_of(began)}&to={hour_of(time.time() + DURATION + 3600)}"
    with Watcher(node, hours) as watcher:
        for poster in posters:
            poster.__enter__()
        sdks.__enter__()
        try:
            deadline = time.monotonic() + DURATION
            turn = 0
            while time.monotonic() < deadline or turn < len(ACTIONS):
                wait_for(lambda: healthy(node), 60, what="the cluster healthy again")
                action = ACTIONS[turn % len(ACTIONS)]
                turn += 1
                leader = wait_for(node.stream_leader, 30, what="a stream leader")
                followers = [f"nats-{n}" for n in (1, 2, 3) if f"nats-{n}" != leader]
                time.sleep(rng.uniform(0.0, 1.0))  # a random moment under load
                if action == "leader":
                    os.kill(node.pid(f"nats:{leader}"), signal.SIGKILL)
                elif action == "follower":
                    os.kill(node.pid(f"nats:{rng.choice(followers)}"), signal.SIGKILL)
                elif action in ("ingest", "worker"):
                    os.kill(node.pid(f"{action}:{action}-{rng.choice((1, 2))}"), signal.SIGKILL)
                else:
                    # The leader, half the time: a paused leader is the hard case (it wakes
                    # up believing it still leads).
                    paused = node.pid(f"nats:{rng.choice((leader, rng.choice(followers)))}")
                    os.kill(paused, signal.SIGSTOP)
                    time.sleep(PAUSE_SECONDS)  # the pause itself is what is tested
                    os.kill(paused, signal.SIGCONT)
                done[action] += 1
            wait_for(lambda: healthy(node), 60, what="the cluster healthy after the chaos")
            acked = [len(poster.acked) for poster in posters]
            wait_for(lambda: all(len(p.acked) > n for p, n in zip(posters, acked)), 30,
                     what="acknowledgements after the chaos")
            sdks.stop_viewing()
            wait_for(sdks.drained, 120, what="the SDKs' queues to drain")
        finally:
            for poster in posters:
                poster.__exit__(None, None, None)
            sdks.__exit__(None, None, None)

    def caught_up():
        status, stats = request(one, "GET", "/stats")
        return status == 200 and stats["lag_messages"] == 0 and stats

    wait_for(caught_up, 60, what="the workers to count every message")
    viewed = {str(experience): count for experience, count in sdks.viewed.items()}
    assert sdks.dropped_for_4xx == []
    for number in (1, 2):
        counts = node.counts(number)["counts"]
        assert {key: n for key, n in counts.items() if int(key) in SDK_EXPERIENCES} == viewed
        counts = {key: n for key, n in counts.items() if int(key) not in SDK_EXPERIENCES}
        check_ledgers(counts, *posters)

    # The counts over time, summed over the partitions' workers, on either node: the same
    # ledger holds, and whole hours around the test hold every event counted.
    def series_counts(port):
        status, body = request(port, "GET", "/counts?" + hours)
        return status == 200 and body["counts"] == {**counts, **viewed} and body

    for port in (one, two):
        ranged = wait_for(lambda: series_counts(port), 60,
                          what="the counts over time to hold every event")
        check_ledgers({key: n for key, n in ranged["counts"].items() if key not in viewed},
                      *posters)
    # The experience overview, merged from both partitions' stores on either node: every
    # screen view once, and each device's views of an experience one session (they are
    # seconds apart), whole in its partition whichever node took them.
    now = datetime.datetime.now(datetime.timezone.utc)
    span = urllib.parse.urlencode({"from": (now - datetime.timedelta(hours=2)).isoformat(),
                                   "to": (now + datetime.timedelta(hours=1)).isoformat()})

    last = {}  # each node's last answer, named if the wait below times out

    def overview(n):
        status, body = last[n] = request(node.ingest_port(n), "GET", f"/experiences?{span}")
        return status == 200 and body["experiences"]

    def differences(n):
        """What the last answer of node `n` held that the SDKs did not view, and the other
        way round: {experience: (answered, viewed)}, or the answer itself if not 200."""
        status, body = last.get(n, (None, None))
        if status != 200:
            return status, body
        answered = {str(item["experienceID"]): item["screen_views"]
                    for item in body["experiences"]}
        return {key: (answered.get(key), viewed.get(key))
                for key in answered.keys() | viewed.keys() if answered.get(key) != viewed.get(key)}

    for n in (1, 2):
        try:
            listed = wait_for(lambda: (got := overview(n)) and {
                str(item["experienceID"]): item["screen_views"] for item in got} == viewed
                and got, 60, what=f"ingest-{n}'s overview to hold every screen view")
        except AssertionError as timed_out:
            raise AssertionError(f"{timed_out}; its last answer differed: {differences(n)}")
        assert all(1 <= item["sessions"] <= 4 for item in listed), listed
    with link_to(node) as link:
        check_partitions(link, node.partitions)
    acked = sum(len(poster.acked) for poster in posters)
    unknown = sum(len(poster.unknown) for poster in posters)
    print(f"\nchaos: {done}; leader changes seen: {len(watcher.leaders) - 1} "
          f"({' -> '.join(watcher.leaders)}); {acked} events acknowledged, {unknown} unknown, "
          f"{sum(len(p.refused) for p in posters)} refused; SDK screen views "
          f"{sum(sdks.viewed.values())}, answers {dict(sdks.answers)}, duplicates answered "
          f"{sdks.duplicates_answered}; {watcher.observations} checkpoint "
          f"observations, {watcher.reads} reads watched; subjects {SUBJECT_PREFIX}p1, p2")
    assert done["leader"] and done["pause"] and watcher.observations and watcher.reads
