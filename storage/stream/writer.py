"""The writer of the stream (cluster mode, the ingest): data1's writer, on JetStream.

A message's payload is records in data1's format (storage/log/format.py), so the worker
counts messages with the same code as data1's blocks. This module's guarantees:

* append() returns only once JetStream acknowledged a message holding the records: the
  stream's leader and a majority of its replicas stored it, each synced to disk
  (`sync_interval: always` in cluster/nats.conf). That is strictly more than the single
  machine's 202, which rests on one disk.
* Concurrent appends share publishes (group commit): what waits when a publish starts goes
  out together, and up to IN_FLIGHT publishes are out at once (the servers share their
  fsyncs across them). The minimal events waiting are one message; the SDK messages of the
  requests waiting go beside it, all in one atomic batch (stored together, one
  acknowledgement): a message costs the servers and this process less that way than
  published alone (bench/cluster.py). One append's records are never split across
  messages, so a /batch is stored whole or not at all. Each append is answered by its own
  messages' outcomes alone, never by a neighbour's failure.
* Every message has a Nats-Msg-Id of its own. A publish that fails or is not answered (a
  leader election, a dead node) is retried with the same id until `timeout`: the stream drops
  a repeat inside its duplicate window (storage/stream/setup.py), so a retry never stores
  a message twice.
* If no acknowledgement comes within `timeout`, append() raises AppendError. The records
  may or may not be stored (a lost acknowledgement): such an event is counted at most once.
* A request's SDK events (append_events) go to the partitions their anonymousIDs pick among
  the stream's partitions (the same list on every ingest node: storage/stream/setup.py), so
  that each app install's events are in one partition, counted by one worker at a time:
  its sessions are whole there (worker/overview.py). Minimal events carry no install: each
  message of them goes to the next partition in turn, spreading the counting evenly.
* A request's SDK events are one message per partition they go to (usually one: a
  request comes from one install), in storage/stream/sdk_message.py's format: their
  details, their keys, and the dedupe window. Its Nats-Msg-Id is derived from its events'
  keys, so the stream stores an exact retry of the request once, whichever ingest node it
  reaches, and acknowledges it as a duplicate: its events are answered as duplicates. A
  retry in another request (more events, or fewer) is a message of its own: the worker
  finds its repeated events by their keys and counts them once (the dedupe at the
  partition: worker/stream_runner.py). Repeats within one request are answered as
  duplicates and left out.
* A batch is refused whole when it holds a message id the stream already has (an exact
  retry), and may go unanswered (a leader election). Its messages then go again one at a
  time, the same ids, each deduped as above: those the batch stored after all are answered
  as duplicates, of themselves (counted once either way). Two messages with the same id
  (the same request sent twice at once) never share a batch.
"""

import _thread
import asyncio
import collections
import hashlib
import itertools
import json
import logging
import os
import threading

from storage.backend import AppendError, event_keys
from storage.log.format import encode
from storage.stream import sdk_message
from storage.stream.link import UNAVAILABLE
from storage.stream.names import STREAM, partition_subject
from storage.stream.setup import MAX_MESSAGE_BYTES

log = logging.getLogger("ingest")

# Groups being published at once. Few: while they are, the appends arriving meanwhile gather
# into the next group, so that under load each carries many appends (measured in
# bench/cluster.py; more in flight meant more, smaller messages and no more events/s; one in
# flight made SDK batches of 6.2 messages on average against 4.8, and no more events/s).
IN_FLIGHT = 2
# An atomic batch holds at most this many messages (the server's limit).
MAX_ATOMIC_BATCH = 1000
# What a group of appends gathers at most, beyond one request's own messages (a request's
# are never split between groups). The server holds a batch in memory until it is committed.
GROUP_MESSAGES = 256
GROUP_BYTES = 4 * MAX_MESSAGE_BYTES
# One attempt's wait for an acknowledgement, and the pause before the next attempt.
ATTEMPT_TIMEOUT = 2.0
RETRY_PAUSE = 0.1


class Group:
    """Appends that go out together: minimal records in one message, and SDK messages beside
    it. Each append waits for the outcome on a lock of its own (in `waiters`), released once
    when the publish is done: no convoy, as an Event's waiters would form, each taking its
    condition's lock in turn only to find the outcome known."""

    def __init__(self):
        self.records = []
        self.size = 0
        self.messages = []  # (payload, headers, subject): SDK messages, a request's together
        self.message_ids = set()
        self.message_bytes = 0
        # Once published, each message's outcome (see StreamLog._publish_messages), the
        # records' message last: an append is answered by its own messages' outcomes alone.
        self.outcomes = None
        self.waiters = []  # joined under StreamLog._lock, before the group is published
        # Until the publish is done: an interrupted publish must not read as success.
        self.error = AppendError("the publish was interrupted; the events may or may not be "
                                 "stored: at most once")

    def fits(self, records, messages):
        """Whether `records` and `messages` may join: the records message stays within the
        stream's message size, and a batch within GROUP_MESSAGES and GROUP_BYTES (unless the
        group holds no messages yet), with no message id twice."""
        if self.size and self.size + len(records) > MAX_MESSAGE_BYTES:
            return False
        if not messages or not self.messages:
            return True
        return (len(self.messages) + len(messages) <= GROUP_MESSAGES
                and self.message_bytes + sum(len(payload) for payload, _, _ in messages)
                <= GROUP_BYTES
                and not any(headers["Nats-Msg-Id"] in self.message_ids
                            for _, headers, _ in messages))

    def add(self, records, messages):
        """Join; returns where `messages` start in the group's."""
        if records:
            self.records.append(records)
            self.size += len(records)
        start = len(self.messages)
        for message in messages:
            self.messages.append(message)
            self.message_ids.add(message[1]["Nats-Msg-Id"])
            self.message_bytes += len(message[0])
        return start


def partition_of(anonymous_id, partitions):
    """The partition an install's SDK events go to: the same for the same anonymousID on
    every node, spread evenly."""
    digest = hashlib.blake2b(anonymous_id.encode(), digest_size=8).digest()
    return partitions[int.from_bytes(digest, "little") % len(partitions)]


class StreamLog:
    on_durable = None  # never called: no answer waits for a StreamLog's sync (see append)

    def __init__(self, link, partitions, timeout, dedupe_window=0):
        """`dedupe_window`: settings.dedupe_window, written on each SDK message (0: off)."""
        self.link = link
        self.partitions = partitions
        self.timeout = timeout
        self.dedupe_window = dedupe_window
        # Unique to this process's life, so that no two messages ever share an id: a random
        # part and a counter (which also picks each message's partition; from a random start,
        # so that nodes starting together do not send their first messages to one partition).
        self._writer_id = f"ingest-{os.urandom(6).hex()}"
        self._numbers = itertools.count(int.from_bytes(os.urandom(2), "little"))
        self._lock = threading.Lock()
        self._waiting = collections.deque()  # Groups not yet published; appends join the last
        self._in_flight = 0
        self._flush_scheduled = False

    def append(self, records, hold=None):
        """Append `records` (complete records, see log_format.encode) to the stream, in the
        message a partition's turn comes for (see the module's docstring).

        Returns once JetStream acknowledged them: `hold` is not used, since a publish may
        still fail after the records are sent, and an answer held back could not then be
        turned into the 503 it must be. Raises AppendError if it did not within
        the timeout (they may then be stored or not: at most once).
        """
        self._send(records, (), "at most once")

    def _send(self, records, messages, retry):
        """Join the group waiting to go out and wait for its publish. For each of `messages`
        (or, with none, for the records' message) True if the stream stored it now, False if
        it held it already; raises AppendError if one was not acknowledged in time. `retry`:
        what the AppendError raised on a timeout says of a retry."""
        if not records and not messages:
            return []  # nothing to wait for, and no outcome of another's to be told
        with self._lock:
            group = self._waiting[-1] if self._waiting else None
            if group is None or not group.fits(records, messages):
                group = Group()
                self._waiting.append(group)
            start = group.add(records, messages)
            done = _thread.allocate_lock()
            done.acquire()
            group.waiters.append(done)
            # One wake-up of the loop per group of appends, not one per append.
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self.link.loop.call_soon_threadsafe(self._start_publishes)
        # The publish gives up at its own deadline, but the group may wait behind others that
        # are retrying: past this, the answer is "unknown" and the group may still be stored.
        if not done.acquire(timeout=self.timeout + 5):
            raise AppendError(f"the cluster did not acknowledge the events within "
                              f"{self.timeout + 5:g} s; they may or may not be stored: "
                              f"{retry}")
        if group.error:
            raise group.error
        if messages:
            outcomes = group.outcomes[start:start + len(messages)]
        else:
            outcomes = group.outcomes[-1:]  # the records' message
        for outcome in outcomes:
            if isinstance(outcome, AppendError):
                raise outcome
        return outcomes

    def append_events(self, ids, events, received, sent=None, hold=None, project=""):
        """Append minimal items' `ids`, and the SDK events in a message per partition, all
        of `project` (storage/projects.py). `sent`: the request body, when its batch is
        exactly `events` (a message holding them all keeps it as it came); `hold` is not
        used, as in append(). Returns, for each event, True if it was stored, False if it
        was not: it repeats an event before it in the request, or its message was stored
        before (an exact retry). Raises AppendError if any publish was not acknowledged in
        time: the events may then be stored or not, and their retry is counted once."""
        if ids:
            self.append(encode(ids, project))
        if not events:
            return []
        keys = event_keys([event.event_id for event in events], project)
        fresh = [True] * len(events)
        if self.dedupe_window:
            seen = set()
            for index, key in enumerate(keys):
                if key in seen:
                    fresh[index] = False
                seen.add(key)
        by_partition, of_install = collections.defaultdict(list), {}
        for index, event in enumerate(events):
            if fresh[index]:
                install = event.anonymous_id
                partition = of_install.get(install)
                if partition is None:
                    partition = of_install[install] = partition_of(install, self.partitions)
                by_partition[partition].append(index)
        whole = sent is not None and not ids and all(fresh) and len(by_partition) == 1
        messages, indexes_of = [], []  # (payload, headers, subject); each one's events
        for partition, indexes in by_partition.items():
            for message, of_message in self._messages(
                    events, keys, indexes, int(received * 1000), project,
                    sent if whole else None, partition_subject(partition)):
                messages.append(message)
                indexes_of.append(of_message)
        stored = self._send(b"", messages, "a retry of them is counted once")
        for indexes, new in zip(indexes_of, stored):
            if not new:
                for index in indexes:
                    fresh[index] = False
        return fresh

    def _messages(self, events, keys, indexes, received_ms, project, sent, subject):
        """The messages of the events at `indexes`, all to `subject`: one, or as many as
        keep each within the stream's message size; each with the indexes of its events."""
        payload, headers = sdk_message.encode_message(
            [events[index] for index in indexes], [keys[index] for index in indexes],
            received_ms, project, self.dedupe_window, sent)
        size = len(payload) + sum(len(name) + len(value) + 4 for name, value in headers.items())
        if size <= MAX_MESSAGE_BYTES - 1024 or len(indexes) == 1:
            return [((payload, headers, subject), indexes)]
        half = len(indexes) // 2  # the body kept whole no longer fits: items, halved
        return (self._messages(events, keys, indexes[:half], received_ms, project, None,
                               subject) +
                self._messages(events, keys, indexes[half:], received_ms, project, None,
                               subject))

    async def _publish_messages(self, messages):
        """Each message's outcome: True if the stream stored it now, False if it held it
        already, or the AppendError of one not acknowledged in time. Several go out as one
        atomic batch (MAX_ATOMIC_BATCH at most); a batch refused or unanswered, one by one,
        each with its own outcome."""
        outcomes = []
        for start in range(0, len(messages), MAX_ATOMIC_BATCH):
            chunk = messages[start:start + MAX_ATOMIC_BATCH]
            if len(chunk) > 1 and await self._publish_batch(chunk):
                outcomes += [True] * len(chunk)
                continue
            acks = await asyncio.gather(*(
                self._publish_until_acknowledged(payload, headers, subject)
                for payload, headers, subject in chunk), return_exceptions=True)
            for ack in acks:
                if isinstance(ack, BaseException) and not isinstance(ack, AppendError):
                    raise ack
                outcomes.append(ack if isinstance(ack, AppendError) else not ack.duplicate)
        return outcomes

    async def _publish_batch(self, messages):
        """Publish `messages` as one atomic batch (ADR-50: stored all together or not at
        all); True once the stream acknowledged the commit. False if it refused the batch
        (an id it already holds: a retry; too many batches in flight) or did not answer in
        time: the caller then publishes them one by one with the same ids, which the stream
        stores once, whether or not the batch was committed after all (then they are
        answered as duplicates, of themselves: counted once either way)."""
        nc, batch = self.link.nc, os.urandom(16).hex()
        timeout = min(self.timeout, ATTEMPT_TIMEOUT)
        try:
            for number, (payload, headers, subject) in enumerate(messages, 1):
                headers = {**headers, "Nats-Batch-Id": batch, "Nats-Batch-Sequence": str(number)}
                if number == 1:  # answered empty once the batch is begun, else an error
                    if (await nc.request(subject, payload, timeout, headers=headers)).data:
                        return False
                elif number < len(messages):
                    await nc.publish(subject, payload, headers=headers)
                else:
                    headers["Nats-Batch-Commit"] = "1"
                    ack = json.loads((await nc.request(subject, payload, timeout,
                                                       headers=headers)).data)
                    return "error" not in ack and ack.get("count") == len(messages)
        except (*UNAVAILABLE, ValueError):
            return False

    def _start_publishes(self):
        """On the link's loop: publish waiting groups while fewer than IN_FLIGHT are out."""
        with self._lock:
            self._flush_scheduled = False
            starting = []
            while self._waiting and self._in_flight < IN_FLIGHT:
                starting.append(self._waiting.popleft())
                self._in_flight += 1
        for group in starting:
            self.link.loop.create_task(self._publish(group))

    async def _publish(self, group):
        messages = list(group.messages)
        if group.records:
            number = next(self._numbers)
            messages.append((b"".join(group.records),
                             {"Nats-Msg-Id": f"{self._writer_id}-{number}"},
                             partition_subject(self.partitions[number % len(self.partitions)])))
        try:
            group.outcomes = await self._publish_messages(messages)
            group.error = None
        finally:
            for done in group.waiters:
                done.release()
            with self._lock:
                self._in_flight -= 1
            self._start_publishes()

    async def _publish_until_acknowledged(self, payload, headers, subject):
        """The publish's acknowledgement (its `duplicate` says whether the stream already
        held the message id in `headers`), or AppendError once `timeout` has passed."""
        loop = self.link.loop
        deadline = loop.time() + self.timeout
        message_id = headers["Nats-Msg-Id"]
        attempts, last_error = 0, None
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                # NATS's own words are for the operator's log, not for the client's answer.
                log.warning("publish %s not acknowledged after %d attempts in %.1f s: %s",
                            message_id, attempts, self.timeout, last_error)
                raise AppendError(
                    f"the cluster did not acknowledge the events within {self.timeout:g} s "
                    "(it has no leader just now: it is electing one, or fewer than a majority "
                    "of its NATS servers are up); they may or may not be stored: at most once")
            attempts += 1
            try:
                # The same id on every attempt: the stream stores the message once.
                ack = await self.link.js.publish(
                    subject, payload, timeout=min(remaining, ATTEMPT_TIMEOUT),
                    stream=STREAM, headers=dict(headers))
                if attempts > 1:
                    log.info("publish %s acknowledged on attempt %d", message_id, attempts)
                return ack
            except UNAVAILABLE as error:
                last_error = f"{type(error).__name__}: {error}".rstrip(": ")
                await asyncio.sleep(min(RETRY_PAUSE, max(0.0, deadline - loop.time())))

    def problem(self):
        """Why an append would fail now, or None if it looks possible."""
        if not self.link.connected:
            return "not connected to any NATS server (reconnecting)"
        return None

    def notes(self):
        """What an operator should know that does not stop writes: nothing here."""
        return []

    def sync(self):
        """Nothing to do: every acknowledged append is already on a quorum's disks."""

    def close(self):
        """Nothing to do: the link is closed by its owner."""
