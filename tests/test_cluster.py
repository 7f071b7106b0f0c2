"""Cluster mode on a real 3-node NATS JetStream cluster (cluster/supervisord.conf): the
example through both ingest nodes, fencing, a whole-cluster restart, and the worker's commit
crashing on either side of its compare-and-set."""

import asyncio
import collections
import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import random
import threading
import time
import types
import urllib.parse
from urllib.parse import quote

import nats.errors
import pytest

from cluster_checker import check_partitions
from cluster_harness import PROGRAMS, Cluster
from http_client import free_port, post, request, wait_for
from processes import copy_of_the_code, short_temp_dir
from bench import traffic as generator
from bench.sdk_shapes import mixed_batch
import overview_reference as ref
from test_read_api import assert_matches_spec
from test_overview import slow_overview, store_rows
from test_dashboard import (CHROMIUM, MEASURE, PHONE_WIDTH, CountingProxy, Page, chromium,
                            screenshot)
from storage.checkpoint import merge
from storage.layout import Layout
from storage.stream import setup as stream_setup
from storage.stream.checkpoint_store import history, read_latest
from storage.stream.link import UNAVAILABLE, Link
from storage.log.details import payload_events
from storage.stream import sdk_message
from storage.stream.names import STREAM, partition_subject
from storage.stream.reader import read_subject
from storage.stream.state import stream_state
from storage.stream.writer import partition_of
from storage.views.series_store import HOUR, SeriesReader
from storage.views.sketches import duration_bucket
from worker import overview as overview_module, runner as runner_module
from worker import stream_answers, stream_runner
from worker.overview import OverviewCounter
from storage.views.overview_store import MAX_INSTALLS_PER_USER
from worker.stream_runner import StreamWorker

pytestmark = pytest.mark.cluster


@pytest.fixture
def cluster(request):
    """Start the shipped cluster on a copy of the code. A failing test's folder (state, every
    program's log) is kept, and its path printed, for a look at what went wrong."""
    root = short_temp_dir()
    copy_of_the_code(root)
    started = []

    def start(**settings):
        node = Cluster(root, **settings)
        started.append(node)
        node.start()
        return node

    yield start
    for node in started:
        node.stop()
    if getattr(request.node, "failed_call", False):
        print(f"\nthe failed test's cluster folder is kept: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def link_to(node):
    link = Link(node.servers, "test")
    try:
        yield link
    finally:
        link.close()


def next_hour(iso):
    start = datetime.datetime.fromisoformat(iso)
    return (start + datetime.timedelta(hours=1)).isoformat()


def counted(node, expected, n=1):
    """Poll ingest node n's /counts until they are `expected`."""
    wait_for(lambda: node.counts(n)["counts"] == expected, 30,
             what=f"counts {expected} on ingest-{n}")


def settled(node):
    """Wait until the two workers share the partitions evenly, each running at lag 0. The
    second worker to start may join after the events were counted: a partition between one
    worker's release and the other's take is answered by no one (owner None, not running),
    and /healthz then rightly says a worker is missing."""
    def evenly_shared():
        partitions = request(node.ingest_port(1), "GET", "/stats")[1]["partitions"]
        owners = collections.Counter(entry["worker"]["owner"] for entry in partitions)
        half = len(partitions) // 2
        return (None not in owners and sorted(owners.values()) == [half, len(partitions) - half]
                and all(entry["lag_messages"] == 0 and entry["worker"]["state"] == "running"
                        and entry["worker"]["since"] for entry in partitions))

    wait_for(evenly_shared, 30, what="the partitions shared by both workers, each at lag 0")


def test_the_example_through_both_ingest_nodes(cluster):
    node = cluster(interval=0.2, partition_count=8)
    one, two = node.ingest_port(1), node.ingest_port(2)
    assert post(one, {"experienceID": 1}, "/ingest-api") == (202, {"accepted": 1})
    assert post(two, {"experienceID": 1}, "/ingest-api") == (202, {"accepted": 1})
    assert post(two, {"experienceID": 100}, "/ingest-api") == (202, {"accepted": 1})
    for n in (1, 2):
        counted(node, {"1": 2, "100": 1}, n)
    counts = node.counts(2)
    # Where each partition stands: its stream sequence, and the events counted up to it.
    assert counts["events"] == 3
    assert sum(at["events"] for at in counts["partitions"].values()) == 3
    assert all(at["sequence"] > 0 for at in counts["partitions"].values() if at["events"])

    # The same validation and errors as the single machine, and nothing written.
    status, body = post(one, {"experienceID": "1"})
    assert status == 400 and "experienceID must be an integer" in body["error"]
    status, body = post(two, {"batch": [{"experienceID": 7}, {"experienceID": -1}]}, "/batch")
    assert status == 400 and "batch[1]" in body["error"]

    status, stats = request(one, "GET", "/stats")
    assert status == 200 and stats["mode"] == "cluster"
    assert stats["stream"]["leader"] in ("nats-1", "nats-2", "nats-3")
    assert len(stats["stream"]["replicas"]) == 2
    # Every partition of the stream (8 unless set), each counted by one of the two workers,
    # which share them evenly between themselves.
    assert [entry["partition"] for entry in stats["partitions"]] == [f"p{n}" for n in range(1, 9)]
    assert sum(entry["counted_messages"] for entry in stats["partitions"]) == 3
    settled(node)
    status, health = request(two, "GET", "/healthz")
    assert status == 200, health

    def series_answered():
        # The partitions that moved are counted over time again from the stream by their
        # new owner, which answers "being recounted" (503) until its store is there.
        status, series = request(two, "GET", "/series?step=minute")
        if status == 503 and "being recounted" in series["error"]:
            return None
        assert status == 200, series
        return series

    # Counts over time, summed over both partitions' workers, from either node.
    series = wait_for(series_answered, 30, what="the moved partitions' counts over time")
    assert sum(count for _, count in series["points"]) == 3, series
    status, series = request(one, "GET", "/series?step=hour&experienceID=1")
    assert status == 200 and sum(count for _, count in series["points"]) == 2, series
    hour = series["points"][-1][0]
    status, ranged = request(one, "GET", f"/counts?from={quote(hour)}&to={quote(next_hour(hour))}")
    assert status == 200 and ranged["counts"] == {"1": 2, "100": 1}, ranged
    assert sum(at["events"] for at in ranged["partitions"].values()) == 3

    env = {**node.env, "MINI_ANALYTICS_CLUSTER": ",".join(node.servers)}
    shown = subprocess.run([sys.executable, "-m", "worker", "status"], env=env, cwd=node.root,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "3 events, 2 experiences" in shown.stdout
    assert "p1" in shown.stdout and "p2" in shown.stdout and "worker@" in shown.stdout


def test_a_stopped_worker_s_partitions_move_to_the_other_at_once(cluster):
    """A worker stopped cleanly releases its leases: the other takes its partition at once
    (no take-over wait), and counts it from its checkpoint."""
    node = cluster(interval=0.2, takeover=60)  # far longer than this test may wait
    wait_for(lambda: len(set(node.owners().values()) - {None}) == 2, 30,
             what="a partition each")
    sent = list(range(1, 21))
    for i in sent[:10]:
        assert post(node.ingest_port(1 + i % 2), {"experienceID": i})[0] == 202
    counted(node, {str(i): 1 for i in sent[:10]})
    survivor = node.worker_owner(2)
    node.ctl("stop", "worker:worker-1")
    wait_for(lambda: set(node.owners().values()) == {survivor}, 30,
             what="worker-2 counting both partitions")
    for i in sent[10:]:
        assert post(node.ingest_port(1 + i % 2), {"experienceID": i})[0] == 202
    counted(node, {str(i): 1 for i in sent})


def test_with_no_worker_healthz_names_a_partition_nobody_counts(cluster):
    node = cluster(interval=0.2)
    assert post(node.ingest_port(2), {"experienceID": 5})[0] == 202
    counted(node, {"5": 1})
    node.ctl("stop", "worker:worker-1", "worker:worker-2")
    status, body = request(node.ingest_port(1), "GET", "/healthz")
    assert status == 503 and re.search(r"no worker answers for partition p[12]", body["error"])
    for path, what in (("/series", "the counts over time"),
                       ("/experiences", "the experience overview")):
        status, body = request(node.ingest_port(1), "GET", path)
        assert status == 503 and re.fullmatch(
            f"every partition's worker is needed for {what}: no worker answers for "
            r"partition p[12]", body["error"]), body
    node.ctl("start", "worker:worker-2")
    wait_for(lambda: request(node.ingest_port(1), "GET", "/healthz")[0] == 200, 30,
             what="/healthz ok again, worker-2 counting both partitions")
    assert set(node.owners().values()) == {node.worker_owner(2)}


def test_a_paused_worker_loses_its_partition_and_is_fenced_when_it_wakes(cluster):
    """SIGSTOP a worker for longer than its lease: the other worker takes its partition over
    and counts it; SIGCONT: the woken worker finds its lease gone (or its next commit
    refused) and drops the partition, and the partition's commits stay one chain."""
    node = cluster(interval=0.05)
    paused_owner, survivor = node.worker_owner(1), node.worker_owner(2)
    # One look at who counts what, once each worker answers for a partition (a worker slow to
    # renew falls silent for a moment: asked twice, the answers could differ).
    owners = wait_for(lambda: (found := node.owners()) and set(found.values()) == {
        paused_owner, survivor} and found, 30, what="a partition each")
    [taken] = [name for name, owner in owners.items() if owner == paused_owner]
    sent = []

    def send(count):
        for _ in range(count):
            sent.append(len(sent) + 1)
            assert post(node.ingest_port(1 + len(sent) % 2), {"experienceID": sent[-1]})[0] == 202

    send(10)
    counted(node, {str(i): 1 for i in sent})
    pid = node.pid("worker:worker-1")
    os.kill(pid, signal.SIGSTOP)
    try:
        send(10)  # half of them to the paused worker's partition, waiting to be counted
        wait_for(lambda: node.owners()[taken] == survivor, 30,
                 what=f"worker-2 to take {taken} over")
        counted(node, {str(i): 1 for i in sent})
    finally:
        os.kill(pid, signal.SIGCONT)
    log = node.root / "state" / "cluster" / "worker-1" / "logs" / "worker.log"
    wait_for(lambda: f"partition {taken}: no longer counted here" in log.read_text(), 30,
             what="the woken worker to drop the partition")
    send(10)
    counted(node, {str(i): 1 for i in sent})
    with link_to(node) as link:
        chain = history(link, taken)
    # Every commit replaced the one just before it: never two commits from one revision.
    for (revision, _, _, _), (_, before, _, _) in zip(chain, chain[1:]):
        assert before == revision, chain
    # Once the survivor committed the partition, the woken worker committed it again only
    # after taking it back (when the two share the partitions out again): its first commit
    # then is the checkpoint as it found it, never a pass it had begun before the pause.
    owners = [owner for _, _, owner, _ in chain]
    for i in range(owners.index(survivor) + 1, len(chain)):
        if owners[i] == paused_owner and owners[i - 1] != paused_owner:
            assert chain[i][3] == chain[i - 1][3], chain


def test_the_whole_cluster_killed_at_once_resumes_exactly(cluster):
    node = cluster(interval=0.2)
    sent = []
    for i in range(40):
        assert post(node.ingest_port(1 + i % 2), {"experienceID": i})[0] == 202
        sent.append(i)
    counted(node, {str(i): 1 for i in sent})
    pids = {name: node.pid(name) for name in PROGRAMS}
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: all(node.pid(name) not in (None, pids[name]) for name in PROGRAMS), 60,
             what="every program restarted by supervisord")
    node.wait_ready()
    for i in range(40, 80):
        assert post(node.ingest_port(1 + i % 2), {"experienceID": i})[0] == 202
        sent.append(i)
    for n in (1, 2):
        counted(node, {str(i): 1 for i in sent}, n)
    # The counts over time resumed as exactly: every event in the series, once.
    status, series = request(node.ingest_port(2), "GET", "/series?step=hour")
    hour = series["points"][-1][0]
    status, ranged = request(node.ingest_port(1), "GET",
                             f"/counts?from={quote(series['points'][0][0])}"
                             f"&to={quote(next_hour(hour))}")
    assert status == 200 and ranged["counts"] == {str(i): 1 for i in sent}, ranged


class Crash(Exception):
    """Stands for the process dying: the worker object is dropped with all it held."""


def committed(link):
    """The partitions' committed checkpoints, merged."""
    return merge(checkpoint for checkpoint, _ in read_latest(link, ["p1", "p2"]).values())


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_worker_crashing_around_its_compare_and_set_loses_and_repeats_nothing(cluster, when,
                                                                              tmp_path):
    node = cluster(interval=0.2)
    node.ctl("stop", "worker:worker-1", "worker:worker-2")  # the partitions are this test's
    ids = [11, 12, 12, 13]
    for experience in ids:
        assert post(node.ingest_port(1), {"experienceID": experience})[0] == 202
    with link_to(node) as link:
        # The series store is committed just before the checkpoint: "before" leaves it ahead.
        crashing = StreamWorker(link, ["p1", "p2"], owner="crashing", series_dir=tmp_path)
        crashing.recover()  # takes both partitions: commits their checkpoints as loaded
        for partition in crashing.partitions.values():
            real_commit = partition.store.commit

            def commit(checkpoint, real_commit=real_commit):
                if when == "before":
                    raise Crash
                real_commit(checkpoint)
                raise Crash

            partition.store.commit = commit
        with pytest.raises(Crash):
            crashing.run_pass()
        # The crash came at the first partition with events: its commit, if made, is all.
        assert (committed(link).events > 0) == (when == "after")

        crashing.close()
        restarted = StreamWorker(link, ["p1", "p2"], owner="restarted", series_dir=tmp_path)
        restarted.recover()
        restarted.run_pass()
        assert series_counts(tmp_path) == {11: 1, 12: 2, 13: 1}
        assert committed(link).counts == {11: 1, 12: 2, 13: 1}
        latest = [found for found, _ in read_latest(link, ["p1", "p2"]).values()]
        assert sum(found.messages for found in latest) == 4
        assert {found.owner for found in latest} == {"restarted"}
        # More events: counted once more each, from where the commit left off.
        assert post(node.ingest_port(1), {"experienceID": 11})[0] == 202
        restarted.run_pass()
        assert committed(link).counts == {11: 2, 12: 2, 13: 1}
        assert series_counts(tmp_path) == {11: 2, 12: 2, 13: 1}
        restarted.close()


def test_a_partition_taken_over_is_counted_before_its_views_are_counted_again(
        cluster, tmp_path, monkeypatch):
    """A worker taking over a partition with a long history and no counts over time of its
    own counts the new events at once, and recounts its views a bounded stretch per pass
    after that: the take-over does not wait for a recount of the whole stream."""
    node = cluster(interval=0.2)
    node.ctl("stop", "worker:worker-1", "worker:worker-2")  # the partitions are this test's
    for experience in range(40):
        assert post(node.ingest_port(1), {"experienceID": experience})[0] == 202
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    with link_to(node) as link:
        first = StreamWorker(link, ["p1", "p2"], owner="first", series_dir=first_dir)
        first.recover()
        first.run_pass()
        first.close()
        for experience in range(40, 50):
            assert post(node.ingest_port(1), {"experienceID": experience})[0] == 202
        monkeypatch.setattr(stream_runner, "CATCH_UP_BYTES", 10)  # a few messages a pass
        second = StreamWorker(link, ["p1", "p2"], owner="second", series_dir=second_dir)
        second.recover()
        second.run_pass()
        assert committed(link).counts == {experience: 1 for experience in range(50)}
        assert sum(series_counts(second_dir).values()) < 50
        passes = 1
        while sum(series_counts(second_dir).values()) < 50 and passes < 100:
            second.run_pass()
            passes += 1
        assert series_counts(second_dir) == {experience: 1 for experience in range(50)}
        assert passes > 2, passes
        second.close()


def test_a_partition_taken_over_decides_its_repeats_from_a_window_and_its_views_exactly(
        cluster, tmp_path, monkeypatch):
    """The dedupe at the partition looks back one window: a worker taking a partition over
    decides its repeats from the window before the checkpoint, not from the first message,
    and counts on exactly; its views, counted again from the first message, ask a seen store
    of their own, begun there, and find every repeat too (it is deleted once they caught up).
    The window is made a second here, and the slack for the clocks none."""
    node = cluster(interval=0.2)
    node.ctl("stop", "worker:worker-1", "worker:worker-2")  # the partitions are this test's
    one, two = node.ingest_port(1), node.ingest_port(2)
    now = datetime.datetime.now(datetime.timezone.utc)
    early, expected = mixed_batch(now, 60)
    assert post(one, {"batch": early}, "/batch")[1]["stored"] == 60
    sent = time.monotonic()
    wait_for(lambda: time.monotonic() > sent + 1.5, 5, what="the window to pass")
    late, more = mixed_batch(now, 40, experiences=(8,))
    # The early request's first 20 again, with new events: 20 repeats in a message of 60.
    assert post(two, {"batch": early[:20] + late}, "/batch")[1]["stored"] == 60
    expected[8] += more[8]
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    span = urllib.parse.urlencode({"from": (now - datetime.timedelta(days=1)).isoformat(),
                                   "to": (now + datetime.timedelta(days=1)).isoformat()})

    def screen_views():
        status, body = request(one, "GET", f"/experiences?{span}")
        return status == 200 and sum(item["screen_views"] for item in body["experiences"])

    with link_to(node) as link:
        first = StreamWorker(link, ["p1", "p2"], owner="first", seen_dir=first_dir)
        first.recover()
        first.run_pass()
        assert sum(p.seen.repeats for p in first.partitions.values()) == 20
        first.close()
        assert committed(link).counts == expected
        # The later request's first 10 again, and new events: a worker exact from its
        # checkpoint on finds the 10.
        newer, most = mixed_batch(now, 5, experiences=(9,))
        assert post(one, {"batch": late[:10] + newer}, "/batch")[1]["stored"] == 15
        expected[9] += most[9]
        monkeypatch.setattr(stream_runner, "SLACK_MS", 0)
        monkeypatch.setattr(stream_runner, "widest_window", lambda link: 1)
        monkeypatch.setattr(stream_runner, "CATCH_UP_BYTES", 1)  # the views: a message a pass
        second = StreamWorker(link, ["p1", "p2"], owner="second", seen_dir=second_dir,
                              series_dir=second_dir, overview_dir=second_dir)
        second.recover()
        begun = {name: p.seen.exact_after for name, p in second.partitions.items()}
        assert any(begun.values())
        second.run_pass()
        assert committed(link).counts == expected
        # Its store began after the early request's message: of the repeats, it found only
        # the 10 past the checkpoint, not the 20 before it.
        assert sum(p.seen.repeats for p in second.partitions.values()) == 10
        assert list(second_dir.glob("seen-*-views.sqlite3"))
        second.close()
        # Restarted with its views' seen store lost: that store decides from the first
        # message again, the messages its views have counted included.
        for lost in second_dir.glob("seen-*-views.sqlite3*"):
            lost.unlink()
        third = StreamWorker(link, ["p1", "p2"], owner="third", seen_dir=second_dir,
                             series_dir=second_dir, overview_dir=second_dir)
        third.recover()
        passes = 0
        while (passes == 0 or third.catching_up()) and passes < 50:
            third.run_pass()
            passes += 1
        # A pass to decide again what the views had counted, then a message a pass: at
        # least two. How many more depends on how the requests' installs fell into the
        # partitions (each request is one message or two), so no more is asserted.
        assert passes >= 2, passes
        assert committed(link).counts == expected
        assert series_counts(second_dir) == expected
        assert screen_views() == sum(expected.values())
        assert all(p.views_seen is None for p in third.partitions.values())
        assert not list(second_dir.glob("seen-*-views.sqlite3*"))
        third.close()


def test_the_counts_never_wait_for_the_partitions_overviews(cluster, tmp_path, monkeypatch):
    """A running worker gives each partition's overview its share of an interval a pass, in
    commits sized to fit it, even when all a partition has to count is far less than one
    commit of 50,000 events (every event made to take 2 ms to count, the interval 0.2 s:
    0.1 s a partition): every message is counted in the first pass, each overview moves on
    at most about its share a pass after it, whatever the machine's speed, the passes follow
    each other without a wait (the leases kept between them) until every overview has
    caught up, and the overviews are then row for row those a worker counting them all at
    once makes. An overview behind the counts answers what it has counted; one behind what
    the partition's overview had counted (a new owner's, counting it again) answers no
    read."""
    seconds_per_event, interval = 0.002, 0.2
    node = cluster(interval=0.2)
    node.ctl("stop", "worker:worker-1", "worker:worker-2")  # the partitions are this test's
    end = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    traffic = generator.generate(seed=5, devices=80, experiences=3, days=2,
                                 end=end - datetime.timedelta(minutes=5))
    generator.Sender(f"http://127.0.0.1:{node.ingest_port(1)}").send(traffic.batches)
    span = urllib.parse.urlencode({"from": (end - datetime.timedelta(days=3)).isoformat(),
                                   "to": (end + datetime.timedelta(hours=1)).isoformat()})

    def screen_views(n):
        status, body = request(node.ingest_port(n), "GET", f"/experiences?{span}")
        return (sum(item["screen_views"] for item in body["experiences"]) if status == 200
                else body["error"])

    sliced, at_once = tmp_path / "sliced", tmp_path / "at_once"
    sliced.mkdir()
    at_once.mkdir()
    monkeypatch.setattr(overview_module, "MIN_COMMIT_EVENTS", 5)
    slow_overview(monkeypatch, seconds_per_event)
    monkeypatch.setattr(runner_module, "Signals", lambda: types.SimpleNamespace(stop=False))
    overviewed = collections.Counter()  # SDK events counted by each partition's overview
    count = OverviewCounter.count

    def counting(counter, read, *args):
        overviewed[counter.source_name] += read.events
        return count(counter, read, *args)

    monkeypatch.setattr(OverviewCounter, "count", counting)
    with link_to(node) as link:
        messages = sum(stream_state(link)[3].values())
        worker = StreamWorker(link, ["p1", "p2"], owner="sliced", overview_dir=sliced)
        passes, waits, between, answered, moved, waited = [], [], [], [], [], []

        def run_pass():
            before = {name: p.overview.position for name, p in worker.partitions.items()}
            counted_before = overviewed.copy()
            StreamWorker.run_pass(worker)
            # every message counted after every pass
            assert sum(p.checkpoint.messages for p in worker.partitions.values()) == messages
            passes.append((before, {name: p.overview.position
                                    for name, p in worker.partitions.items()},
                           worker.catching_up()))
            moved.extend((overviewed - counted_before).values())
            answered.append(screen_views(1))
            status, stats = request(node.ingest_port(2), "GET", "/stats")
            assert status == 200, stats
            waited.append(stats["overview_waiting_seconds"])

        def wait(seconds):
            waits.append((len(passes), seconds))
            return True  # asks the loop to stop

        worker.run_pass, worker.wait = run_pass, wait
        worker.between_passes = lambda: between.append(len(passes))
        worker.run(interval)
    # Before a pass's last commit of a partition, at most its share's worth (each event
    # takes 2 ms or more); the last sized by what is left of it. A commit ends with a
    # message: a request's events, up to a batch of them.
    largest = max(len(events) for _, events in traffic.batches)
    most = 2 * (interval / 2 / seconds_per_event + largest) + 5
    assert max(moved) <= most < min(overviewed.values()) / 2, (moved, overviewed)
    assert len(passes) >= 3
    for before, after, _ in passes[:-1]:
        assert any(after[name] > before[name] for name in after)
    assert [behind for _, _, behind in passes] == [True] * (len(passes) - 1) + [False]
    assert between == list(range(1, len(passes)))
    # No wait until every overview had caught up; then what is left of the interval since the
    # last pass began.
    assert [at for at, _ in waits] == [len(passes)]
    assert 0 <= waits[0][1] <= interval
    # answered while behind the counts, never less than before, in the end every view
    assert all(type(views) is int for views in answered), answered
    assert answered == sorted(answered) and answered[0] < answered[-1] == len(traffic.views)
    # /stats: how long the oldest message an overview has not counted has waited, the longest
    # over the partitions: some while any is behind, 0 once all have caught up
    assert all(seconds > 0 for seconds in waited[:-1]) and waited[-1] == 0, waited

    with link_to(node) as link:
        everything = StreamWorker(link, ["p1", "p2"], owner="at-once", overview_dir=at_once)
        everything.recover()  # its stores are empty: behind what the partitions' had counted
        assert "being recounted" in screen_views(2)
        everything.run_pass()  # no interval: all of it in one pass
        assert screen_views(2) == len(traffic.views)
        everything.close()
    for name in ("p1", "p2"):
        assert store_rows(Layout(sliced).partition_overview(name)) == \
            store_rows(Layout(at_once).partition_overview(name))


def test_a_view_ahead_of_its_checkpoint_answers_nothing_until_the_checkpoint_is_committed(
        cluster, tmp_path, monkeypatch):
    """A view is committed just before the checkpoint; were it to answer from there and the
    checkpoint commit then be lost (the worker cut off), the next owner could only answer
    from behind what readers were shown. So a read waits for the checkpoint, and a view
    ahead of it for longer answers no read (503), and its counts once the commit is made."""
    monkeypatch.setattr(stream_answers, "AHEAD_WAIT", 0.2)
    node = cluster(interval=0.2)
    node.ctl("stop", "worker:worker-1", "worker:worker-2")  # the partitions are this test's
    hour = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:00:00Z")
    path = f"/counts?from={quote(hour)}&to={quote(next_hour(hour))}"
    with link_to(node) as link:
        worker = StreamWorker(link, ["p1", "p2"], owner="test", series_dir=tmp_path)
        worker.recover()
        assert post(node.ingest_port(1), {"experienceID": 1})[0] == 202
        worker.run_pass()
        assert request(node.ingest_port(1), "GET", path)[1]["counts"] == {"1": 1}
        for _ in range(4):  # at least one to each partition
            assert post(node.ingest_port(1), {"experienceID": 2})[0] == 202
        held, release = threading.Event(), threading.Event()
        for partition in worker.partitions.values():
            commit = partition.store.commit

            def held_commit(new, commit=commit):
                held.set()
                release.wait(30)
                return commit(new)

            partition.store.commit = held_commit
        passing = threading.Thread(target=worker.run_pass)
        passing.start()
        try:
            assert held.wait(30)  # a series store committed, its checkpoint not yet
            status, body = request(node.ingest_port(2), "GET", path)
            assert status == 503 and "ahead of its checkpoint" in body["error"], body
        finally:
            release.set()
            passing.join(30)
        assert request(node.ingest_port(2), "GET", path)[1]["counts"] == {"1": 1, "2": 4}
        worker.close()


def test_an_overview_store_past_its_checkpoints_mark_answers_when_its_worker_takes_it_back(
        cluster, tmp_path):
    """A worker commits its overview store, then loses the partition before it commits the
    checkpoint (another worker took it: Fenced). The other worker counts the messages, but
    keeps no overview, so the checkpoint's mark stays where the first left it. The first
    takes the partition back with its store past that mark, and no message follows: the
    overview answers every view at once, not 503 "ahead of its checkpoint" until the
    partition's next message (seen in the chaos test: 60 s of 503s on a quiet cluster)."""
    node = cluster(interval=0.2)
    node.ctl("stop", "worker:worker-1", "worker:worker-2")  # the partitions are this test's
    end = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    traffic = generator.generate(seed=5, devices=40, experiences=2, days=1,
                                 end=end - datetime.timedelta(minutes=5))
    half = len(traffic.batches) // 2
    span = urllib.parse.urlencode({"from": (end - datetime.timedelta(days=2)).isoformat(),
                                   "to": (end + datetime.timedelta(hours=1)).isoformat()})

    def screen_views():
        status, body = request(node.ingest_port(1), "GET", f"/experiences?{span}")
        return (sum(item["screen_views"] for item in body["experiences"]) if status == 200
                else body["error"])

    sender = generator.Sender(f"http://127.0.0.1:{node.ingest_port(1)}")
    with link_to(node) as link:
        first = StreamWorker(link, ["p1", "p2"], owner="first", overview_dir=tmp_path)
        first.recover()
        sender.send(traffic.batches[:half])
        first.run_pass()
        marks = {name: p.checkpoint.overview_mark for name, p in first.partitions.items()}
        sender.send(traffic.batches[half:])
        other = StreamWorker(link, ["p1", "p2"], owner="other")  # keeps no overview
        for partition in first.partitions.values():
            commit = partition.store.commit

            def taken_first(new, commit=commit):
                if not other.partitions:
                    other.recover()  # takes both partitions: the first's commits are fenced
                return commit(new)

            partition.store.commit = taken_first
        first.run_pass()  # the overview stores commit; the checkpoints are refused
        assert not first.partitions
        first.close()
        other.run_pass()
        assert {name: p.checkpoint.overview_mark for name, p in other.partitions.items()} == \
            marks
        other.close()
        again = StreamWorker(link, ["p1", "p2"], owner="first", overview_dir=tmp_path)
        again.recover()
        assert screen_views() == len(traffic.views)
        again.run_pass()  # nothing new to read
        assert screen_views() == len(traffic.views)
        again.close()


def series_counts(folder):
    """Per experience, the sum of the partitions' series stores' hour buckets."""
    total = collections.Counter()
    for partition in ("p1", "p2"):
        reader = SeriesReader(folder, Layout(folder).partition_series(partition))
        total.update(reader.counts(HOUR, 0, 2**62))
    return dict(total)


NATS_WORDS = re.compile(r"Error\b|err_code|nats:|APIError|NoResponders")


@pytest.mark.parametrize("survivor", [1, 2, 3])
def test_without_a_quorum_writes_get_503_and_healthz_names_it(cluster, survivor):
    node = cluster(interval=0.2, publish_timeout=1)
    assert post(node.ingest_port(1), {"experienceID": 1})[0] == 202
    counted(node, {"1": 1})
    stopped = [f"nats:nats-{n}" for n in (1, 2, 3) if n != survivor]
    node.ctl("stop", *stopped)  # one node of three: no majority, whichever it is
    status, body = post(node.ingest_port(1), {"experienceID": 2})
    # Refused either way: not acknowledged by a majority, or (when the node was connected to
    # a server just stopped) taken by no server while it reconnects.
    assert status == 503 and ("did not acknowledge" in body["error"]
                              or "not connected to any NATS server" in body["error"]), body
    assert not NATS_WORDS.search(body["error"]), body
    # The leader may answer for a few seconds before it notices it leads no majority; then
    # every read of the checkpoints names the lost majority in the same words, on either
    # node. (The counts over time come from the workers' own stores, and still answer.)
    for n in (1, 2):
        for path in ("/healthz", "/counts", "/stats"):
            status, body = wait_for(
                lambda: (answer := request(node.ingest_port(n), "GET", path))[0] == 503
                and answer, 30, what=f"{path} 503 on ingest-{n}")
            assert body["error"].startswith("no majority"), (path, body)
            assert not NATS_WORDS.search(body["error"]), (path, body)
    node.ctl("start", *stopped)
    node.wait_ready()
    assert post(node.ingest_port(2), {"experienceID": 3})[0] == 202
    # A 503 in cluster mode is "unknown": the leader may have kept the message and, its
    # followers back, had it committed after all. At most once, never twice.
    wait_for(lambda: {"1", "3"} <= set(node.counts(1)["counts"]), 30, what="1 and 3 counted")
    counts = node.counts(1)["counts"]
    assert counts in ({"1": 1, "3": 1}, {"1": 1, "2": 1, "3": 1}), counts


def test_a_stream_set_up_otherwise_is_a_clear_error_and_left_alone(cluster, tmp_path):
    node = cluster()
    env = {**node.env, "MINI_ANALYTICS_CLUSTER": ",".join(node.servers),
           "MINI_ANALYTICS_REPLICAS": "1", "MINI_ANALYTICS_STATE_DIR": str(tmp_path)}
    started = subprocess.run([sys.executable, "-m", "app"], env=env, cwd=node.root,
                             capture_output=True, text=True, timeout=120)
    assert started.returncode == 2, started.stderr
    assert "stream MINI_ANALYTICS exists with other settings" in started.stderr
    assert "replicas is 3, not 1" in started.stderr
    _, stats = request(node.ingest_port(1), "GET", "/stats")
    assert len(stats["stream"]["replicas"]) == 2  # still three copies


@pytest.mark.parametrize("program", ["app", "worker"])
def test_a_program_set_to_another_partition_count_is_refused(cluster, tmp_path, program):
    """The first program to start records the stream's partitions; one set to another count
    (here, more: growing the stream in place) exits with the bad-setup code, naming both
    counts, before it takes or counts any event."""
    node = cluster()  # 2 partitions
    env = {**node.env, "MINI_ANALYTICS_CLUSTER": ",".join(node.servers),
           "MINI_ANALYTICS_PARTITION_COUNT": "4", "MINI_ANALYTICS_STATE_DIR": str(tmp_path),
           "MINI_ANALYTICS_PORT": str(free_port())}
    started = subprocess.run([sys.executable, "-m", program], env=env, cwd=node.root,
                             capture_output=True, text=True, timeout=120)
    assert started.returncode == 2, started.stderr
    assert ("stream MINI_ANALYTICS has 2 partitions (p1 to p2), fixed when it was created, "
            "and this program is set to 4") in started.stderr
    assert "cannot change" in started.stderr


def test_a_shorter_duplicate_window_is_raised_to_the_dedupe_window_never_lowered(cluster):
    node = cluster()
    with link_to(node) as link:
        def window():
            return link.call(link.js.stream_info(STREAM), 30).config.duplicate_window

        # A stream as created before the dedupe window existed.
        info = link.call(link.js.stream_info(STREAM), 30)
        info.config.duplicate_window = 120.0
        link.call(link.js.update_stream(info.config), 30)
        link.call(stream_setup.ensure(link.js, 3, 86400), 30)
        assert window() == 86400.0
        with pytest.raises(stream_setup.SetupMismatch, match="duplicate window is 86400"):
            link.call(stream_setup.ensure(link.js, 3, 3600), 30)
        assert window() == 86400.0


@pytest.mark.skipif(not CHROMIUM and not os.environ.get("CI"), reason="needs chromium")
def test_the_dashboard_in_cluster_mode(cluster, tmp_path):
    node = cluster(interval=0.2)
    for n, experience in ((1, 7), (2, 7), (2, 8)):
        assert post(node.ingest_port(n), {"experienceID": experience})[0] == 202
    counted(node, {"7": 2, "8": 1})
    settled(node)
    url = f"http://127.0.0.1:{node.ingest_port(2)}/"
    page = Page(chromium(tmp_path, "--dump-dom", url))
    assert page.by_id["total-events"] == "3"
    assert page.by_id["lag"] == "up to date"
    assert page.by_id["worker-state"] == "running"
    assert page.by_id["timeline-note"].startswith("3 events")
    assert page.by_id["stream-note"].startswith("stream leader nats-")
    rows = page.tables["partition-rows"]
    assert [[row[0], row[1], row[3]] for row in rows] == [
        ["p1", "running", "none"], ["p2", "running", "none"]]
    # Counted by one of the two workers each, since the moment it took the partition.
    assert {row[2].split(" since ")[0] for row in rows} <= {
        node.worker_owner(1), node.worker_owner(2)}
    assert all(" since " in row[2] for row in rows)
    screenshot(tmp_path, url, "dashboard-cluster.png", 1200, 1000)
    # At a phone's width the partitions table sheds its less needed columns: no sideways
    # scroll, as on one machine.
    with CountingProxy(node.ingest_port(2), inject=MEASURE) as proxy:
        phone = f"http://127.0.0.1:{proxy.server_port}/phone"
        page = Page(chromium(tmp_path, "--dump-dom", "--window-size=1200,900", phone))
        measured = json.loads(page.by_id["measure"])
        assert measured["innerWidth"] == PHONE_WIDTH
        assert measured["scrollWidth"] <= measured["innerWidth"], measured
        screenshot(tmp_path, phone, "dashboard-cluster-phone.png", 500, 844)


def test_counts_of_a_deleted_stream_are_never_continued_on_a_new_one(cluster, caplog):
    node = cluster(interval=0.2)
    node.ctl("stop", "worker:worker-1", "worker:worker-2")  # the partitions are this test's
    for experience in (1, 1):
        assert post(node.ingest_port(1), {"experienceID": experience})[0] == 202
    with link_to(node) as link:
        first = StreamWorker(link, ["p1", "p2"], owner="first")
        first.recover()
        first.run_pass()
        assert committed(link).counts == {1: 2}

        link.call(link.js.delete_stream(STREAM), 30)
        link.call(stream_setup.ensure(link.js, 3, 86400), 30)  # as an ingest node starting would
        wait_for(lambda: post(node.ingest_port(1), {"experienceID": 9})[0] == 202, 30,
                 what="a write to the new stream")

        second = StreamWorker(link, ["p1", "p2"], owner="second")
        second.recover()
        assert "CHECKPOINT REJECTED" in caplog.text and "deleted and created again" in caplog.text
        second.run_pass()
        assert committed(link).counts == {9: 1}
        assert sum(found.messages for found, _ in read_latest(link, ["p1", "p2"]).values()) == 1


def test_sdk_events_and_their_retries_on_either_node_are_counted_once(cluster):
    node = cluster(interval=0.2)
    one, two = node.ingest_port(1), node.ingest_port(2)
    now = datetime.datetime.now(datetime.timezone.utc)
    events, expected = mixed_batch(now, 100)
    status, answer = post(one, {"batch": events}, "/batch?apiVersion=2")
    assert (status, answer["stored"], answer["rejected"]) == (202, 100, [])
    # The same request again, to the other node (the answer to the first was lost): the
    # stream holds its messages already.
    status, answer = post(two, {"batch": events}, "/batch?apiVersion=2")
    assert (status, answer["stored"], len(answer["duplicates"])) == (202, 0, 100)
    # Retries in other requests, to either node: half of them with new events (an SDK whose
    # queue grew while the answer was lost), and a part of them alone. Each is a message of
    # its own; the worker finds the repeats at the partition and counts them once.
    grown, added = mixed_batch(now, 40, experiences=(8,))
    status, answer = post(two, {"batch": events[50:] + grown}, "/batch?apiVersion=2")
    assert (status, answer["stored"], answer["rejected"]) == (202, 90, [])
    status, answer = post(one, {"batch": events[20:30] + events[20:30]}, "/batch?apiVersion=2")
    # Within one request, a repeat is known at once.
    assert (status, answer["stored"], len(answer["duplicates"])) == (202, 10, 10)
    expected[8] += added[8]
    # A new request sent to both nodes at the same moment: stored once.
    fresh, more = mixed_batch(now, 50, experiences=(7,))
    start, answers = threading.Barrier(2), []

    def send(port):
        start.wait()
        answers.append(post(port, {"batch": fresh}, "/batch"))

    threads = [threading.Thread(target=send, args=(port,)) for port in (one, two)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # The same messages from both: the stream stores each once (an atomic batch holding one
    # it already has is refused whole, and its messages go one by one).
    assert sum(answer["stored"] for _, answer in answers) == 50
    expected[7] += more[7]
    for n in (1, 2):
        counted(node, {str(e): c for e, c in expected.items()}, n)
    # The overview counts each screen view once too.
    span = urllib.parse.urlencode({"from": (now - datetime.timedelta(days=1)).isoformat(),
                                   "to": (now + datetime.timedelta(days=1)).isoformat()})

    def screen_views():
        status, body = request(one, "GET", f"/experiences?{span}")
        return status == 200 and sum(item["screen_views"] for item in body["experiences"])

    wait_for(lambda: screen_views() >= sum(expected.values()), 30, what="the overview")
    assert screen_views() == sum(expected.values())
    # Every event's details are kept in the stream, in a message per request and partition.
    with link_to(node) as link:
        async def messages_kept():
            sub = await link.js.subscribe("mini_analytics.events.*", ordered_consumer=True)
            kept = []
            while True:
                try:
                    message = await sub.next_msg(timeout=2)
                except nats.errors.TimeoutError:
                    break  # every stored message read
                _, part = sdk_message.decode(message.data, message.headers)
                kept.append(([item["event"]["id"] for item in
                              payload_events(part.details())[1]],
                             message.headers.get("Nats-Batch-Id"), part.window))
            await sub.unsubscribe()
            return kept

        kept = link.call(messages_kept(), 60)
    assert {i for ids, _, _ in kept for i in ids} == {e["id"] for e in events + grown + fresh}
    assert {window for _, _, window in kept} == {86400}
    # The first request's events: one message, or one per partition stored as one atomic
    # batch (one acknowledgement for them all).
    (ids, batch, _), (more_ids, more_batch, _) = kept[:2]
    if len(ids) < len(events):
        assert batch is not None and batch == more_batch
        ids = ids + more_ids
    assert sorted(ids) == sorted(e["id"] for e in events)


def test_concurrent_sdk_requests_share_atomic_batches_each_answered_for_itself(cluster):
    node = cluster(interval=0.2)
    one = node.ingest_port(1)
    now = datetime.datetime.now(datetime.timezone.utc)
    stored_before, expected = mixed_batch(now, 30, experiences=(5,))
    status, answer = post(one, {"batch": stored_before}, "/batch")
    assert (status, answer["stored"]) == (202, 30)
    requests = {}  # each request's events' ids: which request a stored message came from
    for round_ in range(4):
        # Each round at once: 16 new requests, one new request sent twice (its two messages
        # have the same ids), and an exact retry of a request the stream holds already.
        fresh = [mixed_batch(now, 30, experiences=(10 + number,))
                 for number in range(16)]
        twin, twin_expected = mixed_batch(now, 30, experiences=(40,))
        bodies = [events for events, _ in fresh] + [twin, twin, stored_before]
        start, answers = threading.Barrier(len(bodies)), [None] * len(bodies)

        def send(index):
            start.wait()
            answers[index] = post(one, {"batch": bodies[index]}, "/batch")

        threads = [threading.Thread(target=send, args=(index,)) for index in range(len(bodies))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(status == 202 for status, _ in answers)
        assert [answer["stored"] for _, answer in answers[:16]] == [30] * 16
        assert sorted(answer["stored"] for _, answer in answers[16:18]) == [0, 30]
        assert answers[18][1]["stored"] == 0 and len(answers[18][1]["duplicates"]) == 30
        for number, (events, views) in enumerate(fresh):
            requests[(round_, number)] = {event["id"] for event in events}
            for experience, count in views.items():
                expected[experience] = expected.get(experience, 0) + count
        expected[40] = expected.get(40, 0) + twin_expected[40]
    counted(node, {str(e): c for e, c in expected.items()})
    # Under that load, messages of different requests went out in one atomic batch.
    with link_to(node) as link:
        async def batches():
            sub = await link.js.subscribe("mini_analytics.events.*", ordered_consumer=True)
            of_batch = collections.defaultdict(set)
            while True:
                try:
                    message = await sub.next_msg(timeout=2)
                except nats.errors.TimeoutError:
                    break  # every stored message read
                batch = message.headers.get("Nats-Batch-Id")
                _, part = sdk_message.decode(message.data, message.headers)
                ids = {item["event"]["id"] for item in payload_events(part.details())[1]}
                of_batch[batch] |= {request for request, events in requests.items()
                                    if events & ids}
            await sub.unsubscribe()
            return of_batch

        of_batch = link.call(batches(), 60)
    assert max((len(senders) for batch, senders in of_batch.items() if batch), default=0) > 1


def test_the_same_tokens_guard_every_ingest_node(cluster):
    write, read = "w-cluster-token-0001", "r-cluster-token-0001"
    node = cluster(interval=0.2, write_tokens=write, read_tokens=read)
    for n in (1, 2):
        port = node.ingest_port(n)
        assert post(port, {"experienceID": 3})[0] == 401
        assert post(port, {"experienceID": 3}, headers={"Judo-Access-Token": write})[0] == 202
        assert request(port, "GET", "/stats")[0] == 401
    def counted_with_token():
        status, body = request(node.ingest_port(2), "GET", "/counts",
                               headers={"Authorization": f"Bearer {read}"})
        return status == 200 and body["counts"] == {"3": 2}

    wait_for(counted_with_token, 30, what="both events counted, read with the token")


@pytest.mark.parametrize("store", ["sqlite", "duckdb"])
def test_the_overview_through_both_nodes_is_the_ledger_s(cluster, store):
    """SDK traffic sent to either ingest node at random, with a worker SIGKILLed midway: each
    install's events are in one partition (its sessions whole there), and either node's
    /experiences merges the partitions' overviews into exactly what the ledger gives, from
    either kind of store (MINI_ANALYTICS_OVERVIEW_STORE)."""
    node = cluster(interval=0.1, overview_store=store)
    end = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    traffic = generator.generate(seed=21, devices=150, experiences=5, days=3,
                                 end=end - datetime.timedelta(minutes=5))
    rng = random.Random(4)
    senders = {n: generator.Sender(f"http://127.0.0.1:{node.ingest_port(n)}") for n in (1, 2)}
    half = len(traffic.batches) // 2
    for index, batch in enumerate(traffic.batches):
        if index == half:
            os.kill(node.pid("worker:worker-1"), signal.SIGKILL)
        senders[rng.choice((1, 2))].send([batch])
    installs = {view.anonymous for view in traffic.views}
    assert {partition_of(install, ["p1", "p2"]) for install in installs} == {"p1", "p2"}
    span = {"from": (end - datetime.timedelta(days=4)).isoformat(),
            "to": (end + datetime.timedelta(hours=1)).isoformat()}
    path = f"/experiences?{urllib.parse.urlencode(span)}"

    def screen_views(n):
        status, body = request(node.ingest_port(n), "GET", path)
        return status == 200 and sum(item["screen_views"] for item in body["experiences"])

    start = int(datetime.datetime.fromisoformat(span["from"]).timestamp())
    stop = int(datetime.datetime.fromisoformat(span["to"]).timestamp())
    people = ref.People(traffic.views, traffic.links, MAX_INSTALLS_PER_USER)
    expected = ref.overview(traffic.views, 1800, start, stop, people)
    for n in (1, 2):
        wait_for(lambda: screen_views(n) == len(traffic.views), 60,
                 what=f"ingest-{n}'s overview to count every screen view")
        status, body = request(node.ingest_port(n), "GET", path)
        got = {item["experienceID"]: item for item in body["experiences"]}
        assert set(got) == set(expected)
        for experience, want in expected.items():
            for key, value in want.items():
                if key == "median_session_seconds" and value is not None:
                    value = duration_bucket(value)
                assert got[experience][key] == value, (experience, key, got[experience], want)
        one = min(expected)
        status, single = request(node.ingest_port(n), "GET",
                                 f"/experiences/{one}?step=hour&{urllib.parse.urlencode(span)}")
        assert status == 200 and single["sessions"] == expected[one]["sessions"]
        assert sum(point["screen_views"] for point in single["points"]) == \
            expected[one]["screen_views"]
        for experience in expected:  # each flow: sessions whole in their partition, merged
            status, flow = request(node.ingest_port(n), "GET", f"/experiences/{experience}/"
                                   f"flow?goal=screen-2&top=1000&{urllib.parse.urlencode(span)}")
            assert status == 200, flow
            assert ref.flow_without_names(flow) == ref.flow(
                traffic.views, 1800, start, stop, people, experience, goal="screen-2")


def consumer_servers(link, prefix):
    """{consumer name: the server it lives on} of the stream's consumers named `prefix`..."""
    async def ask():
        return {info.name: info.cluster.leader if info.cluster else None
                for info in await link.js.consumers_info(STREAM)
                if info.name.startswith(prefix)}
    return link.call(ask(), 10)


def kill_the_server_of(node, link, prefix):
    """SIGKILL the server a consumer named `prefix`... lives on, and wait until supervisord
    has it back and it answers healthy (so that a read going on meets the consumer made
    again there). True if there was one to kill."""
    try:
        servers = set(consumer_servers(link, prefix).values()) - {None}
    except UNAVAILABLE:
        return False
    for server in servers:
        pid = node.pid(f"nats:{server}")
        if pid:
            os.kill(pid, signal.SIGKILL)
            n = int(server.split("-")[1])

            def healthy():
                try:
                    return node.pid(f"nats:{server}") not in (None, pid) and node.monitor(
                        n, "/healthz").get("status") == "ok"
                except OSError:
                    return False
            wait_for(healthy, 60, what=f"{server} back and healthy")
            return True
    return False


def test_a_nats_server_killed_mid_read_never_makes_a_message_count_twice(cluster):
    """The server holding a read's consumer is killed in the middle of the read, again and
    again: each read yields every message once, in rising order, and the workers, whose
    consumers' servers are killed while they catch up, count every message once, in their
    counts and their counts over time."""
    node = cluster(interval=0.2, partition_count=1)
    node.ctl("stop", "worker:*")
    total, chunk = 6000, 200
    subject = partition_subject("p1")
    with link_to(node) as link:
        async def publish_all():
            for _ in range(total // chunk):
                await asyncio.gather(*(link.js.publish(subject, b"7 ", stream=STREAM)
                                       for _ in range(chunk)))
        link.call(publish_all(), 120)
        stored = None
        kills, yielded, last = 0, [], 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (stored is None or len(yielded) < stored):
            try:
                for message in read_subject(link, STREAM, subject, last, "test-read"):
                    sequence = message.metadata.sequence.stream
                    assert sequence > last, f"sequence {sequence} after {last}"
                    yielded.append(sequence)
                    last = sequence
                    if kills < 4 and len(yielded) % 1200 == 300 and kill_the_server_of(
                            node, link, "test-read"):
                        kills += 1
                stored = stored or total
            except UNAVAILABLE:
                continue  # the read failed with its server: read on from the last message
        assert kills >= 2 and len(yielded) == len(set(yielded)) == total
    node.ctl("start", "worker:*")
    with link_to(node) as link:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not kill_the_server_of(node, link, "worker-p1"):
            pass  # the first worker's catch-up read: its consumer's server killed once
    counted(node, {"7": total})
    # The kill above may leave the worker unsure of its lease for a few seconds, and a worker
    # unsure of its lease answers no read (503, "no worker answers"): wait for its answer.
    series = wait_for(lambda: (answer := request(node.ingest_port(1), "GET",
                                                 "/series?step=hour"))[0] == 200 and answer[1],
                      60, what="/series answered")
    assert sum(count for _, count in series["points"]) == total
    # /stats asks the stream too: while the killed server rejoins, it may answer 503.
    stats = wait_for(lambda: (answer := request(node.ingest_port(1), "GET", "/stats"))[0]
                     == 200 and answer[1], 60, what="/stats answered")
    assert sum(entry["counted_messages"] for entry in stats["partitions"]) == total


def test_two_projects_through_both_nodes_each_count_their_own_ledger(cluster, tmp_path):
    """Projects in cluster mode: two projects send through either node at random, with the
    same installs, experience ids and event ids (bravo resends all of alpha's, and more), a
    worker SIGKILLed midway. Each project's reader, on either node, gets its own ledger: its
    counts, and an overview that equals the ledger's; an admin reads both."""
    tokens = {"alpha": ("alpha-write-012345678", "alpha-read-0123456789"),
              "bravo": ("bravo-write-012345678", "bravo-read-0123456789")}
    projects_file = tmp_path / "projects.toml"
    projects_file.write_text('admin_tokens = ["admin-token-0123456789"]\n' + "".join(
        f'[projects.{name}]\nwrite_tokens = ["{write}"]\nread_tokens = ["{read}"]\n'
        for name, (write, read) in tokens.items()))
    node = cluster(interval=0.1, projects_file=projects_file)
    end = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    alpha = generator.generate(seed=21, devices=40, experiences=3, days=2,
                               end=end - datetime.timedelta(minutes=5))
    more = generator.generate(seed=22, devices=30, experiences=4, days=2,
                              end=end - datetime.timedelta(minutes=5))
    bravo = generator.Traffic()
    bravo.batches, bravo.views = alpha.batches + more.batches, alpha.views + more.views
    bravo.links = alpha.links + more.links
    rng = random.Random(5)
    sends = [(name, batch) for name, traffic in (("alpha", alpha), ("bravo", bravo))
             for batch in traffic.batches]
    rng.shuffle(sends)
    minimal = {"alpha": [1, 1, 2], "bravo": [1, 7, 7, 7]}
    for index, (name, batch) in enumerate(sends):
        if index == len(sends) // 2:
            os.kill(node.pid("worker:worker-1"), signal.SIGKILL)
        port = node.ingest_port(rng.choice((1, 2)))
        generator.Sender(f"http://127.0.0.1:{port}", token=tokens[name][0]).send([batch])
    for name, ids in minimal.items():
        for experience in ids:
            assert post(node.ingest_port(rng.choice((1, 2))), {"experienceID": experience},
                        headers={"Judo-Access-Token": tokens[name][0]})[0] == 202
    span = {"from": (end - datetime.timedelta(days=3)).isoformat(),
            "to": (end + datetime.timedelta(hours=1)).isoformat()}
    start = int(datetime.datetime.fromisoformat(span["from"]).timestamp())
    stop = int(datetime.datetime.fromisoformat(span["to"]).timestamp())
    for name, traffic in (("alpha", alpha), ("bravo", bravo)):
        read = {"Judo-Access-Token": tokens[name][1]}
        people = ref.People(traffic.views, traffic.links, MAX_INSTALLS_PER_USER)
        expected = ref.overview(traffic.views, 1800, start, stop, people)
        screen_counts = collections.Counter(view.experience for view in traffic.views)
        screen_counts.update(minimal[name])
        for n in (1, 2):
            def complete_figures():
                # The worker killed midway comes back and its partitions move back to it: an
                # answer may be a 503 for a moment even after a complete one (docs/cluster.md).
                status, body = request(node.ingest_port(n), "GET",
                                       f"/experiences?{urllib.parse.urlencode(span)}",
                                       headers=read)
                if status != 200 or sum(item["screen_views"] for item in body["experiences"]
                                        ) != len(traffic.views):
                    return None
                return body["experiences"]

            got = {item["experienceID"]: item for item in wait_for(
                complete_figures, 60, what=f"{name}'s overview on ingest-{n}")}
            assert set(got) == set(expected)
            for experience, want in expected.items():
                for key, value in want.items():
                    if key == "median_session_seconds" and value is not None:
                        value = duration_bucket(value)
                    assert got[experience][key] == value, (name, experience, key)
            want = {str(experience): count for experience, count in screen_counts.items()}

            def counts():
                status, body = request(node.ingest_port(n), "GET", "/counts", headers=read)
                assert status == 200, body
                assert "partitions" not in body  # the stream's positions tell of every project
                return body["counts"]

            wait_for(lambda: counts() == want, 30, what=f"{name}'s counts on ingest-{n}")
            status, stats = request(node.ingest_port(n), "GET", "/stats", headers=read)
            assert status == 200 and stats["project"] == name, stats
            assert (stats["events"], stats["experiences"]) == (sum(want.values()), len(want))
            assert_matches_spec("/stats", "GET", status, stats)
        status, admin = request(node.ingest_port(1), "GET", f"/counts?project={name}",
                                headers={"Judo-Access-Token": "admin-token-0123456789"})
        assert status == 200 and admin["counts"] == want
    with link_to(node) as link:  # each partition's checkpoint, each project's, recounted
        check_partitions(link, node.partitions)
    env = {**node.env, "MINI_ANALYTICS_CLUSTER": ",".join(node.servers)}
    shown = subprocess.run([sys.executable, "-m", "worker", "status"], env=env, cwd=node.root,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert re.search(rf"^project bravo +{sum(want.values()):,} events, {len(want)} "
                     "experiences$", shown.stdout, re.M), shown.stdout
