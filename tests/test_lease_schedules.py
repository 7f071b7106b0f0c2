"""The workers' leases and shares (storage/stream/leases.py, worker/stream_shares.py), the real
code on an in-memory bucket and a simulated clock: whatever the schedule of starts, stops,
kills, pauses, long passes, cut links and outages, once it calms down every partition is
counted by exactly one live worker, the shares are fair, and no worker sits idle while
another counts more than its share. tests/test_cluster.py and tests/test_partitions.py run the same code on
real servers, in real time, a few schedules each; this tries many, in simulated minutes.

The bucket keeps JetStream's compare-and-set rules (a write names the revision it replaces,
0 for a key never written; a delete leaves a tombstone with a revision of its own); the
checkpoint's fence is modelled as the worker that last took the partition: an older owner's
commit is refused at the end of its pass, as StreamCheckpointStore refuses it (Fenced).
"""

import asyncio
import dataclasses
import random
import types

import nats.errors
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from storage.stream.leases import Leases
from storage.stream.link import UNAVAILABLE
from storage.stream.names import MEMBER_KEY_PREFIX, kv_subject
from worker import stream_shares
from worker.stream_shares import Shares

PARTITIONS = [f"p{n}" for n in range(1, 9)]
TAKEOVER = 15.0
INTERVAL = 5.0
TICK = 0.25  # the simulation's step, in seconds


@dataclasses.dataclass
class Entry:
    key: str
    revision: int
    value: bytes


class Bucket:
    """The checkpoint bucket's key-value rules, in memory: each key's last revision and value
    (None once deleted: a tombstone)."""

    def __init__(self):
        self.sequence = 0
        self.keys = {}

    async def get(self, key):
        revision, value = self.keys.get(key, (0, None))
        if value is None:
            raise KeyNotFoundError(entry=Entry(key, revision, b"") if revision else None)
        return Entry(key, revision, value)

    def _write(self, key, value, last):
        if self.keys.get(key, (0, None))[0] != last:
            raise KeyWrongLastSequenceError()
        self.sequence += 1
        self.keys[key] = (self.sequence, value)
        return self.sequence

    async def update(self, key, value, last):
        return self._write(key, value, last)

    async def delete(self, key, last):
        self._write(key, None, last)

    async def stream_info(self, stream, subjects_filter):
        prefix = MEMBER_KEY_PREFIX
        subjects = {kv_subject(key): 1 for key in self.keys if key.startswith(prefix)}
        return types.SimpleNamespace(state=types.SimpleNamespace(subjects=subjects))


class Link:
    """storage/stream/link.Link's call(), on the in-memory bucket; unanswered while `cut`."""

    def __init__(self, bucket, loop):
        self.js = bucket  # Leases reads members through js.stream_info
        self.loop = loop
        self.cut = False

    def call(self, coroutine, timeout):
        if self.cut:
            coroutine.close()
            raise nats.errors.TimeoutError()
        return self.loop.run_until_complete(coroutine)


class Worker:
    """One worker process as worker/stream_runner.StreamWorker drives its shares: passes that
    renew the leases as they read (_keep_leases), drop what was lost after each, and an
    upkeep between passes and while waiting; adopt() and drop() only record, and a commit is
    refused once another worker has taken the partition since."""

    def __init__(self, name, sim):
        self.name, self.sim = name, sim
        self.link = Link(sim.bucket, sim.loop)
        self.leases = Leases(self.link, name, f"worker@{name}", TAKEOVER, clock=sim.clock)
        self.leases._bucket = sim.bucket
        self.partitions = {}
        self.shares = Shares(self.leases, PARTITIONS, self)
        self.pass_ends = None  # while in a pass: when it ends
        self.next_pass = sim.now
        self.paused_until = 0.0

    def adopt(self, name, how=""):
        self.sim.fence[name] = self.name  # taking commits the checkpoint: the fence
        self.partitions[name] = True

    def drop(self, name, why, level=None):
        self.partitions.pop(name, None)

    def step(self, pass_seconds, rng):
        """What the worker does in one tick of the simulation; a pass it begins lasts
        pass_seconds(rng)."""
        now = self.sim.now
        if now < self.paused_until:
            return
        if self.pass_ends is None and now >= self.next_pass:
            # A pass reads only what the worker counts: with nothing, it ends at once.
            self.pass_ends = now + (pass_seconds(rng) if self.partitions else 0.0)
            self.next_pass = now + INTERVAL
        if self.pass_ends is not None:
            if self.partitions:
                self.shares.renew()  # a long read keeps its leases too
            if now >= self.pass_ends:
                self.end_pass()
        else:
            self.shares.upkeep()

    def end_pass(self):
        for name in list(self.partitions):
            if self.sim.fence.get(name) != self.name:
                self.drop(name, "FENCED")
                self.leases.forget(name)
        self.shares.drop_lost()
        self.pass_ends = None
        if self.next_pass <= self.sim.now:  # a pass longer than the interval: at once
            self.shares.upkeep()

    def stop(self):
        """A clean stop (StreamWorker.close): its leases released and its sign of life
        deleted, or left to lapse if the cluster does not answer."""
        try:
            self.leases.leave()
        except UNAVAILABLE:
            pass


class Simulation:
    """Workers on one bucket and one clock; a context manager, which closes its event loop."""

    def __init__(self, monkeypatch):
        self.now = 1000.0
        self.bucket = Bucket()
        self.loop = asyncio.new_event_loop()
        self.fence = {}
        self.workers = {}
        monkeypatch.setattr(stream_shares, "time", types.SimpleNamespace(
            monotonic=self.clock))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.loop.close()

    def clock(self):
        return self.now

    def run(self, seconds, pass_seconds, rng):
        for _ in range(int(seconds / TICK)):
            self.now += TICK
            for worker in list(self.workers.values()):
                worker.step(pass_seconds, rng)

    def counted_by(self):
        counters = {}
        for worker in self.workers.values():
            for name in worker.partitions:
                counters.setdefault(name, []).append(worker.name)
        return counters


def assert_settled(sim):
    counters = sim.counted_by()
    assert sorted(counters) == PARTITIONS, f"not counted: {set(PARTITIONS) - set(counters)}"
    twice = {name: who for name, who in counters.items() if len(who) > 1}
    assert not twice, f"counted by two workers: {twice}"
    sizes = {worker.name: len(worker.partitions) for worker in sim.workers.values()}
    assert max(sizes.values()) - min(sizes.values()) <= 1, f"unfair shares: {sizes}"
    for worker in sim.workers.values():
        assert set(worker.leases.held) == set(worker.partitions), worker.name


# One disturbance: (what, which worker, when (s), how long (s)); an outage cuts every worker.
disturbances = st.tuples(st.sampled_from(["start", "stop", "kill", "pause", "cut", "outage"]),
                         st.integers(0, 3), st.floats(0, 60), st.floats(0, 40))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(starts=st.lists(st.floats(0, 20), min_size=1, max_size=4),
       events=st.lists(disturbances, max_size=6),
       longest_pass=st.sampled_from([0.0, 2.0, 12.0, 40.0]),
       seed=st.integers(0, 2**32))
def test_shares_settle_after_any_schedule(monkeypatch, starts, events, longest_pass, seed):
    with Simulation(monkeypatch) as sim:
        rng = random.Random(seed)
        pass_seconds = (lambda rng: rng.uniform(0, longest_pass)) if longest_pass else (
            lambda rng: 0.0)
        names = [f"w{n}" for n in range(4)]
        plan = sorted([(start, "start", names[n], 0.0) for n, start in enumerate(starts)] +
                      [(when, what, names[n], length) for what, n, when, length in events])
        for when, what, name, length in plan:
            sim.run(max(0.0, when - (sim.now - 1000.0)), pass_seconds, rng)
            worker = sim.workers.get(name)
            if what == "start" and worker is None:
                sim.workers[name] = Worker(name, sim)
            elif worker is None:
                continue
            elif what == "stop":
                worker.stop()
                del sim.workers[name]
            elif what == "kill":
                del sim.workers[name]  # its leases lapse
            elif what == "pause":
                worker.paused_until = sim.now + length
            elif what in ("cut", "outage"):
                cut = [worker] if what == "cut" else list(sim.workers.values())
                for each in cut:
                    each.link.cut = True
                sim.run(length, pass_seconds, rng)
                for each in cut:
                    each.link.cut = False
        if not sim.workers:
            return
        # Calm: every worker running, answered, unpaused. Within a few take-over times and the
        # longest pass (upkeep waits for a pass to end), the shares settle, and stay settled.
        for worker in sim.workers.values():
            worker.paused_until = 0.0
        sim.run(4 * TAKEOVER + 2 * longest_pass + 2 * INTERVAL, pass_seconds, rng)
        assert_settled(sim)
        sim.run(3 * TAKEOVER, pass_seconds, rng)
        assert_settled(sim)


@pytest.mark.parametrize("pass_seconds", [1.0, INTERVAL + 1.0])
def test_a_worker_starting_after_another_took_everything_gets_its_share(monkeypatch,
                                                                        pass_seconds):
    """Also while the first is catching up, its passes following each other at once (each
    longer than the interval), renewing its leases as it reads: its upkeep between passes
    must still give up what is beyond its share."""
    with Simulation(monkeypatch) as sim:
        rng = random.Random(0)
        sim.workers["w0"] = Worker("w0", sim)
        sim.run(2 * INTERVAL, lambda rng: pass_seconds, rng)
        assert len(sim.workers["w0"].partitions) == len(PARTITIONS)
        sim.workers["w1"] = Worker("w1", sim)
        sim.run(2 * TAKEOVER, lambda rng: pass_seconds, rng)
        assert_settled(sim)


def test_a_worker_back_after_its_leases_lapsed_counts_what_it_counted_before(monkeypatch):
    """Paused past the take-over time, its partitions went to the other; back, it gets the
    same ones again (whose views it still has), and the other keeps its own."""
    with Simulation(monkeypatch) as sim:
        rng = random.Random(0)
        for name in ("w0", "w1"):
            sim.workers[name] = Worker(name, sim)
        sim.run(3 * TAKEOVER, lambda rng: 1.0, rng)
        assert_settled(sim)
        before = {name: set(worker.partitions) for name, worker in sim.workers.items()}
        # The one holding the first partitions: by name alone, the other would keep those.
        paused, other = sorted(sim.workers, key=lambda name: min(before[name]))
        sim.workers[paused].paused_until = sim.now + 2 * TAKEOVER
        sim.run(2 * TAKEOVER, lambda rng: 1.0, rng)
        assert set(sim.workers[other].partitions) == set(PARTITIONS)
        sim.run(3 * TAKEOVER, lambda rng: 1.0, rng)
        assert_settled(sim)
        assert {name: set(worker.partitions) for name, worker in sim.workers.items()} == before


@pytest.fixture(autouse=True)
def _quiet_logs(caplog):
    caplog.set_level("ERROR")
