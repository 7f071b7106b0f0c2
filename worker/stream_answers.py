"""How a worker in cluster mode answers for the partitions it counts: their pings, and the
ingest's reads of their counts over time and their overview (storage/stream/reads.py has
the questions and the answers). app/cluster_readside.py asks.

A worker answers only while its leases are fresh (storage/stream/leases.Leases.fresh): one
that is cut off, or paused, falls silent before another worker can take its partitions over,
so a reader is never answered from behind what the new owner already served.

And a view answers only from where the partition's checkpoint says it has reached (the
checkpoint's sequence for the counts over time, its overview_reached for the overview): a
view is committed just before the checkpoint, and an answer from a view ahead of it, were
that checkpoint commit then lost (the worker cut off), would be ahead of every store the next
owner can answer from. While a view is ahead (a commit under way), the answer waits for the
checkpoint, for up to AHEAD_WAIT.
"""

import asyncio
import logging
import sqlite3
import time

from storage.projects import is_project_id
from storage.stream import reads
from storage.stream.link import UNAVAILABLE
from storage.stream.names import overview_query_subject, series_query_subject, worker_ping_subject
from storage.views.overview_store import READS, NoOverview

log = logging.getLogger("worker")

# How long an answer waits for the checkpoint commit that follows its view's: well within
# the ingest's wait for an answer (app/cluster_readside.py's WORKER_TIMEOUT, 2 s).
AHEAD_WAIT = 1.0


class Ahead(Exception):
    """The view is ahead of the partition's committed checkpoint (a commit under way)."""


class Answers:
    def __init__(self, link, owner, leases, progress_at):
        """`leases`: the worker's (None: it answers always, a test or a tool);
        `progress_at()`: when it last finished a pass or committed (a ping carries it, so the
        ingest can tell a worker that answers but no longer counts)."""
        self.link = link
        self.owner = owner
        self.leases = leases
        self.progress_at = progress_at
        self._silent = False  # whether answering() last said no

    def unsubscribe(self, partition):
        for subscription in partition.subscriptions:
            try:
                self.link.call(subscription.unsubscribe(), 10)
            except UNAVAILABLE:
                pass  # the connection is gone, and its subscriptions with it
        partition.subscriptions = []

    def subscribe(self, partition):
        """Answer the partition's pings, and the reads of its views."""
        # The subscriptions last as long as the connection, or until the partition is dropped.
        partition.subscriptions.append(self.link.call(self._pings(partition), 10))
        if partition.series is not None:
            partition.subscriptions.append(self.link.call(self._series(partition), 10))
        if partition.overview is not None:
            partition.subscriptions.append(
                self.link.call(self._overview(partition), 10))

    def answering(self, partition):
        """Whether this worker may answer for `partition` now: while its leases are fresh
        (Leases.fresh: a worker cut off, or paused, falls silent before another can take its
        partitions over), and only for a partition whose lease it still holds. A renewal
        that finds a lease taken over (the worker was cut off meanwhile) makes this one fresh
        again, while the partition is still counted here until the pass ends: its store is
        behind the new owner's, and must not answer."""
        if self.leases is not None and partition.name not in self.leases.held:
            return False
        answering = self.leases is None or self.leases.fresh()
        if answering == self._silent:  # a change: readers see it as a missing worker
            self._silent = not answering
            if answering:
                log.info("leases renewed: answering for its partitions again")
            else:
                log.warning("not answering for its partitions: its last lease renewal that "
                            "succeeded began %.1f s ago (answers stop at half the take-over "
                            "time, %g s)", self.leases.since_renewal(), self.leases.takeover / 2)
        return answering

    async def _pings(self, partition):
        async def answer(message):
            if not self.answering(partition):
                return
            await message.respond(reads.encode({
                "partition": partition.name,
                "owner": self.owner,
                "sequence": partition.checkpoint.offset,
                "since": partition.taken_at,
                "progress_at": self.progress_at(),
            }))

        return await self.link.nc.subscribe(worker_ping_subject(partition.name), cb=answer)

    async def _reads(self, partition, subject, what, reply_to):
        """Answer the ingest's questions on `subject`: JSON in, reply_to(question) out; a
        question that cannot be answered gets {"error": ...}, and the reason goes to the
        log."""
        async def answer(message):
            if not self.answering(partition):
                return  # another worker may count the partition by now: it answers
            try:
                question = reads.decode(message.data)
                deadline = time.monotonic() + AHEAD_WAIT
                while True:
                    try:
                        reply = reply_to(question)
                        break
                    except Ahead as ahead:
                        if time.monotonic() >= deadline:
                            reply = {"error": f"partition {partition.name}'s {what} is "
                                              f"ahead of its checkpoint ({ahead}): a commit "
                                              "is under way or went unanswered"}
                            break
                        await asyncio.sleep(0.01)  # the worker's commit goes on meanwhile
            except NoOverview as problem:  # asked before the worker opened its store
                reply = {"error": f"partition {partition.name}'s {what}: {problem}"}
            except (ValueError, KeyError, TypeError, sqlite3.Error) as problem:
                log.error("partition %s: a read of its %s failed: %s: %s", partition.name,
                          what, type(problem).__name__, problem)
                reply = {"error": f"partition {partition.name}'s worker could not read its "
                                  f"{what} (its log says why)"}
            await message.respond(reads.encode(reply))

        return await self.link.nc.subscribe(subject, cb=answer)

    async def _series(self, partition):
        """Answer questions about the partition's counts over time. Every answer carries the
        store's `state` ([offset, ...], read before the answer itself, so the answer is at
        least that new), which the ingest uses to refuse answers from behind what it already
        served.

            {"ask": "state"}                                 -> {"state": [offset, ...]}
            {"ask": "buckets", "step", "experience", "start", "end", "project"}
                                                             -> {"buckets": [[s, n]]}
            {"ask": "counts", "step", "start", "end", "project"}   -> {"counts": [[id, n]]}

        While the store is behind the partition's checkpoint (it is being recounted, after it
        was rejected or lost), the answer is {"error": ...}: partial sums would show counts
        over time going down. While it is ahead, the answer waits (see the module's
        docstring).
        """
        reader = partition.series_reader

        def reply_to(question):
            # The checkpoint's position first: the store is committed before it, so read in
            # this order the store is never seen behind unless it really is.
            counted = partition.checkpoint.offset
            state = reader.state(_project(question))
            reply = {"state": list(state) if state else None}
            if (state.offset if state else 0) < counted:
                return {"error": f"partition {partition.name}'s counts over time are being "
                                 f"recounted (at sequence {state.offset if state else 0} of "
                                 f"{counted})"}
            if state and state.offset > counted:
                raise Ahead(f"at sequence {state.offset}, the checkpoint at {counted}")
            if question["ask"] == "buckets":
                reply["buckets"] = list(reader.buckets(
                    question["step"], question["experience"], question["start"],
                    question["end"], _project(question)).items())
            elif question["ask"] == "counts":
                reply["counts"] = list(reader.counts(
                    question["step"], question["start"], question["end"],
                    _project(question)).items())
            after = reader.state(_project(question))
            if (after.offset if after else 0) != (state.offset if state else 0):
                # a commit landed between the two looks: its rows may be in the answer
                raise Ahead(f"committed on to sequence {after.offset} while read")
            return reply

        return await self._reads(partition, series_query_subject(partition.name),
                                        "counts over time", reply_to)

    async def _overview(self, partition):
        """Answer the ingest's reads of the partition's overview: {"calls": [[name, *args],
        ...], "project"} (storage/views/overview_store.py's READS) in, {"position": sequence,
        "results": [rows, ...]} out, every read in one snapshot of the store, bytes as
        {"b64": ...}.
        While the store is behind how far the partition's overview had counted (the
        checkpoint's overview_reached: it is being counted again, lost with a machine or
        set aside), or not yet created, {"error": ...}: a merge without all of it would show
        figures going down. A store merely behind the counts (the overview may fall behind
        them: worker/stream_runner.py) answers with what it has counted."""
        reader = partition.overview_reader

        def reply_to(question):
            calls = question["calls"]
            if not all(call[0] in READS for call in calls):
                raise ValueError(f"unknown reads in {calls!r}")
            reached = partition.checkpoint.overview_mark  # first, as for the series
            # The store's position read in the same snapshot as the reads: exactly theirs.
            (state,), *results = reader.run([("state",), *calls], _project(question))
            if state.position < reached:
                return {"error": f"partition {partition.name}'s overview is being recounted "
                                 f"(at sequence {state.position} of {reached})"}
            if state.position > reached:
                raise Ahead(f"at sequence {state.position}, the checkpoint at {reached}")
            return {"position": state.position,
                    "results": [reads.encode_rows(rows) for rows in results]}

        return await self._reads(partition, overview_query_subject(partition.name),
                                        "overview", reply_to)


def _project(question):
    """The project a read is of (storage/stream/reads.py): "" the default one."""
    project = question.get("project", "")
    if project and not is_project_id(project):
        raise ValueError(f"not a project: {project!r}")
    return project
