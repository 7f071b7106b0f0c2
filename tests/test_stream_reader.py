"""The stream reader's invariant, without a cluster: whatever its consumer delivers (a
consumer made again after its server restarted replays from its start sequence, sometimes
more than once), read_subject yields each stream sequence once, rising. The real thing, a
NATS server killed mid-read, is in test_cluster.py."""

import logging
import types

import pytest

from storage.stream import reader as stream_reader


def message(sequence):
    return types.SimpleNamespace(metadata=types.SimpleNamespace(
        sequence=types.SimpleNamespace(stream=sequence)), data=b"7 ")


class ReplayingConsumer:
    """Delivers `deliveries` (lists of sequences), one per fetch, as a consumer whose server
    restarted between them would."""

    def __init__(self, deliveries):
        self.deliveries = [list(batch) for batch in deliveries]

    def fetch(self, count):
        batch = self.deliveries.pop(0)
        if len(batch) > count:  # the rest comes with the next fetch, as from a consumer
            self.deliveries.insert(0, batch[count:])
        return [message(sequence) for sequence in batch[:count]]


@pytest.fixture
def consumer(monkeypatch):
    made = {}

    def use(deliveries, pending):
        made["consumer"] = ReplayingConsumer(deliveries)
        monkeypatch.setattr(stream_reader, "_open",
                            lambda link, stream, subject, name, after, since:
                            (made["consumer"], pending))
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
