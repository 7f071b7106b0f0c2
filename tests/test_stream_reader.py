"""The stream reader's invariant, without a cluster: whatever its consumer delivers (a
consumer made again after its server restarted replays from its start sequence, sometimes
more than once; a consumer on a replica behind the stream's leader counts too few messages
pending), read_subject yields each stream sequence once, rising, and every one stored when it
began. The real thing, a NATS server killed mid-read, is in test_cluster.py."""

import asyncio
import datetime
import logging
import types

import nats.errors
import pytest
from nats.js.errors import NotFoundError

from storage.stream import reader as stream_reader
from storage.stream.link import UNAVAILABLE


def message(sequence):
    return types.SimpleNamespace(metadata=types.SimpleNamespace(
        sequence=types.SimpleNamespace(stream=sequence)), data=b"7 ")


class ReplayingConsumer:
    """Delivers `deliveries` (lists of sequences), one per fetch, as a consumer whose server
    restarted between them would."""

    def __init__(self, deliveries):
        self.deliveries = [list(batch) for batch in deliveries]

    def fetch(self, count):
        if not self.deliveries:  # as a fetch that waited FETCH_TIMEOUT for nothing
            raise nats.errors.TimeoutError
        batch = self.deliveries.pop(0)
        if len(batch) > count:  # the rest comes with the next fetch, as from a consumer
            self.deliveries.insert(0, batch[count:])
        return [message(sequence) for sequence in batch[:count]]


@pytest.fixture
def consumer(monkeypatch):
    made = {}

    def use(deliveries, pending, through=0):
        """`pending`: the consumer's count at its start; `through`: the leader's last
        sequence of the subject."""
        made["consumer"] = ReplayingConsumer(deliveries)
        monkeypatch.setattr(stream_reader, "_open",
                            lambda link, stream, subject, name, after, since:
                            (made["consumer"], pending, through))
        monkeypatch.setattr(stream_reader, "_fetch",
                            lambda link, subscription, count: subscription.fetch(count))
        monkeypatch.setattr(stream_reader, "_close", lambda *args: None)

    return use


class Link:
    def call(self, value, timeout):
        return value  # the patched _open and _close give their answers directly


def read(after=0):
    return [m.metadata.sequence.stream
            for m in stream_reader.read_subject(Link(), "S", "s.p1", after, "test")]


def test_a_consumer_that_starts_over_mid_read_yields_each_message_once(consumer, caplog):
    # 100 messages at sequences 11..110 (other subjects' messages between none, for once);
    # the server restarts after 64 and the consumer delivers from 11 again, twice.
    consumer([range(11, 75), range(11, 75), range(11, 43), range(43, 107), range(107, 111)],
             pending=100)
    with caplog.at_level(logging.WARNING, "worker"):
        assert read(after=10) == list(range(11, 111))
    assert "delivered 128 messages again" in caplog.text


def test_sequences_with_gaps_are_other_partitions_and_are_kept(consumer):
    consumer([[3, 9, 10], [3, 9], [12, 40]], pending=5)
    assert read(after=2) == [3, 9, 10, 12, 40]


def test_a_replay_of_what_came_before_the_read_is_dropped_too(consumer):
    consumer([[5, 6, 7], [8]], pending=2)
    assert read(after=6) == [7, 8]


def test_a_consumer_on_a_replica_behind_the_leader_is_read_up_to_the_leaders_last(consumer):
    # The consumer's server held none of the 2 messages the leader stored (pending 0), then
    # caught up: the read waits for them rather than ending at once, empty.
    consumer([[4], [9]], pending=0, through=9)
    assert read(after=3) == [4, 9]
    # It counted 1 of 3 pending: the read goes on past its count, to the leader's last.
    consumer([[4], [6, 9]], pending=1, through=9)
    assert read(after=3) == [4, 6, 9]


def test_a_replica_that_never_catches_up_fails_the_read(consumer):
    consumer([[4]], pending=0, through=9)
    with pytest.raises(stream_reader.BehindLeader, match=r"read to sequence 4 of 9\)"):
        read(after=3)
    assert isinstance(stream_reader.BehindLeader(), UNAVAILABLE)  # the worker reads again
    # A consumer that counted messages and delivers none in time fails as it did.
    consumer([], pending=2, through=9)
    with pytest.raises(nats.errors.TimeoutError):
        read(after=3)


class JetStream:
    """What _open asks of nats-py's JetStream context: the subject's newest message (or
    none), and a consumer counting `pending`."""

    def __init__(self, newest, pending):
        self.newest, self.pending = newest, pending

    async def get_last_msg(self, stream, subject):
        if self.newest is None:
            raise NotFoundError
        return self.newest

    async def add_consumer(self, stream, config):
        return types.SimpleNamespace(num_pending=self.pending)

    async def pull_subscribe_bind(self, durable, stream, name):
        return "subscription"


@pytest.mark.parametrize("newest, since, through", [
    (None, None, 0),  # nothing stored on the subject
    (9, None, 9),
    (9, "before", 9),  # the newest message stored after `since`: the read must yield it
    (9, "after", 0),  # stored before `since`: the read yields nothing, and waits for none
])
def test_the_leaders_last_sequence_is_what_a_read_must_reach(newest, since, through):
    stored = datetime.datetime(2026, 12, 7, 8, 0, tzinfo=datetime.timezone.utc)
    moment = {None: None, "before": stored - datetime.timedelta(seconds=1),
              "after": stored + datetime.timedelta(seconds=1)}[since]
    js = JetStream(None if newest is None else types.SimpleNamespace(seq=newest, time=stored),
                   pending=2)
    opened = asyncio.run(stream_reader._open(types.SimpleNamespace(js=js), "S", "s.p1",
                                             "test", 3, moment))
    assert opened == ("subscription", 2, through)
