"""The writer of one partition of the stream (cluster mode): data1's writer, on JetStream.

A message's payload is records in data1's format (storage/log_format.py), so the worker
counts messages with the same code as data1's blocks. This module's guarantees:

* append() returns only once JetStream acknowledged a message holding the records: the
  stream's leader and a majority of its replicas stored it, each synced to disk
  (`sync_interval: always` in cluster/nats.conf). That is strictly more than the single
  machine's 202, which rests on one disk.
* Concurrent appends share publishes (group commit): the records waiting when a publish
  starts go out in one message, and up to IN_FLIGHT messages are in flight at once (the
  servers share their fsyncs across them). One append's records are never split across
  messages, so a /batch is stored whole or not at all.
* Every message has a Nats-Msg-Id of its own. A publish that fails or is not answered (a
  leader election, a dead node) is retried with the same id until `timeout`: the stream drops
  a repeat inside its duplicate window (storage/stream_setup.py), so a retry never stores
  a message twice.
* If no acknowledgement comes within `timeout`, append() raises AppendError. The records
  may or may not be stored (a lost acknowledgement): such an event is counted at most once.
"""

import asyncio
import itertools
import logging
import os

from storage.layout import STREAM, partition_subject
from storage.log_writer import AppendError
from storage.nats_link import UNAVAILABLE
from storage.stream_setup import MAX_MESSAGE_BYTES

log = logging.getLogger("ingest")

IN_FLIGHT = 8
# One attempt's wait for an acknowledgement, and the pause before the next attempt.
ATTEMPT_TIMEOUT = 2.0
RETRY_PAUSE = 0.1


class StreamLog:
    def __init__(self, link, partition, timeout):
        self.link = link
        self.partition = partition
        self.subject = partition_subject(partition)
        self.timeout = timeout
        # Unique to this process's life, so that no two messages ever share an id: the
        # partition, a random part, and a counter.
        self._writer_id = f"{partition}-{os.urandom(6).hex()}"
        self._numbers = itertools.count(1)
        # Touched only on the link's loop: no lock needed.
        self._waiting = []  # (records, future) not yet in a message
        self._in_flight = 0

    def append(self, records):
        """Append `records` (complete records, see log_format.encode) to the partition.

        Returns once JetStream acknowledged them. Raises AppendError if it did not within
        the timeout (they may then be stored or not: at most once).
        """
        try:
            # A little longer than the publish's own deadline, which answers first.
            self.link.call(self._append(records), self.timeout + 5)
        except UNAVAILABLE as error:
            raise AppendError(f"NATS did not answer: {error or type(error).__name__}") from None

    async def _append(self, records):
        done = self.link.loop.create_future()
        self._waiting.append((records, done))
        self._start_publishes()
        await done

    def _start_publishes(self):
        while self._waiting and self._in_flight < IN_FLIGHT:
            size, taken = 0, 0
            for records, _ in self._waiting:
                if taken and size + len(records) > MAX_MESSAGE_BYTES:
                    break
                size += len(records)
                taken += 1
            group, self._waiting = self._waiting[:taken], self._waiting[taken:]
            self._in_flight += 1
            self.link.loop.create_task(self._publish(group))

    async def _publish(self, group):
        payload = b"".join(records for records, _ in group)
        message_id = f"{self._writer_id}-{next(self._numbers)}"
        try:
            await self._publish_until_acknowledged(payload, message_id)
        except AppendError as error:
            for _, done in group:
                if not done.done():
                    done.set_exception(error)
        else:
            for _, done in group:
                if not done.done():
                    done.set_result(None)
        finally:
            self._in_flight -= 1
            self._start_publishes()

    async def _publish_until_acknowledged(self, payload, message_id):
        loop = self.link.loop
        deadline = loop.time() + self.timeout
        headers = {"Nats-Msg-Id": message_id}
        attempts, last_error = 0, None
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.warning("publish %s not acknowledged after %d attempts in %.1f s: %s",
                            message_id, attempts, self.timeout, last_error)
                raise AppendError(
                    f"the cluster did not acknowledge the events within {self.timeout:g} s "
                    f"({last_error}); they may or may not be stored: at most once")
            attempts += 1
            try:
                # The same id on every attempt: the stream stores the message once.
                await self.link.js.publish(
                    self.subject, payload, timeout=min(remaining, ATTEMPT_TIMEOUT),
                    stream=STREAM, headers=dict(headers))
                if attempts > 1:
                    log.info("publish %s acknowledged on attempt %d", message_id, attempts)
                return
            except UNAVAILABLE as error:
                last_error = f"{type(error).__name__}: {error}".rstrip(": ")
                await asyncio.sleep(min(RETRY_PAUSE, max(0.0, deadline - loop.time())))

    def problem(self):
        """Why an append would fail now, or None if it looks possible."""
        if not self.link.connected:
            return "not connected to any NATS server (reconnecting)"
        return None

    def sync(self):
        """Nothing to do: every acknowledged append is already on a quorum's disks."""

    def close(self):
        """Nothing to do: the link is closed by its owner."""
