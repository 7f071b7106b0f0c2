"""worker/stream_shares.py's upkeep: what a worker does with the leases it observes (the
leases themselves faked; tests/test_cluster.py and tests/test_partitions.py run the real
ones)."""

import nats.errors

from storage.checkpoint import Checkpoint
from storage.stream import setup
from storage.stream.leases import View
from worker import stream_runner
from worker.stream_runner import StreamWorker

PARTITIONS = ["p1", "p2", "p3", "p4"]


class FakeLeases:
    takeover = 5.0
    member = "me"

    def __init__(self, members, holders):
        self.members, self.holders = members, holders
        self.held = {p: 1 for p, member in holders.items() if member == "me"}
        self.taking_fails = None  # an exception take() raises, as an unanswered CAS does
        self.lost, self.taken, self.released = [], [], []

    def renew(self):
        lost, self.lost = self.lost, []
        for partition in lost:
            self.held.pop(partition, None)
        return lost

    def observe(self, partitions):
        return View(sorted(self.members), dict(self.holders),
                    {p: {"owner": self.holders[p] or ""} for p in partitions})

    def take(self, partition):
        if self.taking_fails:
            raise self.taking_fails
        self.taken.append(partition)
        self.held[partition] = 1
        self.holders[partition] = "me"
        return True

    def release(self, partition):
        self.released.append(partition)
        self.held.pop(partition, None)
        self.holders[partition] = None

    def forget(self, partition):
        self.held.pop(partition, None)

    def fresh(self):
        return True


class FakePartition:
    subscriptions = []
    checkpoint = Checkpoint()

    def close(self):
        pass


def worker_on(leases):
    """A StreamWorker on fake leases, whose adopt() only records the partition."""
    worker = StreamWorker(None, PARTITIONS, owner="me@test", leases=leases)

    def adopt(name, how=""):
        worker.partitions[name] = FakePartition()

    worker.adopt = adopt
    return worker


def upkeep(worker):
    worker.shares._next_upkeep = 0.0  # due now
    worker.shares.upkeep()


def test_a_starting_worker_looks_once_then_takes_its_share():
    leases = FakeLeases(["me", "other"], {p: None for p in PARTITIONS})
    worker = worker_on(leases)
    upkeep(worker)
    assert leases.taken == []  # the others starting with it may not be seen yet
    upkeep(worker)
    assert leases.taken == ["p1", "p2"] and sorted(worker.partitions) == ["p1", "p2"]


def test_a_take_that_goes_unanswered_is_tried_again_at_the_next_upkeep(caplog):
    leases = FakeLeases(["me"], {p: None for p in PARTITIONS})
    worker = worker_on(leases)
    upkeep(worker)
    leases.taking_fails = nats.errors.TimeoutError()
    upkeep(worker)  # must not end the worker
    assert worker.partitions == {} and "could not take it" in caplog.text
    leases.taking_fails = None
    upkeep(worker)
    assert sorted(worker.partitions) == PARTITIONS


def test_what_is_held_beyond_the_share_is_released_and_dropped():
    leases = FakeLeases(["me", "other"], {p: "me" for p in PARTITIONS})
    worker = worker_on(leases)
    worker.partitions = {p: FakePartition() for p in PARTITIONS}
    upkeep(worker)
    assert leases.released == ["p3", "p4"] and sorted(worker.partitions) == ["p1", "p2"]


def test_a_worker_catching_up_renews_as_it_reads_yet_gives_up_its_excess_between_passes():
    """Its passes follow each other at once, each renewing its leases as it reads: the
    renewals must not use up the upkeep due between two passes (tests/test_lease_schedules.py
    runs this on the real leases)."""
    leases = FakeLeases(["me", "other"], {p: "me" for p in PARTITIONS})
    worker = worker_on(leases)
    worker.partitions = {p: FakePartition() for p in PARTITIONS}
    worker.shares._next_upkeep = 0.0  # an upkeep is due ...
    worker._keep_leases()  # ... and a read renews the leases just before the pass ends
    worker.between_passes()
    assert leases.released == ["p3", "p4"] and sorted(worker.partitions) == ["p1", "p2"]


def test_a_lease_found_taken_over_is_dropped_and_not_taken_back_while_held():
    leases = FakeLeases(["me", "other"], {"p1": "me", "p2": "me", "p3": "other", "p4": "other"})
    worker = worker_on(leases)
    worker.partitions = {"p1": FakePartition(), "p2": FakePartition()}
    leases.lost = ["p2"]
    leases.holders["p2"] = "other"  # the other worker took it while this one was paused
    upkeep(worker)
    assert sorted(worker.partitions) == ["p1"] and leases.taken == []


def test_a_lease_found_taken_over_mid_pass_silences_its_partition_at_once():
    """A renewal during a pass (a long read keeps its leases) that finds a lease taken over
    makes the worker's leases fresh again while the partition is still counted here until
    the pass ends: it must not answer for that partition meanwhile, its store being behind
    the new owner's. The others it still holds, it answers for."""
    leases = FakeLeases(["me", "other"], {"p1": "me", "p2": "me", "p3": "other", "p4": "other"})
    worker = worker_on(leases)
    worker.partitions = {"p1": FakePartition(), "p2": FakePartition()}
    partition = {name: type("Named", (FakePartition,), {"name": name})() for name in PARTITIONS}
    assert worker.answers.answering(partition["p1"]) and worker.answers.answering(partition["p2"])
    leases.lost = ["p2"]
    worker.shares._next_renewal = 0.0  # a renewal due now
    worker._keep_leases()  # as a read does, mid-pass: p2 is lost, and still counted here
    assert "p2" in worker.partitions
    assert worker.answers.answering(partition["p1"])
    assert not worker.answers.answering(partition["p2"])
    assert not worker.answers.answering(partition["p3"])  # never held here


def test_a_starting_worker_waits_for_the_stream_to_answer_rather_than_exit(monkeypatch):
    # A network cut just after connect() (tests/test_partitions.py's flapping schedule once
    # caught a worker there): the stream's identity is asked again until it answers.
    answers = [nats.errors.TimeoutError(), nats.errors.TimeoutError(), "MINI_ANALYTICS"]

    def identity(link):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(stream_runner, "stream_identity", identity)
    worker = StreamWorker(None, PARTITIONS, owner="me@test", leases=FakeLeases({"me"}, {}))
    worker.recover()
    assert worker._stream == "MINI_ANALYTICS" and not answers
    # Past READY_TIMEOUT it gives up, and the worker exits to be started again.
    answers[:] = [nats.errors.TimeoutError()]
    monkeypatch.setattr(setup, "READY_TIMEOUT", -1.0)
    try:
        worker.recover()
    except nats.errors.TimeoutError:
        pass
    else:
        raise AssertionError("a stream that never answers was waited for past the deadline")
