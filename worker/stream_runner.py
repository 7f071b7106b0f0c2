"""The worker in cluster mode: the same loop and counting as worker/runner.py, on the stream.

Each partition it owns is counted on its own: a pass reads the partition's messages after its
checkpoint's sequence (storage/stream_reader.py), counts their ids (worker/tally.py, the same
code as for data1), and commits sequence and counts together by compare-and-set
(storage/stream_checkpoint_store.py). Recovery needs no special case, as with data2: the
checkpoint is the old one or the new one, each consistent with the stream.

Ownership is fixed by configuration (MINI_ANALYTICS_PARTITIONS), and enforced by the
compare-and-set, not trusted: should two workers be given one partition, the first commit of
one makes the other's next commit fail (Fenced), and that one exits; its restart reloads the
checkpoint. The counts stay exact whichever commits.

A worker also answers "who counts partition p?" on the partition's ping subject, so the
ingest's /healthz and `python -m worker status` can tell that it is alive.
"""

import dataclasses
import json
import logging
import os
import socket
import time

from storage.checkpoint import Checkpoint, CorruptCheckpoint
from storage.layout import worker_ping_subject
from storage.nats_link import UNAVAILABLE
from storage.stream_checkpoint_store import StreamCheckpointStore
from storage.stream_reader import StreamReader
from storage.stream_setup import stream_identity
from worker.runner import COMMIT_EVERY, PassLoop, plural, report_skipped
from worker.tally import Tally

log = logging.getLogger("worker")


def owner_name():
    """How this worker signs its commits: unique among live processes, readable by people."""
    return f"worker@{socket.gethostname()}:{os.getpid()}"


class Partition:
    """One owned partition: its reader, its checkpoint store, and where it stands."""

    def __init__(self, link, name, owner):
        self.name = name
        self.reader = StreamReader(link, name)
        self.store = StreamCheckpointStore(link, name, owner)
        self.checkpoint = Checkpoint(fingerprint="")  # until recover() loads it


class StreamWorker(PassLoop):
    def __init__(self, link, partitions, owner=None):
        self.link = link
        self.owner = owner or owner_name()
        self.partitions = [Partition(link, name, self.owner) for name in partitions]
        self._pings = []
        # When this worker last finished a pass or committed: its ping answer carries it, so
        # the ingest can tell a worker that answers but no longer counts (stalled).
        self.progress_at = time.time()

    def take_ownership(self):
        """Answer the partitions' pings. Ownership itself is the compare-and-set's to
        enforce (see the module's docstring), so nothing is locked here."""
        for partition in self.partitions:
            self._pings.append(self.link.call(self._answer_pings(partition), 10))

    async def _answer_pings(self, partition):
        async def answer(message):
            await message.respond(json.dumps({
                "partition": partition.name,
                "owner": self.owner,
                "sequence": partition.checkpoint.offset,
                "progress_at": self.progress_at,
            }).encode())

        return await self.link.nc.subscribe(worker_ping_subject(partition.name), cb=answer)

    def recover(self):
        stream = stream_identity(self.link)
        for partition in self.partitions:
            try:
                loaded = partition.store.load()
                if loaded is not None and loaded.fingerprint != stream:
                    raise CorruptCheckpoint(
                        f"it counts {loaded.fingerprint!r}, but the stream is now {stream!r} "
                        "(deleted and created again?)")
            except CorruptCheckpoint as problem:
                # Committed over, not deleted: the key's history keeps the bad value.
                log.error("CHECKPOINT REJECTED: partition %s's checkpoint cannot be used: %s; "
                          "recounting the partition from its first message",
                          partition.name, problem)
                # Replaced at once by empty counts, so that nobody keeps reading the
                # rejected ones until the recount's first commit.
                partition.checkpoint = partition.store.commit(Checkpoint(fingerprint=stream))
                continue
            if loaded is None:
                log.info("partition %s: no checkpoint yet: counting from its first message",
                         partition.name)
                partition.checkpoint = Checkpoint(fingerprint=stream)
            else:
                partition.checkpoint = loaded
                log.info("partition %s: resuming from sequence %d (%d messages, %d events, "
                         "%d experiences, committed by %s)", partition.name, loaded.offset,
                         loaded.messages, loaded.events, len(loaded.counts), loaded.owner)

    def run_pass(self):
        """Count what each partition gained since its last commit, and commit it. Returns
        the events counted."""
        counted = sum(self._count(partition) for partition in self.partitions)
        self.progress_at = time.time()
        return counted

    def _count(self, partition):
        started = time.monotonic()
        start = partition.checkpoint.offset
        tally = Tally()
        messages = pending_bytes = 0
        reached = start
        try:
            for payload, sequence in partition.reader.messages(start):
                if self.stop_requested():
                    return 0
                tally.add(payload)
                messages += 1
                pending_bytes += len(payload)
                reached = sequence
                if pending_bytes >= COMMIT_EVERY:
                    self._commit(partition, tally, reached, messages)
                    messages = pending_bytes = 0
        except UNAVAILABLE as error:
            # What was read is consistent up to `reached`: commit it; the next pass reads on.
            log.warning("partition %s: reading the stream failed after sequence %d (%s); "
                        "retrying next pass", partition.name, reached,
                        f"{type(error).__name__}: {error}".rstrip(": "))
        if reached > partition.checkpoint.offset:
            self._commit(partition, tally, reached, messages)
        if reached > start:
            log.info("pass: partition %s: counted %s (%d skipped) in %.3fs; sequence %d -> %d; "
                     "lag %s", partition.name, plural(tally.events, "event"), tally.skipped,
                     time.monotonic() - started, start, reached,
                     plural(partition.reader.pending, "message"))
        return tally.events

    def _commit(self, partition, tally, sequence, messages):
        current = partition.checkpoint
        # Extended in place, as in worker/runner.py: should the commit fail, the process
        # exits and this state goes with it.
        totals = current.counts
        skipped, samples, _, _ = tally.drain_into(totals)
        report_skipped(skipped, samples)
        # Raises Fenced if another worker committed meanwhile: the caller exits.
        partition.checkpoint = partition.store.commit(dataclasses.replace(
            current, offset=sequence, counts=totals, skipped=current.skipped + skipped,
            messages=current.messages + messages,
        ))
        self.progress_at = time.time()

    def close(self):
        if self.stop:
            log.info("worker stopped at %s", ", ".join(
                f"{partition.name} sequence {partition.checkpoint.offset}"
                for partition in self.partitions))
