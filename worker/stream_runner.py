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

The experience overview is a third view of each partition, as on one machine: an overview
store per partition (worker/overview.py's OverviewCounter, the stream sequence its position)
counted from the details that ride with the partition's SDK messages. The ingest sends each
install's SDK events to one partition (storage/stream_writer.py), so its sessions are whole
there. It is committed with the series, before the checkpoint, and read the same way: the
worker answers the ingest's reads of it on the partition's overview subject, and
app/cluster_readside.py merges the answers.

The counts over time are a second view of each partition, as data1 has: a series store per
partition in the worker's state folder (storage/series_store.py; the stream sequence is its
offset), each message dated by when the stream stored it. It is committed just before the
checkpoint, each view with its own position, so a crash between the two leaves one ahead: a
pass reads from the position of the one behind and feeds each view only the messages past
its own position, so neither counts a message twice. The worker answers the ingest's
questions about its partitions' series on their series subjects (app/cluster_readside.py
sums the answers); a series store lost with its machine is counted again from the stream.
"""

import base64
import dataclasses
import json
import logging
import os
import socket
import sqlite3
import time

from storage.checkpoint import Checkpoint, CorruptCheckpoint
from storage.layout import (Layout, overview_query_subject, series_query_subject,
                            worker_ping_subject)
from storage.nats_link import UNAVAILABLE
from storage.overview_store import READS, NoOverview, OverviewReader, OverviewStore
from storage.series_store import CorruptSeries, SeriesReader, SeriesStore
from storage.stream_checkpoint_store import StreamCheckpointStore
from storage.stream_reader import StreamReader
from storage.stream_setup import stream_identity
from worker.overview import COMMIT_EVENTS, OverviewCounter, screen_views
from worker.runner import COMMIT_EVERY, PassLoop, plural, report_skipped
from worker.tally import Tally

log = logging.getLogger("worker")


def owner_name():
    """How this worker signs its commits: unique among live processes, readable by people."""
    return f"worker@{socket.gethostname()}:{os.getpid()}"


class Partition:
    """One owned partition: its reader, its checkpoint store, its series store and its
    overview (or None), and where each stands."""

    def __init__(self, link, name, owner, series_dir, minute_retention, overview_dir=None,
                 session_timeout=1800):
        self.name = name
        self.reader = StreamReader(link, name)
        self.store = StreamCheckpointStore(link, name, owner)
        self.checkpoint = Checkpoint(fingerprint="")  # until recover() loads it
        self.series = self.series_reader = None
        if series_dir is not None:
            path = Layout(series_dir).partition_series(name)
            self.series = SeriesStore(series_dir, minute_retention, path)
            self.series_reader = SeriesReader(series_dir, path)
        self.series_offset = 0
        self.overview = self.overview_reader = None
        if overview_dir is not None:
            path = Layout(overview_dir).partition_overview(name)
            self.overview = OverviewCounter(OverviewStore(overview_dir, path), session_timeout,
                                            f"partition {name}")
            self.overview_reader = OverviewReader(overview_dir, path)

    def positions(self):
        """Where each view stands: the checkpoint's sequence, then each store's."""
        return [self.checkpoint.offset] + (
            [self.series_offset] if self.series is not None else []) + (
            [self.overview.position] if self.overview is not None else [])


class StreamWorker(PassLoop):
    def __init__(self, link, partitions, owner=None, series_dir=None,
                 minute_retention=48 * 3600, overview_dir=None, session_timeout=1800):
        """`series_dir`: the folder of the partitions' series stores, or None to keep no
        counts over time (MINI_ANALYTICS_SERIES=off); `overview_dir` the same for their
        overview stores (MINI_ANALYTICS_OVERVIEW=off)."""
        self.link = link
        self.owner = owner or owner_name()
        self.partitions = [Partition(link, name, self.owner, series_dir, minute_retention,
                                     overview_dir, session_timeout)
                           for name in partitions]
        # When this worker last finished a pass or committed: its ping answer carries it, so
        # the ingest can tell a worker that answers but no longer counts (stalled).
        self.progress_at = time.time()

    def take_ownership(self):
        """Answer the partitions' pings. Ownership itself is the compare-and-set's to
        enforce (see the module's docstring), so nothing is locked here."""
        for partition in self.partitions:
            # The subscriptions last as long as the connection.
            self.link.call(self._answer_pings(partition), 10)
            if partition.series is not None:
                self.link.call(self._answer_series(partition), 10)
            if partition.overview is not None:
                self.link.call(self._answer_overview(partition), 10)

    async def _answer_pings(self, partition):
        async def answer(message):
            await message.respond(json.dumps({
                "partition": partition.name,
                "owner": self.owner,
                "sequence": partition.checkpoint.offset,
                "progress_at": self.progress_at,
            }).encode())

        return await self.link.nc.subscribe(worker_ping_subject(partition.name), cb=answer)

    async def _answer(self, partition, subject, what, reply_to):
        """Answer the ingest's questions on `subject`: JSON in, reply_to(question) out; a
        question that cannot be answered gets {"error": ...}, and the reason goes to the
        log."""
        async def answer(message):
            try:
                reply = reply_to(json.loads(message.data))
            except NoOverview as problem:  # asked before the worker opened its store
                reply = {"error": f"partition {partition.name}'s {what}: {problem}"}
            except (ValueError, KeyError, TypeError, sqlite3.Error) as problem:
                log.error("partition %s: a read of its %s failed: %s: %s", partition.name,
                          what, type(problem).__name__, problem)
                reply = {"error": f"partition {partition.name}'s worker could not read its "
                                  f"{what} (its log says why)"}
            await message.respond(json.dumps(reply).encode())

        return await self.link.nc.subscribe(subject, cb=answer)

    async def _answer_series(self, partition):
        """Answer questions about the partition's counts over time. Every answer carries the
        store's `state` ([offset, ...], read before the answer itself, so the answer is at
        least that new), which the ingest uses to refuse answers from behind what it already
        served.

            {"ask": "state"}                                 -> {"state": [offset, ...]}
            {"ask": "buckets", "step", "experience", "start", "end"} -> {"buckets": [[s, n]]}
            {"ask": "counts", "step", "start", "end"}        -> {"counts": [[id, n]]}

        While the store is behind the partition's checkpoint (it is being recounted, after it
        was rejected or lost), the answer is {"error": ...}: partial sums would show counts
        over time going down.
        """
        reader = partition.series_reader

        def reply_to(question):
            # The checkpoint's position first: the store is committed before it, so read in
            # this order the store is never seen behind unless it really is.
            counted = partition.checkpoint.offset
            state = reader.state()
            reply = {"state": list(state) if state else None}
            if (state.offset if state else 0) < counted:
                return {"error": f"partition {partition.name}'s counts over time are being "
                                 f"recounted (at sequence {state.offset if state else 0} of "
                                 f"{counted})"}
            if question["ask"] == "buckets":
                reply["buckets"] = list(reader.buckets(
                    question["step"], question["experience"], question["start"],
                    question["end"]).items())
            elif question["ask"] == "counts":
                reply["counts"] = list(reader.counts(
                    question["step"], question["start"], question["end"]).items())
            return reply

        return await self._answer(partition, series_query_subject(partition.name),
                                  "counts over time", reply_to)

    async def _answer_overview(self, partition):
        """Answer the ingest's reads of the partition's overview: {"calls": [[name, *args],
        ...]} (storage/overview_store.py's READS) in, {"position": sequence, "results":
        [rows, ...]} out, every read in one snapshot of the store, bytes as {"b64": ...}.
        While the store is behind the partition's checkpoint (being recounted), or not yet
        created, {"error": ...}: a merge without all of it would show figures going down."""
        reader = partition.overview_reader

        def reply_to(question):
            calls = question["calls"]
            if not all(call[0] in READS for call in calls):
                raise ValueError(f"unknown reads in {calls!r}")
            counted, overviewed = partition.checkpoint.offset, partition.overview.position
            if overviewed < counted:
                return {"error": f"partition {partition.name}'s overview is being recounted "
                                 f"(at sequence {overviewed} of {counted})"}
            # `position` read before the reads: they are at least that new.
            return {"position": overviewed,
                    "results": [[[_jsonable(value) for value in row] for row in rows]
                                for rows in reader.run(calls)]}

        return await self._answer(partition, overview_query_subject(partition.name),
                                  "overview", reply_to)

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
        for partition in self.partitions:
            if partition.series is not None:
                self._open_series(partition, stream)
            if partition.overview is not None:
                partition.overview.open()
                if partition.overview.source not in (b"", stream.encode()):
                    partition.overview.start_over(
                        f"it counts {partition.overview.source.decode(errors='replace')!r}, "
                        f"but the stream is now {stream!r}", aside=False)

    def _open_series(self, partition, stream):
        """Open the partition's series store, or start it over if it cannot be used or
        counts another stream; its position is its own (see the module's docstring)."""
        try:
            state = partition.series.open(stream)
            problem = (None if state.fingerprint == stream else
                       f"it counts {state.fingerprint!r}, but the stream is now {stream!r}")
        except CorruptSeries as corrupt:
            problem = str(corrupt)
        if problem:
            aside = partition.series.set_aside()
            log.error("SERIES REJECTED: partition %s: %s; moved it aside to %s; counting the "
                      "partition's series from its first message", partition.name, problem,
                      aside)
            state = partition.series.open(stream)
        partition.series_offset = state.offset
        log.info("partition %s: series store at sequence %d, %d events", partition.name,
                 state.offset, state.events)

    def run_pass(self):
        """Count what each partition gained since its last commit, and commit it. Returns
        the events counted."""
        counted = sum(self._count(partition) for partition in self.partitions)
        self.progress_at = time.time()
        return counted

    def _count(self, partition):
        started = time.monotonic()
        counted, dated = partition.checkpoint.offset, partition.series_offset
        overviewed = partition.overview.position if partition.overview is not None else None
        # From the view behind; each view takes only what is past its own position.
        start = min(partition.positions())
        counts, series, sdk = Tally(), Tally(), []
        messages = pending_bytes = 0
        reached = start
        try:
            for payload, sequence, second, details in partition.reader.messages(start):
                if self.stop_requested():
                    return 0
                if sequence > counted:
                    counts.add(payload)
                    messages += 1
                if partition.series is not None and sequence > dated:
                    series.add(payload, second - second % 60)
                if details is not None and overviewed is not None and sequence > overviewed:
                    sdk.append(json.loads(details))
                pending_bytes += len(payload) + len(details or "")
                reached = sequence
                if pending_bytes >= COMMIT_EVERY or len(sdk) >= COMMIT_EVENTS:
                    self._commit(partition, counts, series, sdk, reached, messages)
                    messages = pending_bytes = 0
                    sdk = []
        except UNAVAILABLE as error:
            # What was read is consistent up to `reached`: commit it; the next pass reads on.
            log.warning("partition %s: reading the stream failed after sequence %d (%s); "
                        "retrying next pass", partition.name, reached,
                        f"{type(error).__name__}: {error}".rstrip(": "))
        if reached > start:
            self._commit(partition, counts, series, sdk, reached, messages)
            log.info("pass: partition %s: counted %s (%d skipped) in %.3fs; sequence %d -> %d; "
                     "lag %s", partition.name, plural(counts.events, "event"), counts.skipped,
                     time.monotonic() - started, start, reached,
                     plural(partition.reader.pending, "message"))
        return counts.events

    def _commit(self, partition, counts, series, sdk, sequence, messages):
        """Commit the views up to `sequence`: the series and the overview (`sdk`: the SDK
        events' details past its position), then the checkpoint."""
        overview = partition.overview
        if overview is not None and sequence > overview.position:
            # Acknowledged messages are on a quorum's disks: nothing to make durable first.
            overview.count(screen_views(sdk), len(sdk),
                           partition.checkpoint.fingerprint.encode(), sequence, sequence)
        if partition.series is not None and sequence > partition.series_offset:
            _, _, minute_rows, hour_rows = series.drain_into({})
            partition.series.commit(minute_rows, hour_rows, sequence,
                                    partition.checkpoint.fingerprint)
            partition.series_offset = sequence
        if sequence > partition.checkpoint.offset:
            current = partition.checkpoint
            # Extended in place, as in worker/runner.py: should the commit fail, the process
            # exits and this state goes with it.
            totals = current.counts
            skipped, samples, _, _ = counts.drain_into(totals)
            report_skipped(skipped, samples)
            # Raises Fenced if another worker committed meanwhile: the caller exits.
            partition.checkpoint = partition.store.commit(dataclasses.replace(
                current, offset=sequence, counts=totals, skipped=current.skipped + skipped,
                messages=current.messages + messages,
            ))
        self.progress_at = time.time()

    def close(self):
        for partition in self.partitions:
            if partition.series is not None:
                partition.series.close()
            if partition.overview is not None:
                partition.overview.close()
        if self.signals:
            log.info("worker stopped at %s", ", ".join(
                f"{partition.name} sequence {partition.checkpoint.offset}"
                for partition in self.partitions))


def _jsonable(value):
    """A stored value as JSON can carry it: bytes (sketches) as {"b64": base64}."""
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode()}
    return value
