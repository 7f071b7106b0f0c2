"""The reader of one partition of the stream (cluster mode): data1's reader, on JetStream.

A pass reads the partition's messages from a stream sequence on, in order, through a
consumer of its own that lives only as long as the pass: no position is kept in the stream's
consumer, so the only position there is the one committed with the counts (the same rule as
data1's byte offset, kept in data2). The consumer delivers without acknowledgements, and
nothing depends on JetStream's consumer state.

Invariant: read_subject (and read_batches) yields stream sequences that only rise. A
consumer is not a log: the one-replica, memory-only consumer lives on one server, and when
that server restarts mid-read it is made again and delivers from its start sequence once
more, sometimes more than once (measured: 13 of 31 kills replayed everything already
read). A message is yielded only if its sequence is above the last one yielded; the replays
are dropped here, so no reader can count a message twice because the consumer delivered it
twice.

Invariant: a read yields every message of its subject stored when it began. The consumer's
server is any of the stream's replicas (measured: of 30 consumers, 11 on the stream's
leader, 19 on its two followers), and a follower may not yet hold what the leader stored and
acknowledged (seen at a cluster's start, while its routes were made again): the consumer
then counts fewer messages pending than there are. So the read also asks the leader for the
subject's last sequence, and goes on until it has yielded that one, whatever the consumer
counted; a follower that does not catch up within FETCH_TIMEOUT fails the read.
"""

import datetime
import logging
import os
import time
from typing import NamedTuple, Optional

import nats.errors
from nats.js import api
from nats.js.errors import NotFoundError, ServiceUnavailableError

from storage.stream import sdk_message
from storage.stream.link import UNAVAILABLE
from storage.stream.names import STREAM, partition_subject

# Messages asked for per fetch, and how long one fetch may wait for them (they are stored:
# only a dead node or a leader election makes one wait).
FETCH_MESSAGES = 64
FETCH_TIMEOUT = 5.0
FETCH_RETRY_PAUSE = 0.05

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
MILLISECOND = datetime.timedelta(milliseconds=1)

log = logging.getLogger("worker")


class BehindLeader(nats.errors.Error):
    """A read's consumer is on a replica that did not catch up with the leader in time (see
    the second invariant): one of UNAVAILABLE, as the timeout it stands for."""


class StreamMessage(NamedTuple):
    """A message of a partition, decoded (storage/stream/sdk_message.py)."""
    sequence: int  # the stream's
    stored_ms: int  # when the stream stored it, Unix ms: its events' time, as data1's time
                    # index gives the time of data1's records
    records: bytes  # minimal events' records, in data1's format (b"" for SDK events)
    sdk: Optional[sdk_message.SdkPart]  # its SDK events, or None
    flaw: Optional[str]  # why a message that is not in the format was read as no events
    size: int  # its payload's bytes and its headers'


class StreamReader:
    def __init__(self, link, partition):
        self.link = link
        self.partition = partition
        self.subject = partition_subject(partition)
        # Messages stored after the last one read, as the server counted when it sent that
        # one: the lag, for the worker's log.
        self.pending = 0

    def messages(self, after, since_ms=None, look_ahead=None):
        """Yield a StreamMessage for each of the partition's messages after sequence
        `after`, in order: every one stored when the call began (at least). With `since_ms`
        (and `after` 0), from the first message stored at that time (Unix ms) or later.
        With `look_ahead`, it is called with each fetch's messages (a list) before the
        first of them is yielded.

        Raises what the link raises (storage/stream/link.UNAVAILABLE) if the cluster cannot
        answer; what was yielded before stays valid.
        """
        since = None if since_ms is None else EPOCH + since_ms * MILLISECOND
        for fetched in read_batches(self.link, STREAM, self.subject, after,
                                    f"worker-{self.partition}", since):
            decoded = [self._decoded(message) for message in fetched]
            if look_ahead is not None:
                look_ahead(decoded)
            yield from decoded

    def _decoded(self, message):
        metadata = message.metadata
        self.pending = metadata.num_pending
        try:
            records, sdk = sdk_message.decode(message.data, message.headers)
            flaw = None
        except (ValueError, KeyError) as error:
            records, sdk, flaw = b"", None, f"{type(error).__name__}: {error}"
        # Whole milliseconds by integer arithmetic: every worker reads the same moment.
        stored_ms = (metadata.timestamp - EPOCH) // MILLISECOND
        size = len(message.data) + sum(map(len, (message.headers or {}).values()))
        return StreamMessage(metadata.sequence.stream, stored_ms, records, sdk, flaw, size)


def stored_at_ms(link, sequence):
    """When the stream stored its message at `sequence` (Unix ms), or None if it holds none
    there. Raises what the link raises."""
    try:
        message = link.call(link.js.get_msg(STREAM, seq=sequence), FETCH_TIMEOUT)
    except NotFoundError:
        return None
    return (message.time - EPOCH) // MILLISECOND


def read_subject(link, stream, subject, after, name, since=None):
    """Yield the messages of `stream` on `subject` after sequence `after` (or, with `since`,
    a datetime, from the first stored then or later), in order: every one stored when the
    call began (at least), through a consumer of its own named after `name`, removed at the
    end. Raises what the link raises; what was yielded before stays valid."""
    for fetched in read_batches(link, stream, subject, after, name, since):
        yield from fetched


def read_batches(link, stream, subject, after, name, since=None):
    """read_subject, a fetch at a time: yields lists of messages, none empty."""
    name = f"{name}-{os.urandom(4).hex()}"
    subscription, pending, through = link.call(
        _open(link, stream, subject, name, after, since), FETCH_TIMEOUT)
    last, replayed = after, 0
    try:
        # `pending` is the consumer's server's count, `through` the leader's last sequence
        # (see the second invariant): a server behind the leader gets one message asked at a
        # time until it has caught up.
        while pending > 0 or last < through:
            fetched = []
            try:
                batch = _fetch(link, subscription, min(FETCH_MESSAGES, max(pending, 1)))
            except nats.errors.TimeoutError:
                if pending > 0:
                    raise
                raise BehindLeader(f"the consumer's server is behind the stream's leader "
                                   f"(read to sequence {last} of {through}) and did not "
                                   f"catch up within {FETCH_TIMEOUT:g} s") from None
            for message in batch:
                sequence = message.metadata.sequence.stream
                if sequence <= last:
                    replayed += 1  # the consumer started over (see the invariant)
                    continue
                last = sequence
                pending -= 1
                fetched.append(message)
            if fetched:
                yield fetched
    finally:
        if replayed:
            log.warning("%s: the consumer delivered %d messages again (its server restarted "
                        "mid-read); each was read once", subject, replayed)
        try:
            link.call(_close(link, stream, subscription, name), FETCH_TIMEOUT)
        except UNAVAILABLE:
            pass  # the server removes an idle consumer by itself (inactive_threshold)


def _fetch(link, subscription, count):
    """Up to `count` messages from the consumer. A fetch answered "no responders" (503) is
    asked again until FETCH_TIMEOUT: the consumer was just created on the server that leads
    it, and its interest may not yet have reached the server this client is connected to
    (seen under load, and across a slow route)."""
    deadline = time.monotonic() + FETCH_TIMEOUT
    while True:
        try:
            return link.call(subscription.fetch(count, timeout=FETCH_TIMEOUT),
                             FETCH_TIMEOUT + 1)
        except ServiceUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(FETCH_RETRY_PAUSE)


async def _open(link, stream, subject, name, after, since):
    """The consumer's subscription, its count of messages pending, and the last sequence the
    stream's leader holds for `subject` if the read must yield it (else 0)."""
    start = ({"deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": after + 1}
             if since is None else
             {"deliver_policy": api.DeliverPolicy.BY_START_TIME, "opt_start_time": since})
    # Asked before the consumer is made, so that a consumer whose server is up to date
    # counts at least this far: only a server behind the leader counts less. (STREAM.MSG.GET,
    # not a direct get, so that the leader answers.)
    try:
        newest = await link.js.get_last_msg(stream, subject)
        through = newest.seq if since is None or newest.time >= since else 0
    except NotFoundError:
        through = 0
    info = await link.js.add_consumer(stream, api.ConsumerConfig(
        name=name,
        filter_subject=subject,
        **start,
        ack_policy=api.AckPolicy.NONE,
        mem_storage=True,
        num_replicas=1,
        # Should the reader die, the server removes the consumer by itself.
        inactive_threshold=30.0,
    ))
    subscription = await link.js.pull_subscribe_bind(durable=None, stream=stream, name=name)
    return subscription, info.num_pending, through


async def _close(link, stream, subscription, name):
    await subscription.unsubscribe()
    await link.js.delete_consumer(stream, name)
